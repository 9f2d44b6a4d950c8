"""Training on semi-synthetic defocus: presets, data stream, loop, checkpoints, validation.

Each training example (:mod:`convfocus.training.dataset`) is a random 139 px crop of an in-focus pool patch, blurred
to a uniformly drawn class (0..29), with Poisson noise and JPEG re-encoding, then
augmented (dihedral orientation, brightness, contrast, hue, saturation). The crop
position is the translational jitter; the blur reads the real tissue around the
crop, so no border is synthetic.

References: Kohlberger et al. 2019 (ConvFocus); Liu et al. 2017 (LYNA augmentation).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from convfocus import MODEL_MPP, __version__
from convfocus.errors import ConfigError
from convfocus.io.atomic import write_atomic
from convfocus.metrics import classification_metrics
from convfocus.synthesis.defocus import SynthesisConfig
from convfocus.training.dataset import WINDOW, Augment, augment, make_example, validation_set
from convfocus.training.model import build_model, training_memory_format
from convfocus.types import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``preset`` names a row of the paper's Table 2."""

    preset: str = "config4"
    arch: str = "paper"
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    augment: Augment = field(default_factory=Augment)
    optimizer: str = "adamw"  # "adamw" (cosine) or "rmsprop" (the paper's settings)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    steps: int = 20000
    warmup_steps: int = 300
    label_smoothing: float = 0.0
    val_every: int = 500
    ckpt_every: int = 250
    seed: int = 0
    workers: int = 1
    reuse: int = 2  # augmented variants drawn from each synthesised patch (jittered crops)
    jitter: int = 16  # extra pixels around the window for translational jitter between variants
    #: Training batches over which BatchNorm statistics are recomputed exactly before each
    #: validation and the export (0 = keep the running averages). With the paper's decay
    #: 0.9997 the running averages start from (0, 1) and follow the weights with a time
    #: constant of about 330 steps, which leaves a short run's exported model far worse
    #: than its weights.
    precise_bn_batches: int = 16
    #: Distillation: the model whose probabilities the network learns (a name or path), and
    #: the weight of that soft target in the loss (the rest is the synthetic class). The
    #: teacher grades each training batch as the student sees it (same crop, same colours).
    teacher: str | None = None
    distill: float = 0.0
    temperature: float = 1.0


PRESETS: dict[str, dict[str, Any]] = {
    # Table 2: 1 Gaussian only; 2 + Poisson noise; 3 + JPEG; 4 bokeh (ConvFocus); 5 larger net
    "config1": {"arch": "paper", "synthesis": SynthesisConfig("gaussian", noise=False, jpeg=False)},
    "config2": {"arch": "paper", "synthesis": SynthesisConfig("gaussian", noise=True, jpeg=False)},
    "config3": {"arch": "paper", "synthesis": SynthesisConfig("gaussian", noise=True, jpeg=True)},
    "config4": {"arch": "paper", "synthesis": SynthesisConfig("bokeh")},
    "config5": {"arch": "large", "synthesis": SynthesisConfig("bokeh")},
    "config4-linear": {"arch": "paper", "synthesis": SynthesisConfig("bokeh", spacing="linear")},
    "config4-lite": {"arch": "lite", "synthesis": SynthesisConfig("bokeh")},
    # ConvFocus plus partial defocus (folds, thick sections); see docs/model-card.md
    "config4-partial": {"arch": "paper", "synthesis": SynthesisConfig("bokeh", partial_prob=0.3)},
    # ConvFocus plus folds (a second, thinner tissue layer over the patch)
    "config4-fold": {"arch": "paper", "synthesis": SynthesisConfig("bokeh", fold_prob=0.4)},
    # ConvFocus plus stain density (dark, thick or heavily stained tissue)
    "config4-dense": {"arch": "paper", "synthesis": SynthesisConfig("bokeh", density_prob=0.5)},
    # ... plus a contrast veil before the scanner's noise and JPEG
    "config4-veil": {"arch": "paper",
                     "synthesis": SynthesisConfig("bokeh", density_prob=0.5, veil_prob=0.5)},
    # grader v2: the whole pool with native-40x tissue, stain variation reaching DAB-brown
    # IHC, stain density, and the JPEG qualities scanners write (Aperio: 30)
    "v2": {"arch": "paper",
           "synthesis": SynthesisConfig("bokeh", density_prob=0.4, stain_prob=0.5,
                                        jpeg_quality=(30, 90))},
    "v2-large": {"arch": "large",
                 "synthesis": SynthesisConfig("bokeh", density_prob=0.4, stain_prob=0.5,
                                              jpeg_quality=(30, 90))},
    # students for `--model fast`, distilled from a teacher (`--teacher MODEL`) on the
    # grader-v2 synthesis: 0.7 of the loss matches the teacher's probabilities
    "fast-dw16": {"arch": "dw16", "distill": 0.7,
                  "synthesis": SynthesisConfig("bokeh", density_prob=0.4, stain_prob=0.5,
                                               jpeg_quality=(30, 90))},
    "fast-lite": {"arch": "lite", "distill": 0.7,
                  "synthesis": SynthesisConfig("bokeh", density_prob=0.4, stain_prob=0.5,
                                               jpeg_quality=(30, 90))},
}


def preset_config(preset: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named preset, with keyword overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(preset=preset, **kw)
    if cfg.distill > 0 and cfg.teacher is None:
        raise ConfigError(f"preset {preset!r} distils a teacher: name one with --teacher MODEL")
    if not 0 <= cfg.distill <= 1:
        raise ConfigError(f"the distillation weight must be in [0, 1], not {cfg.distill}")
    return cfg


class SyntheticStream(torch.utils.data.IterableDataset):
    """Endless batches of synthetic examples; each worker has its own seeded stream."""

    def __init__(self, patches: np.ndarray, cfg: TrainConfig, start_step: int) -> None:
        super().__init__()
        self.patches, self.cfg, self.start_step = patches, cfg, start_step

    def __iter__(self):  # type: ignore[no-untyped-def]
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        cv2.setNumThreads(1)
        rng = np.random.default_rng([self.cfg.seed, self.start_step, wid])
        n, reuse = self.cfg.batch_size, max(1, self.cfg.reuse)
        size = WINDOW + self.cfg.jitter
        while True:
            xs = np.empty((n, WINDOW, WINDOW, 3), np.uint8)
            ys = np.empty(n, np.int64)
            for j in range(0, n, reuse):
                base, c, _ = make_example(self.patches, rng, self.cfg.synthesis, None, size=size)
                for k in range(j, min(n, j + reuse)):
                    x, y = rng.integers(0, self.cfg.jitter + 1, size=2)
                    xs[k] = augment(base[y : y + WINDOW, x : x + WINDOW], rng, self.cfg.augment)
                    ys[k] = c
            perm = rng.permutation(n)
            yield torch.from_numpy(xs[perm]), torch.from_numpy(ys[perm])


def to_input(x_uint8: torch.Tensor, spec_mean=(0.5, 0.5, 0.5), spec_std=(0.5, 0.5, 0.5)):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float normalised as the ModelSpec says."""
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec_mean).view(1, 3, 1, 1)
    std = torch.tensor(spec_std).view(1, 3, 1, 1)
    return (x - mean) / std


# --- validation --------------------------------------------------------------------------------


def precise_bn(net: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Recompute every BatchNorm's statistics as the exact average over ``batches`` (uint8
    NHWC) for the current weights; return how many batches were used (0 = left as is)."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = []
    for m in bns:
        assert m.running_mean is not None and m.running_var is not None  # track_running_stats
        saved.append((m.momentum, m.running_mean.clone(), m.running_var.clone()))
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = net.training
    net.train()
    n = 0
    with torch.no_grad():
        for xb in batches:
            net(to_input(xb).to(device))
            n += 1
    for m, (mom, mean, var) in zip(bns, saved, strict=True):
        m.momentum = mom
        if n == 0:
            m.running_mean.copy_(mean)  # type: ignore[union-attr]
            m.running_var.copy_(var)  # type: ignore[union-attr]
    net.train(was_training)
    return n


@torch.no_grad()
def predict(net: torch.nn.Module, xs: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(xs), batch):
        logits = net(to_input(torch.from_numpy(xs[i : i + batch])))
        out.append(logits.softmax(1).numpy())
    return np.concatenate(out)


# --- the loop ----------------------------------------------------------------------------------


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.optimizer == "rmsprop":  # paper: halved every 2 million examples
        return cfg.lr * 0.5 ** ((step * cfg.batch_size) // 2_000_000)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def distillation_loss(logits: torch.Tensor, teacher: torch.nn.Module, x: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on probabilities softened by ``temperature`` (Hinton et al.
    2015), scaled by its square so the gradient keeps its size."""
    with torch.no_grad():
        target = F.softmax(teacher(x) / temperature, dim=1)
    log_p = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_p, target, reduction="batchmean") * temperature**2


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1.0, momentum=0.9)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or rmsprop")


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


#: Settings a run may change when it resumes (schedule length, reporting, parallelism).
RESUMABLE_CHANGES = ("steps", "val_every", "ckpt_every", "workers", "precise_bn_batches")


def _fixed(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}


def train(
    pool: Path,
    out: Path,
    cfg: TrainConfig,
    *,
    name: str | None = None,
    device: str = "cpu",
    max_minutes: float | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train (or resume) into ``out``; return the base path of the exported model.

    ``out/ckpt.pt`` is written every ``ckpt_every`` steps and on exit; rerunning
    the same command resumes from it. ``out/log.jsonl`` has one line per report.
    """
    from convfocus.io.atomic import make_folder
    from convfocus.training.checkpoint import save_model
    from convfocus.training.pool import load_pool

    make_folder(out)
    train_x, train_rows = load_pool(pool, "train")
    val_x, val_rows = load_pool(pool, "val")
    if len(train_x) == 0:
        raise ConfigError("the pool has no training patches", pool)
    if len(val_x) == 0:
        raise ConfigError("the pool has no validation patches (split by source)", pool)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and
                                                     torch.cuda.is_available()) else "cpu")
    ckpt = out / "ckpt.pt"
    state: dict[str, Any] | None = None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        # through config_from_dict, so that settings added since the run began take defaults
        if _fixed(_config_dict(config_from_dict(state["config"]))) != _fixed(_config_dict(cfg)):
            log.warning("resuming with the settings the run was started with (they differ from "
                        "the ones given now, except %s)", ", ".join(RESUMABLE_CHANGES))
        cfg = replace(config_from_dict(state["config"]),
                      **{k: getattr(cfg, k) for k in RESUMABLE_CHANGES})
    torch.manual_seed(cfg.seed)
    # channels-last (NHWC) activations where oneDNN trains the network faster per
    # CPU-second (training_memory_format); the weights and the exported model are the same
    layout = training_memory_format(cfg.arch)
    net = build_model(cfg.arch).to(dev, memory_format=layout)  # type: ignore[call-overload]
    opt = _optimizer(cfg, net.parameters())
    step, best = 0, None
    init_from = None if state is None else state.get("init_from")
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        step, best = state["step"], state.get("best")
        log.info("resumed from step %d", step)
    elif init is not None:
        from convfocus.training.checkpoint import load_model

        src, src_spec = load_model(init)
        if src_spec.arch != cfg.arch:
            raise ConfigError(f"--init model is {src_spec.arch!r}, not {cfg.arch!r}", init)
        net.load_state_dict(src.state_dict())
        init_from = {"name": src_spec.name, "version": src_spec.version,
                     "examples": src_spec.training.get("examples"),
                     "config": src_spec.training.get("config"),
                     "init_from": src_spec.training.get("init_from")}  # the whole lineage
        log.info("starting from the weights of %s", src_spec.name)
    teacher, distilled_from = None, None
    if cfg.teacher is not None and cfg.distill > 0:
        from convfocus.grading.modelfile import model_sha256, resolve_model_path
        from convfocus.training.checkpoint import load_model

        teacher, teacher_spec = load_model(cfg.teacher)
        teacher = teacher.to(  # type: ignore[call-overload]
            dev, memory_format=training_memory_format(teacher_spec.arch)).eval()
        distilled_from = {"name": teacher_spec.name, "version": teacher_spec.version,
                          "arch": teacher_spec.arch,
                          "examples": teacher_spec.training.get("examples"),
                          "sha256": model_sha256(resolve_model_path(cfg.teacher))}
        log.info("distilling %s (weight %.2f)", teacher_spec.name, cfg.distill)
    vx, vy = validation_set(val_x, cfg.synthesis)
    loader = torch.utils.data.DataLoader(
        SyntheticStream(train_x, cfg, step), batch_size=None, num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None,
    )
    t0, seen0 = time.time(), step
    last_loss: list[float] = []

    def save_ckpt() -> None:
        state = {"model": net.state_dict(), "optim": opt.state_dict(), "step": step,
                 "best": best, "config": _config_dict(cfg), "init_from": init_from}
        write_atomic(ckpt, lambda tmp: torch.save(state, tmp))

    def evaluate_now() -> dict[str, Any]:
        precise_bn(net, (next(it)[0] for _ in range(cfg.precise_bn_batches)), dev)
        probs = predict(net, vx)
        m = classification_metrics(vy, probs.argmax(1))
        net.train()
        return m

    net.train()
    it = iter(loader)
    try:
        while step < cfg.steps:
            if max_minutes is not None and (time.time() - t0) > max_minutes * 60:
                log.info("time budget reached at step %d", step)
                break
            xb, yb = next(it)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step)
            xin = to_input(xb).to(dev, memory_format=layout)
            logits = net(xin)
            loss = F.cross_entropy(logits, yb.to(dev), label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(
                    logits, teacher, xin, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last_loss.append(float(loss.detach()))
            if step % cfg.ckpt_every == 0:
                save_ckpt()
            if step % cfg.val_every == 0 or step == cfg.steps:
                m = evaluate_now()
                rate = (step - seen0) * cfg.batch_size / max(1e-9, time.time() - t0)
                rec = {"step": step, "examples": step * cfg.batch_size,
                       "loss": float(np.mean(last_loss)), "lr": _lr_at(cfg, step),
                       "examples_per_s": round(rate, 1), "val": m, "time": time.time()}
                last_loss = []
                with open(out / "log.jsonl", "a") as logf:
                    logf.write(json.dumps(rec) + "\n")
                log.info("step %d loss %.3f exact %.3f ±1 %.3f ±3 %.3f rho %.3f (%.0f ex/s)",
                         step, rec["loss"], m["exact"], m["within1"], m["within3"],
                         m["spearman"], rate)
                if best is None or m["within1"] > best["within1"]:
                    best = {**m, "step": step}
    finally:
        save_ckpt()
    final = evaluate_now()
    spec = ModelSpec(
        name=name or f"convfocus-{cfg.preset}", version=__version__, arch=cfg.arch,
        mpp=MODEL_MPP, blur=cfg.synthesis.kind, spacing=cfg.synthesis.spacing,
        training={
            "config": _config_dict(cfg), "steps": step, "examples": step * cfg.batch_size,
            "train_patches": len(train_x), "val_patches": len(val_x),
            "train_sources": sorted({r["source"] for r in train_rows}),
            "val_sources": sorted({r["source"] for r in val_rows}),
            "device": str(dev), "init_from": init_from, "distilled_from": distilled_from,
        },
        metrics={"validation": final},
    )
    base = out / spec.name
    save_model(base, net.cpu(), spec)
    log.info("model written: %s.{safetensors,json,onnx}", base)
    return base


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of ``asdict`` for :class:`TrainConfig` (used when a run resumes)."""
    d = dict(d)
    synth: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                             for k, v in d["synthesis"].items()}
    d["synthesis"] = SynthesisConfig(**synth)
    d["augment"] = Augment(**d["augment"])
    return replace(TrainConfig(), **d)
