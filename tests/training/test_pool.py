"""The in-focus patch pool: cutting, resampling, splitting by source, building and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convfocus.errors import ConfigError
from convfocus.grading.tissue import tissue_mask
from convfocus.io.images import read_image, write_png
from convfocus.training.pool import (
    PATCH_PX,
    build_pool,
    cut_patches,
    load_pool,
    read_manifest,
    resample_to,
)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    from skimage import data

    return data.immunohistochemistry()


def test_cut_patches_on_real_tissue(ihc: np.ndarray) -> None:
    cands = cut_patches(ihc, stride_px=100, min_tissue=0.6)
    assert cands
    mask = tissue_mask(ihc)
    for x, y, frac, mean_y in cands:
        assert 0 <= x <= ihc.shape[1] - PATCH_PX and 0 <= y <= ihc.shape[0] - PATCH_PX
        assert x % 100 == 0 and y % 100 == 0
        assert frac >= 0.6
        assert frac == pytest.approx(mask[y : y + PATCH_PX, x : x + PATCH_PX].mean())
        assert 0 < mean_y <= 1


def test_cut_patches_nothing_on_glass_or_small_images(ihc: np.ndarray) -> None:
    assert cut_patches(np.full((600, 600, 3), 245, np.uint8)) == []
    assert cut_patches(ihc[:299, :512]) == []


def test_resample_to() -> None:
    img = np.zeros((100, 60, 3), np.uint8)
    assert resample_to(img, 0.5, 0.25).shape == (200, 120, 3)
    assert resample_to(img, 0.25, 0.5).shape == (50, 30, 3)
    assert resample_to(img, 0.25, 0.25) is img
    flat = np.full((40, 40, 3), 120, np.uint8)
    assert np.array_equal(resample_to(flat, 0.3, 0.25), np.full((48, 48, 3), 120, np.uint8))


@pytest.fixture()
def small_sources(tmp_path: Path, ihc: np.ndarray) -> list[Path]:
    """Three small images of real tissue (640 x 512) and one downsampled-view name."""
    paths = []
    wide = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    for i, name in enumerate(("a-level0.png", "b-level0.png", "c-level0.png",
                              "d-level1.png")):
        paths.append(write_png(tmp_path / "src" / name, wide[:, 40 * i : 40 * i + 640]))
    return paths


def test_build_pool_splits_by_source(tmp_path: Path, small_sources: list[Path]) -> None:
    out = tmp_path / "pool"
    overrides = {p.name: 0.25 for p in small_sources}
    entries = build_pool(small_sources, out, mpp_overrides=overrides,
                         validation=("b-level0.png",), stride_px=100, include_skimage_ihc=False)
    sources = {e.source for e in entries}
    assert sources == {"a-level0.png", "b-level0.png", "c-level0.png"}  # level1 left out
    split_of: dict[str, set[str]] = {}
    for e in entries:
        split_of.setdefault(e.source, set()).add(e.split)
    assert split_of == {"a-level0.png": {"train"}, "b-level0.png": {"val"},
                        "c-level0.png": {"train"}}
    rows = read_manifest(out)
    assert len(rows) == len(entries)
    train, train_rows = load_pool(out, "train")
    val, val_rows = load_pool(out, "val")
    assert train.shape[1:] == (PATCH_PX, PATCH_PX, 3) and train.dtype == np.uint8
    assert len(train) + len(val) == len(entries)
    assert {r["source"] for r in train_rows}.isdisjoint({r["source"] for r in val_rows})
    # each patch is exactly the source's pixels at its recorded position (mpp 0.25: no resampling)
    e = entries[0]
    src = read_image(tmp_path / "src" / e.source)
    assert np.array_equal(read_image(out / e.patch),
                          src[e.y_px : e.y_px + PATCH_PX, e.x_px : e.x_px + PATCH_PX])


def test_build_pool_densest_and_resampling(tmp_path: Path, small_sources: list[Path]) -> None:
    out = tmp_path / "pool"
    entries = build_pool(small_sources[:1], out, mpp_overrides={"a-level0.png": 0.5},
                         validation=(), densest_k=2, stride_px=150,
                         include_skimage_ihc=False)
    assert len(entries) == 2
    assert all(e.scale == 2.0 and e.mpp == 0.5 for e in entries)
    assert [e.split for e in entries] == ["train", "train"]
    all_cands = cut_patches(resample_to(read_image(small_sources[0]), 0.5),
                            stride_px=150)
    lowest = sorted(c[3] for c in all_cands)[:2]
    assert sorted(e.mean_luma for e in entries) == pytest.approx(lowest, abs=1e-4)


def test_pool_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_manifest(tmp_path)
    white = write_png(tmp_path / "white.png", np.full((400, 400, 3), 250, np.uint8))
    with pytest.raises(ConfigError):
        build_pool([white], tmp_path / "pool", mpp_overrides={"white.png": 0.25},
                   include_skimage_ihc=False)


def test_manifest_mpp_reads_the_leading_number(tmp_path):
    from convfocus.training.pool import manifest_mpp

    (tmp_path / "MANIFEST.csv").write_text(
        'file,mpp\nsub/a.png,"0.25 (40x, dataset)"\nb.png,unknown\nc.png,nan\n')
    assert manifest_mpp(tmp_path) == {"a.png": 0.25}
    assert manifest_mpp(tmp_path / "missing") == {}


def test_textureless_check_image_never_enters_the_pool(tmp_path, shared_data: Path):
    from convfocus.training.pool import CHECK_ONLY, build_pool

    data = shared_data / "infocus"
    src = data / "histolab-very-low-nuclei-score-level0.png"
    assert src.name in CHECK_ONLY
    keep = data / "histolab-tcga-lung-rgb.png"
    entries = build_pool([src, keep], tmp_path / "pool", include_skimage_ihc=False)
    assert {e.source for e in entries} == {keep.name}
