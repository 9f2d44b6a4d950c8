"""``convfocus evaluate benchmark``: FocusPath and TCGA@Focus, the field's public
focus benchmarks, run from their label lists and reported as the field reports them.

Each patch is graded by the mean and the max predicted class over its windows.
Small generated stand-ins with the same list formats are in
:mod:`convfocus.evaluation.benchmark_data`. Writes ``benchmark-<kind>.json``,
``.png`` and ``.md``.

References: published numbers from FocusLiteNN (MICCAI 2020), Table 1.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES, metrics
from convfocus.errors import ConfigError
from convfocus.evaluation.outputs import (
    fmt,
    markdown_table,
    new_figure,
    write_bytes,
    write_figure,
    write_json,
)

log = logging.getLogger(__name__)


#: Published results on the public benchmarks (FocusLiteNN, MICCAI 2020, Table 1).
PUBLISHED_BENCHMARKS: dict[str, dict[str, dict[str, float]]] = {
    "focuspath": {"srcc": {"ResNet-50 (best)": 0.929, "FocusLiteNN-1": 0.877, "MLV": 0.862}},
    "tcga-focus": {"roc_auc": {"DenseNet-13 (best)": 0.939, "FocusLiteNN-1": 0.931}},
}
BENCHMARKS = ("focuspath", "tcga-focus")


_BENCH_COLUMNS = {
    "focuspath": ("file", "slide", "strip", "slice", "position", "score", "z_level"),
    "tcga-focus": ("path", "organ", "split", "label"),
}


def read_benchmark_list(kind: str, path: str | Path) -> list[dict[str, str]]:
    """Rows of a FocusPath or TCGA@Focus label list (CSV, with or without a header).

    FocusPath: ``file,slide,strip,slice,position,score,z_level``; TCGA@Focus:
    ``path,organ,split,label`` (label 0 in focus, 1 out of focus).
    """
    if kind not in _BENCH_COLUMNS:
        raise ConfigError(f"unknown benchmark {kind!r}; choose one of {', '.join(BENCHMARKS)}")
    p = Path(path)
    cols = _BENCH_COLUMNS[kind]
    try:
        lines = list(csv.reader(io.StringIO(p.read_text(encoding="utf-8-sig"))))
    except OSError as exc:
        raise ConfigError(f"cannot read list: {exc.strerror or exc}", p) from None
    lines = [ln for ln in lines if ln and any(c.strip() for c in ln)]
    if lines and [c.strip().lower() for c in lines[0][: len(cols)]] == list(cols):
        lines = lines[1:]
    rows = []
    for n, ln in enumerate(lines, 1):
        if len(ln) < len(cols):
            raise ConfigError(f"line {n}: {len(ln)} fields, a {kind} list has {len(cols)}", p)
        rows.append(dict(zip(cols, (c.strip() for c in ln))))
    if not rows:
        raise ConfigError("the list is empty", p)
    numeric = ("z_level",) if kind == "focuspath" else ("label",)
    for n, row in enumerate(rows, 1):
        for key in numeric:
            try:
                float(row[key])
            except ValueError:
                raise ConfigError(f"line {n}: {key} {row[key]!r} is not a number", p) from None
    return rows


def patch_windows(rgb: np.ndarray, *, window_px: int = 139, stride_px: int = 128) -> np.ndarray:
    """All ``window_px`` windows of a patch at ``stride_px``, the grid centred: ``(n, w, w, 3)``."""
    from convfocus.grading.tiling import cut_windows

    h, w = rgb.shape[:2]
    if h < window_px or w < window_px:
        raise ValueError(f"patch {w} x {h} is smaller than one {window_px} px window")
    return cut_windows(rgb, window_px, stride_px, centred=True)


def grade_patch(
    grader: Any, rgb: np.ndarray, *, image_mpp: float | None = None
) -> tuple[float, float]:
    """Mean and max predicted class over a patch's windows.

    The patch is resampled from ``image_mpp`` to the model's pixel size when both are
    known and differ by more than 2 %.
    """
    spec = getattr(grader, "spec", None)
    window = int(getattr(spec, "window_px", 139))
    stride = int(getattr(spec, "stride_px", 128))
    model_mpp = getattr(spec, "mpp", None)
    img = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if image_mpp and model_mpp and abs(image_mpp / model_mpp - 1) > 0.02:
        from convfocus.io.images import resize

        f = image_mpp / model_mpp
        img = resize(img, (max(window, round(img.shape[1] * f)),
                           max(window, round(img.shape[0] * f))))
    probs = np.asarray(grader.predict_windows(patch_windows(img, window_px=window,
                                                            stride_px=stride)))
    classes = probs.argmax(axis=1)
    return float(classes.mean()), float(classes.max())


def _read_rgb(path: Path) -> np.ndarray:
    from convfocus.io.images import read_image

    return read_image(path)


def _focuspath_metrics(
    rows: Sequence[dict[str, str]], score: np.ndarray, rng: np.random.Generator, *,
    n_folds: int, infocus_max_abs_z: float,
) -> dict[str, Any]:
    abs_z = np.abs(np.array([float(r["z_level"]) for r in rows]))
    slides = np.array([r["slide"] for r in rows], dtype=object)
    folds = metrics.group_folds(slides, rng, n_folds=n_folds)
    per_fold = []
    for k in range(int(folds.max()) + 1):
        sel = folds == k
        per_fold.append({"fold": k, "n": int(sel.sum()),
                         "srcc": metrics.spearman(abs_z[sel], score[sel]).r,
                         "plcc": metrics.pearson(abs_z[sel], score[sel]).r})
    srcc = np.array([f["srcc"] for f in per_fold], float)
    plcc = np.array([f["plcc"] for f in per_fold], float)
    oof = (abs_z > infocus_max_abs_z).astype(int)
    return {
        "srcc": metrics.spearman(abs_z, score).r, "plcc": metrics.pearson(abs_z, score).r,
        "srcc_folds_mean": float(np.nanmean(srcc)) if np.isfinite(srcc).any() else math.nan,
        "srcc_folds_std": float(np.nanstd(srcc)) if np.isfinite(srcc).any() else math.nan,
        "plcc_folds_mean": float(np.nanmean(plcc)) if np.isfinite(plcc).any() else math.nan,
        "plcc_folds_std": float(np.nanstd(plcc)) if np.isfinite(plcc).any() else math.nan,
        "folds": per_fold,
        "roc_auc": metrics.roc_auc(oof, score), "pr_auc": metrics.pr_auc(oof, score),
        "n_in_focus": int((oof == 0).sum()), "n_out_of_focus": int(oof.sum()),
    }


def _tcga_metrics(rows: Sequence[dict[str, str]], score: np.ndarray) -> dict[str, Any]:
    label = np.array([int(float(r["label"])) for r in rows])
    return {"roc_auc": metrics.roc_auc(label, score), "pr_auc": metrics.pr_auc(label, score),
            "n_in_focus": int((label == 0).sum()), "n_out_of_focus": int(label.sum())}


def evaluate_benchmark(
    kind: str,
    list_path: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    grader: Any = None,
    model: str | Path | None = None,
    device: str = "cpu",
    image_mpp: float | None = None,
    infocus_max_abs_z: float = 1.0,
    n_folds: int = 10,
    split: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``convfocus evaluate benchmark``: FocusPath or TCGA@Focus, as the field reports.

    Each patch gets the mean and the max predicted class over its windows; both are
    reported. FocusPath: SRCC and PLCC (Pearson, no fitted mapping) against ``|z|``,
    overall and over folds split by slide (``min(n_folds, slides)`` folds), plus
    ROC-AUC / PR-AUC of in focus (``|z| <= infocus_max_abs_z``) vs not. TCGA@Focus:
    ROC-AUC and PR-AUC of out of focus (label 1). Patches missing under ``images``
    are skipped and counted. Writes ``benchmark-<kind>.json``, ``.png`` and ``.md``.

    References: Published numbers from FocusLiteNN (MICCAI 2020), Table 1.
    """
    rows = read_benchmark_list(kind, list_path)
    if split is not None:
        if kind != "tcga-focus":
            raise ConfigError("--split applies to tcga-focus only")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ConfigError(f"no rows with split {split!r}", list_path)
    if grader is None:
        from convfocus.grading.infer import load_grader

        grader = load_grader(model, device=device)
    root = Path(images)
    key = "file" if kind == "focuspath" else "path"
    present, mean_cls, max_cls, missing = [], [], [], []
    for r in rows:
        path = root / r[key]
        if not path.is_file():
            missing.append(r[key])
            continue
        m, x = grade_patch(grader, _read_rgb(path), image_mpp=image_mpp)
        present.append(r)
        mean_cls.append(m)
        max_cls.append(x)
    if not present:
        raise ConfigError(f"none of the {len(rows)} listed images is under {root}", list_path)
    if missing:
        log.warning("%d of %d listed images are missing (first: %s)", len(missing), len(rows),
                    missing[0])
    scores = {"mean": np.array(mean_cls), "max": np.array(max_cls)}
    results: dict[str, Any] = {}
    for name, s in scores.items():
        if kind == "focuspath":
            results[name] = _focuspath_metrics(present, s, np.random.default_rng(seed),
                                               n_folds=n_folds,
                                               infocus_max_abs_z=infocus_max_abs_z)
        else:
            results[name] = _tcga_metrics(present, s)
    result = {
        "command": "benchmark", "benchmark": kind, "list": str(list_path), "images": str(root),
        "n_listed": len(rows), "n_graded": len(present), "n_missing": len(missing),
        "settings": {"image_mpp": image_mpp, "seed": seed, "split": split,
                     "n_folds": n_folds, "infocus_max_abs_z": infocus_max_abs_z,
                     "score": "mean and max predicted class over the patch's windows",
                     "plcc": "Pearson on raw scores (no logistic mapping)"},
        "results": results, "published": PUBLISHED_BENCHMARKS[kind],
        "patches": [{key: r[key], "mean_class": m, "max_class": x}
                    for r, m, x in zip(present, mean_cls, max_cls)],
    }
    _plot_benchmark(Path(out) / f"benchmark-{kind}.png", kind, present, scores)
    write_bytes(Path(out) / f"benchmark-{kind}.md", _benchmark_markdown(result).encode())
    write_json(Path(out) / f"benchmark-{kind}.json", result)
    return result


def _benchmark_markdown(result: Mapping[str, Any]) -> str:
    kind, res = result["benchmark"], result["results"]
    pub = PUBLISHED_BENCHMARKS[kind]
    if kind == "focuspath":
        header = ["method", "SRCC", "PLCC", "SRCC folds", "ROC-AUC", "PR-AUC"]
        rows = [[f"convfocus ({name} class)", r["srcc"], r["plcc"],
                 (f"{fmt(r['srcc_folds_mean'])} ± {fmt(r['srcc_folds_std'])} "
                  f"({len(r['folds'])} folds)"), r["roc_auc"], r["pr_auc"]]
                for name, r in res.items()]
        rows += [[f"{m} (published)", v, "-", "-", "-", "-"] for m, v in pub["srcc"].items()]
        note = (f"In focus: |z| <= {result['settings']['infocus_max_abs_z']:g} (a setting); "
                "correlations are with |z|.")
    else:
        header = ["method", "ROC-AUC", "PR-AUC"]
        rows = [[f"convfocus ({name} class)", r["roc_auc"], r["pr_auc"]]
                for name, r in res.items()]
        rows += [[f"{m} (published)", v, "-"] for m, v in pub["roc_auc"].items()]
        note = "Positive class: out of focus (label 1)."
    title = {"focuspath": "FocusPath", "tcga-focus": "TCGA@Focus"}[kind]
    return (f"# {title}\n\n" + markdown_table(header, rows)
            + f"\n{result['n_graded']} of {result['n_listed']} listed patches graded "
            f"({result['n_missing']} missing). {note} Published: FocusLiteNN, MICCAI 2020, "
            "Table 1.\n")


def _plot_benchmark(path: Path, kind: str, rows: Sequence[dict[str, str]],
                    scores: Mapping[str, np.ndarray]) -> Path:
    fig, axes = new_figure(len(scores))
    for ax, (name, s) in zip(axes, scores.items()):
        if kind == "focuspath":
            z = np.array([float(r["z_level"]) for r in rows])
            ax.scatter(z, s, s=6, alpha=0.5)
            zs = np.unique(z)
            ax.plot(zs, [s[z == v].mean() for v in zs], "k-", lw=1.5, label="mean")
            ax.set(xlabel="z level", ylabel=f"{name} predicted class")
            ax.legend(frameon=False, fontsize=8)
        else:
            label = np.array([int(float(r["label"])) for r in rows])
            bins = np.linspace(0, NUM_CLASSES - 1, 30)
            for v, lab in ((0, "in focus"), (1, "out of focus")):
                ax.hist(s[label == v], bins=bins, alpha=0.6, label=lab)
            ax.set(xlabel=f"{name} predicted class", ylabel="patches")
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"{kind}: {name} class per patch")
    return write_figure(path, fig)
