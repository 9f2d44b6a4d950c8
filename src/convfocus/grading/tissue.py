"""Tissue mask from a low-resolution RGB view of a slide (luma rule), and the share of
tissue in a window.

Pure array functions: no file access.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["LUMA_WEIGHTS", "luma", "pen_mask", "tissue_mask", "window_tissue_fraction"]

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
    mask : (h, w) bool tissue mask (:func:`tissue_mask`) of the image or of a thumbnail.
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
    m = np.asarray(mask, dtype=np.float64)
    x0 = np.asarray(l0_x, dtype=np.float64) / dx
    y0 = np.asarray(l0_y, dtype=np.float64) / dy
    if m.size == 0:
        return np.zeros(np.broadcast_shapes(x0.shape, y0.shape))
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
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
