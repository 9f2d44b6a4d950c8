"""Synthesis speed: fully processed 300 x 300 training patches per second on one core.

A patch is processed as in training: class drawn uniformly from 0..29, bokeh blur of
a radius drawn from its class interval, Poisson noise, JPEG round trip
(:func:`convfocus.synthesis.defocus.synthesize` with the default :class:`SynthesisConfig`).
The baseline does the same with plain scipy/numpy, in the same run on the same
draws: mirror padding + ``scipy.signal.fftconvolve`` (``scipy.ndimage.convolve``
cannot finish class 29's 401 x 401 px kernels in useful time), exact numpy Poisson
draws for the whole patch, the same JPEG. Budget: >= 30 patches/s per core.

Run: .venv/bin/python bench/synthesis_speed.py [--pool pool] [-n 150]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from convfocus.synthesis.defocus import (
    SynthesisConfig,
    SynthesisParams,
    apply_blur,
    disk_kernel,
    gaussian_kernel,
    jpeg_roundtrip,
    kernel_half_width,
    sample_synthesis,
    synthesize,
    use_cosine_route,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 30.0


def baseline(patch: np.ndarray, p: SynthesisParams, cfg: SynthesisConfig) -> np.ndarray:
    """The same patch the plain way: fftconvolve on a padded copy, full-patch numpy Poisson."""
    from scipy.signal import fftconvolve

    x = patch.astype(np.float32) / 255.0
    if p.blur > 0:
        m = kernel_half_width(cfg.kind, p.blur)
        if cfg.kind == "bokeh":
            k = disk_kernel(p.blur)
        else:
            g = gaussian_kernel(p.blur)
            k = np.outer(g, g)
        pad = np.pad(x, ((m, m), (m, m), (0, 0)), mode="symmetric")
        x = np.stack([fftconvolve(pad[..., c], k, mode="valid") for c in range(3)], axis=2)
    if p.noise_s_8bit > 0:
        s = p.noise_s_8bit / 255.0
        rng = np.random.default_rng(p.seed)
        x = rng.poisson(np.clip(x, 0, 1) / s) * s
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return jpeg_roundtrip(out, p.jpeg_quality) if p.jpeg_quality > 0 else out


def rate(fn: Callable[[np.ndarray, SynthesisParams], np.ndarray], patches: np.ndarray,
         params: list[SynthesisParams]) -> float:
    fn(patches[0], params[0])  # warm caches
    t0 = time.perf_counter()
    for i, p in enumerate(params):
        fn(patches[i % len(patches)], p)
    return len(params) / (time.perf_counter() - t0)


def timed_ms(fn: Callable[[], object], n: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "pool"))
    ap.add_argument("-n", type=int, default=150, help="patches per measurement")
    ap.add_argument("--kind", choices=("bokeh", "gaussian"), default="bokeh")
    args = ap.parse_args()
    cv2.setNumThreads(1)

    pool = ROOT / args.pool if not Path(args.pool).is_absolute() else Path(args.pool)
    if (pool / "manifest.csv").is_file():
        from convfocus.training.pool import load_pool

        patches = load_pool(pool)[0][:32]
        source = f"{len(patches)} pool patches"
    else:
        from skimage import data

        ihc = data.immunohistochemistry()
        patches = np.stack([ihc[y : y + 300, x : x + 300] for y in (0, 200) for x in (0, 200)])
        source = "scikit-image IHC crops (no pool found)"
    cfg = SynthesisConfig(args.kind)
    rng = np.random.default_rng(0)
    params = [sample_synthesis(int(rng.integers(0, 30)), rng, cfg) for _ in range(args.n)]

    print(f"one core; {source}; {args.kind}; classes uniform 0..29; noise S in "
          f"{cfg.noise_s_8bit} (8-bit); JPEG {cfg.jpeg_quality}")
    p0 = patches[0]
    print("\nblur of one 300 x 300 RGB patch (ms)")
    print(f"{'param':>7s}  {'route':>7s}  {'apply_blur':>10s}  {'fftconvolve':>11s}"
          f"  {'ndimage':>8s}")
    from scipy import ndimage
    from scipy.signal import fftconvolve

    for r in (1.4, 3.0, 5.5, 12.0, 28.0, 75.0, 200.0):
        if args.kind == "gaussian":
            r = round(r * 0.66, 2)
        m = kernel_half_width(args.kind, r)
        k = disk_kernel(r) if args.kind == "bokeh" else np.outer(*(2 * [gaussian_kernel(r)]))
        pad = np.pad(p0.astype(np.float32), ((m, m), (m, m), (0, 0)), mode="symmetric")
        t_ours = timed_ms(lambda r=r: apply_blur(p0, args.kind, r))
        t_fft = timed_ms(lambda k=k, pad=pad: [fftconvolve(pad[..., c], k, mode="valid")
                                              for c in range(3)], 3)
        t_nd = (timed_ms(lambda k=k, pad=pad: [ndimage.convolve(pad[..., c], k)
                                              for c in range(3)], 1)
                if m <= 13 else float("nan"))
        route = "cosine" if use_cosine_route(args.kind, r, p0.shape) else "spatial"
        print(f"{r:7.2f}  {route:>7s}  {t_ours:10.2f}  {t_fft:11.2f}  {t_nd:8.1f}")

    x = p0.astype(np.float32) / 255.0
    from convfocus.synthesis.defocus import add_poisson_noise

    s = max(cfg.noise_s_8bit) / 255.0
    g = np.random.default_rng(1)
    print(f"\nnoise, S = {max(cfg.noise_s_8bit)}: add_poisson_noise "
          f"{timed_ms(lambda: add_poisson_noise(x, s, g)):.2f} ms, numpy Poisson everywhere "
          f"{timed_ms(lambda: g.poisson(x / s) * s):.2f} ms; JPEG round trip "
          f"{timed_ms(lambda: jpeg_roundtrip(p0, 80)):.2f} ms")

    ours = rate(lambda p, q: synthesize(p, q, config=cfg), patches, params)
    base = rate(lambda p, q: baseline(p, q, cfg), patches, params[: max(10, args.n // 3)])
    crop = rate(lambda p, q: synthesize(p, q, config=cfg, crop=(72, 72, 155)), patches, params)
    print(f"\nfully processed 300 x 300 patches per second, one core: {ours:.1f} "
          f"(budget {BUDGET:.0f}: {'met' if ours >= BUDGET else 'NOT met'})")
    print(f"baseline (fftconvolve + numpy Poisson), same draws: {base:.1f} /s; "
          f"ratio {ours / base:.1f}x")
    print(f"training crops (155 px of a 300 px patch, with real context): {crop:.1f} /s")
    worst = [q for q in params if q.cls == 29] or params[:1]
    print(f"class 29 alone: {rate(lambda p, q: synthesize(p, q, config=cfg), patches, worst):.1f}"
          f" /s (mean radius {np.mean([q.blur for q in worst]):.1f} px)")
    assert math.isfinite(ours)


if __name__ == "__main__":
    main()
