"""Per-slide ``summary.json`` and ``report.html``, and the batch ``index.html``.

:func:`build_summary` turns a graded slide (:class:`~convfocus.grading.result.SlideResult`)
into the summary dictionary;
:func:`render_report_html` makes one self-contained page of it (images embedded
as base64 data URIs, inline CSS, no external resources); :func:`render_index_html`
lists many slides in a table sortable by clicking its headers. The scan writes them
with :mod:`convfocus.io.atomic`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

import numpy as np

from convfocus import NUM_CLASSES, __version__
from convfocus.grading.heatmap import bucket_colors, class_colors
from convfocus.grading.regions import (
    BUCKETS,
    OOF_MIN_CLASS,
    PROFILES,
    SEVERITY_COLORS,
    bucket_label,
    bucket_shares,
    get_profile,
    oof_pattern,
    oof_regions,
)
from convfocus.grading.result import SlideResult
from convfocus.io.atomic import to_jsonable

SUMMARY_SCHEMA = 1

TISSUE_AREA_NOTE = (
    "graded cells x stride^2 x mpp^2: each graded window counts the stride square it owns "
    "(windows overlap, so the window area would count some tissue twice); tissue in "
    "cells below the grid's tissue threshold is not included"
)

INK_NOTE = (
    "marker ink and other colour that is not stained tissue (green, blue, strongly "
    "saturated red; pieces of the tissue mask that are mostly such colour), left out of "
    "grading; area from the thumbnail, share of the slide's tissue + ink"
)

VERDICT_COLORS = {"pass": "#1b7f3b", "review": "#b26a00", "rescan": "#c62828",
                  "insufficient-tissue": "#6a4c93", "no-tissue": "#4a6572", "error": "#555555"}
_VERDICT_ORDER = {"pass": 0, "review": 1, "rescan": 2, "insufficient-tissue": 3, "no-tissue": 4,
                  "error": 5}

#: Pixel size ratio (slide / model) above which a resampled slide gets a note: its
#: enlargement alone blurs it by classes.
COARSE_RATIO = 1.5

#: ``(ratio, class)``: the mean class that sharp tissue grades at when the slide's pixels
#: are ``ratio`` times the model's and the scan enlarges it to the model's pixel size.
#: Measured with the shipped model (convfocus-default 0.2.0) by ``convfocus check-model``
#: (``evaluation.battery.sharp_floor``, its JSON's ``sharp_floor``): the 11 held-out sharp
#: images, each reduced to the coarser pixel size (area) and enlarged back (Lanczos, the
#: scan's resize), the median over images (range at 4x: 7.4-8.3; at 8x: 12.7-14.1). A scan
#: cannot be sharper than its pixels, so this is the floor of the classes of such a slide.
#: A new default model brings its own (``tests/evaluation/test_battery.py`` checks it).
SHARP_FLOOR = ((1.0, 0.0), (1.5, 1.0), (2.0, 1.3), (3.0, 5.1), (4.0, 7.8), (6.0, 10.9),
               (8.0, 13.5))


def sharp_floor_class(ratio: float) -> float:
    """The class a perfectly sharp slide grades at when its pixels are ``ratio`` times the
    model's (:data:`SHARP_FLOOR`, interpolated in log ratio; extended linearly beyond
    the last point, at most the top class)."""
    xs = np.log([r for r, _ in SHARP_FLOOR])
    ys = np.array([c for _, c in SHARP_FLOOR])
    x = math.log(max(float(ratio), 1.0))
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(min(NUM_CLASSES - 1, ys[-1] + slope * (x - xs[-1])))


def coarse_slide(slide_mpp: float, model_mpp: float, *, native: bool = False
                 ) -> dict[str, Any] | None:
    """What enlarging a coarse slide does to its classes, or None when the slide is
    graded at its own pixels (``native``) or is at most :data:`COARSE_RATIO` times
    coarser than the model.

    Returns ``ratio``, ``sharp_floor_class`` (:func:`sharp_floor_class`) and ``note``, a
    sentence for people.
    """
    ratio = float(slide_mpp) / float(model_mpp)
    if native or not ratio > COARSE_RATIO:
        return None
    floor = sharp_floor_class(ratio)
    effect = (f"Classes up to about {floor:.0f} say nothing about focus here"
              if floor >= 3 else "The enlargement costs little")
    note = (f"This slide's pixels ({slide_mpp:g} µm) are {ratio:.1f}x the model's "
            f"({model_mpp:g} µm), so it is enlarged {ratio:.1f}x to be graded, and a scan "
            f"cannot be sharper than its pixels: a perfectly sharp slide at this pixel size "
            f"grades about class {floor:.0f}. {effect}. To grade the slide's own pixels, "
            f"scan it with --native (classes then count blur in its pixels, {ratio:.1f}x "
            f"larger than the model's).")
    return {"ratio": round(ratio, 3), "sharp_floor_class": round(floor, 1), "note": note}


# --- summary -----------------------------------------------------------------------------------


def build_summary(
    result: SlideResult,
    *,
    runtime_s: float | None = None,
    geojson: Mapping[str, Any] | None = None,
    oof_min_class: int = OOF_MIN_CLASS,
    max_regions: int = 10,
    created_utc: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` dictionary of one graded slide (JSON-ready, no NaN).

    Parameters
    ----------
    result
        The graded slide: its path, size, pixel size, the model, the grid (stored under
        ``grid``), the class map and probabilities, and the profile of the main verdict
        (all profiles are listed too).
    runtime_s
        Wall time of the scan (default: the time spent grading).
    geojson
        The slide's OOF regions when they were drawn with other settings than
        ``result.regions``; ``None`` takes ``result.regions``.
    oof_min_class
        Class from which a cell counts as OOF for the regions and the pattern (their own
        ``min_class``); ``oof_share`` and the top-level ``oof_min_class`` are the main
        verdict's, under its profile's class threshold.
    max_regions
        How many of the worst regions to list.
    """
    spec, g, cm, probs = result.spec, result.grid, result.classmap, result.probs
    slide = result.slide
    prof = get_profile(result.profile)
    tissue = cm >= 0
    n = int(tissue.sum())
    counts = np.bincount(cm[tissue].ravel(), minlength=spec.num_classes)[: spec.num_classes]
    mean_class = float(cm[tissue].mean()) if n else None

    mean_expected = None
    if n:  # float64 for the tissue cells only: memory stays bounded
        pt = probs[tissue].astype(np.float64)
        pt /= np.maximum(pt.sum(axis=1, keepdims=True), 1e-12)
        mean_expected = float((pt @ np.arange(spec.num_classes)).mean())

    tissue_area_mm2 = result.tissue_mm2

    if geojson is None:
        geojson = result.regions if oof_min_class == OOF_MIN_CLASS else oof_regions(
            cm, g, min_class=oof_min_class, mpp=slide.mpp, l0_dimensions=slide.dimensions)
    features = list(geojson.get("features", []))
    worst = [_region_row(f.get("properties", {})) for f in features[:max_regions]]

    pattern = oof_pattern(cm, min_class=oof_min_class, grid=g)
    main = result.verdict(prof)
    created = created_utc or _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    summary: dict[str, Any] = {
        "schema_version": SUMMARY_SCHEMA,
        "slide": _stem(slide.path),
        "input": slide.path,
        "format": slide.format,
        "dimensions": [int(slide.dimensions[0]), int(slide.dimensions[1])],
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "model_mpp": spec.mpp,
        "native": bool(result.native),
        "graded_mpp": result.graded_mpp,
        "model": {
            "name": spec.name,
            "version": spec.version,
            "arch": spec.arch,
            "window_px": spec.window_px,
            "stride_px": spec.stride_px,
            "num_classes": spec.num_classes,
            "blur": spec.blur,
            # a student (`--model fast`) names its teacher: its grades are the teacher's,
            # approximated (docs/model-card.md, "The fast grader")
            "distilled_from": (spec.training.get("distilled_from") or {}).get("name"),
        },
        "grid": g.to_dict(),
        "settings": dict(result.settings),
        "windows_graded": n,
        "tissue_area_mm2": round(tissue_area_mm2, 4),
        "tissue_area_note": TISSUE_AREA_NOTE,
        "ink_area_mm2": round(result.ink_mm2, 4),
        "ink_share": round(result.ink_share, 4),
        "ink_note": INK_NOTE,
        "coarse_slide": coarse_slide(slide.mpp, spec.mpp, native=result.native),
        "mean_class": None if mean_class is None else round(mean_class, 3),
        "mean_expected_class": None if mean_expected is None else round(mean_expected, 3),
        "oof_min_class": main["oof_min_class"],
        "oof_share": main["oof_share"] if n else None,  # no tissue: no share
        "bucket_shares": bucket_shares(cm),
        "class_counts": [int(v) for v in counts],
        "pattern": pattern,
        "verdict": main,
        "verdicts": {name: result.verdict(p)["verdict"] for name, p in PROFILES.items()},
        "regions": {"count": len(features), "min_class": oof_min_class, "worst": worst},
        "runtime_s": round(float(result.seconds if runtime_s is None else runtime_s), 3),
        "convfocus_version": __version__,
        "created_utc": created,
    }
    if prof.name not in PROFILES:
        summary["verdicts"][prof.name] = main["verdict"]
    if extra:
        summary.update(dict(extra))
    return to_jsonable(summary)  # type: ignore[no-any-return]


def _stem(path: str | Path) -> str:
    p = PurePath(str(path))
    return p.name if not p.suffix else p.stem


def _region_row(props: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("rank", "name", "severity", "mean_class", "max_class", "n_cells", "area_um2",
            "centroid_l0_px", "bbox_l0_px")
    return {k: props.get(k) for k in keys}


def index_row(summary: Mapping[str, Any], report_href: str | None) -> dict[str, Any]:
    """One row of :func:`render_index_html` from a slide's summary."""
    v = summary.get("verdict") or {}
    return {
        "name": summary.get("slide") or _stem(str(summary.get("input", ""))),
        "verdict": v.get("verdict") if isinstance(v, Mapping) else v,
        "profile": v.get("profile") if isinstance(v, Mapping) else None,
        "oof_share": summary.get("oof_share"),
        "oof_min_class": summary.get("oof_min_class"),
        "mean_class": summary.get("mean_class"),
        "pattern": (summary.get("pattern") or {}).get("pattern"),
        "scan_lanes": (summary.get("pattern") or {}).get("scan_lanes"),
        "tissue_area_mm2": summary.get("tissue_area_mm2"),
        "ink_area_mm2": summary.get("ink_area_mm2"),
        "ink_share": summary.get("ink_share"),
        "report": report_href,
    }


# --- HTML helpers ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _data_uri(png: bytes | None) -> str | None:
    if not png:
        return None
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("expected PNG bytes")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pct(x: Any, digits: int = 1) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    return f"{100.0 * x:.{digits}f} %"


def _num(x: Any, digits: int = 2) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def _href(target: str) -> str:
    """A relative link, percent-encoded so no scheme (``javascript:``) can slip in."""
    return _e(quote(str(target).replace("\\", "/"), safe="/#"))


def _badge(v: str | None, *, big: bool = False) -> str:
    color = VERDICT_COLORS.get(str(v), "#555555")
    cls = "badge big" if big else "badge"
    return f'<span class="{cls}" style="background:{color}">{_e(v or "–")}</span>'


def _jet_gradient(num_classes: int = NUM_CLASSES) -> str:
    colors = class_colors(num_classes)
    stops = ", ".join(
        f"{_hex(c)} {100.0 * i / num_classes:.2f}% {100.0 * (i + 1) / num_classes:.2f}%"
        for i, c in enumerate(colors)
    )
    return f"linear-gradient(to right, {stops})"


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0;color:#1d1d1f;background:#f6f7f9;line-height:1.4}
header{background:#fff;border-bottom:1px solid #dde1e6;padding:16px 28px;display:flex;
  align-items:center;gap:20px;flex-wrap:wrap}
header h1{font-size:20px;margin:0;font-weight:600;word-break:break-all}
main{padding:20px 28px;max-width:1500px}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:16px 20px;
  margin-bottom:18px}
h2{font-size:16px;margin:0 0 12px 0;font-weight:600}
.cols{display:grid;grid-template-columns:minmax(0,3fr) minmax(300px,2fr);gap:18px}
@media (max-width:1000px){.cols{grid-template-columns:1fr}}
img{max-width:100%;height:auto;display:block;border:1px solid #e3e6ea}
img.wide{width:100%}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef1;vertical-align:top}
th{font-weight:600;color:#444;background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-weight:600;
  text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.badge.big{font-size:22px;padding:6px 18px;border-radius:6px}
.verdict-box{display:flex;align-items:center;gap:14px;flex-wrap:wrap}
.reasons{margin:6px 0 0 0;padding-left:20px;font-size:14px}
.muted{color:#666;font-size:13px}
.stack{display:flex;height:26px;border-radius:4px;overflow:hidden;border:1px solid #ccd;
  margin:6px 0 10px 0}
.stack div{height:100%}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;
  vertical-align:-1px;border:1px solid rgba(0,0,0,.25)}
.jet{height:14px;border:1px solid #ccd;border-radius:3px;margin-top:6px}
.jet-labels{display:flex;justify-content:space-between;font-size:12px;color:#555}
.keys{font-size:12px;color:#555;margin-top:6px}
.keys .swatch{width:18px}
.hatch{background:repeating-linear-gradient(135deg,#1e1e1e 0 2px,#999 2px 4px,#f5f5f5 4px 6px,#999 6px 8px)}
.note{background:#fff8e1;border:1px solid #f0d48a;border-radius:8px;padding:10px 16px;
  margin-bottom:18px;font-size:14px}
footer{padding:6px 28px 24px 28px;color:#777;font-size:12px}
"""


def _summary_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = s.get("model") or {}
    pattern = s.get("pattern") or {}
    dims = s.get("dimensions") or [None, None]
    lanes = "no"
    if pattern.get("scan_lanes"):
        pos = pattern.get("lane_positions_l0_px") or pattern.get("lane_positions") or []
        unit = " px" if pattern.get("lane_positions_l0_px") else " (grid)"
        spans = ", ".join(f"{_num(a, 0)}–{_num(b, 0)}" for a, b in pos)
        lanes = f"yes, {_e(pattern.get('lane_direction'))}: {spans}{unit}"
    src = f" ({_e(s.get('mpp_source'))})" if s.get("mpp_source") else ""
    model_mpp = _num(s.get("model_mpp"), 4)
    pixel = f"slide {_num(s.get('mpp'), 4)} µm/px{src}; model {model_mpp} µm/px"
    graded = (
        "slide's own pixel size (native)"
        if s.get("native")
        else f"model pixel size ({model_mpp} µm/px)"
    )
    detail = (
        f"{_e(model.get('arch'))}, window {_e(model.get('window_px'))} px, "
        f"stride {_e(model.get('stride_px'))} px"
    )
    if model.get("distilled_from"):
        detail += (f"; a faster student of {_e(model['distilled_from'])}, less accurate on "
                   "pale or sparse tissue")
    model_txt = (
        f"{_e(model.get('name'))} {_e(model.get('version'))} "
        f"<span class='muted'>({detail})</span>"
    )
    coarse = s.get("coarse_slide")
    if isinstance(coarse, Mapping):
        pixel += (f"<br><span class='muted'>{_num(coarse.get('ratio'), 1)}x coarser than the "
                  f"model: sharp tissue grades about class "
                  f"{_num(coarse.get('sharp_floor_class'), 0)} (see the note above)</span>")
    mean = _num(s.get("mean_class"), 2)
    if s.get("mean_expected_class") is not None:
        mean += f" <span class='muted'>(expected {_num(s.get('mean_expected_class'), 2)})</span>"
    v = s.get("verdict")
    profile = v.get("profile") if isinstance(v, Mapping) else None
    share = _pct(s.get("oof_share"))
    if profile:
        share += f" <span class='muted'>(the {_e(profile)} verdict's threshold)</span>"
    regions = s.get("regions") or {}
    rmin = regions.get("min_class", pattern.get("oof_min_class"))
    tissue = (f"{_mm2(s.get('tissue_area_mm2'))} mm² <span class='muted'>(glass, fat, very "
              "pale tissue and ink are not graded)</span>")
    return [
        ("Input", _e(s.get("input"))),
        ("Dimensions (level 0)", f"{_num(dims[0])} × {_num(dims[1])} px"),
        ("Pixel size", pixel),
        ("Graded at", graded),
        ("Model", model_txt),
        ("Windows graded", _num(s.get("windows_graded"))),
        ("Tissue graded", tissue),
        ("Ink, not graded", _ink(s)),
        ("Mean class", mean),
        (f"Out of focus (class ≥ {_e(s.get('oof_min_class'))})", share),
        (f"OOF pattern (class ≥ {_e(rmin)})", _e(pattern.get("pattern"))),
        ("Scan lanes", lanes),
        (f"OOF regions (class ≥ {_e(rmin)})", _num(regions.get("count"))),
        ("Runtime", f"{_num(s.get('runtime_s'), 1)} s"),
    ]


def _mm2(x: Any) -> str:
    """An area in mm²: two decimals, two significant digits below 0.1."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return "–"
    return f"{x:,.2f}" if x == 0 or abs(x) >= 0.1 else f"{x:.2g}"


def _ink(s: Mapping[str, Any]) -> str:
    area, share = s.get("ink_area_mm2"), s.get("ink_share")
    if not isinstance(area, (int, float)):
        return "–"
    if not area:
        return "none found"
    return f"{_mm2(area)} mm² <span class='muted'>({_pct(share)} of tissue + ink)</span>"


def render_report_html(
    summary: Mapping[str, Any],
    overlay_png: bytes | None,
    heatmap_png: bytes | None,
    histogram_png: bytes | None,
    *,
    geojson: Mapping[str, Any] | None = None,
    max_regions: int = 10,
    title: str | None = None,
) -> str:
    """One self-contained HTML page for a slide: verdict, overlay with legend, summary
    table, bucket shares, class histogram, heatmap and the worst regions.

    ``overlay_png`` is the overlay without a legend (the page draws the one legend under
    it); ``heatmap_png`` the heatmap figure, which carries its own. Images are embedded as
    base64 ``data:`` URIs; the page loads nothing from outside. Regions come from
    ``geojson`` when given, else from ``summary["regions"]["worst"]``.
    """
    s = summary
    name = s.get("slide") or _stem(str(s.get("input", "slide")))
    v = s.get("verdict") or {}
    verdict_name = v.get("verdict") if isinstance(v, Mapping) else str(v)
    reasons = v.get("reasons", []) if isinstance(v, Mapping) else []
    profile_name = v.get("profile") if isinstance(v, Mapping) else None
    prof = PROFILES.get(str(profile_name))

    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
    add("<meta name='viewport' content='width=device-width, initial-scale=1'>")
    add(f"<title>{_e(title or f'OOF report – {name}')}</title>")
    add(f"<style>{_CSS}</style></head><body>")
    add(f"<header><h1>{_e(title or name)}</h1>")
    add(f"<div class='verdict-box'>{_badge(verdict_name, big=True)}<div>")
    add(f"<div><b>profile:</b> {_e(profile_name)}")
    if prof is not None:
        add(f" <span class='muted'>– {_e(prof.description)}</span>")
    add("</div>")
    if reasons:
        add("<ul class='reasons'>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    add("</div></div></header><main>")
    coarse = s.get("coarse_slide")
    if isinstance(coarse, Mapping) and coarse.get("note"):
        add(f"<div class='note'><b>Coarse slide.</b> {_e(coarse.get('note'))}</div>")

    # overlay + summary table
    add("<div class='cols'><section><h2>Out-of-focus classes over the slide</h2>")
    uri = _data_uri(overlay_png)
    if uri:
        add(f"<img class='wide' alt='OOF classes over the slide thumbnail' src='{uri}'>")
    else:
        add("<p class='muted'>no overlay image</p>")
    add(f"<div class='jet' style='background:{_jet_gradient()}'></div>")
    add("<div class='jet-labels'><span>0 in focus</span><span>5</span><span>10</span>"
        "<span>15</span><span>20</span><span>29 strongly out of focus</span></div>")
    add("<div class='keys'>OOF class of each graded window · uncoloured: not graded (glass, "
        "fat, very pale tissue)")
    if s.get("ink_area_mm2"):
        add(" · <span class='swatch hatch'></span>ink, not graded")
    add("</div>")
    add("</section><section><h2>Summary</h2><table>")
    for label, value in _summary_rows(s):
        add(f"<tr><th>{_e(label)}</th><td>{value}</td></tr>")
    verdicts = s.get("verdicts") or {}
    if verdicts:
        cells = " ".join(f"{_e(k)}&nbsp;{_badge(val)}" for k, val in verdicts.items())
        add(f"<tr><th>Verdict by profile</th><td>{cells}</td></tr>")
    add("</table></section></div>")

    if not s.get("windows_graded"):
        add("<section><h2>Nothing graded</h2><p class='muted'>No window of this slide holds "
            "enough tissue to grade; see the verdict above.</p></section>")
    else:
        # buckets
        shares = s.get("bucket_shares") or {}
        colors = bucket_colors(BUCKETS)
        add("<section><h2>Share of tissue per OOF bucket</h2><div class='stack'>")
        for (lo, hi), col in zip(BUCKETS, colors):
            share = shares.get(bucket_label((lo, hi)), 0.0) or 0.0
            if share > 0:
                add(f"<div title='{lo}-{hi}: {_pct(share)}' "
                    f"style='width:{100.0 * share:.3f}%;background:{_hex(col)}'></div>")
        add("</div><table><tr><th>Bucket (classes)</th><th class='num'>Share of tissue</th>"
            "<th class='num'>Windows</th></tr>")
        counts = s.get("class_counts") or []
        for (lo, hi), col in zip(BUCKETS, colors):
            n_b = sum(int(c) for c in counts[lo : hi + 1]) if counts else None
            add(f"<tr><td><span class='swatch' style='background:{_hex(col)}'></span>{lo}–{hi}</td>"
                f"<td class='num'>{_pct(shares.get(bucket_label((lo, hi))))}</td>"
                f"<td class='num'>{_num(n_b)}</td></tr>")
        add("</table></section>")

        uri = _data_uri(histogram_png)
        if uri:
            add("<section><h2>Class histogram</h2>"
                f"<img alt='share of tissue per OOF class' src='{uri}'></section>")

        # regions
        rows = _worst_regions(s, geojson, max_regions)
        add("<section><h2>Worst out-of-focus regions</h2>")
        if rows:
            add("<table><tr><th>#</th><th>Severity</th><th class='num'>Mean class</th>"
                "<th class='num'>Max class</th><th class='num'>Windows</th>"
                "<th class='num'>Area (mm²)</th><th>Centre (level-0 px)</th>"
                "<th>Box x0, y0 – x1, y1 (level-0 px)</th></tr>")
            for r in rows:
                sev = str(r.get("severity") or "")
                sw = _hex(SEVERITY_COLORS.get(sev, (128, 128, 128)))
                area = r.get("area_um2")
                area_mm2 = area / 1e6 if isinstance(area, (int, float)) else None
                c = r.get("centroid_l0_px") or [None, None]
                b = r.get("bbox_l0_px") or [None] * 4
                add(f"<tr><td>{_e(r.get('rank'))}</td>"
                    f"<td><span class='swatch' style='background:{sw}'></span>{_e(sev)}</td>"
                    f"<td class='num'>{_num(r.get('mean_class'), 1)}</td>"
                    f"<td class='num'>{_num(r.get('max_class'))}</td>"
                    f"<td class='num'>{_num(r.get('n_cells'))}</td>"
                    f"<td class='num'>{_num(area_mm2, 3)}</td>"
                    f"<td>{_num(c[0], 0)}, {_num(c[1], 0)}</td>"
                    f"<td>{_num(b[0], 0)}, {_num(b[1], 0)} – {_num(b[2], 0)}, {_num(b[3], 0)}</td>"
                    "</tr>")
            add("</table>")
            total = (s.get("regions") or {}).get("count")
            if isinstance(total, int) and total > len(rows):
                add(f"<p class='muted'>{len(rows)} of {total} regions shown; all are in "
                    "oof_regions.geojson (QuPath: File › Import objects).</p>")
        else:
            rmin = (s.get("regions") or {}).get("min_class", s.get("oof_min_class"))
            add(f"<p class='muted'>No connected region of class ≥ {_e(rmin)}.</p>")
        add("</section>")

        uri = _data_uri(heatmap_png)
        if uri:
            add("<section><h2>Heatmap</h2>"
                f"<img alt='OOF class heatmap (black: no tissue)' src='{uri}'></section>")

    add("</main><footer>")
    add(f"convfocus {_e(s.get('convfocus_version'))} · created {_e(s.get('created_utc'))} · "
        f"tissue area: {_e(s.get('tissue_area_note'))}. ")
    add("Classes follow ConvFocus (Kohlberger et al., J Pathol Inform 2019): 0 in focus .. "
        "29 strongly out of focus; verdict thresholds are starting points, not validated "
        "clinical cut-offs.</footer></body></html>\n")
    return "".join(parts)


def _worst_regions(
    s: Mapping[str, Any], geojson: Mapping[str, Any] | None, max_regions: int
) -> list[Mapping[str, Any]]:
    if geojson is not None:
        feats = list(geojson.get("features", []))
        return [_region_row(f.get("properties", {})) for f in feats[:max_regions]]
    return list(((s.get("regions") or {}).get("worst") or [])[:max_regions])


# --- batch index -------------------------------------------------------------------------------


_SORT_JS = """
(function(){
  function key(row, col, type){
    var c = row.cells[col]; var v = c.getAttribute('data-sort');
    if (v === null) v = c.textContent.trim();
    if (type === 'num'){ var f = parseFloat(v); return isNaN(f) ? null : f; }
    return v.toLowerCase();
  }
  function sortBy(th){
    var table = th.closest('table'), body = table.tBodies[0];
    var col = th.cellIndex, type = th.getAttribute('data-type') || 'text';
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute('aria-sort');
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a, col, type), y = key(b, col, type);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var d = type === 'num' ? x - y : x.localeCompare(y);
      return asc ? d : -d;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  var ths = document.querySelectorAll('th[data-type]');
  for (var i = 0; i < ths.length; i++){
    ths[i].addEventListener('click', function(){ sortBy(this); });
    ths[i].addEventListener('keydown', function(e){
      if (e.key === 'Enter' || e.key === ' '){ e.preventDefault(); sortBy(this); }
    });
  }
})();
"""

_INDEX_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:24px;color:#1d1d1f}
h1{font-size:20px;font-weight:600}
table{border-collapse:collapse;font-size:14px;min-width:760px}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;text-align:left}
th{background:#f4f5f7;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-weight:600;
  text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.err{color:#a00;font-size:13px}
.muted{color:#666;font-size:13px}
tr:hover td{background:#fafbff}
"""


def render_index_html(rows: Iterable[Mapping[str, Any]], *, title: str = "convfocus batch") -> str:
    """A batch index page: one row per slide, sortable by clicking a column header.

    Each row is a mapping with ``name``, ``verdict`` (``pass``/``review``/``rescan``,
    ``insufficient-tissue``/``no-tissue``, or ``error``), ``oof_share`` (at the class
    ``oof_min_class`` the row's verdict counts), ``mean_class`` and ``report`` (a relative
    link to the slide's report.html), optionally ``profile``, ``pattern``, ``scan_lanes``,
    ``tissue_area_mm2``, ``ink_area_mm2``, ``ink_share`` and ``error`` (message of a failed
    slide); see :func:`index_row`.
    """
    rows = list(rows)
    counts: dict[str, int] = {}
    for r in rows:
        key = str(r.get("verdict") or ("error" if r.get("error") else "–"))
        counts[key] = counts.get(key, 0) + 1
    parts: list[str] = []
    add = parts.append
    add("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
    add("<meta name='viewport' content='width=device-width, initial-scale=1'>")
    add(f"<title>{_e(title)}</title><style>{_INDEX_CSS}</style></head><body>")
    add(f"<h1>{_e(title)}</h1><p class='muted'>{len(rows)} slides · ")
    add(" · ".join(f"{_e(k)}: {n}" for k, n in sorted(counts.items(),
                                                        key=lambda kv: _VERDICT_ORDER.get(kv[0], 9))))
    add(" · click a column header to sort</p>")
    add("<p class='muted'>Out of focus: share of the graded tissue at or above the class "
        "the row's verdict profile counts (histology ≥ 15, cytology ≥ 10, lymphoma and ai "
        "≥ 5). Ink: marker ink and other colour that is not stained tissue, left out of "
        "grading.</p>")
    add("<table><thead><tr>"
        "<th data-type='text' tabindex='0'>Slide</th>"
        "<th data-type='num' tabindex='0'>Verdict</th>"
        "<th data-type='text' tabindex='0'>Profile</th>"
        "<th data-type='num' class='num' tabindex='0'>Out of focus</th>"
        "<th data-type='num' class='num' tabindex='0'>Mean class</th>"
        "<th data-type='text' tabindex='0'>Pattern</th>"
        "<th data-type='num' class='num' tabindex='0'>Tissue (mm²)</th>"
        "<th data-type='num' class='num' tabindex='0'>Ink (mm²)</th>"
        "<th data-type='text' tabindex='0'>Report</th>"
        "</tr></thead><tbody>")
    for r in rows:
        v = r.get("verdict") or ("error" if r.get("error") else None)
        rank = _VERDICT_ORDER.get(str(v), 9)
        share = r.get("oof_share")
        mean = r.get("mean_class")
        area = r.get("tissue_area_mm2")
        ink = r.get("ink_area_mm2")
        ink_txt = _mm2(ink) if isinstance(ink, (int, float)) and ink else ""
        if ink_txt and isinstance(r.get("ink_share"), (int, float)):
            ink_txt += f" <span class='muted'>({_pct(r.get('ink_share'))})</span>"
        share_txt = _pct(share)
        if isinstance(share, (int, float)) and isinstance(r.get("oof_min_class"), (int, float)):
            share_txt = f"<span class='muted'>class ≥ {int(r['oof_min_class'])}:</span> {share_txt}"
        pattern = r.get("pattern") or ""
        if r.get("scan_lanes"):
            pattern = f"{pattern} + scan lanes" if pattern else "scan lanes"
        link = r.get("report")
        link_html = f"<a href='{_href(link)}'>report</a>" if link else ""
        if r.get("error"):
            link_html += f"<div class='err'>{_e(r.get('error'))}</div>"
        add("<tr>"
            f"<td>{_e(r.get('name'))}</td>"
            f"<td data-sort='{rank}'>{_badge(v) if v else '–'}</td>"
            f"<td>{_e(r.get('profile') or '')}</td>"
            f"<td class='num' data-sort='{_sortnum(share)}'>{share_txt}</td>"
            f"<td class='num' data-sort='{_sortnum(mean)}'>{_num(mean, 2)}</td>"
            f"<td>{_e(pattern)}</td>"
            f"<td class='num' data-sort='{_sortnum(area)}'>{_num(area, 2)}</td>"
            f"<td class='num' data-sort='{_sortnum(ink)}'>{ink_txt}</td>"
            f"<td>{link_html}</td></tr>")
    add(f"</tbody></table><script>{_SORT_JS}</script></body></html>\n")
    return "".join(parts)


def _sortnum(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return repr(float(x))
    return ""
