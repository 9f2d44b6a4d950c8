"""Builders shared by the evaluation tests: scan outputs, GeoJSON annotations, graded
slides with known truth, and graders that need no trained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from convfocus.evaluation.annotations import read_grade_annotations, window_grades
from convfocus.types import GridGeometry, ModelSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRUE_SLOPE = 29.0 / 6.0
GRADES = np.arange(13) / 2.0


def write_scan_output(
    folder: Path, *, rows: int, cols: int, classes: np.ndarray, origin=(16.0, 24.0),
    stride: float = 128.0, window: float = 139.0, dimensions=(3200, 3200), present=None,
) -> None:
    """A minimal scan output: summary.json with the grid and tiles.csv (graded cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"grid": {"l0_origin_px": list(origin), "l0_stride_px": stride,
                        "l0_window_px": window, "rows": rows, "cols": cols},
               "dimensions": list(dimensions), "mpp": 0.25, "scanner": "fixture"}
    (folder / "summary.json").write_text(json.dumps(summary))
    header = ["x_px", "y_px", "row", "col", "oof_class", "expected_class", "confidence",
              "blur_um", *(f"p{i}" for i in range(30))]
    with open(folder / "tiles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in range(rows):
            for c in range(cols):
                if present is not None and not present[r, c]:
                    continue
                k = int(classes[r, c])
                probs = np.eye(30)[k]
                w.writerow([round(origin[0] + c * stride), round(origin[1] + r * stride), r, c, k,
                            k, 1.0, 0.0, *probs])


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(coords: Any, props: dict[str, Any], kind: str = "Polygon") -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": props}


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def graded_slide(
    tmp: Path, stem: str, rng: np.random.Generator, *, noise: float = 1.5, shuffle: bool = False,
    slope: float = TRUE_SLOPE, tiles_root: Path | None = None,
) -> Path:
    """A slide whose 13 graded regions (one per grade, some non-convex, one with a hole)
    carry classes ``slope * grade + noise``; writes scans + annotations, returns the GeoJSON."""
    rows = cols = 40
    origin, stride, side = (16.0, 24.0), 128.0, 900
    feats = []
    for k, g in enumerate(GRADES):
        sx, sy = (k % 5) * 1000 + 8, (k // 5) * 1000 + 8
        if k % 4 == 1:  # L-shaped (non-convex)
            h = side // 2
            ring = [[sx, sy], [sx + side, sy], [sx + side, sy + h], [sx + h, sy + h],
                    [sx + h, sy + side], [sx, sy + side], [sx, sy]]
            coords: Any = [ring]
        elif k % 4 == 2:  # with a hole
            coords = [rect(sx, sy, sx + side, sy + side),
                      rect(sx + 300, sy + 300, sx + 600, sy + 600)]
        else:
            coords = [rect(sx, sy, sx + side, sy + side)]
        props: dict[str, Any] = {"grade": float(g)}
        if k % 3 == 0:  # QuPath style: grade as the classification name
            props = {"classification": {"name": f"Grade {g:g}", "color": [0, 0, 255]}}
        feats.append(feature(coords, props))
    path = write_geojson(tmp / f"{stem}.geojson", feats)
    regions = read_grade_annotations(path, dimensions=(5200, 5200))
    r_idx, c_idx = np.divmod(np.arange(rows * cols), cols)
    grid = GridGeometry(origin, stride, 139.0, rows, cols)
    grades, _ = window_grades(regions, grid.boxes(r_idx, c_idx))
    grade_map = grades.reshape(rows, cols)
    classes = rng.integers(0, 30, (rows, cols)).astype(float)  # outside regions: anything
    inside = np.isfinite(grade_map)
    classes[inside] = slope * grade_map[inside] + rng.normal(0, noise, inside.sum())
    classes = np.clip(np.round(classes), 0, 29)
    if shuffle:
        classes[inside] = rng.permutation(classes[inside])
    write_scan_output((tiles_root or tmp / "scans") / stem, rows=rows, cols=cols,
                      classes=classes, origin=origin, stride=stride, dimensions=(5200, 5200))
    return path


def graded_manifest(tmp: Path, seed: int = 0, **kw: Any) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["slide,annotations,test_set"]
    for stem, test_set in (("at2-a", "AT2"), ("at2-b", "AT2"), ("s360-a", "S360")):
        graded_slide(tmp, stem, rng, **kw)
        lines.append(f"slides/{stem}.svs,{stem}.geojson,{test_set}")
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp / "manifest.csv"


class OracleGrader:
    """Grades a window by its high-frequency energy, calibrated on known bokeh classes."""

    def __init__(self, calibration: np.ndarray) -> None:
        self.spec = ModelSpec(name="oracle", version="0", arch="paper")
        self.calibration = calibration  # log energy per class, decreasing

    @staticmethod
    def energy(windows: np.ndarray) -> np.ndarray:
        g = windows.astype(np.float32).mean(axis=-1)
        lap = g[:, 1:-1, 1:-1] * 4 - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] \
            - g[:, 1:-1, 2:]
        return np.log(lap.var(axis=(1, 2)) + 1e-3)

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        e = self.energy(windows)
        k = np.abs(e[:, None] - self.calibration[None, :]).argmin(axis=1)
        return np.eye(30, dtype=np.float32)[k]

    def predict_region(self, region: np.ndarray) -> np.ndarray:
        nr, nc = (region.shape[0] - 11) // 128, (region.shape[1] - 11) // 128
        wins = np.stack([region[r * 128 : r * 128 + 139, c * 128 : c * 128 + 139]
                         for r in range(nr) for c in range(nc)])
        return self.predict_windows(wins).reshape(nr, nc, 30)


class SharpnessGrader:
    """Grades windows by lost high-frequency energy (more blur -> higher class)."""

    spec = ModelSpec(name="sharpness", version="0", arch="paper")

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        e = OracleGrader.energy(windows)
        k = np.clip(np.round(3.0 * (8.5 - e)), 0, 29).astype(int)
        return np.eye(30, dtype=np.float32)[k]
