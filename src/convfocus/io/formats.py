"""What a slide is: file kinds, suffixes, pixel sizes in metadata, slides in folders.

:func:`find_slides` is the one place that decides which files (and DICOM WSI
folders) a folder of slides holds; :func:`sniff` tells file kinds apart by their
first bytes, whatever their names.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MPP_RANGE",
    "find_slides",
    "is_dicom_folder",
    "mpp_plausible",
    "supported_suffixes",
]

supported_suffixes: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ome.tif",
    ".ome.tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".svslide",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".webp",
)
"""File suffixes that :func:`convfocus.io.readers.open_slide` opens (DICOM WSI folders are
opened too)."""

MPP_RANGE: tuple[float, float] = (0.05, 20.0)
"""Plausible pixel sizes in µm/px; values outside raise :class:`PixelSizeError`."""


def mpp_plausible(mpp: float | None) -> bool:
    """True for a finite pixel size within :data:`MPP_RANGE`."""
    return mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


# --- slides in folders ---------------------------------------------------------------------------


def is_dicom_folder(path: Path) -> bool:
    """True for a folder holding a DICOM WSI: a ``DICOMDIR`` or ``.dcm`` files of its own."""
    try:
        return _dicom_files([f.name for f in path.iterdir() if f.is_file()])
    except OSError:  # not a folder, or unreadable
        return False


def _dicom_files(names: list[str]) -> bool:
    return "DICOMDIR" in names or any(n.lower().endswith(".dcm") for n in names)


def find_slides(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[Path]:
    """The slides that ``paths`` name: a file or a DICOM WSI folder as it is; for any
    other folder, the slide files in it (by suffix) and each DICOM WSI folder in it as
    one slide, in sorted order, hidden files and folders left out.

    ``recursive``: search subfolders at any depth; otherwise only the folder's own files
    and the DICOM WSI folders directly inside it. A folder with no slide in it yields
    nothing.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir() or is_dicom_folder(p):
            found.append(p)
            continue
        inside: list[Path] = []
        for root, dirs, files in os.walk(p):
            here = Path(root)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if here != p and _dicom_files(files):
                inside.append(here)  # one slide: its instances are not slides of their own
                dirs.clear()
                continue
            if here == p or recursive:
                inside += [here / f for f in files if not f.startswith(".")
                           and suffix_of(Path(f)) in supported_suffixes and (here / f).is_file()]
            if not recursive and here != p:
                dirs.clear()
        found += sorted(inside)
    return found


# --- file kinds and metadata ---------------------------------------------------------------------


def read_head(path: Path, n: int = 512) -> bytes:
    """The first ``n`` bytes of a file (what :func:`sniff` needs). Raises OSError."""
    with open(path, "rb") as fh:
        return fh.read(n)


def sniff(head: bytes) -> str:
    """Kind of file from its first bytes (:func:`read_head`): ``tiff``, ``dicom``, ``png``,
    ``jpeg``, ``image`` (BMP, WebP) or ``other``."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    return "other"


def suffix_of(path: Path) -> str:
    """Lower-case suffix, ``.ome.tif``/``.ome.tiff`` as one."""
    name = path.name.lower()
    for double in (".ome.tiff", ".ome.tif"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def openslide_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format (``aperio``, ``hamamatsu``, ...), or None."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(path)
    except (openslide.OpenSlideError, OSError, ValueError):
        return None


def _aperio_mpp(description: str) -> float | None:
    m = re.search(r"\|\s*MPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", description)
    return float(m.group(1)) if m else None


_OME_UNITS_UM = {
    "µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
    "m": 1e6, "pm": 1e-6,
}  # fmt: skip


def _ome_mpp(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            factor = _OME_UNITS_UM.get(unit)
            if factor is None:
                return None
            return float(el.attrib["PhysicalSizeX"]) * factor
    return None


def _resolution_mpp(page: Any) -> float | None:
    """Pixel size from XResolution / ResolutionUnit (inch or centimetre)."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    value = tag.value
    try:
        px_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if um_per_unit is None or not px_per_unit > 0:
        return None
    return um_per_unit / px_per_unit


def tiff_mpp(tif: Any, page0: Any) -> float | None:
    """Level-0 pixel size in µm/px from a TIFF's metadata (Aperio, OME, resolution tags)."""
    mpp = None
    if tif.is_svs:
        mpp = _aperio_mpp(page0.description)
    elif tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata)
    if mpp is None:
        mpp = _resolution_mpp(page0)
    return mpp
