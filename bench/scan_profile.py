"""Where the time of ``convfocus scan`` goes, beyond the model: CPU time by step.

On the benchmark slide of ``bench/scan_throughput.py``, in fresh processes:

1. step by step: what ``convfocus scan`` does (the CLI's imports, loading the model,
   opening the slide, ``grade_slide``, every output file) with the process's CPU time
   at each step; inside the grading, the CPU time spent in ONNX Runtime, JPEG decoding,
   the tile cache, region reading, conversion, the thumbnail and the tissue mask
   (``time.thread_time`` around each call, in whichever thread makes it: ONNX Runtime
   runs in the threads that call it, one single-threaded session per core);
2. unless ``--no-py-spy``: ``convfocus scan`` itself sampled by py-spy
   (``pip install py-spy``), each sample put in one stage by the frames on its stack
   (first match in ``STAGES``' order), each stage's share turned into CPU-seconds of an
   unsampled run. py-spy counts a thread while it runs or waits for a core, so on a
   loaded machine these shares are of runnable time: estimates.

Run: .venv/bin/python bench/scan_profile.py [--size 32768x24576] [--dense] [--no-py-spy]
     [--rate 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_throughput import _run_child, cached_slide

#: (stage, substrings of a frame that put a sample there), first match wins
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("imports (start-up and lazy)", ("_find_and_load (",)),
    ("model: ONNX Runtime", ("InferenceSession.run (", "Session.run (")),
    ("model: loading the graph, sessions", ("load_grader (",)),
    ("JPEG decoding (level 0)", ("_decode_tile (", "decode_jpeg")),
    ("region assembly (tile cache, copies)", ("_read_level", "_cached_tile (",
                                              "read_region (")),
    ("resampling to 0.25 µm/px", ("resize (",)),
    ("conversion: uint8 -> float, windows cut", ("Grader.prepare (",)),
    ("thumbnail", ("get_thumbnail (",)),
    ("tissue mask and grid", ("tissue_mask (", "tissue_and_ink (", "make_grid (")),
    ("softmax, probs and class map", ("predict_region (", "probabilities (", "store (",
                                      "grade_slide (")),
    ("outputs: tiles.csv", ("write_tiles (",)),
    ("outputs: heat map, overlay, figures (PNG)",
     ("heatmap_png (", "overlay_png (", "histogram_png (", "render_figure (", "png_bytes (",
      "write_png (")),
    ("outputs: other files (npy, json, report)", ("write_outputs (", "save_outputs (")),
    ("argument parsing, CLI", ("cli.py",)),
]


IDLE = "idle: a pool thread waiting for work (left out of the shares)"


def classify(stack: list[str]) -> str:
    if not stack or stack[-1].startswith("_worker ("):
        return IDLE  # blocked in the C queue's get(): no Python frame below, py-spy counts it
    for name, keys in STAGES:
        if any(k in frame for frame in stack for k in keys):
            return name
    return "other"


def profile(slide: Path, rate: int, extra: list[str]) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}"
                       f"{os.environ.get('PATH', '')}")
    if spy is None:
        raise SystemExit("needs py-spy: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="cf-profile-") as tmp:
        scan = [sys.executable, "-m", "convfocus", "scan", str(slide), "--out",
                f"{tmp}/out", "-q", *extra]
        plain = _run_child(scan)
        if plain["rc"]:
            raise SystemExit(f"scan failed:\n{plain['stderr']}")
        shutil.rmtree(f"{tmp}/out")
        raw = Path(tmp) / "scan.raw"
        spied = _run_child([spy, "record", "-r", str(rate), "-f", "raw", "--threads", "-o",
                            str(raw), "--", *scan])
        if spied["rc"]:
            raise SystemExit(f"py-spy failed:\n{spied['stderr']}")
        samples: collections.Counter[str] = collections.Counter()
        threads: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            samples[classify(frames[1:])] += int(n)
            threads[frames[0].split(":")[-1].strip().rstrip("_0123456789")] += int(n)
    idle = samples.pop(IDLE, 0)
    total = sum(samples.values())
    return {"idle_samples": idle, "wall_s": plain["wall_s"], "cpu_s": plain["cpu_s"],
            "peak_rss_mb": plain["peak_rss_mb"], "samples": total, "rate_hz": rate,
            "spied_wall_s": spied["wall_s"],
            "stages": {k: {"samples": v, "share": v / total, "cpu_s": v / total * plain["cpu_s"]}
                       for k, v in samples.most_common()},
            "threads": dict(threads.most_common()), "load_average": os.getloadavg()}


def stages_child(slide: Path, out: Path, dense: bool) -> dict[str, Any]:
    """In a fresh process, what ``convfocus scan`` does (the CLI's imports, then
    :func:`~convfocus.grading.scan.scan_path`'s steps), with the CPU time of each step;
    inside the grading, the CPU time of the threads in ONNX Runtime, JPEG decoding, the tile
    cache, region reading, conversion, the thumbnail and the tissue mask (``thread_time``
    around each call, in whichever thread makes it)."""
    import threading
    import time

    import onnxruntime as ort  # type: ignore[import-untyped]

    import convfocus.cli  # noqa: F401 - what `convfocus scan` imports before it runs
    from convfocus.grading import infer, scan, tiling, tissue
    from convfocus.io import readers

    cpu: dict[str, float] = collections.defaultdict(float)
    lock = threading.Lock()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    cpu[name] += time.thread_time() - t
        return wrapper

    inner = {"model: ONNX Runtime": (ort.InferenceSession, "run"),
             "conversion: uint8 -> float, windows cut": (infer.Grader, "prepare"),
             "JPEG decoding": (readers._TiffJpegReader, "_decode_tile"),
             "tile cache and tile copies": (readers._TiffJpegReader, "_cached_tile"),
             "region reading (own thread)": (scan, "read_model_region"),
             "tissue mask and grid": (tissue, "tissue_and_ink"),
             "grid": (tiling, "make_grid")}
    for name, (owner, attr) in inner.items():
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    marks = [("start-up: interpreter and imports", time.process_time())]
    t0 = time.perf_counter()
    scan.reuse_freed_memory()  # as scan_path does first
    grader = infer.load_grader(None, dense=dense)
    marks.append(("loading the model", time.process_time()))
    reader = readers.open_slide(slide)
    reader.get_thumbnail = timed("thumbnail", reader.get_thumbnail)
    marks.append(("opening the slide", time.process_time()))
    result = scan.grade_slide(reader, grader, scan.ScanOptions(dense=dense))
    marks.append(("grading (grade_slide)", time.process_time()))
    scan.save_outputs(result, out / "slide", runtime_start=t0)
    marks.append(("outputs (every file)", time.process_time()))
    reader.close()
    steps, prev = {}, 0.0
    for name, c in marks:
        steps[name] = c - prev
        prev = c
    grading = dict(cpu)
    grading["tissue mask and grid"] = grading.get("tissue mask and grid", 0) + grading.pop(
        "grid", 0)
    # _cached_tile includes the decoding it triggers; read_model_region the copies it makes
    grading["tile cache and tile copies"] = (grading.get("tile cache and tile copies", 0)
                                             - grading.get("JPEG decoding", 0))
    grading["other: the grading loop, softmax, thread hand-offs, paste"] = (
        steps["grading (grade_slide)"] - sum(grading.values()))
    return {"steps": steps, "grading": grading, "total_cpu_s": prev,
            "wall_s": time.perf_counter() - t0,
            "tissue_windows": int((result.classmap >= 0).sum())}


def stages(slide: Path, dense: bool) -> dict[str, Any]:
    """:func:`stages_child` in a fresh process; its wall time, CPU time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="cf-stages-") as tmp:
        r = _run_child([sys.executable, __file__, "--stages-child",
                        json.dumps([str(slide), tmp, dense])])
    if r["rc"]:
        raise SystemExit(f"stages run failed:\n{r['stderr'][-3000:]}")
    res = json.loads(r["stdout"].strip().splitlines()[-1])
    return {**res, "process_wall_s": r["wall_s"], "process_cpu_s": r["cpu_s"],
            "peak_rss_mb": r["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32768x24576", help="level-0 WIDTHxHEIGHT")
    ap.add_argument("--rate", type=int, default=100, help="samples per second (py-spy)")
    ap.add_argument("--dense", action="store_true", help="profile `convfocus scan --dense`")
    ap.add_argument("--no-py-spy", action="store_true", help="only the CPU time by step")
    ap.add_argument("--stages-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.stages_child:
        slide_s, out, dense = json.loads(args.stages_child)
        print(json.dumps(stages_child(Path(slide_s), Path(out), dense)))
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    slide = cached_slide(width, height)
    load0 = os.getloadavg()
    res: dict[str, Any] = {"load_average_start": load0}
    st = res["stages"] = stages(slide, args.dense)
    mp = st["tissue_windows"] * 16384 / 1e6
    print(f"`convfocus scan{' --dense' if args.dense else ''}` on {slide.name}, step by step "
          f"in one process: {st['process_wall_s']:.1f} s wall, {st['process_cpu_s']:.1f} CPU-s, "
          f"peak RSS {st['peak_rss_mb']:.0f} MB, {mp:.0f} MP of tissue; load average "
          f"{load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    total = st["process_cpu_s"]
    print("\n| step | CPU-s | share |\n|---|---|---|")
    for name, v in st["steps"].items():
        print(f"| {name} | {v:.2f} | {v / total:.1%} |")
        if name.startswith("grading"):
            for k, x in sorted(st["grading"].items(), key=lambda kv: -kv[1]):
                print(f"| - {k} | {x:.2f} | {x / total:.1%} |")
    other = total - sum(st["steps"].values())
    print(f"| exit, threads' teardown | {other:.2f} | {other / total:.1%} |")
    model = st["grading"].get("model: ONNX Runtime", 0.0)
    print(f"\nCPU beyond the model: {total - model:.2f} CPU-s = {(total - model) / model:.0%} of "
          f"the model's {model:.2f} CPU-s (end to end / model-only per CPU-s at best "
          f"{model / total:.0%})")
    if not args.no_py_spy:
        res["py_spy"] = pf = profile(slide, args.rate, ["--dense"] if args.dense else [])
        print(f"\npy-spy, `convfocus scan` sampled: {pf['wall_s']:.1f} s wall, "
              f"{pf['cpu_s']:.1f} CPU-s unsampled; {pf['samples']} samples at "
              f"{pf['rate_hz']} Hz ({pf['idle_samples']} more of idle pool threads left out)")
        print("\n| stage (py-spy) | share of samples | CPU-s (estimate) |\n|---|---|---|")
        for name, v in pf["stages"].items():
            print(f"| {name} | {v['share']:.1%} | {v['cpu_s']:.2f} |")
        print("\nsamples by thread: " + ", ".join(f"{k} {v}" for k, v in pf["threads"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
