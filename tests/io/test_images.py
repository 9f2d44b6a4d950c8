"""Pixels and plain image files: one resampling rule, PNG / JPEG / TIFF round trips."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from convfocus.errors import SlideReadError, UnsupportedFormatError
from convfocus.io.images import read_image, resize, write_image, write_png

JPEG_TOLERANCE = 3.0  # mean absolute difference in 8-bit levels after one JPEG round trip


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- resize: the one rule ------------------------------------------------------------------------


def test_shrinking_averages_areas_and_growing_is_lanczos(tissue_rgb: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_rgb[:300, :400])
    small = resize(img, (200, 150))
    assert np.array_equal(small, cv2.resize(img, (200, 150), interpolation=cv2.INTER_AREA))
    big = resize(img, (600, 450))
    assert np.array_equal(big, cv2.resize(img, (600, 450), interpolation=cv2.INTER_LANCZOS4))
    # by a factor: the output size and the interpolation as cv2 gives them for fx = fy
    assert np.array_equal(resize(img, scale=1.4), cv2.resize(
        img, None, fx=1.4, fy=1.4, interpolation=cv2.INTER_LANCZOS4))
    assert resize(img, scale=0.5).shape == (150, 200, 3)


def test_nothing_to_do_returns_the_image_itself(tissue_rgb: np.ndarray) -> None:
    assert resize(tissue_rgb, tissue_rgb.shape[1::-1]) is tissue_rgb
    assert resize(tissue_rgb, scale=1.0) is tissue_rgb
    with pytest.raises(ValueError):
        resize(tissue_rgb)
    with pytest.raises(ValueError):
        resize(tissue_rgb, scale=0.0)


def test_flat_image_stays_flat_either_way() -> None:
    flat = np.full((48, 40, 3), 120, np.uint8)
    for size in ((20, 24), (100, 120), (13, 200)):
        out = resize(flat, size)
        assert out.shape == (size[1], size[0], 3) and (out == 120).all()


def test_nearest_keeps_class_labels() -> None:
    classes = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = resize(classes, (40, 30), nearest=True)
    assert set(np.unique(out)) == set(np.unique(classes))
    assert np.array_equal(out[::10, ::10], classes)


def test_exact_placement_is_the_scans_subpixel_read(tissue_rgb: np.ndarray) -> None:
    """Growing with a shift samples input (u / scale + shift); shrinking and equal sizes
    work on whole pixels, as the scan has always read its regions."""
    img = np.ascontiguousarray(tissue_rgb[:200, :260])
    f, sx, sy = 1.6, 0.375, 0.8
    m = np.array([[f, 0, -sx * f], [0, f, -sy * f]], dtype=np.float32)
    want = cv2.warpAffine(img, m, (300, 250), flags=cv2.INTER_LANCZOS4,
                          borderMode=cv2.BORDER_REPLICATE)
    assert np.array_equal(resize(img, (300, 250), scale=f, shift=(sx, sy)), want)
    assert np.array_equal(resize(img, (100, 80), scale=1.0, shift=(sx, sy)), img[:80, :100])
    f = 0.5
    want = cv2.resize(img[: round(80 / f), : round(100 / f)], (100, 80),
                      interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize(img, (100, 80), scale=f, shift=(sx, sy)), want)


def test_more_shrinking_never_adds_detail(tissue_rgb: np.ndarray) -> None:
    """Metamorphic: the high-frequency energy falls as the image shrinks further."""
    img = np.ascontiguousarray(tissue_rgb[:512, :512]).astype(np.float32)

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=1)).mean())

    sizes = [512, 384, 256, 128]
    d = [detail(resize(resize(img, (s, s)), (512, 512))) for s in sizes]
    assert all(b < a for a, b in pairwise(d))


# --- plain image files ---------------------------------------------------------------------------


def test_read_image_and_write_png_rgba(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    path = write_png(tmp_path / "sub" / "a.png", rgba)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temp file left
    rgb = read_image(path)
    assert rgb.shape == (20, 30, 3)
    assert (rgb[:, :15] == (200, 0, 0)).all()
    assert (rgb[:, 15:] == 255).all()  # transparent composites on white


def test_write_image_jpeg_and_overwrite(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    patch = np.ascontiguousarray(tissue_rgb[300:600, 300:600])
    path = write_image(tmp_path / "p.jpg", patch, quality=95)
    assert _mad(read_image(path), patch) < JPEG_TOLERANCE
    write_image(path, np.zeros_like(patch))
    assert read_image(path).max() < 10


def test_write_png_unwritable(tmp_path: Path) -> None:
    from convfocus.errors import OutputError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        write_png(blocker / "a.png", np.zeros((2, 2, 3), dtype=np.uint8))


def test_read_image_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError):
        read_image(tmp_path / "none.png")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UnsupportedFormatError):
        read_image(tmp_path / "x.txt")


# --- OpenCV's thread pool during a scan ----------------------------------------------------------


def test_opencv_pool_is_off_inside_and_restored_when_the_last_thread_leaves() -> None:
    import threading

    from convfocus.io.images import opencv_single_threaded

    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        inside, leave = threading.Event(), threading.Event()
        seen: list[int] = []

        def other() -> None:
            with opencv_single_threaded():
                inside.set()
                leave.wait(10)
                seen.append(cv2.getNumThreads())

        t = threading.Thread(target=other)
        with opencv_single_threaded():
            assert cv2.getNumThreads() == 1
            t.start()
            assert inside.wait(10)
        assert cv2.getNumThreads() == 1  # the other thread is still inside
        leave.set()
        t.join(10)
        assert seen == [1]
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
