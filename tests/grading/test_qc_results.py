"""QC results on real slides: ink is not tissue, blank and tiny slides get a verdict that says
so, the share shown is the one the verdict counts, coarse slides say what their pixels cost,
and every output is readable by others."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_helpers import scan
from convfocus.errors import NoTissueError
from convfocus.grading import report as rp
from convfocus.grading.outputs import OUTPUT_FILES
from convfocus.grading.result import SlideInfo, SlideResult
from convfocus.grading.tissue import tissue_mask
from convfocus.io.images import read_image, write_pyramidal_tiff
from convfocus.types import GridGeometry, ModelSpec

NEG = "negatives"


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _index(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "index.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


# --- ink -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["histolab-no-tissue-red-pen.png",
                                  "histolab-no-tissue-green-pen.png"])
def test_pen_ink_alone_is_not_graded_as_blur(name: str, shared_data: Path, tmp_path: Path,
                                             fixture_model: Path, capsys) -> None:
    """Both were graded class 24 and RESCAN: ink is left out, and the slide has no tissue."""
    rc, stdout, _ = scan(capsys, fixture_model, tmp_path / "out", shared_data / NEG / name)
    assert rc == 0
    s = _summary(tmp_path / "out" / Path(name).stem)
    assert s["windows_graded"] == 0 and s["tissue_area_mm2"] == 0
    assert s["verdict"]["verdict"] == "no-tissue"
    assert set(s["verdicts"].values()) == {"no-tissue"}
    assert "only marker ink" in s["verdict"]["reasons"][0]
    assert s["ink_share"] == 1.0 and s["ink_area_mm2"] > 0.005  # 512 px at 0.25 µm/px
    assert "NO-TISSUE" in stdout and "only marker ink" in stdout
    html = (tmp_path / "out" / Path(name).stem / "report.html").read_text()
    assert "Ink, not graded" in html and "100.0 % of tissue + ink" in html


def test_inked_tissue_keeps_its_tissue_and_reports_the_ink(shared_data: Path, tmp_path: Path,
                                                          fixture_model: Path, capsys) -> None:
    """Real tissue with red ink on about 4 % of it: the ink is reported, the rest graded."""
    path = shared_data / NEG / "histolab-high-nuclei-score-red-pen-level1.png"
    out = tmp_path / "out"
    rc, _, _ = scan(capsys, fixture_model, out, path, extra=("--mpp", "1.0"))
    assert rc == 0
    s = _summary(out / path.stem)
    assert 0.02 < s["ink_share"] < 0.08
    cm = np.load(out / path.stem / "classmap.npy")
    assert (cm >= 0).mean() > 0.9  # the tissue around the ink is graded
    row = _index(out)[path.stem]
    assert float(row["ink_share"]) == s["ink_share"] and float(row["ink_area_mm2"]) > 0
    assert "Ink (mm²)" in (out / "index.html").read_text()


def test_ink_mask_on_the_shared_images(shared_data: Path) -> None:
    """Ink-only images are all ink; sharp tissue of every organ keeps at least 97 % of itself."""
    from convfocus.grading.tissue import ink_mask

    for name in ("histolab-no-tissue-red-pen.png", "histolab-no-tissue-green-pen.png"):
        rgb = read_image(shared_data / NEG / name)
        t = tissue_mask(rgb)
        assert t.mean() > 0.5 and (ink_mask(rgb, t) >= t).all(), name
    tissue_images = [*sorted((shared_data / "infocus").glob("*.png")),
                     *sorted((shared_data / "infocus-40x").glob("*/*.png"))]
    assert len(tissue_images) > 40
    for p in tissue_images:
        rgb = read_image(p)
        t = tissue_mask(rgb)
        ink = ink_mask(rgb, t)
        assert (ink & t).sum() <= 0.03 * t.sum(), p.name


def test_sample_offers_no_ink_patches(shared_data: Path, tmp_path: Path) -> None:
    """`convfocus sample` takes the darkest patches first: ink is dark, so it took ink."""
    from convfocus.grading.tissue import ink_mask
    from convfocus.training.sampling import sample_slide

    for name in ("histolab-no-tissue-red-pen.png", "histolab-no-tissue-green-pen.png"):
        with pytest.raises(NoTissueError):
            sample_slide(shared_data / NEG / name, k=4, patch_px=64, mpp=1.0,
                         rng=np.random.default_rng(0))
    path = shared_data / NEG / "histolab-high-nuclei-score-red-pen-level1.png"
    rgb = read_image(path)
    ink = ink_mask(rgb, tissue_mask(rgb))
    picked = sample_slide(path, k=8, n_candidates=200, mpp=1.0, rng=np.random.default_rng(0))
    assert len(picked) == 8
    for (x, y), _, _ in picked:  # 300 px at 0.25 µm/px = 75 px of this 1 µm/px image
        assert ink[y : y + 75, x : x + 75].mean() <= 0.02, (x, y)


# --- blank, fat and tiny slides ----------------------------------------------------------------


def test_blank_slide_is_a_qc_result_not_a_failure(tmp_path: Path, fixture_model: Path,
                                                  capsys) -> None:
    """A blank slide failed (exit 1, ERROR row) with "no tissue found (luma rule 0 < Y <= 0.8)"."""
    blank = write_pyramidal_tiff(tmp_path / "blank-glass.tif",
                                 np.full((768, 1024, 3), 250, np.uint8), mpp=0.25)
    out = tmp_path / "out"
    rc, stdout, err = scan(capsys, fixture_model, out, blank)
    assert rc == 0 and "Traceback" not in err and "luma" not in err + stdout
    folder = out / "blank-glass"
    assert all((folder / f).is_file() for f in OUTPUT_FILES)
    s = _summary(folder)
    assert s["verdict"]["verdict"] == "no-tissue" and s["windows_graded"] == 0
    reason = "no tissue dense enough to grade: glass, fat or very pale tissue"
    assert s["verdict"]["reasons"] == [reason]
    assert f"blank-glass: NO-TISSUE (histology): {reason}" in stdout
    html = (folder / "report.html").read_text()
    assert reason in html and "Nothing graded" in html and "luma" not in html
    row = _index(out)["blank-glass"]
    assert (row["status"], row["verdict"], row["error"]) == ("done", "no-tissue", "")
    assert s["oof_share"] is None and row["oof_share"] == ""  # no tissue, no share
    assert np.load(folder / "classmap.npy").max() == -1
    assert (folder / "tiles.csv").read_text().count("\n") == 1  # the header alone


def test_fat_is_explained_in_plain_words(shared_data: Path, tmp_path: Path,
                                         fixture_model: Path, capsys) -> None:
    """Mostly fat: what little is graded is too little, and the reason says why in words."""
    path = shared_data / "infocus" / "histolab-low-nuclei-score-level0.png"
    rc, _, _ = scan(capsys, fixture_model, tmp_path / "out", path)
    assert rc == 0
    v = _summary(tmp_path / "out" / path.stem)["verdict"]
    assert v["verdict"] in ("insufficient-tissue", "no-tissue")
    assert "fat" in v["reasons"][0] and "luma" not in " ".join(v["reasons"])


def test_a_tiny_slide_gets_insufficient_tissue_not_a_verdict_on_focus(
        tmp_path: Path, tissue_rgb: np.ndarray, fixture_model: Path, capsys) -> None:
    """A 0.01 mm² "slide" was given RESCAN: there was no least gradable tissue."""
    tiny = write_pyramidal_tiff(tmp_path / "tiny-field.tif",
                                np.ascontiguousarray(tissue_rgb[400:800, 400:800]), mpp=0.25)
    rc, stdout, _ = scan(capsys, fixture_model, tmp_path / "out", tiny)
    assert rc == 0
    s = _summary(tmp_path / "out" / "tiny-field")
    assert 0.005 < s["tissue_area_mm2"] < 0.02
    assert set(s["verdicts"].values()) == {"insufficient-tissue"}
    assert "too little tissue for a verdict" in s["verdict"]["reasons"][0]
    assert "0.5 mm²" in s["verdict"]["reasons"][0]
    assert "INSUFFICIENT-TISSUE (histology): too little tissue for a verdict (needs 0.5 mm²)" \
        in stdout


# --- the share the verdict counts, and one legend ----------------------------------------------


SPEC = ModelSpec(name="convfocus-test", version="1", arch="lite")


def _frozen_section_like() -> SlideResult:
    """40 x 40 cells (1.6 mm² at 0.25 µm/px): 68.75 % at class 12, the rest at class 3."""
    cm = np.full((40, 40), 3, np.int16)
    cm[:, :27] = 12  # 27.5 columns' worth: 1100 of 1600 cells
    cm[:20, 27] = 12
    grid = GridGeometry((0.0, 0.0), 128.0, 139.0, 40, 40)
    probs = np.zeros((40, 40, 30), np.float16)
    probs[np.arange(40)[:, None], np.arange(40)[None, :], cm] = 1.0
    info = SlideInfo("/slides/frozen.svs", (40 * 128 + 11, 40 * 128 + 11), 0.25)
    return SlideResult(info, SPEC, grid, cm, probs, np.full((320, 320, 3), 230, np.uint8),
                       16.0)


def test_report_and_index_show_the_share_the_verdict_counts() -> None:
    """PASS stood next to "OOF share (class >= 10) 68.6 %": two thresholds on one page."""
    result = _frozen_section_like()
    s = rp.build_summary(result)
    assert s["verdict"]["verdict"] == "pass"  # histology counts class >= 15: none here
    assert (s["oof_share"], s["oof_min_class"]) == (0.0, 15)
    assert s["pattern"]["oof_share"] == pytest.approx(0.6875)  # the pattern keeps class >= 10
    html = rp.render_report_html(s, None, None, None)
    assert "Out of focus (class ≥ 15)</th><td>0.0 %" in html
    assert "OOF share" not in html  # 68.8 % is in the bucket table, as classes 10-14
    page = rp.render_index_html([rp.index_row(s, "frozen/report.html")])
    assert "<span class='muted'>class ≥ 15:</span> 0.0 %</td>" in page
    cyto = rp.build_summary(dataclasses.replace(result, profile="cytology"))
    assert (cyto["oof_share"], cyto["oof_min_class"]) == (pytest.approx(0.6875), 10)
    assert cyto["verdict"]["verdict"] == "rescan"


def test_overlay_png_has_no_legend_of_its_own(tmp_path: Path, pyramid_tiff: Path,
                                              fixture_model: Path, capsys) -> None:
    """overlay.png carried a tiny colour bar that the report showed beside its own legend."""
    rc, _, _ = scan(capsys, fixture_model, tmp_path / "out", pyramid_tiff)
    assert rc == 0
    folder = tmp_path / "out" / pyramid_tiff.stem
    overlay = read_image(folder / "overlay.png")
    assert overlay.shape == read_image(folder / "thumbnail.png").shape  # the thumbnail's pixels
    html = (folder / "report.html").read_text()
    assert html.count("class='jet'") == 1  # the report's one legend, under the overlay
    uri = re.search(r"<img class='wide' alt='[^']*' src='data:image/png;base64,([^']+)'", html)
    shown = cv2.imdecode(np.frombuffer(base64.b64decode(uri.group(1)), np.uint8), 1)
    assert max(shown.shape[:2]) == 1400 < max(overlay.shape[:2])  # reduced for the page
    assert read_image(folder / "heatmap.png").shape[1] > 130  # heatmap.png keeps its legend


# --- coarse slides -------------------------------------------------------------------------------


def test_sharp_floor_rises_with_the_pixel_size() -> None:
    floors = [rp.sharp_floor_class(r) for r in (1, 1.5, 2, 3, 4, 6, 8, 16)]
    assert floors == sorted(floors) and floors[0] == 0 and floors[-1] <= 29
    assert rp.sharp_floor_class(4.0) == pytest.approx(dict(rp.SHARP_FLOOR)[4.0])
    assert rp.coarse_slide(0.3, 0.25) is None  # 1.2x: no note
    assert rp.coarse_slide(1.0, 0.25, native=True) is None  # its own pixels: no enlargement


def test_a_coarse_slide_says_what_its_pixels_cost(tmp_path: Path, tissue_rgb: np.ndarray,
                                                  fixture_model: Path, capsys) -> None:
    """The TCGA frozen section at 1 µm/px graded about class 10 everywhere, with no word why."""
    slide = write_pyramidal_tiff(tmp_path / "coarse.tif",
                                 np.ascontiguousarray(tissue_rgb[::2, ::2]), mpp=1.0)
    out = tmp_path / "out"
    rc, stdout, _ = scan(capsys, fixture_model, out, slide)
    assert rc == 0
    c = _summary(out / "coarse")["coarse_slide"]
    floor = dict(rp.SHARP_FLOOR)[4.0]  # the shipped model's, measured by check-model
    assert c["ratio"] == 4.0 and c["sharp_floor_class"] == pytest.approx(floor)
    about = f"about class {floor:.0f}"
    assert about in c["note"] and "--native" in c["note"]
    assert "coarse slide:" in stdout and about in stdout and "--native" in stdout
    html = (out / "coarse" / "report.html").read_text()
    assert "Coarse slide." in html and about in html
    rc, stdout, _ = scan(capsys, fixture_model, tmp_path / "native", slide, extra=("--native",))
    assert rc == 0 and _summary(tmp_path / "native" / "coarse")["coarse_slide"] is None
    assert "coarse slide" not in stdout


# --- file modes ----------------------------------------------------------------------------------


def test_every_output_file_is_0644_under_a_normal_umask(tmp_path: Path, pyramid_tiff: Path,
                                                         fixture_model: Path, capsys) -> None:
    """thumbnail.png and classmap.png were written 0600: unreadable to the rest of the lab."""
    old = os.umask(0o022)
    try:
        rc, _, _ = scan(capsys, fixture_model, tmp_path / "out", pyramid_tiff)
    finally:
        os.umask(old)
    assert rc == 0
    folder = tmp_path / "out" / pyramid_tiff.stem
    files = [folder / f for f in OUTPUT_FILES] + [tmp_path / "out" / "index.csv",
                                                  tmp_path / "out" / "index.html"]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == "0o755"
