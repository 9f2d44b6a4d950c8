"""Why does the grader call the TCGA@Focus out-of-focus patch sharp?

Runs the shipped grader (or ``--model``) on the two TCGA@Focus patches in
``../shared/data/real-oof`` under controlled changes and prints one table per question:

1. scale: both patches at native pixels, rescaled x0.5 / x1.44 / x2, and at the pixel
   size that nuclear size suggests (:func:`convfocus.training.pool.estimate_mpp`);
2. JPEG blocking: the out-of-focus patch with its 8x8 block edges smoothed;
3. a matched synthetic ladder: the in-focus patch darkened to the out-of-focus
   patch's luma (optical density x3.5), bokeh of known radius, Poisson noise, JPEG at
   Aperio's quality 30, a contrast veil: does the grader read such an image right?
4. the patch's own fine residual (what a mild non-local-means filter removes) added to
   that ladder: is the residual alone what reads as "sharp"? (The ladder is also
   graded at JPEG 80, the middle of the paper's range, beside Aperio's 30.)
5. spectral fall-off (log10 power, contrast-normalised, per band of cycles/px) of the
   patch beside the ladder: which bokeh radius its spectrum matches.

Needs ../shared/data. Run: .venv/bin/python bench/real_oof_study.py [--model M]
Takes about 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from convfocus.grading.infer import load_grader
from convfocus.grading.tiling import cut_windows
from convfocus.io.images import read_image, resize
from convfocus.synthesis.defocus import (
    add_poisson_noise,
    apply_blur,
    class_interval,
    jpeg_roundtrip,
    scale_density,
)
from convfocus.training.pool import MODEL_MPP, estimate_mpp, resample_to

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-oof"
IN_FOCUS = "tcga-focus-infocus-i32381-j37784.png"
OUT_OF_FOCUS = "tcga-focus-outfocus-i9651-j81514.png"
BANDS = ((0.02, 0.05), (0.05, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 0.3), (0.3, 0.5))
LADDER = (1.5, 2.0, 3.0, 5.0, 8.0)  # bokeh radii, px at 0.25 µm/px


def radius_class(r: float) -> int:
    """The class whose bokeh interval holds radius ``r`` (px at 0.25 µm/px)."""
    return next(c for c in range(1, 30) if class_interval(c)[1] >= r)


def grade(g, rgb: np.ndarray) -> tuple[float, float]:
    """(mean argmax class, mean expected class) over all windows."""
    p = g.predict_windows(cut_windows(rgb))
    return float(p.argmax(1).mean()), float((p * np.arange(p.shape[1])).sum(1).mean())


def deblock(rgb: np.ndarray) -> np.ndarray:
    """Smooth the two pixels either side of each 8x8 JPEG block edge (phase found from the
    image: the column/row offset with the largest mean step)."""
    out = rgb.astype(np.float32)
    gray = out.mean(2)

    def phase(axis: int) -> int:
        d = np.abs(np.diff(gray, axis=axis)).mean(1 - axis)
        idx = np.arange(len(d))
        return int(np.argmax([d[idx % 8 == o].mean() for o in range(8)]))

    px, py = phase(1), phase(0)
    sx, sy = cv2.blur(out, (4, 1)), cv2.blur(out, (1, 4))
    cols = [c for c in range(out.shape[1]) if (c - px) % 8 in (6, 7, 0, 1)]
    rows = [r for r in range(out.shape[0]) if (r - py) % 8 in (6, 7, 0, 1)]
    out[:, cols] = sx[:, cols]
    out[rows] = sy[rows]
    return np.clip(out, 0, 255).round().astype(np.uint8)


def spectrum(rgb: np.ndarray) -> np.ndarray:
    """log10 mean power per band of the contrast-normalised luma, Hann-windowed."""
    y = rgb.astype(np.float32).mean(2)
    y = (y - y.mean()) / y.mean()
    win = np.hanning(y.shape[0])[:, None] * np.hanning(y.shape[1])[None]
    p = np.abs(np.fft.fftshift(np.fft.fft2(y * win))) ** 2
    yy, xx = np.indices(p.shape)
    r = np.hypot(yy - p.shape[0] / 2, xx - p.shape[1] / 2) / p.shape[1]
    return np.array([np.log10(p[(r >= lo) & (r < hi)].mean()) for lo, hi in BANDS])


def ladder_image(sharp: np.ndarray, r: float, rng: np.random.Generator, veil: float = 1.0,
                 residual: np.ndarray | None = None, quality: int = 30) -> np.ndarray:
    x = apply_blur(sharp, "bokeh", r).astype(np.float32)
    if veil != 1.0:
        mu = x.mean((0, 1))
        x = (x - mu) * veil + mu
    if residual is not None:
        x = x + residual[: x.shape[0], : x.shape[1]]
    x = np.clip(add_poisson_noise(np.clip(x / 255, 0, 1), 0.3 / 255, rng), 0, 1)
    return jpeg_roundtrip((x * 255 + 0.5).astype(np.uint8), quality)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or file (default: shipped)")
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA}: not found (needs ../shared/data)", file=sys.stderr)
        return 2
    g = load_grader(a.model)
    inf, oof = read_image(DATA / IN_FOCUS), read_image(DATA / OUT_OF_FOCUS)
    rng = np.random.default_rng(0)

    print("1. scale (mean argmax class / mean expected class)")
    print(f"{'factor':>14} {'in focus':>14} {'out of focus':>14}")
    for f in (0.5, 1.0, 1.44, 2.0):
        a_, b_ = grade(g, resize(inf, scale=f)), grade(g, resize(oof, scale=f))
        print(f"{f:>14g} {a_[0]:6.2f} /{a_[1]:5.2f} {b_[0]:6.2f} /{b_[1]:5.2f}")
    mi, mo = estimate_mpp(inf), estimate_mpp(oof)
    if mi and mo:
        a_ = grade(g, resample_to(inf, mi, MODEL_MPP))
        b_ = grade(g, resample_to(oof, mo, MODEL_MPP))
        print(f"{'nuclear mpp':>14} {mi:.2f}: {a_[0]:5.2f}   {mo:.2f}: {b_[0]:5.2f}"
              f"   (difference {b_[0] - a_[0]:.2f}; the check needs 8)")

    print("\n2. JPEG blocking (out-of-focus patch)")
    print(f"   as stored {grade(g, oof)[0]:.2f}, block edges smoothed {grade(g, deblock(oof))[0]:.2f}")

    dark = scale_density(inf, 3.5)
    fine = oof.astype(np.float32) - cv2.fastNlMeansDenoisingColored(oof, None, 3, 3, 7, 21)
    print(f"\n3-4. matched ladder: in-focus patch at luma {dark.mean():.0f} "
          f"(out-of-focus patch {oof.mean():.0f}), noise, JPEG 30")
    print(f"{'radius px':>10} {'class':>6} {'graded':>7} {'JPEG 80':>8} {'veil 0.5':>9} "
          f"{'+residual':>10}")
    spectra = {}
    for r in LADDER:
        img = ladder_image(dark, r, rng)
        spectra[r] = spectrum(img)
        print(f"{r:>10g} {radius_class(r):>6d} {grade(g, img)[0]:>7.2f} "
              f"{grade(g, ladder_image(dark, r, rng, quality=80))[0]:>8.2f} "
              f"{grade(g, ladder_image(dark, r, rng, veil=0.5))[0]:>9.2f} "
              f"{grade(g, ladder_image(dark, r, rng, residual=fine))[0]:>10.2f}")

    print("\n5. spectral fall-off: log10 power of each band minus the 0.02-0.05 band")
    print(f"{'':>18}" + "".join(f"{f'{lo}-{hi}':>10}" for lo, hi in BANDS[1:]))

    def row(name: str, s: np.ndarray) -> None:
        print(f"{name:>18}" + "".join(f"{v:>10.2f}" for v in (s[1:] - s[0])))

    s_oof = spectrum(oof)
    row("out of focus", s_oof)
    row("in focus", spectrum(inf))
    for r, s in spectra.items():
        row(f"ladder r={r:g}", s)
    best = min(spectra, key=lambda r: float(np.abs((spectra[r] - spectra[r][0])[1:5]
                                                   - (s_oof - s_oof[0])[1:5]).sum()))
    print(f"   nearest ladder radius over 0.05-0.3 cycles/px: {best:g} px "
          f"(class {radius_class(best)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
