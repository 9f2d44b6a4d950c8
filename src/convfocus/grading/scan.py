"""Scanning: slide -> tissue mask -> window grid -> regions -> model -> class map -> outputs.

:func:`grade_slide` grades an open slide into a :class:`~convfocus.grading.result.SlideResult`;
:func:`scan_path` opens a slide, grades it and writes its output folder
(:mod:`convfocus.grading.outputs`) under a temporary name.

Windows are graded fully convolutionally: the graded cells of the grid are covered
by regions of at most ``block`` x ``block`` cells (strips of ``block // 2`` rows, see
``_blocks``), each read once as ``stride * cells + (window - stride)`` model pixels,
and one pass of the conv stack yields the logits of all its windows. Reading and
decoding the next regions runs in threads while the model grades the current one (a
bounded queue), and the model has the next region before it finishes the current one
(:meth:`~convfocus.grading.infer.Grader.predict_stream`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import MODEL_MPP
from convfocus.errors import ConvFocusError, NoTissueError, OutputError
from convfocus.grading.outputs import OUTPUT_FILES, write_outputs
from convfocus.grading.result import SlideInfo, SlideResult
from convfocus.grading.tiling import cut_windows
from convfocus.io.images import opencv_single_threaded, resize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanOptions:
    """Settings of one scan. ``window_px``/``stride_px`` default to the model's spec."""

    model: str | Path | None = None
    mpp: float | None = None
    native: bool = False
    profile: str = "histology"
    device: str = "cpu"
    backend: str = "auto"
    threads: int | None = None
    window_px: int | None = None
    stride_px: int | None = None
    min_tissue: float = 0.25
    block: int = 8  # regions of <= 8 x 8 cells: strips of 4 x <= 16 (docs/performance.md)
    thumbnail_px: int = 2048
    prefetch: int = 3
    read_threads: int = 2
    precision: str = "fp32"
    decode_threads: int | None = None  # tile-decoding threads of the reader (None: its default)
    dense: bool = False  # one conv pass per region: faster, not exact (infer.py)


def _blocks(graded: np.ndarray, block: int) -> list[tuple[int, int, int, int]]:
    """Regions (row0, col0, nrows, ncols) that cover every graded cell (``graded``:
    (rows, cols) bool), in raster order.

    Strips of ``block // 2`` cell rows, cut into runs of graded columns at most
    ``block² / (block // 2)`` (about ``2 * block``) wide, each shrunk to the bounding box of
    its graded cells: at most ``block²`` cells per region, as a square block, but far fewer
    cells of glass along irregular tissue edges (docs/performance.md has the measurements).
    """
    rows = graded.shape[0]
    height = max(1, block // 2)
    width = max(1, block * block // height)
    out = []
    for r0 in range(0, rows, height):
        band = graded[r0 : r0 + height]
        idx = np.flatnonzero(band.any(axis=0))
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
            for a in range(0, run.size, width):
                c0, c1 = int(run[a]), int(run[min(a + width, run.size) - 1])
                rr = np.flatnonzero(band[:, c0 : c1 + 1].any(axis=1))
                out.append((r0 + int(rr[0]), c0, int(rr[-1] - rr[0]) + 1, c1 - c0 + 1))
    return out


def read_model_region(
    reader: Any, l0_x: float, l0_y: float, out_w: int, out_h: int, scale: float
) -> np.ndarray:
    """Read the level-0 area that maps to ``out_w x out_h`` model pixels at ``l0 (x, y)``.

    ``scale`` is model pixels per level-0 pixel (2 for a 20x slide graded at 40x).
    Where the slide is finer than the model (scale < 1) a pyramid level close to the
    model's pixel size is read instead of level 0.
    """
    if abs(scale - 1.0) < 1e-6:
        return reader.read_region((round(l0_x), round(l0_y)), 0, (out_w, out_h))
    level = 0
    if scale < 1.0 and hasattr(reader, "level_downsamples"):
        for i, ds in enumerate(reader.level_downsamples):
            if ds <= 1.0 / scale * 1.0001:
                level = i
    ds = float(reader.level_downsamples[level]) if level else 1.0
    w_l = math.ceil(out_w / scale / ds) + 1
    h_l = math.ceil(out_h / scale / ds) + 1
    x_i, y_i = math.floor(l0_x), math.floor(l0_y)
    img = reader.read_region((x_i, y_i), level, (w_l, h_l))
    # exact sub-pixel placement: output pixel u samples level pixel (u / (scale*ds) + frac);
    # Lanczos where it grows, as the training pool was resampled
    return resize(img, (out_w, out_h), scale=scale * ds,
                  shift=((l0_x - x_i) / ds, (l0_y - y_i) / ds))


def grade_slide(
    reader: Any,
    grader: Any,
    opts: ScanOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SlideResult:
    """Grade every tissue window of an open slide (:func:`convfocus.io.readers.open_slide`)
    with a grader (:func:`convfocus.grading.infer.load_grader`).

    ``opts.mpp``, when given, is the slide's level-0 pixel size (else the reader's).
    ``progress(done, total)`` is called after each region. Marker ink is left out of the
    tissue (:func:`~convfocus.grading.tissue.tissue_and_ink`); a slide with no tissue to
    grade gives a result with no graded cell (its verdict: no-tissue). Raises
    :class:`~convfocus.errors.NoTissueError` when the slide is smaller than one window.
    OpenCV's own thread pool is off meanwhile (the scan's threads use the cores).
    """
    with opencv_single_threaded():
        return _grade_slide(reader, grader, opts or ScanOptions(), progress)


def _grade_slide(
    reader: Any, grader: Any, opts: ScanOptions, progress: Callable[[int, int], None] | None
) -> SlideResult:
    from convfocus.grading.tiling import make_grid
    from convfocus.grading.tissue import tissue_and_ink

    t0 = time.perf_counter()
    spec = grader.spec
    win = opts.window_px or spec.window_px
    stride = opts.stride_px or spec.stride_px
    if (win, stride) != (spec.window_px, spec.stride_px):
        log.info("window %d / stride %d (model trained at %d / %d)", win, stride,
                 spec.window_px, spec.stride_px)
    slide_mpp = float(reader.mpp if opts.mpp is None else opts.mpp)
    scale = 1.0 if opts.native else slide_mpp / spec.mpp
    l0_win, l0_stride = win / scale, stride / scale
    w0, h0 = reader.dimensions
    thumb = reader.get_thumbnail(opts.thumbnail_px)
    th_ds = w0 / thumb.shape[1]
    mask, ink = tissue_and_ink(thumb)
    tgrid = make_grid(mask, th_ds, (w0, h0), window_l0_px=l0_win, stride_l0_px=l0_stride,
                      min_tissue=opts.min_tissue)
    if min(w0, h0) < l0_win:
        raise NoTissueError(
            f"slide ({w0}x{h0} px) is smaller than one window ({l0_win:.0f} px)", reader.path)

    grid = tgrid.geometry
    classmap = np.full(grid.shape, -1, np.int16)
    probs = np.zeros((*grid.shape, spec.num_classes), np.float16)
    graded = tgrid.mask()
    blocks = _blocks(graded, opts.block)
    ox, oy = grid.l0_origin_px

    # the reading threads also convert each region to the runtime's input (uint8 -> float,
    # windows cut out), off the thread that runs the model
    prepared = (win, stride) == (spec.window_px, spec.stride_px) and hasattr(grader, "prepare")

    def load(b: tuple[int, int, int, int]) -> Any:
        r0, c0, nr, nc = b
        region = read_model_region(reader, ox + c0 * l0_stride, oy + r0 * l0_stride,
                                   nc * stride + (win - stride), nr * stride + (win - stride),
                                   scale)
        if not prepared:
            return region
        return grader.prepare(region, select=graded[r0 : r0 + nr, c0 : c0 + nc])

    done = 0

    def store(b: tuple[int, int, int, int], p: np.ndarray) -> None:
        nonlocal done
        r0, c0, nr, nc = b
        sel = graded[r0 : r0 + nr, c0 : c0 + nc]
        probs[r0 : r0 + nr, c0 : c0 + nc][sel] = p[sel]
        classmap[r0 : r0 + nr, c0 : c0 + nc][sel] = p[sel].argmax(-1)
        done += 1
        if progress is not None:
            progress(done, len(blocks))

    with ThreadPoolExecutor(max_workers=max(1, opts.read_threads)) as pool:
        pending: list[tuple[tuple[int, int, int, int], Future[Any]]] = []
        it: Iterator[tuple[int, int, int, int]] = iter(blocks)
        for b in it:
            pending.append((b, pool.submit(load, b)))
            if len(pending) >= opts.prefetch:
                break

        def loaded() -> Iterator[tuple[tuple[int, int, int, int], Any]]:
            # regions in order, the next one's reading started as each is taken
            while pending:
                b, fut = pending.pop(0)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(load, nxt)))
                yield b, fut.result()

        if prepared:  # the model goes on with the next region while one is stored
            for b, p in grader.predict_stream(loaded()):
                store(b, p)
        else:
            for b, region in loaded():
                store(b, _grade_region(grader, region, win, stride, b[2], b[3]))
    info = SlideInfo(
        # absolute, so the viewer finds the slide from any working directory
        path=os.path.abspath(reader.path), dimensions=(int(w0), int(h0)), mpp=slide_mpp,
        mpp_source=_mpp_source(reader, opts), format=getattr(reader, "format", None))
    settings = {**scan_settings(opts, spec, getattr(grader, "model_sha256", None)),
                "mpp": slide_mpp, "mpp_source": info.mpp_source}
    return SlideResult(info, spec, grid, classmap, probs, thumb, th_ds, native=opts.native,
                       profile=opts.profile, seconds=time.perf_counter() - t0,
                       settings=settings, tissue_mask=mask, ink_mask=ink)


def scan_settings(opts: ScanOptions, spec: Any, model_sha256: str | None) -> dict[str, Any]:
    """The settings that change a slide's outputs, as summary.json records them under
    ``settings``: the model (name, version, SHA-256 of its files), native, profile,
    window and stride (model px), min-tissue, precision, dense, region block and
    thumbnail size. :func:`grade_slide` adds the slide's pixel size (``mpp``) and where it
    came from (``mpp_source``).
    """
    return {
        "model": {"name": spec.name, "version": spec.version, "sha256": model_sha256},
        "native": bool(opts.native),
        "profile": opts.profile,
        "window_px": int(opts.window_px or spec.window_px),
        "stride_px": int(opts.stride_px or spec.stride_px),
        "min_tissue": float(opts.min_tissue),
        "precision": opts.precision,
        "dense": bool(opts.dense),
        "block": int(opts.block),
        "thumbnail_px": int(opts.thumbnail_px),
    }


def settings_changes(
    recorded: Any, expected: dict[str, Any], mpp: float | None
) -> list[str]:
    """How the settings a slide was scanned with (summary.json's ``settings``) differ from
    those of a new scan (:func:`scan_settings`; ``mpp``: the pixel size given for the
    slide, None for the file's own), e.g. ``["profile histology -> cytology"]``; empty
    when they match.
    """
    if not isinstance(recorded, dict) or not recorded:
        return ["no settings recorded (an older scan)"]
    out = []
    for key, new in expected.items():
        old = recorded.get(key)
        if key == "model":
            if not isinstance(old, dict):
                out.append("no model recorded")
            elif (old.get("name"), old.get("version")) != (new["name"], new["version"]):
                out.append(f"model {old.get('name')} {old.get('version')} -> "
                           f"{new['name']} {new['version']}")
            elif old.get("sha256") != new["sha256"]:
                out.append(f"model {new['name']} {new['version']}: its files changed")
        elif isinstance(new, float) and isinstance(old, (int, float)) and not isinstance(
                old, bool):
            if not math.isclose(old, new, rel_tol=1e-9):
                out.append(f"{key.replace('_', '-')} {old:g} -> {new:g}")
        elif old != new:
            out.append(f"{key.replace('_', '-')} {old} -> {new}")
    # the pixel size: a given one must be the one recorded; none given, the file's (as before)
    old_mpp, old_src = recorded.get("mpp"), recorded.get("mpp_source")
    old_text = f"{old_mpp:g} ({old_src})" if isinstance(old_mpp, (int, float)) else "unknown"
    if mpp is not None:
        if old_src != "--mpp" or not isinstance(old_mpp, (int, float)) or not math.isclose(
                old_mpp, mpp, rel_tol=1e-9):
            out.append(f"mpp {old_text} -> {mpp:g} (--mpp)")
    elif old_src == "--mpp" or old_src is None:
        out.append(f"mpp {old_text} -> the file's own")
    return out


def _grade_region(grader: Any, region: Any, win: int, stride: int, nr: int, nc: int):
    """(rows, cols, 30) probabilities of a region; the fully convolutional path needs the
    model's own window and stride, other settings fall back to per-window inference."""
    spec = grader.spec
    if (win, stride) == (spec.window_px, spec.stride_px):
        return grader.predict_region(region)
    wins = cut_windows(region, win, stride)  # (nr * nc, win, win, 3), row-major
    if win != spec.window_px:
        wins = np.stack([resize(w, (spec.window_px, spec.window_px)) for w in wins])
    return grader.predict_windows(wins).reshape(nr, nc, -1)


def ensure_output_root(out_root: Path) -> None:
    """Create the output folder (and parents); raise OutputError when it cannot be written."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror}", out_root) from None
    if not os.access(out_root, os.W_OK):
        raise OutputError("output folder is not writable", out_root)


def output_dir(slide: Path, out_root: Path) -> Path:
    """``OUT/<input file stem>`` (a DICOM folder keeps its folder name)."""
    return out_root / (slide.name if slide.is_dir() else slide.stem)


def is_complete(folder: Path) -> bool:
    """True when a slide's output folder holds every output (summary.json is written last)."""
    return all((folder / f).is_file() for f in OUTPUT_FILES)


def scan_path(
    slide: Path,
    out_root: Path,
    *,
    model: str | Path | None = None,
    mpp: float | None = None,
    native: bool = False,
    profile: str = "histology",
    device: str = "cpu",
    options: ScanOptions | None = None,
    grader: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Scan one slide and write its outputs to ``out_root/<stem>/`` (atomically).

    Returns the output folder. Raises :class:`ConvFocusError` subclasses for expected
    failures; no partial output folder is left behind.
    """
    from convfocus.grading.infer import load_grader
    from convfocus.io.readers import open_slide

    opts = options or ScanOptions(model=model, mpp=mpp, native=native, profile=profile,
                                  device=device)
    reuse_freed_memory()
    slide = Path(slide)
    out_root = Path(out_root)
    final = output_dir(slide, out_root)
    ensure_output_root(out_root)
    t0 = time.perf_counter()
    if grader is None:
        grader = load_grader(opts.model, device=opts.device, backend=opts.backend,
                             threads=opts.threads, precision=opts.precision, dense=opts.dense)
    reader = open_slide(slide, mpp=opts.mpp, threads=opts.decode_threads)
    try:
        with opencv_single_threaded():  # once for both (each also enters it)
            result = grade_slide(reader, grader, opts, progress=progress)
            save_outputs(result, final, runtime_start=t0)
    finally:
        reader.close()
    return final


#: glibc's allocator settings during scans: buffers up to this size come from its heaps
#: (its default: 128 KB to 32 MB, adjusted as blocks are freed; 32 MB is the most glibc
#: before 2.35 accepts) ...
REUSE_MMAP_THRESHOLD = 32 << 20
#: ... and up to this much freed memory stays with the process (default 128 KB to 64 MB)
REUSE_TRIM_THRESHOLD = 256 << 20


@functools.cache  # once per process
def reuse_freed_memory() -> None:
    """Keep the buffers a scan frees for its next regions (glibc's ``mallopt``; once per
    process; nothing on other C libraries, nor where the ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` environment variables set them, as Dask's nannies do for
    their workers to return memory early).

    Each region's pixels and model input (3-15 MB) would otherwise go back to the system
    when freed and come back as fresh pages, each one faulted in and zeroed: 180,000 page
    faults in a scan of the 0.8-gigapixel benchmark slide, 100,000 with this, and half the
    system time (docs/performance.md). The process keeps up to ``REUSE_TRIM_THRESHOLD``
    more memory afterwards. Called first thing in a scan, before its threads start
    (glibc's ``mallopt`` is not meant to race with other threads' allocations).
    """
    if sys.platform != "linux":
        return
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ) or (
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        # M_MMAP_THRESHOLD (-3), M_TRIM_THRESHOLD (-1): each 1 where accepted
        ok = [libc.mallopt(-3, REUSE_MMAP_THRESHOLD), libc.mallopt(-1, REUSE_TRIM_THRESHOLD)]
    except (OSError, AttributeError):
        ok = [0, 0]
    if ok != [1, 1]:
        log.debug("the allocator's thresholds were not all set (%s)", ok)


def save_outputs(
    result: SlideResult, folder: str | os.PathLike[str], *, runtime_start: float | None = None
) -> Path:
    """Write every output of ``result`` into ``folder``, built under a temporary name and
    then put in place whole (an older folder of that name is replaced); returns it.

    Raises :class:`~convfocus.errors.OutputError` when it cannot be written; nothing is
    left behind then.
    """
    from convfocus.io.atomic import atomic_folder

    final = Path(folder)
    ensure_output_root(final.parent)
    try:
        # written under a temporary name, the folder replaces an older one whole
        with atomic_folder(final) as tmp:
            write_outputs(result, tmp, runtime_start=runtime_start)
    except OSError as exc:
        raise OutputError(f"cannot write outputs: {_os_cause(exc)}", final) from None
    except OutputError as exc:  # a writer's own error names a file in the temporary folder
        raise OutputError(f"cannot write outputs: {exc.message}", final) from None
    return final


def _os_cause(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] ...`` or a bare ``28``."""
    if exc.strerror:
        return exc.strerror
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _mpp_source(reader: Any, opts: ScanOptions) -> str:
    meta = getattr(reader, "mpp_from_metadata", None)
    # given: with --mpp (opts), or to open_slide (neither the metadata's nor the default)
    if opts.mpp is not None or float(reader.mpp) not in (meta, MODEL_MPP):
        return "--mpp"
    if meta is not None:
        return "metadata"
    return "assumed 0.25 µm/px (none in the file)"


__all__ = [
    "ConvFocusError",
    "ScanOptions",
    "grade_slide",
    "is_complete",
    "output_dir",
    "save_outputs",
    "scan_path",
    "scan_settings",
    "settings_changes",
]
