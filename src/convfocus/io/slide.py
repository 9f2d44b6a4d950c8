"""Open and write slide and image files: the only module that touches image files.

One reader interface (:class:`SlideReader`) over several backends:

- tiled JPEG TIFF (Aperio SVS, generic pyramidal TIFF, OME-TIFF): tile bytes are read
  directly and decoded with simplejpeg (imagecodecs where needed), on a thread pool;
- other TIFF compressions (JPEG 2000, LZW, ...): tiffslide;
- NDPI, MIRAX and other vendor formats: OpenSlide;
- DICOM WSI (a folder or a file): wsidicom;
- plain PNG / JPEG / non-tiled TIFF images: one level, decoded whole.

Coordinates follow OpenSlide: ``read_region`` takes the level-0 position of the
top-left pixel, a level index and a size in pixels of that level.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import cv2
import numpy as np

from convfocus import MODEL_MPP
from convfocus.errors import (
    OutputError,
    PixelSizeError,
    SlideReadError,
    UnsupportedFormatError,
)
from convfocus.io.atomic import write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "MPP_RANGE",
    "SlideReader",
    "image_suffixes",
    "open_slide",
    "read_image",
    "supported_suffixes",
    "write_image",
    "write_png",
    "write_pyramidal_tiff",
]

image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Plain image suffixes that :func:`read_image` reads."""

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
"""File suffixes that :func:`open_slide` opens (DICOM WSI folders are opened too)."""

MPP_RANGE: tuple[float, float] = (0.05, 20.0)
"""Plausible pixel sizes in µm/px; values outside raise :class:`PixelSizeError`."""

_OPENSLIDE_VENDORS_OWN_TIFF = frozenset({"aperio", "generic-tiff"})
_WHITE = 255


@runtime_checkable
class SlideReader(Protocol):
    """A whole-slide image or plain image opened for reading.

    ``read_region`` returns RGB uint8 ``(h, w, 3)``, alpha composited on white;
    areas outside the slide are white (255).
    """

    path: Path
    format: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def get_thumbnail(self, max_size: int) -> np.ndarray: ...

    def close(self) -> None: ...


# --- pixel helpers -------------------------------------------------------------------------------


def _to_rgb_u8(arr: np.ndarray) -> np.ndarray:
    """Convert gray / RGB / RGBA of any integer or float dtype to RGB uint8 on white."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"not an image array: shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    else:
        info = np.iinfo(a.dtype)
        scale = 255.0 / max(int(info.max), 1)
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    c = a.shape[2]
    if c in (2, 4):
        alpha = a[:, :, -1:].astype(np.uint16)
        colour = a[:, :, :-1].astype(np.uint16)
        a = ((colour * alpha + _WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Size of a ``width x height`` image scaled so its longest side is at most max_size."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _mpp_plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


# --- base reader ---------------------------------------------------------------------------------


class _BaseReader:
    """Shared behaviour of all readers: argument checks, clipping, thumbnails.

    Subclasses fill the attributes and implement ``_read_level`` for a rectangle
    that lies inside the level.
    """

    path: Path
    format: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    mpp_from_metadata: float | None = None

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (w, h)`` pixels of ``level`` whose top-left is at level-0 ``l0_xy``.

        Returns RGB uint8 ``(h, w, 3)``; pixels outside the slide are white.
        """
        if not 0 <= int(level) < len(self.level_dimensions) or int(level) != level:
            raise ValueError(f"level {level} out of range 0..{len(self.level_dimensions) - 1}")
        level = int(level)
        w, h = (int(s) for s in size)
        if w <= 0 or h <= 0 or (w, h) != tuple(size):
            raise ValueError(f"size must be two positive integers, got {size!r}")
        ds = self.level_downsamples[level]
        lx = math.floor(float(l0_xy[0]) / ds)
        ly = math.floor(float(l0_xy[1]) / ds)
        return self._read_level_padded(level, lx, ly, w, h)

    def _read_level_padded(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Read a rectangle in level pixels; the part outside the level is white."""
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        if x0 == lx and y0 == ly and x1 - x0 == w and y1 - y0 == h:
            return self._checked_read(level, x0, y0, w, h)
        out = np.full((h, w, 3), _WHITE, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._checked_read(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    def _checked_read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            arr = self._read_level(level, x, y, w, h)
        except SlideReadError:
            raise
        except Exception as exc:  # backend libraries raise many exception types
            raise SlideReadError(
                f"cannot read level {level} region ({x}, {y}, {w}x{h}): {_cause(exc)}", self.path
            ) from exc
        if arr.shape[:2] != (h, w):
            fixed = np.full((h, w, 3), _WHITE, dtype=np.uint8)
            hh, ww = min(h, arr.shape[0]), min(w, arr.shape[1])
            fixed[:hh, :ww] = arr[:hh, :ww]
            arr = fixed
        return arr

    def best_level_for_downsample(self, downsample: float) -> int:
        """Index of the lowest-resolution level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + 1e-6):
                best = i
        return best

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """Whole slide as RGB uint8 with its longest side at most ``max_size``.

        Reads the smallest level that is still at least as large as the thumbnail, in
        horizontal bands, so that a large level is never held in memory whole.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        tw, th = _fit_size(*self.dimensions, max_size)
        level = 0
        for i, (lw, lh) in enumerate(self.level_dimensions):
            if lw >= tw and lh >= th:
                level = i
        lw, lh = self.level_dimensions[level]
        if (lw, lh) == (tw, th):
            return self._read_level_padded(level, 0, 0, lw, lh)
        out = np.empty((th, tw, 3), dtype=np.uint8)
        # thumbnail rows per band: about 4096 level rows, fewer where the level is so wide
        # (a slide without a pyramid) that they would take more than 256 MB
        level_rows = max(1, min(4096, (256 << 20) // (3 * lw)))
        band = max(1, (level_rows * th) // lh)
        for t0 in range(0, th, band):
            t1 = min(th, t0 + band)
            y0 = (t0 * lh) // th
            y1 = max(y0 + 1, (t1 * lh) // th)
            rgb = self._read_level_padded(level, 0, y0, lw, y1 - y0)
            out[t0:t1] = cv2.resize(rgb, (tw, t1 - t0), interpolation=cv2.INTER_AREA)
        return out

    def close(self) -> None:
        """Release the file handles (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, format={self.format!r}, "
            f"dimensions={self.dimensions}, levels={len(self.level_dimensions)}, mpp={self.mpp})"
        )


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _downsamples(dims: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    w0, h0 = dims[0]
    return tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)


# --- tiled JPEG TIFF, direct ---------------------------------------------------------------------

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0 (RGB)
_SOI = b"\xff\xd8"
#: Decoded tiles kept for reuse: neighbouring scan regions overlap by a few pixels
#: (window - stride), and without it the tiles along every region edge are decoded again
#: (1.6 times the tiles for strips of 4 x 16 windows). A scan in raster order needs about
#: three rows of tiles across the slide: the budget is four rows of level 0 within these
#: bounds (128 MB up to 41k px wide, 512 MB from 164k px).
_TILE_CACHE_BYTES = (128 << 20, 512 << 20)


@dataclass
class _TiffLevel:
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    colorspace: str | None  # JPEG colour space for imagecodecs (None: as marked in the JPEG)
    prefix: bytes | None  # SOI + markers + tables for simplejpeg, None: use imagecodecs


def _jpeg_header(data: bytes) -> bytes:
    """Bytes of a JPEG stream before its first scan (SOS) marker."""
    sos = data.find(b"\xff\xda")
    return data if sos < 0 else data[:sos]


class _TiffJpegReader(_BaseReader):
    """Tiled JPEG TIFF read tile by tile with simplejpeg / imagecodecs.

    Reads only the tiles a region needs, merges the shared JPEGTables, and decodes
    RGB-photometric tiles (Aperio) without a colour transform.
    """

    def __init__(self, path: Path, fmt: str, pages: Sequence[Any], *, threads: int) -> None:
        self.path = path
        self.format = fmt
        self.threads = max(1, int(threads))
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._fh = path.open("rb")  # held open until close()
        try:
            self._levels = [self._make_level(p) for p in pages]
        except BaseException:
            self._fh.close()
            raise
        dims = tuple((lv.width, lv.height) for lv in self._levels)
        lo, hi = _TILE_CACHE_BYTES
        lv0 = self._levels[0]
        self._cache_limit = min(hi, max(lo, 4 * lv0.tiles_across * lv0.tile_w * lv0.tile_h * 3))
        self.level_dimensions = dims
        self.dimensions = dims[0]
        self.level_downsamples = _downsamples(dims)

    def _make_level(self, page: Any) -> _TiffLevel:
        tw, th = int(page.tilewidth), int(page.tilelength)
        tables = page.jpegtables or None
        if tables is not None:
            tables = bytes(tables)
        photometric = int(page.photometric)
        jfif = bool(page.is_jfif)
        colorspace = "RGB" if photometric == 2 and not jfif else None
        level = _TiffLevel(
            width=int(page.imagewidth),
            height=int(page.imagelength),
            tile_w=tw,
            tile_h=th,
            tiles_across=-(-int(page.imagewidth) // tw),
            offsets=np.asarray(page.dataoffsets, dtype=np.int64),
            counts=np.asarray(page.databytecounts, dtype=np.int64),
            tables=tables,
            colorspace=colorspace,
            prefix=None,
        )
        self._choose_decoder(level)
        return level

    def _choose_decoder(self, lv: _TiffLevel) -> None:
        """Use simplejpeg when it decodes the first tile exactly as imagecodecs does."""
        nonzero = np.flatnonzero(lv.counts)
        if nonzero.size == 0:
            return
        data = self._read_bytes(int(lv.offsets[nonzero[0]]), int(lv.counts[nonzero[0]]))
        header = _jpeg_header((lv.tables or b"")[:-2] + data)
        adobe = b"\xff\xee" in header
        tables = lv.tables[2:-2] if lv.tables else b""
        mark = _ADOBE_RGB if lv.colorspace == "RGB" and not adobe else b""
        lv.prefix = _SOI + mark + tables
        try:
            import simplejpeg  # type: ignore[import-untyped]

            fast = simplejpeg.decode_jpeg(lv.prefix + data[2:], colorspace="RGB")
        except (ImportError, ValueError, RuntimeError):
            lv.prefix = None
            return
        ref = self._decode_imagecodecs(lv, data)
        if fast.shape != ref.shape or np.abs(fast.astype(np.int16) - ref).max() > 2:
            lv.prefix = None

    @staticmethod
    def _decode_imagecodecs(lv: _TiffLevel, data: bytes) -> np.ndarray:
        import imagecodecs

        arr = imagecodecs.jpeg8_decode(
            data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace="RGB"
        )
        return _to_rgb_u8(arr)

    def _read_bytes(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            data = os.pread(self._fh.fileno(), count, offset)
        else:  # pragma: no cover - platforms without pread
            with self._lock:
                self._fh.seek(offset)
                data = self._fh.read(count)
        if len(data) != count:
            raise SlideReadError(f"truncated file: tile at byte {offset} is cut short", self.path)
        return data

    def _decode_tile(self, lv: _TiffLevel, index: int) -> np.ndarray | None:
        count = int(lv.counts[index])
        if count == 0:
            return None
        data = self._read_bytes(int(lv.offsets[index]), count)
        if data[:2] != _SOI:
            raise SlideReadError(f"corrupt JPEG tile {index} (no start marker)", self.path)
        if lv.prefix is not None:
            import simplejpeg  # type: ignore[import-untyped]

            return simplejpeg.decode_jpeg(lv.prefix + data[2:], colorspace="RGB")
        return self._decode_imagecodecs(lv, data)

    def _cached_tile(self, level: int, index: int) -> np.ndarray | None:
        """A decoded tile, from the LRU cache when it is there (read-only array)."""
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        tile = self._decode_tile(self._levels[level], index)
        if tile is None:
            return None
        tile.flags.writeable = False
        with self._lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
                while self._cache_bytes > self._cache_limit and self._cache:
                    self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return tile

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lv = self._levels[level]
        out = np.empty((h, w, 3), dtype=np.uint8)
        tx0, tx1 = x // lv.tile_w, (x + w - 1) // lv.tile_w
        ty0, ty1 = y // lv.tile_h, (y + h - 1) // lv.tile_h
        jobs = [(tx, ty) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]

        def paste(job: tuple[int, int]) -> None:
            tx, ty = job
            tile = self._cached_tile(level, ty * lv.tiles_across + tx)
            gx, gy = tx * lv.tile_w, ty * lv.tile_h  # tile origin in level pixels
            sx0, sy0 = max(x, gx), max(y, gy)
            sx1, sy1 = min(x + w, gx + lv.tile_w), min(y + h, gy + lv.tile_h)
            dst = out[sy0 - y : sy1 - y, sx0 - x : sx1 - x]
            if tile is None:
                dst[...] = _WHITE
                return
            src = tile[sy0 - gy : sy1 - gy, sx0 - gx : sx1 - gx]
            if src.shape != dst.shape:  # a short edge tile
                dst[...] = _WHITE
                dst[: src.shape[0], : src.shape[1]] = src
            else:
                dst[...] = src

        if self.threads > 1 and len(jobs) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cf-tile")
                pool = self._pool
            for _ in pool.map(paste, jobs):
                pass
        else:
            for job in jobs:
                paste(job)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0
        self._fh.close()


# --- tiffslide (other TIFF compressions) --------------------------------------------------------


class _TiffSlideReader(_BaseReader):
    """TIFF layouts or compressions the direct reader does not handle (JPEG 2000, LZW, ...)."""

    def __init__(self, path: Path, fmt: str) -> None:
        import tiffslide

        self.path = path
        self.format = fmt
        self._slide = tiffslide.TiffSlide(path)
        dims = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_dimensions = dims
        self.dimensions = dims[0]
        self.level_downsamples = _downsamples(dims)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # tiffslide maps level-0 positions to int(l0 / ds): choose l0 that lands on (x, y)
        lx, ly = math.ceil(x * ds), math.ceil(y * ds)
        if int(lx / ds) != x:
            lx = math.floor(x * ds)
        if int(ly / ds) != y:
            ly = math.floor(y * ds)
        arr = self._slide.read_region((lx, ly), level, (w, h), as_array=True, padding=False)
        return _to_rgb_u8(arr)

    def close(self) -> None:
        self._slide.close()


# --- OpenSlide -----------------------------------------------------------------------------------


class _OpenSlideReader(_BaseReader):
    """NDPI, MIRAX, Philips, Leica, Ventana and other formats OpenSlide knows."""

    def __init__(self, path: Path, vendor: str) -> None:
        import openslide

        self.path = path
        self.format = f"openslide:{vendor}"
        self._slide = openslide.OpenSlide(path)
        dims = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_dimensions = dims
        self.dimensions = dims[0]
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props = self._slide.properties
        try:
            self.mpp_from_metadata = float(props["openslide.mpp-x"])
        except (KeyError, ValueError):
            self.mpp_from_metadata = None

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        img = self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h))
        return _to_rgb_u8(np.asarray(img))

    def close(self) -> None:
        self._slide.close()


# --- DICOM WSI -----------------------------------------------------------------------------------


class _DicomReader(_BaseReader):
    """DICOM whole-slide images (a folder of instances, or one file) via wsidicom."""

    def __init__(self, path: Path) -> None:
        from wsidicom import WsiDicom  # type: ignore[import-untyped]
        from wsidicom.errors import WsiDicomNoResolutionError  # type: ignore[import-untyped]

        self.path = path
        self.format = "dicom"
        self._wsi = WsiDicom.open(path)
        try:
            levels = list(self._wsi.pyramid.levels)
            if not levels:
                raise SlideReadError("DICOM files hold no whole-slide image levels", path)
            levels.sort(key=lambda lv: -int(lv.size.width))
            self._level_numbers = tuple(int(lv.level) for lv in levels)
            dims = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)
            self.level_dimensions = dims
            self.dimensions = dims[0]
            self.level_downsamples = _downsamples(dims)
            try:
                self.mpp_from_metadata = float(self._wsi.mpp.width)
            except WsiDicomNoResolutionError:
                self.mpp_from_metadata = None
        except BaseException:
            self._wsi.close()
            raise

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        arr = self._wsi.read_region((x, y), self._level_numbers[level], (w, h), as_array=True)
        return _to_rgb_u8(np.asarray(arr))

    def close(self) -> None:
        self._wsi.close()


# --- plain images --------------------------------------------------------------------------------


class _ImageReader(_BaseReader):
    """A plain image (PNG, JPEG, non-tiled TIFF) as a one-level slide held in memory."""

    def __init__(self, path: Path, rgb: np.ndarray, mpp: float | None) -> None:
        self.path = path
        self.format = "image"
        self._rgb = rgb
        h, w = rgb.shape[:2]
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp_from_metadata = mpp

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._rgb[y : y + h, x : x + w].copy()

    def close(self) -> None:
        self._rgb = np.zeros((0, 0, 3), dtype=np.uint8)


# --- format detection and metadata ---------------------------------------------------------------


def _sniff(head: bytes) -> str:
    """Kind of file from its first bytes."""
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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".ome.tiff", ".ome.tif"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def _openslide_vendor(path: Path) -> str | None:
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


def _tiff_mpp(tif: Any, page0: Any) -> float | None:
    mpp = None
    if tif.is_svs:
        mpp = _aperio_mpp(page0.description)
    elif tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata)
    if mpp is None:
        mpp = _resolution_mpp(page0)
    return mpp


def _pyramid_pages(tif: Any) -> list[Any]:
    """Level pages of the main image, largest first (SubIFDs, Aperio pages or plain pages)."""
    series = tif.series[0]
    pages = [lvl.keyframe for lvl in series.levels]
    if len(pages) == 1 and not tif.is_svs and not tif.is_ome:
        # generic layout with reduced levels as further top-level pages (as OpenSlide reads it)
        first = pages[0]
        w0, h0 = int(first.imagewidth), int(first.imagelength)
        for page in tif.pages[1:]:
            w, h = int(page.imagewidth), int(page.imagelength)
            if not page.is_tiled or w >= pages[-1].imagewidth or w < 1 or h < 1:
                continue
            if (
                abs((w0 / w) / (h0 / h) - 1.0) < 0.02
                and page.samplesperpixel == first.samplesperpixel
            ):
                pages.append(page)
    return pages


def _jpeg_fast_path_ok(page: Any) -> bool:
    return bool(
        page.is_tiled
        and int(page.compression) == 7
        and int(page.planarconfig) == 1
        and int(page.samplesperpixel) == 3
        and int(page.bitspersample) == 8
        and int(page.photometric) in (2, 6)
        and not page.extrasamples
        and int(getattr(page, "imagedepth", 1)) == 1
        and len(page.dataoffsets)
        == -(-int(page.imagewidth) // int(page.tilewidth))
        * -(-int(page.imagelength) // int(page.tilelength))
    )


def _check_tiff_pages(pages: Sequence[Any], file_size: int, path: Path) -> None:
    """Raise SlideReadError when a level lacks tile/strip offsets or points past the file end."""
    for i, page in enumerate(pages):
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size == 0 or offsets.size != counts.size:
            raise SlideReadError(f"corrupt TIFF: level {i} has no image data offsets", path)
        if int((offsets + counts).max()) > file_size:
            raise SlideReadError(f"truncated TIFF: level {i} data runs past the end of file", path)


def _open_tiff(path: Path, threads: int) -> _BaseReader:
    import tifffile

    vendor = _openslide_vendor(path)
    if vendor is not None and vendor not in _OPENSLIDE_VENDORS_OWN_TIFF:
        return _OpenSlideReader(path, vendor)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideReadError(f"corrupt or unreadable TIFF ({_cause(exc)})", path) from exc
    with tif:
        try:
            pages = _pyramid_pages(tif)
            _check_tiff_pages(pages, path.stat().st_size, path)
            page0 = pages[0]
            fmt = "aperio" if tif.is_svs else "ome-tiff" if tif.is_ome else "tiff"
            mpp = _tiff_mpp(tif, page0)
            tiled = bool(page0.is_tiled)
            fast = tiled and all(_jpeg_fast_path_ok(p) for p in pages)
            plain = None
            if not tiled and len(pages) == 1:
                plain = _to_rgb_u8(_squeeze_image(page0.asarray()))
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"corrupt or unreadable TIFF ({_cause(exc)})", path) from exc
        if plain is not None:
            reader: _BaseReader = _ImageReader(path, plain, mpp)
            return reader
        if fast:
            reader = _TiffJpegReader(path, fmt, pages, threads=threads)
        else:
            reader = _TiffSlideReader(path, fmt)
    reader.mpp_from_metadata = mpp
    return reader


def _squeeze_image(arr: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes of an image array (tifffile may add them)."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, Y, X)
    return arr


def _decode_plain(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode a plain image file to RGB uint8; TIFF resolution gives a pixel size."""
    kind = _sniff(_read_head(path))
    if kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[0].keyframe
            tiff_arr: np.ndarray = tif.series[0].levels[0].asarray()
            mpp = _tiff_mpp(tif, page)
        return _to_rgb_u8(_squeeze_image(tiff_arr)), mpp
    buf = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is not None:
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
        return _to_rgb_u8(arr), None
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        ok = im.mode in ("RGB", "RGBA", "L", "LA")
        return _to_rgb_u8(np.asarray(im if ok else im.convert("RGBA"))), None


def _read_head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


# --- public: open / read ------------------------------------------------------------------------


def _check_given_mpp(mpp: float, path: Path) -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise PixelSizeError(f"pixel size must be a number, got {mpp!r}", path) from None
    if not _mpp_plausible(value):
        raise PixelSizeError(
            f"implausible pixel size {value:g} µm/px (expected {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g})",
            path,
        )
    return value


def _resolve_mpp(reader: _BaseReader, given: float | None) -> float:
    """Level-0 pixel size: the given value, the metadata, or the plain-image default."""
    if given is not None:
        return given
    meta = reader.mpp_from_metadata
    if _mpp_plausible(meta):
        return float(meta)  # type: ignore[arg-type]
    if reader.level_count > 1:
        if meta is None:
            raise PixelSizeError("no pixel size in metadata; pass --mpp", reader.path)
        raise PixelSizeError(
            f"implausible pixel size {meta:g} µm/px in metadata; pass --mpp", reader.path
        )
    what = "no pixel size" if meta is None else f"implausible pixel size {meta:g} µm/px"
    log.warning(
        "%s: %s in metadata; assuming %g µm/px (pass --mpp to set it)",
        reader.path,
        what,
        MODEL_MPP,
    )
    return MODEL_MPP


def _open_reader(path: Path, threads: int) -> _BaseReader:
    if path.is_dir():
        try:
            return _DicomReader(path)
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(
                f"directory is not a DICOM WSI folder ({_cause(exc)})", path
            ) from exc
    try:
        head = _read_head(path)
    except OSError as exc:
        raise SlideReadError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if not head:
        raise SlideReadError("empty file", path)
    kind = _sniff(head)
    if kind == "tiff":
        return _open_tiff(path, threads)
    if kind == "dicom":
        try:
            return _DicomReader(path)
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"not a readable DICOM WSI file ({_cause(exc)})", path) from exc
    if kind in ("png", "jpeg", "image"):
        try:
            rgb, mpp = _decode_plain(path)
        except Exception as exc:
            raise SlideReadError(f"corrupt image ({_cause(exc)})", path) from exc
        return _ImageReader(path, rgb, mpp)
    vendor = _openslide_vendor(path)
    if vendor is not None:
        return _OpenSlideReader(path, vendor)
    suffix = _suffix(path)
    if suffix in supported_suffixes:
        raise SlideReadError(f"not a valid {suffix} file (corrupt, truncated or mislabelled)", path)
    raise UnsupportedFormatError(
        f"unsupported format{f' {suffix!r}' if suffix else ''} (not a slide, image or DICOM WSI)",
        path,
    )


def open_slide(
    path: str | os.PathLike[str], *, mpp: float | None = None, threads: int | None = None
) -> SlideReader:
    """Open a whole-slide image, a DICOM WSI folder or a plain image.

    Parameters
    ----------
    path : slide file, DICOM folder or image file.
    mpp : level-0 pixel size in µm/px; overrides the metadata.
    threads : tile-decoding threads of the direct TIFF reader (default: up to 4 cores).

    Raises
    ------
    SlideReadError
        Missing, unreadable or corrupt input (:class:`UnsupportedFormatError` for unknown
        formats).
    PixelSizeError
        A multi-level slide without a plausible pixel size and no ``mpp`` given, or an
        implausible ``mpp``.
    """
    p = Path(path)
    given = None if mpp is None else _check_given_mpp(mpp, p)
    if not p.exists():
        raise SlideReadError("no such file or directory", p)
    n_threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    try:
        reader = _open_reader(p, n_threads)
    except SlideReadError:
        raise
    except Exception as exc:  # any backend failure becomes one clear line
        raise SlideReadError(f"cannot open ({_cause(exc)})", p) from exc
    if min(min(d) for d in reader.level_dimensions) < 1:
        reader.close()
        raise SlideReadError("image has zero width or height", p)
    try:
        reader.mpp = _resolve_mpp(reader, given)
    except PixelSizeError:
        reader.close()
        raise
    return reader  # type: ignore[return-value]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a plain image file (PNG, JPEG, TIFF, ...) as RGB uint8, alpha on white."""
    p = Path(path)
    if not p.is_file():
        raise SlideReadError("no such file", p)
    try:
        kind = _sniff(_read_head(p))
    except OSError as exc:
        raise SlideReadError(f"cannot read file: {exc.strerror or exc}", p) from exc
    if kind not in ("tiff", "png", "jpeg", "image"):
        raise UnsupportedFormatError("not a PNG, JPEG or TIFF image", p)
    try:
        return _decode_plain(p)[0]
    except Exception as exc:
        raise SlideReadError(f"corrupt image ({_cause(exc)})", p) from exc


# --- writers -------------------------------------------------------------------------------------


def _as_image_array(img: np.ndarray, allow_alpha: bool) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image must be uint8 or uint16, got {arr.dtype}")
    ok = (2,) if arr.ndim == 2 else (3,) if not allow_alpha else (3, 4)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in ok):
        raise ValueError(f"image must be (h, w), (h, w, 3) or (h, w, 4), got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"empty image {arr.shape}")
    return arr


def write_png(path: str | os.PathLike[str], rgb_or_rgba: np.ndarray) -> Path:
    """Write an RGB or RGBA (or gray) image as PNG, atomically. Returns the path."""
    arr = _as_image_array(rgb_or_rgba, allow_alpha=True)
    if arr.ndim == 3:
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(np.ascontiguousarray(arr), code)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - cv2 fails only on invalid input, checked above
        raise OutputError("PNG encoding failed", Path(path))
    p = Path(path)
    write_atomic(p, lambda tmp: tmp.write_bytes(buf.tobytes()), parents=True)
    return p


def write_image(path: str | os.PathLike[str], img: np.ndarray, *, quality: int = 90) -> Path:
    """Write PNG (lossless, alpha allowed), JPEG (``quality``) or TIFF by suffix, atomically."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".png":
        return write_png(p, img)
    if suffix in (".jpg", ".jpeg"):
        arr = _to_rgb_u8(_as_image_array(img, allow_alpha=True))
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        )
        if not ok:  # pragma: no cover
            raise OutputError("JPEG encoding failed", p)
        write_atomic(p, lambda tmp: tmp.write_bytes(buf.tobytes()), parents=True)
        return p
    if suffix in (".tif", ".tiff"):
        import tifffile

        arr = _as_image_array(img, allow_alpha=True)
        write_atomic(p, lambda tmp: tifffile.imwrite(tmp, arr, compression="zlib", metadata=None),
                     parents=True)
        return p
    raise UnsupportedFormatError(f"cannot write {suffix or 'suffix-less'} images", p)


def _pyramid(rgb: np.ndarray, tile: int, levels: int | None) -> list[np.ndarray]:
    """Level images, each half the size of the one before (area averaging)."""
    out = [rgb]
    while True:
        h, w = out[-1].shape[:2]
        if levels is not None and len(out) >= levels:
            break
        if levels is None and max(h, w) <= tile:
            break
        if min(h, w) < 2:
            break
        out.append(cv2.resize(out[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return out


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    mpp: float,
    tile: int = 256,
    quality: int = 80,
    levels: int | None = None,
    aperio: bool = False,
) -> Path:
    """Write ``rgb`` as a tiled JPEG pyramid that :func:`open_slide` reads with its pixel size.

    Parameters
    ----------
    path : output file (written under a temporary name, then renamed).
    rgb : level-0 image, RGB uint8 (h, w, 3).
    mpp : level-0 pixel size in µm/px (stored as TIFF resolution in pixels per cm).
    tile : tile side in pixels (a multiple of 16).
    quality : JPEG quality.
    levels : number of levels, each half the size of the previous; default: halve until the
        image fits in one tile.
    aperio : write an Aperio SVS layout (level 0, a stripped thumbnail, further levels as
        pages, an Aperio ImageDescription with ``MPP``) instead of SubIFDs.
    """
    import tifffile

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (h, w, 3), got {arr.dtype} {arr.shape}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if levels is not None and levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    mpp = float(mpp)
    if not _mpp_plausible(mpp):
        raise PixelSizeError(f"implausible pixel size {mpp:g} µm/px", Path(path))
    pyr = _pyramid(np.ascontiguousarray(arr), tile, levels)
    h0, w0 = arr.shape[:2]
    bigtiff = arr.nbytes > 2**31
    common: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": int(quality)},
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }

    def res(img: np.ndarray) -> tuple[float, float]:
        h, w = img.shape[:2]
        return (1e4 / (mpp * w0 / w), 1e4 / (mpp * h0 / h))

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            if not aperio:
                tw.write(pyr[0], tile=(tile, tile), subifds=len(pyr) - 1, resolution=res(pyr[0]),
                         **common)  # fmt: skip
                for img in pyr[1:]:
                    tw.write(img, tile=(tile, tile), subfiletype=1, resolution=res(img), **common)
                return
            head = f"Aperio Image Library v12.0.0 \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
            tail = f"JPEG/RGB Q={int(quality)}|AppMag = {10.0 / mpp:g}|MPP = {mpp:.6g}"
            tw.write(pyr[0], tile=(tile, tile), resolution=res(pyr[0]),
                     description=f"{head} {tail}", **common)  # fmt: skip
            thw, thh = _fit_size(w0, h0, 768)
            thumb = cv2.resize(pyr[0], (thw, thh), interpolation=cv2.INTER_AREA)
            tw.write(thumb, rowsperstrip=16, resolution=res(thumb),
                     description=f"{head} -> {thw}x{thh} - |MPP = {mpp:.6g}", **common)  # fmt: skip
            for img in pyr[1:]:
                lh, lw = img.shape[:2]
                tw.write(img, tile=(tile, tile), resolution=res(img),
                         description=f"{head} -> {lw}x{lh} {tail}", **common)  # fmt: skip

    p = Path(path)
    write_atomic(p, write, parents=True)
    return p
