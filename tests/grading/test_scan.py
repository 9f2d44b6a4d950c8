"""Scanning one slide end to end: the output folder, its files, the grid, resampling, and the
fully convolutional path against per-window grading. All with the untrained fixture model:
these tests check the plumbing, not the grades (see test_grading.py for those)."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convfocus import NUM_CLASSES
from convfocus.grading.outputs import OUTPUT_FILES, TILES_HEADER, tiles_rows
from convfocus.grading.scan import (
    ScanOptions,
    _blocks,
    grade_slide,
    is_complete,
    read_model_region,
    scan_path,
)
from convfocus.io.images import write_pyramidal_tiff
from convfocus.io.readers import open_slide
from convfocus.synthesis.defocus import class_centre_px

CMU = "slides/cmu-1-small-region.svs"  # Aperio, 2220 x 2967, 0.499 µm/px (20x), one level


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grader(fixture_model: Path):
    from convfocus.grading.infer import load_grader

    return load_grader(str(fixture_model))


@pytest.fixture(scope="module")
def cmu_path(shared_data: Path) -> Path:
    p = shared_data / CMU
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(scope="module")
def pyramid_out(pyramid_tiff: Path, grader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of the generated pyramidal slide (0.25 µm/px, graded as it is)."""
    return scan_path(pyramid_tiff, tmp_path_factory.mktemp("scan-pyramid"), grader=grader)


@pytest.fixture(scope="module")
def cmu_out(cmu_path: Path, grader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of the 20x Aperio slide, resampled to the model's 0.25 µm/px."""
    return scan_path(cmu_path, tmp_path_factory.mktemp("scan-cmu"), grader=grader)


@pytest.fixture(scope="module")
def cmu_native_out(cmu_path: Path, grader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same slide graded at its own pixel size (``--native``)."""
    opts = ScanOptions(native=True)
    return scan_path(cmu_path, tmp_path_factory.mktemp("scan-native"), options=opts,
                     grader=grader)


@pytest.fixture(params=["pyramid_out", "cmu_out"])
def scanned(request: pytest.FixtureRequest) -> Path:
    """Each scanned output folder in turn."""
    return request.getfixturevalue(request.param)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _tiles(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(folder / "tiles.csv", newline="") as fh:
        rd = csv.DictReader(fh)
        return list(rd.fieldnames or []), list(rd)


# --- the output folder -------------------------------------------------------------------------


def test_every_output_file_is_written(scanned: Path):
    assert sorted(p.name for p in scanned.iterdir()) == sorted(OUTPUT_FILES)
    assert all((scanned / f).stat().st_size > 0 for f in OUTPUT_FILES)
    assert is_complete(scanned)
    s = _summary(scanned)
    assert scanned.name == Path(s["input"]).stem
    leftovers = [p.name for p in scanned.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary or partial folders beside it


def test_tiles_csv_columns_classes_and_coordinates(scanned: Path):
    header, rows = _tiles(scanned)
    assert header == TILES_HEADER
    assert header[:8] == ["x_px", "y_px", "row", "col", "oof_class", "expected_class",
                          "confidence", "blur_um"]
    assert header[8:] == [f"p{i}" for i in range(NUM_CLASSES)]
    s = _summary(scanned)
    g = s["grid"]
    (x0, y0), stride, win = g["l0_origin_px"], g["l0_stride_px"], g["l0_window_px"]
    width, height = s["dimensions"]
    assert len(rows) == s["windows_graded"] > 0
    for r in rows:
        row, col, k = int(r["row"]), int(r["col"]), int(r["oof_class"])
        assert 0 <= k < NUM_CLASSES
        assert 0 <= row < g["rows"] and 0 <= col < g["cols"]
        x, y = int(r["x_px"]), int(r["y_px"])
        assert x == round(x0 + col * stride) and y == round(y0 + row * stride)
        assert 0 <= x and x + win <= width + 1 and 0 <= y and y + win <= height + 1
        p = np.array([float(r[f"p{i}"]) for i in range(NUM_CLASSES)])
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0, abs=2e-3)
        assert float(r["confidence"]) == pytest.approx(p.max(), abs=1e-3)
        assert float(r["expected_class"]) == pytest.approx(p @ np.arange(NUM_CLASSES), abs=0.05)
        assert 0 <= float(r["expected_class"]) <= NUM_CLASSES - 1
        blur = class_centre_px(k) * s["graded_mpp"]
        assert float(r["blur_um"]) == pytest.approx(blur, abs=1e-3)
    cells = [(int(r["row"]), int(r["col"])) for r in rows]
    assert cells == sorted(set(cells))  # one row per window, row-major


def test_classmap_matches_tiles_and_is_minus_one_off_tissue(scanned: Path):
    s = _summary(scanned)
    g = s["grid"]
    cm = np.load(scanned / "classmap.npy")
    probs = np.load(scanned / "probs.npy")
    assert cm.shape == (g["rows"], g["cols"]) and cm.dtype == np.int16
    assert probs.shape == (g["rows"], g["cols"], NUM_CLASSES) and probs.dtype == np.float16
    assert cm.min() >= -1 and cm.max() < NUM_CLASSES
    _, rows = _tiles(scanned)
    from_csv = np.full_like(cm, -1)
    for r in rows:
        from_csv[int(r["row"]), int(r["col"])] = int(r["oof_class"])
    np.testing.assert_array_equal(cm, from_csv)
    assert not probs[cm < 0].any()
    assert int((cm >= 0).sum()) == s["windows_graded"]


def test_windows_on_glass_are_not_graded(pyramid_out: Path, tissue_rgb: np.ndarray):
    """The generated slide is tissue inside a 256 px white margin: windows that lie wholly in
    the margin are -1, windows wholly inside the tissue are graded."""
    g = _summary(pyramid_out)["grid"]
    cm = np.load(pyramid_out / "classmap.npy")
    h, w = tissue_rgb.shape[:2]
    margin, stride, win = 256, g["l0_stride_px"], g["l0_window_px"]
    n_glass, in_tissue_graded = 0, []
    for row in range(g["rows"]):
        for col in range(g["cols"]):
            x, y = col * stride, row * stride
            on_glass = (x + win <= margin or y + win <= margin or x >= w - margin
                        or y >= h - margin)
            in_tissue = (x >= margin and y >= margin and x + win <= w - margin
                         and y + win <= h - margin)
            if on_glass:
                n_glass += 1
                assert cm[row, col] == -1, (row, col)
            if in_tissue:
                in_tissue_graded.append(cm[row, col] >= 0)
    assert n_glass > 0
    # the IHC image has a few pale areas (luma > 0.8) that are not tissue by the paper's rule
    assert len(in_tissue_graded) > 0 and np.mean(in_tissue_graded) > 0.9


def test_heatmap_png_has_a_legend_and_transparent_non_tissue(scanned: Path):
    import cv2

    cm = np.load(scanned / "classmap.npy")
    bgra = cv2.imread(str(scanned / "heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.ndim == 3 and bgra.shape[2] == 4
    assert (cm < 0).any()
    assert (bgra[..., 3] == 0).any()  # no tissue (and margins) transparent
    # the legend: a colour bar with the jet ends, class 0 dark blue and class 29 dark red
    opaque = bgra[bgra[..., 3] == 255][:, :3].astype(int)
    assert ((opaque[:, 0] > 100) & (opaque[:, 2] < 60)).any()  # blue
    assert ((opaque[:, 2] > 100) & (opaque[:, 0] < 60)).any()  # red


def test_classmap_png_is_rgba_with_transparent_non_tissue(scanned: Path):
    import cv2

    from convfocus.grading.heatmap import class_colors

    cm = np.load(scanned / "classmap.npy")
    bgra = cv2.imread(str(scanned / "classmap.png"), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.ndim == 3 and bgra.shape[2] == 4
    cell = bgra.shape[0] // cm.shape[0]
    assert cell >= 1 and bgra.shape[:2] == (cm.shape[0] * cell, cm.shape[1] * cell)
    centre = bgra[cell // 2 :: cell, cell // 2 :: cell]  # one pixel per cell
    alpha = centre[..., 3]
    assert (alpha[cm < 0] == 0).all()
    assert (alpha[cm >= 0] == 255).all()
    rgb = centre[..., 2::-1]
    np.testing.assert_array_equal(rgb[cm >= 0], class_colors()[cm[cm >= 0]])


def test_summary_json(scanned: Path):
    s = _summary(scanned)
    reader = open_slide(s["input"])
    try:
        assert s["dimensions"] == list(reader.dimensions)
        assert s["mpp"] == pytest.approx(reader.mpp)
    finally:
        reader.close()
    assert Path(s["input"]).is_file()
    assert s["model"]["name"] == "fixture" and s["model"]["version"] == "0"
    n = s["windows_graded"]
    assert n == int((np.load(scanned / "classmap.npy") >= 0).sum()) > 0
    cell_mm = s["grid"]["l0_stride_px"] * s["mpp"] / 1000
    assert s["tissue_area_mm2"] == pytest.approx(n * cell_mm**2, rel=1e-3)
    assert set(s["bucket_shares"]) == {"0-4", "5-9", "10-14", "15-19", "20-29"}
    assert sum(s["bucket_shares"].values()) == pytest.approx(1.0)
    assert s["pattern"]["pattern"] in {"none", "local", "regional", "global"}
    assert isinstance(s["pattern"]["scan_lanes"], bool)
    # the generated slide holds 0.09 mm² of tissue: too little for a histology verdict
    # (0.5 mm²), enough for ai's (0.05 mm²); the CMU slide 0.65 mm²
    on_focus = {"pass", "review", "rescan"}
    big = s["tissue_area_mm2"] >= 0.5
    assert s["verdict"]["verdict"] in (on_focus if big else {"insufficient-tissue"})
    assert s["verdicts"]["ai"] in on_focus
    assert s["verdict"]["profile"] == "histology"
    # the share shown is the one the verdict counts
    assert (s["oof_share"], s["oof_min_class"]) == (s["verdict"]["oof_share"], 15)
    assert s["runtime_s"] > 0
    assert s["native"] is False and s["graded_mpp"] == pytest.approx(0.25)


def test_summary_input_is_absolute_when_scanned_by_a_relative_path(
    tmp_path: Path, tissue_rgb: np.ndarray, grader, monkeypatch: pytest.MonkeyPatch
):
    # a relative input made the viewer lose the slide when started from another folder
    write_pyramidal_tiff(tmp_path / "slides" / "small.tif", tissue_rgb[:512, :640], mpp=0.25)
    monkeypatch.chdir(tmp_path)
    out = scan_path(Path("slides/../slides/small.tif"), Path("out"), grader=grader)
    stored = _summary(tmp_path / out)["input"]
    assert stored == str(tmp_path / "slides" / "small.tif")


def test_report_html_is_self_contained(scanned: Path):
    html = (scanned / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "data:image/png;base64," in html
    external = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert external == []
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"@import", html, re.IGNORECASE)


# --- pixel size: resampling, --native, --mpp ---------------------------------------------------


def test_20x_slide_is_resampled_to_the_model_pixel_size(cmu_out: Path):
    s = _summary(cmu_out)
    assert s["mpp"] == pytest.approx(0.499) and s["mpp_source"] == "metadata"
    assert s["native"] is False and s["graded_mpp"] == pytest.approx(0.25)
    g = s["grid"]
    assert g["l0_stride_px"] == pytest.approx(128 * 0.25 / 0.499)  # about 64 px
    assert g["l0_window_px"] == pytest.approx(139 * 0.25 / 0.499)
    assert 63 < g["l0_stride_px"] < 65
    _, rows = _tiles(cmu_out)
    x_of = {(int(r["row"]), int(r["col"])): int(r["x_px"]) for r in rows}
    steps = {x - x_of[(row, col - 1)] for (row, col), x in x_of.items() if (row, col - 1) in x_of}
    assert steps and steps <= {64, 65}  # neighbouring windows 64 l0 px apart


def test_native_grades_level_0_as_it_is(cmu_native_out: Path, cmu_out: Path):
    s = _summary(cmu_native_out)
    assert s["native"] is True and s["graded_mpp"] == pytest.approx(0.499)
    g = s["grid"]
    assert g["l0_stride_px"] == 128 and g["l0_window_px"] == 139
    _, rows = _tiles(cmu_native_out)
    assert all(int(r["x_px"]) % 128 == 0 and int(r["y_px"]) % 128 == 0 for r in rows)
    # a quarter of the windows of the resampled scan, give or take the edges
    ratio = s["windows_graded"] / _summary(cmu_out)["windows_graded"]
    assert 0.2 < ratio < 0.3
    assert "native" in (cmu_native_out / "report.html").read_text(encoding="utf-8").lower()


def test_mpp_option_overrides_the_metadata(tmp_path: Path, tissue_rgb: np.ndarray, grader):
    small = write_pyramidal_tiff(tmp_path / "small.tif", tissue_rgb[:768, :1024], mpp=0.25)
    out = scan_path(small, tmp_path / "out", options=ScanOptions(mpp=0.3), grader=grader)
    s = _summary(out)
    assert s["mpp"] == 0.3 and s["mpp_source"] == "--mpp"
    assert s["grid"]["l0_stride_px"] == pytest.approx(128 * 0.25 / 0.3)
    assert s["grid"]["l0_window_px"] == pytest.approx(139 * 0.25 / 0.3)
    cell_mm = 128 * 0.25 / 0.3 * 0.3 / 1000
    assert s["tissue_area_mm2"] == pytest.approx(s["windows_graded"] * cell_mm**2, rel=1e-3)


# --- fully convolutional grading ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["pyramid_out", "cmu_out"])
def test_region_grading_agrees_with_per_window_grading(which: str, request, grader):
    """The scan grades blocks of windows in one pass of the conv stack; grading each window
    alone (``predict_windows`` on windows cut from the same model-pixel region) must give the
    same class. The two differ slightly at window edges (the SAME padding of Conv2d_2b_3x3),
    and the untrained model's top two classes are often nearly tied: where they are within
    1 % (log-ratio < 0.01), the scan may pick either."""
    folder = request.getfixturevalue(which)
    s = _summary(folder)
    g = s["grid"]
    cm = np.load(folder / "classmap.npy")
    probs = np.load(folder / "probs.npy").astype(np.float32)
    (x0, y0), stride_l0 = g["l0_origin_px"], g["l0_stride_px"]
    win, stride = grader.spec.window_px, grader.spec.stride_px
    scale = s["mpp"] / grader.spec.mpp
    cells = np.argwhere(cm >= 0)
    ref = np.zeros(cm.shape + (NUM_CLASSES,), np.float32)
    reader = open_slide(s["input"])
    try:
        blocks = _blocks(cm >= 0, ScanOptions().block)  # the scan's graded cells
        for r0, c0, nr, nc in blocks[:: max(1, len(blocks) // 4)]:  # a few blocks suffice
            region = read_model_region(reader, x0 + c0 * stride_l0, y0 + r0 * stride_l0,
                                       nc * stride + win - stride, nr * stride + win - stride,
                                       scale)
            wins = np.stack([region[i * stride : i * stride + win, j * stride : j * stride + win]
                             for i in range(nr) for j in range(nc)])
            ref[r0 : r0 + nr, c0 : c0 + nc] = grader.predict_windows(wins).reshape(nr, nc, -1)
    finally:
        reader.close()
    cells = cells[ref[cells[:, 0], cells[:, 1]].sum(1) > 0]  # the windows of those blocks
    assert len(cells) >= 50
    p_ref = ref[cells[:, 0], cells[:, 1]]
    k_scan = cm[cells[:, 0], cells[:, 1]]
    same = p_ref.argmax(1) == k_scan
    tie = np.log(p_ref.max(1)) - np.log(p_ref[np.arange(len(k_scan)), k_scan]) < 0.01
    assert (same | tie).mean() >= 0.995, f"raw agreement {same.mean():.4f}"
    # the probabilities belong to the right cells: scan vs reference differ far less than
    # neighbouring windows differ from each other
    diff = np.abs(probs[cells[:, 0], cells[:, 1]] - p_ref).mean()
    done = ref.sum(-1) > 0
    neighbours = np.abs(ref[:, 1:] - ref[:, :-1])[done[:, 1:] & done[:, :-1]].mean()
    assert diff < 0.1 * neighbours


# --- determinism and settings ------------------------------------------------------------------


def test_rerun_gives_byte_identical_outputs(pyramid_out: Path, pyramid_tiff: Path, grader,
                                            tmp_path: Path):
    """Scanning again into the same output root replaces the folder with identical results."""
    root = tmp_path / "out"
    shutil.copytree(pyramid_out.parent, root)
    again = scan_path(pyramid_tiff, root, grader=grader)
    assert again == root / pyramid_out.name
    for name in ("tiles.csv", "classmap.npy", "probs.npy", "oof_regions.geojson"):
        assert (again / name).read_bytes() == (pyramid_out / name).read_bytes(), name
    assert sorted(p.name for p in root.iterdir()) == [pyramid_out.name]  # no leftovers


def test_window_and_stride_settings(pyramid_tiff: Path, grader):
    """``--window 139 --stride 139``: non-overlapping windows, graded one by one."""
    reader = open_slide(pyramid_tiff)
    try:
        g = grade_slide(reader, grader, ScanOptions(window_px=139, stride_px=139))
        width, height = reader.dimensions
        assert g.grid.l0_stride_px == 139 and g.grid.l0_window_px == 139
        assert (g.grid.rows, g.grid.cols) == ((height - 139) // 139 + 1, (width - 139) // 139 + 1)
        rows = list(tiles_rows(g))
        assert len(rows) == len(g.cells) > 0
        assert all(x % 139 == 0 and y % 139 == 0 for x, y, *_ in rows)
        # each class is the class of that window graded alone
        cells = g.cells[:: max(1, len(g.cells) // 12)]
        wins = np.stack([reader.read_region((int(c) * 139, int(r) * 139), 0, (139, 139))
                         for r, c in cells])
        k = grader.predict_windows(wins).argmax(1)
        np.testing.assert_array_equal(k, g.classmap[cells[:, 0], cells[:, 1]])
        # a larger window is resized to the model's 139 px and still gives one class per cell
        g2 = grade_slide(reader, grader, ScanOptions(window_px=256, stride_px=256))
        assert g2.grid.l0_window_px == 256 and len(g2.cells) > 0
        assert g2.classmap[g2.cells[:, 0], g2.cells[:, 1]].min() >= 0
    finally:
        reader.close()


def test_a_slide_one_window_wide_gives_one_window(tmp_path: Path, tissue_rgb: np.ndarray,
                                                  grader):
    path = write_pyramidal_tiff(tmp_path / "one.tif", tissue_rgb[600:739, 600:739].copy(),
                                mpp=0.25)
    reader = open_slide(path)
    try:
        g = grade_slide(reader, grader, ScanOptions())
    finally:
        reader.close()
    assert (g.grid.rows, g.grid.cols) == (1, 1) and len(g.cells) == 1
    assert 0 <= g.classmap[0, 0] < NUM_CLASSES


@pytest.mark.parametrize("block", [1, 2, 8, 16])
def test_regions_cover_each_graded_cell_once_and_hug_the_tissue(block: int):
    """Regions: every graded cell in exactly one, at most block² cells each, and each region's
    outer rows and columns hold a graded cell (no pass over bare glass at the edges)."""
    rng = np.random.default_rng(block)
    for _ in range(20):
        rows, cols = (int(v) for v in rng.integers(1, 70, 2))
        graded = rng.random((rows, cols)) < rng.uniform(0.05, 0.9)
        graded[: rng.integers(0, rows)] = False  # glass above the tissue
        blocks = _blocks(graded, block)
        count = np.zeros((rows, cols), int)
        for r0, c0, nr, nc in blocks:
            assert nr * nc <= max(1, block * block) and r0 + nr <= rows and c0 + nc <= cols
            sub = graded[r0 : r0 + nr, c0 : c0 + nc]
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
            count[r0 : r0 + nr, c0 : c0 + nc] += 1
        assert (count[graded] == 1).all()
        assert count.max(initial=0) <= 1


_KEPT = """
import os, sys
import numpy as np
from convfocus.grading.scan import reuse_freed_memory
if sys.argv[1] == "set":
    reuse_freed_memory()
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
a = np.ones(24 << 17)  # 24 MB, as large as a region's model input
before = rss()
del a
print(before - rss())
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"),
                    reason="the allocator's thresholds are glibc's")
def test_a_scan_keeps_the_buffers_it_frees(tmp_path: Path):
    """``reuse_freed_memory`` (every scan): a freed region-sized buffer stays with the
    process for the next region instead of going back to the system (and coming back as
    fresh pages); left alone without it, and where the environment sets the allocator."""
    # a Dask nanny started in this process sets MALLOC_TRIM_THRESHOLD_ for its workers
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def returned_mb(mode: str, **env: str) -> float:
        out = subprocess.run([sys.executable, "-c", _KEPT, mode], capture_output=True,
                             text=True, check=True, env={**base, **env})
        return float(out.stdout)

    assert returned_mb("unset") > 20  # glibc's default: given back at once
    assert returned_mb("set") < 4
    assert returned_mb("set", MALLOC_TRIM_THRESHOLD_="131072") > 20
    assert returned_mb("set", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072") > 20
