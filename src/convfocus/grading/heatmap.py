"""Class map -> colour images: jet heatmaps, overlays on the thumbnail, legends.

A class map is an integer grid ``(rows, cols)`` of OOF classes ``0..num_classes-1``
with ``-1`` where there is no tissue, checked once where it is made
(:class:`~convfocus.grading.result.SlideResult`); the functions here trust it. Cell
``(row, col)`` belongs to the window grid described by
:class:`~convfocus.types.GridGeometry` (``grid`` in ``summary.json``): it starts at level-0 pixel ``(x0 + col * stride, y0 + row * stride)``. Windows
overlap (139 px window, 128 px stride), so for drawing each cell owns only its
``stride x stride`` square, which tiles the plane without gaps or overlaps.

Everything here is pure: arrays in, arrays or PNG bytes out. Figures are drawn in
pixels without matplotlib (importing it would cost a scan more CPU than drawing them): boxes
and lines with numpy, text with Pillow's built-in scalable font (antialiased), PNG encoded
with OpenCV (:func:`convfocus.io.images.png_bytes`).

References: the "jet" colormap from class 0 (blue, in focus) to 29 (red,
strongly out of focus), Kohlberger et al. 2019, Figure 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.errors import OutputError
from convfocus.types import OOF_BUCKETS as BUCKETS
from convfocus.types import GridGeometry

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

LEGEND_LABEL = "OOF class (0 in focus .. 29 strongly out of focus)"


# --- colours -----------------------------------------------------------------------------------

#: matplotlib's "jet" (``matplotlib/_cm.py``): per channel, rows ``(x, y0, y1)`` of a piecewise
#: linear map of [0, 1] onto [0, 1].
_JET_SEGMENTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "red": ((0.0, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1.0, 0.5, 0.5)),
    "green": ((0.0, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.64, 1, 1), (0.91, 0, 0),
              (1.0, 0, 0)),
    "blue": ((0.0, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1.0, 0, 0)),
}

#: Entries of the lookup table matplotlib samples jet into (``colormaps["jet"].N``).
_JET_N = 256


def _jet_lut(n: int = _JET_N) -> np.ndarray:
    """``(n, 3)`` float64: jet's lookup table, by the arithmetic of matplotlib's
    ``matplotlib.colors._create_lookup_table`` (gamma 1), so its colours to the bit."""
    xind = (n - 1) * np.linspace(0, 1, n)
    lut = np.empty((n, 3))
    for ch, name in enumerate(("red", "green", "blue")):
        seg = np.array(_JET_SEGMENTS[name], dtype=float)
        x, y0, y1 = seg[:, 0] * (n - 1), seg[:, 1], seg[:, 2]
        ind = np.searchsorted(x, xind)[1:-1]
        distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
        lut[:, ch] = np.clip(np.concatenate(
            [[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]]), 0.0, 1.0)
    return lut


@lru_cache(maxsize=8)
def _class_colors_cached(num_classes: int) -> np.ndarray:
    # matplotlib's Colormap.__call__ on floats: entry int(x * N) of the table, x == 1 -> N - 1
    pos = np.linspace(0.0, 1.0, num_classes) if num_classes > 1 else np.zeros(1)
    xa = pos * _JET_N
    xa[xa == _JET_N] = _JET_N - 1
    rgb = _jet_lut()[np.clip(xa.astype(int), 0, _JET_N - 1)]
    out = np.round(rgb * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def class_colors(num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Jet colours of the classes, ``(num_classes, 3)`` uint8: class 0 dark blue .. last red.

    The colours of matplotlib's ``colormaps["jet"]`` at ``linspace(0, 1, num_classes)``,
    computed without matplotlib (its segment data and 256-entry table, bit for bit).

    References: Kohlberger et al. 2019, Figure 3 (jet colormap).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _class_colors_cached(int(num_classes)).copy()


def bucket_colors(
    buckets: Sequence[tuple[int, int]] = BUCKETS, *, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """One colour per bucket (the jet colour of its middle class), ``(n, 3)`` uint8."""
    colors = class_colors(num_classes)
    mids = [min(num_classes - 1, (lo + hi) // 2) for lo, hi in buckets]
    return colors[mids]


# --- images at grid resolution -----------------------------------------------------------------


def heatmap_rgba(
    classmap: np.ndarray, *, cell_px: int = 1, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Jet image of a class map, RGBA uint8; no-tissue cells are fully transparent.

    Parameters
    ----------
    classmap
        ``(rows, cols)`` integer classes, -1 = no tissue.
    cell_px
        Side of each cell in output pixels (nearest-neighbour upscaling); the
        output is ``(rows * cell_px, cols * cell_px, 4)``.
    """
    cm = np.asarray(classmap)
    if cell_px < 1:
        raise ValueError(f"cell_px must be >= 1, got {cell_px}")
    colors = class_colors(num_classes)
    out = np.zeros(cm.shape + (4,), dtype=np.uint8)
    tissue = cm >= 0
    out[tissue, :3] = colors[cm[tissue]]
    out[tissue, 3] = 255
    if cell_px > 1:
        out = upscale_nearest(out, cell_px)
    return out


def upscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every pixel ``factor`` times along both axes."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return np.asarray(image)
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def thumbnail_class_index(
    th_shape: tuple[int, int],
    grid: GridGeometry,
    th_downsample: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Grid row of every thumbnail row and grid column of every thumbnail column.

    A thumbnail pixel belongs to the cell whose ``stride x stride`` square holds
    the pixel's centre in level-0 coordinates; -1 where no cell does. So cell
    ``(r, c)`` covers thumbnail x from ``(x0 + c*stride) / ds_x`` to
    ``(x0 + c*stride + stride) / ds_x`` (same for y).
    """
    th_h, th_w = th_shape
    ds_x, ds_y = th_downsample
    t_col = grid.col_of((np.arange(th_w) + 0.5) * ds_x)
    t_row = grid.row_of((np.arange(th_h) + 0.5) * ds_y)
    t_col[(t_col < 0) | (t_col >= grid.cols)] = -1
    t_row[(t_row < 0) | (t_row >= grid.rows)] = -1
    return t_row, t_col


def _th_downsample(
    th_shape: tuple[int, int],
    l0_dimensions: tuple[int, int] | None,
    th_downsample: float | tuple[float, float] | None,
) -> tuple[float, float]:
    if th_downsample is not None:
        if isinstance(th_downsample, (int, float)):
            ds = (float(th_downsample), float(th_downsample))
        else:
            ds = (float(th_downsample[0]), float(th_downsample[1]))
    elif l0_dimensions is not None:
        ds = (l0_dimensions[0] / th_shape[1], l0_dimensions[1] / th_shape[0])
    else:
        raise ValueError("give l0_dimensions (slide width, height) or th_downsample")
    if not (ds[0] > 0 and ds[1] > 0):
        raise ValueError(f"thumbnail downsample must be > 0, got {ds}")
    return ds


def overlay(
    thumbnail_rgb: np.ndarray,
    classmap: np.ndarray,
    grid: GridGeometry,
    *,
    l0_dimensions: tuple[int, int] | None = None,
    th_downsample: float | tuple[float, float] | None = None,
    alpha: float = 0.5,
    num_classes: int = NUM_CLASSES,
    ink: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the jet heatmap over a slide thumbnail, cells placed by the grid geometry.

    Parameters
    ----------
    thumbnail_rgb
        ``(h, w, 3)`` uint8 thumbnail of the whole slide.
    classmap
        ``(rows, cols)`` classes, -1 = no tissue (left unpainted).
    grid
        Where the cells lie on level 0.
    l0_dimensions
        Level-0 ``(width, height)``; the downsample per axis is ``width / w`` and
        ``height / h``. Ignored when ``th_downsample`` is given.
    th_downsample
        Level-0 pixels per thumbnail pixel, one number or ``(ds_x, ds_y)``; this or
        ``l0_dimensions`` must be given.
    alpha
        Opacity of the heatmap over tissue cells.
    ink
        ``(h, w)`` bool mask of ink left out of grading (thumbnail pixels), drawn as
        diagonal hatching, a dark and a light line in turn (:func:`hatch`), which shows on
        dark ink and on pale tissue alike.

    Returns
    -------
    np.ndarray
        ``(h, w, 3)`` uint8.
    """
    th = np.asarray(thumbnail_rgb)
    if th.ndim != 3 or th.shape[2] not in (3, 4):
        raise ValueError(f"thumbnail must be (h, w, 3) RGB, got shape {th.shape}")
    th = np.ascontiguousarray(th[..., :3], dtype=np.uint8)
    cm = np.asarray(classmap)
    if cm.shape != grid.shape:
        raise ValueError(f"class map shape {cm.shape} does not match grid {grid.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ds = _th_downsample(th.shape[:2], l0_dimensions, th_downsample)
    t_row, t_col = thumbnail_class_index(th.shape[:2], grid, ds)
    cls = np.full(th.shape[:2], -1, dtype=np.int32)
    ys = np.flatnonzero(t_row >= 0)
    xs = np.flatnonzero(t_col >= 0)
    if ys.size and xs.size:
        cls[np.ix_(ys, xs)] = cm[np.ix_(t_row[ys], t_col[xs])]
    # blended in uint8 by OpenCV (rounded as numpy rounds): 5-10x faster than float arrays
    import cv2

    colour = class_colors(num_classes)[np.maximum(cls, 0)]
    out = np.where((cls >= 0)[..., None], cv2.addWeighted(th, 1.0 - alpha, colour, alpha, 0.0),
                   th)
    ink = None if ink is None else np.asarray(ink, dtype=bool)
    box_of_ink = None if ink is None else _bbox(ink)
    if ink is not None and box_of_ink is not None:
        y0, y1, x0, x1 = box_of_ink
        box = out[y0:y1, x0:x1]
        for phase, level in ((0.0, 30.0), (0.5, 245.0)):
            lines = hatch(th.shape[:2], phase=phase, window=(y0, y1, x0, x1)) & ink[y0:y1, x0:x1]
            box[lines] = np.round(0.2 * box[lines] + 0.8 * level).astype(np.uint8)
    return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: the smallest box holding every non-zero pixel; None if none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def hatch(shape: tuple[int, int], *, period_px: int | None = None, phase: float = 0.0,
          window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``(h, w)`` bool diagonal lines (down to the left), a quarter of each ``period_px``
    (default: about 1/150 of the longest side, at least 8 px) wide, shifted by ``phase``
    of a period. ``window`` ``(y0, y1, x0, x1)``: only that part of the pattern."""
    h, w = shape
    period = period_px or max(8, max(h, w) // 150)
    y0, y1, x0, x1 = window or (0, h, 0, w)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    return ((xx + yy + round(phase * period)) % period) < max(2, period // 4)


# --- figures with a legend ---------------------------------------------------------------------
#
# Laid out in pixels as the matplotlib figures they replace were (font sizes and line widths in
# points at ``dpi``): boxes and lines are numpy slices of an RGBA canvas, text is Pillow's
# built-in scalable font, antialiased and composited over it. Importing matplotlib alone costs
# more CPU than a scan's figures take to draw this way (docs/performance.md).

_BLACK = (0, 0, 0)
_SPINE = (0x88, 0x88, 0x88)
_DARK = (0x33, 0x33, 0x33)
_MUTED = (0x66, 0x66, 0x66)
_BAND = (0xF0, 0xF0, 0xF0)


#: Pillow's built-in font (Aileron) is set this much larger than the size asked for: its
#: letters are smaller and narrower than DejaVu Sans' (matplotlib's) at the same size.
_FONT_SCALE = 1.1


@lru_cache(maxsize=16)
def _font(size_px: float) -> FreeTypeFont:
    """Pillow's built-in scalable font, as large as DejaVu Sans at ``size_px`` pixels per em."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=size_px * _FONT_SCALE)
    if not isinstance(font, ImageFont.FreeTypeFont):  # pragma: no cover - Pillow sans FreeType
        raise OutputError("drawing the figures' text needs Pillow with FreeType "
                          "(the PyPI wheels have it)")
    return font


#: Width of a space between words, in em: Aileron's own (0.22 em) runs small words together
#: at these sizes ("(0 in focus"); DejaVu Sans' is 0.32 em.
_SPACE_EM = 0.3


def _line(text: str, font: FreeTypeFont) -> tuple[np.ndarray, float, int]:
    """Coverage (float32 in [0, 1]) of one line of text drawn word by word, spaces
    ``_SPACE_EM`` wide, the left end of its baseline at pixel ``(margin, margin + ascent)``;
    its advance width and the margin (room for ink beyond the advance box)."""
    from PIL import Image, ImageDraw

    ascent, descent = font.getmetrics()
    words = text.split(" ")
    space = max(font.getlength(" "), _SPACE_EM * font.size)
    advances = [font.getlength(word) for word in words]
    total = sum(advances) + space * (len(words) - 1)
    margin = math.ceil(0.25 * font.size) + 1
    img = Image.new("L", (math.ceil(total) + 2 * margin, ascent + descent + 2 * margin))
    draw = ImageDraw.Draw(img)
    x = float(margin)
    for word, advance in zip(words, advances, strict=True):
        if word:
            draw.text((x, margin + ascent), word, font=font, fill=255, anchor="ls")
        x += advance + space
    return np.asarray(img, dtype=np.float32) / 255.0, total, margin


def _crop(cov: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``cov`` cut to its ink, and the row and column where the cut starts."""
    box = _bbox(cov)
    if box is None:
        return np.zeros((1, 1), np.float32), 0, 0
    y0, y1, x0, x1 = box
    return cov[y0:y1, x0:x1], y0, x0


def _text_mask(text: str, size_px: float, anchor: str) -> tuple[np.ndarray, int, int]:
    """Coverage ``(h, w)`` float32 in [0, 1] of ``text`` placed by ``anchor`` at the origin,
    and the offset ``(dx, dy)`` of its top-left pixel from that point.

    ``anchor`` as Pillow's: horizontal ``l`` (left end), ``m`` (middle) or ``r`` (right end)
    of the advance; vertical ``s`` (baseline), ``m`` (half-way between the ascender and
    descender lines), ``a`` (ascender line) or ``t`` (top of the ink).
    """
    font = _font(size_px)
    ascent, descent = font.getmetrics()
    cov, total, margin = _line(text, font)
    cov, top, left = _crop(cov)
    ax = margin + {"l": 0.0, "m": total / 2, "r": total}[anchor[0]]
    baseline = margin + ascent
    ay = {"s": baseline, "m": baseline + (descent - ascent) / 2, "a": margin,
          "t": top}[anchor[1]]
    return cov, round(left - ax), round(top - ay)


def _lines_mask(lines: Sequence[str], size_px: float) -> np.ndarray:
    """Coverage of lines of text centred on each other, 1.2 em apart, cut to the ink (a
    text block, to be turned)."""
    font = _font(size_px)
    drawn = [_line(line, font) for line in lines]
    step = round(1.2 * size_px)
    widest = max(total for _, total, _ in drawn)
    first = drawn[0][0]
    block = np.zeros((step * (len(lines) - 1) + first.shape[0],
                      math.ceil(widest) + first.shape[1]), np.float32)
    for i, (cov, total, _) in enumerate(drawn):
        x = round((widest - total) / 2)
        part = block[i * step : i * step + cov.shape[0], x : x + cov.shape[1]]
        np.maximum(part, cov, out=part)
    return _crop(block)[0]


def _rgba(color: str) -> tuple[int, int, int, int]:
    """A colour name or ``#rrggbb[aa]`` as RGBA; ``"none"``: transparent."""
    if color.lower() in ("none", "transparent"):
        return (0, 0, 0, 0)
    from PIL import ImageColor

    rgb = ImageColor.getrgb(color)
    return (rgb[0], rgb[1], rgb[2], rgb[3] if len(rgb) == 4 else 255)


class _Canvas:
    """An RGBA figure of ``width x height`` pixels, drawn on in place."""

    def __init__(self, width: int, height: int, background: tuple[int, int, int, int]) -> None:
        self.px = np.empty((height, width, 4), np.uint8)
        self.px[:] = background

    def _clip(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        h, w = self.px.shape[:2]
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    def fill(self, x0: int, y0: int, x1: int, y1: int, color: Sequence[int]) -> None:
        """Set the box ``[x0, x1) x [y0, y1)`` to ``color`` (RGB opaque, or RGBA)."""
        x0, y0, x1, y1 = self._clip(x0, y0, x1, y1)
        if x1 > x0 and y1 > y0:
            self.px[y0:y1, x0:x1] = (*color[:3], color[3] if len(color) > 3 else 255)

    def frame(self, x0: int, y0: int, x1: int, y1: int, color: Sequence[int],
              width: int = 1) -> None:
        """Lines ``width`` px wide just outside the box ``[x0, x1) x [y0, y1)``."""
        self.fill(x0 - width, y0 - width, x1 + width, y0, color)
        self.fill(x0 - width, y1, x1 + width, y1 + width, color)
        self.fill(x0 - width, y0, x0, y1, color)
        self.fill(x1, y0, x1 + width, y1, color)

    def over(self, x: int, y: int, premul: np.ndarray, alpha: np.ndarray) -> None:
        """Composite ``premul`` ((h, w, 3) float, 0..255, premultiplied by ``alpha``, (h, w) in
        [0, 1]) over the canvas with its top-left pixel at ``(x, y)``."""
        h, w = alpha.shape
        x0, y0, x1, y1 = self._clip(x, y, x + w, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
        dst = self.px[y0:y1, x0:x1]
        dst_a = dst[..., 3:].astype(np.float32) / 255.0
        out_a = a + dst_a * (1.0 - a)
        out = (premul[y0 - y : y1 - y, x0 - x : x1 - x] + dst[..., :3] * (dst_a * (1.0 - a)))
        dst[..., :3] = np.clip(np.rint(out / np.maximum(out_a, 1e-6)), 0, 255)
        dst[..., 3:] = np.clip(np.rint(out_a * 255.0), 0, 255)

    def _cover(self, x: int, y: int, mask: np.ndarray, rgb: Sequence[int]) -> None:
        self.over(x, y, mask[..., None] * np.asarray(rgb[:3], np.float32), mask)

    def text(self, x: float, y: float, text: str, size_px: float, rgb: Sequence[int] = _BLACK,
             *, anchor: str = "ls") -> tuple[int, int, int, int]:
        """Draw ``text`` with Pillow's ``anchor`` (``"ls"``: left end of the baseline) at
        ``(x, y)``; returns the box it covers, ``(x0, y0, x1, y1)``."""
        mask, dx, dy = _text_mask(text, size_px, anchor)
        x0, y0 = round(x) + dx, round(y) + dy
        self._cover(x0, y0, mask, rgb)
        return x0, y0, x0 + mask.shape[1], y0 + mask.shape[0]

    def vtext(self, x: float, y_centre: float, lines: Sequence[str], size_px: float,
              rgb: Sequence[int] = _BLACK, *, right: bool = False) -> tuple[int, int, int, int]:
        """Lines of text turned to read upwards (the first line leftmost), centred on
        ``y_centre``, starting at ``x`` (ending there with ``right``); returns its box."""
        mask = np.ascontiguousarray(np.rot90(_lines_mask(lines, size_px)))
        h, w = mask.shape
        x0, y0 = round(x) - (w if right else 0), round(y_centre - h / 2)
        self._cover(x0, y0, mask, rgb)
        return x0, y0, x0 + w, y0 + h

    def image(self, x: int, y: int, img: np.ndarray, width: int, height: int) -> None:
        """Draw ``img`` (RGB or RGBA uint8) at ``(x, y)`` scaled to ``width x height``: nearest
        neighbour where it grows, area averaging (of premultiplied colours) where it shrinks."""
        import cv2

        h, w = img.shape[:2]
        grows = width >= w and height >= h
        interp = cv2.INTER_NEAREST_EXACT if grows else cv2.INTER_AREA

        def fit(a: np.ndarray) -> np.ndarray:
            if (width, height) == (w, h):
                return a
            return cv2.resize(np.ascontiguousarray(a), (width, height), interpolation=interp)

        x0, y0, x1, y1 = self._clip(x, y, x + width, y + height)
        if img.shape[2] == 3 or bool((img[..., 3] == 255).all()):  # opaque: copied
            self.px[y0:y1, x0:x1, :3] = fit(img[..., :3])[y0 - y : y1 - y, x0 - x : x1 - x]
            self.px[y0:y1, x0:x1, 3] = 255
            return
        if grows and bool(np.isin(img[..., 3], (0, 255)).all()):  # a heatmap: opaque or not
            big = fit(img)[y0 - y : y1 - y, x0 - x : x1 - x]
            opaque = big[..., 3] == 255
            self.px[y0:y1, x0:x1][opaque] = big[opaque]
            return
        alpha = img[..., 3].astype(np.float32) / 255.0
        premul = img[..., :3].astype(np.float32) * alpha[..., None]
        self.over(x, y, fit(premul), fit(alpha))

    def png(self, *, alpha: bool) -> bytes:
        """The canvas as PNG: RGBA with ``alpha``, else RGB."""
        from convfocus.io.images import png_bytes

        return png_bytes(self.px if alpha else self.px[..., :3])


def _as_u8(img: np.ndarray) -> np.ndarray:
    """Image values as uint8: floats are taken as 0..1, integers as 0..255 (as imshow)."""
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        img = img * 255.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_colorbar(canvas: _Canvas, x0: int, y0: int, width: int, height: int,
                   num_classes: int, buckets: Sequence[tuple[int, int]], pt: float) -> None:
    """The class colour bar at ``(x0, y0)``, ``width x height``: one band per class (class 0
    at the bottom), white lines between buckets, a tick at every class, labelled at each
    bucket's first class and the last class, and the legend's label turned beside it."""
    colors = class_colors(num_classes)
    y1 = y0 + height
    edges = [y1 - round(k * height / num_classes) for k in range(num_classes + 1)]
    for k in range(num_classes):
        canvas.fill(x0, edges[k + 1], x0 + width, edges[k], colors[k])
    sep = max(1, round(1.2 * pt))
    for lo, _ in buckets[1:]:
        if 0 < lo < num_classes:
            canvas.fill(x0, edges[lo] - sep // 2, x0 + width, edges[lo] - sep // 2 + sep,
                        (255, 255, 255))
    lw = max(1, round(0.8 * pt))
    canvas.frame(x0, y0, x0 + width, y1, _BLACK, lw)
    labelled = sorted({lo for lo, _ in buckets if 0 <= lo < num_classes} | {num_classes - 1})
    tick_x = x0 + width + lw
    label_x = tick_x + round(3.5 * pt) + round(3.5 * pt)
    right = label_x
    for k in range(num_classes):
        yc = y1 - (k + 0.5) * height / num_classes
        length = round(3.5 * pt) if k in labelled else round(2.0 * pt)
        canvas.fill(tick_x, math.floor(yc), tick_x + length, math.floor(yc) + lw, _BLACK)
        if k in labelled:
            right = max(right, canvas.text(label_x, yc, str(k), 9 * pt, anchor="lm")[2])
    lines = LEGEND_LABEL.replace(" (", "\n(").split("\n")  # "OOF class", "(0 in focus ..)"
    canvas.vtext(right + round(4 * pt), y0 + height / 2, lines, 9 * pt)


def render_figure(
    image: np.ndarray,
    *,
    title: str | None = None,
    num_classes: int = NUM_CLASSES,
    buckets: Sequence[tuple[int, int]] = BUCKETS,
    background: str = "black",
    show_no_tissue_key: bool = True,
    min_side_px: int = 360,
    max_side_px: int = 1400,
    dpi: int = 100,
) -> bytes:
    """Draw an RGB/RGBA image with a jet class colorbar legend; return PNG bytes.

    Parameters
    ----------
    image
        A heatmap (:func:`heatmap_rgba`, transparent where there is no tissue) or an
        overlay (:func:`overlay`).
    title
        Optional title above the image.
    background
        Colour behind transparent pixels (no tissue), black as in the paper's figures;
        ``"none"`` keeps them transparent (and the figure's margins too): an RGBA PNG, else
        RGB.
    show_no_tissue_key
        Add a small "no tissue" swatch under the colorbar.
    min_side_px, max_side_px
        The image is drawn with its longest side clamped to this range (nearest
        neighbour when enlarged, area averaging when reduced).
    dpi
        Pixels per inch of the text and lines, whose sizes are in points.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must be (h, w, 3|4), got shape {img.shape}")
    img = _as_u8(img)
    h, w = img.shape[:2]
    scale = min(max(1.0, min_side_px / max(h, w)), max_side_px / max(h, w))
    disp_w, disp_h = max(1, round(w * scale)), max(1, round(h * scale))
    pt = dpi / 72.0

    pad, top = 12, (40 if title else 12)
    legend_w = 130
    bar_h = max(disp_h, 320)
    fig_w = pad + disp_w + legend_w
    fig_h = top + max(disp_h, bar_h) + pad + (24 if show_no_tissue_key else 0)
    bg = _rgba(background)
    transparent = bg[3] < 255  # no tissue shows whatever lies underneath
    canvas = _Canvas(fig_w, fig_h, (255, 255, 255, 0) if transparent else (255, 255, 255, 255))

    canvas.fill(pad, top, pad + disp_w, top + disp_h, bg)
    canvas.image(pad, top, img, disp_w, disp_h)
    canvas.frame(pad, top, pad + disp_w, top + disp_h, _SPINE, max(1, round(0.8 * pt)))
    if title:
        canvas.text(pad, 26, title, 12 * pt)

    bar_x = pad + disp_w + 18
    _draw_colorbar(canvas, bar_x, top, 20, bar_h, num_classes, buckets, pt)
    if show_no_tissue_key:
        key_y = top + bar_h + 8
        canvas.fill(bar_x, key_y, bar_x + 20, key_y + 14, bg)
        canvas.frame(bar_x, key_y, bar_x + 20, key_y + 14, _BLACK, max(1, round(0.8 * pt)))
        canvas.text(pad + disp_w + 44, top + bar_h + 19, "no tissue", 9 * pt)
    return canvas.png(alpha=transparent)


def heatmap_png(
    classmap: np.ndarray,
    *,
    title: str | None = None,
    target_side_px: int = 900,
    num_classes: int = NUM_CLASSES,
    background: str = "black",
) -> bytes:
    """``heatmap.png``: the jet class map alone (no tissue = ``background``) with a legend.

    Cells are enlarged by an integer factor so the longest side is about
    ``target_side_px``.
    """
    cm = np.asarray(classmap)
    if cm.size == 0:
        raise ValueError("class map is empty")
    cell_px = max(1, target_side_px // max(cm.shape))
    rgba = heatmap_rgba(cm, cell_px=cell_px, num_classes=num_classes)
    return render_figure(rgba, title=title, num_classes=num_classes, background=background)


def overlay_png(
    thumbnail_rgb: np.ndarray,
    classmap: np.ndarray,
    grid: GridGeometry,
    *,
    l0_dimensions: tuple[int, int] | None = None,
    th_downsample: float | tuple[float, float] | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    num_classes: int = NUM_CLASSES,
    ink: np.ndarray | None = None,
) -> bytes:
    """:func:`overlay` drawn with the class legend (a figure; the scan's overlay.png is the
    overlay's own pixels, :func:`convfocus.grading.outputs.overlay_png`)."""
    img = overlay(thumbnail_rgb, classmap, grid, l0_dimensions=l0_dimensions,
                  th_downsample=th_downsample, alpha=alpha, num_classes=num_classes, ink=ink)
    return render_figure(img, title=title, num_classes=num_classes, show_no_tissue_key=False)


def class_counts(classes: np.ndarray, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Number of tissue cells per class, ``(num_classes,)`` int64 (-1 entries ignored)."""
    arr = np.asarray(classes).ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        arr = arr[np.isfinite(arr)]
    arr = arr.astype(np.int64)
    if arr.size and arr.max(initial=-1) >= num_classes:
        raise ValueError(f"class values must be < {num_classes}, got {int(arr.max())}")
    arr = arr[arr >= 0]
    return np.bincount(arr, minlength=num_classes)[:num_classes]


def _nice_ticks(vmax: float, max_intervals: int) -> tuple[list[float], int]:
    """Ticks ``0, step, 2 step .. <= vmax``, step 1, 2, 2.5 or 5 x 10^k, the smallest giving
    at most ``max_intervals`` intervals (as matplotlib's default locator); and the decimals
    their labels need."""
    raw = vmax / max(1, max_intervals)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    n = math.floor(vmax / step + 1e-9)
    decimals = next(d for d in range(8) if abs(round(step, d) - step) < 1e-9 * step)
    return [i * step for i in range(n + 1)], decimals


def histogram_png(
    classes: np.ndarray,
    *,
    title: str | None = None,
    num_classes: int = NUM_CLASSES,
    buckets: Sequence[tuple[int, int]] = BUCKETS,
    width_px: int = 900,
    height_px: int = 340,
    dpi: int = 100,
) -> bytes:
    """Bar chart of the share of tissue per class, bars in the class colours; PNG bytes (RGB).

    ``classes`` is a class map or any array of classes (-1 = no tissue, ignored).
    Buckets are shaded alternately and labelled with their share. ``dpi``: pixels per inch
    of the text and lines, whose sizes are in points.
    """
    counts = class_counts(classes, num_classes=num_classes)
    total = int(counts.sum())
    share = counts / total * 100.0 if total else np.zeros(num_classes)
    colors = class_colors(num_classes)
    pt = dpi / 72.0
    lw = max(1, round(0.8 * pt))
    tick = round(3.5 * pt)

    canvas = _Canvas(width_px, height_px, (255, 255, 255, 255))
    # the plot area: the matplotlib axes [0.08, 0.16, 0.9, 0.7 | 0.76] of the figure
    ax_l, ax_r = round(0.08 * width_px), round(0.98 * width_px)
    ax_b = round(0.84 * height_px)
    ax_t = round(ax_b - (0.7 if title else 0.76) * height_px)
    x_lo, x_hi = -0.7, num_classes - 0.3
    ymax = max(5.0, float(share.max()) * 1.18) if total else 5.0

    def px_x(v: float) -> float:
        return ax_l + (v - x_lo) / (x_hi - x_lo) * (ax_r - ax_l)

    def px_y(v: float) -> float:
        return ax_b - v / ymax * (ax_b - ax_t)

    for i, (lo, hi) in enumerate(buckets):
        if i % 2 == 0:
            canvas.fill(max(ax_l, round(px_x(lo - 0.5))), ax_t,
                        min(ax_r, round(px_x(hi + 0.5))), ax_b, _BAND)
    for k in range(num_classes):
        if share[k] <= 0:
            continue
        bx0, bx1 = round(px_x(k - 0.4)), round(px_x(k + 0.4))
        by0 = min(ax_b - 1, round(px_y(float(share[k]))))  # at least a line of pixels
        canvas.fill(bx0, by0, bx1, ax_b, colors[k])
        # the bars' thin dark edge (0.4 pt): half-way between the colour and #333333
        edge = tuple((int(c) + 0x33) // 2 for c in colors[k])
        canvas.frame(bx0 + 1, by0 + 1, bx1 - 1, ax_b + 1, edge)

    # axes: left and bottom spines, ticks and their labels
    canvas.fill(ax_l - lw, ax_t, ax_l, ax_b + lw, _BLACK)
    canvas.fill(ax_l - lw, ax_b, ax_r, ax_b + lw, _BLACK)
    label_top = ax_b + lw + tick + round(3.5 * pt)
    label_bottom = label_top
    for k in range(num_classes):
        x = math.floor(px_x(k))
        canvas.fill(x, ax_b + lw, x + lw, ax_b + lw + tick, _BLACK)
        if k % 5 == 0 or k == num_classes - 1:
            label_bottom = max(label_bottom,
                               canvas.text(px_x(k), label_top, str(k), 9 * pt, anchor="mt")[3])
    max_intervals = max(1, min(9, int((ax_b - ax_t) / pt / (2 * 9))))
    ticks, decimals = _nice_ticks(ymax, max_intervals)
    label_left = ax_l
    for v in ticks:
        y = math.floor(px_y(v))
        canvas.fill(ax_l - lw - tick, y, ax_l - lw, y + lw, _BLACK)
        box = canvas.text(ax_l - lw - tick - round(3.5 * pt), px_y(v), f"{v:.{decimals}f}",
                          9 * pt, anchor="rm")
        label_left = min(label_left, box[0])
    canvas.text((ax_l + ax_r) / 2, label_bottom + round(4 * pt), LEGEND_LABEL, 9 * pt,
                anchor="mt")
    canvas.vtext(label_left - round(4 * pt), (ax_t + ax_b) / 2, ["share of tissue (%)"], 9 * pt,
                 right=True)

    for lo, hi in buckets:
        b = float(share[lo : hi + 1].sum())
        canvas.text(px_x((lo + hi) / 2), px_y(ymax * 0.97), f"{lo}-{hi}: {b:.1f} %", 8.5 * pt,
                    _DARK, anchor="mt")
    if not total:
        canvas.text(px_x(num_classes / 2), px_y(ymax / 2), "no tissue graded", 12 * pt, _MUTED,
                    anchor="mm")
    if title:
        canvas.text(ax_l, round(0.07 * height_px), title, 11 * pt)
    return canvas.png(alpha=False)
