"""The demo slide: real tissue with known out-of-focus regions, scanned end to end.

The tissue is scikit-image's immunohistochemistry image (real, always installed),
brought to 0.25 µm/px and tiled with flips and colour jitter into a pyramidal JPEG
TIFF with glass around it. Two regions are blurred with the bokeh kernel: a strong
vertical scan-lane stripe and a mildly blurred square; the rest stays sharp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import MODEL_MPP
from convfocus.io.images import resize
from convfocus.synthesis.defocus import apply_blur, class_centre_px

#: Pixel size of scikit-image's IHC image, estimated from nuclear size (see pool.KNOWN_MPP).
IHC_MPP = 0.35


@dataclass(frozen=True)
class DemoTruth:
    """Where the demo slide is blurred (level-0 pixels) and how strongly (class, radius)."""

    width: int
    height: int
    tissue_box: tuple[int, int, int, int]  # x0, y0, x1, y1
    stripe_box: tuple[int, int, int, int]
    stripe_class: int
    stripe_radius_px: float
    patch_box: tuple[int, int, int, int]
    patch_class: int
    patch_radius_px: float

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def make_demo_tissue(
    width: int = 4608, height: int = 3328, *, margin: int = 256, seed: int = 7
) -> np.ndarray:
    """Real IHC tissue tiled with flips and colour jitter on white glass (RGB uint8)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    ihc = data.immunohistochemistry()
    f = IHC_MPP / MODEL_MPP
    base = resize(ihc, scale=f)
    th, tw = base.shape[:2]
    canvas = np.full((height, width, 3), 245, np.uint8)
    inner = canvas[margin : height - margin, margin : width - margin]
    for y in range(0, inner.shape[0], th):
        for x in range(0, inner.shape[1], tw):
            t = base
            if rng.random() < 0.5:
                t = t[:, ::-1]
            if rng.random() < 0.5:
                t = t[::-1]
            jit = t.astype(np.float32) * rng.uniform(0.92, 1.06, 3) + rng.uniform(-8, 8, 3)
            t = np.clip(jit, 0, 255).astype(np.uint8)
            h_ = min(th, inner.shape[0] - y)
            w_ = min(tw, inner.shape[1] - x)
            inner[y : y + h_, x : x + w_] = t[:h_, :w_]
    return canvas


def make_demo_slide(
    path: Path,
    *,
    width: int = 4608,
    height: int = 3328,
    stripe_class: int = 22,
    patch_class: int = 9,
    seed: int = 7,
) -> DemoTruth:
    """Write the demo slide (pyramidal JPEG TIFF at 0.25 µm/px) and return its truth."""
    from convfocus.io.images import write_pyramidal_tiff

    margin = 256
    rgb = make_demo_tissue(width, height, margin=margin, seed=seed)
    # a scan lane: a full-height vertical band, 4 windows wide, strongly out of focus
    sx0 = (width // 2 // 128) * 128
    stripe = (sx0, margin, sx0 + 512, height - margin)
    # a mildly blurred square in the upper right
    px0, py0 = width - margin - 1280, margin + 384
    patch = (px0, py0, px0 + 768, py0 + 768)
    r_stripe, r_patch = class_centre_px(stripe_class), class_centre_px(patch_class)
    for (x0, y0, x1, y1), r in ((stripe, r_stripe), (patch, r_patch)):
        m = int(np.ceil(r)) + 2
        ctx = rgb[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m]
        blurred = apply_blur(ctx, "bokeh", r)
        oy, ox = y0 - max(0, y0 - m), x0 - max(0, x0 - m)
        rgb[y0:y1, x0:x1] = blurred[oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
    write_pyramidal_tiff(path, rgb, mpp=MODEL_MPP, tile=256, quality=85)
    return DemoTruth(width, height, (margin, margin, width - margin, height - margin), stripe,
                     stripe_class, r_stripe, patch, patch_class, r_patch)


def run_demo(out: Path, *, grader: object | None = None, profile: str = "histology") -> Path:
    """Build the demo slide in ``out``, scan it, and return the path of its report."""
    from convfocus.grading.scan import scan_path
    from convfocus.io.atomic import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    slide = out / "demo-slide.tif"
    truth = make_demo_slide(slide)
    write_json_atomic(out / "demo-truth.json", truth.to_dict())
    folder = scan_path(slide, out, profile=profile, grader=grader)
    return folder / "report.html"


def truth_from_file(path: Path) -> DemoTruth:
    d = json.loads(path.read_text())
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return DemoTruth(**kw)
