"""int8 against fp32 on real tissue: class agreement and speed, one run.

Tissue: scikit-image's IHC image at 0.25 µm/px, sharp and blurred with the bokeh kernel to
every fifth class; where ``../shared/data`` is present also the CMU-1 Aperio region
(0.499 µm/px, resampled to 0.25 as the scan does), the in-focus pool images and the two
TCGA@Focus patches. Each image is graded fully convolutionally with the fp32 graph and
with the statically quantised int8 graph (:func:`convfocus.grading.modelfile.quantize_onnx`).
int8 is worth making the default only if it is faster and >= 99 % of windows stay within
one class of fp32.

Run: .venv/bin/python bench/int8_agreement.py [--model PATH]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convfocus import MODEL_MPP

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def images() -> dict[str, np.ndarray]:
    """Named RGB images at the model's pixel size."""
    from skimage import data

    from convfocus.demo import IHC_MPP
    from convfocus.io.images import read_image
    from convfocus.io.readers import open_slide
    from convfocus.synthesis.defocus import apply_blur, class_centre_px

    f = IHC_MPP / MODEL_MPP
    ihc = cv2.resize(data.immunohistochemistry(), None, fx=f, fy=f,
                     interpolation=cv2.INTER_LANCZOS4)
    out = {f"ihc class {c}": apply_blur(ihc, "bokeh", class_centre_px(c)) if c else ihc
           for c in range(0, 30, 5)}
    cmu = SHARED / "slides" / "cmu-1-small-region.svs"
    if cmu.is_file():
        with open_slide(cmu) as s:
            rgb = s.read_region((0, 0), 0, s.dimensions)
            k = s.mpp / MODEL_MPP
        out["cmu-1 (20x -> 0.25 µm/px)"] = cv2.resize(rgb, None, fx=k, fy=k,
                                                       interpolation=cv2.INTER_CUBIC)
    for sub in ("infocus", "real-oof"):
        for p in sorted((SHARED / sub).glob("*level0*.png")) if sub == "infocus" else \
                sorted((SHARED / sub).glob("*.png")):
            out[f"{sub}/{p.name}"] = read_image(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or path (default: shipped)")
    args = ap.parse_args(argv)

    import sys

    from convfocus.grading.infer import load_grader

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scan_throughput import _model_copy  # the int8 graph is cached in bench/.cache

    model = _model_copy(args.model)
    graders = {p: load_grader(model, precision=p) for p in ("fp32", "int8")}
    spec = graders["fp32"].spec
    tot: dict[str, Any] = {"windows": 0, "within1": 0, "exact": 0, "abs": 0,
                           "fp32": [0.0, 0.0], "int8": [0.0, 0.0]}
    print("| image | windows | within ±1 | exact | mean abs diff | mean class fp32 |\n"
          "|---|---|---|---|---|---|")
    for name, img in images().items():
        rows = (img.shape[0] - spec.window_px) // spec.stride_px + 1
        cols = (img.shape[1] - spec.window_px) // spec.stride_px + 1
        if rows < 1 or cols < 1:
            continue
        region = np.ascontiguousarray(img[: rows * spec.stride_px + 11,
                                          : cols * spec.stride_px + 11])
        k = {}
        for p, g in graders.items():
            t0, c0 = time.perf_counter(), _cpu()
            k[p] = g.predict_region(region).argmax(-1).ravel().astype(int)
            tot[p][0] += time.perf_counter() - t0
            tot[p][1] += _cpu() - c0
        d = np.abs(k["fp32"] - k["int8"])
        tot["windows"] += d.size
        tot["within1"] += int((d <= 1).sum())
        tot["exact"] += int((d == 0).sum())
        tot["abs"] += int(d.sum())
        print(f"| {name} | {d.size} | {np.mean(d <= 1):.2%} | {np.mean(d == 0):.2%} | "
              f"{d.mean():.3f} | {k['fp32'].mean():.1f} |", flush=True)
    n = tot["windows"]
    print(f"\nall {n} windows: within ±1 {tot['within1'] / n:.2%}, exact {tot['exact'] / n:.2%}, "
          f"mean |Δclass| {tot['abs'] / n:.3f}")
    print(f"speed int8 / fp32: wall {tot['fp32'][0] / tot['int8'][0]:.2f}x, "
          f"per CPU-s {tot['fp32'][1] / tot['int8'][1]:.2f}x")
    faster = tot["fp32"][1] > tot["int8"][1]
    agree = tot["within1"] / n >= 0.99
    print(f"int8 as default: {'yes' if faster and agree else 'no'} (faster: {faster}, "
          f">= 99 % within ±1: {agree})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
