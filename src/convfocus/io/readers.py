"""Open whole-slide images: one reader interface over several backends.

:class:`SlideReader` is what the rest of convfocus sees; :func:`open_slide` picks the
backend from the file's first bytes:

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
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from convfocus import MODEL_MPP
from convfocus.errors import PixelSizeError, SlideReadError, UnsupportedFormatError, cause
from convfocus.io.formats import (
    MPP_RANGE,
    mpp_plausible,
    openslide_vendor,
    read_head,
    sniff,
    suffix_of,
    supported_suffixes,
    tiff_mpp,
    tiff_truncation,
)
from convfocus.io.images import WHITE, decode_plain, fit_size, resize, squeeze_image, to_rgb_u8

log = logging.getLogger(__name__)

__all__ = ["SlideReader", "open_slide"]

_OPENSLIDE_VENDORS_OWN_TIFF = frozenset({"aperio", "generic-tiff"})


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
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
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
                f"cannot read level {level} region ({x}, {y}, {w}x{h}): {cause(exc)}", self.path
            ) from exc
        if arr.shape[:2] != (h, w):
            fixed = np.full((h, w, 3), WHITE, dtype=np.uint8)
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
        tw, th = fit_size(*self.dimensions, max_size)
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
            out[t0:t1] = resize(rgb, (tw, t1 - t0))
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
        return to_rgb_u8(arr)

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
                dst[...] = WHITE
                return
            src = tile[sy0 - gy : sy1 - gy, sx0 - gx : sx1 - gx]
            if src.shape != dst.shape:  # a short edge tile
                dst[...] = WHITE
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
        return to_rgb_u8(arr)

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
        return to_rgb_u8(np.asarray(img))

    def close(self) -> None:
        self._slide.close()


# --- DICOM WSI -----------------------------------------------------------------------------------


class _DicomReader(_BaseReader):
    """DICOM whole-slide images (a folder of instances, or one file) via wsidicom.

    wsidicom's objects are not safe to share between threads (file handles seek and
    read): one read at a time, under a lock, since the scan reads regions from several.
    """

    def __init__(self, path: Path) -> None:
        from wsidicom import WsiDicom  # type: ignore[import-untyped]
        from wsidicom.errors import WsiDicomNoResolutionError  # type: ignore[import-untyped]

        self.path = path
        self.format = "dicom"
        self._lock = threading.Lock()
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
        with self._lock:
            arr = self._wsi.read_region((x, y), self._level_numbers[level], (w, h),
                                        as_array=True)
        return to_rgb_u8(np.asarray(arr))

    def close(self) -> None:
        with self._lock:
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


# --- TIFF layout ---------------------------------------------------------------------------------


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
        end = int((offsets + counts).max())
        if end > file_size:
            raise SlideReadError(f"truncated file: it ends at byte {file_size:,}, before the end "
                                 f"of level {i}'s image data (byte {end:,})", path)


def _open_tiff(path: Path, threads: int) -> _BaseReader:
    import tifffile

    vendor = openslide_vendor(path)
    if vendor is not None and vendor not in _OPENSLIDE_VENDORS_OWN_TIFF:
        return _OpenSlideReader(path, vendor)
    try:
        truncated = tiff_truncation(path)
    except OSError as exc:
        raise SlideReadError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if truncated is not None:
        raise SlideReadError(truncated, path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideReadError(f"corrupt or unreadable TIFF ({cause(exc)})", path) from exc
    with tif:
        try:
            pages = _pyramid_pages(tif)
            _check_tiff_pages(pages, path.stat().st_size, path)
            page0 = pages[0]
            fmt = "aperio" if tif.is_svs else "ome-tiff" if tif.is_ome else "tiff"
            mpp = tiff_mpp(tif, page0)
            tiled = bool(page0.is_tiled)
            fast = tiled and all(_jpeg_fast_path_ok(p) for p in pages)
            plain = None
            if not tiled and len(pages) == 1:
                plain = to_rgb_u8(squeeze_image(page0.asarray()))
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"corrupt or unreadable TIFF ({cause(exc)})", path) from exc
        if plain is not None:
            reader: _BaseReader = _ImageReader(path, plain, mpp)
            return reader
        if fast:
            reader = _TiffJpegReader(path, fmt, pages, threads=threads)
        else:
            reader = _TiffSlideReader(path, fmt)
    reader.mpp_from_metadata = mpp
    return reader


# --- public: open / read ------------------------------------------------------------------------


def _check_given_mpp(mpp: float, path: Path) -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise PixelSizeError(f"pixel size must be a number, got {mpp!r}", path) from None
    if not mpp_plausible(value):
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
    if mpp_plausible(meta):
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
                f"directory is not a DICOM WSI folder ({cause(exc)})", path
            ) from exc
    try:
        head = read_head(path)
    except OSError as exc:
        raise SlideReadError(f"cannot read file: {exc.strerror or exc}", path) from exc
    if not head:
        raise SlideReadError("empty file", path)
    kind = sniff(head)
    if kind == "tiff":
        return _open_tiff(path, threads)
    if kind == "dicom":
        try:
            return _DicomReader(path)
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"not a readable DICOM WSI file ({cause(exc)})", path) from exc
    if kind in ("png", "jpeg", "image"):
        try:
            rgb, mpp = decode_plain(path)
        except Exception as exc:
            raise SlideReadError(f"corrupt image ({cause(exc)})", path) from exc
        return _ImageReader(path, rgb, mpp)
    vendor = openslide_vendor(path)
    if vendor is not None:
        return _OpenSlideReader(path, vendor)
    suffix = suffix_of(path)
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
        raise SlideReadError(f"cannot open ({cause(exc)})", p) from exc
    if min(min(d) for d in reader.level_dimensions) < 1:
        reader.close()
        raise SlideReadError("image has zero width or height", p)
    try:
        reader.mpp = _resolve_mpp(reader, given)
    except PixelSizeError:
        reader.close()
        raise
    return reader  # type: ignore[return-value]
