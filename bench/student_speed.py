"""Speed of the candidate students for ``--model fast``, against the default's network.

Each architecture (``convfocus.training.model.ARCHS``) is exported with random weights (a
network's speed does not depend on its weights) and loaded as the scan loads a model
(``load_grader``: normalisation folded, one single-threaded session per core, windows
graded exactly). One scan-sized region of real tissue (scikit-image's IHC image tiled to
``--rows x --cols`` windows) is graded by each in turn, ``--reps`` times; medians of wall
and CPU time (user + system of this process). Ratios are to ``paper`` (the default's
network) in the same run. Multiply-adds per window come from the network's shapes.

Run: .venv/bin/python bench/student_speed.py [--rows 4] [--cols 16] [--reps 7]
(needs the ``[train]`` extra for the export).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--archs", default="paper,w8,dw16,lite")
    args = ap.parse_args(argv)

    import torch
    from skimage import data

    from convfocus.grading.infer import load_grader
    from convfocus.grading.modelfile import load_spec, resolve_model_path
    from convfocus.training.checkpoint import save_model
    from convfocus.training.model import build_model, multiply_adds

    archs = args.archs.split(",")
    h, w = 128 * args.rows + 11, 128 * args.cols + 11
    ihc = data.immunohistochemistry()
    region = np.ascontiguousarray(np.tile(ihc, (-(-h // ihc.shape[0]), -(-w // ihc.shape[1]),
                                                1))[:h, :w])
    n_windows = args.rows * args.cols
    default = load_spec(resolve_model_path(None))
    graders, macs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            torch.manual_seed(0)
            net = build_model(arch).eval()
            macs[arch] = multiply_adds(net)
            spec = replace(default, name=f"speed-{arch}", arch=arch)
            save_model(Path(tmp) / spec.name, net, spec)
            graders[arch] = load_grader(Path(tmp) / spec.name)
        times: dict[str, list[tuple[float, float]]] = {a: [] for a in archs}
        for g in graders.values():  # warm-up
            g.predict_region(g.prepare(region))
        for _ in range(args.reps):
            for arch, g in graders.items():
                prep = g.prepare(region)
                t, c = time.perf_counter(), _cpu()
                g.predict_region(prep)
                times[arch].append((time.perf_counter() - t, _cpu() - c))
    print(f"region {args.rows} x {args.cols} windows ({n_windows}), {args.reps} turns, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'arch':6} {'MMAC/window':>12} {'windows/s':>10} {'windows/CPU-s':>14} "
          f"{'vs paper (wall)':>16} {'(CPU)':>7}")
    ref = None
    for arch in archs:
        wall = float(np.median([t for t, _ in times[arch]]))
        cpu = float(np.median([c for _, c in times[arch]]))
        rate, rate_cpu = n_windows / wall, n_windows / max(cpu, 1e-9)
        ref = ref or (rate, rate_cpu)
        print(f"{arch:6} {macs[arch] / 1e6:12.2f} {rate:10.0f} {rate_cpu:14.0f} "
              f"{rate / ref[0]:15.2f}x {rate_cpu / ref[1]:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
