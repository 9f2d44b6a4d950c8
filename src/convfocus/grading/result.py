"""What grading one slide yields: a frozen, validated :class:`SlideResult`.

Every output of a slide (tiles.csv, the class map and probabilities, the images,
oof_regions.geojson, summary.json, report.html; :mod:`convfocus.grading.outputs`) is
made from one SlideResult as it is. The class map is checked once, when the result is
made; the functions that draw it or find its regions trust it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.grading.regions import OOF_MIN_CLASS, Profile, get_profile, oof_regions
from convfocus.grading.regions import verdict as slide_verdict
from convfocus.types import GridGeometry, ModelSpec

__all__ = ["SlideInfo", "SlideResult", "check_classmap"]


def check_classmap(classmap: np.ndarray, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Return ``classmap`` as a 2-D int array, checking values are -1 or 0..num_classes-1.

    Raises
    ------
    ValueError
        If it is not 2-D, not integral, or holds other values.
    """
    cm = np.asarray(classmap)
    if cm.ndim != 2:
        raise ValueError(f"class map must be 2-D (rows, cols), got shape {cm.shape}")
    if (
        cm.size
        and not np.issubdtype(cm.dtype, np.integer)
        and not (np.all(np.isfinite(cm)) and np.all(cm == np.round(cm)))
    ):
        raise ValueError("class map must hold integers")
    cm = cm.astype(np.int32, copy=False)
    if cm.size and (cm.min() < -1 or cm.max() >= num_classes):
        raise ValueError(
            f"class map values must be -1 (no tissue) or 0..{num_classes - 1}, "
            f"got {int(cm.min())}..{int(cm.max())}"
        )
    return cm


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only view (the caller's own array stays writable)."""
    v = a.view()
    v.setflags(write=False)
    return v


@dataclass(frozen=True)
class SlideInfo:
    """The graded slide: where it is, its level-0 size and pixel size."""

    path: str  # the slide file (or DICOM folder), absolute
    dimensions: tuple[int, int]  # level-0 (width, height) in pixels
    mpp: float  # level-0 µm/px the slide was graded with
    mpp_source: str = "metadata"  # "metadata", "--mpp", or "assumed ... (none in the file)"
    format: str | None = None  # the reader's format name ("aperio", "tiff", ...)


@dataclass(frozen=True, eq=False)
class SlideResult:
    """One graded slide: everything its outputs are made from, checked once here.

    Attributes
    ----------
    slide
        The slide graded (path, level-0 dimensions, pixel size and its source, format).
    spec
        The grader's settings (classes, window, stride, pixel size, blur and spacing).
    grid
        Where cell ``(row, col)`` lies on level 0.
    classmap
        ``(rows, cols)`` int16 classes, -1 where no window was graded (no tissue).
    probs
        ``(rows, cols, num_classes)`` float16 probabilities, 0 where not graded.
    thumbnail, th_downsample
        The slide's thumbnail (RGB uint8) and its level-0 pixels per thumbnail pixel.
    native
        True when level 0 was graded as it is instead of resampled to ``spec.mpp``.
    profile
        Clinical-use profile of the main verdict (:data:`~convfocus.grading.regions.PROFILES`).
    seconds
        Time spent grading.
    settings
        The settings that change the outputs (model and its files' hash, pixel size and
        its source, profile, window, ...: :func:`convfocus.grading.scan.scan_settings`),
        recorded in summary.json so that a resumed batch can tell them apart.
    tissue_mask, ink_mask
        Thumbnail-sized bool masks (:func:`~convfocus.grading.tissue.tissue_and_ink`): the
        tissue the grid was laid on, and the marker ink (and other colour that is not
        stained tissue) left out of grading; ``None`` when not known.

    Raises
    ------
    ValueError
        If the class map or probabilities do not fit the grid and the model's classes.
    ConfigError
        If the profile is unknown.
    """

    slide: SlideInfo
    spec: ModelSpec
    grid: GridGeometry
    classmap: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)
    thumbnail: np.ndarray = field(repr=False)
    th_downsample: float
    native: bool = False
    profile: str = "histology"
    seconds: float = 0.0
    settings: Mapping[str, Any] = field(default_factory=dict)
    tissue_mask: np.ndarray | None = field(default=None, repr=False)
    ink_mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_classmap(self.classmap, num_classes=self.spec.num_classes)
        cm = np.asarray(self.classmap).astype(np.int16, copy=False)
        if cm.shape != self.grid.shape:
            raise ValueError(f"class map shape {cm.shape} does not match grid {self.grid.shape}")
        probs = np.asarray(self.probs).astype(np.float16, copy=False)
        if probs.shape != (*cm.shape, self.spec.num_classes):
            raise ValueError(f"probabilities of shape {probs.shape} do not fit the class map "
                             f"{cm.shape} and {self.spec.num_classes} classes")
        thumb = np.asarray(self.thumbnail)
        if thumb.ndim != 3 or thumb.shape[2] not in (3, 4):
            raise ValueError(f"thumbnail must be (h, w, 3) RGB, got shape {thumb.shape}")
        if not self.th_downsample > 0 or not self.slide.mpp > 0:
            raise ValueError("thumbnail downsample and pixel size must be > 0")
        get_profile(self.profile)
        for name in ("tissue_mask", "ink_mask"):
            m = getattr(self, name)
            if m is None:
                continue
            m = np.asarray(m)
            if m.shape != thumb.shape[:2]:
                raise ValueError(f"{name} of shape {m.shape} does not fit the thumbnail "
                                 f"{thumb.shape[:2]}")
            object.__setattr__(self, name, _frozen(m.astype(bool, copy=False)))
        object.__setattr__(self, "classmap", _frozen(cm))
        object.__setattr__(self, "probs", _frozen(probs))
        object.__setattr__(self, "thumbnail", _frozen(thumb))

    @property
    def graded(self) -> np.ndarray:
        """``(rows, cols)`` bool: the graded (tissue) cells."""
        return self.classmap >= 0

    @cached_property
    def cells(self) -> np.ndarray:
        """``(n, 2)`` ``[row, col]`` of the graded cells, row-major."""
        return _frozen(np.argwhere(self.graded))

    @property
    def graded_mpp(self) -> float:
        """µm per pixel of the windows the model saw (the slide's own when ``native``)."""
        return self.slide.mpp if self.native else self.spec.mpp

    @property
    def cell_mm2(self) -> float:
        """Slide area (mm²) one graded cell stands for: the stride square it owns."""
        side_mm = self.grid.l0_stride_px * self.slide.mpp / 1000.0
        return side_mm * side_mm

    @property
    def tissue_mm2(self) -> float:
        """Graded tissue area (mm²): graded cells x :attr:`cell_mm2`."""
        return len(self.cells) * self.cell_mm2

    @property
    def ink_mm2(self) -> float:
        """Area (mm²) of the ink left out of grading, from the thumbnail mask (0 when
        unknown)."""
        if self.ink_mask is None:
            return 0.0
        px_mm = self.th_downsample * self.slide.mpp / 1000.0
        return int(np.count_nonzero(self.ink_mask)) * px_mm * px_mm

    @property
    def ink_share(self) -> float:
        """Share of the ink in the slide's tissue + ink, on the thumbnail (0 when unknown)."""
        if self.ink_mask is None:
            return 0.0
        ink = int(np.count_nonzero(self.ink_mask))
        tissue = 0 if self.tissue_mask is None else int(np.count_nonzero(self.tissue_mask))
        return ink / (ink + tissue) if ink else 0.0

    @cached_property
    def regions(self) -> dict[str, Any]:
        """The connected OOF regions (class >= ``OOF_MIN_CLASS``) as GeoJSON
        (:func:`~convfocus.grading.regions.oof_regions`), made once."""
        return oof_regions(self.classmap, self.grid, min_class=OOF_MIN_CLASS, mpp=self.slide.mpp,
                           l0_dimensions=self.slide.dimensions)

    def verdict(self, profile: str | Profile | None = None) -> dict[str, Any]:
        """Pass / review / rescan under ``profile`` (default: the result's own), or
        no-tissue / insufficient-tissue (:func:`~convfocus.grading.regions.verdict`)."""
        return slide_verdict(self.classmap, self.profile if profile is None else profile,
                             cell_mm2=self.cell_mm2, ink_mm2=self.ink_mm2)
