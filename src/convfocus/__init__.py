"""convfocus: find and grade out-of-focus regions in whole-slide pathology images.

Implements ConvFocus (Kohlberger et al., J Pathol Inform 2019): a shallow
Inception-v3 stem trained on semi-synthetic defocus grades every 139 px window
(about 35 µm at 40x) of a slide on a 30-class scale.
"""

from typing import Any

__version__ = "0.2.0"

MODEL_MPP = 0.25
"""Pixel size (µm/px) at which the classes are defined (40x)."""

NUM_CLASSES = 30
"""Number of OOF classes: 0 (in focus) .. 29 (strongly out of focus)."""

#: The Python interface (:mod:`convfocus.api`), loaded on first use so that
#: ``import convfocus`` stays cheap (no ONNX Runtime, no OpenSlide, no PyTorch).
_API = (
    "ConvFocusError", "Grader", "GridGeometry", "ModelSpec", "ScanOptions", "SlideInfo",
    "SlideReader", "SlideResult", "build_summary", "cut_windows", "grade_slide", "heatmap_png",
    "load_grader", "open_slide", "overlay_png", "save_outputs", "scan_path", "tiles_rows",
    "tissue_windows", "write_arrays", "write_outputs", "write_regions", "write_tiles",
)


def __getattr__(name: str) -> Any:
    if name in _API:
        # imported by name at first use: lower layers import this package for its constants
        # and must not be seen to import the interface above them (docs/architecture.md)
        import importlib

        return getattr(importlib.import_module("convfocus.api"), name)
    raise AttributeError(f"module 'convfocus' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
