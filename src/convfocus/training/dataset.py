"""Semi-synthetic examples (numpy, no torch): augmentation, one example, the validation set.

Each example is a crop of an in-focus pool patch, blurred to a class (0..29) with the
synthesis settings (:mod:`convfocus.synthesis.defocus`), then optionally augmented
(dihedral orientation, brightness, contrast, hue, saturation). The training stream
(:mod:`convfocus.training.train`) draws them endlessly; :func:`validation_set` draws a
fixed set that ``convfocus check-model`` scores as well.

References: Kohlberger et al. 2019 (ConvFocus); Liu et al. 2017 (LYNA augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from convfocus import NUM_CLASSES
from convfocus.synthesis.defocus import SynthesisConfig, sample_synthesis, synthesize

#: Side of one example (px): the model's window.
WINDOW = 139


@dataclass(frozen=True)
class Augment:
    """Colour and orientation augmentation; defaults are the LYNA maximum deltas.

    References: Liu et al., "Detecting cancer metastases on gigapixel pathology
    images", 2017 (brightness 64/255, saturation 0.25, hue 0.04, contrast 0.75).
    """

    brightness: float = 64.0 / 255.0
    saturation: float = 0.25
    hue: float = 0.04
    contrast: float = 0.75
    dihedral: bool = True


# --- augmentation ------------------------------------------------------------------------------


def augment(rgb: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Random dihedral orientation, then brightness, saturation, hue, contrast (uint8 in/out)."""
    x = rgb
    if aug.dihedral:
        k = int(rng.integers(0, 4))
        x = np.rot90(x, k)
        if rng.random() < 0.5:
            x = x[:, ::-1]
    f = np.ascontiguousarray(x, dtype=np.float32) * np.float32(1 / 255)
    if aug.brightness > 0:
        f += np.float32(rng.uniform(-aug.brightness, aug.brightness))
    if aug.saturation > 0 or aug.hue > 0:
        hsv = cv2.cvtColor(np.clip(f, 0, 1), cv2.COLOR_RGB2HSV)  # H in degrees
        if aug.hue > 0:
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-aug.hue, aug.hue) * 360.0) % 360.0
        if aug.saturation > 0:
            hsv[..., 1] *= np.float32(1 + rng.uniform(-aug.saturation, aug.saturation))
            np.clip(hsv[..., 1], 0, 1, out=hsv[..., 1])
        f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if aug.contrast > 0:
        m = f.mean(axis=(0, 1), keepdims=True)
        f = (f - m) * np.float32(1 + rng.uniform(-aug.contrast, aug.contrast)) + m
    return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_example(
    patches: np.ndarray,
    rng: np.random.Generator,
    synth: SynthesisConfig,
    aug: Augment | None,
    cls: int | None = None,
    index: int | None = None,
    size: int = WINDOW,
) -> tuple[np.ndarray, int, float]:
    """One training example: (``size`` px uint8 RGB, class, blur parameter)."""
    c = int(rng.integers(0, NUM_CLASSES)) if cls is None else cls
    i = int(rng.integers(0, len(patches))) if index is None else index
    p = patches[i]
    params = sample_synthesis(c, rng, synth)
    lim = p.shape[0] - size
    x, y = int(rng.integers(0, lim + 1)), int(rng.integers(0, lim + 1))
    over = None
    if params.fold_weight > 0:
        over = np.rot90(patches[int(rng.integers(0, len(patches)))], int(rng.integers(0, 4)))
    out = synthesize(p, params, config=synth, crop=(x, y, size), overlay=over)
    if aug is not None:
        out = augment(out, rng, aug)
    return out, c, params.blur


# --- validation --------------------------------------------------------------------------------


def validation_set(
    patches: np.ndarray, synth: SynthesisConfig, *, per_class: int = 40, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed synthetic validation set: ``per_class`` examples of every class, no colour
    augmentation, from held-out source images."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(NUM_CLASSES):
        for k in range(per_class):
            img, _, _ = make_example(patches, rng, synth, None, cls=c, index=k % len(patches))
            xs.append(img)
            ys.append(c)
    return np.stack(xs), np.asarray(ys)
