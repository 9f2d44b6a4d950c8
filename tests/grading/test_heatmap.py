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


def test_overlay_blends_each_pixel_and_hatches_only_the_ink():
    rng = np.random.default_rng(2)
    thumb = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    grid = GridGeometry((0, 0), 100, 139, 6, 9)
    cm = rng.integers(-1, 30, (6, 9))
    ink = np.zeros((60, 90), bool)
    ink[5:20, 40:70] = True
    out = hm.overlay(thumb, cm, grid, th_downsample=10, alpha=0.4, ink=ink)
    cls = np.repeat(np.repeat(cm, 10, axis=0), 10, axis=1)
    colour = hm.class_colors()[np.maximum(cls, 0)].astype(np.float64)
    blend = np.where((cls >= 0)[..., None], np.round(0.6 * thumb + 0.4 * colour), thumb)
    assert np.abs(out[~ink].astype(int) - blend[~ink]).max() <= 1  # outside the ink: blended
    dark, light = hm.hatch(ink.shape) & ink, hm.hatch(ink.shape, phase=0.5) & ink
    assert dark.any() and light.any() and not (dark & light).any()
    assert np.abs(out[dark].astype(int) - np.round(0.2 * blend[dark] + 24)).max() <= 1
    assert np.abs(out[light].astype(int) - np.round(0.2 * blend[light] + 196)).max() <= 1
    plain = ink & ~dark & ~light
    assert np.abs(out[plain].astype(int) - blend[plain]).max() <= 1
    # a window of the pattern is the same part of the whole pattern
    assert np.array_equal(hm.hatch((60, 90), window=(5, 20, 40, 70)),
                          hm.hatch((60, 90))[5:20, 40:70])


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


def test_rendering_never_imports_matplotlib():
    # the scan draws its figures without matplotlib: importing it costs about 0.8 CPU-s
    code = (
        "import sys, numpy as np\n"
        "import convfocus.grading.heatmap as h\n"
        "from convfocus.types import GridGeometry\n"
        "cm = np.arange(30).reshape(5, 6) - 1\n"
        "h.class_colors(); h.bucket_colors()\n"
        "h.heatmap_png(cm); h.heatmap_png(cm, background='none', title='t')\n"
        "h.histogram_png(cm, title='t'); h.histogram_png(np.full(4, -1))\n"
        "grid = GridGeometry((0, 0), 128, 139, 5, 6)\n"
        "h.overlay_png(np.full((40, 48, 3), 200, np.uint8), cm, grid, th_downsample=16.0,\n"
        "              title='t')\n"
        "h.render_figure(np.zeros((3000, 20, 3), np.uint8))\n"
        "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 29, 30, 31, 64, 255, 256, 257, 1000])
def test_class_colors_are_matplotlibs_jet_exactly(n):
    colormaps = pytest.importorskip("matplotlib").colormaps
    pos = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    expected = np.round(np.asarray(colormaps["jet"](pos))[:, :3] * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(hm.class_colors(n), expected)


def test_jet_lookup_table_is_matplotlibs():
    colormaps = pytest.importorskip("matplotlib").colormaps
    jet = colormaps["jet"]
    assert jet.N == 256
    np.testing.assert_array_equal(hm._jet_lut(), np.asarray(jet(np.arange(256)))[:, :3])


# the layout of render_figure: pad 12 px, title band 40 px, legend 130 px, colour bar at least
# 320 px tall, 24 px for the no-tissue key
def _cell_centres(cm: np.ndarray, cell: int, x0: int = 12, y0: int = 12):
    for r in range(cm.shape[0]):
        for c in range(cm.shape[1]):
            yield r, c, y0 + r * cell + cell // 2, x0 + c * cell + cell // 2


def _read(png: bytes) -> np.ndarray:
    """RGB or RGBA."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3
    return img[..., [2, 1, 0, 3][: img.shape[2]]]


def test_heatmap_png_size_and_the_class_colours_of_its_cells():
    rng = np.random.default_rng(3)
    cm = rng.integers(-1, 30, (20, 30))
    img = _read(hm.heatmap_png(cm))
    cell = 900 // 30  # cells enlarged to about 900 px on the longest side
    assert img.shape == (12 + 20 * cell + 12 + 24, 12 + 30 * cell + 130, 3)  # opaque: RGB
    colors = hm.class_colors()
    for r, c, y, x in _cell_centres(cm, cell):
        want = colors[cm[r, c]] if cm[r, c] >= 0 else (0, 0, 0)  # no tissue: black
        np.testing.assert_array_equal(img[y, x], want, err_msg=f"cell {r, c}")
    # cells are crisp squares: nearest neighbour, not smoothed
    r, c = 4, 7
    block = img[12 + r * cell : 12 + (r + 1) * cell, 12 + c * cell : 12 + (c + 1) * cell]
    assert (block == block[0, 0]).all()


def test_heatmap_png_transparent_where_there_is_no_tissue():
    cm = np.full((6, 8), -1)
    cm[1:5, 2:7] = np.arange(20).reshape(4, 5)
    img = _read(hm.heatmap_png(cm, background="none"))
    cell = 900 // 8
    assert img.shape[2] == 4 and img.shape[:2] == (12 + 6 * cell + 36, 12 + 8 * cell + 130)
    colors = hm.class_colors()
    for r, c, y, x in _cell_centres(cm, cell):
        if cm[r, c] < 0:
            assert img[y, x, 3] == 0, (r, c)
        else:
            np.testing.assert_array_equal(img[y, x], [*colors[cm[r, c]], 255])
    assert img[0, 0, 3] == 0 and img[-1, -1, 3] == 0  # the margins too
    # the colour bar stays opaque: class 0 at its bottom, class 29 at its top
    bar_x = 12 + 8 * cell + 18 + 10
    bar_bottom, bar_top = 12 + 6 * cell - 3, 12 + 3
    np.testing.assert_array_equal(img[bar_bottom, bar_x], [*colors[0], 255])
    np.testing.assert_array_equal(img[bar_top, bar_x], [*colors[29], 255])
    # the legend's text, antialiased: partly covered pixels of the black text
    legend = img[12 : 12 + 6 * cell, bar_x + 12 :]
    assert ((legend[..., 3] > 0) & (legend[..., 3] < 255)).sum() > 100
    assert (legend[..., 3] == 255).sum() > 100


def test_render_figure_scales_the_image_into_range():
    small = np.zeros((2, 3, 3), np.uint8)
    small[0, 0] = (255, 0, 0)
    img = _read(hm.render_figure(small, show_no_tissue_key=False))
    # enlarged to 360 px (nearest neighbour): 120 px per pixel
    assert img.shape[:2] == (12 + 320 + 12, 12 + 360 + 130)
    np.testing.assert_array_equal(img[12 : 12 + 120, 12 : 12 + 120].reshape(-1, 3).max(0),
                                  [255, 0, 0])
    np.testing.assert_array_equal(img[12 : 12 + 120, 12 : 12 + 120].reshape(-1, 3).min(0),
                                  [255, 0, 0])
    big = np.zeros((1000, 2800, 3), np.uint8)
    big[:, ::2] = 200  # stripes average out where reduced
    img = _read(hm.render_figure(big, title="a title"))
    assert img.shape[:2] == (40 + 500 + 12 + 24, 12 + 1400 + 130)
    assert abs(int(img[300, 700, 0]) - 100) <= 1


def test_figures_draw_nothing_at_their_edges():
    # nothing clipped: the outermost pixels of the figures stay background
    cm = np.arange(30).reshape(5, 6)
    for png in (hm.heatmap_png(cm, title="OOF classes of a slide"), hm.histogram_png(cm),
                hm.histogram_png(cm, title="Share of tissue"),
                hm.render_figure(np.zeros((400, 40, 3), np.uint8))):
        img = _read(png)
        for edge in (img[:3], img[-3:], img[:, :3], img[:, -3:]):
            assert (edge == 255).all()


def test_histogram_bars_have_the_class_colours():
    classes = np.concatenate([np.full(n, k) for k, n in ((0, 5), (3, 20), (12, 40), (29, 35))]
                             + [np.full(50, -1)])
    img = _read(hm.histogram_png(classes))
    assert img.shape == (340, 900, 3)
    colors = hm.class_colors()
    area = {}
    for k in range(30):
        hits = np.argwhere((img == colors[k]).all(axis=2))
        if k in (0, 3, 12, 29):
            area[k] = len(hits)
            # a bar 0.8 class wide at the class' place: x from -0.7 to 29.7 over 810 px
            x0, x1 = (72 + (k + d + 0.7) * 810 / 30.4 for d in (-0.4, 0.4))
            assert x0 - 1 <= hits[:, 1].min() < hits[:, 1].max() <= x1 + 1
            assert hits[:, 1].max() - hits[:, 1].min() >= 0.8 * 810 / 30.4 - 4
        else:
            assert len(hits) == 0, k
    # heights follow the shares: 5, 20, 40 and 35 % of the tissue
    assert area[0] < area[3] < area[29] < area[12]
    assert area[12] / area[3] == pytest.approx(2.0, rel=0.1)


def test_histogram_labels_its_buckets():
    # the darker text of the bucket labels over the top of the plot, and axis labels
    img = _read(hm.histogram_png(np.arange(30)))
    top = img[27 : 27 + 30, 72:882]
    assert (top.max(axis=2) < 128).sum() > 50
    below = img[290:340, 72:882]
    assert (below.max(axis=2) < 128).sum() > 200
