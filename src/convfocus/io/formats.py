"""What a slide is: file kinds, suffixes, pixel sizes in metadata, slides in folders.

:func:`find_slides` is the one place that decides which files (and DICOM WSI
folders) a folder of slides holds; :func:`sniff` tells file kinds apart by their
first bytes, whatever their names.
"""

from __future__ import annotations

import math
import os
import re
import struct
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


#: Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., IFD8).
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}
#: Tags whose values a slide reader needs.
_TIFF_NEEDED_TAGS = {270: "image description", 273: "strip offsets", 279: "strip byte counts",
                     324: "tile offsets", 325: "tile byte counts", 330: "SubIFD list",
                     347: "JPEG tables"}
_SUBIFDS = 330


def tiff_truncation(path: Path, *, max_ifds: int = 100_000) -> str | None:
    """Why a TIFF file is cut short, or None when it is whole as far as its structure goes.

    Walks the image directories (IFDs, SubIFDs included): each directory, the values of
    the tags a reader needs and the next directory must lie inside the file. A file
    copied or downloaded only in part then says so, in place of whatever a TIFF library
    makes of the missing bytes. Classic TIFF and BigTIFF, either byte order. Raises
    OSError when the file cannot be read.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 4:
            return None
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            n_fmt, n_len, entry_len, off_fmt, off_len, first_at = "H", 2, 12, "I", 4, 4
        elif version == 43:
            n_fmt, n_len, entry_len, off_fmt, off_len, first_at = "Q", 8, 20, "Q", 8, 8
        else:
            return None

        def cut(what: str, at: int, end: int | None = None) -> str:
            if at < size and end is not None:
                return (f"truncated file: it ends at byte {size:,}, in the middle of {what} "
                        f"(bytes {at:,}-{end:,})")
            return f"truncated file: it ends at byte {size:,}, before {what} at byte {at:,}"

        if len(head) < first_at + off_len:
            return cut("the first image directory's position", first_at)
        first = struct.unpack(order + off_fmt, head[first_at : first_at + off_len])[0]
        chains: list[tuple[int, str]] = [(first, "the first image directory")]
        seen: set[int] = set()
        while chains:
            offset, what = chains.pop()
            while offset:
                if offset in seen or len(seen) >= max_ifds:
                    break  # a loop of directories is not a truncation
                seen.add(offset)
                fh.seek(offset)
                raw = fh.read(n_len)
                if len(raw) < n_len:
                    return cut(what, offset, offset + n_len)
                n = struct.unpack(order + n_fmt, raw)[0]
                body = fh.read(n * entry_len + off_len)
                if len(body) < n * entry_len + off_len:
                    return cut(what, offset, offset + n_len + n * entry_len + off_len)
                for k in range(n):
                    entry = body[k * entry_len : (k + 1) * entry_len]
                    tag, typ = struct.unpack(order + "HH", entry[:4])
                    count = struct.unpack(order + off_fmt, entry[4 : 4 + off_len])[0]
                    nbytes = count * _TIFF_TYPE_BYTES.get(typ, 0)
                    if tag not in _TIFF_NEEDED_TAGS or nbytes == 0:
                        continue
                    inline = nbytes <= off_len
                    at = 0 if inline else struct.unpack(order + off_fmt, entry[-off_len:])[0]
                    if not inline and at + nbytes > size:
                        return cut(f"the {_TIFF_NEEDED_TAGS[tag]} (TIFF tag {tag})", at,
                                   at + nbytes)
                    if tag == _SUBIFDS and typ in (4, 13, 16, 18):
                        if inline:
                            raw = entry[-off_len:][:nbytes]
                        else:
                            fh.seek(at)
                            raw = fh.read(nbytes)
                        fmt = "I" if typ in (4, 13) else "Q"
                        chains += [(o, "a reduced-resolution image directory")
                                   for o in struct.unpack(f"{order}{count}{fmt}", raw)]
                offset = struct.unpack(order + off_fmt, body[-off_len:])[0]
                what = "the next image directory"
                if offset >= size:
                    return cut(what, offset)
    return None


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
