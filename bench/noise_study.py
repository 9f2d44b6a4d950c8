"""How noisy are real scans, and how noisy are our synthetic patches?

Measures the noise floor (Immerkaer block sigma, 25th percentile per intensity bin,
8-bit levels) of real in-focus and out-of-focus scans at their native pixel size (the bundled
images' magnifications are estimates, so none is resampled),
and of synthetic patches (pool tissue blurred past its texture, then Poisson noise
of scale S on the 0..255 scale, then JPEG) for several S, and the spread of the
per-patch noise that a sampling range of S produces. Writes docs/figures/noise.png.

Run: .venv/bin/python bench/noise_study.py [--pool pool] [--out docs/figures/noise.png]

References: Kohlberger et al. 2019 (f(x) = Poisson(x / S) S, S in (0.01, 64), JPEG 70-90);
Immerkaer 1996 (the estimator).
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
from pathlib import Path

import cv2
import numpy as np

from convfocus.io.images import read_image
from convfocus.io.readers import open_slide
from convfocus.synthesis.defocus import (
    SynthesisConfig,
    add_poisson_noise,
    apply_blur,
    jpeg_roundtrip,
)
from convfocus.training.calibrate import NOISE_BINS, block_noise_sigma, noise_by_intensity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REAL = {  # name -> path under shared/data; all read at their native pixel size
    "TCGA@Focus, in focus": "real-oof/tcga-focus-infocus-i32381-j37784.png",
    "TCGA@Focus, out of focus": "real-oof/tcga-focus-outfocus-i9651-j81514.png",
    "TIAToolbox target": "infocus/tiatoolbox-target-image.png",
    "histolab TCGA lung": "infocus/histolab-tcga-lung-rgb.png",
    "histolab tissue level 0": "infocus/histolab-tissue-level0-4302-10273-4814-10785.png",
    "CMU-1 small region (.svs, 20x)": "slides/cmu-1-small-region.svs",
}
S_GRID = (0.0, 0.01, 0.05, 0.15, 0.5, 2.55)  # 2.55 = the paper's smallest S (0.01) in 8-bit
TISSUE = (96, 216)  # intensity range of stained tissue, 8-bit levels


def read_real(rel: str) -> np.ndarray:
    path = DATA / rel
    if path.suffix == ".svs":
        s = open_slide(path)
        try:
            return s.read_region((0, 0), 0, s.dimensions)
        finally:
            s.close()
    return read_image(path)


def degrade(blurred: np.ndarray, s8: float, q: int, seed: int) -> np.ndarray:
    """Noise of scale ``s8`` (0..255 scale) then JPEG at ``q`` on a float [0, 1] image."""
    x = blurred
    if s8 > 0:
        x = add_poisson_noise(x, s8 / 255.0, np.random.default_rng(seed))
    return jpeg_roundtrip(np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8), q)


def tissue_sigma(img: np.ndarray) -> float:
    m, s = block_noise_sigma(img)
    sel = s[(m >= TISSUE[0]) & (m < TISSUE[1])]
    return float(np.percentile(sel, 25)) if len(sel) >= 20 else float("nan")


def sampled_sigmas(bases: list[np.ndarray], s_range: tuple[float, float], n: int,
                   seed: int) -> np.ndarray:
    """Per-patch tissue noise floor of ``n`` patches with S log-uniform in ``s_range`` and JPEG
    quality uniform in 70..90 (the synthesis' sampling)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s8 = math.exp(rng.uniform(math.log(s_range[0]), math.log(s_range[1])))
        q = int(rng.integers(70, 91))
        out.append(tissue_sigma(degrade(bases[i % len(bases)], s8, q, seed + i)))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "pool"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "noise.png"))
    ap.add_argument("--patches", type=int, default=16)
    ap.add_argument("--old", type=float, nargs=2, default=(0.01, 0.25),
                    help="a previous S range to compare with the current default")
    args = ap.parse_args()
    cv2.setNumThreads(1)

    from convfocus.training.pool import load_pool

    pool = load_pool(Path(args.pool), "train")[0]
    rng = np.random.default_rng(0)
    pool = pool[rng.choice(len(pool), min(args.patches, len(pool)), replace=False)]
    # blur past the tissue's texture (class 20, r = 12 px), so only synthetic noise remains
    bases = [apply_blur(p, "bokeh", 12.0).astype(np.float32) / 255.0 for p in pool]

    centres = [(a + b) / 2 for a, b in itertools.pairwise(NOISE_BINS)]
    print("noise floor (8-bit levels) per intensity bin: 25th percentile of 16 px block sigmas")
    print(f"{'':34s}" + "".join(f"{a:>4d}-{b:<4d}" for a, b in
                                itertools.pairwise(NOISE_BINS))
          + "  tissue")
    real_curves: dict[str, np.ndarray] = {}
    real_tissue: dict[str, float] = {}
    real_imgs: dict[str, np.ndarray] = {}
    for name, rel in REAL.items():
        if not (DATA / rel).is_file():
            continue
        img = read_real(rel)
        real_imgs[name] = img
        real_curves[name] = noise_by_intensity([img])
        real_tissue[name] = tissue_sigma(img)
        print(f"{name[:34]:34s}" + "".join(f"{v:9.2f}" for v in real_curves[name])
              + f"  {real_tissue[name]:6.2f}")
    synth_curves: dict[tuple[float, int], np.ndarray] = {}
    for s8 in S_GRID:
        for q in (70, 80, 90):
            imgs = [degrade(b, s8, q, i) for i, b in enumerate(bases)]
            synth_curves[(s8, q)] = noise_by_intensity(imgs)
            tissue = float(np.nanmedian([tissue_sigma(im) for im in imgs]))
            print(f"{f'synthetic S={s8:g} q={q}':34s}"
                  + "".join(f"{v:9.2f}" for v in synth_curves[(s8, q)]) + f"  {tissue:6.2f}")

    new = SynthesisConfig().noise_s_8bit
    old = tuple(args.old)
    dist_new = sampled_sigmas(bases, new, 240, 1)
    dist_old = sampled_sigmas(bases, old, 240, 1)
    for label, d in (("old", dist_old), ("default", dist_new)):
        rng_ = old if label == "old" else new
        p = np.percentile(d, [10, 50, 90])
        print(f"S log-uniform {rng_} ({label}): per-patch tissue noise p10 {p[0]:.2f} "
              f"median {p[1]:.2f} p90 {p[2]:.2f}")

    # --- figure ---
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    crop, zoom = 96, 3
    fig = Figure(figsize=(15, 10.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    real_names = [n for n in real_imgs][:4]
    show_s = (0.0, 0.05, 0.15, 0.5, 2.55, 16320.0)
    axes = top.subplots(2, max(len(real_names), len(show_s)))
    for ax in axes.ravel():
        ax.set_axis_off()

    def show(ax, img: np.ndarray, title: str) -> None:
        ax.imshow(cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST))
        ax.set_title(title, fontsize=8)

    for j, name in enumerate(real_names):
        img = real_imgs[name]
        m, s = block_noise_sigma(img, block_px=crop)
        # a flat-ish tissue crop: the tissue block with the lowest noise floor
        ok = (m >= TISSUE[0]) & (m < TISSUE[1])
        wb = img.shape[1] // crop
        k = int(np.flatnonzero(ok)[np.argmin(s[ok])]) % ((img.shape[0] // crop) * wb)
        y, x = (k // wb) * crop, (k % wb) * crop
        show(axes[0, j], img[y : y + crop, x : x + crop],
             f"real: {name}\nnoise {real_tissue[name]:.2f}")
    base = bases[0][100 : 100 + crop, 100 : 100 + crop]
    for j, s8 in enumerate(show_s):
        out = degrade(base, s8, 80, 7)
        label = {2.55: "paper's smallest S (0.01 on [0,1])",
                 16320.0: "paper's largest S (64 on [0,1])"}.get(s8, "")
        show(axes[1, j], out, f"synthetic r=12, S={s8:g} (8-bit), q80\n{label}")

    ax1, ax2 = bottom.subplots(1, 2)
    for i, (name, curve) in enumerate(real_curves.items()):
        ax1.plot(centres, curve, "o-", color=f"C{i}", lw=1.6, ms=4, label=f"real: {name}")
    for s8, ls in zip((0.0, 0.05, 0.15, 0.5), (":", "--", "-.", "-"), strict=True):
        lo, mid, hi = (synth_curves[(s8, q)] for q in (70, 80, 90))
        ax1.plot(centres, mid, ls, color="k", lw=1.2, label=f"synthetic S={s8:g}, q80 (band q70-90)")
        ax1.fill_between(centres, lo, hi, color="k", alpha=0.07)
    ax1.plot(centres, synth_curves[(2.55, 80)], "-", color="grey", lw=2,
             label="synthetic, paper's smallest S")
    ax1.set_yscale("log")
    ax1.set_xlabel("intensity (8-bit level, bin centre)")
    ax1.set_ylabel("noise floor σ (8-bit levels, log)")
    ax1.legend(fontsize=7, ncol=2, loc="upper left")
    ax1.set_ylim(0.05, 100)
    bins = np.linspace(0.2, 3.0, 36)
    ax2.hist(dist_old, bins=bins, histtype="step", lw=1.5, color="C7",
             label=f"old default S in {old}")
    ax2.hist(dist_new, bins=bins, histtype="step", lw=2, color="C0",
             label=f"default S in {new} (log-uniform, q70-90)")
    for i, (name, v) in enumerate(real_tissue.items()):
        ax2.axvline(v, color=f"C{i}", ls="--", lw=1)
    ax2.set_xlabel("per-patch noise floor in tissue (8-bit levels); dashed: real scans")
    ax2.set_ylabel("synthetic patches")
    ax2.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    print(out)


if __name__ == "__main__":
    main()
