"""Fixtures shared by the web tests: patch folders, fake scan outputs, HTTP, a browser."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convfocus import NUM_CLASSES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def tissue_image(h: int, w: int, seed: int = 0, *, darkness: float = 0.5) -> np.ndarray:
    """H&E-like RGB uint8 texture (pink stroma with purple 'nuclei'); darker with darkness."""
    import cv2

    rng = np.random.default_rng(seed)
    base = np.array([235, 170, 205], np.float32) * (1 - 0.45 * darkness)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    n = max(1, int(h * w / 900 * (0.3 + darkness)))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    nuclei = np.zeros((h, w), np.float32)
    for y, x, r in zip(ys, xs, rng.integers(3, 7, n)):
        cv2.circle(nuclei, (int(x), int(y)), int(r), 1.0, -1)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 0.8)
    purple = np.array([90, 40, 130], np.float32)
    img = img * (1 - nuclei[..., None]) + purple * nuclei[..., None]
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def ihc_texture(h: int, w: int) -> np.ndarray:
    """Real tissue: ``skimage.data.immunohistochemistry()`` mirrored to fill (h, w)."""
    from skimage import data

    ihc = data.immunohistochemistry()
    reps = (-(-h // ihc.shape[0]), -(-w // ihc.shape[1]))
    rows = [np.hstack([ihc[:: -1 if r % 2 else 1, :: -1 if c % 2 else 1]
                       for c in range(reps[1])]) for r in range(reps[0])]
    return np.ascontiguousarray(np.vstack(rows)[:h, :w])


def make_patch_folder(folder: Path, n: int = 3, size: int = 300) -> list[str]:
    """A folder as `convfocus sample` writes it: patches/*.png + manifest.csv."""
    from convfocus.io.images import write_image
    from convfocus.training.sampling import PatchRecord, mean_luma, write_manifest

    (folder / "patches").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        rgb = tissue_image(size, size, seed=i, darkness=0.3 + 0.5 * (i % 3) / 2)
        rel = f"patches/slide{i % 2}_x{100 * i}_y{50 * i}.png"
        write_image(folder / rel, rgb)
        records.append(PatchRecord(rel, f"/data/slide{i % 2}.svs", 100 * i, 50 * i, 0.25,
                                   round(mean_luma(rgb), 6)))
    write_manifest(folder / "manifest.csv", records)
    return [r.patch for r in records]


def make_scan_folder(root: Path, name: str = "slide-a", *, width: int = 1500,
                     height: int = 1100, mpp: float = 0.25, with_slide: bool = True,
                     seed: int = 0) -> Path:
    """A scan output folder in the documented layout, with a pyramidal TIFF as the slide.

    Class map: tissue is a disc, sharp (classes 1..8 left to right) but for two OOF
    regions, class 25 at rows 2-3, cols 2-3 and class 14 at rows 4-5, cols 6-8.
    Probabilities peak at the cell's class.
    """
    from convfocus.grading.regions import oof_regions
    from convfocus.io.images import write_png, write_pyramidal_tiff
    from convfocus.types import GridGeometry

    folder = root / name
    folder.mkdir(parents=True)
    rgb = np.full((height, width, 3), 244, np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (xx - width / 2) ** 2 / (0.42 * width) ** 2 + (yy - height / 2) ** 2 / (
        0.42 * height) ** 2 < 1
    rgb[disc] = ihc_texture(height, width)[disc]
    slide = root / f"{name}.tif"
    write_pyramidal_tiff(slide, rgb, mpp=mpp, tile=256)

    stride, window = 128, 139
    rows, cols = (height - window) // stride + 1, (width - window) // stride + 1
    cm = np.full((rows, cols), -1, np.int16)
    for r in range(rows):
        for c in range(cols):
            cx, cy = c * stride + window / 2, r * stride + window / 2
            if disc[int(cy), int(cx)]:
                cm[r, c] = 1 + (7 * c) // max(1, cols - 1)  # sharp, 1..8 left to right
    tissue = cm >= 0
    cm[2:4, 2:4] = np.where(tissue[2:4, 2:4], 25, -1)  # severe region (left)
    cm[4:6, 6:9] = np.where(tissue[4:6, 6:9], 14, -1)  # mild region (right)
    probs = np.zeros((rows, cols, NUM_CLASSES), np.float16)
    for r in range(rows):
        for c in range(cols):
            k = max(int(cm[r, c]), 0)
            p = np.exp(-0.5 * (np.arange(NUM_CLASSES) - k) ** 2)
            probs[r, c] = p / p.sum()
    np.save(folder / "classmap.npy", cm)
    np.save(folder / "probs.npy", probs)
    grid = {"l0_origin_px": [0.0, 0.0], "l0_stride_px": float(stride),
            "l0_window_px": float(window), "rows": rows, "cols": cols}
    geo = oof_regions(cm, GridGeometry.from_dict(grid), mpp=mpp, l0_dimensions=(width, height))
    (folder / "oof_regions.geojson").write_text(json.dumps(geo))
    import cv2

    write_png(folder / "thumbnail.png", cv2.resize(rgb, (width // 8, height // 8),
                                                   interpolation=cv2.INTER_AREA))
    summary = {"input": str(slide) if with_slide else str(root / "gone.tif"),
               "dimensions": [width, height], "mpp": mpp, "grid": grid,
               "verdict": {"verdict": "review", "oof_share": 0.31},
               "tiles": int((cm >= 0).sum()), "mean_class": float(cm[cm >= 0].mean())}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def http(url: str, *, method: str = "GET", body: Any = None, headers: dict | None = None,
         raw: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    data = raw
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get_json(url: str, **kw: Any) -> tuple[int, Any]:
    status, _, body = http(url, **kw)
    return status, json.loads(body)


@contextlib.contextmanager
def serving(app: Any, **kw: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (ephemeral port) in a thread; yields the base URL.

    ``kw`` goes to ``start_in_thread`` (``request_timeout_s``).
    """
    from convfocus.web.server import start_in_thread

    server = start_in_thread(app, **kw)
    try:
        yield server.url.rstrip("/")
    finally:
        server.shutdown()
        server.server_close()


def browser_or_skip() -> Any:
    """A started Playwright + headless Chromium, or pytest.skip with the reason."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed (/usr/bin/chromium; Debian package 'chromium')")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     timeout=30_000)
    except Error as exc:  # a broken browser install is an environment problem
        pw.stop()
        pytest.skip(f"Chromium did not start: {str(exc).splitlines()[0]}")
    return pw, browser
