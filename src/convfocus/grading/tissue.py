"""Tissue mask from a low-resolution RGB view of a slide (luma rule), and the share of
tissue in a window.

Pure array functions: no file access.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "LUMA_WEIGHTS",
    "ink_mask",
    "luma",
    "pen_mask",
    "tissue_and_ink",
    "tissue_mask",
    "window_tissue_fraction",
]

LUMA_WEIGHTS: tuple[float, float, float] = (0.212, 0.715, 0.072)
"""Weights of R, G, B in the luma used for the tissue rule (Kohlberger et al. 2019)."""


def _unit_scale(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise TypeError(f"RGB must be uint8, uint16 or float in [0, 1], got {dtype}")


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {a.shape}")
    return a


def luma(rgb: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.212 R + 0.715 G + 0.072 B`` with RGB scaled to [0, 1].

    Parameters
    ----------
    rgb : (h, w, 3) uint8, uint16 or float in [0, 1]; a fourth (alpha) channel is ignored.

    Returns
    -------
    (h, w) float32 in [0, 1].

    References: Kohlberger et al. 2019 (tissue where 0 < Y <= 0.8).
    """
    a = _check_rgb(rgb)
    s = _unit_scale(a.dtype)
    wr, wg, wb = (np.float32(w * s) for w in LUMA_WEIGHTS)
    y = wr * a[:, :, 0].astype(np.float32)
    y += wg * a[:, :, 1].astype(np.float32)
    y += wb * a[:, :, 2].astype(np.float32)
    return y


def pen_mask(
    rgb: np.ndarray,
    *,
    green_blue_hue_deg: tuple[float, float] = (60.0, 230.0),
    green_blue_min_saturation: float = 0.25,
    red_hue_half_width_deg: float = 15.0,
    red_min_saturation: float = 0.55,
) -> np.ndarray:
    """Pixels coloured like marker ink: green / cyan / blue, or strongly saturated red.

    H&E and common IHC stains are purple to pink (hue about 280-350 degrees), so a
    saturated hue outside that band is ink. Dark, nearly black ink and red ink that is
    not strongly saturated are not caught; saturated red also matches blood.

    Returns
    -------
    (h, w) bool.
    """
    a = _check_rgb(rgb)[:, :, :3]
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float32) * (_unit_scale(a.dtype) * 255.0)), 0, 255)
        a = a.astype(np.uint8)
    hsv = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2HSV_FULL)
    hue = hsv[:, :, 0].astype(np.float32) * (360.0 / 256.0)
    sat = hsv[:, :, 1].astype(np.float32) / 255.0
    lo, hi = green_blue_hue_deg
    green_blue = (hue >= lo) & (hue <= hi) & (sat >= green_blue_min_saturation)
    red_hue = (hue >= 360.0 - red_hue_half_width_deg) | (hue <= red_hue_half_width_deg)
    red = red_hue & (sat >= red_min_saturation)
    return green_blue | red


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def ink_mask(
    rgb: np.ndarray,
    tissue: np.ndarray | None = None,
    *,
    open_px: int = 2,
    dilate_px: int = 3,
    piece_share: float = 0.3,
) -> np.ndarray:
    """Marker ink (and other colour that is not stained tissue) on a low-resolution view.

    Ink is (1) the pen-coloured pixels (:func:`pen_mask`) that remain after a
    morphological opening with a disk of radius ``open_px`` (thin fringes and specks of
    bluish or red tissue go), dilated by ``dilate_px`` pixels (the soft edge of a stroke),
    and (2) every connected piece of ``tissue`` (8-connected) in which those pen pixels
    are at least ``piece_share`` of the area: a piece that is mostly ink is an ink stroke,
    blurred dark or pale ink included, not tissue. The mask is limited to ``tissue`` and
    the pen pixels (glass stays glass).

    Parameters
    ----------
    rgb : (h, w, 3) image, uint8 or float in [0, 1].
    tissue : (h, w) bool tissue mask of the same view; default :func:`tissue_mask` of ``rgb``.
    open_px : radius of the opening that removes pen-coloured pixels narrower than a stroke
        (0: none).
    dilate_px : how far ink reaches beyond its pen-coloured pixels.
    piece_share : share of pen pixels from which a whole tissue piece is ink.

    Returns
    -------
    (h, w) bool.

    Notes
    -----
    Measured on the thumbnails a scan makes (the image itself when smaller than 2048 px),
    pen pixels after the opening, as a share of the luma tissue: the two ink-only images
    of the shared negatives 98 % (green pen) and 40 % (red pen: the rest of its "tissue" is
    blurred dark-purple and pale red ink, which the piece rule takes); real tissue at most
    1.5 % (the 31 images of infocus-40x: median 0, 1.5 % and 1.3 % where red blood cells
    are as saturated as red ink; infocus/: at most 0.5 %; the CMU-1 and TCGA slides 0.4 %
    and 0 %), and no piece of real tissue reaches 25 %; tissue inked on purpose: red ink
    on 2.8 % of histolab-high-nuclei-score-red-pen-level1, blue ink on 1.6 % of
    histoprep-slide-with-ink. Tissue covered by ink for more than ``piece_share`` of its
    piece is left out whole (histolab-medium-nuclei-score-green-pen-level1, a 512 px crop
    that is one piece, 47 % of it under green ink). Saturated red also matches pooled
    blood.
    """
    a = _check_rgb(rgb)
    pen_u8: np.ndarray = pen_mask(a).view(np.uint8)
    if open_px > 0:
        pen_u8 = cv2.morphologyEx(pen_u8, cv2.MORPH_OPEN, _disk(int(open_px)))
    pen = pen_u8.astype(bool)
    tissue = tissue_mask(a) if tissue is None else np.asarray(tissue, dtype=bool)
    if tissue.shape != pen.shape:
        raise ValueError(f"tissue mask {tissue.shape} does not fit the image {pen.shape}")
    ink = pen.copy()
    if dilate_px > 0 and pen.any():
        ink = cv2.dilate(pen_u8, _disk(int(dilate_px))).astype(bool)
    if tissue.any() and pen.any():
        n, labels = cv2.connectedComponents(tissue.view(np.uint8), connectivity=8)
        inked = np.bincount(labels.ravel(), weights=(pen & tissue).ravel(), minlength=n)
        area = np.bincount(labels.ravel(), minlength=n)
        whole = inked >= piece_share * np.maximum(area, 1)
        whole[0] = False  # label 0 is the background
        ink |= whole[labels]
    return ink & (tissue | pen)


def _remove_small_objects(mask: np.ndarray, min_px: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False  # label 0 is the background
    return keep[labels] if n > 1 else np.zeros_like(mask)


def _fill_holes(mask: np.ndarray, max_px: int | None) -> np.ndarray:
    background = (~mask).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    if n <= 1:
        return mask
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    enclosed = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    if max_px is not None:
        enclosed &= stats[:, cv2.CC_STAT_AREA] <= max_px
    enclosed[0] = False  # label 0 is the tissue itself
    return mask | enclosed[labels]


def tissue_mask(
    rgb: np.ndarray,
    *,
    y_min: float = 0.0,
    y_max: float = 0.8,
    min_object_px: int = 16,
    fill_holes: bool | int = 16,
    exclude_pen: bool = False,
) -> np.ndarray:
    """Tissue pixels of a low-resolution RGB view: ``y_min < Y <= y_max``, then mild cleaning.

    Parameters
    ----------
    rgb : (h, w, 3) image, uint8 or float in [0, 1] (see :func:`luma`).
    y_min, y_max : luma bounds; the paper's rule is ``0 < Y <= 0.8`` (glass is brighter,
        pure black is scanner fill, not tissue).
    min_object_px : connected tissue pieces (8-connected) smaller than this many pixels are
        dropped (dust, debris); 0 keeps everything.
    fill_holes : holes inside tissue of at most this many pixels become tissue; ``True``
        fills every enclosed hole, ``False`` or 0 none.
    exclude_pen : drop marker-ink pixels (:func:`pen_mask`); off by default, as in the paper.

    Returns
    -------
    (h, w) bool mask.

    References: Kohlberger et al. 2019 (tissue where 0 < Y <= 0.8, on a low-resolution level).
    """
    y = luma(rgb)
    mask = (y > y_min) & (y <= y_max)
    if exclude_pen:
        mask &= ~pen_mask(rgb)
    if min_object_px > 1 and mask.any():
        mask = _remove_small_objects(mask, int(min_object_px))
    if fill_holes is True:
        mask = _fill_holes(mask, None)
    elif fill_holes is not False and int(fill_holes) > 0:
        mask = _fill_holes(mask, int(fill_holes))
    return mask


def tissue_and_ink(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tissue to grade and the ink to leave out, from a low-resolution RGB view.

    Returns ``(tissue, ink)``, two (h, w) bool masks that do not overlap: ``ink`` is
    :func:`ink_mask` of the luma tissue (:func:`tissue_mask`), ``tissue`` the luma tissue
    without it. Scanning and patch sampling both take tissue from here.
    """
    luma_tissue = tissue_mask(rgb)
    ink = ink_mask(rgb, luma_tissue)
    return luma_tissue & ~ink, ink


def _xy(downsample: float | tuple[float, float]) -> tuple[float, float]:
    """``(x, y)`` downsample from one value or a pair."""
    if isinstance(downsample, tuple | list | np.ndarray):
        dx, dy = downsample
        return float(dx), float(dy)
    return float(downsample), float(downsample)


def _box_integral(integral: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Integral of the mask over [0, y) x [0, x) at fractional ``ys`` and ``xs`` (broadcast).

    The integral image of a piecewise-constant mask is exactly bilinear inside each pixel,
    so bilinear interpolation of the (h+1, w+1) integral image gives exact partial areas.
    """
    h1, w1 = integral.shape
    ys = np.clip(ys, 0.0, h1 - 1.0)
    xs = np.clip(xs, 0.0, w1 - 1.0)
    iy = np.minimum(np.floor(ys).astype(np.int64), h1 - 2)
    ix = np.minimum(np.floor(xs).astype(np.int64), w1 - 2)
    fy = ys - iy
    fx = xs - ix
    a = integral[iy, ix]
    b = integral[iy, ix + 1]
    c = integral[iy + 1, ix]
    d = integral[iy + 1, ix + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def window_tissue_fraction(
    mask: np.ndarray,
    downsample: float | tuple[float, float],
    l0_x: np.ndarray,
    l0_y: np.ndarray,
    window_l0_px: float,
) -> np.ndarray:
    """Share of tissue in square windows: the one rule for a window's tissue share.

    Parameters
    ----------
    mask : (h, w) tissue mask (:func:`tissue_mask`) of the image or of a thumbnail: bool,
        or any dtype where nonzero is tissue.
    downsample : level-0 (or image) pixels per mask pixel, one value or ``(x, y)``; 1 for a
        mask of the image itself.
    l0_x, l0_y : top-left corners of the windows in level-0 pixels, broadcast together (pass
        ``xs[None, :]`` and ``ys[:, None]`` for a grid of windows, or two 1-D arrays of
        corners for windows one by one).
    window_l0_px : window side in level-0 pixels.

    Returns
    -------
    float64 array of the broadcast shape, in [0, 1]. Each mask pixel counts with the part of
    its area inside the window; area outside the mask (past the slide's edge) counts as no
    tissue.
    """
    dx, dy = _xy(downsample)
    m = np.asarray(mask)
    x0 = np.asarray(l0_x, dtype=np.float64) / dx
    y0 = np.asarray(l0_y, dtype=np.float64) / dy
    if m.size == 0:
        return np.zeros(np.broadcast_shapes(x0.shape, y0.shape))
    # (h+1, w+1) with a zero first row and column: 30x faster than two float64 cumsums;
    # int32 is exact below 2**31 mask pixels (a thumbnail's 2048² is 4.2 M)
    depth = cv2.CV_32S if m.size < 2**31 else cv2.CV_64F
    integral = cv2.integral((m > 0).view(np.uint8), sdepth=depth)
    x1 = x0 + window_l0_px / dx
    y1 = y0 + window_l0_px / dy
    area = (
        _box_integral(integral, y1, x1)
        - _box_integral(integral, y0, x1)
        - _box_integral(integral, y1, x0)
        + _box_integral(integral, y0, x0)
    )
    window_area = (window_l0_px / dx) * (window_l0_px / dy)
    return np.clip(area / window_area, 0.0, 1.0)
