"""Where the time of ``convfocus scan`` goes, beyond the model: a sampling profile by stage.

Runs ``convfocus scan`` on the benchmark slide of ``bench/scan_throughput.py`` twice, in
fresh processes: once plain (wall time, CPU time and peak RSS of that process alone),
once under py-spy (``pip install py-spy``), which samples every Python thread's stack;
ONNX Runtime runs in the Python threads that call it (one single-threaded session per
core), so its time is seen too. Each sample is put in one stage by the frames on its
stack (first match in ``STAGES``' order), and each stage's share of the samples is
turned into CPU-seconds of the plain run.

py-spy counts a thread while it runs or waits for a core (not while it blocks), so on a
loaded machine the shares are of runnable time; the CPU-seconds are then estimates.

Run: .venv/bin/python bench/scan_profile.py [--size 32768x24576] [--rate 100] [--dense]
     [--json out.json]
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
    ("softmax, probs and class map", ("predict_region (", "grade_slide (")),
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32768x24576", help="level-0 WIDTHxHEIGHT")
    ap.add_argument("--rate", type=int, default=100, help="samples per second (py-spy)")
    ap.add_argument("--dense", action="store_true", help="profile `convfocus scan --dense`")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    slide = cached_slide(width, height)
    load0 = os.getloadavg()
    res = profile(slide, args.rate, ["--dense"] if args.dense else [])
    res["load_average_start"] = load0
    print(f"`convfocus scan{' --dense' if args.dense else ''}` on {slide.name}: "
          f"{res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} CPU-s, peak RSS "
          f"{res['peak_rss_mb']:.0f} MB; {res['samples']} samples at {res['rate_hz']} Hz "
          f"({res['idle_samples']} more of idle pool threads left out); "
          f"load average {load0[0]:.1f} at the start, {res['load_average'][0]:.1f} at the end")
    print("\n| stage | share of samples | CPU-s (estimate) |\n|---|---|---|")
    for name, v in res["stages"].items():
        print(f"| {name} | {v['share']:.1%} | {v['cpu_s']:.2f} |")
    print("\nsamples by thread: " + ", ".join(f"{k} {v}" for k, v in res["threads"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
