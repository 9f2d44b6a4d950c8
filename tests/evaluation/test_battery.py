"""The validation battery (``convfocus check-model``) with the shipped grader on real tissue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convfocus.evaluation import battery as bt


@pytest.fixture(scope="module")
def grader():
    from convfocus.grading.infer import load_grader

    return load_grader()  # the shipped model: a missing model fails, never skips


@pytest.fixture(scope="module")
def ihc_source() -> bt.HeldOut:
    return bt.held_out_sources(None)[0]


def test_held_out_sources_are_never_training_sources():
    from convfocus.training.pool import CHECK_ONLY, DEFAULT_VALIDATION

    names = [s.name for s in bt.held_out_sources(None)]
    assert names == ["skimage-ihc.png"] and set(names) <= set(DEFAULT_VALIDATION)
    assert "histolab-very-low-nuclei-score-level0.png" in CHECK_ONLY


def test_orientation_is_checked_window_by_window(grader, ihc_source):
    res = bt.orientation(grader, [ihc_source])
    assert res["share_within_1"] >= 0.95 and res["pass"]
    # the same figures fail a stricter gate: the check can fail
    strict = bt.orientation(grader, [ihc_source], gates=bt.Gates(orientation_share=1.01))
    assert not strict["pass"]


class _ShiftedGrader:
    """The shipped grader with every class moved up by ``shift`` from its ``after``-th call
    on: graded source by source, the last source is read on a scale ``shift`` classes off."""

    def __init__(self, grader, shift: int, after: int) -> None:
        self.g, self.shift, self.after, self.spec = grader, shift, after, grader.spec
        self.calls = 0

    def predict_windows(self, w: np.ndarray) -> np.ndarray:
        p = self.g.predict_windows(w)
        self.calls += 1
        if self.calls > self.after:
            p = np.roll(p, self.shift, axis=1)
            p[:, : self.shift] = 0
        return p


def test_calibration_spread_sees_a_scale_that_moves_with_the_tissue(grader, ihc_source):
    twin = bt.HeldOut("twin", ihc_source.rgb)
    classes, gates = (0, 8, 12, 16), bt.Gates(calibration_classes=(8, 16))
    same = bt.calibration(grader, [ihc_source, twin], classes=classes, gates=gates)
    assert same["mean_spread"] == 0 and same["pass"]
    moved = bt.calibration(_ShiftedGrader(grader, 6, after=len(classes)), [ihc_source, twin],
                           classes=classes, gates=gates)
    assert moved["mean_spread"] == pytest.approx(0.8 * 6, abs=0.3)  # P90 - P10 of two
    assert not moved["pass"]


def test_real_zstack_draws_a_v_with_its_minimum_at_plane_zero(grader, shared_data: Path):
    res = bt.zstack(grader, shared_data / "real-zstack" / "smear")
    assert len(res["planes"]) == 19
    assert abs(res["plane_min"]) <= 1
    assert res["spearman"]["below"] >= 0.95 and res["spearman"]["above"] >= 0.95
    assert res["pass"]


@pytest.mark.slow
def test_check_model_exits_non_zero_exactly_when_a_required_check_fails(tmp_path: Path, capsys):
    from convfocus.cli import main

    out = tmp_path / "battery.json"
    # a reference model that is perfect on calibration and hopeless on synthetic data
    ref = {"model": {"name": "ref-model"}, "failed": [], "calibration": {"mean_spread": 0.0},
           "synthetic": {"exact": 0.0, "within1": 0.0, "within3": 0.0, "spearman": 0.0}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    code = main(["check-model", "--out", str(out), "--against", str(tmp_path / "ref.json")])
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert code == (1 if res["failed"] else 0)
    # --against: only the figures both share, each with its verdict
    assert "worse than ref-model on: calibration spread\n" in printed
    block = printed.split("against ref-model")[1].split("worse than ref-model")[0]
    assert "synthetic exact" in block and "calibration spread" in block
    assert "textureless" in block and "n/a" in block  # absent from the reference: no verdict
    assert set(res["failed"]) <= set(bt.REQUIRED)
    for name in res["failed"]:
        assert name in printed
    # figures every required check reports
    assert res["synthetic"]["n"] == 1200
    assert len(res["calibration"]["classes"]) == 30


def test_compare_sets_every_shared_figure_beside_the_reference():
    res = {"calibration": {"mean_spread": 2.0},
           "zstack": {"plane_min": -1, "spearman": {"below": 1.0, "above": 0.997}},
           "textureless": {"mean_class_at_model_mpp": 4.49, "mean_class_as_stored": 1.0},
           "real_oof": {"difference": 0.7}}
    assert {r[3] for r in bt.compare(res, res)} == {"same"}
    ref = {"calibration": {"mean_spread": 3.5},
           "zstack": {"plane_min": 0, "spearman": {"below": 0.997, "above": 1.0}},
           "textureless": {"mean_class_at_model_mpp": 1.9, "mean_class_as_stored": 3.98}}
    verdicts = {r[0]: r[3] for r in bt.compare(res, ref)}
    assert verdicts == {
        "calibration spread": "better",  # lower is better
        "z-stack, distance of the minimum from plane 0": "worse",
        "z-stack, Spearman below": "better", "z-stack, Spearman above": "worse",
        "textureless": "worse",  # the larger of its two readings: 4.49 against 3.98
        "TCGA@Focus difference": "n/a",  # absent from the reference
    }
    # a figure that is not a number is never "the same"
    nan = {**res, "zstack": {"plane_min": 0, "spearman": {"below": float("nan"), "above": 1.0}}}
    assert {r[0]: r[3] for r in bt.compare(nan, ref)}["z-stack, Spearman below"] == "worse"


def test_check_model_against_a_file_that_is_no_battery_says_so_in_one_line(tmp_path: Path,
                                                                            capsys):
    from convfocus.cli import main

    bad = tmp_path / "notes.json"
    for text in ('{"hello": 1}', '{"failed": []}', '{"failed": [], "calibration": {}}'):
        bad.write_text(text)
        code = main(["check-model", "--against", str(bad)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1, text
        assert str(bad) in err[0] and "not a battery result" in err[0]
        assert "Error" not in err[0] and "Traceback" not in err[0]


@pytest.mark.slow
def test_the_reports_sharp_floor_is_the_shipped_models(grader, shared_data: Path):
    """The coarse-slide note quotes ``report.SHARP_FLOOR``, measured with the shipped model:
    a new default must bring its own (``check-model``'s ``sharp_floor``)."""
    from convfocus.grading.report import SHARP_FLOOR

    rows = bt.sharp_floor(grader, bt.held_out_sources(shared_data))["ratios"]
    medians = [r["median"] for r in rows]
    assert medians == sorted(medians) and medians[-1] >= medians[0] + 8, rows
    table = dict(SHARP_FLOOR)
    for r in rows:
        assert abs(r["median"] - table[r["ratio"]]) <= 0.6, (r, table[r["ratio"]])
