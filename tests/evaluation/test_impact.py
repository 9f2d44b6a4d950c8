"""``evaluate detector``: AUC per OOF bucket and vs added blur, with known truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from convfocus.errors import ConfigError
from convfocus.evaluation.impact import (
    auc_vs_blur,
    evaluate_detector,
    load_detector,
    read_detector_scores,
)
from convfocus.types import OOF_BUCKETS
from evaluation_helpers import write_scan_output


def _simulated_scores(path: Path, rng: np.random.Generator) -> dict[int, float]:
    """Binormal detector scores whose separation d falls with the OOF bucket."""
    d_by_bucket = {0: 2.0, 1: 1.6, 2: 1.2, 3: 0.8, 4: 0.3}
    lines = ["slide,score,tumor,oof_class"]
    for slide in range(30):
        for _ in range(150):
            b = int(rng.integers(0, 5))
            lo, hi = OOF_BUCKETS[b]
            y = int(rng.random() < 0.4)
            s = rng.normal() + d_by_bucket[b] * y
            lines.append(f"s{slide},{s:.5f},{y},{int(rng.integers(lo, hi + 1))}")
    path.write_text("\n".join(lines) + "\n")
    return {b: float(stats.norm.cdf(d / math.sqrt(2))) for b, d in d_by_bucket.items()}


def test_detector_buckets_have_intervals_covering_the_truth(tmp_path: Path) -> None:
    truth = _simulated_scores(tmp_path / "scores.csv", np.random.default_rng(2))
    res = evaluate_detector(tmp_path / "out", scores=tmp_path / "scores.csv", n_boot=200)
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
    table = read_detector_scores(tmp_path / "s.csv", tiles=tmp_path / "scans")
    assert table.oof_class.tolist() == classes.ravel().tolist()
    with pytest.raises(ConfigError, match="give --tiles"):
        read_detector_scores(tmp_path / "s.csv")
    (tmp_path / "t.csv").write_text("slide,x_px,y_px,score,label\nslideA,5,5,1,1\n")
    with pytest.raises(ConfigError, match="no graded window at x_px=5"):
        read_detector_scores(tmp_path / "t.csv", tiles=tmp_path / "scans")


def test_detector_blur_sweep_with_the_example(tmp_path: Path) -> None:
    from convfocus.evaluation.detector_data import make_detector_example

    ex = make_detector_example(tmp_path / "data", n_slides=3, windows_per_slide=10,
                               blur_windows_per_slide=8)
    res = evaluate_detector(
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
        load_detector("no_colon_here")
    with pytest.raises(ConfigError, match="cannot import"):
        load_detector("convfocus_no_such_module:f")
    with pytest.raises(ConfigError, match="no function"):
        load_detector("convfocus.evaluation.detector:nope")
    images = np.zeros((4, 139, 139, 3), np.uint8)
    with pytest.raises(ConfigError, match="one finite score per window"):
        auc_vs_blur(lambda b: np.zeros(1), images, np.array([0, 1, 0, 1]),
                       np.array(["a"] * 4), classes=[0], n_boot=5)
    with pytest.raises(ConfigError, match="--scores"):
        evaluate_detector(tmp_path)
