"""Semi-synthetic defocus: class -> blur parameter sampling, and its application.

Sampling (:func:`sample_blur_param`, :func:`sample_synthesis`) is kept apart from
applying (:func:`apply_blur`, :func:`add_poisson_noise`, :func:`jpeg_roundtrip`,
:func:`synthesize`) so that the sampled parameter is the label. Every function is
pure and seeded through an explicit :class:`numpy.random.Generator`.

References: Kohlberger et al., "Whole-slide image focus quality: automatic
assessment and impact on AI cancer detection", J Pathol Inform 2019 (ConvFocus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from convfocus import NUM_CLASSES

#: Calibrated scale of the Gaussian sigma and bokeh radius per class (paper values).
GAUSS_SCALE = 0.926
BOKEH_SCALE = 1.4
#: Upper bounds of the wide strong class 29 (paper values).
GAUSS_MAX = 132.0
BOKEH_MAX = 200.0
#: Exponent step between consecutive classes: e^(3/28) (paper value).
CLASS_STEP = 3.0 / 28.0

BLUR_KINDS = ("bokeh", "gaussian")
SPACINGS = ("exponential", "linear")


# --- sampling ----------------------------------------------------------------------------------


def class_interval(
    c: int,
    *,
    kind: str = "bokeh",
    spacing: str = "exponential",
    scale: float | None = None,
    maximum: float | None = None,
    num_classes: int = NUM_CLASSES,
) -> tuple[float, float]:
    """Interval of the blur parameter (sigma or radius, in pixels) for class ``c``.

    Class 0 is in focus, ``(0, 0)``. Classes 1..28 are exponentially spaced,
    ``[s e^((c-1) 3/28), s e^(c 3/28)]``; class 29 spans ``[s e^3, max]``. The linear
    variant (ablation) spreads the same total range ``[s, s e^3]`` evenly over 1..28.

    References: Kohlberger et al. 2019, Methods, "Semi-synthetic training data generation".
    """
    if kind not in BLUR_KINDS:
        raise ValueError(f"unknown blur kind {kind!r}; expected one of {BLUR_KINDS}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    if not 0 <= c < num_classes:
        raise ValueError(f"class {c} outside 0..{num_classes - 1}")
    s = scale if scale is not None else (BOKEH_SCALE if kind == "bokeh" else GAUSS_SCALE)
    top = maximum if maximum is not None else (BOKEH_MAX if kind == "bokeh" else GAUSS_MAX)
    last = num_classes - 1
    if c == 0:
        return (0.0, 0.0)
    if c == last:
        return (s * math.exp(3.0), top)
    if spacing == "exponential":
        step = 3.0 / (last - 1)
        return (s * math.exp((c - 1) * step), s * math.exp(c * step))
    lo, hi = s, s * math.exp(3.0)
    width = (hi - lo) / (last - 1)
    return (lo + (c - 1) * width, lo + c * width)


def sample_blur_param(
    c: int,
    rng: np.random.Generator,
    *,
    kind: str = "bokeh",
    spacing: str = "exponential",
    scale: float | None = None,
    maximum: float | None = None,
) -> float:
    """Draw the blur parameter of class ``c`` uniformly from its interval (0 for class 0)."""
    lo, hi = class_interval(c, kind=kind, spacing=spacing, scale=scale, maximum=maximum)
    return float(rng.uniform(lo, hi)) if hi > 0 else 0.0


@dataclass(frozen=True)
class SynthesisConfig:
    """How a blurred training patch is made (one ablation configuration = one of these).

    ``noise_s_8bit`` is the Poisson scale ``S`` expressed on the 0..255 scale, drawn
    log-uniformly from the interval; see docs/paper-fidelity.md for why it differs from
    the paper's (0.01, 64) on x in [0, 1].
    """

    kind: str = "bokeh"
    spacing: str = "exponential"
    noise: bool = True
    noise_s_8bit: tuple[float, float] = (0.05, 0.5)
    jpeg: bool = True
    jpeg_quality: tuple[int, int] = (70, 90)
    degrade_class0: bool = True  # noise + JPEG also on class 0, so they are no cue for blur

    def with_(self, **kw: object) -> "SynthesisConfig":
        return replace(self, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SynthesisParams:
    """Every random choice of one synthetic patch; ``cls`` and ``blur`` are the label."""

    cls: int
    blur: float
    noise_s_8bit: float  # 0 = no noise
    jpeg_quality: int  # 0 = no JPEG
    seed: int


def sample_synthesis(
    c: int, rng: np.random.Generator, config: SynthesisConfig = SynthesisConfig()
) -> SynthesisParams:
    """Draw all parameters of one synthetic patch of class ``c``."""
    blur = sample_blur_param(c, rng, kind=config.kind, spacing=config.spacing)
    degrade = c > 0 or config.degrade_class0
    s = 0.0
    if config.noise and degrade:
        lo, hi = config.noise_s_8bit
        s = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    q = 0
    if config.jpeg and degrade:
        q = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return SynthesisParams(c, blur, s, q, int(rng.integers(0, 2**31 - 1)))


# --- kernels -----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _disk_kernel_cached(r_q: int) -> np.ndarray:
    r = r_q / 1000.0
    half = int(math.ceil(r + 0.5))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    # area coverage of each pixel by the disk, by 4x4 supersampling of the pixel square
    sub = (np.arange(4) + 0.5) / 4.0 - 0.5
    cover = np.zeros_like(xx)
    for dy in sub:
        for dx in sub:
            cover += (xx + dx) ** 2 + (yy + dy) ** 2 <= r * r
    k = cover / 16.0
    if k.sum() <= 0:  # r far below one pixel: identity
        k[half, half] = 1.0
    k = (k / k.sum()).astype(np.float32)
    k.setflags(write=False)
    return k


def disk_kernel(radius_px: float) -> np.ndarray:
    """Normalised bokeh kernel: a disk of ``radius_px`` with an anti-aliased edge.

    Each weight is the share of its pixel square inside the disk (4 x 4
    supersampling), so radii that differ by a fraction of a pixel (classes 1-5 are
    1.4-2.4 px) give distinct kernels.
    """
    if radius_px < 0:
        raise ValueError("radius must be >= 0")
    return _disk_kernel_cached(int(round(radius_px * 1000)))


def gaussian_kernel(sigma_px: float, *, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian kernel (apply separably)."""
    if sigma_px <= 0:
        return np.ones(1, np.float32)
    half = max(1, int(math.ceil(truncate * sigma_px)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).astype(np.float32)


def kernel_half_width(kind: str, param: float) -> int:
    """Pixels of context a blur of this size reads beyond each output pixel."""
    if param <= 0:
        return 0
    if kind == "bokeh":
        return int(math.ceil(param + 0.5))
    return max(1, int(math.ceil(4.0 * param)))


# --- application -------------------------------------------------------------------------------


def _pad(img: np.ndarray, m: int) -> np.ndarray:
    """Mirror-pad (any width, repeated reflection), so borders carry no dark or bright seam."""
    if m <= 0:
        return img
    h, w = img.shape[:2]
    if m < h and m < w:
        return cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_REFLECT_101)
    pad = [(m, m), (m, m)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="symmetric")


def blur_valid(img: np.ndarray, kind: str, param: float) -> np.ndarray:
    """Blur and keep only pixels whose whole kernel lies inside ``img`` (float32).

    The output is smaller by :func:`kernel_half_width` on each side. This is the
    primitive for blurring a crop with real context around it.
    """
    m = kernel_half_width(kind, param)
    x = img.astype(np.float32, copy=False)
    if m == 0:
        return x.copy()
    if kind == "bokeh":
        k = disk_kernel(param)
        out = cv2.filter2D(x, cv2.CV_32F, k, borderType=cv2.BORDER_ISOLATED)
    elif kind == "gaussian":
        g = gaussian_kernel(param)
        out = cv2.sepFilter2D(x, cv2.CV_32F, g, g, borderType=cv2.BORDER_ISOLATED)
    else:
        raise ValueError(f"unknown blur kind {kind!r}")
    return out[m : out.shape[0] - m, m : out.shape[1] - m]


def apply_blur(rgb: np.ndarray, kind: str, param: float) -> np.ndarray:
    """Blur a whole image with no border artifacts; same shape and dtype as the input.

    The image is mirror-padded by the kernel's reach (kernels larger than the
    image are handled by repeated reflection), blurred, then cropped.
    """
    if param <= 0:
        return rgb.copy()
    m = kernel_half_width(kind, param)
    out = blur_valid(_pad(rgb, m), kind, param)
    if rgb.dtype == np.uint8:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out.astype(rgb.dtype, copy=False)


def add_poisson_noise(
    x: np.ndarray, s: float, rng: np.random.Generator, *, exact_below: float = 50.0
) -> np.ndarray:
    """Poisson sensor noise ``f(x) = P(x / S) * S`` per channel value, x in [0, 1].

    Counts ``x / S`` above ``exact_below`` use the normal approximation
    ``x + sqrt(x S) N(0, 1)`` (the same mean and variance, 5x faster).

    References: Kohlberger et al. 2019, "Postblurring JPEG and noise artifacts".
    """
    if s <= 0:
        return x.astype(np.float32, copy=True)
    x = np.clip(x.astype(np.float32, copy=False), 0.0, 1.0)
    lam = x / np.float32(s)
    if float(lam.max(initial=0.0)) <= 0:
        return x.copy()
    if float(lam[lam > 0].min(initial=np.inf)) >= exact_below:
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        return x + np.sqrt(x * np.float32(s)) * noise
    return (rng.poisson(lam).astype(np.float32) * np.float32(s)).astype(np.float32)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode and decode an RGB uint8 image at ``quality`` (1-100)."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def synthesize(
    patch: np.ndarray,
    params: SynthesisParams,
    *,
    config: SynthesisConfig = SynthesisConfig(),
    crop: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Apply blur -> Poisson noise -> JPEG to an RGB uint8 patch.

    ``crop = (x, y, size)`` returns only that square of the result, blurring it
    with the real patch around it as context (mirrored only where the kernel
    reaches past the patch), which is far cheaper than blurring the whole patch.
    """
    m = kernel_half_width(config.kind, params.blur)
    if crop is None:
        x0, y0, sw, sh = 0, 0, patch.shape[1], patch.shape[0]
    else:
        x0, y0, sw = crop
        sh = sw
    if m > 0:
        h, w = patch.shape[:2]
        need = (y0 - m < 0) or (x0 - m < 0) or (y0 + sh + m > h) or (x0 + sw + m > w)
        if need:
            src = _pad(patch, m)
            region = src[y0 : y0 + sh + 2 * m, x0 : x0 + sw + 2 * m]
        else:
            region = patch[y0 - m : y0 + sh + m, x0 - m : x0 + sw + m]
        x = blur_valid(region, config.kind, params.blur) * np.float32(1 / 255)
    else:
        x = patch[y0 : y0 + sh, x0 : x0 + sw].astype(np.float32) * np.float32(1 / 255)
    if params.noise_s_8bit > 0:
        rng = np.random.default_rng(params.seed)
        x = add_poisson_noise(x, params.noise_s_8bit / 255.0, rng)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if params.jpeg_quality > 0:
        out = jpeg_roundtrip(out, params.jpeg_quality)
    return out
