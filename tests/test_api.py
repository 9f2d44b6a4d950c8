"""The Python interface (convfocus.api): a slide graded through it is what `convfocus scan`
writes, on real tissue (scikit-image's immunohistochemistry image as a PNG)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convfocus
from convfocus.cli import main

MPP = 0.35  # the IHC image's pixel size, estimated from nuclear size (demo.IHC_MPP)
RUNTIME_FIELDS = ("runtime_s", "created_utc")


@pytest.fixture(scope="module")
def ihc_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    from convfocus.io.images import write_png

    return write_png(tmp_path_factory.mktemp("api") / "ihc.png", data.immunohistochemistry())


@pytest.fixture(scope="module")
def grader() -> convfocus.Grader:
    return convfocus.load_grader()  # the shipped model, as `convfocus scan` uses


@pytest.fixture(scope="module")
def result(ihc_png: Path, grader: convfocus.Grader) -> convfocus.SlideResult:
    with convfocus.open_slide(ihc_png, mpp=MPP) as slide:
        return convfocus.grade_slide(slide, grader)


@pytest.fixture(scope="module")
def cli_out(ihc_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    assert main(["scan", str(ihc_png), "--out", str(out), "--mpp", str(MPP), "--quiet"]) == 0
    return out / "ihc"


def _summary(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in RUNTIME_FIELDS}


def test_import_convfocus_loads_no_runtime_until_the_api_is_used() -> None:
    code = (
        "import sys, convfocus\n"
        "heavy = ('convfocus.api', 'convfocus.grading.scan', 'onnxruntime', 'openslide', 'torch')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "convfocus.SlideResult, convfocus.grade_slide\n"
        "print('convfocus.api' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True False"
    assert "grade_slide" in dir(convfocus)
    with pytest.raises(AttributeError):
        convfocus.no_such_name  # noqa: B018


def test_the_result_is_what_the_cli_writes(result: convfocus.SlideResult, cli_out: Path) -> None:
    assert len(result.cells) >= 20  # real tissue, graded (5 x 5 windows)
    assert result.slide.mpp == MPP and result.slide.mpp_source == "--mpp"
    cm = np.load(cli_out / "classmap.npy")
    assert cm.dtype == np.int16 and np.array_equal(cm, result.classmap)
    assert np.array_equal(np.load(cli_out / "probs.npy"), result.probs)
    with open(cli_out / "tiles.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert rows == [[str(v) for v in r] for r in convfocus.tiles_rows(result)]
    assert json.loads((cli_out / "oof_regions.geojson").read_text()) == result.regions
    s = _summary(cli_out)
    assert s["grid"] == result.grid.to_dict()
    assert s["verdict"] == result.verdict() and s["windows_graded"] == len(result.cells)
    assert s["input"] == result.slide.path and Path(s["input"]).name == "ihc.png"
    assert s == _summary_of(result)


def _summary_of(result: convfocus.SlideResult) -> dict:
    s = convfocus.build_summary(result)
    return {k: v for k, v in s.items() if k not in RUNTIME_FIELDS}


def test_saved_outputs_are_the_cli_outputs(result: convfocus.SlideResult, cli_out: Path,
                                           tmp_path: Path) -> None:
    folder = convfocus.save_outputs(result, tmp_path / "ihc")
    names = sorted(p.name for p in cli_out.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == names
    for name in names:
        if name not in ("summary.json", "report.html"):
            assert (folder / name).read_bytes() == (cli_out / name).read_bytes(), name
    assert _summary(folder) == _summary(cli_out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ihc"]  # no temporary folder left


def test_each_output_alone(result: convfocus.SlideResult, cli_out: Path, tmp_path: Path) -> None:
    convfocus.write_tiles(result, tmp_path / "tiles.csv")
    convfocus.write_regions(result, tmp_path / "oof_regions.geojson")
    convfocus.write_arrays(result, tmp_path)
    for name in ("tiles.csv", "oof_regions.geojson", "classmap.npy", "probs.npy"):
        assert (tmp_path / name).read_bytes() == (cli_out / name).read_bytes(), name
    assert convfocus.heatmap_png(result) == (cli_out / "heatmap.png").read_bytes()
    assert convfocus.overlay_png(result) == (cli_out / "overlay.png").read_bytes()


def test_a_grader_grades_windows_and_more_blur_grades_higher(grader: convfocus.Grader) -> None:
    from skimage import data

    from convfocus.synthesis.defocus import apply_blur, class_centre_px
    from convfocus.training.pool import resample_to

    rgb = resample_to(data.immunohistochemistry(), MPP)  # to the model's 0.25 µm/px
    sharp = convfocus.tissue_windows(rgb)
    blurred = convfocus.tissue_windows(apply_blur(rgb, "bokeh", class_centre_px(16)))
    assert len(sharp) >= 20 and sharp.shape[1:] == (139, 139, 3)
    p = grader.predict_windows(sharp)
    assert p.shape == (len(sharp), 30) and np.allclose(p.sum(1), 1.0, atol=1e-3)
    k_sharp = p.argmax(1).mean()
    k_blurred = grader.predict_windows(blurred).argmax(1).mean()
    assert k_blurred > k_sharp + 4
    assert len(convfocus.cut_windows(rgb)) >= len(sharp)
