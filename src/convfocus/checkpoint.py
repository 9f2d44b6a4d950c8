"""The single owner of the weights format: ``NAME.safetensors`` + ``NAME.json`` (ModelSpec).

An optional ``NAME.onnx`` holds the fully convolutional graph (input ``image``:
float32 (N, 3, H, W) normalised; output ``logits``: (N, 30, rows, cols)) that
inference runs with ONNX Runtime.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from convfocus.errors import ModelError
from convfocus.model import ConvFocusNet, build_model
from convfocus.types import ModelSpec

DEFAULT_MODEL = "convfocus-default"


def packaged_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(str(resources.files("convfocus") / "models"))


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` -> the shipped default; a name -> a shipped model; else a path (with or
    without suffix) to ``.json``/``.safetensors``/``.onnx``. Returns the path without suffix."""
    if model is None:
        model = DEFAULT_MODEL
    p = Path(model)
    if p.suffix in (".json", ".safetensors", ".onnx"):
        p = p.with_suffix("")
    if p.with_suffix(".json").is_file():
        return p
    shipped = packaged_models_dir() / p.name
    if shipped.with_suffix(".json").is_file():
        return shipped
    raise ModelError("model not found (no spec .json beside it)", model)


def load_spec(base: Path) -> ModelSpec:
    try:
        return ModelSpec.from_dict(json.loads(base.with_suffix(".json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"unreadable model spec: {exc}", base.with_suffix(".json")) from None


def save_model(base: Path, model: ConvFocusNet, spec: ModelSpec, *, onnx: bool = True) -> None:
    """Write ``base.safetensors``, ``base.json`` and (optionally) ``base.onnx`` atomically."""
    base.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = base.with_name(base.name + ".tmp.safetensors")
    save_file(tensors, str(tmp), metadata={"arch": spec.arch, "name": spec.name})
    os.replace(tmp, base.with_suffix(".safetensors"))
    tmpj = base.with_name(base.name + ".tmp.json")
    tmpj.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmpj, base.with_suffix(".json"))
    if onnx:
        export_onnx(model, spec, base.with_suffix(".onnx"))


def load_model(model: str | Path | None = None) -> tuple[ConvFocusNet, ModelSpec]:
    """Load a network in eval mode with its spec."""
    base = resolve_model_path(model)
    spec = load_spec(base)
    net = build_model(spec.arch, spec.num_classes)
    try:
        state = load_file(str(base.with_suffix(".safetensors")))
        net.load_state_dict(state)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"weights do not load: {exc}", base.with_suffix(".safetensors")) from None
    net.eval()
    return net, spec


class _Dense(torch.nn.Module):
    def __init__(self, net: ConvFocusNet, spec: ModelSpec) -> None:
        super().__init__()
        self.net, self.window, self.stride = net, spec.window_px, spec.stride_px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_dense(x, self.window, self.stride)


def export_onnx(net: ConvFocusNet, spec: ModelSpec, path: Path, *, opset: int = 17) -> None:
    """Export the fully convolutional graph with dynamic batch, height and width."""
    net = net.eval()
    side = spec.window_px + spec.stride_px
    x = torch.zeros(1, 3, side, side)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            _Dense(net, spec), (x,), str(tmp), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "rows", 3: "cols"}},
            opset_version=opset, dynamo=False,
        )
    os.replace(tmp, path)
