"""Calibration of the semi-synthetic defocus against real tissue.

Two measurements back the numbers of :mod:`convfocus.synthesis.defocus`:

- **Blur scale pair.** The Gaussian sigma and the bokeh radius of a class are
  aligned by minimising the summed squared RGB difference between the
  Gaussian-blurred and the bokeh-blurred versions of real in-focus patches over
  all classes. Image differences only identify the *ratio* sigma / r, so the bokeh
  scale is held at 1.4 and the Gaussian scale is fitted (per class and as one
  ratio for all classes), as is the Gaussian maximum that matches the bokeh
  maximum of class 29.
- **Noise level.** A robust per-block noise sigma (Immerkaer's Laplacian-difference
  residual) as a function of intensity, in 8-bit levels, compares real scans with
  synthetic patches.

The blur difference is evaluated exactly in the Fourier domain: each patch is
mirror-extended to twice its size (the boundary :func:`~convfocus.synthesis.defocus.apply_blur`
uses), so blurring is a circular convolution and, by Parseval, the squared
difference of the two blurred patches is ``sum_f |P(f)|^2 (G_sigma(f) - D_r(f))^2``
with the transfer functions of the very kernels the synthesis uses. The pooled
power spectrum is computed once; every sigma then costs one outer product.

References: Kohlberger et al. 2019, Methods, "Semi-synthetic training data
generation" and Figure 4 (0.926, 1.4, 132, 200); Immerkaer, "Fast noise variance
estimation", Computer Vision and Image Understanding 64(2), 1996.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import minimize_scalar

from convfocus import NUM_CLASSES
from convfocus.errors import ConfigError, ConvFocusError
from convfocus.io.atomic import write_bytes_atomic, write_text_atomic
from convfocus.synthesis.defocus import (
    BOKEH_MAX,
    BOKEH_SCALE,
    GAUSS_MAX,
    GAUSS_SCALE,
    apply_blur,
    class_centre_px,
    disk_kernel,
    gaussian_kernel,
)

log = logging.getLogger(__name__)

#: The paper's calibrated pair and class-29 maxima, printed beside ours.
PAPER = {"gauss_scale": GAUSS_SCALE, "bokeh_scale": BOKEH_SCALE,
         "gauss_max": GAUSS_MAX, "bokeh_max": BOKEH_MAX}


# --- blur difference in the Fourier domain ---------------------------------------------------------


def mirror_power_spectrum(patches: Iterable[np.ndarray]) -> np.ndarray:
    """Pooled power spectrum of mirror-extended patches: ``sum |rfft2(E)|^2`` over patches and
    channels, where ``E`` is a (h, w, 3) patch reflected to (2h, 2w).

    All patches must share one shape. Values are in 8-bit levels squared.
    """
    total: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    for p in patches:
        if p.ndim != 3:
            raise ValueError(f"expected (h, w, channels) patches, got shape {p.shape}")
        if shape is None:
            shape = p.shape
        elif p.shape != shape:
            raise ValueError(f"patches differ in shape: {p.shape} vs {shape}")
        x = p.astype(np.float64)
        x = np.concatenate([x, x[::-1]], axis=0)
        x = np.concatenate([x, x[:, ::-1]], axis=1)
        f = np.fft.rfft2(x, axes=(0, 1))
        power = (f.real**2 + f.imag**2).sum(axis=2)
        total = power if total is None else total + power
    if total is None:
        raise ValueError("no patches")
    return total


def _wrap_1d(k: np.ndarray, n: int) -> np.ndarray:
    """Centred 1-D kernel wrapped onto a circle of ``n`` samples (periodic extension)."""
    half = len(k) // 2
    out = np.zeros(n)
    np.add.at(out, np.arange(-half, half + 1) % n, k.astype(np.float64))
    return out


def _gaussian_transfer_1d(sigma_px: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The two 1-D factors (length h, and w // 2 + 1) of :func:`gaussian_transfer`."""
    g = gaussian_kernel(sigma_px)
    return np.fft.fft(_wrap_1d(g, h)).real, np.fft.rfft(_wrap_1d(g, w)).real


def gaussian_transfer(sigma_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Transfer function (rfft2 layout) of the separable Gaussian kernel of
    :func:`~convfocus.synthesis.defocus.gaussian_kernel`, circular on a ``shape`` grid."""
    gy, gx = _gaussian_transfer_1d(sigma_px, *shape)
    return gy[:, None] * gx[None, :]


def disk_transfer(radius_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Transfer function (rfft2 layout) of :func:`~convfocus.synthesis.defocus.disk_kernel`, circular
    on a ``shape`` grid."""
    h, w = shape
    k = disk_kernel(radius_px).astype(np.float64)
    half = k.shape[0] // 2
    grid = np.zeros((h, w))
    idx = np.arange(-half, half + 1)
    np.add.at(grid, (idx[:, None] % h, idx[None, :] % w), k)
    return np.fft.rfft2(grid).real


def _rfft_weights(shape: tuple[int, int]) -> np.ndarray:
    """Multiplicity of each rfft2 column in the full spectrum (Parseval)."""
    w = shape[1]
    m = np.full(w // 2 + 1, 2.0)
    m[0] = 1.0
    if w % 2 == 0:
        m[-1] = 1.0
    return m


class BlurDifference:
    """Summed squared RGB difference between Gaussian- and bokeh-blurred patches.

    ``ssd(sigma, r)`` is the total over all patches (8-bit levels squared) of the
    original-size patches; ``rms(sigma, r)`` the root mean square per value.
    """

    def __init__(self, patches: np.ndarray) -> None:
        if patches.ndim != 4 or len(patches) == 0:
            raise ValueError(f"expected (n, h, w, 3) patches, got shape {patches.shape}")
        n, h, w, c = patches.shape
        self.ext_shape = (2 * h, 2 * w)
        self.n_values = n * h * w * c
        power = mirror_power_spectrum(patches)
        # Parseval, then / 4: the mirror extension holds four copies of each patch.
        self._weighted = power * _rfft_weights(self.ext_shape)[None, :] / (4.0 * 4 * h * w)
        self._disk: dict[float, tuple[np.ndarray, float]] = {}

    def _d(self, r: float) -> tuple[np.ndarray, float]:
        """``(W D_r, sum W D_r^2)`` for a bokeh radius, cached."""
        if r not in self._disk:
            d = disk_transfer(r, self.ext_shape)
            wd = self._weighted * d
            self._disk[r] = (wd, float((wd * d).sum()))
        return self._disk[r]

    def ssd(self, sigma_px: float, radius_px: float) -> float:
        # sum W (gy gx - D)^2 = (gy^2)' W (gx^2) - 2 gy' (W D) gx + sum W D^2: the Gaussian
        # is separable, so each sigma costs two matrix-vector products
        gy, gx = _gaussian_transfer_1d(sigma_px, *self.ext_shape)
        wd, dd = self._d(radius_px)
        gg = float((gy * gy) @ self._weighted @ (gx * gx))
        gd = float(gy @ wd @ gx)
        return max(gg - 2.0 * gd + dd, 0.0)

    def rms(self, sigma_px: float, radius_px: float) -> float:
        return math.sqrt(self.ssd(sigma_px, radius_px) / self.n_values)

    def fit_sigma(self, radius_px: float, *, lo: float = 0.2, hi: float = 1.2) -> float:
        """The sigma that best matches a bokeh of ``radius_px`` (searched in [lo r, hi r])."""
        res = minimize_scalar(lambda s: self.ssd(s, radius_px), method="bounded",
                              bounds=(lo * radius_px, hi * radius_px),
                              options={"xatol": 1e-4 * radius_px})
        return float(res.x)

    def fit_ratio(self, radii: Sequence[float], *, lo: float = 0.2, hi: float = 1.2) -> float:
        """One ratio ``k`` minimising ``sum_r ssd(k r, r)`` over ``radii``."""
        res = minimize_scalar(lambda k: sum(self.ssd(k * r, r) for r in radii), method="bounded",
                              bounds=(lo, hi), options={"xatol": 1e-5})
        return float(res.x)


# --- the calibration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFit:
    """Fit of one class: the bokeh radius at the class centre and its best Gaussian sigma."""

    cls: int
    radius_px: float
    sigma_px: float
    ratio: float
    rms_at_fit: float  # RMS difference (8-bit levels) between the two blurs at the fit
    rms_at_ratio: float  # ... with sigma = (common ratio) x radius
    rms_at_paper: float  # ... with the paper's sigma = 0.926 / 1.4 x radius


@dataclass(frozen=True)
class BlurCalibration:
    """Result of :func:`calibrate_blur`; ``gauss_scale = ratio x bokeh_scale``."""

    bokeh_scale: float
    gauss_scale: float
    ratio: float
    bokeh_max: float
    gauss_max: float
    moment_ratio: float  # 0.5: a disk of radius r has the second moment of a Gaussian of r / 2
    n_patches: int
    patch_px: tuple[int, int]
    classes: list[ClassFit] = field(default_factory=list)
    ratio_curve: list[tuple[float, float]] = field(default_factory=list)  # (k, RMS, classes 1-28)
    paper: dict[str, float] = field(default_factory=lambda: dict(PAPER))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_blur(
    patches: np.ndarray,
    *,
    bokeh_scale: float = BOKEH_SCALE,
    bokeh_max: float = BOKEH_MAX,
    num_classes: int = NUM_CLASSES,
) -> BlurCalibration:
    """Fit the Gaussian scale and maximum to a fixed bokeh scale and maximum on real patches.

    For each class 1..28 the sigma best matching the bokeh radius at the class
    centre is fitted; the common ratio minimises the summed squared difference over
    all these classes (the paper's criterion); the Gaussian maximum is the sigma
    best matching the bokeh maximum (class 29's top).

    Parameters
    ----------
    patches : (n, h, w, 3) uint8 in-focus tissue at the model's pixel size.

    References: Kohlberger et al. 2019, Methods and Figure 4 (paper: 0.926 / 1.4 and 132 / 200).
    """
    diff = BlurDifference(patches)
    last = num_classes - 1
    radii = [class_centre_px(c, scale=bokeh_scale, maximum=bokeh_max, num_classes=num_classes)
             for c in range(1, last)]
    ratio = diff.fit_ratio(radii)
    paper_ratio = GAUSS_SCALE / BOKEH_SCALE
    fits = []
    for c, r in zip(range(1, last), radii):
        s = diff.fit_sigma(r)
        fits.append(ClassFit(c, round(r, 4), round(s, 4), round(s / r, 4),
                             round(diff.rms(s, r), 4), round(diff.rms(ratio * r, r), 4),
                             round(diff.rms(paper_ratio * r, r), 4)))
    gauss_max = diff.fit_sigma(bokeh_max)
    ks = np.linspace(0.4, 0.9, 21)
    curve = [(round(float(k), 3),
              round(math.sqrt(sum(diff.ssd(k * r, r) for r in radii)
                              / (diff.n_values * len(radii))), 4))
             for k in ks]
    return BlurCalibration(
        bokeh_scale=bokeh_scale, gauss_scale=round(ratio * bokeh_scale, 4), ratio=round(ratio, 4),
        bokeh_max=bokeh_max, gauss_max=round(gauss_max, 2), moment_ratio=0.5,
        n_patches=len(patches), patch_px=(int(patches.shape[1]), int(patches.shape[2])),
        classes=fits, ratio_curve=curve,
    )


# --- noise level -----------------------------------------------------------------------------------

#: Immerkaer's difference of two Laplacians; for i.i.d. noise of sigma its response has sigma 6 sigma.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32) / 6.0


def block_noise_sigma(rgb: np.ndarray, *, block_px: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Noise sigma of every ``block_px`` square of every channel, in the image's units.

    Returns ``(mean, sigma)``, flat arrays with one value per block and channel:
    the block's mean value and ``sqrt(pi / 2) * mean |I * N|`` with Immerkaer's
    zero-mean high-pass ``N`` (exact for Gaussian noise on a locally linear
    image). Texture raises a block's sigma, never lowers it, so a low percentile
    over many blocks estimates the noise floor.

    References: Immerkaer 1996.
    """
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    h, w = rgb.shape[:2]
    hb, wb = h // block_px, w // block_px
    if hb == 0 or wb == 0:
        raise ValueError(f"image {w}x{h} smaller than one block of {block_px} px")
    means, sigmas = [], []
    for ch in range(rgb.shape[2]):
        f = np.ascontiguousarray(rgb[..., ch], dtype=np.float32)
        r = np.abs(cv2.filter2D(f, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT))

        def per_block(a: np.ndarray) -> np.ndarray:
            a = a[: hb * block_px, : wb * block_px].reshape(hb, block_px, wb, block_px)
            return a.mean(axis=(1, 3)).ravel()

        means.append(per_block(f))
        sigmas.append(per_block(r) * math.sqrt(math.pi / 2))
    return np.concatenate(means), np.concatenate(sigmas)


#: Intensity bins (8-bit levels) of :func:`noise_by_intensity`.
NOISE_BINS = (0, 96, 128, 160, 192, 216, 232, 248, 256)


def noise_by_intensity(
    images: Iterable[np.ndarray],
    *,
    bins: Sequence[float] = NOISE_BINS,
    percentile: float = 25.0,
    min_blocks: int = 20,
    block_px: int = 16,
) -> np.ndarray:
    """Noise floor per intensity bin: the ``percentile`` of block sigmas whose block mean falls
    in the bin (NaN where fewer than ``min_blocks``), pooled over ``images`` and channels.

    References: Immerkaer 1996 (the per-block estimator).
    """
    ms, ss = [], []
    for img in images:
        m, s = block_noise_sigma(img, block_px=block_px)
        ms.append(m)
        ss.append(s)
    if not ms:
        raise ValueError("no images")
    mean, sigma = np.concatenate(ms), np.concatenate(ss)
    out = np.full(len(bins) - 1, np.nan)
    for i, (lo, hi) in enumerate(itertools.pairwise(bins)):
        sel = sigma[(mean >= lo) & (mean < hi)]
        if len(sel) >= min_blocks:
            out[i] = float(np.percentile(sel, percentile))
    return out


# --- real patches ----------------------------------------------------------------------------------


def source_patches(
    sources: Sequence[Path],
    *,
    per_source: int = 8,
    max_mpp: float = 0.55,
    mpp: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The ``per_source`` densest 300 x 300 tissue patches of each source at 0.25 µm/px.

    Pixel sizes come from ``mpp`` (all sources), the bundled images' known sizes
    (:data:`convfocus.training.pool.KNOWN_MPP`) or the file's metadata; sources coarser than
    ``max_mpp`` and ones that cannot be read are left out with a log line.
    Returns the patches and the source name of each.

    References: Kohlberger et al. 2019 (densest = lowest mean luma; K = 8 per AT2 slide).
    """
    from convfocus.io.readers import open_slide
    from convfocus.training.pool import KNOWN_MPP, PATCH_PX, cut_patches, resample_to

    out: list[np.ndarray] = []
    names: list[str] = []
    for path in sources:
        name = Path(path).name
        given = mpp if mpp is not None else KNOWN_MPP.get(name, None)
        if mpp is None and name in KNOWN_MPP and KNOWN_MPP[name] is None:
            log.info("%s: left out (too coarse for 40x tissue)", name)
            continue
        if mpp is None and ("-level1" in name or "-level2" in name):
            log.info("%s: left out (a downsampled view, not 40x tissue)", name)
            continue
        try:
            slide = open_slide(path, mpp=given)
            try:
                src_mpp = float(slide.mpp) if slide.mpp is not None else None
                if src_mpp is None or src_mpp > max_mpp:
                    log.info("%s: left out (pixel size %s µm/px > %s)", name, src_mpp, max_mpp)
                    continue
                rgb = slide.read_region((0, 0), 0, slide.dimensions)
            finally:
                slide.close()
        except ConvFocusError as exc:
            log.warning("left out: %s", exc)
            continue
        scaled = resample_to(rgb, src_mpp)
        cands = sorted(cut_patches(scaled, stride_px=PATCH_PX), key=lambda c: c[3])[:per_source]
        for x, y, _, _ in cands:
            out.append(scaled[y : y + PATCH_PX, x : x + PATCH_PX])
            names.append(name)
        log.info("%s: %d patches (%.3f µm/px)", name, len(cands), src_mpp)
    if not out:
        raise ConfigError("no tissue patches could be cut from the given images")
    return np.stack(out), names


def default_calibration_patches(shared_data: Path | None, *, per_source: int = 8) -> np.ndarray:
    """Patches of the bundled in-focus images (``shared_data/infocus``); scikit-image's IHC
    image where that folder is absent."""
    if shared_data is not None and (shared_data / "infocus").is_dir():
        sources = sorted((shared_data / "infocus").glob("*"))
        return source_patches(sources, per_source=per_source)[0]
    from skimage import data

    from convfocus.training.pool import KNOWN_MPP, PATCH_PX, cut_patches, resample_to

    scaled = resample_to(data.immunohistochemistry(), KNOWN_MPP["skimage-ihc.png"] or 0.25)
    cands = cut_patches(scaled, stride_px=PATCH_PX // 2)
    return np.stack([scaled[y : y + PATCH_PX, x : x + PATCH_PX] for x, y, _, _ in cands])


# --- outputs ---------------------------------------------------------------------------------------


def calibration_figure(result: BlurCalibration, patch: np.ndarray, *,
                       classes: Sequence[int] = (0, 4, 8, 12, 16, 20, 24, 28, 29)) -> bytes:
    """PNG in the manner of the paper's Figure 4: one patch blurred with Gaussian and bokeh at
    class centres (Gaussian with our fitted scale), and the fit itself."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def centre(c: int, kind: str) -> float:
        if kind == "bokeh":
            return class_centre_px(c, scale=result.bokeh_scale, maximum=result.bokeh_max)
        return class_centre_px(c, kind="gaussian", scale=result.gauss_scale,
                               maximum=result.gauss_max)

    n = len(classes)
    fig = Figure(figsize=(1.5 * n, 8.2), layout="constrained")
    FigureCanvasAgg(fig)
    subfigs: Any = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    top, bottom = subfigs
    axes = top.subplots(2, n)
    for j, c in enumerate(classes):
        for i, kind in enumerate(("gaussian", "bokeh")):
            p = centre(c, kind)
            ax = axes[i, j]
            ax.imshow(apply_blur(patch, kind, p), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            sym = "σ" if kind == "gaussian" else "r"
            ax.set_title(f"class {c}\n{sym} = {p:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(kind, fontsize=9)
    ax1, ax2 = bottom.subplots(1, 2)
    cs = [f.cls for f in result.classes]
    ax1.plot(cs, [f.ratio for f in result.classes], "o-", ms=3, label="best σ / r per class")
    ax1.axhline(result.ratio, color="C0", ls="--",
                label=f"ours, one ratio: {result.ratio:.3f} ({result.gauss_scale:.3f} / 1.4)")
    paper_ratio = result.paper["gauss_scale"] / result.paper["bokeh_scale"]
    ax1.axhline(paper_ratio, color="C3", ls=":", label=f"paper: {paper_ratio:.3f} (0.926 / 1.4)")
    ax1.axhline(result.moment_ratio, color="grey", ls="-.", lw=0.8,
                label="equal second moment: 0.5")
    ax1.set_xlabel("class (bokeh radius at class centre)")
    ax1.set_ylabel("Gaussian σ / bokeh r")
    ax1.set_ylim(0.45, 0.7)
    ax1.legend(fontsize=7, loc="lower right")
    ks = [k for k, _ in result.ratio_curve]
    ax2.plot(ks, [v for _, v in result.ratio_curve], "-", color="C0")
    ax2.axvline(result.ratio, color="C0", ls="--", label=f"ours {result.ratio:.3f}")
    ax2.axvline(paper_ratio, color="C3", ls=":", label=f"paper {paper_ratio:.3f}")
    ax2.set_xlabel("σ / r used for all classes 1-28")
    ax2.set_ylabel("RMS difference over classes 1-28 (8-bit levels)")
    ax2.set_title(f"{result.n_patches} patches; class-29 max: σ {result.gauss_max:.1f} for r "
                  f"{result.bokeh_max:.0f} (paper 132 / 200)", fontsize=8)
    ax2.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_calibration(out: Path, result: BlurCalibration, patch: np.ndarray) -> list[Path]:
    """Write ``calibration.json`` and ``calibration.png`` into ``out``."""
    paths = [out / "calibration.json", out / "calibration.png"]
    write_text_atomic(paths[0], json.dumps(result.to_dict(), indent=2) + "\n", parents=True)
    write_bytes_atomic(paths[1], calibration_figure(result, patch), parents=True)
    return paths


def calibration_table(result: BlurCalibration) -> str:
    """Plain-text report: per-class fit, then ours beside the paper's."""
    paper_ratio = result.paper["gauss_scale"] / result.paper["bokeh_scale"]
    lines = [(f"{result.n_patches} patches of {result.patch_px[1]}x{result.patch_px[0]} px; "
              f"bokeh scale fixed at {result.bokeh_scale:g}"),
             "class  r_centre  best_sigma  sigma/r   RMS@best  RMS@ours  RMS@paper (8-bit levels)"]
    for f in result.classes:
        lines.append(f"{f.cls:5d}  {f.radius_px:8.3f}  {f.sigma_px:10.3f}  {f.ratio:7.4f}  "
                     f"{f.rms_at_fit:8.3f}  {f.rms_at_ratio:8.3f}  {f.rms_at_paper:9.3f}")
    lines += [
        "",
        "                         ours      paper",
        f"sigma / r ratio       {result.ratio:7.4f}    {paper_ratio:7.4f}",
        f"Gaussian scale        {result.gauss_scale:7.4f}    {result.paper['gauss_scale']:7.4f}",
        f"bokeh scale (fixed)   {result.bokeh_scale:7.4f}    {result.paper['bokeh_scale']:7.4f}",
        f"Gaussian max, class 29 {result.gauss_max:6.1f}    {result.paper['gauss_max']:7.1f}",
        f"bokeh max (fixed)     {result.bokeh_max:7.1f}    {result.paper['bokeh_max']:7.1f}",
    ]
    return "\n".join(lines)
