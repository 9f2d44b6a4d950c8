"""ONNX Runtime settings for the grader, measured on one region: what decided infer.py's.

One region of real tissue (scikit-image's IHC image tiled to ``--rows x --cols`` windows,
default 4 x 16: a scan's region) is graded with the shipped model's graph (normalisation
folded) under each setting, the settings taking turns ``--reps`` times; medians of wall
time and of CPU time (user + system of this process) per run, converted to MP of windows
(128² model pixels each) per second and per CPU-second. Ratios are to the first line of
their group. Conversion from uint8 is timed with the run where the setting moves it.

Run: .venv/bin/python bench/ort_options.py [--rows 4] [--cols 16] [--reps 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _region(rows: int, cols: int) -> np.ndarray:
    from skimage import data

    ihc = data.immunohistochemistry()
    h, w = 128 * rows + 11, 128 * cols + 11
    reps = (-(-h // ihc.shape[0]), -(-w // ihc.shape[1]), 1)
    return np.ascontiguousarray(np.tile(ihc, reps)[:h, :w])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort  # type: ignore[import-untyped]
    from onnx import TensorProto, helper

    from convfocus.grading.infer import _rgb_nchw_float, _windows_rgb_nchw_float
    from convfocus.grading.modelfile import fold_normalisation_bytes, load_spec, resolve_model_path
    from convfocus.grading.tiling import window_view

    base = resolve_model_path(None)
    spec = load_spec(base)
    folded = fold_normalisation_bytes(base.with_suffix(".onnx").read_bytes(), spec)
    n = args.threads

    def session(graph: bytes = folded, threads: int = n, level: str = "ALL", arena: bool = True,
                pattern: bool = False, spin: str = "0", **config: str) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        so.enable_cpu_mem_arena = arena
        so.enable_mem_pattern = pattern
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        for k, v in config.items():
            so.add_session_config_entry(k.replace("__", "."), v)
        return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])

    def u8_graph() -> bytes:  # uint8 NHWC input: Transpose then Cast inside the graph
        g = onnx.load_from_string(folded)
        conv = next(x for x in g.graph.node if "rgb" in x.input)
        conv.input[0] = "rgb_nchw"
        g.graph.node.insert(0, helper.make_node("Cast", ["u8_nchw"], ["rgb_nchw"],
                                                to=TensorProto.FLOAT))
        g.graph.node.insert(0, helper.make_node("Transpose", ["u8"], ["u8_nchw"],
                                                perm=[0, 3, 1, 2]))
        del g.graph.input[:]
        g.graph.input.append(helper.make_tensor_value_info("u8", TensorProto.UINT8,
                                                           ["n", "h", "w", 3]))
        return g.SerializeToString()

    region = _region(args.rows, args.cols)[None]
    mp = args.rows * args.cols * 128 * 128 / 1e6
    pool = ThreadPoolExecutor(n)

    def runner(sess: Any, x: Callable[[], np.ndarray], name: str = "rgb") -> Callable[[], Any]:
        return lambda: sess.run(["logits"], {name: x()})

    def split(sessions: list[Any], x: Callable[[], np.ndarray]) -> Callable[[], Any]:
        def run() -> Any:
            xs = x()
            cuts = [len(xs) * i // len(sessions) for i in range(len(sessions) + 1)]
            fs = [pool.submit(s.run, ["logits"], {"rgb": xs[a:b]})
                  for s, a, b in zip(sessions, cuts[:-1], cuts[1:])]
            return [f.result() for f in fs]
        return run

    def dense_x() -> np.ndarray:
        return _rgb_nchw_float(region)

    def windows_x() -> np.ndarray:
        return _windows_rgb_nchw_float(region, 139, 128)

    def dense_planes() -> np.ndarray:  # the conversion before: strided plane copies
        out = np.empty((1, 3, *region.shape[1:3]), np.float32)
        for i in range(3):
            out[:, i] = region[..., i]
        return out

    def windows_planes() -> np.ndarray:
        v = window_view(region, 139, 128)
        out = np.empty((*v.shape[:4], 139, 139), np.float32)
        for i in range(3):
            out[:, :, :, i] = v[:, :, :, i]
        return out.reshape(-1, 3, 139, 139)

    u8 = u8_graph()
    wins8 = lambda: np.ascontiguousarray(
        window_view(region, 139, 128)[0].reshape(-1, 3, 139, 139).transpose(0, 2, 3, 1))
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "dense pass (one region), one session": {
            f"{n} threads, ENABLE_ALL, arena, no memory pattern (the grader's)":
                runner(session(), dense_x),
            "graph optimisation EXTENDED (no NCHWc layout)":
                runner(session(level="EXTENDED"), dense_x),
            "graph optimisation BASIC": runner(session(level="BASIC"), dense_x),
            "no memory arena": runner(session(arena=False), dense_x),
            "memory pattern on": runner(session(pattern=True), dense_x),
            "busy-waiting threads (allow_spinning 1)": runner(session(spin="1"), dense_x),
            "dynamic_block_base 4": runner(session(session__dynamic_block_base="4"), dense_x),
            "denormals as zero": runner(session(session__set_denormal_as_zero="1"), dense_x),
            "1 thread": runner(session(threads=1), dense_x),
            "uint8 NHWC input, Transpose + Cast in the graph": runner(session(u8), lambda: region,
                                                                     "u8"),
            "conversion by strided colour planes (before)": runner(session(), dense_planes),
        },
        "windows graded alone (the scan's default)": {
            f"{n} single-threaded sessions, a share of the batch each (the grader's)":
                split([session(threads=1) for _ in range(n)], windows_x),
            f"one session of {n} threads": runner(session(), windows_x),
            "uint8 windows, Transpose + Cast in the graph": runner(session(u8), wins8, "u8"),
            "conversion by strided colour planes (before)": runner(session(), windows_planes),
        },
    }
    print(f"region {args.rows} x {args.cols} windows ({region.shape[2]} x {region.shape[1]} px, "
          f"{mp:.2f} MP), {args.reps} turns, ONNX Runtime {ort.__version__}, {os.cpu_count()} "
          f"cores, load average " + " ".join(f"{v:.1f}" for v in os.getloadavg()), flush=True)
    times: dict[str, list[tuple[float, float]]] = {}
    for group in groups.values():
        for name, fn in group.items():
            fn()  # warm-up: arena, memory pattern, kernels
    for _ in range(args.reps):
        for g, group in groups.items():
            for name, fn in group.items():
                t0, c0 = time.perf_counter(), _cpu()
                fn()
                times.setdefault(f"{g}/{name}", []).append((time.perf_counter() - t0,
                                                            _cpu() - c0))
    for g, group in groups.items():
        print(f"\n{g}\n| setting | MP/s (wall) | MP per CPU-s | vs first (wall, CPU) |\n"
              "|---|---|---|---|")
        ref = None
        for name in group:
            v = np.array(times[f"{g}/{name}"])
            wall, cpu = float(np.median(v[:, 0])), float(np.median(v[:, 1]))
            ref = ref or (wall, cpu)
            print(f"| {name} | {mp / wall:.1f} | {mp / cpu:.1f} | {ref[0] / wall:.2f}x, "
                  f"{ref[1] / cpu:.2f}x |")
    print("\nload average at the end " + " ".join(f"{v:.1f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
