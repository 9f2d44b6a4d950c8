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

from convfocus import MODEL_MPP, NUM_CLASSES

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


def class_centre_px(
    c: int,
    *,
    kind: str = "bokeh",
    spacing: str = "exponential",
    scale: float | None = None,
    maximum: float | None = None,
    num_classes: int = NUM_CLASSES,
) -> float:
    """Nominal blur parameter of class ``c`` in pixels: the geometric centre of its
    :func:`class_interval` (the bokeh radius by default; 0 for class 0, in focus).

    The one class -> nominal blur rule: the blur of a check image, the demo slide, the
    calibration and ``blur_um`` in tiles.csv all come from here, with the spacing and
    scale of the model or experiment at hand.

    References: Kohlberger et al. 2019, Methods (class intervals) and Figure 4 (class centres).
    """
    lo, hi = class_interval(c, kind=kind, spacing=spacing, scale=scale, maximum=maximum,
                            num_classes=num_classes)
    return math.sqrt(lo * hi)


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

    ``noise_s_8bit`` is the Poisson scale ``S`` expressed on the 0..255 scale (noise
    variance ``x S`` in 8-bit levels), drawn log-uniformly from the interval. The default
    (0.05, 0.5), i.e. (2e-4, 2e-3) on x in [0, 1], gives blurred, JPEG-compressed patches
    a noise floor of 0.35-1.0 levels (10th-90th percentile; median 0.52), as measured on
    real scans (0.53 out of focus, 0.75-1.1 in focus); the paper's (0.01, 64) gives 5-12
    levels at its smallest S and pure noise at its largest. Measured by
    bench/noise_study.py; see docs/paper-fidelity.md.

    References: Kohlberger et al. 2019, "Postblurring JPEG and noise artifacts".
    """

    kind: str = "bokeh"
    spacing: str = "exponential"
    noise: bool = True
    noise_s_8bit: tuple[float, float] = (0.05, 0.5)
    jpeg: bool = True
    jpeg_quality: tuple[int, int] = (70, 90)
    degrade_class0: bool = True  # noise + JPEG also on class 0, so they are no cue for blur
    #: Partial defocus (not in the paper): with this probability a blurred patch keeps a
    #: share U(0, partial_max) of its sharp image, as where a fold or a thick section puts
    #: tissue both in and out of the focal plane. 0 = the paper's synthesis.
    partial_prob: float = 0.0
    partial_max: float = 0.4
    #: Folds (not in the paper): with this probability a second, thinner tissue layer
    #: (another pool patch) lies over the patch, its optical density scaled by
    #: U(fold_weight). It lies at most ``fold_gap_um`` of bokeh radius nearer the focus
    #: (two stacked sections are a few µm apart: 4 µm at NA 0.75 in a medium of index
    #: 1.5 is about 2.3 µm of radius), so a heavily blurred patch never carries a sharp
    #: layer. The label stays the blur of the dominant layer. 0 = the paper's synthesis.
    fold_prob: float = 0.0
    fold_weight: tuple[float, float] = (0.15, 0.7)
    fold_gap_um: float = 2.5
    #: Stain density (not in the paper): with this probability the tissue's optical
    #: density is multiplied by a factor log-uniform in ``density_range`` before the blur
    #: (Beer-Lambert: a thicker section, a fold or heavier staining), so dark,
    #: low-contrast tissue is seen with the scanner's noise and JPEG at full strength.
    #: The colour augmentation, which comes after JPEG, cannot make such examples.
    density_prob: float = 0.0
    density_range: tuple[float, float] = (0.5, 4.0)
    #: Veil (not in the paper): with this probability the blurred image's contrast about
    #: its mean is multiplied by a factor log-uniform in ``veil_range`` before noise and
    #: JPEG, as light from out-of-focus layers does; low-contrast tissue then carries the
    #: scanner's noise at full strength (the colour augmentation, after JPEG, scales the
    #: noise down with the contrast).
    veil_prob: float = 0.0
    veil_range: tuple[float, float] = (0.2, 1.0)
    #: Stain variation (not in the paper): with this probability the tissue is unmixed
    #: into haematoxylin, eosin and DAB optical densities (Ruifrok & Johnston), H and E
    #: are each scaled by a factor log-uniform in ``stain_range`` (pale to dark stains)
    #: and a share U(0, ``dab_max``) of the eosin density becomes DAB brown (IHC), before
    #: the blur. 0 = the paper's synthesis.
    stain_prob: float = 0.0
    stain_range: tuple[float, float] = (0.5, 2.0)
    dab_max: float = 1.0

    def with_(self, **kw: object) -> SynthesisConfig:
        return replace(self, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SynthesisParams:
    """Every random choice of one synthetic patch; ``cls`` and ``blur`` are the label."""

    cls: int
    blur: float
    noise_s_8bit: float  # 0 = no noise
    jpeg_quality: int  # 0 = no JPEG
    seed: int
    sharp_share: float = 0.0  # partial defocus: share of the sharp image kept
    fold_weight: float = 0.0  # fold: optical-density weight of the overlying layer (0 = none)
    fold_blur: float = 0.0  # fold: blur parameter of the overlying layer
    density: float = 1.0  # factor on the optical density of the tissue (1 = as scanned)
    veil: float = 1.0  # contrast factor before noise and JPEG (1 = none)
    stain: tuple[float, float, float] = (1.0, 1.0, 0.0)  # H factor, E factor, E share to DAB


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw log-uniform in [lo, hi] (for scales)."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_synthesis(
    c: int, rng: np.random.Generator, config: SynthesisConfig = SynthesisConfig()
) -> SynthesisParams:
    """Draw all parameters of one synthetic patch of class ``c``."""
    blur = sample_blur_param(c, rng, kind=config.kind, spacing=config.spacing)
    degrade = c > 0 or config.degrade_class0
    s = 0.0
    if config.noise and degrade:
        s = _log_uniform(rng, *config.noise_s_8bit)
    q = 0
    if config.jpeg and degrade:
        q = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    seed = int(rng.integers(0, 2**31 - 1))
    share = 0.0
    if c > 0 and config.partial_prob > 0 and rng.random() < config.partial_prob:
        share = float(rng.uniform(0.0, config.partial_max))
    fold_w = fold_blur = 0.0
    if config.fold_prob > 0 and rng.random() < config.fold_prob:
        fold_w = float(rng.uniform(*config.fold_weight))
        scale = GAUSS_SCALE / BOKEH_SCALE if config.kind == "gaussian" else 1.0
        gap = config.fold_gap_um / MODEL_MPP * scale
        fold_blur = max(0.0, blur - float(rng.uniform(0.0, gap)))
    density = 1.0
    if config.density_prob > 0 and rng.random() < config.density_prob:
        density = _log_uniform(rng, *config.density_range)
    veil = 1.0
    if config.veil_prob > 0 and rng.random() < config.veil_prob:
        veil = _log_uniform(rng, *config.veil_range)
    stain = (1.0, 1.0, 0.0)
    if config.stain_prob > 0 and rng.random() < config.stain_prob:
        stain = (_log_uniform(rng, *config.stain_range), _log_uniform(rng, *config.stain_range),
                 float(rng.uniform(0.0, config.dab_max)))
    return SynthesisParams(c, blur, s, q, seed, share, fold_w, fold_blur, density, veil, stain)


@lru_cache(maxsize=64)
def _density_lut(d_q: int) -> np.ndarray:
    t = (np.arange(256, dtype=np.float64) + 0.5) / 256.0
    return np.clip(np.rint(np.power(t, d_q / 100.0) * 256.0 - 0.5), 0, 255).astype(np.uint8)


def scale_density(rgb: np.ndarray, density: float) -> np.ndarray:
    """Multiply the optical density of a uint8 RGB image: ``T -> T ** density``."""
    d_q = round(density * 100)
    if d_q == 100:
        return rgb
    return _density_lut(d_q)[rgb]


#: Stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as in scikit-image's
#: ``rgb2hed``. References: Ruifrok & Johnston, Anal Quant Cytol Histol 2001.
_HED_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_RGB /= np.linalg.norm(_HED_RGB, axis=1, keepdims=True)
_RGB_HED = np.linalg.inv(_HED_RGB)


def vary_stain(rgb: np.ndarray, stain: tuple[float, float, float]) -> np.ndarray:
    """Rescale the H and E optical densities of a uint8 RGB image and turn a share of E into DAB."""
    h_f, e_f, dab = stain
    if h_f == 1.0 and e_f == 1.0 and dab == 0.0:
        return rgb
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ _RGB_HED.astype(np.float32)
    e = conc[:, 1] * np.float32(e_f)
    conc[:, 0] *= np.float32(h_f)
    conc[:, 1] = e * np.float32(1.0 - dab)
    conc[:, 2] += e * np.float32(dab)
    od2 = (conc @ _HED_RGB.astype(np.float32)).reshape(rgb.shape)
    out = 256.0 * np.exp(-od2) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- kernels -----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _disk_kernel_cached(r_q: int) -> np.ndarray:
    r = r_q / 1000.0
    half = math.ceil(r + 0.5)
    ax = np.abs(np.arange(-half, half + 1, dtype=np.float64))
    # area coverage of each pixel by the disk, by 4x4 supersampling of the pixel square;
    # only pixels the circle crosses need the samples (the others are all in or all out)
    near = np.maximum(ax - 0.5, 0.0)
    far = ax + 0.5
    inside = far[:, None] ** 2 + far[None, :] ** 2 <= r * r
    outside = near[:, None] ** 2 + near[None, :] ** 2 > r * r
    k = inside.astype(np.float64)
    yi, xi = np.nonzero(~inside & ~outside)
    if len(yi):
        sub = (np.arange(4) + 0.5) / 4.0 - 0.5
        sy = (yi - half)[:, None, None] + sub[None, :, None]
        sx = (xi - half)[:, None, None] + sub[None, None, :]
        k[yi, xi] = (sy * sy + sx * sx <= r * r).sum(axis=(1, 2)) / 16.0
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
    return _disk_kernel_cached(round(radius_px * 1000))


def gaussian_kernel(sigma_px: float, *, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1-D Gaussian kernel (apply separably)."""
    if sigma_px <= 0:
        return np.ones(1, np.float32)
    half = max(1, math.ceil(truncate * sigma_px))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).astype(np.float32)


def kernel_half_width(kind: str, param: float) -> int:
    """Pixels of context a blur of this size reads beyond each output pixel."""
    if param <= 0:
        return 0
    if kind == "bokeh":
        return math.ceil(param + 0.5)
    return max(1, math.ceil(4.0 * param))


# --- application -------------------------------------------------------------------------------

#: Kernel half-widths from which the blur runs in the cosine domain rather than spatially:
#: a disk of 13 x 13 px or more (cv2.filter2D switches to its DFT from 12 x 12) and a
#: Gaussian of sigma > 6 px. Both routes give the same result (tested); this is speed only.
SPECTRAL_MIN_HALF_WIDTH = {"bokeh": 6, "gaussian": 25}


def _pad(img: np.ndarray, m: int) -> np.ndarray:
    """Mirror-pad (symmetric, edge pixel repeated; any width by repeated reflection), so borders
    carry no dark or bright seam. The padded image is a window of the image's 2h x 2w-periodic
    mirror extension, the extension the cosine-domain blur assumes."""
    if m <= 0:
        return img
    h, w = img.shape[:2]
    if m <= h and m <= w:
        return cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_REFLECT)
    pad = [(m, m), (m, m)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="symmetric")


def _fold_index(half: int, n: int) -> np.ndarray:
    """Where taps -half..half land on 0..n under the 2n-periodic even extension."""
    idx = np.arange(-half, half + 1) % (2 * n)
    return np.where(idx > n, 2 * n - idx, idx)


def _dct1_weights(n: int) -> np.ndarray:
    w = np.full(n + 1, 0.5)
    w[0] = w[-1] = 1.0
    return w


def _cosine_transfer_1d(k: np.ndarray, n: int) -> np.ndarray:
    """Gain of each DCT-II frequency 0..n-1 under the symmetric 1-D kernel ``k`` on a signal of
    ``n`` samples with mirror boundaries (the kernel's DCT-I, folded onto the period 2n)."""
    from scipy.fft import dct  # here: a scan needs class_centre_px, not scipy (0.26 s)

    acc = np.bincount(_fold_index(len(k) // 2, n), weights=k.astype(np.float64), minlength=n + 1)
    return dct(acc * _dct1_weights(n), type=1)[:n]


def _cosine_transfer(kind: str, param: float, h: int, w: int) -> np.ndarray:
    """(h, w) gains of the DCT-II coefficients of an h x w image under the blur kernel."""
    from scipy.fft import dctn

    if kind == "gaussian":
        g = gaussian_kernel(param)
        return np.outer(_cosine_transfer_1d(g, h), _cosine_transfer_1d(g, w))
    k = disk_kernel(param)
    half = k.shape[0] // 2
    iy, ix = _fold_index(half, h), _fold_index(half, w)
    flat = (iy[:, None] * (w + 1) + ix[None, :]).ravel()
    acc = np.bincount(flat, weights=k.ravel().astype(np.float64), minlength=(h + 1) * (w + 1))
    acc = acc.reshape(h + 1, w + 1) * np.outer(_dct1_weights(h), _dct1_weights(w))
    return dctn(acc.astype(np.float32), type=1, workers=1)[:h, :w]


def _blur_cosine(img: np.ndarray, kind: str, param: float) -> np.ndarray:
    """Blur under the mirror (symmetric) boundary in the cosine domain, float32 out.

    A symmetric kernel convolved with the 2h x 2w-periodic mirror extension of the image
    multiplies the image's DCT-II coefficients by the kernel's DCT-I (symmetric
    convolution), so the cost is two transforms whatever the kernel's size; kernels
    wider than the image fold onto the period exactly as repeated reflection does.

    References: Martucci, "Symmetric convolution and the discrete sine and cosine
    transforms", IEEE Trans. Signal Processing 42(5), 1994.
    """
    from scipy.fft import dctn, idctn

    x = img.astype(np.float32, copy=False)
    h, w = x.shape[:2]
    gain = _cosine_transfer(kind, param, h, w).astype(np.float32)
    if x.ndim == 3:
        gain = gain[:, :, None]
    c = dctn(x, type=2, axes=(0, 1), workers=1)
    c *= gain
    return idctn(c, type=2, axes=(0, 1), workers=1).astype(np.float32, copy=False)


def use_cosine_route(kind: str, param: float, shape: tuple[int, ...]) -> bool:
    """Whether :func:`apply_blur` blurs in the cosine domain (large kernels) or spatially."""
    if kind not in BLUR_KINDS:
        raise ValueError(f"unknown blur kind {kind!r}; expected one of {BLUR_KINDS}")
    m = kernel_half_width(kind, param)
    return m >= SPECTRAL_MIN_HALF_WIDTH[kind] or m > min(shape[0], shape[1])


def blur_valid(img: np.ndarray, kind: str, param: float) -> np.ndarray:
    """Blur and keep only pixels whose whole kernel lies inside ``img`` (float32).

    The output is smaller by :func:`kernel_half_width` on each side. This is the
    primitive for blurring a crop with real context around it. cv2.filter2D runs
    float kernels of 130 px area and more (12 x 12 and up) through its DFT.
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


def _to_dtype(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out.astype(dtype, copy=False)


def apply_blur(rgb: np.ndarray, kind: str, param: float) -> np.ndarray:
    """Blur a whole image with no border artifacts; same shape and dtype as the input.

    The image is extended by mirror reflection (repeated for kernels larger than the
    image), blurred, then cropped: small kernels spatially on a padded copy, large
    ones in the cosine domain (:func:`_blur_cosine`), with the same result.
    """
    if param <= 0:
        return rgb.copy()
    if use_cosine_route(kind, param, rgb.shape):
        return _to_dtype(_blur_cosine(rgb, kind, param), rgb.dtype)
    m = kernel_half_width(kind, param)
    return _to_dtype(blur_valid(_pad(rgb, m), kind, param), rgb.dtype)


def add_poisson_noise(
    x: np.ndarray, s: float, rng: np.random.Generator, *, exact_below: float = 50.0
) -> np.ndarray:
    """Poisson sensor noise ``f(x) = P(x / S) * S`` per channel value, x in [0, 1].

    Values whose count ``x / S`` is at least ``exact_below`` use the normal
    approximation ``x + sqrt(x S) N(0, 1)`` (the same mean and variance, several times
    faster); only the darker ones draw exact Poisson counts.

    References: Kohlberger et al. 2019, "Postblurring JPEG and noise artifacts".
    """
    if s <= 0:
        return x.astype(np.float32, copy=True)
    x = np.clip(x.astype(np.float32, copy=False), 0.0, 1.0)
    s32 = np.float32(s)
    out = x + np.sqrt(x * s32) * rng.standard_normal(x.shape, dtype=np.float32)
    low = x < np.float32(exact_below * s)
    if low.any():
        out[low] = rng.poisson(x[low] / s32).astype(np.float32) * s32
    return out


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode and decode an RGB uint8 image at ``quality`` (1-100)."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if out is None:
        raise ValueError("JPEG decoding failed")
    return out[..., ::-1].copy()


def synthesize(
    patch: np.ndarray,
    params: SynthesisParams,
    *,
    config: SynthesisConfig = SynthesisConfig(),
    crop: tuple[int, int, int] | None = None,
    overlay: np.ndarray | None = None,
) -> np.ndarray:
    """Apply blur -> Poisson noise -> JPEG to an RGB uint8 patch.

    ``crop = (x, y, size)`` returns only that square of the result, blurring it
    with the real patch around it as context (mirrored only where the kernel
    reaches past the patch), which is far cheaper than blurring the whole patch.
    ``overlay`` (same shape as ``patch``) is the second tissue layer of a fold, used
    when ``params.fold_weight > 0``: transmittances multiply (optical densities add),
    ``T = T_patch * T_overlay ** fold_weight``, before noise and JPEG.
    """
    if params.stain != (1.0, 1.0, 0.0):
        patch = vary_stain(patch, params.stain)
    if params.density != 1.0:
        patch = scale_density(patch, params.density)
    m = kernel_half_width(config.kind, params.blur)
    h, w = patch.shape[:2]
    if crop is None:
        x0, y0, sw, sh = 0, 0, w, h
    else:
        x0, y0, sw = crop
        sh = sw
    if m > 0 and use_cosine_route(config.kind, params.blur, patch.shape):
        # a large kernel: blur the whole patch in the cosine domain (the same mirrored
        # context as below, at a cost independent of the kernel's size), then crop
        x = _blur_cosine(patch, config.kind, params.blur)[y0 : y0 + sh, x0 : x0 + sw]
        x *= np.float32(1 / 255)
    elif m > 0:
        need = (y0 - m < 0) or (x0 - m < 0) or (y0 + sh + m > h) or (x0 + sw + m > w)
        if need:
            src = _pad(patch, m)
            region = src[y0 : y0 + sh + 2 * m, x0 : x0 + sw + 2 * m]
        else:
            region = patch[y0 - m : y0 + sh + m, x0 - m : x0 + sw + m]
        x = blur_valid(region, config.kind, params.blur) * np.float32(1 / 255)
    else:
        x = patch[y0 : y0 + sh, x0 : x0 + sw].astype(np.float32) * np.float32(1 / 255)
    if params.sharp_share > 0 and m > 0:
        sharp = patch[y0 : y0 + sh, x0 : x0 + sw].astype(np.float32) * np.float32(1 / 255)
        x = (1.0 - params.sharp_share) * x + params.sharp_share * sharp
    if params.fold_weight > 0 and overlay is not None:
        layer = SynthesisParams(0, params.fold_blur, 0.0, 0, params.seed)
        o = synthesize(overlay, layer, config=config, crop=crop).astype(np.float32)
        x = x * np.power(np.maximum(o, 1.0) * np.float32(1 / 255), np.float32(params.fold_weight))
    if params.veil != 1.0:
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = (x - mean) * np.float32(params.veil) + mean
    if params.noise_s_8bit > 0:
        rng = np.random.default_rng(params.seed)
        x = add_poisson_noise(x, params.noise_s_8bit / 255.0, rng)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if params.jpeg_quality > 0:
        out = jpeg_roundtrip(out, params.jpeg_quality)
    return out
