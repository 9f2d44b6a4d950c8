"""The output folder of one scanned slide, read back: ``OUT/<stem>/``.

:func:`read_scan_output` reads the window grid (``summary.json``) and the graded
windows (``tiles.csv``) that the evaluations need; :func:`find_scan_output` finds a
slide's folder under an output root. The folder's contents are listed in
docs/architecture.md ("Output folder of one scanned slide").
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus.errors import ConfigError
from convfocus.types import GridGeometry


@dataclass(frozen=True)
class ScanOutput:
    """The parts of one slide's scan output that the evaluations need."""

    folder: Path
    grid: GridGeometry
    dimensions: tuple[int, int] | None
    mpp: float | None
    summary: dict[str, Any]
    x_px: np.ndarray
    y_px: np.ndarray
    row: np.ndarray
    col: np.ndarray
    oof_class: np.ndarray


_TILE_COLUMNS = ("x_px", "y_px", "row", "col", "oof_class")


def read_scan_output(folder: str | Path) -> ScanOutput:
    """Read ``tiles.csv`` and ``summary.json`` of one scanned slide."""
    f = Path(folder)
    try:
        summary = json.loads((f / "summary.json").read_text())
    except OSError as exc:
        raise ConfigError(f"no readable summary.json: {exc.strerror or exc}", f) from None
    except ValueError as exc:
        raise ConfigError(f"summary.json is not JSON ({exc})", f / "summary.json") from None
    if not isinstance(summary, dict):
        raise ConfigError("summary.json is not an object", f / "summary.json")
    try:
        grid = GridGeometry.from_dict(summary.get("grid"))
    except ConfigError as exc:
        raise ConfigError(exc.message, f / "summary.json") from None
    dims = summary.get("dimensions")
    dimensions = (int(dims[0]), int(dims[1])) if dims else None
    mpp = summary.get("mpp")
    tiles = f / "tiles.csv"
    try:
        with open(tiles, newline="") as fh:
            header = next(csv.reader(fh), [])
    except OSError as exc:
        raise ConfigError(f"no readable tiles.csv: {exc.strerror or exc}", f) from None
    missing = [c for c in _TILE_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"tiles.csv lacks column(s) {', '.join(missing)}", tiles)
    cols = [header.index(c) for c in _TILE_COLUMNS]
    try:
        data = np.loadtxt(tiles, delimiter=",", skiprows=1, usecols=cols, ndmin=2)
    except ValueError as exc:
        raise ConfigError(f"tiles.csv is malformed ({exc})", tiles) from None
    data = data.reshape(-1, len(cols))
    return ScanOutput(
        folder=f, grid=grid, dimensions=dimensions,
        mpp=None if mpp is None else float(mpp), summary=summary,
        x_px=data[:, 0], y_px=data[:, 1], row=data[:, 2].astype(np.int64),
        col=data[:, 3].astype(np.int64), oof_class=data[:, 4].astype(np.int64),
    )


def find_scan_output(root: str | Path, slide: str | Path) -> Path:
    """The scan output folder of ``slide`` under ``root`` (``root/<stem>``)."""
    r, s = Path(root), Path(slide)
    names = [s.stem, s.name, s.name.split(".")[0]]
    for name in dict.fromkeys(names):
        if (r / name / "tiles.csv").is_file():
            return r / name
    raise ConfigError(f"no scan output for {s.name} (expected {r / s.stem}/tiles.csv)", r)
