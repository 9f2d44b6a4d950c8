"""Patches for raters: random tissue patches at 40x, the densest K per slide."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from convfocus.cli import main
from convfocus.errors import NoTissueError, OutputError, PixelSizeError
from convfocus.io.formats import find_slides
from convfocus.io.images import read_image, write_image, write_pyramidal_tiff
from convfocus.io.readers import open_slide
from convfocus.training.sampling import (
    MANIFEST_FIELDS,
    candidate_positions,
    mean_luma,
    read_manifest,
    sample_patches,
    select_densest,
)

W, H = 2400, 1600
DENSE = (1500, 300, 2300, 1300)  # x0, y0, x1, y1 of the dark (dense) tissue block


def _two_density_rgb() -> np.ndarray:
    """White glass; light tissue on the left, a darker block of dense tissue on the right."""
    rng = np.random.default_rng(7)
    img = np.full((H, W, 3), 246, np.uint8)
    noise = rng.integers(-12, 13, (H, W, 1))
    light = np.clip(np.array([225, 175, 210]) + noise, 0, 255)
    dense = np.clip(np.array([125, 60, 145]) + noise, 0, 255)
    img[200:1400, 200:1300] = light[200:1400, 200:1300]
    x0, y0, x1, y1 = DENSE
    img[y0:y1, x0:x1] = dense[y0:y1, x0:x1]
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sampling-slides")
    rgb = _two_density_rgb()
    out = {"tif": write_pyramidal_tiff(root / "two-density.tif", rgb, mpp=0.25)}
    blank = np.full((1200, 1200, 3), 250, np.uint8)
    out["blank"] = write_pyramidal_tiff(root / "blank.tif", blank, mpp=0.25)
    half = rgb[::2, ::2].copy()  # the same tissue at 0.5 µm/px, as a plain PNG (no pixel size)
    out["png"] = write_image(root / "half.png", half)
    return out


def test_keeps_k_densest_patches_per_slide(slides: dict[str, Path], tmp_path: Path) -> None:
    records, skipped = sample_patches([slides["tif"]], tmp_path / "s", k=2, n_candidates=120)
    assert skipped == []
    assert len(records) == 2
    x0, y0, x1, y1 = DENSE
    for r in records:  # the two densest fit side by side on the dark block
        assert x0 <= r.x_px and r.x_px + 300 <= x1 and y0 <= r.y_px and r.y_px + 300 <= y1
        assert r.mpp == 0.25
    assert [r.mean_luma for r in records] == sorted(r.mean_luma for r in records)


def test_manifest_and_pngs(slides: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    records, _ = sample_patches([slides["tif"]], out, k=5, n_candidates=80, seed=3)
    with (out / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == MANIFEST_FIELDS
    assert [r["patch"] for r in rows] == [r.patch for r in records]
    assert read_manifest(out) == records
    with open_slide(slides["tif"]) as slide:
        for r in records:
            png = read_image(out / r.patch)
            assert png.shape == (300, 300, 3) and png.dtype == np.uint8
            assert mean_luma(png) == pytest.approx(r.mean_luma, abs=1e-5)
            region = slide.read_region((r.x_px, r.y_px), 0, (300, 300))
            assert np.array_equal(png, region)  # 40x source: the level-0 pixels themselves
    # no two kept patches overlap
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            assert abs(a.x_px - b.x_px) >= 300 or abs(a.y_px - b.y_px) >= 300


def test_coarser_slide_is_resampled_to_40x(slides: dict[str, Path], tmp_path: Path) -> None:
    records, _ = sample_patches([slides["png"]], tmp_path / "s", k=2, n_candidates=60,
                                mpp=0.5)
    for r in records:
        png = read_image(tmp_path / "s" / r.patch)
        assert png.shape == (300, 300, 3)  # 150 source px brought to 0.25 µm/px
        assert r.mpp == 0.25
        assert r.x_px + 150 <= W // 2 and r.y_px + 150 <= H // 2


def test_seeded(slides: dict[str, Path], tmp_path: Path) -> None:
    a, _ = sample_patches([slides["tif"]], tmp_path / "a", k=4, n_candidates=40, seed=1)
    b, _ = sample_patches([slides["tif"]], tmp_path / "b", k=4, n_candidates=40, seed=1)
    c, _ = sample_patches([slides["tif"]], tmp_path / "c", k=4, n_candidates=40, seed=2)
    assert a == b
    assert a != c


def test_blank_slide_is_skipped_or_raises(slides: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NoTissueError):
        sample_patches([slides["blank"]], tmp_path / "a", k=2, n_candidates=10)
    records, skipped = sample_patches([slides["blank"], slides["tif"]], tmp_path / "b", k=2,
                                      n_candidates=20)
    assert len(records) == 2
    assert [s[0] for s in skipped] == [str(slides["blank"])]


def test_implausible_pixel_size_refused(slides: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PixelSizeError):
        sample_patches([slides["png"]], tmp_path / "s", k=2, n_candidates=10, mpp=100.0)


def test_existing_manifest_refused(slides: dict[str, Path], tmp_path: Path) -> None:
    sample_patches([slides["tif"]], tmp_path / "s", k=1, n_candidates=10)
    with pytest.raises(OutputError):
        sample_patches([slides["tif"]], tmp_path / "s", k=1, n_candidates=10)


def test_candidates_lie_on_tissue() -> None:
    mask = np.zeros((100, 150), bool)
    mask[20:60, 90:140] = True
    pos = candidate_positions(mask, (3000, 2000), 300, 50, np.random.default_rng(0),
                              min_tissue=0.9)
    assert len(pos) == 50
    for x, y in pos:  # thumbnail px are 20 level-0 px: tissue is x 1800..2800, y 400..1200
        on_x = min(x + 300, 2800) - max(x, 1800)
        on_y = min(y + 300, 1200) - max(y, 400)
        assert on_x * on_y >= 0.9 * 300 * 300  # at least 90 % of the patch on tissue
    assert candidate_positions(np.zeros((10, 10), bool), (1000, 1000), 300, 5,
                               np.random.default_rng(0)) == []


def test_select_densest_skips_overlaps() -> None:
    cands = [((0, 0), 0.1), ((100, 0), 0.2), ((400, 0), 0.3), ((800, 0), 0.05)]
    assert select_densest(cands, 3, 300) == [3, 0, 2]
    assert select_densest(cands, 3, 300, allow_overlap=True) == [3, 0, 1]


def test_find_slides_expands_folders(slides: dict[str, Path]) -> None:
    folder = slides["tif"].parent
    found = find_slides([folder], recursive=False)  # as `convfocus sample` looks
    assert set(found) == {slides["tif"], slides["blank"], slides["png"]}


def test_cli_sample(slides: dict[str, Path], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", str(slides["tif"]), "--out", str(tmp_path / "s"), "-k", "3",
                 "--candidates", "30"]) == 0
    assert "3 patches from 1 slides" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "s")) == 3
    assert main(["sample", str(slides["blank"]), "--out", str(tmp_path / "t")]) == 2
    assert "no" in capsys.readouterr().err
