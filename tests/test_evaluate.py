"""The evaluation commands on fixtures with known truth (no trained model needed)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from convfocus.cli import main
from convfocus.errors import AnnotationError, ConfigError
from convfocus.evaluation import evaluate as ev
from convfocus.evaluation import metrics
from convfocus.types import ModelSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRUE_SLOPE = 29.0 / 6.0
GRADES = np.arange(13) / 2.0

# --- fixture builders --------------------------------------------------------------------------


def write_scan_output(
    folder: Path, *, rows: int, cols: int, classes: np.ndarray, origin=(16.0, 24.0),
    stride: float = 128.0, window: float = 139.0, dimensions=(3200, 3200), present=None,
) -> None:
    """A minimal scan output: summary.json with the grid and tiles.csv (graded cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"grid": {"l0_origin_px": list(origin), "l0_stride_px": stride,
                        "l0_window_px": window, "rows": rows, "cols": cols},
               "dimensions": list(dimensions), "mpp": 0.25, "scanner": "fixture"}
    (folder / "summary.json").write_text(json.dumps(summary))
    header = ["x_px", "y_px", "row", "col", "oof_class", "expected_class", "confidence",
              "blur_um", *(f"p{i}" for i in range(30))]
    with open(folder / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in range(rows):
            for c in range(cols):
                if present is not None and not present[r, c]:
                    continue
                k = int(classes[r, c])
                probs = np.eye(30)[k]
                w.writerow([round(origin[0] + c * stride), round(origin[1] + r * stride), r, c, k,
                            k, 1.0, 0.0, *probs])


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(coords: Any, props: dict[str, Any], kind: str = "Polygon") -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": props}


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def graded_slide(
    tmp: Path, stem: str, rng: np.random.Generator, *, noise: float = 1.5, shuffle: bool = False,
    slope: float = TRUE_SLOPE, tiles_root: Path | None = None,
) -> Path:
    """A slide whose 13 graded regions (one per grade, some non-convex, one with a hole)
    carry classes ``slope * grade + noise``; writes scans + annotations, returns the GeoJSON."""
    rows = cols = 40
    origin, stride, side = (16.0, 24.0), 128.0, 900
    feats = []
    for k, g in enumerate(GRADES):
        sx, sy = (k % 5) * 1000 + 8, (k // 5) * 1000 + 8
        if k % 4 == 1:  # L-shaped (non-convex)
            h = side // 2
            ring = [[sx, sy], [sx + side, sy], [sx + side, sy + h], [sx + h, sy + h],
                    [sx + h, sy + side], [sx, sy + side], [sx, sy]]
            coords: Any = [ring]
        elif k % 4 == 2:  # with a hole
            coords = [rect(sx, sy, sx + side, sy + side),
                      rect(sx + 300, sy + 300, sx + 600, sy + 600)]
        else:
            coords = [rect(sx, sy, sx + side, sy + side)]
        props: dict[str, Any] = {"grade": float(g)}
        if k % 3 == 0:  # QuPath style: grade as the classification name
            props = {"classification": {"name": f"Grade {g:g}", "color": [0, 0, 255]}}
        feats.append(feature(coords, props))
    path = write_geojson(tmp / f"{stem}.geojson", feats)
    regions = ev.read_grade_annotations(path, dimensions=(5200, 5200))
    r_idx, c_idx = np.divmod(np.arange(rows * cols), cols)
    grid = ev.ScanGrid(origin, stride, 139.0, rows, cols)
    grades, _ = ev.window_grades(regions, grid.boxes(r_idx, c_idx))
    grade_map = grades.reshape(rows, cols)
    classes = rng.integers(0, 30, (rows, cols)).astype(float)  # outside regions: anything
    inside = np.isfinite(grade_map)
    classes[inside] = slope * grade_map[inside] + rng.normal(0, noise, inside.sum())
    classes = np.clip(np.round(classes), 0, 29)
    if shuffle:
        classes[inside] = rng.permutation(classes[inside])
    write_scan_output((tiles_root or tmp / "scans") / stem, rows=rows, cols=cols,
                      classes=classes, origin=origin, stride=stride, dimensions=(5200, 5200))
    return path


def graded_manifest(tmp: Path, seed: int = 0, **kw: Any) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["slide,annotations,test_set"]
    for stem, test_set in (("at2-a", "AT2"), ("at2-b", "AT2"), ("s360-a", "S360")):
        graded_slide(tmp, stem, rng, **kw)
        lines.append(f"slides/{stem}.svs,{stem}.geojson,{test_set}")
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp / "manifest.csv"


# --- annotations and rasterisation -------------------------------------------------------------


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
    grid = ev.ScanGrid((5.0, 9.0), 32.0, 35.0, 40, 40)
    r, c = np.divmod(np.arange(40 * 40), 40)
    boxes = grid.boxes(r, c)
    for _ in range(4):  # random star-shaped polygons with a square hole
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = rng.uniform(250, 620, 14)
        outer = np.stack([660 + radii * np.cos(angles), 660 + radii * np.sin(angles)], axis=1)
        hole = np.array([[600, 600], [720, 600], [720, 720], [600, 720]], float)
        rings = [outer, hole]
        got = ev.boxes_inside_polygon(boxes, rings)
        assert got.sum() > 20
        strict = _brute_inside(boxes, rings, margin=2)  # clearly inside -> must be found
        loose = _brute_inside(boxes, rings, margin=-2)  # found -> inside up to 2 px
        assert np.all(got[strict])
        assert np.all(loose[got])


def test_windows_in_conflicting_regions_are_dropped() -> None:
    a = ev.GradedRegion(1.0, ((np.array(rect(0, 0, 500, 500))[:-1],),), 0)
    b = ev.GradedRegion(3.0, ((np.array(rect(200, 0, 700, 500))[:-1],),), 1)
    same = ev.GradedRegion(1.0, ((np.array(rect(0, 0, 300, 300))[:-1],),), 2)
    boxes = np.array([[10, 10, 149, 149], [250, 10, 389, 149], [550, 10, 689, 149],
                      [900, 900, 1039, 1039]], float)
    grades, conflicts = ev.window_grades([a, b, same], boxes)
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
    regions = ev.read_grade_annotations(write_geojson(tmp_path / "a.geojson", feats))
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
        ev.read_grade_annotations(path, dimensions=(3200, 3200))
    message = str(info.value)
    assert cause in message
    assert "bad.geojson" in message
    assert "\n" not in message


def test_cli_reports_a_bad_annotation_in_one_line(tmp_path: Path, capsys) -> None:
    manifest = graded_manifest(tmp_path)
    write_geojson(tmp_path / "at2-b.geojson",
                  [feature([rect(100, 100, 400, 400)], {"name": "no grade here"})])
    # the error names the file and its cause
    code = main(["evaluate", "grades", str(manifest), "--tiles", str(tmp_path / "scans"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "at2-b.geojson" in err and "no grade" in err


# --- evaluate grades ---------------------------------------------------------------------------


def test_known_truth_gives_rho_near_one_and_the_true_slope(tmp_path: Path, capsys) -> None:
    manifest = graded_manifest(tmp_path)
    out = tmp_path / "out"
    code = main(["evaluate", "grades", str(manifest), "--tiles", str(tmp_path / "scans"),
                 "--out", str(out), "--per-grade", "3000"])
    assert code == 0
    result = json.loads((out / "grades.json").read_text())
    assert set(result["test_sets"]) == {"AT2", "S360"}
    for st in result["test_sets"].values():
        for key in ("spearman", "p_value", "slope", "intercept"):
            assert key in st
        assert st["spearman"] > 0.95
        assert st["p_value"] < 1e-3
        assert st["slope"] == pytest.approx(TRUE_SLOPE, abs=0.25)
        assert st["intercept"] == pytest.approx(0.0, abs=0.6)
        assert len(st["n_per_grade"]) == 13
        assert st["n_sampled"] == 13 * 3000
    assert (out / "grades.png").stat().st_size > 10_000
    md = (out / "grades.md").read_text()
    assert "| AT2 |" in md and "0.808" in md and "0.936" in md
    assert "Spearman" in capsys.readouterr().out


def test_shuffled_predictions_give_rho_near_zero(tmp_path: Path) -> None:
    manifest = graded_manifest(tmp_path, shuffle=True)
    res = ev.evaluate_grades(manifest, tmp_path / "out", tiles=tmp_path / "scans",
                             n_per_grade=2000)
    for st in res["test_sets"].values():
        assert abs(st["spearman"]) < 0.15
        assert abs(st["slope"]) < 0.7


def test_grade_agreement_is_seeded_and_balanced() -> None:
    rng = np.random.default_rng(0)
    grade = np.r_[np.zeros(1000), np.full(10, 3.0), np.full(50, 6.0)]
    cls = np.round(TRUE_SLOPE * grade)
    a, idx = ev.grade_agreement(grade, cls, np.random.default_rng(5), n_per_grade=100)
    b, idx2 = ev.grade_agreement(grade, cls, np.random.default_rng(5), n_per_grade=100)
    assert np.array_equal(idx, idx2) and a == b
    assert np.unique(grade[idx], return_counts=True)[1].tolist() == [100, 100, 100]
    assert a["n_per_grade"] == {"0": 1000, "3": 10, "6": 50}
    assert a["slope"] == pytest.approx(TRUE_SLOPE, abs=0.2)
    assert rng is not None


def test_test_sets_from_another_column_or_summary(tmp_path: Path) -> None:
    manifest = graded_manifest(tmp_path)
    text = manifest.read_text().replace("test_set", "scanner_model")
    manifest.write_text(text)
    res = ev.evaluate_grades(manifest, tmp_path / "o1", tiles=tmp_path / "scans",
                             group_by="scanner_model", n_per_grade=200)
    assert set(res["test_sets"]) == {"AT2", "S360"}
    res = ev.evaluate_grades(manifest, tmp_path / "o2", tiles=tmp_path / "scans",
                             group_by="scanner", n_per_grade=200)  # summary.json key
    assert set(res["test_sets"]) == {"fixture"}


def test_missing_scan_output_is_a_clear_error(tmp_path: Path) -> None:
    manifest = graded_manifest(tmp_path)
    with pytest.raises(ConfigError, match="no scan output for at2-a.svs"):
        ev.evaluate_grades(manifest, tmp_path / "out", tiles=tmp_path / "elsewhere")
    (tmp_path / "bad.csv").write_text("slide,notes\na.svs,x\n")
    with pytest.raises(ConfigError, match="lacks column"):
        ev.evaluate_grades(tmp_path / "bad.csv", tmp_path / "out", tiles=tmp_path)


def test_bad_annotations_fail_before_any_scanning(tmp_path: Path, monkeypatch) -> None:
    manifest = graded_manifest(tmp_path)
    (tmp_path / "s360-a.geojson").write_text("{ not json")

    def no_scan(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("scanned before the annotations were checked")

    monkeypatch.setattr(ev, "_scan", no_scan)
    with pytest.raises(AnnotationError, match="s360-a.geojson: not GeoJSON"):
        ev.evaluate_grades(manifest, tmp_path / "out")


def test_inputs_sharing_a_stem_get_their_own_scan_folders(tmp_path: Path, monkeypatch) -> None:
    roots: list[Path] = []

    def fake_scan(slide: Path, scans: Path, **kwargs: Any) -> Path:
        roots.append(scans)
        return scans / slide.stem

    monkeypatch.setattr(ev, "_scan", fake_scan)
    inputs = [Path("at2/ln-01.svs"), Path("s360/ln-01.ndpi"), Path("at2/ln-02.svs")]
    folders = ev.scan_outputs(inputs, tiles=None, scans=tmp_path)
    assert roots == [tmp_path / "001", tmp_path / "002", tmp_path]
    assert len(set(folders)) == 3
    with pytest.raises(ConfigError, match="share the name 'ln-01'"):
        ev.scan_outputs(inputs, tiles=tmp_path, scans=None)


# --- scanning a generated slide (needs the scanner modules) -------------------------------------

_SCAN_MODULES = ("convfocus.grading.scan", "convfocus.io.slide", "convfocus.grading.tissue", "convfocus.grading.tiling",
                 "convfocus.grading.report", "convfocus.grading.heatmap", "convfocus.grading.regions")
_scan_missing = [m for m in _SCAN_MODULES if importlib.util.find_spec(m) is None]


class OracleGrader:
    """Grades a window by its high-frequency energy, calibrated on known bokeh classes."""

    def __init__(self, calibration: np.ndarray) -> None:
        self.spec = ModelSpec(name="oracle", version="0", arch="paper")
        self.calibration = calibration  # log energy per class, decreasing

    @staticmethod
    def energy(windows: np.ndarray) -> np.ndarray:
        g = windows.astype(np.float32).mean(axis=-1)
        lap = g[:, 1:-1, 1:-1] * 4 - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] \
            - g[:, 1:-1, 2:]
        return np.log(lap.var(axis=(1, 2)) + 1e-3)

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        e = self.energy(windows)
        k = np.abs(e[:, None] - self.calibration[None, :]).argmin(axis=1)
        return np.eye(30, dtype=np.float32)[k]

    def predict_region(self, region: np.ndarray) -> np.ndarray:
        nr, nc = (region.shape[0] - 11) // 128, (region.shape[1] - 11) // 128
        wins = np.stack([region[r * 128 : r * 128 + 139, c * 128 : c * 128 + 139]
                         for r in range(nr) for c in range(nc)])
        return self.predict_windows(wins).reshape(nr, nc, 30)


@pytest.fixture(scope="module")
def known_blur_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1920 px pyramidal TIFF (0.25 µm/px) with 13 regions blurred at the class of their
    grade (class = round(29/6 grade)) and their grade annotations; returns the manifest."""
    if _scan_missing:
        pytest.skip(f"scanner modules not present: {_scan_missing}")
    from skimage.data import immunohistochemistry

    from convfocus.io.slide import write_pyramidal_tiff
    from convfocus.synthesis.defocus import apply_blur, sample_blur_param

    tmp = tmp_path_factory.mktemp("known-blur")
    rng = np.random.default_rng(0)
    base = np.pad(immunohistochemistry(), ((0, 1536), (0, 1536), (0, 0)), mode="symmetric")
    slide = base[:1920, :1920].copy()
    feats = []
    for k, g in enumerate(GRADES):
        x0, y0, m = (k % 4) * 480 + 20, (k // 4) * 480 + 20, 220
        crop = base[max(0, y0 - m) : y0 + 440 + m, max(0, x0 - m) : x0 + 440 + m]
        blurred = apply_blur(crop, "bokeh", sample_blur_param(round(TRUE_SLOPE * g), rng))
        oy, ox = y0 - max(0, y0 - m), x0 - max(0, x0 - m)
        slide[y0 : y0 + 440, x0 : x0 + 440] = blurred[oy : oy + 440, ox : ox + 440]
        feats.append(feature([rect(x0, y0, x0 + 440, y0 + 440)], {"grade": float(g)}))
    write_pyramidal_tiff(tmp / "known.tif", slide, mpp=0.25)
    write_geojson(tmp / "known.geojson", feats)
    (tmp / "m.csv").write_text("slide,annotations,test_set\nknown.tif,known.geojson,gen\n")
    return tmp / "m.csv"


def test_generated_slide_with_known_blur_classes_scans_to_rho_near_one(
    known_blur_slide: Path, tmp_path: Path
) -> None:
    """The whole path (scan -> tiles.csv -> rasterised grades) with an oracle grader."""
    from skimage.data import immunohistochemistry

    from convfocus.synthesis.defocus import apply_blur, jpeg_roundtrip, sample_blur_param

    rng = np.random.default_rng(1)
    tissue = immunohistochemistry()
    windows = [tissue[y : y + 139, x : x + 139] for y in (0, 200, 360) for x in (0, 200, 360)]
    calibration = np.array([  # as the scanner sees it: blurred, then JPEG q80 in the TIFF
        OracleGrader.energy(np.stack([
            jpeg_roundtrip(apply_blur(w, "bokeh", sample_blur_param(c, rng)), 80)
            for w in windows])).mean()
        for c in range(30)
    ])
    res = ev.evaluate_grades(known_blur_slide, tmp_path / "out", n_per_grade=500,
                             grader=OracleGrader(calibration))
    st = res["test_sets"]["gen"]
    assert st["spearman"] > 0.9
    assert st["slope"] == pytest.approx(TRUE_SLOPE, rel=0.3)
    assert len(st["n_per_grade"]) == 13
    assert (tmp_path / "out" / "scans" / "known" / "tiles.csv").is_file()


@pytest.mark.slow
def test_shipped_model_grades_the_known_blur_slide(known_blur_slide: Path, tmp_path: Path) -> None:
    """The real model on synthetic bokeh regions: a loose bound, this is not the paper's test."""
    from convfocus.errors import ConvFocusError

    try:
        from convfocus.grading.infer import load_grader

        grader = load_grader(None, device="cpu")
    except (ImportError, ConvFocusError) as exc:
        pytest.skip(f"no shipped model to load ({exc})")
    res = ev.evaluate_grades(known_blur_slide, tmp_path / "out", n_per_grade=500, grader=grader)
    st = res["test_sets"]["gen"]
    assert st["spearman"] > 0.7
    assert st["slope"] > 2.0


# --- z-stacks ----------------------------------------------------------------------------------


def test_zstack_finds_the_v_and_its_minimum(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    z_levels = np.round(np.arange(-2.0, 2.01, 0.4), 1)
    z0 = 0.4
    rows, cols = 6, 8
    lines = ["path,z_um"]
    for k, z in enumerate(z_levels):
        cls = np.clip(np.round(6 * abs(z - z0) / 0.4 ** 0.5 + rng.normal(0, 0.7, (rows, cols))),
                      0, 29)
        present = np.ones((rows, cols), bool)
        present[k % rows, k % cols] = False  # a few windows miss at some level
        write_scan_output(tmp_path / "scans" / f"z{k:02d}", rows=rows, cols=cols, classes=cls,
                          present=present)
        lines.append(f"z{k:02d}.png,{z}")
    (tmp_path / "zstack.csv").write_text("\n".join(lines) + "\n")
    code = main(["evaluate", "zstack", str(tmp_path / "zstack.csv"), "--tiles",
                 str(tmp_path / "scans"), "--out", str(tmp_path / "out")])
    assert code == 0
    res = json.loads((tmp_path / "out" / "zstack.json").read_text())
    assert res["z_min_um"] == pytest.approx(z0)
    assert res["n_windows"] == rows * cols - len(z_levels)
    assert res["sides"]["below"]["spearman"] > 0.95
    assert res["sides"]["above"]["spearman"] > 0.95
    assert res["levels"] == len(z_levels)
    assert (tmp_path / "out" / "zstack.png").is_file()
    assert "mean class" in capsys.readouterr().out


def test_zstack_analysis_on_a_perfect_v() -> None:
    z = np.array([1.2, -0.8, 0.0, 0.4, -0.4, 0.8])  # unsorted on purpose
    classes = np.tile(np.round(10 * np.abs(z)), (5, 1))
    res = ev.zstack_analysis(z, classes)
    assert res["z_min_um"] == 0.0
    assert res["z_um"].tolist() == sorted(z.tolist())
    assert res["sides"]["below"]["spearman"] == pytest.approx(1.0)
    assert res["sides"]["above"]["spearman"] == pytest.approx(1.0)
    assert res["window_z_min_um"]["share_at_z_min"] == 1.0


# --- detector ----------------------------------------------------------------------------------


def _simulated_scores(path: Path, rng: np.random.Generator) -> dict[int, float]:
    """Binormal detector scores whose separation d falls with the OOF bucket."""
    d_by_bucket = {0: 2.0, 1: 1.6, 2: 1.2, 3: 0.8, 4: 0.3}
    lines = ["slide,score,tumor,oof_class"]
    for slide in range(30):
        for _ in range(150):
            b = int(rng.integers(0, 5))
            lo, hi = metrics.OOF_BUCKETS[b]
            y = int(rng.random() < 0.4)
            s = rng.normal() + d_by_bucket[b] * y
            lines.append(f"s{slide},{s:.5f},{y},{int(rng.integers(lo, hi + 1))}")
    path.write_text("\n".join(lines) + "\n")
    return {b: float(stats.norm.cdf(d / math.sqrt(2))) for b, d in d_by_bucket.items()}


def test_detector_buckets_have_intervals_covering_the_truth(tmp_path: Path) -> None:
    truth = _simulated_scores(tmp_path / "scores.csv", np.random.default_rng(2))
    res = ev.evaluate_detector(tmp_path / "out", scores=tmp_path / "scores.csv", n_boot=200)
    buckets = res["experiment1"]["buckets"]
    assert [b["bucket"] for b in buckets] == ["0-4", "5-9", "10-14", "15-19", "20-29"]
    covered = 0
    for b, true_auc in zip(buckets, truth.values()):
        covered += b["ci_low"] <= true_auc <= b["ci_high"]
        assert b["auc"] == pytest.approx(true_auc, abs=0.04)
        assert b["ci_high"] - b["ci_low"] < 0.12
        assert b["n_slides"] == 30
    assert covered >= 4  # 95 % intervals: one miss in five is within chance
    aucs = [b["auc"] for b in buckets]
    assert aucs == sorted(aucs, reverse=True)
    assert (tmp_path / "out" / "detector.png").is_file()


def test_detector_oof_classes_joined_from_tiles(tmp_path: Path) -> None:
    classes = np.arange(12).reshape(3, 4) * 2
    write_scan_output(tmp_path / "scans" / "slideA", rows=3, cols=4, classes=classes,
                      origin=(0.0, 0.0))
    lines = ["slide,x_px,y_px,score,label"]
    for r in range(3):
        for c in range(4):
            lines.append(f"slideA,{c * 128},{r * 128},{r + c},{int(r + c > 2)}")
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    table = ev.read_detector_scores(tmp_path / "s.csv", tiles=tmp_path / "scans")
    assert table.oof_class.tolist() == classes.ravel().tolist()
    with pytest.raises(ConfigError, match="give --tiles"):
        ev.read_detector_scores(tmp_path / "s.csv")
    (tmp_path / "t.csv").write_text("slide,x_px,y_px,score,label\nslideA,5,5,1,1\n")
    with pytest.raises(ConfigError, match="no graded window at x_px=5"):
        ev.read_detector_scores(tmp_path / "t.csv", tiles=tmp_path / "scans")


def test_detector_blur_sweep_with_the_example(tmp_path: Path) -> None:
    from convfocus.evaluation.detector_data import make_detector_example

    ex = make_detector_example(tmp_path / "data", n_slides=3, windows_per_slide=10,
                               blur_windows_per_slide=8)
    res = ev.evaluate_detector(
        tmp_path / "out", scores=ex.scores_csv, windows=ex.windows_npz,
        detector="convfocus.evaluation.detector:score_windows", classes=[0, 10, 27], n_boot=50,
    )
    sweep = res["experiment2"]["by_class"]
    assert [r["class"] for r in sweep] == [0, 10, 27]
    assert sweep[0]["auc"] > 0.8
    assert sweep[2]["auc"] < sweep[0]["auc"] - 0.2
    assert res["experiment2"]["n_windows"] == 24
    assert "demonstration" not in (tmp_path / "out" / "detector.md").read_text()


def test_detector_entry_point_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="module:function"):
        ev.load_detector("no_colon_here")
    with pytest.raises(ConfigError, match="cannot import"):
        ev.load_detector("convfocus_no_such_module:f")
    with pytest.raises(ConfigError, match="no function"):
        ev.load_detector("convfocus.evaluation.detector:nope")
    images = np.zeros((4, 139, 139, 3), np.uint8)
    with pytest.raises(ConfigError, match="one finite score per window"):
        ev.auc_vs_blur(lambda b: np.zeros(1), images, np.array([0, 1, 0, 1]),
                       np.array(["a"] * 4), classes=[0], n_boot=5)
    with pytest.raises(ConfigError, match="--scores"):
        ev.evaluate_detector(tmp_path)


# --- public benchmarks -------------------------------------------------------------------------


class SharpnessGrader:
    """Grades windows by lost high-frequency energy (more blur -> higher class)."""

    spec = ModelSpec(name="sharpness", version="0", arch="paper")

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        e = OracleGrader.energy(windows)
        k = np.clip(np.round(3.0 * (8.5 - e)), 0, 29).astype(int)
        return np.eye(30, dtype=np.float32)[k]


_slide_io = importlib.util.find_spec("convfocus.io.slide") is not None


@pytest.mark.skipif(not _slide_io, reason="convfocus.io.slide (image reading/writing) not present")
def test_focuspath_standin(tmp_path: Path, capsys) -> None:
    from convfocus.evaluation.benchmarks import make_focuspath_standin

    data = make_focuspath_standin(tmp_path / "fp", n_slides=3, positions=1,
                                  z_levels=(-3, -2, -1, 0, 1, 2, 3), size=300)
    next(data.images.iterdir()).unlink()  # one missing image is skipped and counted
    res = ev.evaluate_benchmark("focuspath", data.list_path, data.images, tmp_path / "out",
                                grader=SharpnessGrader(), n_folds=10, infocus_max_abs_z=1)
    assert res["n_missing"] == 1 and res["n_graded"] == 20
    for name in ("mean", "max"):
        r = res["results"][name]
        assert r["srcc"] > 0.8 and r["plcc"] > 0.7
        assert len(r["folds"]) == 3  # 3 slides: at most 3 folds
        assert r["roc_auc"] > 0.8
        assert 0 < r["pr_auc"] <= 1
    md = (tmp_path / "out" / "benchmark-focuspath.md").read_text()
    assert "0.929" in md and "0.877" in md and "|z| <= 1" in md
    assert (tmp_path / "out" / "benchmark-focuspath.png").is_file()


@pytest.mark.skipif(not _slide_io, reason="convfocus.io.slide (image reading/writing) not present")
def test_tcga_focus_standin(tmp_path: Path) -> None:
    from convfocus.evaluation.benchmarks import make_tcga_focus_standin

    data = make_tcga_focus_standin(tmp_path / "tf", n_slides=2, patches_per_label=3, size=300)
    res = ev.evaluate_benchmark("tcga-focus", data.list_path, data.images, tmp_path / "out",
                                grader=SharpnessGrader())
    assert res["n_graded"] == 12
    assert res["results"]["mean"]["roc_auc"] > 0.9
    assert res["results"]["max"]["pr_auc"] > 0.8
    md = (tmp_path / "out" / "benchmark-tcga-focus.md").read_text()
    assert "0.939" in md and "0.931" in md
    with pytest.raises(ConfigError, match="none of the 12 listed images"):
        ev.evaluate_benchmark("tcga-focus", data.list_path, tmp_path, tmp_path / "o2",
                              grader=SharpnessGrader())


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_the_published_list_samples_parse() -> None:
    fp = ev.read_benchmark_list("focuspath", SHARED / "benchmark-lists/focuspath-sample.txt")
    tf = ev.read_benchmark_list("tcga-focus", SHARED / "benchmark-lists/tcga-at-focus-sample.txt")
    assert len(fp) == 40 and fp[0]["file"].endswith(".tif") and fp[0]["z_level"] == "-7"
    assert len(tf) == 40 and {r["label"] for r in tf} == {"0", "1"}


def test_benchmark_list_errors(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a.tif,1,0,1,2\n")
    with pytest.raises(ConfigError, match="5 fields"):
        ev.read_benchmark_list("focuspath", tmp_path / "l.txt")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        ev.read_benchmark_list("imagenet", tmp_path / "l.txt")


def test_patch_windows_centres_the_grid() -> None:
    img = np.arange(1024 * 1024 * 3, dtype=np.uint32).reshape(1024, 1024, 3).astype(np.uint8)
    wins = ev.patch_windows(img)
    assert wins.shape == (49, 139, 139, 3)  # 7 x 7 windows at stride 128
    off = (1024 - (139 + 6 * 128)) // 2
    assert np.array_equal(wins[0], img[off : off + 139, off : off + 139])


# --- ablation ----------------------------------------------------------------------------------


def test_ablation_table_is_shaped_like_table_2(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    rng = np.random.default_rng(4)
    lines = ["slide,annotations,test_set"]
    for stem, ts in (("a", "AT2"), ("b", "S360")):
        graded_slide(tmp_path, stem, rng, tiles_root=root / "config4")
        graded_slide(tmp_path, stem, rng, shuffle=True, tiles_root=root / "config1")
        lines.append(f"{stem}.svs,{stem}.geojson,{ts}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    code = main(["evaluate", "ablation", str(tmp_path / "m.csv"), "--tiles-root", str(root),
                 "--out", str(tmp_path / "out"), "--per-grade", "300"])
    assert code == 0
    res = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert res["configs"]["config4"]["AT2"]["spearman"] > 0.95
    assert abs(res["configs"]["config1"]["S360"]["spearman"]) < 0.15
    assert res["configs"]["config2"] is None
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| # | description | blur | Spearman AT2 | Spearman S360 | slope AT2 |" in md
    assert "0.808" in md and "-2.945" in md  # the paper's table beside ours
    assert "Table 2" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown configuration"):
        ev.evaluate_ablation(tmp_path / "m.csv", tmp_path / "o", models={"config9": "x"})
