"""The shared value types: the grid geometry and its one summary.json reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.types import GridGeometry

SUMMARY_GRID = {"l0_origin_px": [0, 0], "l0_stride_px": 64.12825651302605,
                "l0_window_px": 69.63927855711422, "rows": 46, "cols": 34}


def test_grid_round_trips_through_summary_json_unchanged() -> None:
    for d in (SUMMARY_GRID, {"l0_origin_px": [16, 24.5], "l0_stride_px": 128,
                             "l0_window_px": 139, "rows": 2, "cols": 3}):
        g = GridGeometry.from_dict(json.loads(json.dumps(d)))
        assert json.dumps(g.to_dict()) == json.dumps(d)  # whole numbers stay integers
        assert g.shape == (d["rows"], d["cols"])


def test_grid_cells_boxes_and_points_agree() -> None:
    g = GridGeometry((16.0, 24.0), 128.0, 139.0, 40, 40)
    rows, cols = np.array([0, 2, 39]), np.array([5, 3, 0])
    boxes = g.boxes(rows, cols)
    x, y = 16 + 3 * 128, 24 + 2 * 128
    assert boxes[1].tolist() == [x, y, x + 139, y + 139]
    assert [list(g.l0_xy(int(r), int(c))) for r, c in zip(rows, cols, strict=True)] == (
        boxes[:, :2].tolist())
    # a point belongs to the cell whose stride square holds it
    assert g.col_of(boxes[:, 0] + 127.9).tolist() == cols.tolist()
    assert g.row_of(boxes[:, 1]).tolist() == rows.tolist()
    assert g.col_of(np.array([15.0]))[0] == -1


@pytest.mark.parametrize("bad", [
    None, {}, {"rows": 2}, {**SUMMARY_GRID, "l0_stride_px": 0},
    {**SUMMARY_GRID, "l0_window_px": -1}, {**SUMMARY_GRID, "rows": -1},
    {**SUMMARY_GRID, "cols": 2.5}, {**SUMMARY_GRID, "l0_origin_px": [0]},
    {**SUMMARY_GRID, "l0_stride_px": "x"}, {**SUMMARY_GRID, "l0_origin_px": [float("nan"), 0]},
])
def test_malformed_or_implausible_grids_are_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="summary.json has no valid grid"):
        GridGeometry.from_dict(bad)


def test_grid_geometry_is_checked_when_built() -> None:
    with pytest.raises(ConfigError, match="> 0"):
        GridGeometry((0.0, 0.0), 0.0, 139.0, 1, 1)
