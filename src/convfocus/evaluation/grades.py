"""``convfocus evaluate grades``: predicted class vs pathologist grade.

Each slide of the manifest is scanned (or its scan output found), the windows lying
wholly inside a graded region take its grade, and per test set a grade-balanced
resample gives Spearman's rho and the regression of class on grade, beside the
paper's Table 2. Writes ``grades.json``, ``grades.png`` and ``grades.md``.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Methods and Results.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES, metrics
from convfocus.errors import AnnotationError, ConfigError
from convfocus.evaluation.annotations import (
    GRADE_MAX,
    check_inside_slide,
    read_grade_annotations,
    window_grades,
)
from convfocus.evaluation.inputs import read_manifest, resolve_path, scan_outputs
from convfocus.evaluation.outputs import (
    fmt_p,
    markdown_table,
    new_figure,
    write_bytes,
    write_figure,
    write_json,
)
from convfocus.io.scanout import read_scan_output

log = logging.getLogger(__name__)


#: Table 2 of the paper: (description, blur, Spearman, slope, intercept) with (AT2, S360).
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "config1": {"description": "Default (only blur)", "blur": "Gaussian",
                "spearman": (-0.274, -0.134), "slope": (-0.023, -0.211),
                "intercept": (2.504, 1.949)},
    "config2": {"description": "#1 plus simulated Poisson noise", "blur": "Gaussian",
                "spearman": (-0.140, -0.325), "slope": (-0.057, -0.265),
                "intercept": (0.502, 1.234)},
    "config3": {"description": "#2 plus JPEG artifacts", "blur": "Gaussian",
                "spearman": (0.785, 0.922), "slope": (2.851, 2.851),
                "intercept": (2.801, 2.801)},
    "config4": {"description": "#3 with bokeh instead of Gaussian (ConvFocus)", "blur": "Bokeh",
                "spearman": (0.808, 0.936), "slope": (3.903, 4.408),
                "intercept": (-2.945, -1.730)},
    "config5": {"description": "#4 with a larger (modified Inception) network", "blur": "Bokeh",
                "spearman": (0.773, 0.934), "slope": (3.889, 4.504),
                "intercept": (-3.024, -1.969)},
}
PAPER_TEST_SETS = ("AT2", "S360")


@dataclass(frozen=True)
class GradedWindows:
    """Windows inside graded regions, pooled over slides."""

    test_set: np.ndarray  # str
    slide: np.ndarray  # str
    grade: np.ndarray  # float
    oof_class: np.ndarray  # int
    per_slide: tuple[dict[str, Any], ...]


def collect_graded_windows(
    manifest: str | Path,
    *,
    tiles: str | Path | None = None,
    scans: str | Path | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    group_by: str = "test_set",
    grade_key: str = "grade",
    grader: Any = None,
) -> GradedWindows:
    """Read the manifest, scan (or find) each slide, and grade its annotated windows.

    Slides are identified by their manifest text (``slide`` column). ``group_by`` names the manifest column (or, failing that, a ``summary.json``
    key such as the scanner) that splits slides into test sets.
    """
    mpath = Path(manifest)
    rows = read_manifest(mpath, ("slide", "annotations"))
    base = mpath.parent
    slides = [resolve_path(base, row["slide"]) for row in rows]
    ann_paths = [resolve_path(base, row["annotations"]) for row in rows]
    # read every annotation file before scanning: a bad one fails in seconds, not hours
    annotations = [read_grade_annotations(a, grade_key=grade_key) for a in ann_paths]
    folders = scan_outputs(slides, tiles=tiles, scans=scans, model=model, mpp=mpp,
                           device=device, grader=grader)
    parts: dict[str, list[np.ndarray]] = {"t": [], "s": [], "g": [], "c": []}
    per_slide = []
    for row, slide, ann, regions, folder in zip(rows, slides, ann_paths, annotations, folders):
        out = read_scan_output(folder)
        if row.get(group_by):
            test_set = row[group_by]
        elif group_by in out.summary and not isinstance(out.summary[group_by], (dict, list)):
            test_set = str(out.summary[group_by])
        elif group_by == "test_set":
            test_set = "all"
        else:
            raise ConfigError(
                f"slide {slide.name}: no {group_by!r} in the manifest row or summary.json", mpath
            )
        if out.dimensions is not None:
            check_inside_slide(regions, out.dimensions, ann)
        grades, conflicts = window_grades(regions, out.grid.boxes(out.row, out.col))
        keep = np.isfinite(grades)
        n = int(keep.sum())
        slide_id = row["slide"]
        parts["t"].append(np.full(n, test_set, dtype=object))
        parts["s"].append(np.full(n, slide_id, dtype=object))
        parts["g"].append(grades[keep])
        parts["c"].append(out.oof_class[keep])
        per_slide.append({"slide": slide_id, "test_set": test_set, "scan_output": folder,
                          "regions": len(regions), "windows": n, "conflicting_windows": conflicts})
        log.info("%s: %d graded windows in %d regions", slide_id, n, len(regions))

    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[key]).astype(dtype) if parts[key] else np.zeros(0, dtype)

    return GradedWindows(cat("t", object), cat("s", object), cat("g", np.float64),
                         cat("c", np.int64), tuple(per_slide))


def grade_agreement(
    grade: np.ndarray,
    oof_class: np.ndarray,
    rng: np.random.Generator,
    *,
    n_per_grade: int = 3000,
) -> tuple[dict[str, Any], np.ndarray]:
    """Agreement of predicted classes with grades on a grade-balanced resample.

    Returns the statistics (``spearman``, ``p_value``, ``slope``, ``intercept``, ...)
    and the resampled indices.

    References: Kohlberger et al. 2019: 3000 patches per test set and grade, drawn
    with replacement; Spearman with a two-sided test; regression slope vs 29/6 = 4.83
    and intercept vs 0.
    """
    idx = metrics.balanced_resample(grade, rng, n_per_stratum=n_per_grade)
    g, c = grade[idx], oof_class[idx].astype(np.float64)
    rho = metrics.spearman(g, c)
    fit = metrics.linregress(g, c)
    values, counts = np.unique(grade, return_counts=True)
    raw = metrics.spearman(grade, oof_class)
    stats = {
        "spearman": rho.r, "p_value": rho.p_value, "slope": fit.slope,
        "intercept": fit.intercept, "slope_stderr": fit.slope_stderr,
        "intercept_stderr": fit.intercept_stderr, "r_value": fit.r,
        "n_sampled": int(idx.size), "n_windows": int(grade.size),
        "n_per_grade": {f"{v:g}": int(n) for v, n in zip(values, counts)},
        "mean_class_per_grade": {
            f"{v:g}": float(oof_class[grade == v].mean()) for v in values
        },
        "spearman_unbalanced": raw.r,
        "ideal_slope": metrics.IDEAL_SLOPE, "ideal_intercept": 0.0,
    }
    return stats, idx


def _slide_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _plot_grades(
    path: Path, data: GradedWindows, samples: Mapping[str, np.ndarray],
    stats: Mapping[str, Mapping[str, Any]], rng: np.random.Generator,
) -> Path:
    names = list(samples)
    fig, axes = new_figure(max(1, len(names)))
    colours = _slide_colours(sorted(set(data.slide.tolist())))
    xs = np.linspace(0, GRADE_MAX, 2)
    for ax, name in zip(axes, names):
        idx = samples[name]
        st = stats[name]
        for slide in sorted(set(data.slide[idx].tolist())):
            sel = idx[data.slide[idx] == slide]
            ax.scatter(
                data.grade[sel] + rng.uniform(-0.18, 0.18, sel.size),
                data.oof_class[sel] + rng.uniform(-0.35, 0.35, sel.size),
                s=2, alpha=0.25, color=colours[slide], label=slide, rasterized=True,
            )
        ax.plot(xs, st["slope"] * xs + st["intercept"], "k-", lw=1.5,
                label=f"fit: {st['slope']:.2f} x {st['intercept']:+.2f}")
        ax.plot(xs, metrics.IDEAL_SLOPE * xs, "k--", lw=1, label="ideal: 4.83 x")
        ax.set(xlim=(-0.5, 6.5), ylim=(-1, NUM_CLASSES), xlabel="pathologist grade",
               ylabel="predicted OOF class",
               title=f"{name}: Spearman {st['spearman']:.3f} (n = {st['n_sampled']})")
        leg = ax.legend(loc="upper left", fontsize=7, markerscale=4, frameon=False)
        for handle in leg.legend_handles:
            if handle is not None:
                handle.set_alpha(1)
    return write_figure(path, fig)


def _grades_markdown(stats: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [name, st["n_windows"], len(st["n_per_grade"]), st["spearman"], fmt_p(st["p_value"]),
         st["slope"], st["intercept"]]
        for name, st in stats.items()
    ]
    for k, name in enumerate(PAPER_TEST_SETS):
        t2 = PAPER_TABLE2["config4"]
        rows.append([f"paper, {name}", "-", "13", t2["spearman"][k], "< 0.001",
                     t2["slope"][k], t2["intercept"][k]])
    table = markdown_table(
        ["test set", "windows", "grades", "Spearman", "p", "slope (ideal 4.83)",
         "intercept (ideal 0)"], rows,
    )
    return "# Predicted class vs pathologist grade\n\n" + table


def evaluate_grades(
    manifest: str | Path,
    out: str | Path,
    *,
    tiles: str | Path | None = None,
    model: str | Path | None = None,
    mpp: float | None = None,
    device: str = "cpu",
    group_by: str = "test_set",
    grade_key: str = "grade",
    n_per_grade: int = 3000,
    seed: int = 0,
    grader: Any = None,
) -> dict[str, Any]:
    """``convfocus evaluate grades``: agreement with pathologist-graded regions.

    The manifest (CSV) has ``slide,annotations[,test_set]``, paths relative to it.
    Writes ``grades.json`` (per test set: ``spearman``, ``p_value``, ``slope``,
    ``intercept``, ``n_per_grade``, ...), ``grades.png`` and ``grades.md`` to ``out``.
    Slides are scanned into ``out/scans`` (with ``grader``, or ``model`` loaded) unless
    ``tiles`` holds their scan outputs.

    References: Kohlberger et al. 2019: rho 0.808 (AT2), 0.936 (S360); Table 2.
    """
    o = Path(out)
    data = collect_graded_windows(
        manifest, tiles=tiles, scans=o / "scans", model=model, mpp=mpp, device=device,
        group_by=group_by, grade_key=grade_key, grader=grader,
    )
    if data.grade.size == 0:
        raise AnnotationError("no window lies wholly inside a graded region", manifest)
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    for name in sorted(set(data.test_set.tolist())):
        members = np.flatnonzero(data.test_set == name)
        st, idx = grade_agreement(data.grade[members], data.oof_class[members], rng,
                                  n_per_grade=n_per_grade)
        st["slides"] = sorted(set(data.slide[members].tolist()))
        stats[name] = st
        samples[name] = members[idx]
    result = {
        "command": "grades",
        "manifest": str(manifest),
        "settings": {"n_per_grade": n_per_grade, "seed": seed, "group_by": group_by,
                     "window": "the scan's window (l0_window_px) wholly inside a region",
                     "model": None if model is None else str(model), "tiles": tiles},
        "test_sets": stats,
        "slides": list(data.per_slide),
        "paper": {name: {key: PAPER_TABLE2["config4"][key][k]
                         for key in ("spearman", "slope", "intercept")}
                  for k, name in enumerate(PAPER_TEST_SETS)},
    }
    _plot_grades(o / "grades.png", data, samples, stats, rng)
    write_bytes(o / "grades.md", _grades_markdown(stats).encode())
    write_json(o / "grades.json", result)
    return result
