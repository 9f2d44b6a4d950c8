"""Model files, read without PyTorch: find a model, read its spec, rewrite its graph.

A model ``NAME`` is a set of files side by side: ``NAME.json`` (the
:class:`~convfocus.types.ModelSpec`: classes, window, stride, pixel size,
normalisation, architecture), ``NAME.safetensors`` (the weights, which
:mod:`convfocus.training.checkpoint` writes and reads with PyTorch) and ``NAME.onnx``,
the fully convolutional graph (input ``image``: float32 (N, 3, H, W) normalised; output
``logits``: (N, 30, rows, cols)) that grading runs with ONNX Runtime. An optional
``NAME.int8.onnx`` (:func:`quantize_onnx`) is the same graph with int8 weights and
activations; its input ``rgb`` is float32 (N, 3, H, W) RGB in 0..255, the normalisation
being folded into the first convolution (:func:`fold_normalisation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

from convfocus.errors import ConfigError, ModelError
from convfocus.io.atomic import write_bytes_atomic
from convfocus.types import ModelSpec

DEFAULT_MODEL = "convfocus-default"
#: Short names of the shipped models: ``--model fast`` is the student distilled from the
#: default (docs/model-card.md, "The fast grader").
MODEL_ALIASES = {"default": DEFAULT_MODEL, "fast": "convfocus-fast"}

#: Input of ``NAME.onnx``: float32 (N, 3, H, W), ``(x / 255 - mean) / std``.
ONNX_INPUT_NORMALISED = "image"
#: Input of a graph with the normalisation folded in: float32 (N, 3, H, W), RGB 0..255.
ONNX_INPUT_RGB = "rgb"
#: Quantisation methods of :func:`quantize_onnx`.
QUANT_METHODS = ("static", "dynamic")
#: Tag of the int8 recipe, stored in the int8 graph's metadata: a graph with another tag
#: (an older recipe) is quantised again. 2: the first convolution and the classifier stay
#: fp32 (docs/performance.md, int8).
QUANT_RECIPE = "2"
QUANT_RECIPE_KEY = "convfocus_int8_recipe"


def packaged_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(str(resources.files("convfocus") / "models"))


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` -> the shipped default; a name (or an alias of :data:`MODEL_ALIASES`) -> a
    shipped model; else a path (with or without suffix) to ``.json``/``.safetensors``/
    ``.onnx``. Returns the path without suffix."""
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, str) and model in MODEL_ALIASES and not Path(model).exists():
        model = MODEL_ALIASES[model]
    p = Path(model)
    if p.suffix in (".json", ".safetensors", ".onnx"):
        p = p.with_suffix("")
    if p.with_suffix(".json").is_file():
        return p
    shipped = packaged_models_dir() / p.name
    if shipped.with_suffix(".json").is_file():
        return shipped
    raise ModelError("model not found (no spec .json beside it)", model)


#: Fields a model spec must have.
SPEC_REQUIRED = ("name", "version", "arch")


def load_spec(base: Path) -> ModelSpec:
    """The :class:`~convfocus.types.ModelSpec` in ``NAME.json``.

    Raises :class:`~convfocus.errors.ModelError` naming the file and what is wrong with
    it: unreadable, not JSON, not an object, a required field missing, a field of the
    wrong kind.
    """
    path = base.with_suffix(".json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read the model spec: {exc.strerror or exc}", path) from None
    except UnicodeDecodeError:
        raise ModelError("the model spec is not UTF-8 text", path) from None
    try:
        d = json.loads(text)
    except ValueError as exc:
        where = (f" (line {exc.lineno}, column {exc.colno}: {exc.msg})"
                 if isinstance(exc, json.JSONDecodeError) else "")
        raise ModelError(f"the model spec is not valid JSON{where}", path) from None
    if not isinstance(d, dict):
        raise ModelError("the model spec must be a JSON object", path)
    missing = [k for k in SPEC_REQUIRED if k not in d]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        raise ModelError(f"the model spec lacks {names} (it needs {', '.join(SPEC_REQUIRED)})",
                         path)
    problem = _spec_problem(d)
    if problem is not None:
        raise ModelError(f"the model spec's {problem}", path)
    return ModelSpec.from_dict(d)


def _spec_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a spec dictionary, or None."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key in ("name", "version", "arch"):
        if not isinstance(d[key], (str, int)) or isinstance(d[key], bool) or d[key] == "":
            return f"{key!r} must be a non-empty text, got {d[key]!r}"
    for key in ("num_classes", "window_px", "stride_px"):
        v = d.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            return f"{key!r} must be a positive integer, got {v!r}"
    if "mpp" in d and not (number(d["mpp"]) and d["mpp"] > 0):
        return f"'mpp' must be a positive number (µm/px), got {d['mpp']!r}"
    for key in ("mean", "std"):
        v = d.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(v, list) and len(v) == 3 and all(number(x) for x in v)):
            return f"{key!r} must be a list of three numbers (R, G, B), got {v!r}"
        if key == "std" and not all(x > 0 for x in v):
            return f"'std' must be positive, got {v!r}"
    for key in ("blur", "spacing"):
        if key in d and not isinstance(d[key], str):
            return f"{key!r} must be a text, got {d[key]!r}"
    for key in ("training", "metrics"):
        if key in d and not isinstance(d[key], dict):
            return f"{key!r} must be a JSON object, got {d[key]!r}"
    return None


def model_sha256(base: Path) -> str:
    """SHA-256 over a model's spec and graph (``NAME.json``, then ``NAME.onnx`` where it
    exists): summary.json records it, so that a resumed batch knows when the model's
    files changed under the same name and version."""
    h = hashlib.sha256()
    for suffix in (".json", ".onnx"):
        f = base.with_suffix(suffix)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ModelError(f"cannot read the model: {exc.strerror or exc}", f) from None
        h.update(suffix.encode("ascii"))
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# --- graph rewrites: normalisation folded into the first conv, fp16, int8 -----------------------


def int8_path(base: Path) -> Path:
    """``NAME.int8.onnx`` beside ``NAME.json``."""
    return base.with_name(base.name + ".int8.onnx")


def fold_normalisation(graph: Any, spec: ModelSpec) -> Any:
    """Fold ``(x / 255 - mean) / std`` into the first convolution of an ONNX graph.

    ``graph`` is an ``onnx.ModelProto`` whose input ``image`` feeds one unpadded Conv
    (exact there: no padded border sees the shifted zero). Returns a new graph whose
    input ``rgb`` takes float32 RGB in 0..255 and whose outputs equal the original's
    up to float rounding. Raises :class:`ModelError` when the graph does not have that
    form.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    g = onnx.ModelProto()
    g.CopyFrom(graph)
    gi = g.graph
    names = [i.name for i in gi.input]
    if ONNX_INPUT_RGB in names:
        return g
    if names != [ONNX_INPUT_NORMALISED]:
        raise ModelError(f"ONNX graph inputs {names} are not [{ONNX_INPUT_NORMALISED!r}]")
    users = [n for n in gi.node if ONNX_INPUT_NORMALISED in n.input]
    conv = users[0] if len(users) == 1 else None
    attrs = {} if conv is None else {a.name: onnx.helper.get_attribute_value(a)
                                     for a in conv.attribute}
    pads = attrs.get("pads", [0])
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if (conv is None or conv.op_type != "Conv" or conv.input[0] != ONNX_INPUT_NORMALISED
            or any(pads) or auto_pad not in (b"NOTSET", b"VALID") or attrs.get("group", 1) != 1):
        raise ModelError("the graph's input does not feed one unpadded convolution")
    inits = {t.name: t for t in gi.initializer}
    if conv.input[1] not in inits:
        raise ModelError("the first convolution's weights are not constants")
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)  # (out, 3, k, k)
    bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    if bias_name is not None and bias_name not in inits:
        raise ModelError("the first convolution's bias is not a constant")
    b = (numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name
         else np.zeros(w.shape[0]))
    w_rgb, b_rgb = _folded_weights(w, b, spec)
    # fresh initializer names: the originals may be shared with other nodes
    wn, bn = conv.input[1] + "_rgb", (bias_name or "conv0_bias") + "_rgb"
    gi.initializer.extend([numpy_helper.from_array(w_rgb, wn),
                           numpy_helper.from_array(b_rgb, bn)])
    old = [n for n in conv.input[1:] if n]
    del conv.input[:]
    conv.input.extend([ONNX_INPUT_RGB, wn, bn])
    used = {i for n in gi.node for i in n.input}
    keep = [t for t in gi.initializer if t.name not in old or t.name in used]
    del gi.initializer[:]
    gi.initializer.extend(keep)
    gi.input[0].name = ONNX_INPUT_RGB
    return g


def _folded_weights(w: Any, b: Any, spec: ModelSpec) -> tuple[Any, Any]:
    """Weights (out, 3, k, k) and bias (out,) of a convolution on ``(x / 255 - mean) / std``
    -> the same convolution on ``x`` (float64 arithmetic, float32 results)."""
    import numpy as np

    w = np.asarray(w, np.float64)
    std = np.asarray(spec.std, np.float64)
    mean = np.asarray(spec.mean, np.float64)
    w_rgb = w / (255.0 * std)[None, :, None, None]
    b_rgb = np.asarray(b, np.float64) - (w * (mean / std)[None, :, None, None]).sum(
        axis=(1, 2, 3))
    return w_rgb.astype(np.float32), b_rgb.astype(np.float32)


# Field numbers of onnx.proto (unchanged since IR version 3) that the folding reads or writes.
_MODEL_GRAPH, _MODEL_METADATA_PROPS = 7, 14  # metadata_props: {key = 1, value = 2}
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT = 1, 5, 11
_NODE_INPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 4, 5, 7
_ATTR_NAME, _ATTR_I, _ATTR_S, _ATTR_INTS = 1, 3, 4, 8
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_FLOATS, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 4, 8, 9
_TENSOR_SEGMENT, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 3, 13, 14
_FLOAT = 1  # TensorProto.FLOAT


def fold_normalisation_bytes(data: bytes, spec: ModelSpec) -> bytes:
    """:func:`fold_normalisation` on a serialised graph, without the ``onnx`` package.

    Importing ``onnx`` costs about 0.65 CPU-seconds (its ``ml_dtypes`` extension) at the
    start of every scan; this reads and rewrites the few fields involved in protobuf's wire
    format instead. The result takes float32 RGB in 0..255 as ``rgb`` and grades as
    :func:`fold_normalisation`'s does (the same float32 weights; the first convolution's
    initializers keep their names). Raises :class:`ModelError` where that function would,
    and also where the graph's form is one only the ``onnx`` route handles (a convolution
    without bias, weights shared with other nodes or stored outside the file).
    """
    model = _pb_fields(data)
    graphs = [f for f in model if f[0] == _MODEL_GRAPH and f[1] == 2]
    if len(graphs) != 1:
        raise ModelError("the ONNX file holds no graph")
    graph = _pb_fields(graphs[0][2])
    inputs = [_pb_str(_pb_first(_pb_fields(f[2]), _ATTR_NAME, b""))
              for f in graph if f[0] == _GRAPH_INPUT]
    if ONNX_INPUT_RGB in inputs:
        return data
    if inputs != [ONNX_INPUT_NORMALISED]:
        raise ModelError(f"ONNX graph inputs {inputs} are not [{ONNX_INPUT_NORMALISED!r}]")
    nodes = [(i, _pb_fields(f[2])) for i, f in enumerate(graph) if f[0] == _GRAPH_NODE]
    node_inputs = {i: [_pb_str(v) for k, _, v, _ in n if k == _NODE_INPUT] for i, n in nodes}
    users = [(i, n) for i, n in nodes if ONNX_INPUT_NORMALISED in node_inputs[i]]
    if len(users) != 1:
        raise ModelError("the graph's input does not feed one unpadded convolution")
    conv_at, conv = users[0]
    attrs = {_pb_str(_pb_first(a, _ATTR_NAME, b"")): a
             for a in (_pb_fields(v) for k, _, v, _ in conv if k == _NODE_ATTRIBUTE)}
    pads = _pb_ints(attrs["pads"]) if "pads" in attrs else []
    auto_pad = _pb_first(attrs["auto_pad"], _ATTR_S, b"") if "auto_pad" in attrs else b"NOTSET"
    group = _pb_int(_pb_first(attrs["group"], _ATTR_I, 1)) if "group" in attrs else 1
    op = _pb_str(_pb_first(conv, _NODE_OP_TYPE, b""))
    domain = _pb_str(_pb_first(conv, _NODE_DOMAIN, b""))
    names = node_inputs[conv_at]
    if (op != "Conv" or domain not in ("", "ai.onnx") or names[0] != ONNX_INPUT_NORMALISED
            or any(pads) or auto_pad not in (b"NOTSET", b"VALID") or group != 1):
        raise ModelError("the graph's input does not feed one unpadded convolution")
    if len(names) < 3 or not names[2]:
        raise ModelError("the first convolution has no bias")  # the onnx route adds one
    if any(name in node_inputs[i] for i, _ in nodes if i != conv_at for name in names[1:3]):
        raise ModelError("the first convolution's weights are shared with other nodes")
    tensors = {}
    for i, f in enumerate(graph):
        if f[0] == _GRAPH_INITIALIZER:
            t = _pb_fields(f[2])
            name = _pb_str(_pb_first(t, _TENSOR_NAME, b""))
            if name in names[1:3]:
                tensors[name] = (i, _pb_floats(t))
    if set(tensors) != set(names[1:3]):
        raise ModelError("the first convolution's weights are not constants")
    w, b = tensors[names[1]][1], tensors[names[2]][1]
    if w.ndim != 4 or w.shape[1] != 3 or b.shape != (w.shape[0],):
        raise ModelError(f"the first convolution's weights {w.shape} do not take RGB")
    w_rgb, b_rgb = _folded_weights(w, b, spec)
    new = {tensors[names[1]][0]: _pb_tensor(names[1], w_rgb),
           tensors[names[2]][0]: _pb_tensor(names[2], b_rgb),
           conv_at: _pb_message([(k, wt, ONNX_INPUT_RGB.encode() if k == _NODE_INPUT and bytes(
               v) == ONNX_INPUT_NORMALISED.encode() else v) for k, wt, v, _ in conv])}
    for i, f in enumerate(graph):
        if f[0] == _GRAPH_INPUT:
            new[i] = _pb_message([(k, wt, ONNX_INPUT_RGB.encode() if k == _ATTR_NAME else v)
                                  for k, wt, v, _ in _pb_fields(f[2])])
    graph_bytes = b"".join(_pb_len(f[0], new[i]) if i in new else f[3]
                           for i, f in enumerate(graph))
    return b"".join(_pb_len(_MODEL_GRAPH, graph_bytes) if f is graphs[0] else f[3]
                    for f in model)


def _pb_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ModelError("unreadable ONNX graph (protobuf cut short)")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _pb_fields(buf: bytes) -> list[tuple[int, int, Any, bytes]]:
    """A protobuf message's fields in order: (number, wire type, value, bytes as written);
    values are ints for varints, bytes otherwise."""
    out = []
    i = 0
    while i < len(buf):
        start = i
        key, i = _pb_varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _pb_varint(buf, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i : i + size], i + size
        elif wire == 2:
            size, i = _pb_varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ModelError(f"unreadable ONNX graph (protobuf wire type {wire})")
        if i > len(buf):
            raise ModelError("unreadable ONNX graph (protobuf cut short)")
        out.append((number, wire, value, buf[start:i]))
    return out


def _pb_first(fields: list[tuple[int, int, Any, bytes]], number: int, default: Any) -> Any:
    return next((v for k, _, v, _ in fields if k == number), default)


def _pb_str(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace")


def _pb_int(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 two's complement


def _pb_ints(attr: list[tuple[int, int, Any, bytes]]) -> list[int]:
    out = []
    for k, wire, v, _ in attr:
        if k != _ATTR_INTS:
            continue
        if wire == 0:
            out.append(_pb_int(v))
        else:  # packed
            i = 0
            while i < len(v):
                x, i = _pb_varint(v, i)
                out.append(_pb_int(x))
    return out


def _pb_floats(tensor: list[tuple[int, int, Any, bytes]]) -> Any:
    """A float32 TensorProto's values as a float64 array of its shape."""
    import numpy as np

    numbers = {k for k, _, _, _ in tensor}
    if _pb_first(tensor, _TENSOR_TYPE, 0) != _FLOAT or numbers & {
            _TENSOR_SEGMENT, _TENSOR_EXTERNAL, _TENSOR_LOCATION}:
        raise ModelError("the first convolution's weights are not float32 in the file")
    dims = []
    for k, wire, v, _ in tensor:
        if k == _TENSOR_DIMS:
            dims += [_pb_int(v)] if wire == 0 else _pb_ints([(_ATTR_INTS, 2, v, b"")])
    raw = _pb_first(tensor, _TENSOR_RAW, None)
    if raw is not None:
        values = np.frombuffer(raw, "<f4")
    else:
        values = np.concatenate([np.frombuffer(v, "<f4") for k, _, v, _ in tensor
                                 if k == _TENSOR_FLOATS] or [np.zeros(0, np.float32)])
    if values.size != int(np.prod(dims)):
        raise ModelError("the first convolution's weights do not match their shape")
    return values.astype(np.float64).reshape(dims)


def _pb_key(number: int, wire: int) -> bytes:
    return _pb_encode_varint(number << 3 | wire)


def _pb_encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _pb_len(number: int, payload: bytes) -> bytes:
    return _pb_key(number, 2) + _pb_encode_varint(len(payload)) + payload


def _pb_message(fields: list[tuple[int, int, Any]]) -> bytes:
    out = []
    for k, wire, v in fields:
        if wire == 0:
            out.append(_pb_key(k, 0) + _pb_encode_varint(v))
        elif wire == 2:
            out.append(_pb_len(k, bytes(v)))
        else:
            out.append(_pb_key(k, wire) + bytes(v))
    return b"".join(out)


def _pb_tensor(name: str, values: Any) -> bytes:
    """A float32 TensorProto: dims, data type, name, raw data (little-endian)."""
    return (b"".join(_pb_key(_TENSOR_DIMS, 0) + _pb_encode_varint(d) for d in values.shape)
            + _pb_key(_TENSOR_TYPE, 0) + _pb_encode_varint(_FLOAT)
            + _pb_len(_TENSOR_NAME, name.encode())
            + _pb_len(_TENSOR_RAW, values.astype("<f4").tobytes()))


def to_fp16(graph: Any) -> Any:
    """A copy of an ONNX graph with float16 weights and arithmetic; its input and output
    stay float32 (for GPUs, where half precision is the fast path)."""
    import onnx
    from onnxruntime.transformers.float16 import (  # type: ignore[import-untyped]
        convert_float_to_float16,
    )

    g = onnx.ModelProto()
    g.CopyFrom(graph)
    return convert_float_to_float16(g, keep_io_types=True)


#: Pixel size of scikit-image's IHC image (µm/px), as in ``convfocus.demo.IHC_MPP``.
_IHC_MPP = 0.35


def calibration_regions(spec: ModelSpec, *, n: int = 24, side_cells: int = 4,
                        seed: int = 0) -> list[Any]:
    """Real tissue at the model's pixel size, sharp and blurred over the class range.

    scikit-image's immunohistochemistry image (always installed), crops of
    ``stride * side_cells + (window - stride)`` px blurred with the bokeh kernel at
    the nominal radius of classes 0..29 in turn. Returns float32 (1, 3, H, W) 0..255.
    """
    import numpy as np
    from skimage import data

    from convfocus.io.images import resize
    from convfocus.synthesis.defocus import apply_blur, class_centre_px

    ihc = data.immunohistochemistry()
    f = _IHC_MPP / spec.mpp
    tissue = resize(ihc, scale=f)
    tissue = np.concatenate([tissue, tissue[:, ::-1]], axis=1)
    side = spec.stride_px * side_cells + (spec.window_px - spec.stride_px)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = int(rng.integers(0, tissue.shape[0] - side + 1))
        x = int(rng.integers(0, tissue.shape[1] - side + 1))
        crop = tissue[y : y + side, x : x + side]
        c = (i * 7) % spec.num_classes  # every class, spread over the crops
        if c:
            crop = apply_blur(crop, "bokeh", class_centre_px(c))
        out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32))
    return out


def quantize_onnx(
    base: Path, *, method: str = "static", out: Path | None = None, calibration: int = 24
) -> Path:
    """Write an int8 copy of ``NAME.onnx`` (default ``NAME.int8.onnx``) and return its path.

    ``static``: QDQ graph, per-channel int8 weights, uint8 activations whose ranges are
    calibrated (min/max) on ``calibration`` crops of :func:`calibration_regions`; the input
    ``rgb`` keeps its exact 0..255 range (scale 1); the first convolution (it sees the raw
    pixels) and the classifier (30 logits a class apart) stay fp32: with the `large`
    network that keeps 99.4 % of windows within one class of fp32 where quantising them
    too kept 97.7 %, at the same speed. ``dynamic``: int8 weights, activations quantised
    at run time (``ConvInteger``). Both take 0..255 RGB (``rgb``); the graph carries
    :data:`QUANT_RECIPE` in its metadata.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader  # type: ignore[import-untyped]

    if method not in QUANT_METHODS:
        raise ConfigError(f"unknown quantisation method {method!r}; choose static or dynamic")
    base = resolve_model_path(base)
    spec = load_spec(base)
    src = base.with_suffix(".onnx")
    try:
        graph = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - OSError, protobuf's DecodeError
        raise ModelError(f"ONNX graph does not load: {exc}", src) from None
    folded = fold_normalisation(graph, spec)
    out = Path(out) if out is not None else int8_path(base)
    regions = calibration_regions(spec, n=calibration) if method == "static" else []

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(regions)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {ONNX_INPUT_RGB: x}

    quiet = _DropRecords("pre-process")  # onnxruntime's advice, logged on the root logger
    logging.getLogger().addFilter(quiet)
    try:
        _quantize_to(folded, out, method, _Reader())
    finally:
        logging.getLogger().removeFilter(quiet)
    return out


class _DropRecords(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize_to(folded: Any, out: Path, method: str, reader: Any) -> None:
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="convfocus-quant-") as tmpd:
        f32 = Path(tmpd) / "folded.onnx"
        q = Path(tmpd) / "int8.onnx"
        onnx.save(folded, str(f32))
        if method == "static":
            convs = [n.name for n in folded.graph.node if n.op_type == "Conv"]
            quantize_static(
                str(f32), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=[convs[0], convs[-1]] if len(convs) > 2 else [],
                extra_options={"TensorQuantOverrides": {ONNX_INPUT_RGB: [
                    {"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}]}},
            )
        else:
            quantize_dynamic(str(f32), str(q), weight_type=QuantType.QInt8)
        graph = onnx.load(str(q))
        onnx.helper.set_model_props(graph, {QUANT_RECIPE_KEY: QUANT_RECIPE})
        write_bytes_atomic(out, graph.SerializeToString(), parents=True)


def int8_is_current(path: Path) -> bool:
    """Whether the int8 graph at ``path`` was made by today's recipe (:data:`QUANT_RECIPE`).

    Read with this module's protobuf reader: importing ``onnx`` would add about 1.8 s to
    every int8 scan's start-up."""
    try:
        entries = [_pb_fields(bytes(v)) for k, wire, v, _ in _pb_fields(path.read_bytes())
                   if k == _MODEL_METADATA_PROPS and wire == 2]
    except (OSError, ModelError):  # unreadable or not ONNX: make it again
        return False
    return any(_pb_str(_pb_first(e, 1, b"")) == QUANT_RECIPE_KEY
               and _pb_str(_pb_first(e, 2, b"")) == QUANT_RECIPE for e in entries)
