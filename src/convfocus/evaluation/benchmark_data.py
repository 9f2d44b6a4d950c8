"""Small generated stand-ins for the public focus benchmarks (demonstration only).

FocusPath and TCGA@Focus cannot be downloaded here; these stand-ins have the same
list formats and folder layouts, with patches cut from
``skimage.data.immunohistochemistry()`` and bokeh-blurred by a known amount, so
``convfocus evaluate benchmark`` can be tried (and tested) end to end. Their
numbers say nothing about the real benchmarks.

- FocusPath: ``file,slide,strip,slice,position,score,z_level`` (no header), files
  ``SlideNN_Strip00_SliceKK_PositionPP.tif``; the blur radius grows with ``|z|``.
  The ``score`` column is a placeholder (``100 - 2.5 |z|``).
- TCGA@Focus: ``path,organ,split,label`` (no header), files under ``In Focus/`` and
  ``Out of Focus/``; label 1 patches carry bokeh blur of a class 12-25.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BenchmarkStandin:
    """Where a generated stand-in lies: its label list and its image root."""

    list_path: Path
    images: Path


def _field(size: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.data import immunohistochemistry

    base = np.rot90(immunohistochemistry(), int(rng.integers(0, 4)))
    reps = -(-(size + 64) // base.shape[0])
    tiled = np.pad(base, ((0, base.shape[0] * (reps - 1)),) * 2 + ((0, 0),), mode="reflect")
    y, x = (int(v) for v in rng.integers(0, tiled.shape[0] - size + 1, size=2))
    return np.ascontiguousarray(tiled[y : y + size, x : x + size])


def _write_list(path: Path, rows: list[list[object]]) -> None:
    from convfocus.io.atomic import write_text_atomic

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(path, buf.getvalue())


def make_focuspath_standin(
    out_dir: str | Path,
    *,
    n_slides: int = 3,
    positions: int = 2,
    z_levels: tuple[int, ...] = (-4, -3, -2, -1, 0, 1, 2, 3, 4),
    blur_px_per_z: float = 1.6,
    size: int = 1024,
    seed: int = 0,
) -> BenchmarkStandin:
    """A FocusPath-format stand-in: each field at every z, blur radius ``blur_px_per_z |z|``."""
    from convfocus.io.images import write_image
    from convfocus.synthesis.defocus import apply_blur

    out = Path(out_dir)
    images = out / "images"
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for s in range(1, n_slides + 1):
        for pos in range(1, positions + 1):
            sharp = _field(size, rng)
            for k, z in enumerate(z_levels, 1):
                name = f"Slide{s:02d}_Strip00_Slice{k:02d}_Position{pos:02d}.tif"
                write_image(images / name, apply_blur(sharp, "bokeh", blur_px_per_z * abs(z)))
                rows.append([name, s, 0, k, pos, f"{100 - 2.5 * abs(z):.4f}", z])
    list_path = out / "focuspath-standin.txt"
    _write_list(list_path, rows)
    return BenchmarkStandin(list_path, images)


def make_tcga_focus_standin(
    out_dir: str | Path,
    *,
    n_slides: int = 3,
    patches_per_label: int = 3,
    size: int = 1024,
    seed: int = 0,
) -> BenchmarkStandin:
    """A TCGA@Focus-format stand-in: in-focus patches and bokeh-blurred (class 12-25) ones."""
    from convfocus.io.images import write_image
    from convfocus.synthesis.defocus import apply_blur, sample_blur_param

    out = Path(out_dir)
    images = out / "images"
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for s in range(1, n_slides + 1):
        for label, folder in ((0, "In Focus"), (1, "Out of Focus")):
            for _ in range(patches_per_label):
                i, j = (int(v) for v in rng.integers(10_000, 90_000, size=2))
                rel = f"{folder}/Adrenal Gland/STANDIN-{s:02d}/patch_i_{i}_j_{j}.png"
                img = _field(size, rng)
                if label:
                    img = apply_blur(img, "bokeh",
                                     sample_blur_param(int(rng.integers(12, 26)), rng))
                write_image(images / rel, img)
                rows.append([rel, "Adrenal Gland", 0, label])
    list_path = out / "tcga-focus-standin.txt"
    _write_list(list_path, rows)
    return BenchmarkStandin(list_path, images)
