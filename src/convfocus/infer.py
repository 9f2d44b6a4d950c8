"""Inference: a Grader runs a model on windows or, fully convolutionally, on whole regions.

ONNX Runtime runs the exported dense graph on CPU (and on CUDA where its CUDA
provider is installed); PyTorch is the fallback and the CUDA path. Settings
(window, stride, normalisation) come from the model's spec, never from guesses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from convfocus.errors import ConfigError, ModelError
from convfocus.types import ModelSpec

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class Grader:
    """A loaded model. ``predict_region`` is the fast path; ``predict_windows`` the reference."""

    def __init__(self, spec: ModelSpec, run, backend: str, device: str) -> None:  # type: ignore[no-untyped-def]
        self.spec = spec
        self._run = run  # float32 (N, 3, H, W) normalised -> logits (N, 30, rows, cols)
        self.backend = backend
        self.device = device
        self._mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        self._scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).reshape(1, 3, 1, 1)
        self._mean_scaled = self._mean / np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)

    def _normalise(self, x_uint8: np.ndarray) -> np.ndarray:
        # (N, H, W, 3) uint8 -> (N, 3, H, W) float32
        x = np.ascontiguousarray(x_uint8.transpose(0, 3, 1, 2), dtype=np.float32)
        x *= self._scale
        x -= self._mean_scaled
        return x

    def logits_region(self, region: np.ndarray) -> np.ndarray:
        """Logits of every window of one or more regions: (H, W, 3) or (N, H, W, 3) uint8
        with ``H = stride * rows + (window - stride)`` -> (N, rows, cols, 30) float32."""
        x = region[None] if region.ndim == 3 else region
        z = self._run(self._normalise(x))
        return np.ascontiguousarray(z.transpose(0, 2, 3, 1), dtype=np.float32)

    def predict_region(self, region: np.ndarray) -> np.ndarray:
        """Probabilities of every window of a region: (rows, cols, 30) (or batched)."""
        p = _softmax(self.logits_region(region), axis=-1)
        return p[0] if region.ndim == 3 else p

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


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def load_grader(
    model: str | Path | None = None,
    *,
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
) -> Grader:
    """Load a model for inference.

    ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when present). ``backend``:
    ``onnx`` (ONNX Runtime), ``torch`` or ``auto`` (ONNX Runtime on CPU, and on CUDA
    when its CUDA provider is installed; PyTorch otherwise).
    """
    from convfocus.checkpoint import load_spec, resolve_model_path

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    elif device == "cuda" and not _cuda_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    base = resolve_model_path(model)
    spec = load_spec(base)
    onnx_path = base.with_suffix(".onnx")
    if backend == "auto":
        backend = "onnx" if onnx_path.is_file() else "torch"
        if backend == "onnx" and device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                backend = "torch"
    if backend == "onnx":
        return _onnx_grader(onnx_path, spec, device, threads)
    if backend == "torch":
        return _torch_grader(base, spec, device, threads)
    raise ConfigError(f"unknown backend {backend!r}; choose onnx, torch or auto")


def _onnx_grader(path: Path, spec: ModelSpec, device: str, threads: int | None) -> Grader:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError("no ONNX graph beside the model", path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else [
        "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"ONNX graph does not load: {exc}", path) from None

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(["logits"], {"image": x})[0]

    return Grader(spec, run, "onnx", device)


def _torch_grader(base: Path, spec: ModelSpec, device: str, threads: int | None) -> Grader:
    import torch

    from convfocus.checkpoint import load_model

    net, _ = load_model(base)
    dev = torch.device(device)
    net = net.to(dev)
    if threads:
        torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(dev)
        return net.forward_dense(t, spec.window_px, spec.stride_px).float().cpu().numpy()

    return Grader(spec, run, "torch", device)
