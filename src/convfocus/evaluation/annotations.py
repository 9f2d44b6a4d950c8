"""Pathologist-graded regions: GeoJSON parsing, polygon geometry and rasterisation of the
grades onto a scan's window grid.

A graded region is a Polygon or MultiPolygon (with holes) in level-0 pixels carrying a
grade 0..6 in half steps; a window takes a region's grade only when its whole box lies
inside. Pure numpy; the only file read is the GeoJSON itself.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Methods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus.errors import AnnotationError

#: Pathologist grades: 0..6 in half steps (13 grades). References: Kohlberger et al. 2019.
GRADE_MAX = 6.0


@dataclass(frozen=True)
class GradedRegion:
    """One annotated region: its grade and its polygons, each ``(exterior, *holes)``
    as ``(k, 2)`` arrays of level-0 ``x, y``."""

    grade: float
    polygons: tuple[tuple[np.ndarray, ...], ...]
    feature: int


_GRADE_TEXT = re.compile(r"^\s*(?:grade|oof)?[\s:_-]*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


def parse_grade(value: Any) -> float | None:
    """A grade from a number, a numeric string or a name such as ``"Grade 2.5"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _GRADE_TEXT.match(value)
        return float(m.group(1)) if m else None
    return None


def _feature_grade(props: Mapping[str, Any], grade_key: str) -> float | None:
    if grade_key in props:
        return parse_grade(props[grade_key])
    cls = props.get("classification")
    if isinstance(cls, Mapping):
        return parse_grade(cls.get("name"))
    if isinstance(cls, str):
        return parse_grade(cls)
    return None


def _rings(coords: Any, where: str, path: Path) -> tuple[np.ndarray, ...]:
    try:
        rings = tuple(np.asarray(ring, dtype=np.float64)[:, :2] for ring in coords)
    except (TypeError, ValueError, IndexError):
        raise AnnotationError(f"{where}: coordinates are not [x, y] pairs", path) from None
    if not rings or any(r.ndim != 2 or len(r) < 3 for r in rings):
        raise AnnotationError(f"{where}: a polygon ring has fewer than 3 points", path)
    if not all(np.isfinite(r).all() for r in rings):
        raise AnnotationError(f"{where}: coordinates are not finite", path)
    return rings


def read_grade_annotations(
    path: str | Path,
    *,
    dimensions: tuple[int, int] | None = None,
    grade_key: str = "grade",
    tolerance_px: float = 1.0,
) -> list[GradedRegion]:
    """Graded regions of a GeoJSON file (e.g. a QuPath export), in level-0 pixels.

    Each feature is a Polygon or MultiPolygon whose grade is the numeric property
    ``grade_key`` or, failing that, its QuPath classification name (``"2.5"``,
    ``"Grade 2.5"``). Grades are 0..6 in half steps. With ``dimensions`` (width,
    height), a polygon reaching more than ``tolerance_px`` outside the slide is an error.

    Raises
    ------
    AnnotationError
        Not GeoJSON, a feature without a valid grade or polygon, or a polygon
        outside the slide; one message naming the file, feature and cause.

    References: Kohlberger et al. 2019: grades 0 (in focus) .. 6 (very strong OOF),
    half grades allowed (13 grades).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise AnnotationError(f"cannot read: {exc.strerror or exc}", p) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"not GeoJSON (invalid JSON: {exc})", p) from None
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, Mapping) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        features = None
    if not isinstance(features, list):
        raise AnnotationError("not GeoJSON (no FeatureCollection or Feature list)", p)
    if not features:
        raise AnnotationError("no annotated regions (empty FeatureCollection)", p)
    regions = []
    for i, feat in enumerate(features):
        where = f"feature {i}"
        if not isinstance(feat, Mapping) or not isinstance(feat.get("geometry"), Mapping):
            raise AnnotationError(f"{where}: not a GeoJSON Feature with a geometry", p)
        geom = feat["geometry"]
        kind = geom.get("type")
        props = feat.get("properties") or {}
        grade = _feature_grade(props if isinstance(props, Mapping) else {}, grade_key)
        if grade is None:
            raise AnnotationError(
                f"{where}: no grade (numeric property {grade_key!r} or a classification "
                "name such as '2.5')", p,
            )
        if not (0.0 <= grade <= GRADE_MAX and float(grade * 2).is_integer()):
            raise AnnotationError(f"{where}: grade {grade:g} is not 0..6 in half steps", p)
        coords = geom.get("coordinates")
        polygons: tuple[tuple[np.ndarray, ...], ...]
        if kind == "Polygon":
            polygons = (_rings(coords, where, p),)
        elif kind == "MultiPolygon" and isinstance(coords, list):
            polygons = tuple(_rings(c, where, p) for c in coords)
        else:
            raise AnnotationError(f"{where}: geometry {kind} is not a Polygon or MultiPolygon", p)
        regions.append(GradedRegion(grade, polygons, i))
    if dimensions is not None:
        check_inside_slide(regions, dimensions, p, tolerance_px=tolerance_px)
    return regions


def check_inside_slide(
    regions: Sequence[GradedRegion],
    dimensions: tuple[int, int],
    path: str | Path,
    *,
    tolerance_px: float = 1.0,
) -> None:
    """Raise :class:`AnnotationError` for a region reaching outside ``(width, height)``."""
    w, h = dimensions
    for reg in regions:
        pts = np.concatenate([r for poly in reg.polygons for r in poly])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if (lo < -tolerance_px).any() or hi[0] > w + tolerance_px or hi[1] > h + tolerance_px:
            raise AnnotationError(
                f"feature {reg.feature}: polygon (x {lo[0]:.0f}..{hi[0]:.0f}, "
                f"y {lo[1]:.0f}..{hi[1]:.0f}) lies outside the slide ({w} x {h} px)", path,
            )


def _edges(rings: Sequence[np.ndarray]) -> np.ndarray:
    """All ring edges as ``(e, 4)``: x0, y0, x1, y1 (rings closed implicitly)."""
    return np.concatenate([np.hstack([r, np.roll(r, -1, axis=0)]) for r in rings])


def _points_in_rings(pts: np.ndarray, edges: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to +x crosses an odd number of edges."""
    inside = np.zeros(len(pts), dtype=bool)
    step = max(1, chunk // max(len(pts), 1))
    px, py = pts[:, :1], pts[:, 1:]
    for k in range(0, len(edges), step):
        x0, y0, x1, y1 = (edges[k : k + step, j][None, :] for j in range(4))
        straddles = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= (straddles & (px < x_cross)).sum(axis=1) % 2 == 1
    return inside


def _boxes_touch_edges(boxes: np.ndarray, edges: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """Whether any segment meets each closed box (separating-axis test)."""
    hit = np.zeros(len(boxes), dtype=bool)
    step = max(1, chunk // max(len(boxes), 1))
    bx0, by0, bx1, by1 = (boxes[:, j][:, None] for j in range(4))
    for k in range(0, len(edges), step):
        x0, y0, x1, y1 = (edges[k : k + step, j][None, :] for j in range(4))
        overlap = (
            (np.minimum(x0, x1) <= bx1) & (np.maximum(x0, x1) >= bx0)
            & (np.minimum(y0, y1) <= by1) & (np.maximum(y0, y1) >= by0)
        )
        dx, dy = x1 - x0, y1 - y0
        sides = [dx * (cy - y0) - dy * (cx - x0)
                 for cx, cy in ((bx0, by0), (bx1, by0), (bx0, by1), (bx1, by1))]
        above = np.all([s > 0 for s in sides], axis=0)
        below = np.all([s < 0 for s in sides], axis=0)
        hit |= (overlap & ~above & ~below).any(axis=1)
    return hit


def boxes_inside_polygon(boxes: np.ndarray, rings: Sequence[np.ndarray]) -> np.ndarray:
    """Which boxes ``(n, 4)`` (x0, y0, x1, y1) lie wholly inside a polygon with holes.

    A box is inside when its centre is inside (even-odd over all rings) and no ring
    edge meets the box; a box touching the boundary counts as outside.
    """
    out = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0:
        return out
    pts = np.concatenate(list(rings))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    cand = np.flatnonzero(
        (boxes[:, 0] > lo[0]) & (boxes[:, 1] > lo[1])
        & (boxes[:, 2] < hi[0]) & (boxes[:, 3] < hi[1])
    )
    if cand.size == 0:
        return out
    edges = _edges(rings)
    b = boxes[cand]
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    ok = _points_in_rings(centres, edges)
    if ok.any():
        ok[ok] = ~_boxes_touch_edges(b[ok], edges)
    out[cand] = ok
    return out


def window_grades(
    regions: Sequence[GradedRegion], boxes: np.ndarray
) -> tuple[np.ndarray, int]:
    """Grade of each window box: the grade of the regions wholly containing it.

    Returns ``(grades, n_conflicts)``; windows in no region, or inside regions of
    different grades, get NaN (the latter are counted).

    References: Kohlberger et al. 2019: regions rasterised on the 128 px grid; only
    patches completely inside a delineated region are used.
    """
    lo = np.full(len(boxes), np.inf)
    hi = np.full(len(boxes), -np.inf)
    for reg in regions:
        inside = np.zeros(len(boxes), dtype=bool)
        for poly in reg.polygons:
            inside |= boxes_inside_polygon(boxes, poly)
        lo[inside] = np.minimum(lo[inside], reg.grade)
        hi[inside] = np.maximum(hi[inside], reg.grade)
    grades = np.where(lo == hi, lo, np.nan)
    conflicts = int((np.isfinite(lo) & (lo != hi)).sum())
    return grades, conflicts
