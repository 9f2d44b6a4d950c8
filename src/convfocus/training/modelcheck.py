"""Checks a trained grader must pass, on real tissue held out from training.

- blur response: the mean class of held-out tissue rises with synthetic bokeh blur
  at every step;
- orientation: flips and 90° rotations change the mean class by at most ±1;
- real defocus: the TCGA@Focus out-of-focus patch grades at least 8 classes above
  the in-focus one;
- texture is not blur: a sharp, nearly textureless image keeps a mean class <= 5;
- magnification sensitivity: the mean class of sharp held-out tissue rescaled
  x0.5, x1 and x2 (one factor of 2 in pixel size should move a physical-blur
  grader by several classes; this reports how much).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from convfocus.grading.tiling import tissue_windows
from convfocus.io.images import resize
from convfocus.synthesis.defocus import apply_blur, class_centre_px

#: Classes whose interval-centre bokeh radius is applied in the blur-response check.
BLUR_STEPS = (0, 4, 8, 12, 16, 20, 24, 28)


def mean_class(grader: Any, windows: np.ndarray) -> float:
    """Mean argmax class of windows (NaN when there are none)."""
    if len(windows) == 0:
        return float("nan")
    return float(grader.predict_windows(windows).argmax(1).mean())


def blur_response(grader: Any, rgb: np.ndarray, steps: tuple[int, ...] = BLUR_STEPS) -> dict:
    """Mean predicted class of the image blurred to each class's centre radius."""
    means = []
    for c in steps:
        blurred = apply_blur(rgb, "bokeh", class_centre_px(c))
        means.append(mean_class(grader, tissue_windows(blurred)))
    mono = all(b > a for a, b in pairwise(means))
    return {"classes": list(steps), "mean_pred": [round(m, 2) for m in means],
            "monotonic": mono}


def orientation(grader: Any, rgb: np.ndarray) -> dict:
    """Mean class under the 8 dihedral orientations; max deviation from the original."""
    means = []
    for k in range(4):
        r = np.ascontiguousarray(np.rot90(rgb, k))
        means.append(mean_class(grader, tissue_windows(r)))
        means.append(mean_class(grader, tissue_windows(np.ascontiguousarray(r[:, ::-1]))))
    dev = max(abs(m - means[0]) for m in means)
    return {"mean_pred": [round(m, 2) for m in means], "max_deviation": round(dev, 2)}


def magnification(grader: Any, rgb: np.ndarray, factors=(0.5, 1.0, 2.0)) -> dict:
    """Mean class of sharp tissue rescaled by each factor (x2 = pixels twice as small)."""
    return {f"x{f:g}": round(mean_class(grader, tissue_windows(resize(rgb, scale=f))), 2)
            for f in factors}


def synthetic_validation(grader: Any, pool: Path, *, per_class: int = 40, seed: int = 1234) -> dict:
    """Accuracy on a fixed synthetic set from the pool's validation sources (default
    synthesis settings), so that different models are compared on the same examples."""
    from convfocus.metrics import classification_metrics
    from convfocus.synthesis.defocus import SynthesisConfig
    from convfocus.training.dataset import validation_set
    from convfocus.training.pool import load_pool

    val_x, _ = load_pool(pool, "val")
    xs, ys = validation_set(val_x, SynthesisConfig(), per_class=per_class, seed=seed)
    pred = grader.predict_windows(xs).argmax(1)
    return classification_metrics(ys, pred)


def run_checks(grader: Any, shared_data: Path | None = None) -> dict[str, Any]:
    """Every check, on scikit-image's IHC image (held out) and ../shared/data where present."""
    from skimage import data

    from convfocus.training.pool import KNOWN_MPP, resample_to

    ihc = resample_to(data.immunohistochemistry(), KNOWN_MPP["skimage-ihc.png"] or 0.25)
    res: dict[str, Any] = {
        "model": {"name": grader.spec.name, "version": grader.spec.version,
                  "arch": grader.spec.arch},
        "blur_response_ihc": blur_response(grader, ihc),
        "orientation_ihc": orientation(grader, ihc),
        "magnification_ihc": magnification(grader, ihc),
    }
    if shared_data is not None and shared_data.is_dir():
        from convfocus.io.images import read_image

        oof = shared_data / "real-oof"
        ins = sorted(oof.glob("*infocus*.png"))
        outs = sorted(oof.glob("*outfocus*.png"))
        if ins and outs:
            a = mean_class(grader, tissue_windows(read_image(ins[0])))
            b = mean_class(grader, tissue_windows(read_image(outs[0])))
            res["real_oof"] = {"in_focus": round(a, 2), "out_of_focus": round(b, 2),
                               "difference": round(b - a, 2), "pass": b - a >= 8}
        vl = shared_data / "infocus" / "histolab-very-low-nuclei-score-level0.png"
        if vl.is_file():
            raw = read_image(vl)
            m_raw = mean_class(grader, tissue_windows(raw))
            m = mean_class(grader, tissue_windows(resample_to(raw, KNOWN_MPP[vl.name] or 0.25)))
            res["textureless_sharp"] = {"mean_pred_at_0.25": round(m, 2),
                                        "mean_pred_as_stored": round(m_raw, 2),
                                        "pass": max(m, m_raw) <= 5}
        held = shared_data / "infocus" / "stardist-histo.jpg"
        if held.is_file():
            img = resample_to(read_image(held), 0.35)
            res["magnification_stardist"] = magnification(grader, img)
    return res
