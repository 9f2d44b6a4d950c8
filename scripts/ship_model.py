#!/usr/bin/env python3
"""Package a trained model as one of the shipped ones (``src/convfocus/models/NAME.*``).

Writes the weights, the ONNX graph and the spec under the packaged name and the package's
version, with the model's validation battery (a ``convfocus check-model --out`` file for
these very weights) stored in the spec's ``metrics.battery``, as the model card and
``tests/grading/test_grading.py`` read it. ``--training`` adds keys to the spec's
``training`` record (JSON), e.g. the schedule of a run that resumed over several legs.

A new ``convfocus-default`` needs a new ``convfocus-fast`` distilled from it afterwards
(``training-runs/fast-dw16/README.md``), and its own coarse-slide floor
(``grading/report.py``'s ``SHARP_FLOOR``, from the battery's ``sharp_floor``).

The battery must come from these weights: its model's name, version and arch must be the
model's (a later checkpoint of the same run is a new battery's job).

Usage: python scripts/ship_model.py MODEL BATTERY_JSON NAME [--training JSON]
  e.g. python scripts/ship_model.py runs/fast/convfocus-fast.json runs/fast/battery.json \\
           convfocus-fast
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from convfocus import __version__
from convfocus.evaluation.battery import summary_rows
from convfocus.grading.modelfile import MODEL_ALIASES, packaged_models_dir
from convfocus.training.checkpoint import load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the trained model (its .json)")
    ap.add_argument("battery", help="check-model --out JSON of these weights")
    ap.add_argument("name", help="packaged name or its alias: convfocus-default (default), "
                    "convfocus-fast (fast)")
    ap.add_argument("--training", default="{}", help="JSON object added to spec.training")
    args = ap.parse_args()
    names = {v: k for k, v in MODEL_ALIASES.items()}  # packaged name -> alias
    name = MODEL_ALIASES.get(args.name, args.name)
    if name not in names:
        raise SystemExit(f"{args.name}: not a shipped name ({', '.join(names)})")
    alias = names[name]
    extra = json.loads(args.training)
    if not isinstance(extra, dict):
        raise SystemExit("--training must be a JSON object")
    net, spec = load_model(args.model)
    res = json.loads(Path(args.battery).read_text())
    ran_on = res.get("model", {})
    if (ran_on.get("name"), ran_on.get("version"), ran_on.get("arch")) != (
            spec.name, spec.version, spec.arch):
        raise SystemExit(f"{args.battery}: the battery of {ran_on}, not of {args.model}")
    if res.get("skipped"):
        raise SystemExit(f"{args.battery}: checks skipped ({', '.join(res['skipped'])}): "
                         "run check-model where ../shared/data is present")
    command = "convfocus check-model" + ("" if alias == "default" else f" --model {alias}")
    metrics = {**spec.metrics, "battery": {"command": command, "failed": res["failed"],
                                           "skipped": res["skipped"],
                                           "rows": [list(r) for r in summary_rows(res)]}}
    training = {**spec.training, **extra}
    spec = replace(spec, name=name, version=__version__, metrics=metrics,
                   training=training)
    dest = packaged_models_dir() / name
    save_model(dest, net, spec)
    print(f"{dest}.{{safetensors,onnx,json}}: {spec.name} {spec.version} ({spec.arch})")


if __name__ == "__main__":
    main()
