"""``evaluate ablation``: the presets as the paper's Table 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convfocus.cli import main
from convfocus.errors import ConfigError
from convfocus.evaluation.ablation import evaluate_ablation
from evaluation_helpers import graded_slide


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
        evaluate_ablation(tmp_path / "m.csv", tmp_path / "o", models={"config9": "x"})


def test_presets_without_outputs_are_trained_by_the_trainer_given(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Training is passed in (it needs torch); the evaluation itself never imports it."""
    from convfocus.evaluation import ablation

    (tmp_path / "runs" / "config4").mkdir(parents=True)
    graded: dict[str, dict] = {}

    def fake_grades(manifest, out, *, tiles=None, model=None, **kwargs):
        graded[Path(out).name] = {"tiles": tiles, "model": model}
        st = {"spearman": 0.5, "p_value": 0.01, "slope": 2.0, "intercept": 0.0}
        return {"test_sets": {"AT2": st}}

    monkeypatch.setattr(ablation, "evaluate_grades", fake_grades)
    with pytest.raises(ConfigError, match="config1 has no model or scan outputs"):
        evaluate_ablation(tmp_path / "m.csv", tmp_path / "o", tiles_root=tmp_path / "runs",
                          train_pool=tmp_path / "pool")
    calls = []

    def fake_train(preset: str, pool: Path, out: Path, *, steps: int | None,
                   device: str) -> Path:
        calls.append((preset, pool, out, steps, device))
        return out / "model"

    res = evaluate_ablation(tmp_path / "m.csv", tmp_path / "o", tiles_root=tmp_path / "runs",
                            models={"config5": "given/model"}, train_pool=tmp_path / "pool",
                            steps=7, train_preset=fake_train)
    assert [c[0] for c in calls] == ["config1", "config2", "config3"]
    assert calls[0][1:] == (tmp_path / "pool", tmp_path / "o" / "models" / "config1", 7, "cpu")
    assert graded["config4"] == {"tiles": tmp_path / "runs" / "config4", "model": None}
    assert graded["config2"]["model"] == tmp_path / "o" / "models" / "config2" / "model"
    assert res["configs"]["config5"]["source"] == {"model": "given/model"}
    assert res["settings"]["steps"] == 7
