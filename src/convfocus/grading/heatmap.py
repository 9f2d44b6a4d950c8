"""Class map -> colour images: jet heatmaps, overlays on the thumbnail, legends.

A class map is an integer grid ``(rows, cols)`` of OOF classes ``0..num_classes-1``
with ``-1`` where there is no tissue, checked once where it is made
(:class:`~convfocus.grading.result.SlideResult`); the functions here trust it. Cell
``(row, col)`` belongs to the window grid described by
:class:`~convfocus.types.GridGeometry` (``grid`` in ``summary.json``): it starts at level-0 pixel ``(x0 + col * stride, y0 + row * stride)``. Windows
overlap (139 px window, 128 px stride), so for drawing each cell owns only its
``stride x stride`` square, which tiles the plane without gaps or overlaps.

Everything here is pure: arrays in, arrays or PNG bytes out. Figures are drawn
with :class:`matplotlib.figure.Figure` on the Agg canvas, never through pyplot.

References: the "jet" colormap from class 0 (blue, in focus) to 29 (red,
strongly out of focus), Kohlberger et al. 2019, Figure 3.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.types import OOF_BUCKETS as BUCKETS
from convfocus.types import GridGeometry

LEGEND_LABEL = "OOF class (0 in focus .. 29 strongly out of focus)"


# --- colours -----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _class_colors_cached(num_classes: int) -> np.ndarray:
    from matplotlib import colormaps

    jet = colormaps["jet"]
    pos = np.linspace(0.0, 1.0, num_classes) if num_classes > 1 else np.zeros(1)
    rgb = np.asarray(jet(pos))[:, :3]
    out = np.round(rgb * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def class_colors(num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Jet colours of the classes, ``(num_classes, 3)`` uint8: class 0 dark blue .. last red.

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
    th = th[..., :3].astype(np.float32)
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
    paint = cls >= 0
    colors = class_colors(num_classes).astype(np.float32)
    th[paint] = (1.0 - alpha) * th[paint] + alpha * colors[cls[paint]]
    if ink is not None:
        ink = np.asarray(ink, dtype=bool)
        dark = hatch(th.shape[:2]) & ink
        light = hatch(th.shape[:2], phase=0.5) & ink
        th[dark] = 0.2 * th[dark] + 0.8 * np.float32(30.0)
        th[light] = 0.2 * th[light] + 0.8 * np.float32(245.0)
    return np.clip(np.round(th), 0, 255).astype(np.uint8)


def hatch(shape: tuple[int, int], *, period_px: int | None = None, phase: float = 0.0
          ) -> np.ndarray:
    """``(h, w)`` bool diagonal lines (down to the left), a quarter of each ``period_px``
    (default: about 1/150 of the longest side, at least 8 px) wide, shifted by ``phase``
    of a period."""
    h, w = shape
    period = period_px or max(8, max(h, w) // 150)
    yy, xx = np.ogrid[:h, :w]
    return ((xx + yy + round(phase * period)) % period) < max(2, period // 4)


# --- figures with a legend ---------------------------------------------------------------------


def _new_figure(width_px: int, height_px: int, dpi: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _to_png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
                metadata={"Software": "convfocus"})
    return buf.getvalue()


def _draw_colorbar(fig: Any, cax: Any, num_classes: int, buckets: Sequence[tuple[int, int]]) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(class_colors(num_classes) / 255.0)
    norm = BoundaryNorm(np.arange(-0.5, num_classes + 0.5), ncolors=num_classes)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="vertical")
    ticks = sorted({lo for lo, _ in buckets} | {num_classes - 1})
    cb.set_ticks(ticks)
    cb.set_ticklabels([str(t) for t in ticks])
    cb.ax.tick_params(labelsize=9)
    for lo, _ in buckets[1:]:
        cb.ax.axhline(lo - 0.5, color="white", linewidth=1.2)
    label = LEGEND_LABEL.replace(" (", "\n(")
    cb.set_label(label, fontsize=9)


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
        ``"none"`` keeps them transparent (and the figure's margins too).
    show_no_tissue_key
        Add a small "no tissue" swatch under the colorbar.
    min_side_px, max_side_px
        The image is drawn with its longest side clamped to this range (nearest
        neighbour when enlarged, antialiased when reduced).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must be (h, w, 3|4), got shape {img.shape}")
    h, w = img.shape[:2]
    scale = min(max(1.0, min_side_px / max(h, w)), max_side_px / max(h, w))
    disp_w, disp_h = max(1, round(w * scale)), max(1, round(h * scale))

    pad, top = 12, (40 if title else 12)
    legend_w = 130
    bar_h = max(disp_h, 320)
    fig_w = pad + disp_w + legend_w
    fig_h = top + max(disp_h, bar_h) + pad + (24 if show_no_tissue_key else 0)
    fig = _new_figure(fig_w, fig_h, dpi)
    if background == "none":  # transparent: no tissue shows whatever lies underneath
        fig.set_facecolor((1.0, 1.0, 1.0, 0.0))

    def box(x: float, y_top: float, bw: float, bh: float) -> list[float]:
        return [x / fig_w, 1.0 - (y_top + bh) / fig_h, bw / fig_w, bh / fig_h]

    ax = fig.add_axes(box(pad, top, disp_w, disp_h))
    ax.set_facecolor(background)
    ax.imshow(img, interpolation="nearest" if scale >= 1.0 else "antialiased",
              extent=(0, w, h, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#888888")
    if title:
        fig.text(pad / fig_w, 1.0 - 26 / fig_h, title, fontsize=12, ha="left", va="baseline")

    cax = fig.add_axes(box(pad + disp_w + 18, top, 20, bar_h))
    _draw_colorbar(fig, cax, num_classes, buckets)
    if show_no_tissue_key:
        kax = fig.add_axes(box(pad + disp_w + 18, top + bar_h + 8, 20, 14))
        kax.set_facecolor(background)
        kax.set_xticks([])
        kax.set_yticks([])
        fig.text((pad + disp_w + 44) / fig_w, 1.0 - (top + bar_h + 19) / fig_h, "no tissue",
                 fontsize=9, ha="left", va="baseline")
    return _to_png(fig, dpi)


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
    """Bar chart of the share of tissue per class, bars in the class colours; PNG bytes.

    ``classes`` is a class map or any array of classes (-1 = no tissue, ignored).
    Buckets are shaded alternately and labelled with their share.
    """
    counts = class_counts(classes, num_classes=num_classes)
    total = int(counts.sum())
    share = counts / total * 100.0 if total else np.zeros(num_classes)
    colors = class_colors(num_classes) / 255.0

    fig = _new_figure(width_px, height_px, dpi)
    ax = fig.add_axes([0.08, 0.16, 0.9, 0.7 if title else 0.76])
    for i, (lo, hi) in enumerate(buckets):
        if i % 2 == 0:
            ax.axvspan(lo - 0.5, hi + 0.5, color="#f0f0f0", zorder=0)
    x = np.arange(num_classes)
    ax.bar(x, share, width=0.8, color=colors, edgecolor="#333333", linewidth=0.4, zorder=2)
    ymax = max(5.0, float(share.max()) * 1.18) if total else 5.0
    ax.set_ylim(0, ymax)
    ax.set_xlim(-0.7, num_classes - 0.3)
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) if i % 5 == 0 or i == num_classes - 1 else "" for i in x],
                       fontsize=9)
    ax.tick_params(axis="y", labelsize=9)
    ax.set_xlabel(LEGEND_LABEL, fontsize=9)
    ax.set_ylabel("share of tissue (%)", fontsize=9)
    for lo, hi in buckets:
        b = float(share[lo : hi + 1].sum())
        ax.text((lo + hi) / 2, ymax * 0.97, f"{lo}-{hi}: {b:.1f} %", ha="center", va="top",
                fontsize=8.5, color="#333333", zorder=3)
    if not total:
        ax.text(num_classes / 2, ymax / 2, "no tissue graded", ha="center", va="center",
                fontsize=12, color="#666666")
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    if title:
        fig.text(0.08, 0.93, title, fontsize=11, ha="left")
    return _to_png(fig, dpi)
