"""Reading a scanned slide's output folder back: the grid and the graded windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.io.scanout import find_scan_output, read_scan_output
from evaluation_helpers import write_scan_output


def test_grid_and_graded_windows_are_read(tmp_path: Path) -> None:
    classes = np.arange(12).reshape(3, 4)
    present = np.ones((3, 4), bool)
    present[1, 2] = False  # no tissue there: no row in tiles.csv
    write_scan_output(tmp_path / "s", rows=3, cols=4, classes=classes, origin=(16.0, 24.0),
                      present=present, dimensions=(700, 500))
    out = read_scan_output(tmp_path / "s")
    assert (out.grid.rows, out.grid.cols) == (3, 4)
    assert out.dimensions == (700, 500) and out.mpp == 0.25
    assert out.summary["scanner"] == "fixture"
    assert out.oof_class.tolist() == classes[present].tolist()
    assert out.row.dtype == np.int64 and out.row.size == 11
    box = out.grid.boxes(np.array([2]), np.array([3]))[0]
    assert box.tolist() == [16.0 + 3 * 128, 24.0 + 2 * 128, 16.0 + 3 * 128 + 139,
                            24.0 + 2 * 128 + 139]


def test_broken_outputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no readable summary.json"):
        read_scan_output(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"grid": {"rows": 2}}))
    with pytest.raises(ConfigError, match="no valid grid"):
        read_scan_output(tmp_path)
    write_scan_output(tmp_path / "s", rows=2, cols=2, classes=np.zeros((2, 2)))
    tiles = tmp_path / "s" / "tiles.csv"
    tiles.write_text(tiles.read_text().replace("oof_class", "class", 1))
    with pytest.raises(ConfigError, match="lacks column"):
        read_scan_output(tmp_path / "s")


def test_scan_output_found_by_slide_stem(tmp_path: Path) -> None:
    write_scan_output(tmp_path / "ln-01", rows=1, cols=1, classes=np.zeros((1, 1)))
    assert find_scan_output(tmp_path, "slides/ln-01.svs") == tmp_path / "ln-01"
    with pytest.raises(ConfigError, match="no scan output for ln-02.svs"):
        find_scan_output(tmp_path, "ln-02.svs")
