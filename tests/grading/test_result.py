"""The graded slide: a SlideResult is checked once, when it is made, and then trusted."""

from __future__ import annotations

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.grading.regions import oof_regions, verdict
from convfocus.grading.result import SlideInfo, SlideResult, check_classmap
from convfocus.types import GridGeometry, ModelSpec

SPEC = ModelSpec(name="convfocus-test", version="1", arch="lite")
GRID = GridGeometry((0.0, 0.0), 128.0, 139.0, 4, 6)
INFO = SlideInfo("/slides/a.svs", (6 * 128 + 11, 4 * 128 + 11), 0.25)


def _result(classmap: object = None, **kw: object) -> SlideResult:
    cm = np.full((4, 6), -1) if classmap is None else classmap
    cm_arr = np.asarray(cm)
    shape = cm_arr.shape if cm_arr.ndim == 2 else (4, 6)
    args: dict = {"slide": INFO, "spec": SPEC, "grid": GRID, "classmap": cm,
                  "probs": np.zeros((*shape, 30), np.float16),
                  "thumbnail": np.full((40, 60, 3), 230, np.uint8), "th_downsample": 13.0}
    args.update(kw)
    return SlideResult(**args)


@pytest.mark.parametrize("bad", [[[30]], [[-2]], [[0.5]], [1, 2, 3]])
def test_check_classmap_rejects_bad_values(bad: list) -> None:
    with pytest.raises(ValueError):
        check_classmap(np.array(bad))


@pytest.mark.parametrize("bad", [np.full((4, 6), 30), np.full((4, 6), 2.5), np.zeros(24, int),
                                 np.zeros((3, 6), int)])
def test_a_bad_class_map_never_makes_a_result(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        _result(bad)


def test_probabilities_thumbnail_and_profile_are_checked() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        _result(probs=np.zeros((4, 6, 29), np.float16))
    with pytest.raises(ValueError, match="thumbnail"):
        _result(thumbnail=np.zeros((40, 60), np.uint8))
    with pytest.raises(ConfigError, match="unknown profile"):
        _result(profile="dermatology")


def test_the_result_is_frozen_and_keeps_the_documented_dtypes() -> None:
    cm = np.zeros((4, 6), np.int64)
    cm[1, 2:5] = 22
    cm[0] = -1
    r = _result(cm, probs=np.zeros((4, 6, 30), np.float32))
    assert r.classmap.dtype == np.int16 and r.probs.dtype == np.float16
    with pytest.raises(ValueError):
        r.classmap[0, 0] = 5  # read-only
    cm[3, 3] = 1  # the caller's own array stays writable
    assert r.cells.tolist() == np.argwhere(r.classmap >= 0).tolist() and len(r.cells) == 18
    assert r.cell_mm2 == pytest.approx(0.032**2) and r.tissue_mm2 == pytest.approx(18 * 0.032**2)
    assert r.graded_mpp == SPEC.mpp
    assert r.verdict() == verdict(r.classmap, "histology", cell_mm2=r.cell_mm2)
    assert verdict(r.classmap, "ai")["verdict"] == "rescan"  # 3 of 18 cells at class 22
    assert r.verdict("ai")["verdict"] == "insufficient-tissue"  # but 0.018 mm² < 0.05 mm²
    assert r.regions is r.regions  # made once
    assert r.regions == oof_regions(r.classmap, GRID, mpp=0.25, l0_dimensions=INFO.dimensions)


def test_ink_area_and_share_come_from_the_thumbnail_masks() -> None:
    tissue = np.zeros((40, 60), bool)
    tissue[:10] = True  # 600 px
    ink = np.zeros((40, 60), bool)
    ink[20:25] = True  # 300 px
    r = _result(tissue_mask=tissue, ink_mask=ink)
    px_mm = 13.0 * 0.25 / 1000  # thumbnail pixel side
    assert r.ink_mm2 == pytest.approx(300 * px_mm**2) and r.ink_share == pytest.approx(1 / 3)
    assert not r.ink_mask.flags.writeable
    assert _result().ink_mm2 == 0.0 and _result().ink_share == 0.0  # masks not known
    v = r.verdict()
    assert v["verdict"] == "no-tissue" and "ink" in v["reasons"][0]
    with pytest.raises(ValueError, match="ink_mask"):
        _result(ink_mask=np.zeros((4, 6), bool))
