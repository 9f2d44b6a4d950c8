"""Shared fixtures: a generated pyramidal slide from real tissue, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()

SLIDE_MPP = 0.25
"""Pixel size (µm/px) written into the generated slides."""


def make_tissue_rgb(width: int = 2048, height: int = 1536, margin: int = 256) -> np.ndarray:
    """White canvas with mirrored tiles of ``skimage.data.immunohistochemistry()`` inside.

    Tissue fills the canvas except a white margin of ``margin`` px on every side.
    """
    from skimage import data

    ihc = data.immunohistochemistry()  # (512, 512, 3) uint8
    th, tw = ihc.shape[:2]
    inner_h, inner_w = height - 2 * margin, width - 2 * margin
    rows = [
        np.hstack(
            [ihc[:: -1 if r % 2 else 1, :: -1 if c % 2 else 1] for c in range(-(-inner_w // tw))]
        )
        for r in range(-(-inner_h // th))
    ]
    tissue = np.vstack(rows)[:inner_h, :inner_w]
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    canvas[margin : margin + inner_h, margin : margin + inner_w] = tissue
    return canvas


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not present: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tissue_rgb() -> np.ndarray:
    """Level-0 pixels of the generated slides: 2048 x 1536 RGB, tissue inside a white margin."""
    arr = make_tissue_rgb()
    arr.setflags(write=False)
    return arr


@pytest.fixture(scope="session")
def pyramid_tiff(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """Pyramidal tiled JPEG TIFF (SubIFDs, 256 px tiles, q80) of ``tissue_rgb`` at 0.25 µm/px."""
    from convfocus.io.images import write_pyramidal_tiff

    path = tmp_path_factory.mktemp("slides") / "ihc-pyramid.tif"
    return write_pyramidal_tiff(path, tissue_rgb, mpp=SLIDE_MPP)


@pytest.fixture(scope="session")
def aperio_tiff(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> Path:
    """The same slide in the Aperio SVS layout (thumbnail page, ``MPP`` in the description)."""
    from convfocus.io.images import write_pyramidal_tiff

    path = tmp_path_factory.mktemp("slides") / "ihc-aperio.svs"
    return write_pyramidal_tiff(path, tissue_rgb, mpp=SLIDE_MPP, aperio=True)


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained ``lite`` network (seed 0, eval mode) saved with its spec and ONNX graph.

    For pipeline tests only: its classes mean nothing. The classifier's weights are scaled up
    so that probabilities differ between windows by more than the float16 / 4-decimal
    rounding of the outputs (an untrained head gives nearly uniform probabilities). Returns
    the model's path without suffix (``.../m``), which ``model=`` / ``--model`` accept.
    """
    import torch

    from convfocus.training.checkpoint import save_model
    from convfocus.training.model import build_model
    from convfocus.types import ModelSpec

    torch.manual_seed(0)
    net = build_model("lite").eval()
    with torch.no_grad():
        net.fc.weight.mul_(30.0)
        net.fc.bias.mul_(30.0)
    base = tmp_path_factory.mktemp("model") / "m"
    save_model(base, net, ModelSpec(name="fixture", version="0", arch="lite"))
    return base
