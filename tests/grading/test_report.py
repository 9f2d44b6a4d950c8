"""summary.json contents, the self-contained report page, the sortable batch index."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from convfocus.grading import heatmap as hm
from convfocus.grading import report as rp
from convfocus.grading.regions import oof_regions
from convfocus.grading.result import SlideInfo, SlideResult
from convfocus.types import GridGeometry, ModelSpec

GRID = {"l0_origin_px": [16, 8], "l0_stride_px": 128, "l0_window_px": 139, "rows": 20,
        "cols": 30}
GEOMETRY = GridGeometry.from_dict(GRID)
DIMS = (16 + 29 * 128 + 139 + 5, 8 + 19 * 128 + 139 + 3)
SPEC = ModelSpec(name="convfocus-test", version="9.9", arch="lite")


def _classmap() -> np.ndarray:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (20, 30))
    cm[:, 10:13] = 21  # a vertical lane
    cm[:3, :] = -1
    return cm


def _result(**kw) -> SlideResult:
    cm = kw.pop("classmap", _classmap())
    probs = np.zeros((*cm.shape, 30), np.float16)
    rr, cc = np.nonzero(cm >= 0)
    probs[rr, cc, cm[rr, cc]] = 1.0
    args = {
        "slide": SlideInfo("/slides/case <1>.svs", DIMS, 0.25, mpp_source="metadata"),
        "spec": SPEC, "grid": GEOMETRY, "classmap": cm, "probs": probs,
        "thumbnail": np.full((60, 90, 3), 235, np.uint8), "th_downsample": DIMS[0] / 90,
        "seconds": 3.21,
    }
    args.update(kw)
    return SlideResult(**args)


def _summary(result: SlideResult | None = None, **kw):
    return rp.build_summary(result or _result(), created_utc="2024-01-01T00:00:00", **kw)


def test_summary_contents():
    s = _summary(_result(profile="cytology"))
    json.dumps(s, allow_nan=False)
    assert s["grid"] == GRID
    assert s["dimensions"] == list(DIMS) and s["mpp"] == 0.25 and s["model_mpp"] == 0.25
    assert s["input"] == "/slides/case <1>.svs" and s["slide"] == "case <1>"
    assert s["model"]["name"] == "convfocus-test" and s["model"]["version"] == "9.9"
    assert s["native"] is False and s["mpp_source"] == "metadata"
    n = int((_classmap() >= 0).sum())
    assert s["windows_graded"] == n
    assert s["tissue_area_mm2"] == pytest.approx(n * (128 * 0.25 / 1000) ** 2, rel=1e-3)
    assert "stride" in s["tissue_area_note"]
    assert sum(s["bucket_shares"].values()) == pytest.approx(1.0)
    assert s["bucket_shares"]["20-29"] == pytest.approx(3 / 30)
    assert sum(s["class_counts"]) == n
    assert s["pattern"]["scan_lanes"] is True and s["pattern"]["lane_direction"] == "vertical"
    assert s["verdict"]["profile"] == "cytology" and s["verdict"]["verdict"] == "review"  # 10 % OOF
    assert set(s["verdicts"]) >= {"histology", "cytology", "lymphoma", "ai"}
    assert s["regions"]["count"] == 1 and s["regions"]["worst"][0]["severity"] == "severe"
    assert s["runtime_s"] == pytest.approx(3.21)


def test_summary_uses_given_regions_and_the_results_own_otherwise():
    result = _result()
    geo = oof_regions(result.classmap, GEOMETRY, min_class=25)  # none
    s = _summary(result, geojson=geo)
    assert s["regions"]["count"] == 0 and s["regions"]["worst"] == []
    assert _summary(result)["regions"]["count"] == len(result.regions["features"]) == 1
    # another OOF threshold draws the regions again with it
    assert _summary(result, oof_min_class=25)["regions"]["count"] == 0


def test_summary_mean_expected_class_from_probabilities():
    probs = np.zeros((20, 30, 30), np.float16)
    probs[..., 4] = 0.5
    probs[..., 6] = 0.5
    s = _summary(_result(probs=probs))
    assert s["mean_expected_class"] == pytest.approx(5.0)
    assert s["runtime_s"] == pytest.approx(3.21)  # the grading time unless given
    assert _summary(runtime_s=7.0)["runtime_s"] == 7.0


def _report_html(summary=None):
    cm = _classmap()
    thumb = np.full((60, 90, 3), 235, np.uint8)
    s = summary or _summary()
    return rp.render_report_html(
        s,
        hm.overlay_png(thumb, cm, GEOMETRY, l0_dimensions=DIMS),
        hm.heatmap_png(cm),
        hm.histogram_png(cm),
        geojson=oof_regions(cm, GEOMETRY),
    )


def test_a_student_model_names_its_teacher_in_summary_and_report():
    from dataclasses import replace

    assert _summary()["model"]["distilled_from"] is None
    assert "student" not in _report_html()
    student = replace(SPEC, name="convfocus-fast", arch="dw16",
                      training={"distilled_from": {"name": "convfocus-default"}})
    s = _summary(_result(spec=student))
    assert s["model"]["distilled_from"] == "convfocus-default"
    assert "a faster student of convfocus-default" in _report_html(s)


def test_report_is_self_contained():
    page = _report_html()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    srcs = re.findall(r"""\bsrc\s*=\s*['"]([^'"]*)""", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "href=" not in page


def test_report_shows_verdict_regions_and_escapes_text():
    page = _report_html()
    assert "rescan" in page.lower()
    assert "case &lt;1&gt;" in page and "case <1>" not in page
    assert "Worst out-of-focus regions" in page and "severe" in page
    for label in ("0–4", "5–9", "10–14", "15–19", "20–29"):
        assert label in page


def test_index_page_is_sortable_and_self_contained():
    rows = [
        rp.index_row(_summary(), "case/report.html"),
        {"name": "b", "verdict": "pass", "oof_share": 0.01, "mean_class": 1.2,
         "report": "b/report.html"},
        {"name": "evil", "verdict": "review", "report": "javascript:alert(1)"},
        {"name": "broken", "error": "cannot read <slide>"},
    ]
    page = rp.render_index_html(rows)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count("<tr>") == 1 + len(rows)
    assert "href='case/report.html'" in page
    assert "javascript:" not in page  # the colon is percent-encoded: a relative link
    assert "cannot read &lt;slide&gt;" in page
    assert "addEventListener('click'" in page
    assert page.count("data-type=") == 9  # ... and Ink (mm²)
