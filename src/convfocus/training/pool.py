"""The in-focus patch pool: 300 x 300 tissue patches at the model's pixel size.

Every source (slide or image) is brought to the model's pixel size (0.25 µm/px)
before patches are cut, so that a blur class means the same physical blur on
every source. Sources too coarse to stand for 40x tissue are left out.

A pool folder holds ``patches/*.png`` and ``manifest.csv`` with the columns
``patch,source,x_px,y_px,mpp,mpp_source,scale,split,mean_luma,tissue``
(``x_px, y_px``: the patch's top-left in the source's level-0 pixels).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convfocus import MODEL_MPP
from convfocus.errors import ConfigError, ConvFocusError
from convfocus.grading.tiling import grid_shape
from convfocus.grading.tissue import luma, tissue_mask, window_tissue_fraction
from convfocus.io.atomic import write_text_atomic
from convfocus.io.images import resize

log = logging.getLogger(__name__)

PATCH_PX = 300
MANIFEST_COLUMNS = (
    "patch", "source", "x_px", "y_px", "mpp", "mpp_source", "scale", "split", "mean_luma", "tissue",
)

#: Pixel sizes (µm/px) of the bundled in-focus images, which store none. Estimated
#: by eye against nuclear size (a lymphocyte nucleus is about 7 µm, epithelial
#: nuclei 8-10 µm), cross-checked with :func:`estimate_mpp`. ``None``: too coarse
#: for 40x tissue (4x/16x downsampled views), left out. See docs/model-card.md.
KNOWN_MPP: dict[str, float | None] = {
    "histolab-high-nuclei-score-level0.png": 0.45,
    "histolab-low-nuclei-score-level0.png": 0.5,
    "histolab-medium-nuclei-score-level0.png": 0.5,
    "histolab-tcga-lung-rgb.png": 0.25,
    "histolab-tissue-level0-4302-10273-4814-10785.png": 0.5,
    "histolab-tissue-level0-7352-11762-7864-12274.png": 0.5,
    "histolab-very-low-nuclei-score-level0.png": 0.5,
    "histoqc-template1.png": 0.5,
    "histoqc-template2.png": 0.5,
    "histoqc-template3.png": 0.5,
    "histoqc-template4.png": 0.5,
    "skimage-ihc.png": 0.35,
    "stardist-histo.jpg": 0.35,
    "tiatoolbox-target-image.png": 0.25,
    "slideflow-norm-tile.jpg": None,  # 302 µm tiles of 299 px: about 1 µm/px
    "histoprep-slide-with-ink.jpeg": None,  # low-magnification overview
}

#: Sources held out for validation (split by source, never by patch): four of
#: ``infocus`` and seven native-40x images of ``infocus-40x`` from seven organs
#: (lung, breast, kidney, prostate, stomach, colon, brain).
DEFAULT_VALIDATION = (
    "skimage-ihc.png",
    "stardist-histo.jpg",
    "histoqc-template4.png",
    "histolab-tissue-level0-7352-11762-7864-12274.png",
    "TCGA-49-4488-01Z-00-DX1.png",
    "TCGA-E2-A14V-01Z-00-DX1.png",
    "TCGA-B0-5711-01Z-00-DX1.png",
    "TCGA-G9-6363-01Z-00-DX1.png",
    "TCGA-RD-A8N9-01A-01-TS1.png",
    "TCGA-NH-A8F7-01A-01-TS1.png",
    "cpm15_image12.png",
)

#: Images kept for the grader checks only, never cut into the pool: the sharp but
#: nearly textureless image must grade near 0, which means little if it was trained on.
CHECK_ONLY = frozenset({"histolab-very-low-nuclei-score-level0.png"})


@dataclass(frozen=True)
class PoolEntry:
    patch: str
    source: str
    x_px: int
    y_px: int
    mpp: float
    mpp_source: str
    scale: float
    split: str
    mean_luma: float
    tissue: float


def estimate_mpp(rgb: np.ndarray, *, nucleus_um: float = 7.0) -> float | None:
    """Rough pixel size from nuclear size: ``nucleus_um`` / upper-quartile nucleus diameter.

    Nuclei are taken from the haematoxylin channel (colour deconvolution, Otsu
    threshold). Crude (about ±40 %), but a useful ruler where metadata is absent.
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    h = rgb2hed(rgb)[..., 0]
    m = ndi.binary_opening(h > threshold_otsu(h))
    lab, n = ndi.label(m)
    if n == 0:
        return None
    areas = np.bincount(lab.ravel())[1:]
    areas = areas[areas >= 12]
    if len(areas) < 10:
        return None
    d = 2.0 * np.sqrt(np.percentile(areas, 75) / np.pi)
    return float(nucleus_um / d)


def resample_to(rgb: np.ndarray, mpp: float, target_mpp: float = MODEL_MPP) -> np.ndarray:
    """Bring an image from ``mpp`` to ``target_mpp`` (Lanczos up, area down)."""
    f = mpp / target_mpp
    if abs(f - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    return resize(rgb, (max(1, round(w * f)), max(1, round(h * f))))


def cut_patches(
    rgb: np.ndarray,
    *,
    patch_px: int = PATCH_PX,
    stride_px: int = 150,
    min_tissue: float = 0.6,
) -> list[tuple[int, int, float, float]]:
    """Top-left corners of tissue patches on a regular grid: ``(x, y, tissue, mean_luma)``.

    Tissue is the paper's luma rule ``0 < Y <= 0.8``.
    """
    h, w = rgb.shape[:2]
    rows, cols = grid_shape((w, h), patch_px, stride_px)
    out: list[tuple[int, int, float, float]] = []
    if rows == 0 or cols == 0:
        return out
    xs = np.arange(cols) * stride_px
    ys = np.arange(rows) * stride_px
    frac = window_tissue_fraction(tissue_mask(rgb), 1.0, xs[None, :], ys[:, None], patch_px)
    y_img = luma(rgb)
    for r, c in np.argwhere(frac >= min_tissue):  # row-major
        x, y = int(xs[c]), int(ys[r])
        mean_y = float(y_img[y : y + patch_px, x : x + patch_px].mean())
        out.append((x, y, float(frac[r, c]), mean_y))
    return out


def default_sources(shared_data: Path | None) -> list[Path]:
    """The default pool: ``shared/data/infocus``, ``shared/data/slides`` and scikit-image's IHC."""
    sources: list[Path] = []
    if shared_data is not None and shared_data.is_dir():
        sources += sorted((shared_data / "infocus").glob("*"))
        sources += sorted((shared_data / "infocus-40x").glob("*/*.png"))
        sources += sorted((shared_data / "slides").glob("*.svs"))
    return sources


def manifest_mpp(folder: Path) -> dict[str, float]:
    """Pixel sizes from a source folder's ``MANIFEST.csv`` (columns ``file`` and ``mpp``).

    The ``mpp`` cell starts with the number (``"0.25 (40x, dataset)"``); rows whose
    cell does not are skipped. Keys are file names (``monuseg/x.png`` -> ``x.png``).
    """
    path = folder / "MANIFEST.csv"
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            head = (row.get("mpp") or "").split(" ", 1)[0]
            try:
                mpp = float(head)
            except ValueError:
                continue
            if np.isfinite(mpp) and mpp > 0:
                out[Path(row.get("file", "")).name] = mpp
    return out


def build_pool(
    sources: Sequence[Path],
    out: Path,
    *,
    mpp_overrides: dict[str, float] | None = None,
    validation: Iterable[str] = DEFAULT_VALIDATION,
    max_mpp: float = 0.55,
    densest_k: int | None = None,
    stride_px: int = 150,
    min_tissue: float = 0.6,
    max_per_source: int = 400,
    native_stride_px: int | None = None,
    max_per_upsampled_source: int | None = None,
    include_skimage_ihc: bool = True,
    seed: int = 0,
) -> list[PoolEntry]:
    """Cut 300 x 300 in-focus patches at 0.25 µm/px from slides and images.

    ``densest_k`` keeps only the K patches with the lowest mean luma per source
    (the paper's pick for raters). Sources coarser than ``max_mpp`` are left out.
    ``native_stride_px`` cuts sources already at about 0.25 µm/px on a denser grid
    and ``max_per_upsampled_source`` caps sources that had to be upsampled, so that
    native 40x tissue, the sharpest reference for class 0, is not outnumbered by
    20x tissue, whose upsampling itself blurs by a few classes.
    """
    from convfocus.io.atomic import make_folder
    from convfocus.io.images import write_png
    from convfocus.io.readers import open_slide

    rng = np.random.default_rng(seed)
    overrides = dict(KNOWN_MPP)
    for folder in sorted({q for p in sources for q in (p.parent, p.parent.parent)}):
        overrides.update(manifest_mpp(folder))
    overrides.update(mpp_overrides or {})
    val = set(validation)
    make_folder(out / "patches")
    entries: list[PoolEntry] = []

    items: list[tuple[str, np.ndarray, float, str]] = []
    for path in sources:
        name = path.name
        if name in CHECK_ONLY:
            log.info("%s: left out (a check image, never trained on)", name)
            continue
        if name in overrides and overrides[name] is None:
            log.info("%s: left out (too coarse for 40x tissue)", name)
            continue
        if "-level1" in name or "-level2" in name:
            log.info("%s: left out (a downsampled view, not 40x tissue)", name)
            continue
        try:
            slide = open_slide(path, mpp=overrides.get(name))
        except ConvFocusError as exc:
            log.warning("left out: %s", exc)
            continue
        try:
            mpp = slide.mpp
            if name in (mpp_overrides or {}):
                how = "given"
            elif name in KNOWN_MPP:
                how = "estimated by eye (nuclear size)"
            elif name in overrides:
                how = "source manifest"
            else:
                how = "metadata"
            if mpp is None or mpp > max_mpp:
                log.info("%s: left out (pixel size %s µm/px > %s)", name, mpp, max_mpp)
                continue
            w, h = slide.dimensions
            rgb = slide.read_region((0, 0), 0, (w, h))
        finally:
            slide.close()
        items.append((name, rgb, float(mpp), how))
    if include_skimage_ihc and not any(n == "skimage-ihc.png" for n, *_ in items):
        from skimage import data

        items.append(("skimage-ihc.png", data.immunohistochemistry(), KNOWN_MPP["skimage-ihc.png"]
                      or MODEL_MPP, "estimated by eye (nuclear size)"))

    for name, rgb, mpp, how in items:
        scaled = resample_to(rgb, mpp)
        f = mpp / MODEL_MPP
        native = f < 1.1
        stride = native_stride_px if (native and native_stride_px) else stride_px
        cap = max_per_source
        if not native and max_per_upsampled_source is not None:
            cap = min(cap, max_per_upsampled_source)
        cands = cut_patches(scaled, stride_px=stride, min_tissue=min_tissue)
        if densest_k is not None:
            cands = sorted(cands, key=lambda c: c[3])[:densest_k]
        elif len(cands) > cap:
            idx = rng.choice(len(cands), cap, replace=False)
            cands = [cands[i] for i in sorted(idx)]
        split = "val" if name in val else "train"
        stem = Path(name).stem
        for x, y, frac, mean_y in cands:
            fname = f"patches/{stem}_{x}_{y}.png"
            write_png(out / fname, scaled[y : y + PATCH_PX, x : x + PATCH_PX])
            entries.append(
                PoolEntry(fname, name, round(x / f), round(y / f), mpp, how, round(f, 4), split,
                          round(mean_y, 4), round(frac, 3))
            )
        log.info("%s: %d patches (%s, %.3f µm/px, x%.2f)", name, len(cands), split, mpp, f)
    if not entries:
        raise ConfigError("no in-focus patches could be cut from the given sources", out)
    write_manifest(out / "manifest.csv", entries)
    return entries


def write_manifest(path: Path, entries: Sequence[PoolEntry]) -> None:
    """Write ``POOL/manifest.csv`` atomically."""
    text = io.StringIO()
    wr = csv.writer(text)
    wr.writerow(MANIFEST_COLUMNS)
    for e in entries:
        wr.writerow([getattr(e, c) for c in MANIFEST_COLUMNS])
    write_text_atomic(path, text.getvalue())


def read_manifest(pool: Path) -> list[dict[str, str]]:
    """Rows of ``POOL/manifest.csv`` (columns ``patch`` and ``source`` required)."""
    path = pool / "manifest.csv"
    if not path.is_file():
        raise ConfigError("no manifest.csv in the pool folder", pool)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "patch" not in rows[0] or "source" not in rows[0]:
        raise ConfigError("manifest.csv needs at least the columns patch,source", path)
    return rows


def load_pool(pool: Path, split: str | None = None) -> tuple[np.ndarray, list[dict[str, str]]]:
    """All patches of a pool (optionally one split) as one uint8 array (n, 300, 300, 3)."""
    from convfocus.io.images import read_image

    rows = read_manifest(pool)
    if split is not None:
        rows = [r for r in rows if r.get("split", "train") == split]
    arrs = []
    for r in rows:
        img = read_image(pool / r["patch"])
        if img.shape[:2] != (PATCH_PX, PATCH_PX):
            img = resize(img, (PATCH_PX, PATCH_PX))
        arrs.append(img)
    if not arrs:
        return np.zeros((0, PATCH_PX, PATCH_PX, 3), np.uint8), rows
    return np.stack(arrs), rows
