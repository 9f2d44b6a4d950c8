"""Patches for human raters: random 40x tissue patches, the densest K per slide.

From each slide, random ``patch_px`` x ``patch_px`` patches at the model's pixel size
are drawn from tissue (marker ink left out: it is dark, so the densest-first choice
would take it first); the ``k`` with the lowest mean luma (the densest tissue) are
written as PNG files with a manifest, for the rating workbench (``convfocus rate``).

References: 300 x 300 px patches at 40x from the tissue mask; top 8 (Aperio AT2) or
24 (NanoZoomer XR) per slide by lowest average luma (Kohlberger et al. 2019).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convfocus import MODEL_MPP
from convfocus.errors import ConfigError, NoTissueError, OutputError, PixelSizeError
from convfocus.grading.tissue import luma, tissue_and_ink, window_tissue_fraction
from convfocus.io.atomic import write_text_atomic
from convfocus.io.images import resize

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
PATCH_DIR = "patches"
MANIFEST_FIELDS = ("patch", "source", "x_px", "y_px", "mpp", "mean_luma")


@dataclass(frozen=True)
class PatchRecord:
    """One sampled patch: file (relative to the manifest's folder) and where it came from.

    ``x_px``/``y_px`` are the patch's top-left corner in level-0 pixels of ``source``;
    ``mpp`` is the pixel size of the PNG (the model's, after resampling).
    """

    patch: str
    source: str
    x_px: int
    y_px: int
    mpp: float
    mean_luma: float


def mean_luma(rgb: np.ndarray) -> float:
    """Average luma ``Y = 0.212 R + 0.715 G + 0.072 B`` of an RGB image, in [0, 1].

    References: "lowest average luma value" (Kohlberger et al. 2019).
    """
    return float(np.mean(luma(rgb), dtype=np.float64))


def candidate_positions(
    th_mask: np.ndarray,
    l0_dims: tuple[int, int],
    l0_patch_px: int,
    n: int,
    rng: np.random.Generator,
    *,
    min_tissue: float = 0.5,
    max_draws: int = 8,
) -> list[tuple[int, int]]:
    """Up to ``n`` random level-0 top-left corners of patches lying mostly on tissue.

    Centres are drawn uniformly from tissue pixels of the thumbnail mask; a patch is
    kept when at least ``min_tissue`` of its footprint on the mask is tissue
    (:func:`~convfocus.grading.tissue.window_tissue_fraction`).
    """
    l0_w, l0_h = l0_dims
    th_h, th_w = th_mask.shape
    ys, xs = np.nonzero(th_mask)
    if xs.size == 0 or l0_patch_px > min(l0_w, l0_h):
        return []
    sx, sy = l0_w / th_w, l0_h / th_h
    out: list[tuple[int, int]] = []
    for _ in range(max_draws):
        pick = rng.integers(0, xs.size, size=n)
        # a random point inside the chosen thumbnail pixel, as the level-0 patch centre
        cx = (xs[pick] + rng.random(n)) * sx
        cy = (ys[pick] + rng.random(n)) * sy
        x0 = np.clip(np.round(cx - l0_patch_px / 2), 0, l0_w - l0_patch_px).astype(np.int64)
        y0 = np.clip(np.round(cy - l0_patch_px / 2), 0, l0_h - l0_patch_px).astype(np.int64)
        ok = window_tissue_fraction(th_mask, (sx, sy), x0, y0, l0_patch_px) >= min_tissue
        out += [(int(x), int(y)) for x, y in zip(x0[ok], y0[ok])]
        if len(out) >= n:
            break
    return out[:n]


def _overlaps(a: tuple[int, int], b: tuple[int, int], size: int) -> bool:
    return abs(a[0] - b[0]) < size and abs(a[1] - b[1]) < size


def select_densest(
    candidates: Sequence[tuple[tuple[int, int], float]], k: int, l0_patch_px: int, *,
    allow_overlap: bool = False,
) -> list[int]:
    """Indices of the ``k`` candidates with the lowest mean luma (ties: draw order).

    Unless ``allow_overlap``, a candidate overlapping one already chosen is skipped.
    """
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i][1], i))
    chosen: list[int] = []
    for i in order:
        if len(chosen) == k:
            break
        if allow_overlap or not any(
            _overlaps(candidates[i][0], candidates[j][0], l0_patch_px) for j in chosen
        ):
            chosen.append(i)
    return chosen


def _read_patch(slide, l0_xy: tuple[int, int], l0_patch_px: int, patch_px: int,
                mpp: float, target_mpp: float) -> np.ndarray:
    """The patch at the target pixel size, from the coarsest level fine enough."""
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds * mpp <= target_mpp * 1.001:
            level = i
    ds = float(slide.level_downsamples[level])
    size = max(1, math.ceil(l0_patch_px / ds))
    rgb = np.ascontiguousarray(slide.read_region(l0_xy, level, (size, size))[..., :3])
    rgb = resize(rgb, (patch_px, patch_px))
    return rgb.astype(np.uint8, copy=False)


def sample_slide(
    path: Path,
    *,
    k: int = 8,
    n_candidates: int = 200,
    patch_px: int = 300,
    target_mpp: float = MODEL_MPP,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    allow_overlap: bool = False,
    thumbnail_px: int = 1024,
    max_ink: float = 0.02,
    rng: np.random.Generator,
) -> list[tuple[tuple[int, int], float, np.ndarray]]:
    """The ``k`` densest random tissue patches of one slide: (level-0 xy, luma, RGB).

    A patch holds at least ``min_tissue`` of tissue and at most ``max_ink`` of marker ink
    (:func:`~convfocus.grading.tissue.tissue_and_ink`) on the thumbnail.

    Raises PixelSizeError when the pixel size is unknown, NoTissueError when no
    patch fits on tissue.
    """
    from convfocus.io.readers import open_slide

    slide = open_slide(path, mpp=mpp)
    try:
        slide_mpp = slide.mpp
        if slide_mpp is None or not slide_mpp > 0:
            raise PixelSizeError("pixel size unknown; give it with --mpp", path)
        if slide_mpp > target_mpp * 1.1:
            log.warning("%s: %.3f µm/px is coarser than %.3f µm/px; patches are upsampled and "
                        "carry no 40x detail", path, slide_mpp, target_mpp)
        l0_patch_px = max(1, round(patch_px * target_mpp / slide_mpp))
        thumb = slide.get_thumbnail(thumbnail_px)
        th_mask, ink = tissue_and_ink(thumb)  # marker ink is not tissue to rate
        positions = candidate_positions(th_mask, slide.dimensions, l0_patch_px, n_candidates,
                                        rng, min_tissue=min_tissue)
        if positions and ink.any():  # nor is tissue under ink, or beside it in a patch
            scale = (slide.dimensions[0] / ink.shape[1], slide.dimensions[1] / ink.shape[0])
            corners = np.array(positions, dtype=np.float64)
            inked = window_tissue_fraction(ink, scale, corners[:, 0], corners[:, 1],
                                           l0_patch_px)
            positions = [p for p, f in zip(positions, inked, strict=True) if f <= max_ink]
        if not positions:
            raise NoTissueError(f"no {l0_patch_px} px patch lies on tissue", path)
        scored: list[tuple[tuple[int, int], float, np.ndarray]] = []
        for xy in positions:
            rgb = _read_patch(slide, xy, l0_patch_px, patch_px, slide_mpp, target_mpp)
            scored.append((xy, mean_luma(rgb), rgb))
        keep = select_densest([(xy, luma) for xy, luma, _ in scored], k, l0_patch_px,
                              allow_overlap=allow_overlap)
        return [scored[i] for i in keep]
    finally:
        slide.close()


def _check_settings(k: int, n_candidates: int, patch_px: int, min_tissue: float,
                    target_mpp: float) -> None:
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if n_candidates < k:
        raise ConfigError(f"n_candidates ({n_candidates}) must be >= k ({k})")
    if not 16 <= patch_px <= 4096:
        raise ConfigError(f"patch size must be in [16, 4096] px, got {patch_px}")
    if not 0.0 < min_tissue <= 1.0:
        raise ConfigError(f"min_tissue must be in (0, 1], got {min_tissue}")
    if not 0.05 <= target_mpp <= 10:
        raise ConfigError(f"implausible target pixel size {target_mpp} µm/px")


def sample_patches(
    slides: Sequence[str | Path],
    out: str | Path,
    *,
    k: int = 8,
    n_candidates: int = 200,
    seed: int = 0,
    patch_px: int = 300,
    target_mpp: float = MODEL_MPP,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    allow_overlap: bool = False,
) -> tuple[list[PatchRecord], list[tuple[str, str]]]:
    """Sample the ``k`` densest patches of each slide into ``out/patches`` + manifest.csv.

    Returns (records written, [(slide, reason) skipped]). A slide that cannot be read
    or has no tissue is skipped with its reason; if every slide fails, the first
    error is raised. ``out`` must not hold a manifest already.

    References: K = 8 (AT2) or 24 (NanoZoomer XR); 300 px at 40x (Kohlberger et al. 2019).
    """
    from convfocus.errors import ConvFocusError
    from convfocus.io.images import write_image

    _check_settings(k, n_candidates, patch_px, min_tissue, target_mpp)
    if not slides:
        raise ConfigError("no slides given")
    out = Path(out)
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        raise OutputError("already holds a manifest.csv; sample into a new folder", out)
    try:
        (out / PATCH_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder: {exc.strerror}", out) from None

    seeds = np.random.SeedSequence(seed).spawn(len(slides))
    records: list[PatchRecord] = []
    skipped: list[tuple[str, str]] = []
    first_error: ConvFocusError | None = None
    used_names: set[str] = set()
    for path, ss in zip(map(Path, slides), seeds):
        try:
            picked = sample_slide(path, k=k, n_candidates=n_candidates, patch_px=patch_px,
                                  target_mpp=target_mpp, mpp=mpp, min_tissue=min_tissue,
                                  allow_overlap=allow_overlap, rng=np.random.default_rng(ss))
        except ConvFocusError as exc:
            log.warning("skipped: %s", exc)
            skipped.append((str(path), exc.message))
            first_error = first_error or exc
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"(?i)\.ome$", "", path.stem)) or "slide"
        for (x, y), patch_luma, rgb in picked:
            name = f"{stem}_x{x}_y{y}.png"
            n = 1
            while name in used_names:
                n += 1
                name = f"{stem}_x{x}_y{y}_{n}.png"
            used_names.add(name)
            rel = f"{PATCH_DIR}/{name}"
            write_image(out / rel, rgb)
            records.append(PatchRecord(rel, str(path.resolve()), x, y, target_mpp,
                                       round(patch_luma, 6)))
        log.info("%s: %d patches", path.name, len(picked))
    if not records:
        assert first_error is not None
        raise first_error
    write_manifest(manifest, records)
    return records, skipped


def write_manifest(path: Path, records: Iterable[PatchRecord],
                   fields: Sequence[str] = MANIFEST_FIELDS) -> None:
    """Write a manifest atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(fields)
    for r in records:
        writer.writerow([getattr(r, f) for f in fields])
    write_text_atomic(path, text.getvalue())


def read_manifest(folder: str | Path) -> list[PatchRecord]:
    """The records of ``folder/manifest.csv``; patch files must lie inside ``folder``."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError("no manifest.csv here: run `convfocus sample` first", folder)
    root = folder.resolve()
    records: list[PatchRecord] = []
    seen: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"patch", "source", "x_px", "y_px", "mpp"} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"manifest lacks columns {sorted(missing)}", path)
            for line, row in enumerate(reader, start=2):
                rel = (row["patch"] or "").strip()
                target = (root / rel).resolve()
                if not rel or root not in target.parents:
                    raise ConfigError(f"line {line}: patch path outside the folder", path)
                if rel in seen:
                    raise ConfigError(f"line {line}: duplicate patch {rel!r}", path)
                seen.add(rel)
                records.append(PatchRecord(
                    rel, row["source"], int(row["x_px"]), int(row["y_px"]), float(row["mpp"]),
                    float(row.get("mean_luma") or "nan"),
                ))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"malformed manifest: {exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("manifest is not UTF-8 text", path) from None
    return records
