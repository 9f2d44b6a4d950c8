"""The Python interface for pipelines: open a slide, grade it, write any of its outputs.

::

    import convfocus

    grader = convfocus.load_grader()                      # the shipped model
    with convfocus.open_slide("slide.svs") as slide:
        result = convfocus.grade_slide(slide, grader)     # a SlideResult
    print(result.verdict()["verdict"])                    # pass / review / rescan
    convfocus.save_outputs(result, "out/slide")           # the folder `convfocus scan` writes

:func:`grade_slide` returns a :class:`SlideResult`: the class map (``-1`` = no tissue),
the probabilities, the grid geometry (cell ``(row, col)`` on level 0), the slide's size
and pixel size, the model's settings and the verdict profile, checked once when it is
made. Every output is made from it as it is: :func:`save_outputs` writes the whole
output folder (under a temporary name, then put in place), :func:`write_outputs` the
same files into an existing folder, and :func:`write_tiles`, :func:`write_arrays`,
:func:`write_regions`, :func:`heatmap_png`, :func:`overlay_png`, :func:`build_summary`
one each. ``convfocus scan`` is :func:`scan_path` for every slide: :func:`open_slide`,
:func:`grade_slide`, :func:`save_outputs`.

Windows can be graded without a slide: :func:`cut_windows` (every window of an image on
the grid) or :func:`tissue_windows` (those on tissue), then
``grader.predict_windows(windows)`` gives ``(n, 30)`` probabilities. Images must be at
the model's pixel size (``grader.spec.mpp``, 0.25 µm/px).

Expected failures raise :class:`~convfocus.errors.ConvFocusError` subclasses.
"""

from __future__ import annotations

from convfocus.errors import ConvFocusError
from convfocus.grading.infer import Grader, load_grader
from convfocus.grading.outputs import (
    heatmap_png,
    overlay_png,
    tiles_rows,
    write_arrays,
    write_outputs,
    write_regions,
    write_tiles,
)
from convfocus.grading.report import build_summary
from convfocus.grading.result import SlideInfo, SlideResult
from convfocus.grading.scan import ScanOptions, grade_slide, save_outputs, scan_path
from convfocus.grading.tiling import cut_windows, tissue_windows
from convfocus.io.readers import SlideReader, open_slide
from convfocus.types import GridGeometry, ModelSpec

__all__ = [
    "ConvFocusError",
    "Grader",
    "GridGeometry",
    "ModelSpec",
    "ScanOptions",
    "SlideInfo",
    "SlideReader",
    "SlideResult",
    "build_summary",
    "cut_windows",
    "grade_slide",
    "heatmap_png",
    "load_grader",
    "open_slide",
    "overlay_png",
    "save_outputs",
    "scan_path",
    "tiles_rows",
    "tissue_windows",
    "write_arrays",
    "write_outputs",
    "write_regions",
    "write_tiles",
]
