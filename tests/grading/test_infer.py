"""Inference: regions graded window by window (exact, the default) or in one pass of the conv
stack (``dense``), the normalisation folded into the graph, int8 quantisation, precisions.

The dense pass is checked against each window graded alone with a random-weight network
(always) and with the shipped trained model: padding inside
the SAME convolution (Conv2d_2b_3x3) sees the neighbouring window's pixels in the region
but zeros in a window graded alone, so the two differ slightly along window edges."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cli_helpers import imported_by
from convfocus import MODEL_MPP, NUM_CLASSES
from convfocus.errors import ConfigError, ModelError
from convfocus.grading.infer import PreparedRegion, cuda_available, load_grader
from convfocus.grading.modelfile import (
    fold_normalisation,
    int8_path,
    load_spec,
    quantize_onnx,
    resolve_model_path,
)
from convfocus.synthesis.defocus import apply_blur, class_centre_px
from convfocus.training.checkpoint import save_model
from convfocus.training.model import build_model
from convfocus.types import ModelSpec
from model_helpers import randomise_bn

WIN, STRIDE = 139, 128
CELLS = 9  # a region of 9 x 9 windows: 1163 px




@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper network (16/16/16) with random weights and BatchNorm statistics."""
    torch.manual_seed(5)
    base = tmp_path_factory.mktemp("random-model") / "paper-random"
    save_model(base, randomise_bn(build_model("paper")),
               ModelSpec(name="paper-random", version="0", arch="paper"))
    return base


@pytest.fixture(scope="module")
def trained_model() -> Path:
    return resolve_model_path(None)  # the shipped model: missing fails, never skips


@pytest.fixture(scope="module")
def regions() -> np.ndarray:
    """Real tissue at 0.25 µm/px (scikit-image's IHC image, mirrored to fill the region):
    sharp, and blurred to classes 6 and 18. (3, 1163, 1163, 3) uint8."""
    from skimage import data

    from convfocus.demo import IHC_MPP

    f = IHC_MPP / MODEL_MPP
    ihc = cv2.resize(data.immunohistochemistry(), None, fx=f, fy=f,
                     interpolation=cv2.INTER_LANCZOS4)
    side = STRIDE * CELLS + WIN - STRIDE
    big = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    big = np.concatenate([big, big[::-1]], axis=0)[:side, :side]
    out = [big] + [apply_blur(big, "bokeh", class_centre_px(c)) for c in (6, 18)]
    return np.ascontiguousarray(np.stack(out))


def _windows(region: np.ndarray) -> np.ndarray:
    return np.stack([region[r * STRIDE : r * STRIDE + WIN, c * STRIDE : c * STRIDE + WIN]
                     for r in range(CELLS) for c in range(CELLS)])


def _region_and_per_window(grader, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dense = grader.predict_region(regions).reshape(-1, NUM_CLASSES)
    per = np.concatenate([grader.predict_windows(_windows(r)) for r in regions])
    return dense, per


# --- regions against windows graded alone ------------------------------------------------------


def test_regions_are_graded_exactly_as_windows_alone(random_model: Path,
                                                     regions: np.ndarray) -> None:
    """The default: a region's windows are cut out and graded as one batch."""
    grader = load_grader(random_model)
    assert not grader.dense
    region, per = _region_and_per_window(grader, regions)
    assert np.abs(region - per).max() < 1e-5


def test_selected_windows_only(random_model: Path, regions: np.ndarray) -> None:
    grader = load_grader(random_model)
    select = np.random.default_rng(0).random((CELLS, CELLS)) < 0.4
    full = grader.predict_region(regions[0])
    part = grader.predict_region(grader.prepare(regions[0], select=select))
    assert np.abs(part[select] - full[select]).max() < 1e-6
    assert not part[~select].any()
    with pytest.raises(ConfigError):
        grader.prepare(regions[0], select=select[1:])


def test_regions_streamed_to_the_sessions_grade_as_one_by_one(
        random_model: Path, regions: np.ndarray) -> None:
    """``predict_stream`` hands the next region over before one is finished (two sessions
    on their own threads): each region's probabilities, in order with its key, equal
    ``predict_region``'s bit for bit, with windows selected, at every depth, and regions
    handed over together may be waited for in any order."""
    two = load_grader(random_model, threads=2)
    rng = np.random.default_rng(3)
    selects = [rng.random((CELLS, CELLS)) < f for f in (0.3, 1.1, 0.7, 0.5)]
    items = [(f"r{i}", two.prepare(regions[i % 3], select=sel))
             for i, sel in enumerate(selects)]
    ref = [two.predict_region(r) for _, r in items]
    for depth in (1, 2, 3, 8):
        got = list(two.predict_stream(iter(items), depth=depth))
        assert [k for k, _ in got] == [k for k, _ in items]
        for (_, p), q in zip(got, ref, strict=True):
            np.testing.assert_array_equal(p, q)
    waits = [two.submit(r) for _, r in items]
    for i in (3, 0, 2, 1):
        np.testing.assert_array_equal(waits[i](), ref[i])
    assert not ref[0][~selects[0]].any()  # windows not selected come out as zeros
    empty = np.zeros((0, 3, WIN, WIN), np.float32)  # an empty batch gives empty logits
    assert two._submit(empty)().shape[0] == 0


def test_windows_split_over_single_threaded_sessions_grade_bit_for_bit_alike(
        random_model: Path, regions: np.ndarray) -> None:
    """Windows graded alone go to one single-threaded session per thread, a share of the
    batch each: the logits do not depend on how the batch was split (3 sessions, 81 + 37
    windows: uneven shares), nor on selecting windows or converting them ahead."""
    one = load_grader(random_model, threads=1)
    three = load_grader(random_model, threads=3)
    select = np.random.default_rng(1).random((CELLS, CELLS)) < 0.45
    for g in (one, three):
        assert not g.dense
    ref = one.logits_region(regions)
    np.testing.assert_array_equal(three.logits_region(regions), ref)
    part = three.logits_region(three.prepare(regions[1], select=select))
    np.testing.assert_array_equal(part[0][select], ref[1][select])
    wins = _windows(regions[2])
    np.testing.assert_array_equal(three.predict_windows(wins, batch=37),
                                  one.predict_windows(wins))


def test_dense_pass_matches_windows_alone_random_weights(random_model: Path,
                                                         regions: np.ndarray) -> None:
    """Random weights give nearly flat probabilities (top class about 0.06), so two classes
    are often tied to 1e-4: where the per-window top two are within 1 % (log-ratio), either
    counts as agreeing."""
    grader = load_grader(random_model, dense=True)
    dense, per = _region_and_per_window(grader, regions)
    assert dense.shape == per.shape == (3 * CELLS * CELLS, NUM_CLASSES)
    k = dense.argmax(1)
    tie = np.log(per.max(1)) - np.log(per[np.arange(len(k)), k]) < 0.01
    assert ((k == per.argmax(1)) | tie).mean() >= 0.995
    assert np.abs(dense - per).max() < 0.005


def test_dense_pass_against_windows_alone_trained(trained_model: Path,
                                                  regions: np.ndarray) -> None:
    """Why the dense pass is not the default: with trained weights it moves probabilities by
    up to a few hundredths, and strongly blurred tissue leaves several classes nearly tied
    (0.070 against 0.068), so about 1-2 % of windows change class (docs/performance.md)."""
    dense, per = _region_and_per_window(load_grader(trained_model, dense=True), regions)
    assert (dense.argmax(1) == per.argmax(1)).mean() >= 0.97
    assert np.abs(dense - per).max() < 0.1
    exact, per2 = _region_and_per_window(load_grader(trained_model), regions)
    assert (exact.argmax(1) == per2.argmax(1)).all()


# --- the normalisation folded into the first convolution -----------------------------------------


def test_folded_graph_equals_the_exported_one(random_model: Path, regions: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort

    spec = load_spec(random_model)
    graph = onnx.load(str(random_model.with_suffix(".onnx")))
    folded = fold_normalisation(graph, spec)
    assert [i.name for i in folded.graph.input] == ["rgb"]
    x = np.ascontiguousarray(regions[:2, :523, :523].transpose(0, 3, 1, 2), np.float32)
    norm = (x / 255.0 - np.float32(0.5)) / np.float32(0.5)
    a = ort.InferenceSession(graph.SerializeToString()).run(None, {"image": norm})[0]
    b = ort.InferenceSession(folded.SerializeToString()).run(None, {"rgb": x})[0]
    assert np.abs(a - b).max() < 1e-3 * max(1.0, float(np.abs(a).max()))
    assert [i.name for i in fold_normalisation(folded, spec).graph.input] == ["rgb"]  # once


def test_a_padded_first_convolution_is_not_folded(random_model: Path) -> None:
    """Folding is exact only without padding (a padded border would see the shifted zero)."""
    import onnx

    graph = onnx.load(str(random_model.with_suffix(".onnx")))
    conv = graph.graph.node[0]
    conv.attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    with pytest.raises(ModelError):
        fold_normalisation(graph, load_spec(random_model))


def test_grader_without_folding_gives_the_same_probabilities(
    random_model: Path, regions: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    folded = load_grader(random_model).predict_region(regions[:1, :523, :523])

    def refuse(graph, spec):  # type: ignore[no-untyped-def]
        raise ModelError("not foldable")

    monkeypatch.setattr("convfocus.grading.modelfile.fold_normalisation", refuse)
    monkeypatch.setattr("convfocus.grading.modelfile.fold_normalisation_bytes", refuse)
    plain = load_grader(random_model)
    assert plain._prepare == plain._normalise  # the graph's own input: normalised floats
    assert np.abs(folded - plain.predict_region(regions[:1, :523, :523])).max() < 1e-4


def test_folding_on_the_bytes_gives_the_onnx_folded_graph(random_model: Path,
                                                          regions: np.ndarray) -> None:
    """The fp32 graph is folded on its serialised bytes (no ``onnx`` import at a scan's
    start): a valid graph, input ``rgb``, the same logits bit for bit as
    :func:`fold_normalisation`'s; folding twice changes nothing; the same refusals."""
    import onnx
    import onnxruntime as ort

    from convfocus.grading.modelfile import fold_normalisation_bytes

    spec = load_spec(random_model)
    data = random_model.with_suffix(".onnx").read_bytes()
    folded = fold_normalisation_bytes(data, spec)
    graph = onnx.load_from_string(folded)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["rgb"]
    assert fold_normalisation_bytes(folded, spec) == folded
    x = np.ascontiguousarray(regions[:2, :523, :523].transpose(0, 3, 1, 2), np.float32)
    ref = fold_normalisation(onnx.load_from_string(data), spec).SerializeToString()
    a = ort.InferenceSession(folded).run(None, {"rgb": x})[0]
    b = ort.InferenceSession(ref).run(None, {"rgb": x})[0]
    np.testing.assert_array_equal(a, b)
    padded = onnx.load_from_string(data)
    padded.graph.node[0].attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    with pytest.raises(ModelError):
        fold_normalisation_bytes(padded.SerializeToString(), spec)
    with pytest.raises(ModelError):
        fold_normalisation_bytes(data[: len(data) // 2], spec)


def test_loading_the_fp32_grader_imports_no_onnx(random_model: Path, tmp_path: Path) -> None:
    """``import onnx`` costs about 0.65 CPU-s (ml_dtypes) at every scan's start: the fp32
    grader loads without it."""
    code = ("import numpy as np\n"
            "from convfocus.grading import infer\n"
            f"g = infer.load_grader({str(random_model)!r})\n"
            "g.predict_region(np.full((267, 267, 3), 200, np.uint8))\n")
    assert imported_by(code, ("onnx", "ml_dtypes"), tmp_path) == []


def test_prepared_regions_give_the_same_result(random_model: Path, regions: np.ndarray) -> None:
    grader = load_grader(random_model)
    one = regions[0, :523, :651]
    prep = grader.prepare(one)
    assert isinstance(prep, PreparedRegion)
    np.testing.assert_array_equal(grader.predict_region(prep), grader.predict_region(one))
    assert grader.predict_region(grader.prepare(regions[:, :523, :523])).shape == (3, 4, 4, 30)
    assert grader.predict_region(one).shape == (4, 5, 30)


# --- int8 ----------------------------------------------------------------------------------------


def test_quantize_writes_an_int8_graph_that_grades(random_model: Path, tmp_path: Path,
                                                   regions: np.ndarray) -> None:
    import onnx

    out = quantize_onnx(random_model, calibration=6)  # beside the model: NAME.int8.onnx
    assert out == int8_path(random_model) and out.is_file()
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = load_grader(random_model)
    int8 = load_grader(random_model, precision="int8")  # loads the file just written
    assert int8.precision == "int8"
    a = fp32.logits_region(regions[:, :523, :523]).ravel()
    b = int8.logits_region(regions[:, :523, :523]).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_an_int8_graph_of_an_older_recipe_is_quantised_again(random_model: Path,
                                                              tmp_path: Path) -> None:
    """The first convolution and the classifier stay fp32 (the recipe's tag says so); an
    int8 graph beside a model without today's tag is made again, not used."""
    import onnx

    from convfocus.grading.modelfile import QUANT_RECIPE, QUANT_RECIPE_KEY, int8_is_current

    out = quantize_onnx(random_model, calibration=3)
    model = onnx.load(str(out))
    assert {(p.key, p.value) for p in model.metadata_props} == {(QUANT_RECIPE_KEY, QUANT_RECIPE)}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # the first conv and the classifier take float weights straight from initializers
    inits = {i.name for i in model.graph.initializer}
    assert convs[0].input[1] in inits and convs[-1].input[1] in inits
    assert not any(c.input[1] in inits for c in convs[1:-1])  # the others: dequantised
    del model.metadata_props[:]
    onnx.save(model, str(out))
    assert not int8_is_current(out)
    load_grader(random_model, precision="int8")  # quantises again beside the model
    assert int8_is_current(out)


def test_int8_is_quantised_in_memory_where_the_model_folder_is_read_only(
    random_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convfocus.grading import modelfile

    few = modelfile.calibration_regions(load_spec(random_model), n=3)
    monkeypatch.setattr(modelfile, "calibration_regions", lambda spec, n: few)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    # the int8 graph's path lies under a file: writing it raises an OSError
    monkeypatch.setattr("convfocus.grading.modelfile.int8_path", lambda base: blocked / "m.int8.onnx")
    grader = load_grader(random_model, precision="int8")
    assert grader.predict_region(np.full((523, 523, 3), 200, np.uint8)).shape == (4, 4, 30)


def test_int8_warns_on_a_cpu_without_vnni(caplog: pytest.LogCaptureFixture) -> None:
    """int8 was validated with VNNI; an x86 CPU without it gets a warning, others none."""
    from convfocus.grading.infer import _warn_int8_without_vnni

    for flags, warned in (({"avx2", "fma", "avx512f"}, True),
                          ({"avx2", "avx512f", "avx512_vnni"}, False),
                          ({"avx2", "avx_vnni"}, False),
                          ({"asimd", "asimddp"}, False),  # not x86
                          (None, False)):  # no /proc/cpuinfo
        caplog.clear()
        with caplog.at_level("WARNING", logger="convfocus.grading.infer"):
            _warn_int8_without_vnni(flags)
        assert ("no VNNI" in caplog.text) == warned, flags


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    from convfocus.grading.infer import cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                   "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_vnni"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "absent") is None


def test_int8_as_default_needs_agreement_with_fp32_trained(
    trained_model: Path, regions: np.ndarray, tmp_path: Path
) -> None:
    """The criterion for int8 as the scan's default: >= 99 % of windows within one class of
    fp32 (and faster), on every CPU it may run on: validated with VNNI only, int8 stays
    opt-in (docs/performance.md, int8)."""
    import shutil

    from convfocus.grading.scan import ScanOptions

    copy = tmp_path / trained_model.name  # the int8 graph is written beside the model
    for suffix in (".json", ".onnx", ".safetensors"):
        shutil.copy(trained_model.with_suffix(suffix), copy.with_suffix(suffix))
    fp32 = load_grader(copy).predict_region(regions).argmax(-1)
    int8 = load_grader(copy, precision="int8").predict_region(regions).argmax(-1)
    within1 = (np.abs(fp32.astype(int) - int8) <= 1).mean()
    if ScanOptions().precision != "int8":
        pytest.skip(f"int8 is not the default ({within1:.1%} of windows within one class)")
    assert within1 >= 0.99


def test_unknown_or_impossible_precisions_are_config_errors(random_model: Path) -> None:
    with pytest.raises(ConfigError):
        load_grader(random_model, precision="int4")
    with pytest.raises(ConfigError, match="ONNX Runtime"):
        load_grader(random_model, backend="torch")
    with pytest.raises(ConfigError):
        load_grader(random_model, precision="int8", device="cuda")
    with pytest.raises(ConfigError):
        load_grader(random_model, precision="fp16", device="cpu")
    with pytest.raises(ConfigError):
        quantize_onnx(random_model, method="magic")


# --- devices: ONNX Runtime's providers, no PyTorch -----------------------------------------------


def test_device_auto_grades_on_what_is_there(random_model: Path, regions: np.ndarray) -> None:
    grader = load_grader(random_model, device="auto")
    assert grader.device == ("cuda" if cuda_available() else "cpu")
    cpu = load_grader(random_model, device="cpu").predict_region(regions[:1, :523, :523])
    assert np.abs(grader.predict_region(regions[:1, :523, :523]) - cpu).max() < 1e-4
    assert load_grader(random_model, device="auto", precision="int8").device == "cpu"


@pytest.mark.skipif(cuda_available(), reason="ONNX Runtime has its CUDA provider here")
def test_device_cuda_without_the_cuda_provider_is_one_clear_error(random_model: Path) -> None:
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        load_grader(random_model, device="cuda")


def test_fp16_graph_grades_like_fp32(random_model: Path, regions: np.ndarray) -> None:
    """The half-precision graph that ``--precision fp16`` runs on CUDA, checked on the CPU."""
    from convfocus.grading.infer import _onnx_grader

    spec = load_spec(random_model)
    fp16 = _onnx_grader(random_model.with_suffix(".onnx"), spec, "cpu", None, fp16=True)
    assert fp16.precision == "fp16"
    a = load_grader(random_model).logits_region(regions[:, :523, :523])
    b = fp16.logits_region(regions[:, :523, :523])
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.abs(a - b).max() < 0.02 * max(1.0, float(np.abs(a).max()))


def test_grading_never_imports_torch(random_model: Path, tmp_path: Path) -> None:
    """Scanning runs on a lean install (no PyTorch): grading imports none of it."""
    code = ("import numpy as np\n"
            "from convfocus.grading import infer, scan, batch\n"
            f"g = infer.load_grader({str(random_model)!r}, device='auto')\n"
            "g.predict_region(np.full((267, 267, 3), 200, np.uint8))\n")
    assert imported_by(code, ("torch",), tmp_path) == []
