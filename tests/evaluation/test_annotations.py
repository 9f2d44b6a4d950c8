"""Graded regions: GeoJSON parsing, clear errors, and windows wholly inside polygons."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import AnnotationError
from convfocus.evaluation.annotations import (
    GradedRegion,
    boxes_inside_polygon,
    read_grade_annotations,
    window_grades,
)
from convfocus.types import GridGeometry
from evaluation_helpers import feature, rect, write_geojson


def _brute_inside(boxes: np.ndarray, rings: list[np.ndarray], margin: int) -> np.ndarray:
    """Pixel-raster reference: every pixel of the box grown by ``margin`` lies inside."""
    from skimage.draw import polygon2mask

    size = int(max(r.max() for r in rings)) + 200
    mask = np.zeros((size, size), bool)
    for r in rings:
        mask ^= polygon2mask((size, size), r[:, ::-1])
    out = []
    for x0, y0, x1, y1 in boxes.astype(int):
        a, b = max(0, y0 - margin), max(0, x0 - margin)
        out.append(mask[a : y1 + margin, b : x1 + margin].all())
    return np.array(out)


def test_windows_inside_match_a_pixel_raster() -> None:
    rng = np.random.default_rng(3)
    grid = GridGeometry((5.0, 9.0), 32.0, 35.0, 40, 40)
    r, c = np.divmod(np.arange(40 * 40), 40)
    boxes = grid.boxes(r, c)
    for _ in range(4):  # random star-shaped polygons with a square hole
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = rng.uniform(250, 620, 14)
        outer = np.stack([660 + radii * np.cos(angles), 660 + radii * np.sin(angles)], axis=1)
        hole = np.array([[600, 600], [720, 600], [720, 720], [600, 720]], float)
        rings = [outer, hole]
        got = boxes_inside_polygon(boxes, rings)
        assert got.sum() > 20
        strict = _brute_inside(boxes, rings, margin=2)  # clearly inside -> must be found
        loose = _brute_inside(boxes, rings, margin=-2)  # found -> inside up to 2 px
        assert np.all(got[strict])
        assert np.all(loose[got])


def test_windows_in_conflicting_regions_are_dropped() -> None:
    a = GradedRegion(1.0, ((np.array(rect(0, 0, 500, 500))[:-1],),), 0)
    b = GradedRegion(3.0, ((np.array(rect(200, 0, 700, 500))[:-1],),), 1)
    same = GradedRegion(1.0, ((np.array(rect(0, 0, 300, 300))[:-1],),), 2)
    boxes = np.array([[10, 10, 149, 149], [250, 10, 389, 149], [550, 10, 689, 149],
                      [900, 900, 1039, 1039]], float)
    grades, conflicts = window_grades([a, b, same], boxes)
    assert grades[0] == 1.0 and grades[2] == 3.0
    assert math.isnan(grades[1]) and math.isnan(grades[3])
    assert conflicts == 1


def test_grades_parse_numbers_and_qupath_names(tmp_path: Path) -> None:
    feats = [feature([rect(0, 0, 100, 100)], {"grade": 2}),
             feature([rect(0, 0, 100, 100)], {"grade": "4.5"}),
             feature([rect(0, 0, 100, 100)], {"classification": {"name": "Grade 1.5"}}),
             feature([rect(0, 0, 100, 100)], {"classification": "6"}),
             feature([[rect(0, 0, 50, 50)], [rect(60, 60, 90, 90)]], {"grade": 0},
                     kind="MultiPolygon")]
    regions = read_grade_annotations(write_geojson(tmp_path / "a.geojson", feats))
    assert [r.grade for r in regions] == [2.0, 4.5, 1.5, 6.0, 0.0]
    assert len(regions[-1].polygons) == 2


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("this is not json {", "not GeoJSON"),
        (json.dumps({"type": "Topology", "objects": {}}), "not GeoJSON"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "no annotated regions"),
        (json.dumps([feature([rect(0, 0, 9, 9)], {"name": "tumour"})]), "no grade"),
        (json.dumps([feature([rect(0, 0, 9, 9)], {"grade": 7})]), "not 0..6 in half steps"),
        (json.dumps([feature([rect(0, 0, 9, 9)], {"grade": 2.3})]), "not 0..6 in half steps"),
        (json.dumps([feature([rect(0, 0, 9, 9)], {"grade": True})]), "no grade"),
        (json.dumps([feature([[0, 0], [5, 5]], {"grade": 1}, kind="LineString")]),
         "not a Polygon"),
        (json.dumps([feature([[[0, 0], [5, 5]]], {"grade": 1})]), "fewer than 3 points"),
        (json.dumps([feature([rect(3000, 3000, 3500, 3400)], {"grade": 1})]),
         "outside the slide"),
    ],
)
def test_bad_annotation_files_give_one_clear_error(tmp_path: Path, content: str,
                                                   cause: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError) as info:
        read_grade_annotations(path, dimensions=(3200, 3200))
    message = str(info.value)
    assert cause in message
    assert "bad.geojson" in message
    assert "\n" not in message
