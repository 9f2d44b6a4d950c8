"""Slide viewer: deep-zoom and overlay tiles, window probe, regions, and a real browser."""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from convfocus.cli import main
from convfocus.errors import ConfigError, ConvFocusError
from convfocus.grading.heatmap import class_colors
from convfocus.io.readers import open_slide
from convfocus.web.viewer import ViewerApp, dzi_max_level, dzi_tile_box
from web_helpers import browser_or_skip, get_json, http, make_scan_folder, serving

W, H = 1500, 1100  # make_scan_folder's slide; 8 x 11 windows of stride 128


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    make_scan_folder(root / "out", "slide-a")
    make_scan_folder(root / "out", "slide-b", with_slide=False, seed=1)
    return root / "out"


@pytest.fixture(scope="module")
def url(scans: Path):
    app = ViewerApp(scans / "slide-a")
    with serving(app) as base:
        yield base
    app.close()


def _decode(body: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(body, np.uint8), flags)
    assert img is not None
    return img


def test_tile_geometry() -> None:
    assert dzi_max_level(W, H) == 11
    assert dzi_tile_box(W, H, 11, 0, 0) == (0, 0, 256, 256, 1)
    assert dzi_tile_box(W, H, 11, 5, 4) == (1280, 1024, 220, 76, 1)
    assert dzi_tile_box(W, H, 11, 6, 0) is None
    assert dzi_tile_box(W, H, 0, 0, 0) == (0, 0, 1, 1, 2048)
    assert dzi_tile_box(W, H, 12, 0, 0) is None


def test_slides_and_descriptors(url: str) -> None:
    status, slides = get_json(url + "/api/slides")
    assert status == 200 and [s["id"] for s in slides] == ["slide-a"]
    for kind, fmt, tiles in (("slide", "jpeg", "tiles"), ("overlay", "png", "overlay")):
        status, headers, body = http(f"{url}/slides/slide-a/{kind}.dzi")
        assert status == 200 and headers["content-type"].startswith("application/xml")
        root = ET.fromstring(body)
        assert root.get("Format") == fmt and root.get("TileSize") == "256"
        assert root.get("Url") == f"/slides/slide-a/{tiles}/"
        size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert size is not None and (size.get("Width"), size.get("Height")) == ("1500", "1100")


def test_slide_tiles_come_from_the_slide(url: str, scans: Path) -> None:
    with open_slide(scans / "slide-a.tif") as slide:
        full = slide.read_region((0, 0), 0, (W, H))
    status, headers, body = http(url + "/slides/slide-a/tiles/11/1_1.jpeg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    tile = _decode(body, cv2.IMREAD_COLOR)[..., ::-1]
    assert tile.shape == (256, 256, 3)
    assert np.abs(tile.astype(int) - full[256:512, 256:512]).mean() < 8
    edge = _decode(http(url + "/slides/slide-a/tiles/11/5_4.jpeg")[2])
    assert edge.shape[:2] == (76, 220)
    coarse = _decode(http(url + "/slides/slide-a/tiles/9/0_0.jpeg")[2])
    assert coarse.shape[:2] == (256, 256)  # level 9: 375 x 275 px, in 256 px tiles
    assert _decode(http(url + "/slides/slide-a/tiles/0/0_0.jpeg")[2]).shape[:2] == (1, 1)
    for bad in ("/slides/slide-a/tiles/12/0_0.jpeg", "/slides/slide-a/tiles/11/6_0.jpeg",
                "/slides/slide-a/tiles/11/0_0.png", "/slides/slide-a/tiles/x/0_0.jpeg",
                "/slides/nope/tiles/11/0_0.jpeg"):
        assert http(url + bad)[0] == 404, bad


def test_overlay_tiles_show_classes(url: str) -> None:
    colors = class_colors()
    status, headers, body = http(url + "/slides/slide-a/overlay/11/1_1.png")
    assert status == 200 and headers["content-type"] == "image/png"
    rgba = _decode(body)[..., [2, 1, 0, 3]]  # covers cells rows 2-3, cols 2-3: class 25
    assert rgba.shape == (256, 256, 4)
    assert tuple(rgba[128, 128]) == (*colors[25], 255)
    corner = _decode(http(url + "/slides/slide-a/overlay/11/0_0.png")[2])
    assert (corner[..., 3] == 0).all()  # no tissue: fully transparent
    assert http(url + "/slides/slide-a/overlay/8/0_0.png")[0] == 200


def test_window_under_a_point(url: str) -> None:
    status, w = get_json(url + "/api/slides/slide-a/window?x=320&y=330.5")
    assert status == 200
    assert (w["row"], w["col"], w["class"], w["tissue"]) == (2, 2, 25, True)
    assert len(w["probabilities"]) == 30 and int(np.argmax(w["probabilities"])) == 25
    assert sum(w["probabilities"]) == pytest.approx(1.0, abs=1e-2)
    assert w["window_l0_px"] == [256.0, 256.0, 139.0, 139.0]
    assert get_json(url + "/api/slides/slide-a/window?x=10&y=10")[1]["tissue"] is False
    assert get_json(url + "/api/slides/slide-a/window?x=-5&y=10")[1]["outside"] is True
    for q in ("x=abc&y=1", "x=nan&y=1", "x=1e12&y=1", "x=1", "x=1&y=2&y=3", "x=&y=1"):
        status, body = get_json(url + "/api/slides/slide-a/window?" + q)
        assert status == 400 and set(body) == {"error"}, q


def test_regions_worst_first(url: str) -> None:
    status, regions = get_json(url + "/api/slides/slide-a/regions")
    assert status == 200 and len(regions) == 2
    assert regions[0]["properties"]["severity"] == "severe"
    assert regions[0]["bbox"] == [256.0, 256.0, 256.0, 256.0]
    assert regions[1]["properties"]["mean_class"] == 14


def test_summary_hides_local_paths(url: str) -> None:
    status, s = get_json(url + "/api/slides/slide-a/summary")
    assert status == 200 and s["input"] == "slide-a.tif" and s["pixels"] == "slide"


def test_folder_of_scans_and_thumbnail_fallback(scans: Path) -> None:
    app = ViewerApp(scans)
    with serving(app) as base:
        ids = [s["id"] for s in get_json(base + "/api/slides")[1]]
        assert ids == ["slide-a", "slide-b"]
        assert get_json(base + "/api/slides/slide-b/summary")[1]["pixels"] == "thumbnail"
        status, _, body = http(base + "/slides/slide-b/tiles/11/1_1.jpeg")
        assert status == 200 and _decode(body).shape[:2] == (256, 256)
    app.close()


def _without_pixel_size(folder: Path, **summary: object) -> Path:
    """Rewrite the scan's slide as a pyramid with no pixel size; update summary.json."""
    s = json.loads((folder / "summary.json").read_text())
    with open_slide(s["input"], mpp=0.25) as slide:
        rgb = slide.read_region((0, 0), 0, slide.dimensions)[..., :3]
    with tifffile.TiffWriter(s["input"]) as tw:  # no resolution tags: open_slide needs an mpp
        tw.write(rgb, tile=(256, 256), subifds=1, photometric="rgb", metadata=None)
        tw.write(np.ascontiguousarray(rgb[::2, ::2]), tile=(256, 256), subfiletype=1,
                 photometric="rgb", metadata=None)
    s.update(summary)
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


def _pixels(app: ViewerApp) -> str:
    scan = next(iter(app.scans.values()))
    try:
        return scan.source
    finally:
        app.close()


def test_slide_scanned_with_mpp_opens_with_the_stored_pixel_size(tmp_path: Path) -> None:
    # `convfocus scan SLIDE --mpp 0.5` on a file without a pixel size: the viewer showed the
    # thumbnail ("slide file unavailable") because it reopened the file without the mpp
    folder = _without_pixel_size(make_scan_folder(tmp_path, "no-mpp"), mpp=0.5,
                                 mpp_source="--mpp")
    with pytest.raises(ConvFocusError, match="pass --mpp"):
        open_slide(tmp_path / "no-mpp.tif")
    assert _pixels(ViewerApp(folder)) == "slide"
    # an older summary without the source: the file has none, so the stored one is used
    _without_pixel_size(folder, mpp_source=None)
    assert _pixels(ViewerApp(folder)) == "slide"


def test_view_mpp_overrides_the_stored_pixel_size(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _without_pixel_size(make_scan_folder(tmp_path, "no-mpp"), mpp=None,
                                 mpp_source=None)
    assert _pixels(ViewerApp(folder)) == "thumbnail"  # nothing to open it with
    app = ViewerApp(folder, mpp=0.5)
    assert app.scans["no-mpp"].info()["mpp"] == 0.5
    assert _pixels(app) == "slide"

    served: list[tuple[str, float | None]] = []

    def fake_serve(app: ViewerApp, host: str, port: int) -> None:
        served.append((_pixels(app), app.scans["no-mpp"].info()["mpp"]))

    monkeypatch.setattr("convfocus.web.server.serve", fake_serve)
    assert main(["view", str(folder), "--mpp", "0.5"]) == 0
    assert served == [("slide", 0.5)]
    for bad in ("nan", "0", "1000", "abc"):  # the same checks as scan's --mpp
        with pytest.raises(SystemExit) as exc:
            main(["view", str(folder), "--mpp", bad])
        assert exc.value.code == 2, bad


def test_slide_is_found_from_any_working_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_scan_folder(tmp_path / "out", "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = json.loads((folder / "summary.json").read_text())
    for stored in ("../moved.tif", str(Path("..", "out", "moved.tif"))):
        # relative to the summary's folder, then to the current directory
        s["input"] = stored
        (folder / "summary.json").write_text(json.dumps(s))
        assert _pixels(ViewerApp(folder)) == "slide", stored


def test_missing_slide_is_one_plain_line(scans: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = ViewerApp(scans / "slide-b")
    with caplog.at_level(logging.WARNING, logger="convfocus"):
        assert _pixels(app) == "thumbnail"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "not found" in lines[0] and "gone.tif" in lines[0] and "thumbnail" in lines[0]
    with serving(ViewerApp(scans / "slide-b")) as base:
        s = get_json(base + "/api/slides/slide-b/summary")[1]
    assert s["pixels"] == "thumbnail" and "not found" in s["pixels_note"]
    assert str(scans) not in json.dumps(s)  # no local paths reach the browser


def test_request_hygiene(url: str) -> None:
    for path in ("/static/../viewer.py", "/static/%2e%2e/server.py", "/slides/../summary.json",
                 "/slides/slide-a/../../etc/passwd", "/api/slides/..%2fslide-a/summary",
                 "/slide-a/summary.json", "/slide-a/classmap.npy"):
        status, _, body = http(url + path)
        assert status in (400, 403, 404), path
        assert b"Traceback" not in body
    assert http(url + "/api/slides", method="POST", body={})[0] == 405
    assert http(url + "/", headers={"Host": "attacker.example:80"})[0] == 421


def test_bad_folders_are_clear_errors(scans: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no scan output"):
        ViewerApp(tmp_path)
    with pytest.raises(ConfigError, match="single"):
        ViewerApp(scans, slide_path=scans / "slide-a.tif")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps({"dimensions": [10, 10], "grid": {
        "l0_origin_px": [0, 0], "l0_stride_px": 128, "l0_window_px": 139, "rows": 2, "cols": 2}}))
    np.save(bad / "classmap.npy", np.zeros((3, 3), np.int16))
    with pytest.raises(ConfigError, match="shape"):
        ViewerApp(bad)
    assert main(["view", str(tmp_path / "missing")]) == 2


# --- end to end in Chromium --------------------------------------------------------------------


def _count_near(img: np.ndarray, rgb: np.ndarray, tol: int = 10) -> np.ndarray:
    return (np.abs(img.astype(int) - rgb.astype(int)).max(axis=2) <= tol)


def test_viewer_in_the_browser(url: str) -> None:
    pw, browser = browser_or_skip()
    colors = class_colors()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 850})
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        with page.expect_response(lambda r: "/overlay/" in r.url, timeout=15_000) as resp:
            page.goto(url + "/")
        assert resp.value.status == 200
        assert resp.value.headers["content-type"] == "image/png"
        page.wait_for_selector("#regions li")
        page.wait_for_selector("#summary tr")
        page.locator("#opacity").fill("100")
        page.wait_for_timeout(800)
        box = page.locator("#osd").bounding_box()
        assert box is not None
        shot = _decode(page.screenshot(), cv2.IMREAD_COLOR)[..., ::-1]
        x0, y0 = int(box["x"]), int(box["y"])
        view = shot[y0:y0 + int(box["height"]), x0:x0 + int(box["width"])]
        severe = _count_near(view, colors[25])
        assert severe.sum() > 2000  # the class-25 region is drawn in its jet colour
        if os.environ.get("CONVFOCUS_SCREENSHOTS"):
            page.screenshot(path=str(Path(os.environ["CONVFOCUS_SCREENSHOTS"]) / "viewer.png"))

        ys, xs = np.nonzero(severe)
        page.mouse.move(x0 + float(np.median(xs)), y0 + float(np.median(ys)))
        page.wait_for_selector("#probe-class:text('class 25')")
        assert page.locator("#probe-probs span").count() == 30

        page.uncheck("#overlay-on")
        page.wait_for_timeout(500)
        off = _decode(page.screenshot(), cv2.IMREAD_COLOR)[..., ::-1]
        off_view = off[y0:y0 + int(box["height"]), x0:x0 + int(box["width"])]
        assert _count_near(off_view, colors[25]).sum() < 50  # overlay hidden

        page.click("#regions li >> nth=1")
        page.wait_for_selector(".region-box")
        assert page.locator("#regions li.active").count() == 1
        assert errors == []
    finally:
        browser.close()
        pw.stop()


def test_summary_panel_leads_with_the_verdict(tmp_path: Path) -> None:
    # the panel showed the first 24 keys of summary.json (schema version, ...) and never
    # the verdict, the OOF pattern or the scan lanes
    from convfocus.grading.report import build_summary
    from convfocus.grading.result import SlideInfo, SlideResult
    from convfocus.types import GridGeometry, ModelSpec

    folder = make_scan_folder(tmp_path, "full")
    old = json.loads((folder / "summary.json").read_text())
    result = SlideResult(
        SlideInfo(old["input"], (W, H), 0.25, mpp_source="--mpp"),
        ModelSpec(name="convfocus-test", version="9.9", arch="lite"),
        GridGeometry.from_dict(old["grid"]), np.load(folder / "classmap.npy"),
        np.load(folder / "probs.npy"), np.zeros((H // 8, W // 8, 3), np.uint8), 8.0,
        profile="cytology", seconds=1.0)
    s = build_summary(result)
    (folder / "summary.json").write_text(json.dumps(s))
    app = ViewerApp(folder)
    pw, browser = browser_or_skip()
    try:
        with serving(app) as base:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_selector("#summary tr")
            verdict = s["verdict"]
            assert page.inner_text("#verdict").strip().lower() == verdict["verdict"]
            reasons = page.locator("#verdict-block .reasons li").all_inner_texts()
            assert reasons == verdict["reasons"] and reasons
            rows = [tuple(r.split("\t")) for r in page.locator("#summary tr").all_inner_texts()]
            labels = [r[0] for r in rows]  # value and note: "value\nnote"
            assert labels[:2] == ["OOF pattern", "Scan lanes"]
            assert labels[2:6] == ["Tissue area", "Windows graded", "Out of focus",
                                  "OOF regions"]
            figures = dict(rows)
            assert figures["OOF pattern"] == "local\nsmall scattered spots"
            assert figures["Scan lanes"] == "none"
            assert figures["Windows graded"] == f"{s['windows_graded']:,}"
            share = f"{100 * s['oof_share']:.1f} % of tissue"
            # the share the verdict counts, at its profile's class, and it says which
            assert s["oof_min_class"] == s["verdict"]["oof_min_class"] == 10
            assert figures["Out of focus"] == f"{share}\nclass ≥ 10, as the cytology verdict counts"
            assert figures["Pixel size"] == "0.25 µm/px\ngiven with --mpp"
            assert figures["Model"] == "convfocus-test\nversion 9.9"
            text = page.inner_text("aside")
            assert "schema" not in text and "_" not in text  # plain words, not raw keys
            if os.environ.get("CONVFOCUS_SCREENSHOTS"):
                page.screenshot(path=str(Path(os.environ["CONVFOCUS_SCREENSHOTS"])
                                         / "viewer-summary.png"))
            assert errors == []
    finally:
        browser.close()
        pw.stop()
        app.close()
