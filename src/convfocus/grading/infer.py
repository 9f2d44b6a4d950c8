"""Inference: a Grader runs a model on windows or, fully convolutionally, on whole regions.

ONNX Runtime runs the model's exported graph (``NAME.onnx``): on the CPU, and on a
CUDA GPU through its CUDA execution provider where that is installed (the
``onnxruntime-gpu`` package). Grading needs no PyTorch. Settings (window, stride,
normalisation) come from the model's spec, never from guesses.

A region (``stride * rows + window - stride`` px a side) is graded in one of two ways:
its windows cut out and graded as one batch, exactly as the model was trained (the
default), or ``dense``: one pass of the conv stack over the whole region, each window's
logits pooled from it. The dense pass does about 9 % less arithmetic for a full region
(20.6 M multiply-adds a window against 22.7 M) but is not exact: inside a region the
SAME-padded third convolution sees the neighbouring window's features where a window
graded alone sees zeros, which moves probabilities by up to a few hundredths and, where
the top classes are nearly tied, the class. A scan cuts out only its tissue windows, and
windows graded alone run on one single-threaded session per core, so the dense pass gains
little or nothing there (docs/performance.md has the figures).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from convfocus.errors import ConfigError, ModelError, OutputError
from convfocus.grading.tiling import cut_windows, window_view
from convfocus.types import ModelSpec

log = logging.getLogger(__name__)

K = TypeVar("K")

DEVICES = ("auto", "cpu", "cuda")
#: ``fp32``; ``int8``: the statically quantised graph (CPU); ``fp16``: half precision (CUDA).
PRECISIONS = ("fp32", "int8", "fp16")
#: Inference runtimes: ONNX Runtime only (``auto`` is the same).
BACKENDS = ("auto", "onnx")


def _rgb_nchw_float(x_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 0..255 (the input of a graph with the
    normalisation folded into its first convolution)."""
    import cv2

    n, h, w, c = x_uint8.shape
    out = np.empty((n, c, h, w), np.float32)
    for k in range(n):
        # OpenCV's de-interleaving, then contiguous uint8 -> float: 1.6x faster than
        # converting each strided colour plane (docs/performance.md)
        for i, plane in enumerate(cv2.split(np.ascontiguousarray(x_uint8[k]))):
            out[k, i] = plane
    return out


def _windows_rgb_nchw_float(
    x_uint8: np.ndarray, win: int, stride: int, select: np.ndarray | None = None
) -> np.ndarray:
    """(N, H, W, 3) uint8 regions -> (n, 3, win, win) float32 0..255: every window (or, for
    one region, those where ``select`` (rows, cols) is True) cut out in row-major order.

    The windows are gathered as uint8, then converted in one contiguous pass: half the
    CPU time of converting each strided colour plane (docs/performance.md).
    """
    v = window_view(x_uint8, win, stride)  # (N, rows, cols, 3, win, win)
    if select is None:
        select = np.ones(v.shape[:3], bool)
    elif select.ndim == 2:
        select = select[None]
    return v[select].astype(np.float32)


class PreparedRegion:
    """Regions already converted to a grader's input (:meth:`Grader.prepare`)."""

    __slots__ = ("batched", "data", "dense", "grid", "select", "shape")

    def __init__(self, data: Any, shape: tuple[int, ...], batched: bool, *, dense: bool = True,
                 grid: tuple[int, int, int] = (0, 0, 0),
                 select: np.ndarray | None = None) -> None:
        self.data = data
        self.shape = shape  # of the uint8 regions: (N, H, W, 3)
        self.batched = batched
        self.dense = dense  # False: ``data`` holds the regions' windows as a batch
        self.grid = grid  # (N, rows, cols)
        self.select = select  # (rows, cols) bool: only these windows are in ``data``


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class Grader:
    """A loaded model. ``predict_region`` is the fast path; ``predict_windows`` the reference."""

    #: SHA-256 of the model's files (:func:`~convfocus.grading.modelfile.model_sha256`)
    model_sha256: str | None = None

    def __init__(  # type: ignore[no-untyped-def]
        self, spec: ModelSpec, submit, backend: str, device: str, *, prepare=None,
        prepare_windows=None, precision: str = "fp32", dense: bool = False,
    ) -> None:
        self.spec = spec
        # submit(x) -> wait, wait() -> logits: (N, 30, rows, cols) for prepare(x), (n, 30, 1,
        # 1) for prepare_windows(x, select); the runtime starts on x at once (other threads)
        # or before submit returns. prepare: uint8 (N, H, W, 3) -> the runtime's input
        # (default: float32 (N, 3, H, W) normalised); prepare_windows(x, select): the same
        # regions -> the runtime's input holding each window alone, all of them or those of
        # one region where select (rows, cols) is True, row-major (default: cut, then
        # ``prepare``)
        self._submit = submit
        self._prepare = prepare if prepare is not None else self._normalise
        self._prepare_windows = prepare_windows if prepare_windows is not None else (
            self._cut_and_prepare)
        self.backend = backend
        self.device = device
        self.precision = precision
        self.dense = dense
        self._mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).reshape(1, 3, 1, 1)
        self._mean_scaled = self._mean / np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)

    def _cut_and_prepare(self, x: np.ndarray, select: np.ndarray | None) -> Any:
        wins = cut_windows(x, self.spec.window_px, self.spec.stride_px)  # row-major
        return self._prepare(wins if select is None else wins[select.ravel()])

    def _normalise(self, x_uint8: np.ndarray) -> np.ndarray:
        # (N, H, W, 3) uint8 -> (N, 3, H, W) float32
        x = np.ascontiguousarray(x_uint8.transpose(0, 3, 1, 2), dtype=np.float32)
        x *= self._scale
        x -= self._mean_scaled
        return x

    def prepare(self, region: np.ndarray, *, select: np.ndarray | None = None) -> PreparedRegion:
        """Convert (H, W, 3) or (N, H, W, 3) uint8 regions to the runtime's input ahead of
        time (thread-safe: a reading thread does it while the model grades other regions).

        ``select``: (rows, cols) bool, the windows of one region to grade; the others are
        skipped where windows are graded one by one (not in the dense pass), and their
        probabilities come out as zeros.
        """
        x = region[None] if region.ndim == 3 else region
        win, stride = self.spec.window_px, self.spec.stride_px
        if x.ndim != 4 or min(x.shape[1:3]) < win:
            raise ConfigError(f"regions must be (n, h, w, 3) with h, w >= {win}, got {x.shape}")
        grid = (x.shape[0], (x.shape[1] - win) // stride + 1, (x.shape[2] - win) // stride + 1)
        if self.dense or grid[1:] == (1, 1):  # one window: both ways are the same
            return PreparedRegion(self._prepare(x), x.shape, region.ndim == 4, grid=grid)
        if select is not None and select.any() and not select.all():
            if select.shape != grid[1:] or grid[0] != 1:
                raise ConfigError(f"select must be {grid[1:]} for one region, got {select.shape}")
            return PreparedRegion(self._prepare_windows(x, select), x.shape, region.ndim == 4,
                                  dense=False, grid=grid, select=select)
        return PreparedRegion(self._prepare_windows(x, None), x.shape, region.ndim == 4,
                              dense=False, grid=grid)

    def logits_region(self, region: np.ndarray | PreparedRegion) -> np.ndarray:
        """Logits of every window of one or more regions: (H, W, 3) or (N, H, W, 3) uint8
        with ``H = stride * rows + (window - stride)`` (or :meth:`prepare`'s result) ->
        (N, rows, cols, 30) float32."""
        return self._submit_logits(region)[1]()

    def _submit_logits(
        self, region: np.ndarray | PreparedRegion
    ) -> tuple[PreparedRegion, Callable[[], np.ndarray]]:
        prep = region if isinstance(region, PreparedRegion) else self.prepare(region)
        wait = self._submit(prep.data)

        def logits() -> np.ndarray:
            z = np.asarray(wait())
            if prep.select is not None:  # selected windows, graded one by one
                out = np.zeros((*prep.grid, self.spec.num_classes), np.float32)
                out[0][prep.select] = z.reshape(-1, self.spec.num_classes)
                return out
            if prep.dense:
                return np.ascontiguousarray(z.transpose(0, 2, 3, 1), dtype=np.float32)
            return np.ascontiguousarray(z.reshape(*prep.grid, -1), dtype=np.float32)

        return prep, logits

    def submit(self, region: np.ndarray | PreparedRegion) -> Callable[[], np.ndarray]:
        """Hand a region to the runtime; the returned function waits for
        :meth:`predict_region`'s result. Where the grader runs several sessions (the CPU,
        windows graded alone), they start on it at once in their own threads, so regions
        handed over one after another keep every session busy (:meth:`predict_stream`)."""
        prep, logits = self._submit_logits(region)

        def probabilities() -> np.ndarray:
            p = _softmax(logits(), axis=-1)
            if prep.select is not None:
                p[0][~prep.select] = 0.0
            return p if prep.batched else p[0]

        return probabilities

    def predict_region(self, region: np.ndarray | PreparedRegion) -> np.ndarray:
        """Probabilities of every window of a region: (rows, cols, 30) (or batched)."""
        return self.submit(region)()

    def predict_stream(
        self, regions: Iterable[tuple[K, np.ndarray | PreparedRegion]], depth: int = 2
    ) -> Iterator[tuple[K, np.ndarray]]:
        """:meth:`predict_region` of each ``(key, region)``, yielded in order as
        ``(key, probabilities)``, with up to ``depth`` regions handed to the runtime at once:
        a session that finishes its share of one region goes on with the next instead of
        waiting for the others (on 2 cores 5-7 % of the grading time otherwise,
        docs/performance.md). ``regions`` is drawn ``depth - 1`` ahead of the results."""
        waiting: collections.deque[tuple[K, Callable[[], np.ndarray]]] = collections.deque()
        for key, region in regions:
            waiting.append((key, self.submit(region)))
            del region  # only the runtime's shares hold it now
            if len(waiting) >= max(1, depth):
                k, wait = waiting.popleft()
                yield k, wait()
                del wait  # nor this region's input, while the next one is drawn
        while waiting:
            k, wait = waiting.popleft()
            yield k, wait()
            del wait

    def predict_windows(self, windows: np.ndarray, batch: int = 256) -> np.ndarray:
        """Probabilities of independent windows: (n, 139, 139, 3) uint8 -> (n, 30)."""
        w = self.spec.window_px
        if windows.ndim != 4 or windows.shape[1:3] != (w, w):
            raise ConfigError(f"windows must be (n, {w}, {w}, 3), got {windows.shape}")
        out = []
        for i in range(0, len(windows), batch):
            out.append(self.predict_region(windows[i : i + batch])[:, 0, 0, :])
        if not out:
            return np.zeros((0, self.spec.num_classes), np.float32)
        return np.concatenate(out)


def cuda_available() -> bool:
    """True when ONNX Runtime has its CUDA execution provider (``onnxruntime-gpu``)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_grader(
    model: str | Path | None = None,
    *,
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    dense: bool = False,
) -> Grader:
    """Load a model for inference.

    ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA where ONNX Runtime can use it, else the
    CPU). ``backend``: ``onnx`` or ``auto``, both ONNX Runtime. ``precision``: ``fp32``;
    ``int8`` runs ``NAME.int8.onnx`` on the CPU (made by
    :func:`convfocus.grading.modelfile.quantize_onnx` when absent); ``fp16`` runs the graph
    in half precision on CUDA. ``dense``: grade regions with one pass of the conv stack
    instead of cutting out their windows (faster, not exact; see the module docstring).
    """
    from convfocus.grading.modelfile import load_spec, model_sha256, resolve_model_path

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of "
                          f"{', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: graders run with ONNX Runtime "
                          "(onnx or auto)")
    auto = device == "auto"
    if auto:
        device = "cuda" if precision != "int8" and cuda_available() else "cpu"
    elif device == "cuda" and not cuda_available():
        raise ConfigError("--device cuda asked for, but ONNX Runtime has no CUDA provider here "
                          "(it comes with the onnxruntime-gpu package)")
    if precision == "int8" and device != "cpu":
        raise ConfigError("--precision int8 runs on the CPU only")
    if precision == "fp16" and device != "cuda":
        raise ConfigError("--precision fp16 runs on CUDA only")
    base = resolve_model_path(model)
    spec = load_spec(base)
    if precision == "int8":
        grader = _int8_grader(base, spec, threads, dense)
    else:
        grader = _onnx_grader(base.with_suffix(".onnx"), spec, device, threads, dense,
                              fp16=precision == "fp16", fallback=auto)
    grader.model_sha256 = model_sha256(base)
    return grader


def _session(graph: bytes | str, path: Path, device: str, threads: int | None) -> Any:
    """An ONNX Runtime session; on ``cuda`` the CUDA provider must have started
    (ConfigError otherwise: no usable GPU or CUDA libraries)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    # ENABLE_ALL: the NCHWc layout for AVX2/AVX-512 convolutions (2.4x faster than EXTENDED)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the arena stays (without it 2x slower: fresh pages every run); no memory pattern: region
    # shapes vary, a pattern per shape only holds memory (45-130 MB less, same speed)
    so.enable_mem_pattern = False
    # no busy-waiting between runs: the cores go to tile decoding meanwhile
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else [
        "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(graph, so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"ONNX graph does not load: {exc}", path) from None
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise ConfigError("ONNX Runtime could not start its CUDA provider (no usable GPU, "
                          "driver or CUDA libraries)")
    return sess


def _onnx_grader(
    path: Path, spec: ModelSpec, device: str, threads: int | None, dense: bool = False,
    *, fp16: bool = False, fallback: bool = False,
) -> Grader:
    """ONNX Runtime on ``NAME.onnx``, with the input normalisation folded into the first
    convolution when the graph allows (one pass uint8 -> float32 instead of three);
    ``fp16``: the graph in half precision. ``fallback``: run on the CPU where CUDA was
    asked for but does not start (``--device auto``).

    The fp32 graph is folded on its bytes (:func:`~convfocus.grading.modelfile.
    fold_normalisation_bytes`): the ``onnx`` package, 0.65 CPU-s to import, is imported
    only for fp16 and for graphs of another form."""
    from convfocus.grading.modelfile import (
        ONNX_INPUT_NORMALISED,
        ONNX_INPUT_RGB,
        fold_normalisation,
        fold_normalisation_bytes,
        to_fp16,
    )

    if not path.is_file():
        raise ModelError("no ONNX graph beside the model (training exports NAME.onnx)", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"ONNX graph does not load: {exc.strerror or exc}", path) from None
    try:
        model: bytes | None = fold_normalisation_bytes(data, spec)
    except ModelError:
        model = None
    prepare_windows = None
    name, prepare = ONNX_INPUT_RGB, _rgb_nchw_float  # type: str, Any
    if model is None or fp16:
        import onnx

        try:
            graph = onnx.load_from_string(data if model is None else model)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and others
            raise ModelError(f"ONNX graph does not load: {exc}", path) from None
        if model is None:
            try:
                graph = fold_normalisation(graph, spec)
            except ModelError as exc:
                log.info("normalisation not folded into %s (%s)", path.name, exc.message)
                name, prepare = ONNX_INPUT_NORMALISED, None
        if fp16:
            graph = to_fp16(graph)
        model = graph.SerializeToString()
    if prepare is not None:
        prepare_windows = _windows_prepare(spec)
    try:
        sessions = _sessions(model, path, device, threads, dense)
    except ConfigError as exc:
        if not (fallback and device == "cuda"):
            raise
        log.warning("%s; grading on the CPU", exc.message)
        device = "cpu"
        sessions = _sessions(model, path, device, threads, dense)
    return Grader(spec, _batch_runner(sessions, name), "onnx", device, prepare=prepare,
                  prepare_windows=prepare_windows, precision="fp16" if fp16 else "fp32",
                  dense=dense)


def _sessions(
    graph: bytes | str, path: Path, device: str, threads: int | None, dense: bool
) -> list[Any]:
    """The sessions a grader runs: on the CPU, windows graded alone (not ``dense``) go to
    one single-threaded session per core, a share of the batch each; otherwise one session
    with ``threads`` threads."""
    n = threads or (os.cpu_count() or 1)
    if device != "cpu" or dense or n == 1:
        return [_session(graph, path, device, threads)]
    return [_session(graph, path, device, 1) for _ in range(n)]


def _batch_runner(sessions: list[Any], input_name: str):  # type: ignore[no-untyped-def]
    """``submit(x) -> wait``, ``wait() -> logits``: one session run at once in the calling
    thread, or the batch axis of ``x`` split over several sessions, each share run in a
    thread of its own as soon as a session is free (each image's logits do not depend on
    its batch: the same result, bit for bit). Several single-threaded sessions grade 5-10 %
    more per CPU-second than one session with as many threads, more on a loaded machine,
    where one preempted thread stalls the others at every operator (docs/performance.md)."""
    first = sessions[0]
    if len(sessions) == 1:
        def submit_one(x: np.ndarray) -> Callable[[], np.ndarray]:
            z = first.run(["logits"], {input_name: x})[0]
            return lambda: z

        return submit_one
    free: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for s in sessions:
        free.put(s)
    pool = ThreadPoolExecutor(len(sessions), thread_name_prefix="cf-onnx")

    def run_share(x: np.ndarray) -> np.ndarray:
        s = free.get()  # as many threads as sessions: one is free
        try:
            return s.run(["logits"], {input_name: x})[0]
        finally:
            free.put(s)

    def submit(x: np.ndarray) -> Callable[[], np.ndarray]:
        cuts = [len(x) * i // len(sessions) for i in range(len(sessions) + 1)]
        futures = [pool.submit(run_share, x[a:b]) for a, b in itertools.pairwise(cuts)
                   if b > a] or [pool.submit(run_share, x)]  # an empty batch: one share

        def wait() -> np.ndarray:
            parts = [f.result() for f in futures]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return wait

    weakref.finalize(submit, pool.shutdown, wait=False)
    return submit


def _windows_prepare(spec: ModelSpec):  # type: ignore[no-untyped-def]
    def prepare_windows(x: np.ndarray, select: np.ndarray | None) -> np.ndarray:
        return _windows_rgb_nchw_float(x, spec.window_px, spec.stride_px, select)

    return prepare_windows


def cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``) from /proc/cpuinfo (Linux),
    or None where it is not there."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


#: x86 flags of the 8-bit dot product (VNNI) that int8 was validated with
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def _warn_int8_without_vnni(flags: set[str] | None) -> None:
    """int8 agreement was measured on a CPU with VNNI; without it ONNX Runtime's u8 x s8
    kernels add pairs of products in 16 bits, which can saturate (docs/performance.md)."""
    if flags is not None and "avx2" in flags and not flags & VNNI_FLAGS:
        log.warning("this CPU has no VNNI: int8 was validated on one that has it, and here "
                    "its sums of 8-bit products may saturate; check with `convfocus "
                    "check-model --precision int8` or scan in fp32")


def _int8_grader(
    base: Path, spec: ModelSpec, threads: int | None, dense: bool = False
) -> Grader:
    """ONNX Runtime on ``NAME.int8.onnx``; quantised here first when it is missing (beside
    the model, or in memory where that folder is read-only)."""
    import tempfile

    from convfocus.grading.modelfile import (
        ONNX_INPUT_RGB,
        int8_is_current,
        int8_path,
        quantize_onnx,
    )

    _warn_int8_without_vnni(cpu_flags())
    path = int8_path(base)
    graph: bytes | str = str(path)
    if not (path.is_file() and int8_is_current(path)):  # absent, or an older recipe
        if not base.with_suffix(".onnx").is_file():
            raise ModelError("no ONNX graph beside the model", base.with_suffix(".onnx"))
        log.info("quantising %s to int8", base.name)
        try:
            quantize_onnx(base)
        except (OSError, OutputError):  # a read-only folder
            with tempfile.TemporaryDirectory(prefix="convfocus-int8-") as tmpd:
                graph = quantize_onnx(base, out=Path(tmpd) / path.name).read_bytes()
    submit = _batch_runner(_sessions(graph, path, "cpu", threads, dense), ONNX_INPUT_RGB)
    return Grader(spec, submit, "onnx", "cpu", prepare=_rgb_nchw_float,
                  prepare_windows=_windows_prepare(spec), precision="int8", dense=dense)
