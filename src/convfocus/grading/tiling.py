"""Windows: the grid of graded windows over level 0 from a low-resolution tissue mask, and
the windows cut out of an image on such a grid.

Pure array functions: no file access. Cell ``(row, col)`` covers the level-0 square
``x = x0 + col * stride .. x + window``, ``y = y0 + row * stride .. y + window``
(:class:`~convfocus.types.GridGeometry`). Every window the model grades, in a scan, a check
or an evaluation, is cut by :func:`cut_windows` (or viewed by :func:`window_view`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convfocus.errors import ConfigError
from convfocus.grading.tissue import tissue_mask, window_tissue_fraction
from convfocus.types import GridGeometry

__all__ = ["TissueGrid", "cut_windows", "grid_shape", "make_grid", "tissue_windows",
           "window_view"]

_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class TissueGrid:
    """The windows to grade on a slide: the grid over level 0 and its cells with tissue.

    References: window 139 px, stride 128 px at 40x (Kohlberger et al. 2019); both are
    scaled by ``model_mpp / slide_mpp`` for slides at other pixel sizes.
    """

    geometry: GridGeometry
    cells: np.ndarray  # (N, 2) int32 [row, col] of cells to grade, row-major order
    tissue_fraction: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    def mask(self) -> np.ndarray:
        """``(rows, cols)`` bool: True at the cells to grade."""
        out = np.zeros(self.geometry.shape, bool)
        out[self.cells[:, 0], self.cells[:, 1]] = True
        return out


def grid_shape(
    l0_size: tuple[int, int], window_l0_px: float, stride_l0_px: float
) -> tuple[int, int]:
    """``(rows, cols)`` of windows that fit entirely inside a level-0 ``(width, height)``."""

    def fit(extent: float) -> int:
        if extent + _EPS < window_l0_px:
            return 0
        return math.floor((extent - window_l0_px) / stride_l0_px + _EPS) + 1

    width, height = l0_size
    return fit(float(height)), fit(float(width))


def make_grid(
    mask_th: np.ndarray,
    th_downsample: float | tuple[float, float],
    l0_size: tuple[int, int],
    *,
    window_l0_px: float,
    stride_l0_px: float,
    min_tissue: float = 0.25,
) -> TissueGrid:
    """Windows over level 0 that hold enough tissue, from a thumbnail tissue mask.

    Parameters
    ----------
    mask_th : (h, w) bool tissue mask of a thumbnail.
    th_downsample : level-0 pixels per thumbnail pixel (one value, or ``(x, y)``).
    l0_size : level-0 ``(width, height)``.
    window_l0_px, stride_l0_px : window side and stride in level-0 pixels (normally
        ``139 * model_mpp / slide_mpp`` and ``128 * model_mpp / slide_mpp``).
    min_tissue : a window is graded when at least this share of its area is tissue.

    Returns
    -------
    :class:`TissueGrid` with origin (0, 0); every window lies entirely inside the slide. A slide
    smaller than one window gives an empty grid.

    References: window 139, stride 128 at 40x, tissue only (Kohlberger et al. 2019).
    """
    if not (window_l0_px > 0 and stride_l0_px > 0):
        raise ConfigError(f"window and stride must be > 0, got {window_l0_px}, {stride_l0_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"min_tissue must be within [0, 1], got {min_tissue}")
    mask = np.asarray(mask_th)
    if mask.ndim != 2:
        raise ValueError(f"mask_th must be 2-D, got shape {mask.shape}")
    ds = (th_downsample, th_downsample) if isinstance(th_downsample, int | float) else (
        th_downsample[0], th_downsample[1])
    if not (ds[0] > 0 and ds[1] > 0):
        raise ValueError(f"th_downsample must be > 0, got {th_downsample}")
    rows, cols = grid_shape(l0_size, window_l0_px, stride_l0_px)
    geometry = GridGeometry(l0_origin_px=(0.0, 0.0), l0_stride_px=float(stride_l0_px),
                            l0_window_px=float(window_l0_px), rows=rows, cols=cols)
    if rows == 0 or cols == 0 or mask.size == 0:
        return TissueGrid(geometry, np.zeros((0, 2), dtype=np.int32),
                          np.zeros(0, dtype=np.float32))
    xs = np.arange(cols, dtype=np.float64) * stride_l0_px
    ys = np.arange(rows, dtype=np.float64) * stride_l0_px
    frac = window_tissue_fraction(mask.astype(bool), ds, xs[None, :], ys[:, None],
                                  window_l0_px)  # (rows, cols)
    cells = np.argwhere(frac >= min_tissue - 1e-6).astype(np.int32)  # row-major
    return TissueGrid(geometry, cells, frac[cells[:, 0], cells[:, 1]].astype(np.float32))


# --- windows of an image ----------------------------------------------------------------------


def window_view(image: np.ndarray, window_px: int, stride_px: int) -> np.ndarray:
    """Every full window of ``image`` on the grid that starts at its top-left corner, as a
    read-only view: ``(..., H, W, C)`` -> ``(..., rows, cols, C, window, window)``."""
    v = np.lib.stride_tricks.sliding_window_view(image, (window_px, window_px), axis=(-3, -2))
    return v[..., ::stride_px, ::stride_px, :, :, :]


def cut_windows(
    image: np.ndarray, window_px: int = 139, stride_px: int = 128, *, centred: bool = False
) -> np.ndarray:
    """Every full ``window_px`` window of an image (or a batch of them) at ``stride_px``.

    Parameters
    ----------
    image : ``(H, W, C)`` or ``(N, H, W, C)``.
    centred : place the grid in the middle of the image (the margin it leaves split evenly)
        instead of at the top-left corner.

    Returns
    -------
    ``(n, window, window, C)`` copies in row-major order (image by image); none when the
    image is smaller than one window.
    """
    a = np.asarray(image)
    h, w = a.shape[-3:-1]
    rows, cols = grid_shape((w, h), window_px, stride_px)
    if rows == 0 or cols == 0:
        return np.zeros((0, window_px, window_px, a.shape[-1]), a.dtype)
    if centred:
        oy = (h - (window_px + (rows - 1) * stride_px)) // 2
        ox = (w - (window_px + (cols - 1) * stride_px)) // 2
        a = a[..., oy:, ox:, :]
    v = window_view(a, window_px, stride_px)[..., :rows, :cols, :, :, :]
    v = np.moveaxis(v, -3, -1)  # (..., rows, cols, window, window, C)
    return np.ascontiguousarray(v).reshape(-1, window_px, window_px, a.shape[-1])


def tissue_windows(
    rgb: np.ndarray, *, window_px: int = 139, stride_px: int = 128, min_tissue: float = 0.5
) -> np.ndarray:
    """The windows of an image (grid from its top-left corner) with at least ``min_tissue``
    of their area on tissue (:func:`~convfocus.grading.tissue.tissue_mask` of the whole
    image): ``(n, window, window, 3)``, row-major."""
    h, w = rgb.shape[:2]
    rows, cols = grid_shape((w, h), window_px, stride_px)
    if rows == 0 or cols == 0:
        return np.zeros((0, window_px, window_px, 3), np.uint8)
    xs = np.arange(cols, dtype=np.float64) * stride_px
    ys = np.arange(rows, dtype=np.float64) * stride_px
    frac = window_tissue_fraction(tissue_mask(rgb), 1.0, xs[None, :], ys[:, None], window_px)
    keep = np.argwhere(frac >= min_tissue)
    v = window_view(np.asarray(rgb)[..., :3], window_px, stride_px)
    return np.ascontiguousarray(np.moveaxis(v[keep[:, 0], keep[:, 1]], 1, -1))
