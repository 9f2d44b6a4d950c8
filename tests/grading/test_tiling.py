"""Window grid: shapes at the edges, exact tissue fractions, metamorphic properties."""

from __future__ import annotations

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.grading.tiling import (
    TissueGrid,
    cut_windows,
    grid_shape,
    make_grid,
    tissue_windows,
)

WINDOW, STRIDE = 139.0, 128.0


def _grid(mask: np.ndarray, ds: float, size: tuple[int, int], **kw: float) -> TissueGrid:
    return make_grid(mask, ds, size, window_l0_px=WINDOW, stride_l0_px=STRIDE, **kw)


def test_empty_slide_has_no_cells() -> None:
    g = _grid(np.zeros((100, 100), bool), 16.0, (1600, 1600))
    assert (g.geometry.rows, g.geometry.cols) == (12, 12)
    assert g.cells.shape == (0, 2) and g.cells.dtype == np.int32
    assert g.tissue_fraction.shape == (0,) and len(g) == 0


def test_slide_smaller_than_a_window_gives_empty_grid() -> None:
    g = _grid(np.ones((10, 10), bool), 13.8, (138, 1000))
    assert g.geometry.cols == 0 and len(g) == 0


def test_slide_exactly_one_window_gives_one_cell() -> None:
    g = _grid(np.ones((139, 139), bool), 1.0, (139, 139))
    assert (g.geometry.rows, g.geometry.cols) == (1, 1)
    assert g.cells.tolist() == [[0, 0]]
    assert g.tissue_fraction.tolist() == [1.0]
    assert g.geometry.l0_xy(0, 0) == (0.0, 0.0)


def test_one_window_wide_slide_gives_one_column() -> None:
    g = _grid(np.ones((100, 10), bool), 13.9, (139, 1390))
    assert g.geometry.cols == 1 and g.geometry.rows == 10


@pytest.mark.parametrize(
    ("extent", "expected"), [(138, 0), (139, 1), (266, 1), (267, 2), (139 + 128 * 7, 8)]
)
def test_grid_shape_counts_whole_windows(extent: int, expected: int) -> None:
    assert grid_shape((extent, 1000), WINDOW, STRIDE)[1] == expected


def test_windows_lie_inside_slide() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        w, h = (int(v) for v in rng.integers(100, 5000, size=2))
        ds = float(rng.uniform(2, 40))
        window = float(rng.uniform(30, 300))
        stride = float(rng.uniform(0.5, 1.0) * window)
        mask = np.ones((max(1, round(h / ds)), max(1, round(w / ds))), bool)
        g = make_grid(mask, ds, (w, h), window_l0_px=window, stride_l0_px=stride, min_tissue=0)
        assert len(g) == g.geometry.rows * g.geometry.cols
        if len(g):
            last = g.geometry.l0_xy(g.geometry.rows - 1, g.geometry.cols - 1)
            assert last[0] + window <= w + 1e-6 and last[1] + window <= h + 1e-6
            # one more stride would leave the slide
            assert last[0] + stride + window > w and last[1] + stride + window > h


def test_fraction_is_exact_area_share() -> None:
    # level-0 brute force: upsample the mask by the integer downsample and count
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) < 0.4
    ds = 8
    l0 = np.kron(mask, np.ones((ds, ds), bool))
    g = make_grid(mask, float(ds), (400, 320), window_l0_px=37.0, stride_l0_px=29.0, min_tissue=0)
    for (r, c), frac in zip(g.cells, g.tissue_fraction, strict=True):
        x, y = g.geometry.l0_xy(int(r), int(c))
        assert frac == pytest.approx(
            l0[int(y) : int(y) + 37, int(x) : int(x) + 37].mean(), abs=1e-5
        )


def test_fractional_window_matches_brute_force() -> None:
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    ds = 4.0
    l0 = np.kron(mask, np.ones((4, 4), bool)).astype(float)
    window, stride = 69.5, 64.0  # a 0.5 µm/px slide for a 0.25 µm/px model
    g = make_grid(mask, ds, (256, 256), window_l0_px=window, stride_l0_px=stride, min_tissue=0)
    sub = 4  # supersample by 4 to integrate the half-pixel window edge
    fine = np.kron(l0, np.ones((sub, sub)))
    for (r, c), frac in zip(g.cells, g.tissue_fraction, strict=True):
        x, y = g.geometry.l0_xy(int(r), int(c))
        x0, y0, n = round(x * sub), round(y * sub), round(window * sub)
        assert frac == pytest.approx(fine[y0 : y0 + n, x0 : x0 + n].mean(), abs=1e-5)


def test_min_tissue_threshold() -> None:
    mask = np.zeros((20, 20), bool)
    mask[:, :5] = True  # level-0 x < 50 at downsample 10
    kw = {"window_l0_px": 100.0, "stride_l0_px": 50.0}
    assert len(make_grid(mask, 10.0, (200, 200), min_tissue=0.51, **kw)) == 0
    g = make_grid(mask, 10.0, (200, 200), min_tissue=0.5, **kw)  # window x 0..100: half tissue
    assert g.cells[:, 1].tolist() == [0, 0, 0]
    assert np.allclose(g.tissue_fraction, 0.5)


def test_more_tissue_never_fewer_cells() -> None:
    rng = np.random.default_rng(2)
    base = rng.random((60, 80)) < 0.2
    more = base | (rng.random((60, 80)) < 0.2)
    a = _grid(base, 16.0, (1280, 960))
    b = _grid(more, 16.0, (1280, 960))
    assert len(b) >= len(a)
    assert {tuple(c) for c in a.cells} <= {tuple(c) for c in b.cells}


def test_higher_threshold_gives_subset() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((60, 80)) < 0.5
    low = _grid(mask, 16.0, (1280, 960), min_tissue=0.25)
    high = _grid(mask, 16.0, (1280, 960), min_tissue=0.6)
    assert {tuple(c) for c in high.cells} <= {tuple(c) for c in low.cells}


def test_cells_in_row_major_order() -> None:
    rng = np.random.default_rng(4)
    g = _grid(rng.random((50, 50)) < 0.6, 16.0, (800, 800))
    keys = g.cells[:, 0].astype(np.int64) * g.geometry.cols + g.cells[:, 1]
    assert np.all(np.diff(keys) > 0)


def test_tissue_maps_to_the_right_place() -> None:
    mask = np.zeros((96, 128), bool)
    mask[40:56, 80:100] = True  # level-0 x 1280..1600, y 640..896 at downsample 16
    g = _grid(mask, 16.0, (2048, 1536), min_tissue=0.5)
    assert len(g) > 0
    for r, c in g.cells:
        x, y = g.geometry.l0_xy(int(r), int(c))
        assert 1280 - WINDOW / 2 <= x <= 1600 - WINDOW / 2
        assert 640 - WINDOW / 2 <= y <= 896 - WINDOW / 2


def test_anisotropic_downsample() -> None:
    mask = np.ones((10, 20), bool)
    mask[:, 10:] = False
    g = make_grid(mask, (10.0, 20.0), (200, 200), window_l0_px=50, stride_l0_px=50, min_tissue=0.5)
    assert sorted({int(c) for c in g.cells[:, 1]}) == [0, 1]
    assert g.geometry.rows == 4


def test_mask_smaller_than_slide_counts_as_no_tissue() -> None:
    g = _grid(np.ones((5, 5), bool), 16.0, (1600, 1600), min_tissue=0.01)
    # only the top-left 80 x 80 px is masked
    assert g.geometry.rows == 12 and len(g) < g.geometry.rows * g.geometry.cols


@pytest.mark.parametrize("bad", [{"window_l0_px": 0}, {"stride_l0_px": -1}, {"min_tissue": 1.5}])
def test_invalid_settings(bad: dict[str, float]) -> None:
    kw = {"window_l0_px": WINDOW, "stride_l0_px": STRIDE, "min_tissue": 0.25} | bad
    with pytest.raises(ConfigError):
        make_grid(np.ones((4, 4), bool), 1.0, (400, 400), **kw)


# --- windows of an image --------------------------------------------------------------------


def test_cut_windows_are_the_grid_windows_row_major(tissue_rgb: np.ndarray) -> None:
    img = tissue_rgb[:500, :700]
    wins = cut_windows(img, 139, 128)
    rows, cols = (500 - 139) // 128 + 1, (700 - 139) // 128 + 1
    assert wins.shape == (rows * cols, 139, 139, 3) and wins.flags.c_contiguous
    for i, (r, c) in enumerate(np.ndindex(rows, cols)):
        assert np.array_equal(wins[i], img[r * 128 : r * 128 + 139, c * 128 : c * 128 + 139])
    batch = cut_windows(np.stack([img, img[::-1]]), 139, 128)  # image by image
    assert np.array_equal(batch[: len(wins)], wins) and len(batch) == 2 * len(wins)


def test_a_window_exactly_one_tile_wide_gives_one_tile(tissue_rgb: np.ndarray) -> None:
    assert len(cut_windows(tissue_rgb[:139, :139])) == 1
    assert len(cut_windows(tissue_rgb[:138, :500])) == 0  # smaller than one window: none
    assert len(tissue_windows(tissue_rgb[:138, :500])) == 0


def test_centred_windows_split_the_margin(tissue_rgb: np.ndarray) -> None:
    img = tissue_rgb[:300, :300]  # two windows of 139 at 128 leave 300 - 267 = 33 px
    wins = cut_windows(img, 139, 128, centred=True)
    assert len(wins) == 4
    assert np.array_equal(wins[3], img[16 + 128 : 16 + 128 + 139, 16 + 128 : 16 + 128 + 139])


def test_tissue_windows_keep_the_windows_on_tissue(tissue_rgb: np.ndarray) -> None:
    img = tissue_rgb[300:800, 300:1000].copy()
    img[:, 350:] = 245  # glass on the right
    wins = cut_windows(img)
    kept = tissue_windows(img, min_tissue=0.5)
    assert 0 < len(kept) < len(wins)
    keys = {w.tobytes() for w in wins[: len(wins)]}
    assert all(w.tobytes() in keys for w in kept)  # whole grid windows, unchanged
    assert len(tissue_windows(img, min_tissue=0.0)) == len(wins)
