"""The grid of graded windows over level 0, from a low-resolution tissue mask.

Pure array functions: no file access. Cell ``(row, col)`` covers the level-0 square
``x = x0 + col * stride .. x + window``, ``y = y0 + row * stride .. y + window``
(:class:`~convfocus.types.GridGeometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convfocus.errors import ConfigError
from convfocus.types import GridGeometry

__all__ = ["TissueGrid", "grid_shape", "make_grid", "window_tissue_fraction"]

_EPS = 1e-9


def _xy(downsample: float | tuple[float, float]) -> tuple[float, float]:
    """``(x, y)`` downsample from one value or a pair."""
    if isinstance(downsample, tuple | list | np.ndarray):
        dx, dy = downsample
        return float(dx), float(dy)
    return float(downsample), float(downsample)


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


def _box_integral(integral: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Integral of the mask over [0, y) x [0, x) at fractional ``ys`` (rows) and ``xs`` (cols).

    The integral image of a piecewise-constant mask is exactly bilinear inside each pixel,
    so bilinear interpolation of the (h+1, w+1) integral image gives exact partial areas.
    """
    h1, w1 = integral.shape
    ys = np.clip(ys, 0.0, h1 - 1.0)
    xs = np.clip(xs, 0.0, w1 - 1.0)
    iy = np.minimum(np.floor(ys).astype(np.int64), h1 - 2)
    ix = np.minimum(np.floor(xs).astype(np.int64), w1 - 2)
    fy = (ys - iy)[:, None]
    fx = (xs - ix)[None, :]
    a = integral[iy[:, None], ix[None, :]]
    b = integral[iy[:, None], ix[None, :] + 1]
    c = integral[iy[:, None] + 1, ix[None, :]]
    d = integral[iy[:, None] + 1, ix[None, :] + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def window_tissue_fraction(
    mask_th: np.ndarray,
    th_downsample: float | tuple[float, float],
    l0_x: np.ndarray,
    l0_y: np.ndarray,
    window_l0_px: float,
) -> np.ndarray:
    """Tissue share of every window with level-0 corners ``l0_y[r], l0_x[c]``: (rows, cols).

    Each thumbnail pixel counts with the part of its area inside the window; thumbnail
    area outside the mask (rounding at the slide edge) counts as no tissue.
    """
    dx, dy = _xy(th_downsample)
    m = np.asarray(mask_th, dtype=np.float64)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    x0 = np.asarray(l0_x, dtype=np.float64) / dx
    y0 = np.asarray(l0_y, dtype=np.float64) / dy
    x1 = x0 + window_l0_px / dx
    y1 = y0 + window_l0_px / dy
    area = (
        _box_integral(integral, y1, x1)
        - _box_integral(integral, y0, x1)
        - _box_integral(integral, y1, x0)
        + _box_integral(integral, y0, x0)
    )
    window_area_th = (window_l0_px / dx) * (window_l0_px / dy)
    return np.clip(area / window_area_th, 0.0, 1.0)


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
    ds = _xy(th_downsample)
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
    frac = window_tissue_fraction(mask.astype(bool), ds, xs, ys, window_l0_px)  # (rows, cols)
    cells = np.argwhere(frac >= min_tissue - 1e-6).astype(np.int32)  # row-major
    return TissueGrid(geometry, cells, frac[cells[:, 0], cells[:, 1]].astype(np.float32))
