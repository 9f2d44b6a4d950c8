"""The output files of one graded slide, each made from its :class:`SlideResult` as it is.

``OUT/<stem>/`` holds ``tiles.csv``, ``classmap.npy``, ``probs.npy``, ``thumbnail.png``,
``classmap.png``, ``heatmap.png``, ``overlay.png``, ``oof_regions.geojson``,
``report.html`` and ``summary.json`` (written last: a folder with it is complete).
:func:`write_outputs` writes them all; each ``write_*`` function writes one, atomically
(:mod:`convfocus.io.atomic`), and the ``*_png`` functions return the images' bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.grading import heatmap, report
from convfocus.grading.result import SlideResult
from convfocus.io.atomic import write_atomic, write_bytes_atomic, write_json_atomic
from convfocus.synthesis.defocus import class_centre_px

__all__ = [
    "OUTPUT_FILES",
    "TILES_HEADER",
    "heatmap_png",
    "histogram_png",
    "overlay_png",
    "overlay_rgb",
    "tiles_rows",
    "write_arrays",
    "write_outputs",
    "write_regions",
    "write_tiles",
]

#: Files a complete output folder holds; ``summary.json`` is written last.
OUTPUT_FILES = (
    "tiles.csv", "classmap.npy", "probs.npy", "thumbnail.png", "classmap.png", "heatmap.png",
    "overlay.png",
    "oof_regions.geojson", "report.html", "summary.json",
)

#: Longest side of ``heatmap.png`` is about this many pixels (an integer number per cell).
HEATMAP_SIDE_PX = 900

#: Longest side of the overlay embedded in report.html (overlay.png keeps the thumbnail's).
REPORT_OVERLAY_PX = 1400

TILES_HEADER = ["x_px", "y_px", "row", "col", "oof_class", "expected_class", "confidence",
                "blur_um", *(f"p{i}" for i in range(NUM_CLASSES))]

#: ``f"{i / 10000:.4f},"`` for i = 0..10000: a probability as tiles.csv writes it
_P_TEXT = np.array([f"{i / 10000:.4f}," for i in range(10001)], dtype="S7")


# --- tiles.csv ---------------------------------------------------------------------------------


def tiles_rows(result: SlideResult) -> Iterator[list[Any]]:
    """Rows of tiles.csv: one per graded window, row-major (``TILES_HEADER``)."""
    for head, p in _tile_values(result):
        yield [*head, *p.split(",")]


def probability_texts(p: np.ndarray) -> list[str]:
    """Each row of ``p`` (n, k) in [0, 1] as tiles.csv writes it: ``f"{v:.4f}"`` of each
    value, comma-separated; from a table of the 10,001 texts, in numpy (a tenth of the
    time of formatting 30 floats a row), Python's own formatting only for a row with a
    value within 1e-6 of a rounding tie (multiplying by 10,000 could round it the other
    way) or one the table has no text for (outside [0, 1], not a number, -0.0)."""
    x = np.asarray(p, np.float64) * 1e4
    finite = np.isfinite(x)
    x = np.where(finite, x, 0.0)
    q = np.rint(x).astype(np.intp)
    # Python's formatting where the table cannot give its text: near a tie, outside [0, 1],
    # not a number, -0.0
    other = (np.abs(x - np.floor(x) - 0.5) < 1e-6) | ~finite | (q < 0) | (q > 10000) | (
        np.signbit(x) & (q == 0))
    blob = _P_TEXT[np.clip(q, 0, 10000)].tobytes().decode("ascii")
    w = 7 * x.shape[1]
    rows = [blob[i : i + w - 1] for i in range(0, len(blob), w)]
    for i in np.flatnonzero(other.any(axis=1)).tolist():
        rows[i] = ",".join(f"{v:.4f}" for v in np.asarray(p[i], np.float64).tolist())
    return rows


def _tile_values(
    result: SlideResult, chunk: int = 8192
) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(x, y, row, col, class, expected class, confidence, blur) and the normalised
    probabilities' text (:func:`probability_texts`) of each graded window; numpy over
    chunks of windows, Python per row only where tiles.csv needs Python's own rounding.

    ``blur_um`` is the nominal bokeh radius of the class with the model's class spacing,
    in µm at the pixel size the windows were graded at.
    """
    spec, grid = result.spec, result.grid
    idx = np.arange(spec.num_classes, dtype=np.float64)
    blur = [round(class_centre_px(k, spacing=spec.spacing, num_classes=spec.num_classes)
                  * result.graded_mpp, 3) for k in range(spec.num_classes)]
    ox, oy = grid.l0_origin_px
    s = grid.l0_stride_px
    cells = result.cells
    for i in range(0, len(cells), chunk):
        rc = cells[i : i + chunk]
        p = result.probs[rc[:, 0], rc[:, 1]].astype(np.float64)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        expected = (p @ idx).tolist()
        conf = p.max(axis=1).tolist()
        ks = result.classmap[rc[:, 0], rc[:, 1]].tolist()
        for (r, c), k, e, m, text in zip(rc.tolist(), ks, expected, conf, probability_texts(p),
                                         strict=True):
            yield ((round(ox + c * s), round(oy + r * s), r, c, k, round(e, 3), round(m, 4),
                    blur[k]), text)


def write_tiles(result: SlideResult, path: str | os.PathLike[str]) -> Path:
    """Write ``tiles.csv``: one row per graded window."""

    def write(tmp: Path) -> None:
        # the lines csv.writer would write (no field needs quoting), at a fraction of the cost
        with open(tmp, "w", newline="") as fh:
            fh.write(",".join(TILES_HEADER) + "\n")
            fh.writelines(f"{x},{y},{r},{c},{k},{e!r},{m!r},{b!r},{p}\n"
                          for (x, y, r, c, k, e, m, b), p in _tile_values(result))

    return write_atomic(path, write)


# --- arrays and images -------------------------------------------------------------------------


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    write_atomic(path, write)


def write_arrays(result: SlideResult, folder: str | os.PathLike[str]) -> None:
    """Write ``classmap.npy`` (int16, -1 = no tissue) and ``probs.npy`` (float16)."""
    _save_npy(Path(folder) / "classmap.npy", result.classmap)
    _save_npy(Path(folder) / "probs.npy", result.probs)


def classmap_rgba(result: SlideResult) -> np.ndarray:
    """``classmap.png``'s pixels: the class map itself in jet colours, one square per cell,
    transparent where there is no tissue (it lies over the grid exactly, for viewers)."""
    cell_px = max(1, HEATMAP_SIDE_PX // max(result.classmap.shape))
    return heatmap.heatmap_rgba(result.classmap, cell_px=cell_px)


def heatmap_png(result: SlideResult) -> bytes:
    """``heatmap.png``: the class map in jet colours with a legend, no tissue transparent."""
    return heatmap.heatmap_png(result.classmap, background="none")


def overlay_rgb(result: SlideResult) -> np.ndarray:
    """The class map over the slide's thumbnail, ink hatched: (h, w, 3) uint8, the
    thumbnail's size."""
    return heatmap.overlay(result.thumbnail, result.classmap, result.grid,
                           th_downsample=result.th_downsample, ink=result.ink_mask)


def overlay_png(result: SlideResult) -> bytes:
    """``overlay.png``: :func:`overlay_rgb` as PNG, no legend (heatmap.png and report.html
    carry it)."""
    from convfocus.io.images import png_bytes

    return png_bytes(overlay_rgb(result))


def histogram_png(result: SlideResult) -> bytes:
    """The report's bar chart of the share of tissue per class."""
    return heatmap.histogram_png(result.classmap)


def write_regions(result: SlideResult, path: str | os.PathLike[str]) -> Path:
    """Write ``oof_regions.geojson``: the OOF regions as a QuPath FeatureCollection."""
    return write_json_atomic(path, result.regions)


# --- everything --------------------------------------------------------------------------------


def write_outputs(
    result: SlideResult, folder: str | os.PathLike[str], *, runtime_start: float | None = None
) -> None:
    """Write every output file of one slide into the existing ``folder``; summary.json last.

    ``runtime_start``: :func:`time.perf_counter` when the scan began, for ``runtime_s`` in
    the summary (default: the time spent grading). The images are drawn and encoded in two
    more threads (OpenCV and numpy leave the interpreter's lock) while tiles.csv is written.
    """
    from convfocus.io.atomic import write_text_atomic
    from convfocus.io.images import opencv_single_threaded, png_bytes, resize, write_png

    folder = Path(folder)

    def maps() -> tuple[bytes, bytes]:
        write_png(folder / "thumbnail.png", result.thumbnail)
        write_png(folder / "classmap.png", classmap_rgba(result))
        heat = heatmap_png(result)
        write_bytes_atomic(folder / "heatmap.png", heat)
        return heat, histogram_png(result)

    def overlays() -> bytes:
        over = overlay_rgb(result)
        write_bytes_atomic(folder / "overlay.png", png_bytes(over))
        side = max(over.shape[:2])
        if side > REPORT_OVERLAY_PX:  # the report shows it at a few hundred pixels
            over = resize(over, scale=REPORT_OVERLAY_PX / side)
        return png_bytes(over)

    with opencv_single_threaded(), ThreadPoolExecutor(max_workers=2) as pool:
        drawn, overlaid = pool.submit(maps), pool.submit(overlays)
        write_tiles(result, folder / "tiles.csv")
        write_arrays(result, folder)
        write_regions(result, folder / "oof_regions.geojson")
        (heat, hist_png), over_png = drawn.result(), overlaid.result()
    runtime_s = None if runtime_start is None else time.perf_counter() - runtime_start
    summary = report.build_summary(result, runtime_s=runtime_s)
    html = report.render_report_html(summary, overlay_png=over_png, heatmap_png=heat,
                                     histogram_png=hist_png, geojson=result.regions)
    write_text_atomic(folder / "report.html", html)
    write_json_atomic(folder / "summary.json", summary)
