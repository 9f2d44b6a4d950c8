"""Scan throughput on a realistic 40x slide: decode floor, model-only rate, end to end, memory.

The slide (built once, cached under ``bench/.cache/``) is a pyramidal JPEG TIFF at
0.25 µm/px, 256 px tiles, q80, as scanners write them: real tissue (scikit-image's
immunohistochemistry image tiled with flips and colour jitter, as in the demo slide)
in several irregular pieces on glass, so that the tissue mask decides what is read.
About 15 % of the tissue is mildly and 10 % strongly out of focus, so that grades
spread over the class range. It is written tile by tile and never held in memory.

One run measures, on the blocks the scan grades (same grid, same regions):

1. decode floor: every level-0 tile those regions touch, read and decoded once, on
   all cores (``read_region`` of single tiles, the direct tifffile + simplejpeg path);
2. model-only: each region is decoded (not timed), then graded with
   ``Grader.predict_region`` (timed): fp32 on every block, int8 on a sample of
   blocks next to fp32 on the same blocks (speed ratio and agreement);
3. end to end: ``convfocus scan`` in a subprocess (everything: start-up, thumbnail,
   tissue mask, reading, grading, every output file), its wall time and peak RSS.

Rates are MP of tissue: graded windows x 128² model pixels. Because the machine may be
shared, every rate is also given per CPU-second (user + system time of the process
doing the work), which another process's load hardly changes; the ratios are taken
within this one run.

Run: .venv/bin/python bench/scan_throughput.py [--size 32768x24576] [--model PATH]
     [--precision fp32|int8] [--sample 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convfocus import MODEL_MPP

CACHE = Path(__file__).resolve().parent / ".cache"
TILE = 256
ATLAS = 4096  # level-0 px of one tissue texture block
MASK_CELL = 64  # level-0 px per pixel of the tissue-shape field
SLIDE_VERSION = 1


# --- the slide ----------------------------------------------------------------------------------


def _tissue_field(width: int, height: int, seed: int) -> np.ndarray:
    """Low-resolution tissue shape: several irregular pieces, float32 0..1 (>0.5 = tissue)."""
    rng = np.random.default_rng(seed)
    h, w = math.ceil(height / MASK_CELL), math.ceil(width / MASK_CELL)
    field = np.zeros((h, w), np.float32)
    n = 7
    for i in range(n):
        cx = (i + 0.5) / n * w + rng.uniform(-0.05, 0.05) * w
        cy = rng.uniform(0.3, 0.7) * h
        ax, ay = rng.uniform(0.05, 0.09) * w, rng.uniform(0.2, 0.38) * h
        cv2.ellipse(field, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(-25, 25)),
                    0, 360, 1.0, -1)
    noise = cv2.resize(rng.random((max(2, h // 8), max(2, w // 8))).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), max(1.0, w / 200)) + 0.6 * (noise - 0.5)
    return np.clip(field, 0, 1)


def _atlases(seed: int) -> list[np.ndarray]:
    """Sharp, mildly blurred (class 8) and strongly blurred (class 20) tissue textures."""
    from convfocus.demo import make_demo_tissue
    from convfocus.synthesis.defocus import apply_blur, class_centre_px

    sharp = make_demo_tissue(ATLAS, ATLAS, margin=0, seed=seed)
    return [sharp] + [apply_blur(sharp, "bokeh", class_centre_px(c)) for c in (8, 20)]


def _levels(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > TILE:
        w, h = dims[-1]
        dims.append((w // 2, h // 2))
    return dims


def _tile_renderer(width: int, height: int, seed: int) -> Callable[[int, int, int], np.ndarray]:
    field = _tissue_field(width, height, seed)
    atlases = _atlases(seed)
    rng = np.random.default_rng(seed + 1)
    # which texture each ATLAS x ATLAS block of level 0 shows: 75 % sharp, 15 % / 10 % blurred
    nbx, nby = math.ceil(width / ATLAS), math.ceil(height / ATLAS)
    variant = rng.choice(3, size=(nby, nbx), p=[0.75, 0.15, 0.10])
    glass = np.clip(rng.normal(242, 1.5, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
    by_level: dict[int, list[np.ndarray]] = {}

    def atlas(k: int) -> list[np.ndarray]:
        if k not in by_level:
            side = max(1, ATLAS >> k)
            by_level[k] = [cv2.resize(a, (side, side), interpolation=cv2.INTER_AREA)
                           for a in atlases]
        return by_level[k]

    def render(k: int, tx: int, ty: int) -> np.ndarray:
        f = 2**k
        x0, y0 = tx * TILE, ty * TILE
        s = f / MASK_CELL
        # the field's pixels this tile interpolates from: all glass or all tissue is common
        fx0, fy0 = max(0, math.floor(x0 * s - 1)), max(0, math.floor(y0 * s - 1))
        foot = field[fy0 : math.ceil((y0 + TILE) * s) + 2, fx0 : math.ceil((x0 + TILE) * s) + 2]
        if foot.size == 0 or foot.max() <= 0.5:
            return glass
        mask = None
        if foot.min() <= 0.5 or foot.shape != (math.ceil((y0 + TILE) * s) + 2 - fy0,
                                               math.ceil((x0 + TILE) * s) + 2 - fx0):
            m = np.array([[s, 0, (x0 + 0.5) * s - 0.5], [0, s, (y0 + 0.5) * s - 0.5]],
                         np.float32)
            mask = cv2.warpAffine(field, m, (TILE, TILE),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.5
            if not mask.any():
                return glass
        side = max(1, ATLAS >> k)
        ys, xs = (y0 + np.arange(TILE)), (x0 + np.arange(TILE))
        vy = np.minimum(ys * f // ATLAS, nby - 1)
        vx = np.minimum(xs * f // ATLAS, nbx - 1)
        tex_all = atlas(k)
        if side >= TILE:  # a tile lies inside one texture block: a plain slice
            tex = tex_all[int(variant[vy[0], vx[0]])][y0 % side : y0 % side + TILE,
                                                       x0 % side : x0 % side + TILE]
        else:
            stack = np.stack(tex_all)
            tex = stack[variant[vy[:, None], vx[None, :]], (ys % side)[:, None],
                        (xs % side)[None, :]]
        if mask is None:
            return np.ascontiguousarray(tex)
        return np.where(mask[..., None], tex, glass)

    return render


def build_slide(path: Path, width: int, height: int, *, seed: int = 11) -> Path:
    """Write the benchmark slide tile by tile (pyramid in SubIFDs, as
    :func:`convfocus.io.images.write_pyramidal_tiff` lays it out)."""
    import tifffile

    from convfocus.io.atomic import write_atomic

    render = _tile_renderer(width, height, seed)
    dims = _levels(width, height)
    common: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg",
                              "compressionargs": {"level": 80}, "resolutionunit": "CENTIMETER",
                              "metadata": None, "tile": (TILE, TILE), "dtype": np.uint8}

    def tiles(k: int) -> Iterator[np.ndarray]:
        w, h = dims[k]
        for ty in range(math.ceil(h / TILE)):
            for tx in range(math.ceil(w / TILE)):
                yield render(k, tx, ty)

    def res(k: int) -> tuple[float, float]:
        w, h = dims[k]
        return (1e4 / (MODEL_MPP * width / w), 1e4 / (MODEL_MPP * height / h))

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            w, h = dims[0]
            tw.write(tiles(0), shape=(h, w, 3), subifds=len(dims) - 1, resolution=res(0),
                     **common)
            for k in range(1, len(dims)):
                w, h = dims[k]
                tw.write(tiles(k), shape=(h, w, 3), subfiletype=1, resolution=res(k), **common)

    return write_atomic(path, write, parents=True)


def cached_slide(width: int, height: int, *, rebuild: bool = False) -> Path:
    path = CACHE / f"slide-{width}x{height}-v{SLIDE_VERSION}.tif"
    if rebuild or not path.is_file():
        t0 = time.perf_counter()
        print(f"building {path.name} ({width * height / 1e9:.2f} GP) ...", flush=True)
        build_slide(path, width, height)
        print(f"  built in {time.perf_counter() - t0:.0f} s, "
              f"{path.stat().st_size / 1e6:.0f} MB", flush=True)
    return path


# --- measurements -------------------------------------------------------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plan(slide: Path, grader: Any, block: int) -> dict[str, Any]:
    """The scan's grid and blocks for this slide (the same functions the scan calls)."""
    from convfocus.grading.scan import ScanOptions, _blocks
    from convfocus.grading.tiling import make_grid
    from convfocus.grading.tissue import tissue_mask
    from convfocus.io.readers import open_slide

    opts = ScanOptions(block=block)
    spec = grader.spec
    with open_slide(slide) as reader:
        w0, h0 = reader.dimensions
        thumb = reader.get_thumbnail(opts.thumbnail_px)
        scale = float(reader.mpp) / spec.mpp
    tgrid = make_grid(tissue_mask(thumb), w0 / thumb.shape[1], (w0, h0),
                      window_l0_px=spec.window_px / scale, stride_l0_px=spec.stride_px / scale,
                      min_tissue=opts.min_tissue)
    graded = tgrid.mask()
    return {"grid": tgrid.geometry, "graded": graded, "blocks": _blocks(graded, block),
            "scale": scale, "dimensions": (w0, h0)}


def _region_box(p: dict[str, Any], b: tuple[int, int, int, int], spec: Any) -> tuple[int, ...]:
    r0, c0, nr, nc = b
    ox, oy = p["grid"].l0_origin_px
    s = p["scale"]
    x0, y0 = ox + c0 * spec.stride_px / s, oy + r0 * spec.stride_px / s
    w = (nc * spec.stride_px + spec.window_px - spec.stride_px) / s
    h = (nr * spec.stride_px + spec.window_px - spec.stride_px) / s
    return int(x0), int(y0), math.ceil(x0 + w), math.ceil(y0 + h)


def decode_floor(slide: Path, p: dict[str, Any], spec: Any, threads: int) -> dict[str, float]:
    """Read and decode every level-0 tile the graded regions touch, once, on ``threads``."""
    from convfocus.io.readers import open_slide

    tiles: set[tuple[int, int]] = set()
    for b in p["blocks"]:
        x0, y0, x1, y1 = _region_box(p, b, spec)
        for ty in range(y0 // TILE, (y1 - 1) // TILE + 1):
            for tx in range(x0 // TILE, (x1 - 1) // TILE + 1):
                tiles.add((tx, ty))
    jobs = sorted(tiles, key=lambda t: (t[1], t[0]))
    with open_slide(slide, threads=1) as reader:
        reader.read_region((0, 0), 0, (TILE, TILE))

        def one(t: tuple[int, int]) -> None:
            reader.read_region((t[0] * TILE, t[1] * TILE), 0, (TILE, TILE))

        t0, c0 = time.perf_counter(), _cpu()
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(one, jobs):
                pass
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    mp = len(jobs) * TILE * TILE / 1e6
    return {"tiles": len(jobs), "mp": mp, "wall_s": wall, "cpu_s": cpu, "mp_s": mp / wall,
            "mp_cpu_s": mp / cpu}


def model_only(slide: Path, p: dict[str, Any], graders: dict[str, Any],
               sample_blocks: int) -> dict[str, Any]:
    """Grade every block's region as the scan does (``fp32``: windows cut out and graded
    exactly, tissue windows only); on a sample of blocks also with the dense pass and int8.
    Timed: converting the region and grading it; not timed: reading and decoding it."""
    from convfocus.grading.scan import read_model_region
    from convfocus.io.readers import open_slide

    fp32 = graders["fp32"]
    spec = fp32.spec
    blocks = p["blocks"]
    step = max(1, len(blocks) // max(1, sample_blocks))
    sample = set(range(0, len(blocks), step)) if len(graders) > 1 else set()
    acc = {k: np.zeros(4) for k in ("fp32", "fp32_sample", *graders)}  # wall, cpu, graded, computed
    classes: dict[str, list[np.ndarray]] = {k: [] for k in graders}
    probs: dict[str, list[np.ndarray]] = {k: [] for k in graders}
    win, stride, scale = spec.window_px, spec.stride_px, p["scale"]
    ox, oy = p["grid"].l0_origin_px
    with open_slide(slide) as reader:
        for i, (r0, c0, nr, nc) in enumerate(blocks):
            region = read_model_region(reader, ox + c0 * stride / scale, oy + r0 * stride / scale,
                                       nc * stride + win - stride, nr * stride + win - stride,
                                       scale)
            sel = p["graded"][r0 : r0 + nr, c0 : c0 + nc]
            names = list(graders) if i in sample else ["fp32"]
            if i in sample and len(classes["fp32"]) % 2:
                names.reverse()  # alternate the order: neither profits from warm caches
            for name in names:
                g = graders[name]
                t0, k0 = time.perf_counter(), _cpu()
                prob = g.predict_region(g.prepare(region, select=sel))
                computed = nr * nc if g.dense else int(sel.sum())
                row = np.array([time.perf_counter() - t0, _cpu() - k0, sel.sum(), computed])
                acc[name] += row
                if i in sample:
                    if name == "fp32":
                        acc["fp32_sample"] += row
                    classes[name].append(prob.argmax(-1)[sel])
                    probs[name].append(prob[sel])
    out: dict[str, Any] = {}
    for name, (wall, cpu, graded, computed) in acc.items():
        if not computed:
            continue
        mp = graded * 128 * 128 / 1e6
        out[name] = {"wall_s": wall, "cpu_s": cpu, "graded_windows": int(graded),
                     "computed_windows": int(computed), "windows_s": computed / wall,
                     "mp_s": mp / wall, "mp_cpu_s": mp / cpu}
    ref = np.concatenate(classes["fp32"]).astype(int) if classes["fp32"] else None
    if ref is not None and "dense" in graders:
        d, w = np.concatenate(probs["dense"]), np.concatenate(probs["fp32"])
        k = d.argmax(1)
        out["dense_parity"] = {"windows": len(d), "same_class": float(np.mean(k == ref)),
                               "within1": float(np.mean(np.abs(k - ref) <= 1)),
                               "max_abs_dp": float(np.abs(d - w).max()),
                               "p99_abs_dp": float(np.quantile(np.abs(d - w).max(1), 0.99))}
    if ref is not None and "int8" in graders:
        b = np.concatenate(classes["int8"]).astype(int)
        dd = np.abs(ref - b)
        out["int8_agreement"] = {"windows": int(dd.size), "exact": float(np.mean(dd == 0)),
                                 "within1": float(np.mean(dd <= 1)),
                                 "mean_abs": float(dd.mean()), "max_abs": int(dd.max()),
                                 "fp32_class_histogram": np.bincount(ref, minlength=30).tolist()}
    return out


def end_to_end(slide: Path, model: str | None, precision: str, extra: list[str]) -> dict[str, Any]:
    """``convfocus scan`` in a subprocess: wall time, CPU time, peak RSS, summary runtime."""
    out = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    cmd = [sys.executable, "-m", "convfocus", "scan", str(slide), "--out", str(out), "-q",
           "--precision", precision, *extra]
    if model:
        cmd += ["--model", model]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit(f"scan failed ({proc.returncode}):\n{proc.stderr}")
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    classmap = np.load(next(out.glob("*/classmap.npy")))
    shutil.rmtree(out, ignore_errors=True)
    graded = int((classmap >= 0).sum())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mp = graded * 128 * 128 / 1e6
    return {"wall_s": wall, "cpu_s": cpu, "runtime_s": summary.get("runtime_s"),
            "graded_windows": graded, "mp": mp, "mp_s": mp / wall,
            "mp_s_runtime": mp / float(summary.get("runtime_s") or wall), "mp_cpu_s": mp / cpu,
            "peak_rss_mb": after.ru_maxrss / 1024, "classmap": classmap}


def outputs_child(width: int, height: int) -> None:
    """In a fresh process: the per-slide arrays of a ``width x height`` slide at 0.25 µm/px
    with tissue on all of it (the worst case), and every output file written from them.
    Prints peak RSS and times as JSON; nothing of the slide's pixels is built."""
    from convfocus import NUM_CLASSES
    from convfocus.grading.outputs import write_outputs
    from convfocus.grading.result import SlideInfo, SlideResult
    from convfocus.types import GridGeometry, ModelSpec

    t0 = time.perf_counter()
    spec = ModelSpec(name="memory-check", version="0", arch="paper")
    rows = (height - spec.window_px) // spec.stride_px + 1
    cols = (width - spec.window_px) // spec.stride_px + 1
    rng = np.random.default_rng(0)
    probs = np.empty((rows, cols, NUM_CLASSES), np.float16)
    for r in range(rows):  # smooth class field with noise, one row at a time
        centre = 15 + 12 * np.sin(np.arange(cols) / 40 + r / 55)
        z = -0.5 * ((np.arange(NUM_CLASSES)[None] - centre[:, None]) / 2.5) ** 2
        z += rng.normal(0, 0.3, z.shape)
        e = np.exp(z - z.max(1, keepdims=True))
        probs[r] = e / e.sum(1, keepdims=True)
    classmap = probs.argmax(-1).astype(np.int16)
    cells = np.argwhere(np.ones((rows, cols), bool)).astype(np.int32)
    grid = GridGeometry((0.0, 0.0), float(spec.stride_px), float(spec.window_px), rows, cols)
    th_side = 2048
    th_ds = max(width, height) / th_side
    thumb = np.full((round(height / th_ds), round(width / th_ds), 3), 200, np.uint8)
    result = SlideResult(SlideInfo("memory-check.tif", (width, height), MODEL_MPP,
                                   format="tiff"), spec, grid, classmap, probs, thumb, th_ds)
    rss_arrays = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cf-outputs-") as tmpd:
        write_outputs(result, tmpd, runtime_start=t0)
        sizes = {f.name: f.stat().st_size for f in Path(tmpd).iterdir()}
    print(json.dumps({"rows": rows, "cols": cols, "windows": len(cells),
                      "arrays_mb": (probs.nbytes + classmap.nbytes + cells.nbytes) / 2**20,
                      "peak_rss_after_arrays_mb": rss_arrays,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "write_outputs_s": time.perf_counter() - t1,
                      "tiles_csv_mb": sizes.get("tiles.csv", 0) / 2**20}))


def outputs_check(size: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--outputs-child", size], check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _model_copy(model: str | None) -> str:
    """The model's files copied to ``bench/.cache/models/`` (its int8 graph is cached there)."""
    from convfocus.grading.modelfile import resolve_model_path

    base = resolve_model_path(model)
    dest = CACHE / "models" / base.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".onnx", ".safetensors"):
        src = base.with_suffix(suffix)
        if src.is_file() and (not dest.with_suffix(suffix).is_file()
                              or dest.with_suffix(suffix).read_bytes() != src.read_bytes()):
            shutil.copyfile(src, dest.with_suffix(suffix))
            dest.with_name(dest.name + ".int8.onnx").unlink(missing_ok=True)  # stale
    return str(dest)


# --- report -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32768x24576", help="level-0 WIDTHxHEIGHT (default "
                    "32768x24576: about 0.4 GP of tissue)")
    ap.add_argument("--model", default=None, help="model name or path (default: the shipped one)")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                    help="precision of the end-to-end scan (default fp32)")
    ap.add_argument("--sample", type=int, default=48,
                    help="blocks also graded with the dense pass and with int8 (0: none)")
    ap.add_argument("--block", type=int, default=None,
                    help="region size in cells (default: the scan's, ScanOptions.block)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to use")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached slide")
    ap.add_argument("--skip-model-only", action="store_true")
    ap.add_argument("--outputs-rss", default="100000x100000", metavar="WxH",
                    help="also write every output of a slide this large, all tissue, from "
                    "made-up grades, and report the peak RSS ('' to skip)")
    ap.add_argument("--outputs-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.outputs_child:
        outputs_child(*(int(v) for v in args.outputs_child.lower().split("x")))
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))

    from convfocus.grading.infer import load_grader
    from convfocus.grading.scan import ScanOptions

    block = args.block or ScanOptions().block

    slide = cached_slide(width, height, rebuild=args.rebuild)
    t_start = time.perf_counter()
    model = _model_copy(args.model)  # the int8 graph is made beside it, not in the package
    graders = {"fp32": load_grader(model, threads=args.threads)}
    if args.sample > 0:
        graders["dense"] = load_grader(model, threads=args.threads, dense=True)
        graders["int8"] = load_grader(model, threads=args.threads, precision="int8")
    fp32 = graders["fp32"]
    p = plan(slide, fp32, block)
    computed = sum(b[2] * b[3] for b in p["blocks"])
    graded = int(p["graded"].sum())
    print(f"slide {width}x{height} ({width * height / 1e9:.2f} GP), "
          f"{graded} tissue windows = {graded * 16384 / 1e6:.0f} MP of tissue "
          f"({graded * 16384 / (width * height):.0%}), {len(p['blocks'])} regions of <= "
          f"{block}² cells, {computed} windows computed ({computed / graded - 1:+.1%}); "
          f"model {fp32.spec.name} ({fp32.spec.arch}), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    res: dict[str, Any] = {"slide": {"size": [width, height], "tissue_windows": graded,
                                     "tissue_mp": graded * 16384 / 1e6,
                                     "blocks": len(p["blocks"]), "computed_windows": computed},
                           "model": {"name": fp32.spec.name, "arch": fp32.spec.arch},
                           "cores": os.cpu_count(), "load_average": os.getloadavg()[0]}
    res["decode"] = decode_floor(slide, p, fp32.spec, args.threads)
    print(f"decode floor: {res['decode']['tiles']} tiles, {res['decode']['mp_s']:.0f} MP/s "
          f"({res['decode']['mp_cpu_s']:.0f} MP per CPU-s)", flush=True)
    if not args.skip_model_only:
        res["model_only"] = model_only(slide, p, graders, args.sample)
        for k, v in res["model_only"].items():
            print(f"model-only {k}: " + ", ".join(
                f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()),
                flush=True)
    del fp32, graders
    e2e = end_to_end(slide, model, args.precision, ["--threads", str(args.threads)])
    res["end_to_end"] = {k: v for k, v in e2e.items() if k != "classmap"}
    if args.outputs_rss:
        res["outputs_check"] = {"size": args.outputs_rss, **outputs_check(args.outputs_rss)}
    res["total_bench_s"] = time.perf_counter() - t_start
    _print_table(res, args.precision)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _print_table(res: dict[str, Any], precision: str) -> None:
    d, e = res["decode"], res["end_to_end"]
    mo = res.get("model_only", {})
    rows = [("decode floor (tissue tiles, all cores)", d["mp_s"], d["mp_cpu_s"], "")]
    for k, label in (("fp32", "model-only fp32, windows graded exactly (all regions)"),
                     ("fp32_sample", "model-only fp32, exact (sample)"),
                     ("dense", "model-only fp32, dense pass (sample)"),
                     ("int8", "model-only int8, exact (sample)")):
        if k in mo:
            rows.append((label, mo[k]["mp_s"], mo[k]["mp_cpu_s"],
                         f"{mo[k]['windows_s']:.0f} windows/s computed"))
    rows.append((f"end to end `convfocus scan` ({precision}), wall", e["mp_s"], e["mp_cpu_s"],
                 f"{e['wall_s']:.1f} s"))
    rows.append(("end to end, scan_path runtime_s", e["mp_s_runtime"], float("nan"),
                 f"{e['runtime_s']:.1f} s"))
    print("\n| stage | MP/s (wall) | MP per CPU-s | note |\n|---|---|---|---|")
    for name, a, b, note in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {note} |")
    print(f"\npeak RSS of the scan: {e['peak_rss_mb']:.0f} MB")
    if "outputs_check" in res:
        o = res["outputs_check"]
        print(f"outputs of a {o['size']} slide, all tissue ({o['windows']} windows, made-up "
              f"grades): peak RSS {o['peak_rss_mb']:.0f} MB ({o['arrays_mb']:.0f} MB of grade "
              f"arrays), written in {o['write_outputs_s']:.1f} s, tiles.csv "
              f"{o['tiles_csv_mb']:.0f} MB")
    ref = mo.get("int8" if precision == "int8" else "fp32")
    if ref:
        print(f"end to end / model-only ({precision}): wall {e['mp_s'] / ref['mp_s']:.0%}, "
              f"per CPU-s {e['mp_cpu_s'] / ref['mp_cpu_s']:.0%}")
    f32 = mo.get("fp32_sample")
    if "int8" in mo and f32:
        a, i8 = mo["int8_agreement"], mo["int8"]
        print(f"int8 / fp32 speed (same regions): wall {i8['mp_s'] / f32['mp_s']:.2f}x, "
              f"per CPU-s {i8['mp_cpu_s'] / f32['mp_cpu_s']:.2f}x; classes within ±1: "
              f"{a['within1']:.2%}, exact {a['exact']:.2%}, mean |Δ| {a['mean_abs']:.3f} "
              f"({a['windows']} windows)")
    if "dense" in mo and f32:
        q, dn = mo["dense_parity"], mo["dense"]
        print(f"dense / exact speed (same regions): wall {dn['mp_s'] / f32['mp_s']:.2f}x, "
              f"per CPU-s {dn['mp_cpu_s'] / f32['mp_cpu_s']:.2f}x; dense pass vs windows "
              f"alone: same class on {q['same_class']:.2%} of {q['windows']} windows (within "
              f"±1: {q['within1']:.2%}), max |Δp| {q['max_abs_dp']:.4f} (99th percentile "
              f"{q['p99_abs_dp']:.4f})")
    print(f"decode floor / model-only fp32 per CPU-s: "
          f"{d['mp_cpu_s'] / mo['fp32']['mp_cpu_s']:.1f}x" if "fp32" in mo else "")
    print(f"bench time {res['total_bench_s']:.0f} s; load average "
          f"{res['load_average']:.1f} at start")


if __name__ == "__main__":
    raise SystemExit(main())
