"""Training throughput of each network in NCHW and channels-last (NHWC) memory layout.

One training step (forward, cross-entropy, backward, AdamW) on a batch of 64 examples of
139 x 139 px, on one thread, for each network of ``training/model.py``; the teacher's
forward pass for distillation in eval mode likewise. Prints examples per CPU-second and
the ratio channels-last / NCHW measured in the same run (turns alternate, medians).

    .venv/bin/python bench/train_speed.py [--turns 5] [--archs paper,large,dw16,lite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from scan_throughput import cpu_peak  # the one /proc/cpuinfo reader of bench/

from convfocus.training.model import ARCHS, build_model


def _rate(fn, n_examples: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    t = time.process_time()
    fn()
    return n_examples / (time.process_time() - t)


def _train_step(arch: str, fmt: torch.memory_format, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    net = build_model(arch).to(memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    xx = x.contiguous(memory_format=fmt)

    def step() -> None:
        loss = F.cross_entropy(net(xx), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _forward(arch: str, fmt: torch.memory_format, x: torch.Tensor):
    net = build_model(arch).to(memory_format=fmt).eval()
    xx = x.contiguous(memory_format=fmt)

    def fwd() -> None:
        with torch.inference_mode():
            net(xx)
    return fwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--archs", default="paper,large,dw16,lite")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    archs = [a for a in args.archs.split(",") if a]
    for a in archs:
        if a not in ARCHS:
            raise SystemExit(f"unknown network {a!r}; choose from {', '.join(ARCHS)}")
    print(f"CPU: {cpu_peak(2)['model']}; torch {torch.__version__}, 1 thread; "
          f"load average {os.getloadavg()[0]:.2f}")
    x = torch.rand(args.batch, 3, 139, 139)
    y = torch.randint(0, 30, (args.batch,))
    fmts = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
    print(f"{'network':8} {'what':9} {'NCHW ex/CPU-s':>14} {'NHWC ex/CPU-s':>14} {'NHWC/NCHW':>10}")
    for arch in archs:
        for what in ("train", "teacher"):
            fns = {k: _train_step(arch, f, x, y) if what == "train" else _forward(arch, f, x)
                   for k, f in fmts.items()}
            rates: dict[str, list[float]] = {k: [] for k in fmts}
            for _ in range(args.turns):
                for k, fn in fns.items():
                    rates[k].append(_rate(fn, args.batch))
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"{arch:8} {what:9} {med['NCHW']:14.1f} {med['NHWC']:14.1f} "
                  f"{med['NHWC'] / med['NCHW']:9.2f}x", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
