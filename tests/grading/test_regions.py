"""OOF regions as GeoJSON, the OOF pattern (global / regional / local, scan lanes), verdicts."""

from __future__ import annotations

import itertools
import json
from dataclasses import fields

import numpy as np
import pytest
from scipy import ndimage

from convfocus.errors import ConfigError
from convfocus.grading.regions import (
    BUCKETS,
    PROFILES,
    Profile,
    bucket_shares,
    get_profile,
    oof_pattern,
    oof_regions,
    severity_of,
    verdict,
    verdict_rank,
)
from convfocus.types import GridGeometry

GRID_ORIGIN = (40, 24)
STRIDE = 128


def _grid(rows: int, cols: int) -> GridGeometry:
    return GridGeometry(GRID_ORIGIN, STRIDE, 139, rows, cols)


def _dims(rows: int, cols: int) -> tuple[int, int]:
    # a slide just large enough for the last window
    return (GRID_ORIGIN[0] + (cols - 1) * STRIDE + 139, GRID_ORIGIN[1] + (rows - 1) * STRIDE + 139)


def _rings(feature: dict) -> list[list[list[float]]]:
    geom = feature["geometry"]
    if geom["type"] == "Polygon":
        return list(geom["coordinates"])
    assert geom["type"] == "MultiPolygon"
    return [ring for poly in geom["coordinates"] for ring in poly]


def _polygons(feature: dict) -> list[list[list[list[float]]]]:
    geom = feature["geometry"]
    return [geom["coordinates"]] if geom["type"] == "Polygon" else list(geom["coordinates"])


def _signed_area(ring: list[list[float]]) -> float:
    xy = np.asarray(ring, dtype=float)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _even_odd(points: np.ndarray, rings: list[list[list[float]]]) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    px, py = points[:, 0], points[:, 1]
    for ring in rings:
        xy = np.asarray(ring, dtype=float)
        for (x0, y0), (x1, y1) in itertools.pairwise(xy):
            if y0 == y1:
                continue
            crosses = ((y0 > py) != (y1 > py)) & (px < x0 + (py - y0) * (x1 - x0) / (y1 - y0))
            inside ^= crosses
    return inside


def _check_valid_geojson(fc: dict, dims: tuple[int, int]) -> None:
    json.dumps(fc, allow_nan=False)
    assert fc["type"] == "FeatureCollection"
    for f in fc["features"]:
        assert f["type"] == "Feature"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == f"OOF {props['severity']}"
        assert len(props["classification"]["color"]) == 3
        for poly in _polygons(f):
            for k, ring in enumerate(poly):
                assert len(ring) >= 5
                assert ring[0] == ring[-1]  # closed
                assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple
                area = _signed_area(ring)
                assert area > 0 if k == 0 else area < 0  # shell, then holes
                for x, y in ring:
                    assert 0 <= x <= dims[0] and 0 <= y <= dims[1]
                    # on the cell-corner lattice of the grid, in level-0 pixels
                    assert (x - GRID_ORIGIN[0]) % STRIDE == 0 or x == dims[0]
                    assert (y - GRID_ORIGIN[1]) % STRIDE == 0 or y == dims[1]


# --- buckets -----------------------------------------------------------------------------------


def test_buckets_and_shares():
    assert BUCKETS == ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29))
    cm = np.array([[0, 4, 5, -1], [10, 15, 20, 29]])
    shares = bucket_shares(cm)
    assert list(shares) == ["0-4", "5-9", "10-14", "15-19", "20-29"]
    assert shares == pytest.approx({"0-4": 2 / 7, "5-9": 1 / 7, "10-14": 1 / 7,
                                    "15-19": 1 / 7, "20-29": 2 / 7})
    assert sum(bucket_shares(np.full((3, 3), -1)).values()) == 0.0


# --- regions -----------------------------------------------------------------------------------


def test_two_separate_blobs_give_two_regions_in_level0_pixels():
    cm = np.zeros((12, 16), int)
    cm[1:4, 2:5] = 25  # 9 cells, severe
    cm[7:10, 10:14] = 16  # 12 cells, moderate
    dims = _dims(12, 16)
    fc = oof_regions(cm, _grid(12, 16), mpp=0.25, l0_dimensions=dims)
    _check_valid_geojson(fc, dims)
    assert len(fc["features"]) == 2
    first, second = fc["features"]
    assert first["properties"]["severity"] == "severe"  # worst first
    assert second["properties"]["severity"] == "moderate"
    assert first["geometry"]["type"] == "Polygon"
    xs = [p[0] for p in first["geometry"]["coordinates"][0]]
    ys = [p[1] for p in first["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs)) == (40 + 2 * 128, 40 + 5 * 128)
    assert (min(ys), max(ys)) == (24 + 1 * 128, 24 + 4 * 128)
    p = first["properties"]
    assert p["n_cells"] == 9 and p["max_class"] == 25 and p["mean_class"] == 25
    assert p["area_um2"] == pytest.approx(9 * (128 * 0.25) ** 2)
    assert p["bbox_l0_px"] == [40 + 256, 24 + 128, 40 + 640, 24 + 512]


def test_a_hole_survives():
    cm = np.zeros((9, 9), int)
    cm[2:7, 2:7] = 22
    cm[4, 4] = 0  # one sharp cell inside
    fc = oof_regions(cm, _grid(9, 9))
    (f,) = fc["features"]
    assert f["geometry"]["type"] == "Polygon"
    shell, *holes = f["geometry"]["coordinates"]
    assert len(holes) == 1
    area = _signed_area(shell) + _signed_area(holes[0])
    assert area == pytest.approx(24 * STRIDE**2)
    assert f["properties"]["area_um2"] is None  # no mpp given


def test_min_cells_drops_single_cells_and_min_class_is_inclusive():
    cm = np.zeros((6, 6), int)
    cm[0, 0] = 29
    cm[3, 3] = cm[3, 4] = 10
    cm[5, 0] = 9
    fc = oof_regions(cm, _grid(6, 6), min_class=10, min_cells=2)
    assert len(fc["features"]) == 1
    assert fc["features"][0]["properties"]["n_cells"] == 2
    assert len(oof_regions(cm, _grid(6, 6), min_cells=1)["features"]) == 2


def test_diagonal_cells_are_one_region_with_valid_parts():
    cm = np.zeros((4, 4), int)
    cm[0, 0] = cm[1, 1] = cm[2, 2] = 20  # 8-connected only through corners
    fc = oof_regions(cm, _grid(4, 4), min_cells=1)
    (f,) = fc["features"]
    assert f["geometry"]["type"] == "MultiPolygon"
    assert len(f["geometry"]["coordinates"]) == 3
    _check_valid_geojson(fc, _dims(4, 4))


@pytest.mark.parametrize("seed", range(25))
def test_outlines_reproduce_the_oof_cells_exactly(seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(3, 25, 2)
    cm = rng.integers(0, 30, (rows, cols))
    cm[rng.random((rows, cols)) < 0.2] = -1
    dims = _dims(rows, cols)
    fc = oof_regions(cm, _grid(rows, cols), min_class=12, min_cells=1, l0_dimensions=dims)
    _check_valid_geojson(fc, dims)
    oof = cm >= 12
    _, n = ndimage.label(oof, structure=np.ones((3, 3)))
    assert len(fc["features"]) == n
    rr, cc = np.mgrid[:rows, :cols]
    centres = np.stack([GRID_ORIGIN[0] + (cc.ravel() + 0.5) * STRIDE,
                        GRID_ORIGIN[1] + (rr.ravel() + 0.5) * STRIDE], axis=1)
    covered = np.zeros(rows * cols, int)
    for f in fc["features"]:
        inside = _even_odd(centres, _rings(f))
        assert inside.sum() == f["properties"]["n_cells"]
        covered += inside
    assert np.array_equal(covered.reshape(rows, cols), oof.astype(int))


def test_severity_from_mean_class():
    assert severity_of(10) == "mild" and severity_of(14.9) == "mild"
    assert severity_of(15) == "moderate" and severity_of(19.99) == "moderate"
    assert severity_of(20) == "severe" and severity_of(29) == "severe"


def test_regions_reject_a_mismatched_grid():
    with pytest.raises(ValueError):
        oof_regions(np.zeros((3, 3), int), _grid(3, 4))


# --- pattern -----------------------------------------------------------------------------------


def test_pattern_full_oof_is_global():
    p = oof_pattern(np.full((30, 40), 22))
    assert p["pattern"] == "global" and p["oof_share"] == 1.0
    assert p["scan_lanes"] is False


def test_pattern_vertical_stripe_is_a_regional_scan_lane():
    cm = np.full((40, 50), 2)
    cm[:5, :] = -1  # some glass
    cm[:, 20:25] = np.where(cm[:, 20:25] >= 0, 21, -1)
    grid = _grid(40, 50)
    p = oof_pattern(cm, grid=grid)
    assert p["pattern"] == "regional"
    assert p["scan_lanes"] is True and p["lane_direction"] == "vertical"
    assert p["lane_positions"] == [[20, 24]]
    assert p["lane_positions_l0_px"] == [[40 + 20 * 128, 40 + 25 * 128]]


def test_pattern_horizontal_stripe_is_a_horizontal_lane():
    cm = np.full((50, 40), 1)
    cm[10:14, :] = 18
    p = oof_pattern(cm)
    assert p["scan_lanes"] is True and p["lane_direction"] == "horizontal"
    assert p["lane_positions"] == [[10, 13]]


def test_pattern_scattered_single_cells_are_local():
    cm = np.full((40, 40), 1)
    cm[::5, ::5] = 25
    p = oof_pattern(cm)
    assert p["pattern"] == "local"
    assert p["scan_lanes"] is False and p["lane_direction"] is None


def test_pattern_all_sharp_is_none_and_a_blob_is_not_a_lane():
    assert oof_pattern(np.zeros((20, 20), int))["pattern"] == "none"
    assert oof_pattern(np.full((5, 5), -1))["pattern"] == "none"
    cm = np.zeros((40, 40), int)
    cm[15:23, 15:23] = 24
    p = oof_pattern(cm)
    assert p["pattern"] == "regional" and p["scan_lanes"] is False


# --- verdicts ----------------------------------------------------------------------------------


def test_profiles_exist_and_are_ordered_by_strictness():
    for name in ("histology", "cytology", "lymphoma", "ai"):
        assert get_profile(name).name == name
    order = ["histology", "cytology", "lymphoma", "ai"]
    numeric = [f.name for f in fields(Profile) if f.name not in ("name", "description")]
    for lenient, strict in itertools.pairwise(order):
        for attr in numeric:
            assert getattr(PROFILES[strict], attr) <= getattr(PROFILES[lenient], attr)
    assert PROFILES["cytology"].oof_min_class < PROFILES["histology"].oof_min_class


def test_unknown_or_inconsistent_profile_is_a_config_error():
    with pytest.raises(ConfigError):
        get_profile("dermatology")
    with pytest.raises(ConfigError):
        Profile("x", "bad", review_share=0.5, rescan_share=0.1, oof_min_class=10,
                review_region_cells=1, rescan_region_cells=2)


def test_verdict_extremes():
    sharp = np.zeros((30, 30), int)
    blurred = np.full((30, 30), 29)
    for name in PROFILES:
        assert verdict(sharp, name)["verdict"] == "pass"
        v = verdict(blurred, name)
        assert v["verdict"] == "rescan" and v["profile"] == name and v["reasons"]
    none = verdict(np.full((3, 3), -1))
    assert none["verdict"] == "no-tissue"  # a QC result, not "review"
    assert none["reasons"] == ["no tissue dense enough to grade: glass, fat or very pale tissue"]


def test_a_tiny_slide_gets_insufficient_tissue_not_rescan():
    # 0.01 mm² of tissue, all blurred: 10 cells of 32 µm (0.25 µm/px, stride 128 px)
    cell_mm2 = (128 * 0.25 / 1000) ** 2
    cm = np.full((2, 5), 25)
    assert verdict(cm, "histology")["verdict"] == "rescan"  # no area given: classes alone
    for name, p in PROFILES.items():
        v = verdict(cm, name, cell_mm2=cell_mm2)
        assert v["verdict"] == "insufficient-tissue", name
        assert v["tissue_mm2"] == pytest.approx(0.0102, abs=1e-4)
        assert v["min_tissue_mm2"] == p.min_tissue_mm2 > 0.0102
        assert "0.01 mm² graded" in v["reasons"][0] and f"{p.min_tissue_mm2:g} mm²" in v["reasons"][0]
        assert "100.0% at class >= " in v["reasons"][1]  # what the tissue there is shows
    # at the profile's minimum the verdict is about focus again
    n = int(np.ceil(PROFILES["histology"].min_tissue_mm2 / cell_mm2))
    assert verdict(np.full((1, n), 25), "histology", cell_mm2=cell_mm2)["verdict"] == "rescan"
    assert verdict(np.full((1, n - 1), 25), "histology",
                   cell_mm2=cell_mm2)["verdict"] == "insufficient-tissue"
    assert PROFILES["histology"].min_tissue_mm2 == 0.5


def test_a_slide_of_ink_alone_says_so():
    v = verdict(np.full((4, 4), -1), "cytology", cell_mm2=0.001, ink_mm2=0.0116)
    assert v["verdict"] == "no-tissue"
    why = "no tissue to grade: only marker ink or other colour that is not stained tissue"
    assert v["reasons"] == [f"{why} (0.012 mm², left out)"]
    with pytest.raises(ConfigError):
        Profile("x", "bad", review_share=0.1, rescan_share=0.2, oof_min_class=10,
                review_region_cells=1, rescan_region_cells=2, min_tissue_mm2=-1.0)


def test_cytology_is_stricter_for_moderate_blur():
    cm = np.full((30, 30), 2)
    cm[5:10, 5:10] = 12  # 25 cells of class 12: invisible to histology's class >= 15
    assert verdict(cm, "histology")["verdict"] == "pass"
    assert verdict(cm, "cytology")["verdict"] == "review"


def _random_map(rng: np.random.Generator) -> np.ndarray:
    rows, cols = rng.integers(5, 40, 2)
    base = rng.integers(0, rng.integers(1, 30), (rows, cols))
    if rng.random() < 0.5:  # a blurred block
        r0, c0 = rng.integers(0, rows), rng.integers(0, cols)
        base[r0 : r0 + rng.integers(1, 20), c0 : c0 + rng.integers(1, 20)] = rng.integers(5, 30)
    base[rng.random((rows, cols)) < rng.uniform(0, 0.5)] = -1
    return base


def test_stricter_profiles_are_never_more_lenient():
    rng = np.random.default_rng(7)
    order = ["histology", "cytology", "lymphoma", "ai"]
    for _ in range(300):
        cm = _random_map(rng)
        ranks = [verdict_rank(verdict(cm, name)["verdict"]) for name in order]
        assert ranks == sorted(ranks), (ranks, cm)


def test_more_blur_never_gives_a_better_verdict():
    rng = np.random.default_rng(11)
    for _ in range(300):
        cm = _random_map(rng)
        worse = cm.copy()
        tissue = worse >= 0
        bump = tissue & (rng.random(cm.shape) < rng.uniform(0.05, 1.0))
        worse[bump] = np.minimum(29, worse[bump] + rng.integers(1, 15, bump.sum()))
        for name in PROFILES:
            before = verdict_rank(verdict(cm, name)["verdict"])
            after = verdict_rank(verdict(worse, name)["verdict"])
            assert after >= before, (name, cm, worse)


@pytest.mark.parametrize("eight", [True, False])
def test_label_cells_numbers_components_as_scipy_does(eight: bool) -> None:
    from scipy import ndimage

    from convfocus.grading.regions import label_cells

    rng = np.random.default_rng(7)
    structure = np.ones((3, 3), bool) if eight else None
    for shape, p in (((40, 60), 0.35), ((1, 50), 0.5), ((25, 25), 0.6), ((9, 9), 1.0),
                     ((9, 9), 0.0)):
        mask = rng.random(shape) < p
        labels, boxes = label_cells(mask, eight=eight)
        ref, n = ndimage.label(mask, structure=structure)
        assert np.array_equal(labels, ref) and len(boxes) == n
        assert boxes == ndimage.find_objects(ref)
