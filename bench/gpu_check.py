"""Scan throughput on one CUDA GPU: model-only and end to end, in gigapixels of tissue per second.

Target: at least 1 GP/s on one GPU for grading a slide (thumbnail, tissue mask, reading,
decoding, grading: everything that grows with the slide); the whole scan with its output
files is reported too. Run through ``bench/gpu_check.sh``, which checks for the GPU first
and bounds the run to under 5 minutes.

1. builds (or reuses) the benchmark slide of ``bench/scan_throughput.py`` (default
   65536 x 49152: about 1.3 GP of tissue);
2. model-only: regions of the scan's own blocks, decoded once and kept on the host, graded
   repeatedly with ONNX Runtime's CUDA provider in fp32 and fp16 (the half-precision
   graph), windows cut out (the default, exact), and with the dense pass (the conversion
   and upload of the pixels is included, the decoding is not);
3. grading: ``grade_slide`` with ``--device cuda`` (decoding on all CPU cores, the network
   on the GPU), and the whole ``scan_path`` with every output file.

Rates count tissue: graded windows x 128² model pixels.

Run: bench/gpu_check.sh [--size 65536x49152] [--model PATH] [--block 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_GP_S = 1.0


def _model(model: str | None, tmp: Path) -> str:
    """The given or shipped model; without either, a random-weight paper network (the rate
    does not depend on the weights; exporting it needs PyTorch, the [train] extra)."""
    from convfocus.errors import ModelError
    from convfocus.grading.modelfile import resolve_model_path

    try:
        return str(resolve_model_path(model))
    except ModelError:
        if model is not None:
            raise
    from convfocus.training.checkpoint import save_model
    from convfocus.training.model import build_model
    from convfocus.types import ModelSpec

    print("no shipped model: timing a random-weight paper network instead", flush=True)
    base = tmp / "paper-random"
    save_model(base, build_model("paper").eval(),
               ModelSpec(name="paper-random", version="0", arch="paper"))
    return str(base)


def _gpu_name() -> str:
    import subprocess

    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[0] if out else "CUDA GPU"


def model_only(slide: Path, grader: Any, plan: dict[str, Any], seconds: float) -> dict[str, Any]:
    from convfocus.grading.scan import read_model_region
    from convfocus.io.readers import open_slide

    spec = grader.spec
    win, stride, scale = spec.window_px, spec.stride_px, plan["scale"]
    ox, oy = plan["grid"].l0_origin_px
    blocks = plan["blocks"][:: max(1, len(plan["blocks"]) // 24)][:24]
    regions, graded = [], 0
    with open_slide(slide) as reader:
        for r0, c0, nr, nc in blocks:
            regions.append(read_model_region(
                reader, ox + c0 * stride / scale, oy + r0 * stride / scale,
                nc * stride + win - stride, nr * stride + win - stride, scale))
            graded += int(plan["graded"][r0 : r0 + nr, c0 : c0 + nc].sum())
    for r in regions[:2]:  # warm-up: cuDNN picks its algorithms per shape
        grader.predict_region(r)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:  # each run returns its result on the host
        for r in regions:
            grader.predict_region(r)
        n += 1
    wall = time.perf_counter() - t0
    gp = n * graded * 16384 / 1e9
    return {"regions": len(regions), "passes": n, "wall_s": wall, "gp_s": gp / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="65536x49152", help="slide WIDTHxHEIGHT at level 0")
    ap.add_argument("--model", default=None, help="model name or path (default: shipped)")
    ap.add_argument("--block", type=int, default=32, help="region size in cells (default 32)")
    ap.add_argument("--seconds", type=float, default=10.0, help="model-only time per precision")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from convfocus.grading.infer import cuda_available, load_grader

    if args.device == "cuda" and not cuda_available():
        print("gpu_check: ONNX Runtime has no CUDA provider (install onnxruntime-gpu)",
              file=sys.stderr)
        return 2
    import scan_throughput as st

    from convfocus.grading.scan import ScanOptions, grade_slide, scan_path
    from convfocus.io.readers import open_slide

    width, height = (int(v) for v in args.size.lower().split("x"))
    slide = st.cached_slide(width, height)
    cores = os.cpu_count() or 1
    res: dict[str, Any] = {"device": _gpu_name() if args.device == "cuda"
                           else "cpu (dry run)", "cores": cores, "size": [width, height]}
    print(f"device: {res['device']}, {cores} CPU cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="cf-gpu-") as tmpd:
        model = _model(args.model, Path(tmpd))
        fp16 = "fp16" if args.device == "cuda" else "fp32"
        graders = {p: load_grader(model, device=args.device, precision=p)
                   for p in dict.fromkeys(("fp32", fp16))}
        dense = load_grader(model, device=args.device, precision=fp16, dense=True)
        plan = st.plan(slide, graders["fp32"], args.block)
        tissue_gp = int(plan["graded"].sum()) * 16384 / 1e9
        print(f"slide {width}x{height}: {tissue_gp:.2f} GP of tissue, "
              f"{len(plan['blocks'])} regions of <= {args.block}² cells", flush=True)
        for name, g in [*graders.items(), (f"{fp16} dense", dense)]:
            r = model_only(slide, g, plan, args.seconds)
            res[f"model_only_{name}"] = r
            print(f"model-only {name}: {r['gp_s']:.3f} GP/s ({r['passes']} passes over "
                  f"{r['regions']} regions)", flush=True)
        best = max(graders, key=lambda p: res[f"model_only_{p}"]["gp_s"])
        opts = ScanOptions(model=model, device=args.device, precision=best,
                           block=args.block, read_threads=min(8, cores),
                           decode_threads=cores, prefetch=2 * min(8, cores))
        with open_slide(slide, threads=cores) as reader:
            grade_slide(reader, graders[best], opts)  # warm-up
            t0 = time.perf_counter()
            grade_slide(reader, graders[best], opts)
            grade_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = scan_path(slide, Path(tmpd) / "out", options=opts, grader=graders[best])
        wall = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
    res["grading"] = {"precision": best, "wall_s": grade_s, "gp_s": tissue_gp / grade_s}
    res["end_to_end"] = {"precision": best, "wall_s": wall, "gp_s": tissue_gp / wall,
                         "runtime_s": summary.get("runtime_s")}
    print(f"grading ({best}, block {args.block}): {tissue_gp / grade_s:.3f} GP/s "
          f"({grade_s:.1f} s for {tissue_gp:.2f} GP: thumbnail, mask, read, decode, grade)")
    print(f"whole scan: {tissue_gp / wall:.3f} GP/s ({wall:.1f} s, every output file included)")
    ok = res["grading"]["gp_s"] >= TARGET_GP_S
    print(f"{'PASS' if ok else 'BELOW TARGET'}: grading {res['grading']['gp_s']:.3f} GP/s "
          f"(target >= {TARGET_GP_S:g} GP/s); whole scan {res['end_to_end']['gp_s']:.3f} GP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
