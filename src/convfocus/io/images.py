"""Pixels and plain image files: reading, writing, converting and resizing images.

:func:`resize` is the package's one resampling rule: area averaging where an image
shrinks, Lanczos (8 x 8) where it grows, as the training pool was resampled; nearest
neighbour for class maps. Plain images (PNG, JPEG, TIFF) are read with
:func:`read_image` and written atomically with :func:`write_png` / :func:`write_image`;
:func:`write_pyramidal_tiff` writes a tiled pyramid that the slide readers open.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convfocus.errors import (
    OutputError,
    PixelSizeError,
    SlideReadError,
    UnsupportedFormatError,
    cause,
)
from convfocus.io.atomic import write_atomic
from convfocus.io.formats import mpp_plausible, read_head, sniff, tiff_mpp

__all__ = [
    "opencv_single_threaded",
    "png_bytes",
    "read_image",
    "resize",
    "write_image",
    "write_png",
    "write_pyramidal_tiff",
]

WHITE = 255
"""Background of images with alpha and of areas outside a slide."""


# --- pixels --------------------------------------------------------------------------------------


# OpenCV's thread count is one setting for the whole process: these mirror it (who is
# inside opencv_single_threaded, and the count to give back when the last one leaves)
_cv_lock = threading.Lock()
_cv_users = 0
_cv_threads = 0


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV's own thread pool off inside the block (``cv2.setNumThreads(1)``), restored
    when the last of the threads inside leaves it.

    A scan spreads its work over threads of its own (readers, one ONNX Runtime session per
    core); OpenCV's pool only adds threads that wait for cores and its start-up: on 2 cores
    the tissue mask took 0.38 s instead of 0.14 s, the first region came 0.7 s later
    (docs/performance.md, *Start-up and outputs*). Other OpenCV users of the process run
    single-threaded meanwhile too, and a ``cv2.setNumThreads`` made inside is undone.
    """
    global _cv_users, _cv_threads
    with _cv_lock:
        if _cv_users == 0:
            _cv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv_users += 1
    try:
        yield
    finally:
        with _cv_lock:
            _cv_users -= 1
            if _cv_users == 0:
                cv2.setNumThreads(_cv_threads)


def to_rgb_u8(arr: np.ndarray) -> np.ndarray:
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
        a = ((colour * alpha + WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Size of a ``width x height`` image scaled so its longest side is at most max_size."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(
    img: np.ndarray,
    size: tuple[int, int] | None = None,
    *,
    scale: float | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
    nearest: bool = False,
) -> np.ndarray:
    """Resample an image: area averaging where it shrinks, Lanczos (8 x 8) where it grows.

    Parameters
    ----------
    img : (h, w) or (h, w, c) image.
    size : output ``(width, height)``. Alone, the image is stretched to fill it.
    scale : output pixels per input pixel. Alone, the output is ``round(w * scale)`` x
        ``round(h * scale)``. With ``size``, the output is placed exactly: output pixel
        ``(u, v)`` samples input ``(u / scale + shift[0], v / scale + shift[1])``, beyond
        the input's edge its border repeats; where the image does not grow this works on
        whole input pixels, from ``floor(shift)``. The scan reads its regions so.
    shift : see ``scale`` (input pixels).
    nearest : nearest neighbour instead (class maps, masks).

    Returns ``img`` itself when nothing changes.
    """
    h, w = img.shape[:2]
    if scale is None:
        if size is None:
            raise ValueError("give size, scale or both")
        grows = size[0] > w or size[1] > h
        if (int(size[0]), int(size[1])) == (w, h):
            return img
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LANCZOS4 if grows else cv2.INTER_AREA
        return cv2.resize(img, (int(size[0]), int(size[1])), interpolation=interp)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    if size is None:
        if scale == 1:
            return img
        return cv2.resize(img, None, fx=scale, fy=scale, interpolation=interp)
    out_w, out_h = int(size[0]), int(size[1])
    if abs(scale - 1.0) < 1e-6 or scale < 1:
        x0, y0 = math.floor(shift[0]), math.floor(shift[1])
        if abs(scale - 1.0) < 1e-6:
            return np.ascontiguousarray(img[y0 : y0 + out_h, x0 : x0 + out_w])
        crop = img[y0 : y0 + round(out_h / scale), x0 : x0 + round(out_w / scale)]
        return cv2.resize(crop, (out_w, out_h), interpolation=interp)
    m = np.array([[scale, 0, -shift[0] * scale], [0, scale, -shift[1] * scale]], dtype=np.float32)
    return cv2.warpAffine(img, m, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)


# --- plain image files ---------------------------------------------------------------------------


def squeeze_image(arr: np.ndarray) -> np.ndarray:
    """Drop leading singleton axes of an image array (tifffile may add them)."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, Y, X)
    return arr


def decode_plain(path: Path) -> tuple[np.ndarray, float | None]:
    """Decode a plain image file to RGB uint8 and its pixel size (from TIFF metadata, else
    None). Raises whatever the decoder raises on a corrupt file."""
    kind = sniff(read_head(path))
    if kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[0].keyframe
            tiff_arr: np.ndarray = tif.series[0].levels[0].asarray()
            mpp = tiff_mpp(tif, page)
        return to_rgb_u8(squeeze_image(tiff_arr)), mpp
    buf = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is not None:
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
        return to_rgb_u8(arr), None
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        ok = im.mode in ("RGB", "RGBA", "L", "LA")
        return to_rgb_u8(np.asarray(im if ok else im.convert("RGBA"))), None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a plain image file (PNG, JPEG, TIFF, ...) as RGB uint8, alpha on white."""
    p = Path(path)
    if not p.is_file():
        raise SlideReadError("no such file", p)
    try:
        kind = sniff(read_head(p))
    except OSError as exc:
        raise SlideReadError(f"cannot read file: {exc.strerror or exc}", p) from exc
    if kind not in ("tiff", "png", "jpeg", "image"):
        raise UnsupportedFormatError("not a PNG, JPEG or TIFF image", p)
    try:
        return decode_plain(p)[0]
    except Exception as exc:
        raise SlideReadError(f"corrupt image ({cause(exc)})", p) from exc


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


def png_bytes(rgb_or_rgba: np.ndarray) -> bytes:
    """An RGB or RGBA (or gray) image encoded as PNG."""
    arr = _as_image_array(rgb_or_rgba, allow_alpha=True)
    if arr.ndim == 3:
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(np.ascontiguousarray(arr), code)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - cv2 fails only on invalid input, checked above
        raise ValueError("PNG encoding failed")
    return bytes(buf.tobytes())


def write_png(path: str | os.PathLike[str], rgb_or_rgba: np.ndarray) -> Path:
    """Write an RGB or RGBA (or gray) image as PNG, atomically. Returns the path."""
    data = png_bytes(rgb_or_rgba)
    p = Path(path)
    write_atomic(p, lambda tmp: tmp.write_bytes(data), parents=True)
    return p


def write_image(path: str | os.PathLike[str], img: np.ndarray, *, quality: int = 90) -> Path:
    """Write PNG (lossless, alpha allowed), JPEG (``quality``) or TIFF by suffix, atomically."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".png":
        return write_png(p, img)
    if suffix in (".jpg", ".jpeg"):
        arr = to_rgb_u8(_as_image_array(img, allow_alpha=True))
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
        out.append(resize(out[-1], (w // 2, h // 2)))
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
    """Write ``rgb`` as a tiled JPEG pyramid that :func:`~convfocus.io.readers.open_slide`
    reads with its pixel size.

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
    if not mpp_plausible(mpp):
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
            thw, thh = fit_size(w0, h0, 768)
            thumb = resize(pyr[0], (thw, thh))
            tw.write(thumb, rowsperstrip=16, resolution=res(thumb),
                     description=f"{head} -> {thw}x{thh} - |MPP = {mpp:.6g}", **common)  # fmt: skip
            for img in pyr[1:]:
                lh, lw = img.shape[:2]
                tw.write(img, tile=(tile, tile), resolution=res(img),
                         description=f"{head} -> {lw}x{lh} {tail}", **common)  # fmt: skip

    p = Path(path)
    write_atomic(p, write, parents=True)
    return p
