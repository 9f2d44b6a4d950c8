"""Example data for ``convfocus evaluate detector`` (demonstration only).

Windows are 139 px crops of ``skimage.data.immunohistochemistry()``, each
"slide" a differently rotated, flipped and tinted copy of that field. The label
("tumour" stand-in) is 1 where the sharp window has more DAB-positive area than
the median window: it is a property of the stain, not of any disease.

Two files are written:

``scores.csv``
    ``slide,x_px,y_px,score,label,oof_class``: every window blurred with bokeh of a
    random OOF class (mostly mild), scored by :func:`convfocus.evaluation.detector.
    score_windows`. ``oof_class`` is the class of the applied blur, standing in for
    the grader's prediction (experiment 1).
``windows.npz``
    ``images`` (n, 139, 139, 3) uint8 sharp windows, ``labels`` (n,), ``slides`` (n,)
    for experiment 2, which blurs them itself.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convfocus import NUM_CLASSES

WINDOW_PX = 139


@dataclass(frozen=True)
class DetectorExample:
    """Paths of the generated example files."""

    scores_csv: Path
    windows_npz: Path


def _slide_fields(n_slides: int, rng: np.random.Generator) -> list[np.ndarray]:
    from skimage.data import immunohistochemistry

    base = immunohistochemistry()
    fields = []
    for _ in range(n_slides):
        img = np.rot90(base, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        tint = rng.uniform(0.92, 1.05, size=3)
        fields.append(np.clip(img.astype(np.float32) * tint, 0, 255).astype(np.uint8))
    return fields


def _oof_class(rng: np.random.Generator) -> int:
    """Mostly mild defocus, as on real slides: P(c) proportional to exp(-c / 10)."""
    p = np.exp(-np.arange(NUM_CLASSES) / 10.0)
    return int(rng.choice(NUM_CLASSES, p=p / p.sum()))


def make_detector_example(
    out_dir: str | Path,
    *,
    n_slides: int = 8,
    windows_per_slide: int = 60,
    blur_windows_per_slide: int = 12,
    seed: int = 0,
) -> DetectorExample:
    """Generate the example ``scores.csv`` and ``windows.npz`` into ``out_dir``.

    ``blur_windows_per_slide`` windows of each slide go to ``windows.npz`` (experiment
    2 blurs each of them at every class, so it is kept small).
    """
    from convfocus.evaluation.detector import dab_density, score_windows
    from convfocus.io.atomic import write_bytes_atomic
    from convfocus.synthesis.defocus import apply_blur, sample_blur_param

    if not 0 < blur_windows_per_slide <= windows_per_slide:
        raise ValueError("blur_windows_per_slide must be in 1..windows_per_slide")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fields = _slide_fields(n_slides, rng)
    crops, slides, xy = [], [], []
    for k, field_rgb in enumerate(fields):
        h, w = field_rgb.shape[:2]
        for _ in range(windows_per_slide):
            x = int(rng.integers(0, w - WINDOW_PX + 1))
            y = int(rng.integers(0, h - WINDOW_PX + 1))
            crops.append(field_rgb[y : y + WINDOW_PX, x : x + WINDOW_PX])
            slides.append(f"example-{k + 1:02d}")
            xy.append((x, y))
    images = np.stack(crops)
    positive_area = (dab_density(images) > 0.12).mean(axis=(1, 2))
    labels = (positive_area > np.median(positive_area)).astype(np.int64)

    classes = np.array([_oof_class(rng) for _ in range(len(images))])
    blurred = np.stack([apply_blur(img, "bokeh", sample_blur_param(int(c), rng))
                        for img, c in zip(images, classes)])
    scores = score_windows(blurred)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["slide", "x_px", "y_px", "score", "label", "oof_class"])
    writer.writerows([s, x, y, f"{v:.6f}", lab, c]
                     for s, (x, y), v, lab, c in zip(slides, xy, scores, labels, classes))
    scores_csv = out / "scores.csv"
    write_bytes_atomic(scores_csv, text.getvalue().encode())

    keep = np.concatenate(
        [np.arange(k * windows_per_slide, k * windows_per_slide + blur_windows_per_slide)
         for k in range(n_slides)]
    )
    buf = io.BytesIO()
    np.savez_compressed(
        buf, images=images[keep], labels=labels[keep], slides=np.asarray(slides)[keep]
    )
    windows_npz = out / "windows.npz"
    write_bytes_atomic(windows_npz, buf.getvalue())
    return DetectorExample(scores_csv, windows_npz)
