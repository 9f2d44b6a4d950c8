"""The output files of one graded slide, written from its SlideResult."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from convfocus.grading.outputs import (
    OUTPUT_FILES,
    TILES_HEADER,
    probability_texts,
    tiles_rows,
    write_outputs,
)
from convfocus.grading.result import SlideInfo, SlideResult
from convfocus.synthesis.defocus import class_centre_px
from convfocus.types import GridGeometry, ModelSpec


def _result(spec: ModelSpec, *, native: bool = False, mpp: float = 0.25) -> SlideResult:
    rng = np.random.default_rng(2)
    cm = rng.integers(0, 30, (5, 7)).astype(np.int16)
    cm[0, :3] = -1
    probs = np.zeros((5, 7, 30), np.float16)
    rr, cc = np.nonzero(cm >= 0)
    probs[rr, cc, cm[rr, cc]] = 1.0
    grid = GridGeometry((3.0, 5.0), 128.0, 139.0, 5, 7)
    return SlideResult(SlideInfo("/slides/s.tif", (7 * 128 + 20, 5 * 128 + 20), mpp), spec,
                       grid, cm, probs, np.full((40, 60, 3), 220, np.uint8), 15.0,
                       native=native)


@pytest.mark.parametrize("spacing", ["exponential", "linear"])
def test_blur_um_follows_the_models_class_spacing(spacing: str) -> None:
    # tiles.csv gave every model the exponential radii, linear-spacing models too
    spec = ModelSpec(name="t", version="1", arch="lite", spacing=spacing)
    rows = list(tiles_rows(_result(spec)))
    assert len(rows) == 35 - 3
    for row in rows:
        k, blur = int(row[4]), float(row[7])
        assert blur == round(class_centre_px(k, spacing=spacing) * 0.25, 3)
    if spacing == "linear":
        k = next(int(r[4]) for r in rows if int(r[4]) not in (0, 29))
        assert class_centre_px(k, spacing="linear") != pytest.approx(class_centre_px(k))


def test_blur_um_is_at_the_pixel_size_graded(tmp_path: Path) -> None:
    spec = ModelSpec(name="t", version="1", arch="lite")
    native = list(tiles_rows(_result(spec, native=True, mpp=0.5)))
    resampled = list(tiles_rows(_result(spec, mpp=0.5)))
    for a, b in zip(native, resampled, strict=True):
        assert float(a[7]) == round(class_centre_px(int(a[4])) * 0.5, 3)
        assert float(b[7]) == round(class_centre_px(int(b[4])) * 0.25, 3)


def test_every_output_is_written_from_the_result(tmp_path: Path) -> None:
    result = _result(ModelSpec(name="t", version="1", arch="lite"))
    write_outputs(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)
    assert np.array_equal(np.load(tmp_path / "classmap.npy"), result.classmap)
    assert np.load(tmp_path / "probs.npy").dtype == np.float16
    with open(tmp_path / "tiles.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == TILES_HEADER and rows[1:] == [[str(v) for v in r] for r in tiles_rows(result)]
    assert json.loads((tmp_path / "oof_regions.geojson").read_text()) == result.regions
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["grid"] == result.grid.to_dict() and s["verdict"] == result.verdict()


def test_probabilities_are_written_as_python_formats_them() -> None:
    """tiles.csv's probabilities come from a table of texts: the same text as
    ``f"{v:.4f}"`` for every value, rounding ties and values next to them included."""
    rng = np.random.default_rng(4)
    ties = np.array([k / 2**n for n in range(1, 16) for k in range(1, 2**n, max(1, 2**n // 7))])
    near = np.concatenate([np.arange(0, 10001) / 10000 + d for d in (-5e-5, 5e-5)])
    values = np.concatenate([rng.dirichlet(np.full(30, 0.3), 400).ravel(),
                             rng.random(6000) ** 6, ties, np.clip(near, 0, 1),
                             [0.0, 1.0, 0.5, 1e-300, 1 - 1e-16, 0.12345, 0.12355, 0.99995]])
    p = np.resize(values, (len(values) // 30 + 1) * 30).reshape(-1, 30)
    want = [",".join(f"{v:.4f}" for v in row) for row in p.tolist()]
    assert probability_texts(p) == want
    odd = np.array([[np.nan, -0.0, 0.25, np.inf, 1.5, -0.3]])
    with np.errstate(invalid="ignore"):
        assert probability_texts(odd) == [",".join(f"{v:.4f}" for v in odd[0].tolist())]
    assert probability_texts(p.astype(np.float16)) == [
        ",".join(f"{v:.4f}" for v in row) for row in p.astype(np.float16).astype(float).tolist()]
