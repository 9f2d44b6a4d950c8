"""A toy "detector" for ``convfocus evaluate detector`` (demonstration only).

It is NOT a cancer detector. It scores each RGB window by the share of pixels
with DAB (brown) detail at several scales, which is what the example labels of
:mod:`convfocus.evaluation.detector_data` reward; blur removes that detail, so its
AUC falls with defocus, like a real detector's would. Use it to see the two
detector experiments run; plug in a real model with ``--detector module:function``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed


def dab_density(windows: np.ndarray) -> np.ndarray:
    """DAB optical density of RGB uint8 windows ``(n, h, w, 3)`` -> ``(n, h, w)``."""
    return rgb2hed(np.asarray(windows))[..., 2].astype(np.float32)


def score_windows(
    windows: np.ndarray,
    *,
    scales_px: tuple[int, ...] = (5, 9, 17, 33, 65),
    threshold: float = 0.02,
) -> np.ndarray:
    """Score a batch of RGB uint8 windows ``(n, h, w, 3)``: one float per window.

    For each scale, the share of pixels whose DAB density exceeds its local mean
    (a box of that many pixels) by more than ``threshold``; the score is the mean
    over scales, so detail is lost gradually as blur grows past each scale.
    """
    batch = np.asarray(windows)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected (n, h, w, 3) RGB windows, got shape {batch.shape}")
    if batch.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    dab = dab_density(batch)
    shares = [
        ((dab - ndimage.uniform_filter(dab, size=(1, s, s), mode="reflect")) > threshold).mean(
            axis=(1, 2)
        )
        for s in scales_px
    ]
    return np.mean(shares, axis=0).astype(np.float64)
