"""``evaluate zstack``: the "V" of class vs z and its minimum."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convfocus.cli import main
from convfocus.evaluation.zstack import zstack_analysis
from evaluation_helpers import write_scan_output


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
    res = zstack_analysis(z, classes)
    assert res["z_min_um"] == 0.0
    assert res["z_um"].tolist() == sorted(z.tolist())
    assert res["sides"]["below"]["spearman"] == pytest.approx(1.0)
    assert res["sides"]["above"]["spearman"] == pytest.approx(1.0)
    assert res["window_z_min_um"]["share_at_z_min"] == 1.0
