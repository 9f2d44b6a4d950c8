"""``evaluate benchmark``: FocusPath and TCGA@Focus lists on generated stand-ins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.evaluation.benchmarks import evaluate_benchmark, patch_windows, read_benchmark_list
from evaluation_helpers import SHARED, SharpnessGrader

_slide_io = importlib.util.find_spec("convfocus.io.images") is not None


@pytest.mark.skipif(not _slide_io, reason="convfocus.io.images (image reading/writing) not present")
def test_focuspath_standin(tmp_path: Path, capsys) -> None:
    from convfocus.evaluation.benchmark_data import make_focuspath_standin

    data = make_focuspath_standin(tmp_path / "fp", n_slides=3, positions=1,
                                  z_levels=(-3, -2, -1, 0, 1, 2, 3), size=300)
    next(data.images.iterdir()).unlink()  # one missing image is skipped and counted
    res = evaluate_benchmark("focuspath", data.list_path, data.images, tmp_path / "out",
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


@pytest.mark.skipif(not _slide_io, reason="convfocus.io.images (image reading/writing) not present")
def test_tcga_focus_standin(tmp_path: Path) -> None:
    from convfocus.evaluation.benchmark_data import make_tcga_focus_standin

    data = make_tcga_focus_standin(tmp_path / "tf", n_slides=2, patches_per_label=3, size=300)
    res = evaluate_benchmark("tcga-focus", data.list_path, data.images, tmp_path / "out",
                                grader=SharpnessGrader())
    assert res["n_graded"] == 12
    assert res["results"]["mean"]["roc_auc"] > 0.9
    assert res["results"]["max"]["pr_auc"] > 0.8
    md = (tmp_path / "out" / "benchmark-tcga-focus.md").read_text()
    assert "0.939" in md and "0.931" in md
    with pytest.raises(ConfigError, match="none of the 12 listed images"):
        evaluate_benchmark("tcga-focus", data.list_path, tmp_path, tmp_path / "o2",
                              grader=SharpnessGrader())


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_the_published_list_samples_parse() -> None:
    fp = read_benchmark_list("focuspath", SHARED / "benchmark-lists/focuspath-sample.txt")
    tf = read_benchmark_list("tcga-focus", SHARED / "benchmark-lists/tcga-at-focus-sample.txt")
    assert len(fp) == 40 and fp[0]["file"].endswith(".tif") and fp[0]["z_level"] == "-7"
    assert len(tf) == 40 and {r["label"] for r in tf} == {"0", "1"}


def test_benchmark_list_errors(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a.tif,1,0,1,2\n")
    with pytest.raises(ConfigError, match="5 fields"):
        read_benchmark_list("focuspath", tmp_path / "l.txt")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        read_benchmark_list("imagenet", tmp_path / "l.txt")


def test_patch_windows_centres_the_grid() -> None:
    img = np.arange(1024 * 1024 * 3, dtype=np.uint32).reshape(1024, 1024, 3).astype(np.uint8)
    wins = patch_windows(img)
    assert wins.shape == (49, 139, 139, 3)  # 7 x 7 windows at stride 128
    off = (1024 - (139 + 6 * 128)) // 2
    assert np.array_equal(wins[0], img[off : off + 139, off : off + 139])
