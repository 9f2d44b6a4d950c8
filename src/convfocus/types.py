"""Small frozen dataclasses shared across layers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convfocus import MODEL_MPP, NUM_CLASSES
from convfocus.errors import ConfigError

#: OOF class buckets (inclusive bounds): the class groups of the detector experiment and
#: of a scan's report. References: Kohlberger et al. 2019, Results and Figure 11:
#: buckets 0-4, 5-9, 10-14, 15-19, 20-29.
OOF_BUCKETS: tuple[tuple[int, int], ...] = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29))


@dataclass(frozen=True)
class ModelSpec:
    """Everything inference needs to know about a model; stored beside its weights.

    References: window 139 px, stride 128 px at 40x, 30 classes (Kohlberger et al. 2019).
    """

    name: str
    version: str
    arch: str  # convfocus.training.model.ARCHS: "paper", "lite", "large", "w8", "dw16"
    num_classes: int = NUM_CLASSES
    window_px: int = 139
    stride_px: int = 128
    mpp: float = MODEL_MPP
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    blur: str = "bokeh"  # blur kernel used to define the classes
    spacing: str = "exponential"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)



@dataclass(frozen=True)
class GridGeometry:
    """Where the windows of a scan lie on level 0: the ``grid`` entry of ``summary.json``.

    Cell ``(row, col)`` is the window at level-0 pixels
    ``x0 + col * stride .. x0 + col * stride + window`` (the same in y). Windows overlap
    (139 px window, 128 px stride at 40x), so for drawing and for finding the cell under a
    point each cell owns only its ``stride x stride`` square, which tiles the plane.

    References: window 139 px, stride 128 px at 40x (Kohlberger et al. 2019).
    """

    l0_origin_px: tuple[float, float]
    l0_stride_px: float
    l0_window_px: float
    rows: int
    cols: int

    def __post_init__(self) -> None:
        x0, y0 = self.l0_origin_px
        if not all(math.isfinite(v) for v in (x0, y0, self.l0_stride_px, self.l0_window_px)):
            raise ConfigError(f"grid geometry must be finite numbers, got {self}")
        if not (self.l0_stride_px > 0 and self.l0_window_px > 0):
            raise ConfigError(f"grid stride and window must be > 0, got {self.l0_stride_px}, "
                              f"{self.l0_window_px}")
        if self.rows < 0 or self.cols < 0:
            raise ConfigError(f"grid rows and cols must be >= 0, got {self.rows}, {self.cols}")

    @classmethod
    def from_dict(cls, grid: Any) -> GridGeometry:
        """The one reader of ``summary.json``'s ``grid``: ``{"l0_origin_px": [x, y],
        "l0_stride_px": s, "l0_window_px": w, "rows": R, "cols": C}`` (other keys ignored).

        Raises
        ------
        ConfigError
            If it is not such a mapping or holds implausible values.
        """
        try:
            x0, y0 = (float(v) for v in grid["l0_origin_px"])
            return cls((x0, y0), float(grid["l0_stride_px"]), float(grid["l0_window_px"]),
                       _count(grid["rows"]), _count(grid["cols"]))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            cause = (f"missing {exc}" if isinstance(exc, KeyError)
                     else exc.message if isinstance(exc, ConfigError) else str(exc))
            raise ConfigError(f"summary.json has no valid grid ({cause})") from None

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` form (whole numbers written as integers)."""
        return {
            "l0_origin_px": [_tidy(self.l0_origin_px[0]), _tidy(self.l0_origin_px[1])],
            "l0_stride_px": _tidy(self.l0_stride_px),
            "l0_window_px": _tidy(self.l0_window_px),
            "rows": self.rows,
            "cols": self.cols,
        }

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``: the shape of the class map on this grid."""
        return (self.rows, self.cols)

    def l0_xy(self, row: int, col: int) -> tuple[float, float]:
        """Level-0 top-left corner of cell ``(row, col)``."""
        x0, y0 = self.l0_origin_px
        return (x0 + col * self.l0_stride_px, y0 + row * self.l0_stride_px)

    def boxes(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 windows ``(n, 4)`` as ``x0, y0, x1, y1`` of the given cells."""
        x0 = self.l0_origin_px[0] + np.asarray(cols, np.float64) * self.l0_stride_px
        y0 = self.l0_origin_px[1] + np.asarray(rows, np.float64) * self.l0_stride_px
        return np.stack([x0, y0, x0 + self.l0_window_px, y0 + self.l0_window_px], axis=1)

    def col_of(self, l0_x: np.ndarray) -> np.ndarray:
        """Column whose ``stride`` square holds each level-0 x (may be out of range)."""
        return np.floor((l0_x - self.l0_origin_px[0]) / self.l0_stride_px).astype(np.int64)

    def row_of(self, l0_y: np.ndarray) -> np.ndarray:
        """Row whose ``stride`` square holds each level-0 y (may be out of range)."""
        return np.floor((l0_y - self.l0_origin_px[1]) / self.l0_stride_px).astype(np.int64)


def _count(value: Any) -> int:
    """A row or column count: a whole number (``2`` or ``2.0``, not ``2.5`` or ``True``)."""
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"not a whole number: {value!r}")
    return int(value)


def _tidy(value: float) -> float:
    """An int when the value is integral (keeps JSON tidy: ``0`` rather than ``0.0``)."""
    f = float(value)
    return int(f) if f.is_integer() else f  # type: ignore[return-value]
