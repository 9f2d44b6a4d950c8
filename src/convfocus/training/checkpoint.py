"""Weights with PyTorch: ``NAME.safetensors`` beside the spec, and the ONNX export.

:func:`save_model` writes a trained network as the files of
:mod:`convfocus.grading.modelfile` (weights, graph, and the spec last);
:func:`load_model` builds the network back from them. Grading needs none of this:
it runs the ONNX graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from convfocus.errors import ModelError
from convfocus.grading.modelfile import int8_path, load_spec, resolve_model_path
from convfocus.io.atomic import make_folder, write_atomic, write_text_atomic
from convfocus.types import ModelSpec

if TYPE_CHECKING:
    from convfocus.training.model import ConvFocusNet


def save_model(base: Path, model: ConvFocusNet, spec: ModelSpec, *, onnx: bool = True) -> None:
    """Write ``base.safetensors``, (optionally) ``base.onnx``, and ``base.json`` last.

    Each file is written atomically, and the spec, which names the model, lands only once
    the weights and the graph are in place. Graphs of an earlier model under the same name
    (``base.int8.onnx``, and ``base.onnx`` when ``onnx`` is false) are removed first: they
    would not match the new weights.
    """
    import torch
    from safetensors.torch import save_file

    # NCHW whatever layout the network trained in (training_memory_format): safetensors
    # needs contiguous tensors, and the graph is exported from the same weights
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    make_folder(base.parent)
    stale = [int8_path(base)] + ([] if onnx else [base.with_suffix(".onnx")])
    for path in stale:
        path.unlink(missing_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    def write_weights(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={"arch": spec.arch, "name": spec.name})
        # safetensors creates its file readable by its owner only; a model is shared
        # (packaged, copied to workers) like the .json and .onnx beside it
        os.chmod(tmp, 0o644)

    write_atomic(base.with_suffix(".safetensors"), write_weights)
    if onnx:
        export_onnx(model, spec, base.with_suffix(".onnx"))
    write_text_atomic(base.with_suffix(".json"),
                      json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")


def load_model(model: str | Path | None = None) -> tuple[ConvFocusNet, ModelSpec]:
    """Load a network in eval mode with its spec."""
    from safetensors.torch import load_file

    from convfocus.training.model import build_model

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


def export_onnx(net: ConvFocusNet, spec: ModelSpec, path: Path, *, opset: int = 17) -> None:
    """Export the fully convolutional graph with dynamic batch, height and width."""
    import torch

    class _Dense(torch.nn.Module):
        def __init__(self, net: ConvFocusNet, spec: ModelSpec) -> None:
            super().__init__()
            self.net, self.window, self.stride = net, spec.window_px, spec.stride_px

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_dense(x, self.window, self.stride)

    net = net.eval()
    side = spec.window_px + spec.stride_px
    x = torch.zeros(1, 3, side, side)

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                _Dense(net, spec), (x,), str(tmp), input_names=["image"],
                output_names=["logits"], opset_version=opset, dynamo=False,
                dynamic_axes={"image": {0: "n", 2: "h", 3: "w"},
                              "logits": {0: "n", 2: "rows", 3: "cols"}},
            )

    write_atomic(path, write)
