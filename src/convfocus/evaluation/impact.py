"""``convfocus evaluate detector``: the impact of focus quality on a detector's AUC.

- Experiment 1 (real OOF): a detector's per-window scores and labels, each window
  with its predicted OOF class; ROC AUC per OOF bucket with slide-level bootstrap
  intervals.
- Experiment 2 (synthetic OOF): bokeh blur of each class added to labelled windows,
  which a detector (``module:function``) re-scores.

The demonstration detector is :mod:`convfocus.evaluation.detector` and its example
data :mod:`convfocus.evaluation.detector_data`. Writes ``detector.json``,
``detector.png`` and ``detector.md``.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Figure 11.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES, metrics
from convfocus.errors import ConfigError
from convfocus.evaluation.inputs import read_manifest, resolve_path
from convfocus.evaluation.outputs import (
    fmt,
    markdown_table,
    new_figure,
    write_bytes,
    write_figure,
    write_json,
)
from convfocus.io.scanout import find_scan_output, read_scan_output
from convfocus.types import OOF_BUCKETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorScores:
    """Per-window detector output: score, 0/1 label, slide id, OOF class."""

    slide: np.ndarray
    score: np.ndarray
    label: np.ndarray
    oof_class: np.ndarray


_LABEL_NAMES = ("label", "tumor", "tumour")


def read_detector_scores(path: str | Path, *, tiles: str | Path | None = None) -> DetectorScores:
    """Read a detector CSV: ``slide,score,label[,oof_class]`` (``tumor``/``tumour`` = label).

    Without ``oof_class``, it is joined from ``tiles/<slide>/tiles.csv`` on
    ``x_px,y_px`` (columns the CSV then needs).
    """
    p = Path(path)
    rows = read_manifest(p, ("slide", "score"))
    label_col = next((c for c in _LABEL_NAMES if c in rows[0]), None)
    if label_col is None:
        raise ConfigError("detector CSV lacks a label column (label, tumor or tumour)", p)
    try:
        slide = np.array([r["slide"] for r in rows], dtype=object)
        score = np.array([float(r["score"]) for r in rows])
        label = np.array([int(float(r[label_col])) for r in rows])
    except ValueError as exc:
        raise ConfigError(f"detector CSV has a non-numeric score or label ({exc})", p) from None
    if not np.isin(label, (0, 1)).all():
        raise ConfigError("detector labels must be 0 or 1", p)
    if not np.isfinite(score).all():
        raise ConfigError("detector scores must be finite", p)
    if "oof_class" in rows[0] and all(r["oof_class"] for r in rows):
        oof = np.array([int(float(r["oof_class"])) for r in rows])
    else:
        if tiles is None:
            raise ConfigError("detector CSV has no oof_class column; give --tiles to join it", p)
        if not {"x_px", "y_px"} <= set(rows[0]):
            raise ConfigError("joining OOF classes from tiles.csv needs x_px,y_px columns", p)
        oof = np.empty(len(rows), dtype=np.int64)
        cache: dict[str, dict[tuple[int, int], int]] = {}
        for i, r in enumerate(rows):
            if r["slide"] not in cache:
                so = read_scan_output(find_scan_output(tiles, r["slide"]))
                cache[r["slide"]] = dict(zip(
                    zip(so.x_px.astype(int).tolist(), so.y_px.astype(int).tolist()),
                    so.oof_class.tolist(),
                ))
            key = (int(float(r["x_px"])), int(float(r["y_px"])))
            if key not in cache[r["slide"]]:
                raise ConfigError(
                    f"row {i + 2}: no graded window at x_px={key[0]}, y_px={key[1]} in "
                    f"{r['slide']}/tiles.csv", p,
                )
            oof[i] = cache[r["slide"]][key]
    return DetectorScores(slide, score, label, oof)


def auc_by_bucket(
    scores: DetectorScores,
    rng: np.random.Generator,
    *,
    buckets: Sequence[tuple[int, int]] = OOF_BUCKETS,
    n_boot: int = 500,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Detector ROC AUC in each OOF-class bucket with a slide-level bootstrap interval.

    References: Kohlberger et al. 2019, Figure 11: buckets 0-4, 5-9, 10-14, 15-19,
    20-29; 95 % intervals from n = 500 slide-level bootstrap samples.
    """
    which = metrics.bucket_index(scores.oof_class, buckets)
    out = []
    for k, (lo, hi) in enumerate(buckets):
        sel = which == k
        y, s, g = scores.label[sel], scores.score[sel], scores.slide[sel]
        ci = metrics.bootstrap_auc(y, s, g, rng, n_boot=n_boot, level=level)
        out.append({
            "bucket": f"{lo}-{hi}", "classes": [lo, hi], "auc": ci.estimate,
            "ci_low": ci.low, "ci_high": ci.high, "n_windows": int(sel.sum()),
            "n_tumour": int(y.sum()), "n_slides": int(np.unique(g).size),
            "n_boot_valid": ci.n_valid,
        })
    return out


def load_detector(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """Import a detector given as ``module:function`` (batch of RGB windows -> scores)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"detector {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import detector module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"detector {spec!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def read_labelled_windows(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled windows: an ``.npz`` (``images`` (n, h, w, 3) uint8, ``labels``,
    optional ``slides``) or a CSV ``path,label[,slide]`` of image files."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as d:
                images, labels = d["images"], d["labels"]
                slides = d["slides"] if "slides" in d else np.full(len(labels), "all")
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"not a windows .npz with images and labels ({exc})", p) from None
    else:
        from convfocus.io.images import read_image

        rows = read_manifest(p, ("path", "label"))
        images = np.stack([read_image(resolve_path(p.parent, r["path"])) for r in rows])
        labels = np.array([int(float(r["label"])) for r in rows])
        slides = np.array([r.get("slide") or "all" for r in rows])
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ConfigError(f"windows must be (n, h, w, 3) uint8, got {images.shape}", p)
    if len(labels) != len(images) or not np.isin(labels, (0, 1)).all():
        raise ConfigError("windows need one 0/1 label each", p)
    return images, labels.astype(np.int64), np.asarray(slides).astype(str).astype(object)


def _score(detector: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
           batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        s = np.asarray(detector(batch), dtype=np.float64).reshape(-1)
        if s.size != len(batch) or not np.isfinite(s).all():
            raise ConfigError(
                f"the detector must return one finite score per window ({len(batch)} windows, "
                f"got {s.size} values)"
            )
        out.append(s)
    return np.concatenate(out) if out else np.zeros(0)


def auc_vs_blur(
    detector: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    slides: np.ndarray,
    *,
    classes: Sequence[int] = tuple(range(NUM_CLASSES)),
    n_boot: int = 500,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Blur every window with bokeh of class ``c`` (radius drawn per window), re-score,
    and report the AUC (with a slide-level bootstrap interval) for each ``c``.

    References: Kohlberger et al. 2019, Figure 11 (blue curve): synthetic bokeh blur
    of each strength added to all patches.
    """
    from convfocus.synthesis.defocus import apply_blur, sample_blur_param

    out = []
    for c in classes:
        if not 0 <= c < NUM_CLASSES:
            raise ConfigError(f"class {c} outside 0..{NUM_CLASSES - 1}")
        rng = np.random.default_rng([seed, c])
        radii = np.array([sample_blur_param(c, rng) for _ in range(len(images))])
        blurred = np.stack([apply_blur(img, "bokeh", r) for img, r in zip(images, radii)])
        scores = _score(detector, blurred, batch_size)
        ci = metrics.bootstrap_auc(labels, scores, slides, rng, n_boot=n_boot)
        out.append({"class": int(c), "mean_radius_px": float(radii.mean()),
                    "auc": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                    "n_boot_valid": ci.n_valid})
        log.debug("class %d: AUC %.3f", c, ci.estimate)
    return out


def _plot_detector(path: Path, buckets: list[dict[str, Any]] | None,
                   sweep: list[dict[str, Any]] | None) -> Path:
    fig, (ax,) = new_figure(1, width=6.5)
    if sweep:
        x = np.array([r["class"] for r in sweep])
        ax.plot(x, [r["auc"] for r in sweep], "-o", color="tab:blue", ms=3,
                label="synthetic bokeh blur (experiment 2)")
        lo = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for r in sweep], float)
        hi = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for r in sweep], float)
        ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.15, lw=0)
    if buckets:
        centres = np.array([(b["classes"][0] + b["classes"][1]) / 2 for b in buckets])
        auc = np.array([b["auc"] for b in buckets], float)
        lo = np.array([b["ci_low"] for b in buckets], float)
        hi = np.array([b["ci_high"] for b in buckets], float)
        ax.errorbar(centres, auc, yerr=[auc - lo, hi - auc], fmt="ko", ecolor="0.6",
                    elinewidth=6, capsize=0, label="predicted OOF bucket (experiment 1)")
        for b, xc, y in zip(buckets, centres, np.where(np.isfinite(lo), lo, auc)):
            if math.isfinite(y):
                ax.annotate(f"n={b['n_windows']}", (xc, y - 0.02), ha="center", va="top",
                            fontsize=7)
    ax.axhline(0.5, color="0.7", lw=0.8, ls=":")
    ax.set(xlim=(-1, NUM_CLASSES), ylim=(0.0, 1.02), xlabel="OOF class",
           ylabel="detector ROC AUC", title="Detector AUC vs focus quality")
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return write_figure(path, fig)


def evaluate_detector(
    out: str | Path,
    *,
    scores: str | Path | None = None,
    tiles: str | Path | None = None,
    detector: str | Callable[[np.ndarray], np.ndarray] | None = None,
    windows: str | Path | None = None,
    classes: Sequence[int] = tuple(range(NUM_CLASSES)),
    n_boot: int = 500,
    seed: int = 0,
    example: bool = False,
) -> dict[str, Any]:
    """``convfocus evaluate detector``: the impact of focus on a detector's AUC.

    Experiment 1 (``scores``): AUC per OOF bucket with slide-level bootstrap
    intervals. Experiment 2 (``detector`` + ``windows``): AUC vs added bokeh blur
    of each class. With ``example``, both run on generated example data with the
    demonstration detector (not a cancer detector). Writes ``detector.json``,
    ``detector.png`` and ``detector.md``.

    References: Kohlberger et al. 2019, Figure 11.
    """
    o = Path(out)
    if example:
        from convfocus.evaluation.detector_data import make_detector_example

        ex = make_detector_example(o / "example-data", seed=seed)
        scores = scores or ex.scores_csv
        windows = windows or ex.windows_npz
        detector = detector or "convfocus.evaluation.detector:score_windows"
    if scores is None and (detector is None or windows is None):
        raise ConfigError("give --scores (experiment 1) and/or --detector with --windows "
                          "(experiment 2), or --example")
    if (detector is None) != (windows is None):
        raise ConfigError("experiment 2 needs both --detector and --windows")
    result: dict[str, Any] = {"command": "detector", "settings": {
        "n_boot": n_boot, "seed": seed, "example": example,
        "buckets": [f"{lo}-{hi}" for lo, hi in OOF_BUCKETS], "level": 0.95}}
    md = "# Detector AUC vs focus quality\n\n"
    buckets = sweep = None
    if scores is not None:
        table = read_detector_scores(scores, tiles=tiles)
        buckets = auc_by_bucket(table, np.random.default_rng(seed), n_boot=n_boot)
        overall = metrics.bootstrap_auc(table.label, table.score, table.slide,
                                        np.random.default_rng(seed), n_boot=n_boot)
        result["experiment1"] = {
            "scores": str(scores), "buckets": buckets,
            "all": {"auc": overall.estimate, "ci_low": overall.low, "ci_high": overall.high,
                    "n_windows": int(table.score.size),
                    "n_slides": int(np.unique(table.slide).size)},
        }
        md += "## Experiment 1: real OOF (predicted class buckets)\n\n" + markdown_table(
            ["OOF classes", "AUC", "95 % CI", "windows", "tumour", "slides"],
            [[b["bucket"], b["auc"], f"{fmt(b['ci_low'])}-{fmt(b['ci_high'])}",
              b["n_windows"], b["n_tumour"], b["n_slides"]] for b in buckets]
            + [["all", overall.estimate, f"{fmt(overall.low)}-{fmt(overall.high)}",
                int(table.score.size), int(table.label.sum()),
                int(np.unique(table.slide).size)]],
        ) + "\n"
    if detector is not None and windows is not None:
        fn = load_detector(detector) if isinstance(detector, str) else detector
        images, labels, slides = read_labelled_windows(windows)
        sweep = auc_vs_blur(fn, images, labels, slides, classes=classes, n_boot=n_boot,
                            seed=seed)
        result["experiment2"] = {
            "detector": detector if isinstance(detector, str) else repr(detector),
            "windows": str(windows), "n_windows": len(images),
            "n_slides": int(np.unique(slides).size), "blur": "bokeh", "by_class": sweep,
        }
        md += "## Experiment 2: synthetic bokeh blur added to all windows\n\n" + markdown_table(
            ["class", "mean radius (px)", "AUC", "95 % CI"],
            [[str(r["class"]), r["mean_radius_px"], r["auc"],
              f"{fmt(r['ci_low'])}-{fmt(r['ci_high'])}"] for r in sweep],
        ) + "\n"
    if example:
        md += ("The example detector and data are for demonstration only; the detector "
               "is a texture score, not a cancer detector.\n")
    _plot_detector(o / "detector.png", buckets, sweep)
    write_bytes(o / "detector.md", md.encode())
    write_json(o / "detector.json", result)
    return result
