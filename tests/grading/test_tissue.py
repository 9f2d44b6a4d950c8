"""Tissue mask: the paper's luma rule, cleaning options, real tissue and non-tissue images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convfocus.grading.tissue import luma, pen_mask, tissue_mask, window_tissue_fraction
from convfocus.io.images import read_image

RAW = {"min_object_px": 0, "fill_holes": False}  # the bare rule, no cleaning

TISSUE_FREE = [
    "histolab-almost-white-1.png",
    "histolab-almost-white-2.png",
    "histolab-no-tissue.png",
    "histolab-no-tissue2.png",
    "histolab-no-tissue-line.png",
]


def test_luma_weights() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    assert luma(rgb)[0] == pytest.approx([0.212, 0.715, 0.072, 0.999, 0.0], abs=1e-6)
    assert luma(rgb).dtype == np.float32


def test_luma_same_for_uint8_and_float(tissue_rgb: np.ndarray) -> None:
    patch = tissue_rgb[300:400, 300:400]
    assert np.allclose(luma(patch), luma(patch.astype(np.float64) / 255.0), atol=1e-6)


def test_rule_bounds() -> None:
    # gray v has Y = 0.999 v / 255: v = 204 -> 0.7993 (tissue), v = 205 -> 0.8032 (glass)
    gray = np.array([0, 1, 204, 205, 255], dtype=np.uint8)
    rgb = np.repeat(gray[None, :, None], 3, axis=2)
    assert tissue_mask(rgb, **RAW)[0].tolist() == [False, True, True, False, False]
    assert tissue_mask(rgb, y_max=0.9, **RAW)[0].tolist() == [False, True, True, True, False]


def test_small_objects_removed_and_small_holes_filled() -> None:
    rgb = np.full((60, 60, 3), 255, dtype=np.uint8)
    rgb[5:7, 5:7] = 100  # 4 px speck
    rgb[20:50, 20:50] = 100  # tissue block ...
    rgb[30:32, 30:32] = 255  # ... with a 4 px hole
    rgb[38:46, 38:46] = 255  # ... and a 64 px hole
    mask = tissue_mask(rgb)
    assert not mask[5:7, 5:7].any()
    assert mask[30:32, 30:32].all()
    assert not mask[38:46, 38:46].any()
    raw = tissue_mask(rgb, **RAW)
    assert raw[5:7, 5:7].all() and not raw[30:32, 30:32].any()
    assert tissue_mask(rgb, fill_holes=True)[38:46, 38:46].all()
    assert not tissue_mask(rgb, fill_holes=0)[30:32, 30:32].any()


def test_flip_commutes(tissue_rgb: np.ndarray) -> None:
    img = tissue_rgb[::4, ::4]
    assert np.array_equal(tissue_mask(img[::-1, ::-1]), tissue_mask(img)[::-1, ::-1])


def test_generated_slide_tissue_inside_margin(tissue_rgb: np.ndarray) -> None:
    mask = tissue_mask(tissue_rgb[::8, ::8])
    assert not mask[:30].any() and not mask[:, :30].any()  # 256 px white margin
    assert mask[32:160, 32:224].mean() > 0.5


@pytest.mark.parametrize("name", TISSUE_FREE)
def test_tissue_free_negatives_have_almost_no_tissue(shared_data: Path, name: str) -> None:
    mask = tissue_mask(read_image(shared_data / "negatives" / name))
    assert mask.mean() < 0.02


def test_infocus_images_have_tissue(shared_data: Path) -> None:
    fractions = [
        tissue_mask(read_image(p)).mean() for p in sorted((shared_data / "infocus").glob("*"))
    ]
    assert len(fractions) >= 20
    assert min(fractions) > 0.05
    assert np.median(fractions) > 0.5


def test_pen_ink_is_tissue_by_the_paper_rule_unless_excluded(shared_data: Path) -> None:
    ink = read_image(shared_data / "negatives" / "histolab-no-tissue-green-pen.png")
    assert tissue_mask(ink).mean() > 0.5  # the luma rule alone counts ink
    assert tissue_mask(ink, exclude_pen=True).mean() < 0.05
    inked_tissue = read_image(
        shared_data / "negatives" / "histolab-high-nuclei-score-red-pen-level1.png"
    )
    assert tissue_mask(inked_tissue, exclude_pen=True).mean() > 0.8


def test_pen_mask_spares_stained_tissue(tissue_rgb: np.ndarray) -> None:
    patch = tissue_rgb[256:1280, 256:1792:2]
    assert pen_mask(patch).mean() < 0.02


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(TypeError):
        luma(np.zeros((4, 4, 3), dtype=np.int32))


def test_window_tissue_fraction_is_the_share_of_tissue_pixels() -> None:
    rng = np.random.default_rng(4)
    mask = rng.random((90, 120)) < 0.4
    xs, ys = np.arange(0, 120 - 30 + 1, 13), np.arange(0, 90 - 30 + 1, 13)
    grid = window_tissue_fraction(mask, 1.0, xs[None, :], ys[:, None], 30)
    assert grid.shape == (ys.size, xs.size)
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            assert grid[r, c] == mask[y : y + 30, x : x + 30].mean()  # exactly
    # windows one by one give the same as the grid
    rr, cc = np.meshgrid(np.arange(ys.size), np.arange(xs.size), indexing="ij")
    one = window_tissue_fraction(mask, 1.0, xs[cc.ravel()], ys[rr.ravel()], 30)
    assert np.array_equal(one, grid.ravel())
    # a 0/255 uint8 mask (as OpenCV writes masks) counts nonzero as tissue, the same shares
    as_u8 = window_tissue_fraction(mask.astype(np.uint8) * 255, 1.0, xs[None, :], ys[:, None],
                                   30)
    assert np.array_equal(as_u8, grid)


def test_window_tissue_fraction_counts_partial_mask_pixels() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True  # level-0 x 0..20 at downsample 10
    f = window_tissue_fraction(mask, (10.0, 10.0), np.array([5.0, 15.0, 25.0]),
                               np.array([0.0, 0.0, 0.0]), 10.0)
    assert f.tolist() == pytest.approx([1.0, 0.5, 0.0])
    # past the mask's edge counts as no tissue
    assert window_tissue_fraction(np.ones((2, 2), bool), 1.0, 1.0, 1.0, 2.0) == 0.25
