"""Jet colours, heatmaps, overlays aligned by the grid geometry, and legend figures."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from convfocus.grading import heatmap as hm
from convfocus.types import GridGeometry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img[..., ::-1]  # RGB


def test_class_colors_jet_endpoints():
    c = hm.class_colors()
    assert c.shape == (30, 3) and c.dtype == np.uint8
    r, g, b = (int(v) for v in c[0])
    assert b > 100 and b > r and b > g  # class 0 blue
    r, g, b = (int(v) for v in c[29])
    assert r > 100 and r > g and r > b  # class 29 red
    r, g, b = (int(v) for v in c[15])
    assert g > 150  # the middle of jet is green-ish


def test_class_colors_are_a_copy():
    c = hm.class_colors()
    c[:] = 0
    assert hm.class_colors()[29, 0] > 0


def test_heatmap_rgba_non_tissue_transparent():
    cm = np.array([[-1, 0], [29, -1]])
    rgba = hm.heatmap_rgba(cm)
    assert rgba.shape == (2, 2, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == 0
    assert rgba[0, 1, 3] == 255 and rgba[1, 0, 3] == 255
    colors = hm.class_colors()
    assert np.array_equal(rgba[0, 1, :3], colors[0])
    assert np.array_equal(rgba[1, 0, :3], colors[29])


def test_heatmap_rgba_upscaled_nearest():
    cm = np.array([[-1, 3], [7, 29]])
    big = hm.heatmap_rgba(cm, cell_px=5)
    assert big.shape == (10, 10, 4)
    small = hm.heatmap_rgba(cm)
    for r in range(2):
        for c in range(2):
            block = big[r * 5 : r * 5 + 5, c * 5 : c * 5 + 5]
            assert (block == small[r, c]).all()


def test_overlay_known_cell_lands_where_expected():
    # level-0 grid: origin (100, 50), stride 128; thumbnail 16x smaller
    grid = GridGeometry.from_dict({"l0_origin_px": [100, 50], "l0_stride_px": 128,
                                   "l0_window_px": 139, "rows": 6, "cols": 8})
    thumb = np.full((80, 90, 3), 255, np.uint8)
    cm = np.full((6, 8), -1)
    cm[2, 3] = 29
    out = hm.overlay(thumb, cm, grid, th_downsample=16.0, alpha=1.0)
    painted = np.argwhere((out != 255).any(axis=2))
    # x: (100 + 3*128)/16 = 30.25 .. 38.25 -> pixel centres 30.5..37.5 -> columns 30..37
    # y: (50 + 2*128)/16 = 19.125 .. 27.125 -> rows 19..26
    assert painted[:, 1].min() == 30 and painted[:, 1].max() == 37
    assert painted[:, 0].min() == 19 and painted[:, 0].max() == 26
    assert len(painted) == 8 * 8
    assert np.array_equal(out[22, 33], hm.class_colors()[29])


def test_overlay_downsample_from_dimensions_or_given_is_the_same():
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)
    cm = rng.integers(-1, 30, (9, 14))
    grid = GridGeometry((7, 11), 128, 139, 9, 14)
    a = hm.overlay(thumb, cm, grid, l0_dimensions=(1920, 1280))
    b = hm.overlay(thumb, cm, grid, th_downsample=12.8)
    c = hm.overlay(thumb, cm, grid, th_downsample=(12.8, 12.8))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_overlay_alpha_zero_and_non_tissue_keep_the_thumbnail():
    rng = np.random.default_rng(1)
    thumb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    grid = GridGeometry((0, 0), 100, 139, 4, 6)
    cm = rng.integers(0, 30, (4, 6))
    assert np.array_equal(hm.overlay(thumb, cm, grid, th_downsample=10, alpha=0.0), thumb)
    assert np.array_equal(
        hm.overlay(thumb, np.full((4, 6), -1), grid, th_downsample=10, alpha=0.7), thumb
    )


def test_overlay_rejects_mismatched_shapes():
    grid = GridGeometry((0, 0), 128, 139, 3, 3)
    with pytest.raises(ValueError):
        hm.overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 3), int), grid,
                   th_downsample=40)
    with pytest.raises(ValueError):  # no way to map the grid onto the thumbnail
        hm.overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((3, 3), int), grid)


def test_heatmap_png_has_a_legend():
    png = hm.heatmap_png(np.zeros((20, 30), int))  # only class 0 in the image
    assert png.startswith(PNG_SIGNATURE)
    img = _decode(png).astype(int)
    # dark red of class 29 can only come from the colorbar
    red = (np.abs(img - hm.class_colors()[29]).sum(axis=2) < 20).sum()
    assert red > 20
    assert img.shape[1] > 600


def test_overlay_png_and_histogram_png_decode():
    thumb = np.full((50, 80, 3), 230, np.uint8)
    grid = GridGeometry((0, 0), 128, 139, 3, 5)
    cm = np.arange(15).reshape(3, 5) * 2
    ov = hm.overlay_png(thumb, cm, grid, th_downsample=8.0, title="overlay")
    hist = hm.histogram_png(cm)
    for png in (ov, hist):
        assert png.startswith(PNG_SIGNATURE)
        assert _decode(png).shape[0] > 100
    assert hm.histogram_png(np.full((3, 3), -1)).startswith(PNG_SIGNATURE)  # no tissue


def test_class_counts_ignores_non_tissue():
    counts = hm.class_counts(np.array([[-1, 0, 0], [29, 5, -1]]))
    assert counts.shape == (30,)
    assert counts[0] == 2 and counts[5] == 1 and counts[29] == 1 and counts.sum() == 4


def test_rendering_never_touches_pyplot():
    code = (
        "import sys, numpy as np\n"
        "import convfocus.grading.heatmap as h\n"
        "assert 'matplotlib' not in sys.modules\n"  # no import-time matplotlib
        "h.heatmap_png(np.zeros((4, 4), int)); h.histogram_png(np.zeros(5, int))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

