"""The weights format: save/load round trip, ONNX parity with torch, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convfocus.errors import ModelError
from convfocus.grading.infer import load_grader
from convfocus.grading.modelfile import load_spec, resolve_model_path
from convfocus.training.checkpoint import load_model, save_model
from convfocus.training.model import build_model
from convfocus.types import ModelSpec


def trained_looking(arch: str) -> torch.nn.Module:
    """A network with random weights and random BatchNorm statistics."""
    torch.manual_seed(3)
    net = build_model(arch)
    g = torch.Generator().manual_seed(4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def spec_for(arch: str) -> ModelSpec:
    return ModelSpec(name=f"test-{arch}", version="0", arch=arch,
                     training={"steps": 3}, metrics={"validation": {"exact": 0.5}})


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    """Two regions of 3 x 4 windows of real tissue: (2, 395, 523, 3) uint8."""
    from skimage import data

    ihc = data.immunohistochemistry()  # 512 x 512
    wide = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    return np.stack([wide[:395, :523], wide[117:512, 300:823]])


def test_round_trip(tmp_path: Path) -> None:
    net, spec = trained_looking("lite"), spec_for("lite")
    base = tmp_path / "m" / spec.name
    save_model(base, net, spec, onnx=False)
    assert base.with_suffix(".safetensors").is_file() and base.with_suffix(".json").is_file()
    assert not list(base.parent.glob("*.tmp*"))
    net2, spec2 = load_model(base)
    assert spec2 == spec
    assert not net2.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert load_model(base.with_suffix(".json"))[1] == spec  # a suffix is accepted


@pytest.mark.parametrize("arch", ["lite", "paper", "dw16"])
def test_onnx_matches_torch(tmp_path: Path, region: np.ndarray, arch: str) -> None:
    base = tmp_path / f"m-{arch}"
    save_model(base, trained_looking(arch), spec_for(arch), onnx=True)
    onnx = load_grader(base, threads=1)
    net, spec = load_model(base)

    def torch_probs(x_uint8: np.ndarray, dense: bool) -> np.ndarray:
        x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(
            1, 3, 1, 1)
        with torch.no_grad():
            z = net.forward_dense(x, 139, 128).permute(0, 2, 3, 1) if dense else net(x)
        return torch.softmax(z, dim=-1).numpy()

    windows = np.stack([region[i, r * 128 : r * 128 + 139, c * 128 : c * 128 + 139]
                        for i in range(2) for r in range(3) for c in range(4)])
    p_onnx = onnx.predict_region(region)
    assert p_onnx.shape == (2, 3, 4, 30)
    assert np.abs(p_onnx.reshape(-1, 30) - torch_probs(windows, False)).max() < 1e-4
    assert np.abs(load_grader(base, dense=True).predict_region(region)
                  - torch_probs(region, True)).max() < 1e-4
    assert np.abs(onnx.predict_windows(windows) - torch_probs(windows, False)).max() < 1e-4


def test_every_model_file_is_readable_by_all(tmp_path: Path) -> None:
    base = tmp_path / "m"
    save_model(base, trained_looking("lite"), spec_for("lite"), onnx=True)
    for suffix in (".safetensors", ".json", ".onnx"):
        assert base.with_suffix(suffix).stat().st_mode & 0o044 == 0o044, suffix


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        resolve_model_path(tmp_path / "nothing-here")
    with pytest.raises(ModelError):
        load_grader(tmp_path / "nothing-here")
    # a spec without its weights
    base = tmp_path / "half"
    base.with_suffix(".json").write_text(json.dumps(spec_for("lite").to_dict()))
    with pytest.raises(ModelError):
        load_model(base)
    # an unreadable spec
    bad = tmp_path / "bad"
    bad.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError):
        load_spec(bad)


def test_weights_of_another_architecture_are_a_model_error(tmp_path: Path) -> None:
    base = tmp_path / "mixed"
    save_model(base, trained_looking("lite"), spec_for("lite"), onnx=False)
    spec = json.loads(base.with_suffix(".json").read_text())
    spec["arch"] = "paper"
    base.with_suffix(".json").write_text(json.dumps(spec))
    with pytest.raises(ModelError):
        load_model(base)


def test_a_crash_while_exporting_leaves_the_old_spec_with_the_old_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec names the model, so it lands last: an export that dies half-way must not
    pair a new spec with the old graph (it did: the spec was renamed before the export)."""
    from convfocus.training import checkpoint

    base = tmp_path / "m"
    old_spec = spec_for("lite")
    save_model(base, trained_looking("lite"), old_spec, onnx=True)
    old_graph = base.with_suffix(".onnx").read_bytes()
    stale_int8 = base.with_name(base.name + ".int8.onnx")
    stale_int8.write_bytes(b"quantised from the old graph")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed during the export")

    monkeypatch.setattr(checkpoint, "export_onnx", crash)
    new_spec = ModelSpec(name="m-new", version="1", arch="lite")
    with pytest.raises(RuntimeError):
        save_model(base, trained_looking("lite"), new_spec, onnx=True)
    assert load_spec(base) == old_spec
    assert base.with_suffix(".onnx").read_bytes() == old_graph
    assert not stale_int8.exists()  # it would grade with the old model's weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx", "m.safetensors"]
