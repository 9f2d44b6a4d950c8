"""Slide readers: real slides, generated pyramids, bad inputs."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convfocus.errors import PixelSizeError, SlideReadError, UnsupportedFormatError
from convfocus.io import readers
from convfocus.io.images import write_png, write_pyramidal_tiff
from convfocus.io.readers import SlideReader, open_slide

JPEG_TOLERANCE = 3.0  # mean absolute difference in 8-bit levels after one JPEG round trip


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- real slides ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cmu(shared_data: Path) -> Path:
    return shared_data / "slides" / "cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def tcga(shared_data: Path) -> Path:
    return shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"


def test_cmu_metadata(cmu: Path) -> None:
    with open_slide(cmu) as s:
        assert isinstance(s, SlideReader)
        assert s.format == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.level_dimensions == ((2220, 2967),)
        assert s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(0.499)


def test_cmu_pixels_match_tiffslide_and_openslide(cmu: Path) -> None:
    import openslide
    import tiffslide

    xy, size = (700, 1100), (600, 500)  # crosses tile borders (240 px tiles)
    with open_slide(cmu) as s:
        ours = s.read_region(xy, 0, size)
    assert ours.shape == (500, 600, 3) and ours.dtype == np.uint8
    ts = tiffslide.TiffSlide(cmu)
    ref_ts = np.asarray(ts.read_region(xy, 0, size, as_array=True))[:, :, :3]
    ts.close()
    osl = openslide.OpenSlide(cmu)
    ref_os = np.asarray(osl.read_region(xy, 0, size))[:, :, :3]
    osl.close()
    # Aperio tiles are RGB JPEG without a colour transform: a wrong transform is off by ~50
    assert _mad(ours, ref_ts) < 1.0
    assert _mad(ours, ref_os) < 1.0


def test_cmu_openslide_backend_agrees(cmu: Path) -> None:
    reader = readers._OpenSlideReader(cmu, "aperio")
    try:
        with open_slide(cmu) as s:
            assert (
                _mad(
                    reader.read_region((0, 0), 0, (480, 480)), s.read_region((0, 0), 0, (480, 480))
                )
                < 1
            )
    finally:
        reader.close()


def test_cmu_edge_tiles_match_tiffslide(cmu: Path) -> None:
    import tiffslide

    xy, size = (2000, 2800), (300, 300)  # 2220 x 2967 with 240 px tiles: partial edge tiles
    with open_slide(cmu) as s:
        ours = s.read_region(xy, 0, size)
    with tiffslide.TiffSlide(cmu) as ts:
        ref = np.asarray(ts.read_region(xy, 0, (220, 167), as_array=True))[:, :, :3]
    assert _mad(ours[:167, :220], ref) < 1.0
    assert (ours[167:] == 255).all() and (ours[:, 220:] == 255).all()


def test_jpeg2000_svs_needs_pixel_size(tcga: Path) -> None:
    with pytest.raises(
        PixelSizeError, match=r"tcga-cr-7395.*no pixel size in metadata; pass --mpp"
    ):
        open_slide(tcga)


def test_jpeg2000_svs_reads_with_given_pixel_size(tcga: Path) -> None:
    import tiffslide

    with open_slide(tcga, mpp=1.0) as s:
        assert s.mpp == 1.0
        assert s.dimensions == (4443, 3567)
        assert len(s.level_dimensions) == 2
        region = s.read_region((2000, 1600), 1, (300, 200))
        thumb = s.get_thumbnail(256)
    with tiffslide.TiffSlide(tcga) as ts:
        ref = np.asarray(ts.read_region((2000, 1600), 1, (300, 200), as_array=True))[:, :, :3]
    assert _mad(region, ref) < 1.0
    assert max(thumb.shape[:2]) == 256
    assert thumb.mean() < 250  # there is tissue in the thumbnail


def test_broken_svs(shared_data: Path) -> None:
    path = shared_data / "slides" / "broken.svs"
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    assert "broken.svs" in str(err.value)
    assert "\n" not in str(err.value)


# --- bad inputs ----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_directory_that_is_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideReadError, match="not a DICOM WSI folder"):
        open_slide(tmp_path)


def test_unsupported_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(UnsupportedFormatError, match="notes.txt"):
        open_slide(path)


def test_random_bytes_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "random.tif"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    assert "random.tif" in str(err.value) and "\n" not in str(err.value)


def test_truncated_tiff(tmp_path: Path, pyramid_tiff: Path) -> None:
    path = tmp_path / "cut.tif"
    path.write_bytes(pyramid_tiff.read_bytes()[:300])
    with pytest.raises(SlideReadError, match="cut.tif"):
        open_slide(path)
    path.write_bytes(pyramid_tiff.read_bytes()[:5000])
    with pytest.raises(SlideReadError, match="truncated"):
        open_slide(path)


#: What an error line for people must not show: Python's exception names and internals.
_PYTHON_TALK = re.compile(r"\b\w*(Error|Exception)\b|Traceback|list index")


@pytest.mark.parametrize("frac", [0.0003, 0.01, 0.2, 0.5, 0.8, 0.99])
@pytest.mark.parametrize("layout", ["subifd", "aperio"])
def test_a_slide_cut_short_says_truncated(
    tmp_path: Path, pyramid_tiff: Path, aperio_tiff: Path, layout: str, frac: float
) -> None:
    """A cut Aperio file opened without its lower levels, or failed with "(IndexError: list
    index out of range)"."""
    src = pyramid_tiff if layout == "subifd" else aperio_tiff
    data = src.read_bytes()
    path = tmp_path / f"cut{src.suffix}"
    path.write_bytes(data[: max(16, int(len(data) * frac))])
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: truncated file: it ends at byte "), msg
    assert "\n" not in msg and not _PYTHON_TALK.search(msg), msg


@pytest.mark.parametrize("length", [200, 5_000, 1_000_000, 1_500_000, 1_938_000])
def test_cmu_cut_short_says_truncated(shared_data: Path, tmp_path: Path, length: int) -> None:
    """Cut before its first image directory it said "(IndexError: list index out of range)";
    cut in its associated images it opened as if whole."""
    data = (shared_data / "slides" / "cmu-1-small-region.svs").read_bytes()
    assert length < len(data)
    path = tmp_path / "cmu-cut.svs"
    path.write_bytes(data[:length])
    with pytest.raises(SlideReadError) as err:
        open_slide(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: truncated file: it ends at byte {length:,}"), msg
    assert not _PYTHON_TALK.search(msg), msg


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty"):
        open_slide(path)


@pytest.mark.parametrize("mpp", [0.01, 25.0, float("nan")])
def test_implausible_given_pixel_size(pyramid_tiff: Path, mpp: float) -> None:
    with pytest.raises(PixelSizeError, match="implausible"):
        open_slide(pyramid_tiff, mpp=mpp)


def test_multilevel_tiff_with_implausible_resolution(
    tmp_path: Path, tissue_rgb: np.ndarray
) -> None:
    import tifffile

    path = tmp_path / "dpi72.tif"
    with tifffile.TiffWriter(path) as tw:  # a 72 dpi pyramid: 353 µm/px is not a slide
        opts: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg", "tile": (256, 256)}
        tw.write(tissue_rgb, subifds=1, resolution=(72, 72), resolutionunit="INCH", **opts)
        tw.write(tissue_rgb[::2, ::2], subfiletype=1, **opts)
    with pytest.raises(PixelSizeError, match="implausible pixel size 352.7"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and len(s.level_dimensions) == 2


# --- plain images --------------------------------------------------------------------------------


def test_plain_png_defaults_to_quarter_micron(
    tmp_path: Path, tissue_rgb: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_png(tmp_path / "patch.png", tissue_rgb[200:500, 300:700])
    with caplog.at_level(logging.WARNING, logger="convfocus"):
        s = open_slide(path)
    assert s.format == "image"
    assert s.mpp == 0.25
    assert s.dimensions == (400, 300)
    assert any("patch.png" in r.getMessage() and "0.25" in r.getMessage() for r in caplog.records)
    assert np.array_equal(s.read_region((0, 0), 0, (400, 300)), tissue_rgb[200:500, 300:700])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="convfocus"):
        assert open_slide(path, mpp=0.5).mpp == 0.5
    assert not caplog.records


def test_shared_png_opens(shared_data: Path) -> None:
    with open_slide(shared_data / "infocus" / "skimage-ihc.png") as s:
        assert s.dimensions == (512, 512) and s.mpp == 0.25


def test_plain_tiff_with_resolution(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    import tifffile

    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, tissue_rgb[:300, :400], resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER", metadata=None)  # fmt: skip
    with open_slide(path) as s:
        assert s.format == "image" and s.mpp == pytest.approx(0.5)
        assert np.array_equal(s.read_region((0, 0), 0, (400, 300)), tissue_rgb[:300, :400])


# --- generated pyramids --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subifd", "aperio"])
def test_pyramid_round_trip(
    layout: str, pyramid_tiff: Path, aperio_tiff: Path, tissue_rgb: np.ndarray
) -> None:
    path = pyramid_tiff if layout == "subifd" else aperio_tiff
    with open_slide(path) as s:
        assert s.format == ("tiff" if layout == "subifd" else "aperio")
        assert s.mpp == pytest.approx(0.25)
        assert s.dimensions == (2048, 1536)
        assert s.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0)
        assert _mad(s.read_region((0, 0), 0, s.dimensions), tissue_rgb) < JPEG_TOLERANCE
        half = tissue_rgb.reshape(768, 2, 1024, 2, 3).mean(axis=(1, 3))
        assert _mad(s.read_region((0, 0), 1, (1024, 768)), half) < JPEG_TOLERANCE
        # a region inside: level-0 position maps to level pixel floor(l0 / downsample)
        region = s.read_region((1001, 603), 2, (64, 48))
        full = s.read_region((0, 0), 2, (512, 384))
        assert np.array_equal(region, full[150 : 150 + 48, 250 : 250 + 64])


def test_aperio_layout_readable_by_openslide_and_tiffslide(aperio_tiff: Path) -> None:
    import openslide
    import tiffslide

    with openslide.OpenSlide(aperio_tiff) as o:
        assert o.properties["openslide.vendor"] == "aperio"
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert o.level_count == 4
        assert "thumbnail" in o.associated_images
        ref = np.asarray(o.read_region((512, 512), 1, (200, 150)))[:, :, :3]
    with tiffslide.TiffSlide(aperio_tiff) as ts:
        assert ts.level_count == 4
    with open_slide(aperio_tiff) as s:
        assert _mad(s.read_region((512, 512), 1, (200, 150)), ref) < 1.0


def test_tiffslide_backend_agrees(pyramid_tiff: Path) -> None:
    reader = readers._TiffSlideReader(pyramid_tiff, "tiff")
    try:
        with open_slide(pyramid_tiff) as s:
            for level in range(4):
                a = reader.read_region((333, 211), level, (300, 257))
                b = s.read_region((333, 211), level, (300, 257))
                assert _mad(a, b) < 1.0
    finally:
        reader.close()


def test_ome_tiff_pixel_size(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    import tifffile

    path = tmp_path / "ihc.ome.tif"
    opts: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg", "tile": (256, 256)}
    with tifffile.TiffWriter(path, ome=True) as tw:
        meta = {"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm"}
        tw.write(tissue_rgb, subifds=1, metadata=meta, **opts)
        tw.write(tissue_rgb[::2, ::2], subfiletype=1, **opts)
    with open_slide(path) as s:
        assert s.format == "ome-tiff"
        assert s.mpp == pytest.approx(0.5)
        assert s.level_dimensions == ((2048, 1536), (1024, 768))
        assert _mad(s.read_region((0, 0), 1, (1024, 768)), tissue_rgb[::2, ::2]) < JPEG_TOLERANCE


def test_lossless_tiled_tiff_reads_exactly(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    import tifffile

    path = tmp_path / "zlib.tif"
    opts: dict[str, Any] = {"photometric": "rgb", "compression": "zlib", "tile": (128, 128)}
    with tifffile.TiffWriter(path) as tw:
        tw.write(tissue_rgb, subifds=1, resolution=(40000, 40000), resolutionunit="CENTIMETER",
                 **opts)  # fmt: skip
        tw.write(tissue_rgb[::2, ::2], subfiletype=1, **opts)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25) and len(s.level_dimensions) == 2
        assert np.array_equal(
            s.read_region((100, 200), 0, (700, 500)), tissue_rgb[200:700, 100:800]
        )


def test_odd_sized_pyramid_round_trip(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_rgb[100:803, 200:1201])  # 1001 x 703: partial edge tiles
    path = write_pyramidal_tiff(tmp_path / "odd.svs", img, mpp=0.5, aperio=True)
    with open_slide(path) as s:
        assert s.level_dimensions == ((1001, 703), (500, 351), (250, 175))
        assert _mad(s.read_region((0, 0), 0, (1001, 703)), img) < JPEG_TOLERANCE
        assert s.get_thumbnail(100).shape == (70, 100, 3)


def test_dicom_marker_with_junk(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(bytes(128) + b"DICM" + bytes(200))
    with pytest.raises(SlideReadError, match="junk.dcm"):
        open_slide(path)


def test_out_of_bounds_is_white(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as s:
        assert (s.read_region((-5000, -5000), 0, (100, 80)) == 255).all()
        assert (s.read_region((2048, 0), 0, (10, 10)) == 255).all()
        inside = s.read_region((1900, 1400), 0, (148, 136))
        edge = s.read_region((1900, 1400), 0, (300, 300))
        assert np.array_equal(edge[:136, :148], inside)
        assert (edge[136:] == 255).all() and (edge[:, 148:] == 255).all()
        corner = s.read_region((-10, -20), 1, (50, 50))  # level 1: starts at (-5, -10)
        assert (corner[:10] == 255).all() and (corner[:, :5] == 255).all()
        assert np.array_equal(corner[10:, 5:], s.read_region((0, 0), 1, (45, 40)))


def test_threads_give_identical_pixels(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff, threads=1) as one, open_slide(pyramid_tiff, threads=4) as four:
        assert np.array_equal(
            one.read_region((100, 50), 0, (1500, 1200)),
            four.read_region((100, 50), 0, (1500, 1200)),
        )


def test_thumbnail_uses_a_small_level(pyramid_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(pyramid_tiff) as s:
        levels: list[int] = []
        original = s._read_level

        def spy(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            levels.append(level)
            return original(level, x, y, w, h)

        monkeypatch.setattr(s, "_read_level", spy)
        thumb = s.get_thumbnail(300)
        assert thumb.shape == (225, 300, 3) and thumb.dtype == np.uint8
        assert set(levels) == {2}  # 512 x 384 is the smallest level >= 300 x 225
        assert s.get_thumbnail(5000).shape == (1536, 2048, 3)  # never upsampled


def test_decoded_tiles_are_reused_within_a_bounded_cache(
    pyramid_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping reads decode a shared tile once; the cache never holds more than its
    budget, and evicted tiles read back the same."""
    with open_slide(pyramid_tiff, threads=1) as s:
        assert s._cache_limit == readers._TILE_CACHE_BYTES[0]  # a small slide: the minimum
        s._cache_limit = 6 * 256 * 256 * 3  # six tiles
        decoded: list[int] = []
        original = s._decode_tile

        def spy(lv: Any, index: int) -> np.ndarray | None:
            decoded.append(index)
            return original(lv, index)

        monkeypatch.setattr(s, "_decode_tile", spy)
        first = s.read_region((500, 300), 0, (139, 139))  # inside tiles 1..2 x 1..2
        n = len(decoded)
        again = s.read_region((520, 310), 0, (100, 100))
        assert len(decoded) == n  # all from the cache
        np.testing.assert_array_equal(again, first[10:110, 20:120])
        s.read_region((0, 0), 0, (2048, 1536))  # 48 tiles through a six-tile cache
        assert s._cache_bytes <= s._cache_limit and len(s._cache) <= 6
        np.testing.assert_array_equal(s.read_region((500, 300), 0, (139, 139)), first)


def test_best_level_for_downsample(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as s:
        assert [s.best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.99, 4, 100)] == [
            0, 0, 0, 1, 1, 2, 3,
        ]  # fmt: skip


def test_invalid_read_arguments(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as s:
        with pytest.raises(ValueError):
            s.read_region((0, 0), 4, (10, 10))
        with pytest.raises(ValueError):
            s.read_region((0, 0), 0, (0, 10))


def test_write_pyramid_levels_argument(tmp_path: Path, tissue_rgb: np.ndarray) -> None:
    path = write_pyramidal_tiff(tmp_path / "two.tif", tissue_rgb, mpp=0.5, tile=512, levels=2)
    with open_slide(path) as s:
        assert s.level_dimensions == ((2048, 1536), (1024, 768)) and s.mpp == pytest.approx(0.5)
    with pytest.raises(ValueError):
        write_pyramidal_tiff(tmp_path / "bad.tif", tissue_rgb, mpp=0.5, tile=100)


class _OneReaderAtATime:
    """Stands in for wsidicom's WsiDicom (512 x 384 px, one level) and counts the reads
    that overlapped: wsidicom's file handles are not safe to share between threads."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.pyramid = SimpleNamespace(levels=[
            SimpleNamespace(level=0, size=SimpleNamespace(width=512, height=384))])
        self.mpp = SimpleNamespace(width=0.25)
        self.calls = self.inside = self.overlaps = 0
        self._count = threading.Lock()

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int],
                    as_array: bool = False) -> np.ndarray:
        with self._count:
            self.calls += 1
            self.inside += 1
            self.overlaps += self.inside > 1
        time.sleep(0.005)
        with self._count:
            self.inside -= 1
        return np.full((size[1], size[0], 3), 200, np.uint8)

    def close(self) -> None:
        pass


def test_dicom_reader_reads_one_region_at_a_time(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's reading threads called wsidicom from two threads at once, unguarded."""
    import wsidicom

    fake = _OneReaderAtATime()
    monkeypatch.setattr(wsidicom.WsiDicom, "open", staticmethod(lambda path: fake))
    folder = tmp_path / "case-7"
    folder.mkdir()
    (folder / "level-0.dcm").write_bytes(b"")
    reader = open_slide(folder)
    assert reader.format == "dicom" and reader.dimensions == (512, 384) and reader.mpp == 0.25
    with ThreadPoolExecutor(4) as pool:
        tiles = list(pool.map(lambda k: reader.read_region((8 * k, 4 * k), 0, (64, 48)),
                              range(40)))
    assert all(t.shape == (48, 64, 3) for t in tiles)
    assert fake.calls == 40 and fake.overlaps == 0
