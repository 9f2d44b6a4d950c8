#!/usr/bin/env python3
"""Average the weights of two training checkpoints of one network and export the result.

The two ``ckpt.pt`` files (``convfocus train``'s, e.g. two steps of one run from the
repository's history) must hold the same architecture. Their floating-point weights are
averaged (``--weight`` of the first, the rest of the second), the BatchNorm statistics
are then recomputed exactly for the averaged weights over training batches of the pool
(the run's own ``precise_bn``), and the network is written as a model (weights, ONNX graph,
spec) that ``convfocus check-model --model OUT.json`` grades. The spec is the second
checkpoint's run settings under the name of OUT; nothing here ships it
(``scripts/ship_model.py`` does).

Usage: python scripts/average_weights.py FIRST_CKPT SECOND_CKPT OUT [--weight 0.5]
           [--pool runs/pool-v2] [--bn-start 0] [--bn-batches 16]
  (``--weight 0`` with the same checkpoint twice: only the statistics recomputed)
  e.g. git show 9e46b0d:training-runs/grader-v2-large/ckpt.pt > /tmp/ckpt3800.pt
       git show 31113c7:training-runs/grader-v2-large/ckpt.pt > /tmp/ckpt8000.pt
       python scripts/average_weights.py /tmp/ckpt3800.pt /tmp/ckpt8000.pt runs/avg/avg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convfocus import MODEL_MPP
from convfocus.training.checkpoint import save_model
from convfocus.training.model import build_model
from convfocus.training.pool import load_pool
from convfocus.training.train import SyntheticStream, config_from_dict, precise_bn
from convfocus.types import ModelSpec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("out", type=Path, help="base path of the model written (no suffix)")
    ap.add_argument("--weight", type=float, default=0.5, help="weight of the first (0-1)")
    ap.add_argument("--pool", type=Path, default=Path("runs/pool-v2"),
                    help="patch pool whose training batches set the BatchNorm statistics")
    ap.add_argument("--bn-batches", type=int, default=None,
                    help="training batches for the BatchNorm statistics (default: the run's "
                         "precise_bn_batches, 16)")
    ap.add_argument("--bn-start", type=int, default=0,
                    help="step of the synthetic stream those batches start at (another sample)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.weight <= 1.0:
        raise SystemExit("--weight must lie in [0, 1]")
    a = torch.load(args.first, map_location="cpu", weights_only=False)
    b = torch.load(args.second, map_location="cpu", weights_only=False)
    cfg = config_from_dict(b["config"])
    if config_from_dict(a["config"]).arch != cfg.arch:
        raise SystemExit("the two checkpoints hold different networks")
    w = args.weight
    net = build_model(cfg.arch)
    net.load_state_dict({k: (w * a["model"][k].float() + (1 - w) * v.float()).to(v.dtype)
                         if v.is_floating_point() else v for k, v in b["model"].items()})
    train_x, _ = load_pool(args.pool, "train")
    torch.manual_seed(0)
    batches = iter(torch.utils.data.DataLoader(SyntheticStream(train_x, cfg, args.bn_start),
                                               batch_size=None, num_workers=0))
    n = precise_bn(net, (next(batches)[0] for _ in range(cfg.precise_bn_batches if args.bn_batches is None
                                                 else args.bn_batches)),
                   torch.device("cpu"))
    net.eval()
    spec = ModelSpec(name=args.out.name, version="0", arch=cfg.arch, mpp=MODEL_MPP,
                     blur=cfg.synthesis.kind, spacing=cfg.synthesis.spacing,
                     training={"averaged": {"first": str(args.first), "step_first": a["step"],
                                            "second": str(args.second),
                                            "step_second": b["step"], "weight_first": w,
                                            "bn_batches": n, "bn_start": args.bn_start},
                               "config": b["config"]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, net, spec)
    print(f"steps {a['step']} and {b['step']} averaged ({w:g} / {1 - w:g}), BatchNorm over "
          f"{n} batches -> {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
