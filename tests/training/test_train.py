"""Training: a tiny run end to end, resuming, augmentation, and the paper's presets."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from convfocus.errors import ConfigError
from convfocus.io.images import write_png
from convfocus.synthesis.defocus import SynthesisConfig
from convfocus.training import train as train_mod
from convfocus.training.checkpoint import load_model
from convfocus.training.dataset import Augment, augment, make_example
from convfocus.training.model import build_model
from convfocus.training.pool import build_pool
from convfocus.training.train import preset_config, train


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pool of real tissue patches: two training sources and one validation source."""
    from skimage import data

    ihc = data.immunohistochemistry()
    src = tmp_path_factory.mktemp("src")
    paths = [write_png(src / f"s{i}.png", np.rot90(ihc, i)[:, :420]) for i in range(3)]
    out = tmp_path_factory.mktemp("pool")
    build_pool(paths, out, mpp_overrides={p.name: 0.25 for p in paths}, validation=("s2.png",),
               stride_px=120, include_skimage_ihc=False)
    return out


@pytest.fixture()
def small_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two validation examples per class instead of forty, to keep the run short."""
    monkeypatch.setattr(train_mod, "validation_set",
                        functools.partial(train_mod.validation_set, per_class=2))


def tiny_config(steps: int, every: int = 10) -> train_mod.TrainConfig:
    return preset_config("config4-lite", steps=steps, batch_size=4, workers=0, val_every=every,
                         ckpt_every=every, warmup_steps=5)


@pytest.mark.usefixtures("small_validation")
def test_tiny_run_writes_checkpoint_and_model_and_resumes(tiny_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(20)
    first = train(tiny_pool, out, cfg, name="tiny", max_minutes=0.0)  # stops before step 1
    assert (out / "ckpt.pt").is_file()
    assert load_model(first)[1].training["steps"] == 0
    base = train(tiny_pool, out, cfg, name="tiny")  # the same command resumes and finishes
    assert base == first
    for suffix in (".safetensors", ".json", ".onnx"):
        assert base.with_suffix(suffix).is_file(), suffix
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20]
    assert all(np.isfinite(r["loss"]) for r in log)
    _, spec = load_model(base)
    assert spec.arch == "lite" and spec.blur == "bokeh"
    assert spec.training["steps"] == 20
    assert spec.training["val_sources"] == ["s2.png"]
    assert "s2.png" not in spec.training["train_sources"]


@pytest.mark.usefixtures("small_validation")
def test_a_checkpoint_from_before_new_settings_resumes_quietly(
        tiny_pool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    train(tiny_pool, out, tiny_config(2, every=2), name="tiny")
    state = torch.load(out / "ckpt.pt", weights_only=False)
    for key in ("teacher", "distill", "temperature"):  # settings added later take defaults
        del state["config"][key]
    torch.save(state, out / "ckpt.pt")
    with caplog.at_level("WARNING"):
        train(tiny_pool, out, tiny_config(4, every=2), name="tiny")
    assert "resuming with the settings" not in caplog.text
    with caplog.at_level("WARNING"):  # a real change is still reported
        train(tiny_pool, out, replace(tiny_config(6, every=2), lr=0.5), name="tiny")
    assert "resuming with the settings" in caplog.text


def test_distillation_loss_is_zero_only_when_the_student_matches() -> None:
    torch.manual_seed(0)
    teacher = build_model("lite").eval()
    x = torch.randn(5, 3, 139, 139)
    with torch.no_grad():
        same = teacher(x)
    assert train_mod.distillation_loss(same, teacher, x).item() == pytest.approx(0, abs=1e-6)
    other = same + torch.randn_like(same)
    assert train_mod.distillation_loss(other, teacher, x).item() > 0.01
    # the temperature softens both sides; T² keeps the loss's scale
    assert train_mod.distillation_loss(other, teacher, x, 2.0).item() > 0


def test_a_student_preset_needs_a_teacher() -> None:
    with pytest.raises(ConfigError, match="--teacher"):
        preset_config("fast-dw16")
    assert preset_config("fast-dw16", teacher="convfocus-default").arch == "dw16"


@pytest.mark.usefixtures("small_validation")
def test_distillation_run_records_its_teacher(tiny_pool: Path, tmp_path: Path) -> None:
    teacher = train(tiny_pool, tmp_path / "t", tiny_config(2, every=2), name="teacher")
    cfg = preset_config("fast-dw16", teacher=str(teacher), steps=3, batch_size=4, workers=0,
                        val_every=3, ckpt_every=3, warmup_steps=1)
    base = train(tiny_pool, tmp_path / "s", cfg, name="student")
    _, spec = load_model(base)
    assert spec.arch == "dw16"
    d = spec.training["distilled_from"]
    assert d["name"] == "teacher" and d["arch"] == "lite" and len(d["sha256"]) == 64
    assert spec.training["config"]["distill"] == 0.7


@pytest.mark.usefixtures("small_validation")
def test_resume_to_more_steps(tiny_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_pool, out, tiny_config(2, every=2), name="tiny")
    base = train(tiny_pool, out, tiny_config(4, every=2), name="tiny")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert load_model(base)[1].training["steps"] == 4


@pytest.mark.usefixtures("small_validation")
def test_fine_tuning_starts_from_the_weights_and_records_the_whole_lineage(
    tiny_pool: Path, tmp_path: Path
) -> None:
    first = train(tiny_pool, tmp_path / "a", tiny_config(2, every=2), name="a")
    second = train(tiny_pool, tmp_path / "b", tiny_config(2, every=2), name="b",
                   init=first.with_suffix(".json"))
    dense = replace(tiny_config(2, every=2),
                    synthesis=SynthesisConfig(density_prob=0.5), preset="config4-dense")
    third = train(tiny_pool, tmp_path / "c", dense, name="c", init=second.with_suffix(".json"))
    t = load_model(third)[1].training
    assert t["config"]["synthesis"]["density_prob"] == 0.5
    assert t["init_from"]["name"] == "b"
    assert t["init_from"]["init_from"]["name"] == "a"
    assert t["init_from"]["init_from"]["init_from"] is None
    # the first step starts from the given weights, not from a fresh initialisation
    w_b = load_model(second)[0].state_dict()
    w_fresh = train_mod.build_model("lite").state_dict()
    w_c = load_model(third)[0].state_dict()
    key = next(k for k in w_c if k.endswith("weight") and w_c[k].ndim == 4)
    assert (w_c[key] - w_b[key]).abs().mean() < (w_c[key] - w_fresh[key]).abs().mean()


def test_precise_bn_replaces_lagging_running_statistics() -> None:
    """After precise_bn, eval mode on the calibration batch equals train mode on it."""
    import torch

    torch.manual_seed(0)
    net = train_mod.build_model("lite")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # stale statistics, as after a short run
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
    rng = np.random.default_rng(0)
    xb = torch.from_numpy(rng.integers(0, 256, (32, 139, 139, 3), dtype=np.uint8))
    x = train_mod.to_input(xb)
    with torch.no_grad():
        net.train()
        want = net(x)
        net.eval()
        stale = net(x)
    assert not torch.allclose(stale, want, atol=1e-2)
    assert train_mod.precise_bn(net, [], torch.device("cpu")) == 0  # nothing to average: as is
    with torch.no_grad():
        assert torch.allclose(net(x), stale)
    assert train_mod.precise_bn(net, [xb], torch.device("cpu")) == 1
    assert not net.training  # the mode is given back
    with torch.no_grad():
        assert torch.allclose(net(x), want, atol=1e-3, rtol=1e-3)
    bn = net.features[0].bn
    assert bn.momentum == pytest.approx(0.003)  # the training momentum is given back


def test_augment_keeps_dtype_and_shape() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (139, 139, 3), dtype=np.uint8)
    for _ in range(10):
        out = augment(img, rng, Augment())
        assert out.dtype == np.uint8 and out.shape == img.shape
    still = augment(img, rng, Augment(0.0, 0.0, 0.0, 0.0, dihedral=False))
    assert np.array_equal(still, img)
    # orientation alone permutes pixels, never changes them
    turned = augment(img, rng, Augment(0.0, 0.0, 0.0, 0.0, dihedral=True))
    assert sorted(turned.ravel().tolist()) == sorted(img.ravel().tolist())


def test_lyna_deltas_are_the_defaults() -> None:
    a = Augment()
    assert (a.brightness, a.saturation, a.hue, a.contrast) == (64 / 255, 0.25, 0.04, 0.75)


def test_make_example_shape_and_label() -> None:
    from skimage import data

    patches = np.ascontiguousarray(data.immunohistochemistry()[None, :300, :300])
    rng = np.random.default_rng(0)
    img, c, blur = make_example(patches, rng, SynthesisConfig(), Augment(), cls=12)
    assert img.shape == (139, 139, 3) and img.dtype == np.uint8
    assert c == 12 and blur > 0


def test_presets_are_the_rows_of_table_2() -> None:
    rows = {
        "config1": ("paper", "gaussian", False, False),  # Gaussian blur only
        "config2": ("paper", "gaussian", True, False),  # + Poisson noise
        "config3": ("paper", "gaussian", True, True),  # + JPEG
        "config4": ("paper", "bokeh", True, True),  # bokeh instead of Gaussian: ConvFocus
        "config5": ("large", "bokeh", True, True),  # config 4 with the larger network
    }
    for name, (arch, kind, noise, jpeg) in rows.items():
        cfg = preset_config(name)
        s = cfg.synthesis
        assert (cfg.arch, s.kind, s.noise, s.jpeg) == (arch, kind, noise, jpeg), name
        assert s.spacing == "exponential"
        assert cfg.preset == name
    assert preset_config("config4-linear").synthesis.spacing == "linear"
    assert preset_config("config4", steps=7).steps == 7
    assert replace(preset_config("config4"), steps=7) == preset_config("config4", steps=7)
    from convfocus.errors import ConfigError

    with pytest.raises(ConfigError):
        preset_config("config9")
