"""Metrics: correlation, regression, ranking AUCs, bootstrap, resampling, grader accuracy.

The one home of the statistics that training and the evaluations report. Correlation,
regression and the AUCs are thin wrappers over ``scipy.stats`` (``spearmanr``,
``pearsonr``, ``linregress``, ``mannwhitneyu``) and ``sklearn.metrics``
(``average_precision_score``) that return small frozen dataclasses or floats and
agree on the inputs where a number is undefined:

- a constant input (all x or all y equal): the correlation is undefined, so ``r`` and
  its p-value are NaN (no warning); :func:`linregress` of a constant ``x`` is all NaN;
- fewer than 2 pairs: everything NaN; fewer than 3 pairs: p-values and standard
  errors NaN (a two-sided test needs at least one degree of freedom);
- an AUC needs both classes (ROC) or a positive (PR); otherwise NaN.

The rest are pure functions of numpy arrays; randomness only through an explicit
:class:`numpy.random.Generator`.

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Methods,
"ConvFocus evaluation" and "Measuring cancer detection algorithm performance".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convfocus import NUM_CLASSES
from convfocus.types import OOF_BUCKETS

#: Ideal regression of class (0..29) on pathologist grade (0..6): slope 29/6, intercept 0.
IDEAL_SLOPE = 29.0 / 6.0


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its two-sided p-value and sample size."""

    r: float
    p_value: float
    n: int


@dataclass(frozen=True)
class Regression:
    """Least-squares line ``y = slope * x + intercept`` (as ``scipy.stats.linregress``)."""

    slope: float
    intercept: float
    r: float
    p_value: float
    slope_stderr: float
    intercept_stderr: float
    n: int


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval.

    ``n_valid`` counts the replicates where the statistic was defined (e.g. an AUC
    needs both classes among the resampled slides).
    """

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    n_valid: int


def _pair(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> tuple:
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.size} != {ya.size}")
    return xa, ya


def _constant(a: np.ndarray) -> bool:
    return bool(a.size) and bool(a.min() == a.max())


def _correlation(kind: str, x: np.ndarray | Sequence[float],
                 y: np.ndarray | Sequence[float]) -> Correlation:
    xa, ya = _pair(x, y)
    n = int(xa.size)
    if n < 2 or _constant(xa) or _constant(ya):
        return Correlation(math.nan, math.nan, n)
    from scipy import stats  # imported when used: 2 s that a scan never needs

    res = stats.spearmanr(xa, ya) if kind == "spearman" else stats.pearsonr(xa, ya)
    return Correlation(float(res.statistic), float(res.pvalue) if n >= 3 else math.nan, n)


def pearson(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Correlation:
    """Pearson's linear correlation (PLCC) with its two-sided p-value (``scipy.stats.pearsonr``).

    NaN when either input is constant or fewer than 2 pairs are given (p: 3).
    """
    return _correlation("pearson", x, y)


def spearman(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Correlation:
    """Spearman's rank correlation (SRCC, ties get average ranks) with its two-sided p-value
    (``scipy.stats.spearmanr``).

    NaN when either input is constant or fewer than 2 pairs are given (p: 3).

    References: Kohlberger et al. 2019: the main metric, with a two-sided test;
    paper values rho = 0.808 (AT2) and 0.936 (S360).
    """
    return _correlation("spearman", x, y)


def linregress(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Regression:
    """Ordinary least squares of ``y`` on ``x``, with standard errors (``scipy.stats.linregress``).

    In the grade evaluation ``x`` is the pathologist grade (0..6) and ``y`` the
    predicted class (0..29); the ideal line has slope 29/6 = 4.83 and intercept 0.
    All NaN for a constant ``x`` or fewer than 2 points; a constant ``y`` gives slope 0
    and NaN ``r``, p-value and standard errors; with 2 points the p-value and standard
    errors are NaN.

    References: Kohlberger et al. 2019, Table 2.
    """
    xa, ya = _pair(x, y)
    n = int(xa.size)
    nan = math.nan
    if n < 2 or _constant(xa):
        return Regression(nan, nan, nan, nan, nan, nan, n)
    from scipy import stats

    res = stats.linregress(xa, ya)
    if n < 3:
        return Regression(float(res.slope), float(res.intercept), float(res.rvalue), nan, nan,
                          nan, n)
    return Regression(float(res.slope), float(res.intercept), float(res.rvalue),
                      float(res.pvalue), float(res.stderr), float(res.intercept_stderr), n)


def _binary(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> tuple:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} != {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), s


def roc_auc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes occur.

    The Mann-Whitney U of the positives' scores over ``n_pos * n_neg``
    (``scipy.stats.mannwhitneyu``), the same number as
    ``sklearn.metrics.roc_auc_score`` at a quarter of its cost, which counts in the
    thousands of bootstrap replicates of :func:`bootstrap_auc`.
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy import stats

    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided", method="asymptotic").statistic
    return float(u) / (n_pos * n_neg)


def pr_auc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """Average precision: sum over score thresholds of precision x recall increment.

    The step-wise (not interpolated) area under the precision-recall curve
    (``sklearn.metrics.average_precision_score``); NaN when there is no positive.
    """
    y, s = _binary(labels, scores)
    if not y.any():
        return math.nan
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """A grader's classes against the true ones: exact accuracy, within ±1 and ±3 classes,
    Spearman, the mean predicted class of each true class, and ``n``.

    ``spearman`` is :func:`spearman`'s ``r``, except 0.0 where that is undefined (constant
    predictions: a collapsed grader ranks nothing), so that the figures stay finite in a
    model's JSON spec.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    d = np.abs(y_true - y_pred)
    per_class = [float(y_pred[y_true == c].mean()) if (y_true == c).any() else float("nan")
                 for c in range(NUM_CLASSES)]
    rho = spearman(y_true, y_pred).r
    return {
        "exact": float((d == 0).mean()),
        "within1": float((d <= 1).mean()),
        "within3": float((d <= 3).mean()),
        "spearman": rho if math.isfinite(rho) else 0.0,
        "mean_pred_per_class": [round(v, 2) for v in per_class],
        "n": len(y_true),
    }


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    groups: np.ndarray | Sequence[object],
    rng: np.random.Generator,
    *,
    n_boot: int = 500,
    level: float = 0.95,
) -> BootstrapCI:
    """Cluster (e.g. slide-level) nonparametric bootstrap percentile interval.

    Each replicate draws as many groups as there are, with replacement, and passes
    the indices of all their members (a group drawn twice counts twice) to
    ``statistic(indices) -> float``. Replicates giving NaN are left out.

    References: Kohlberger et al. 2019: patch-level AUC intervals from n = 500
    bootstrap samples at the slide level.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    g = np.asarray(groups).ravel()
    everything = np.arange(g.size)
    estimate = float(statistic(everything))
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    if counts.size == 0:
        return BootstrapCI(estimate, math.nan, math.nan, level, n_boot, 0)
    members = np.split(order, np.cumsum(counts)[:-1])
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), size=len(members))
        v = float(statistic(np.concatenate([members[k] for k in pick])))
        if math.isfinite(v):
            values.append(v)
    if values:
        alpha = (1.0 - level) / 2.0
        low, high = np.quantile(values, [alpha, 1.0 - alpha])
    else:
        low = high = math.nan
    return BootstrapCI(estimate, float(low), float(high), level, n_boot, len(values))


def bootstrap_auc(
    labels: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[object],
    rng: np.random.Generator,
    *,
    n_boot: int = 500,
    level: float = 0.95,
) -> BootstrapCI:
    """ROC AUC with a slide-level bootstrap interval (see :func:`bootstrap_ci`).

    References: Kohlberger et al. 2019: n = 500, 95 % intervals.
    """
    y, s = _binary(labels, scores)
    if np.asarray(groups).size != y.size:
        raise ValueError("groups must have one entry per label")
    return bootstrap_ci(lambda i: roc_auc(y[i], s[i]), groups, rng, n_boot=n_boot, level=level)


def balanced_resample(
    strata: np.ndarray | Sequence[object],
    rng: np.random.Generator,
    *,
    n_per_stratum: int = 3000,
) -> np.ndarray:
    """Indices drawing ``n_per_stratum`` members with replacement from every stratum.

    Strata (e.g. the 13 pathologist grades) come out in sorted order, each a block of
    ``n_per_stratum`` indices, so unevenly represented grades weigh the same.

    References: Kohlberger et al. 2019: 3000 patches per test set and grade.
    """
    if n_per_stratum < 1:
        raise ValueError("n_per_stratum must be >= 1")
    s = np.asarray(strata).ravel()
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(s, return_inverse=True)
    blocks = []
    for k in range(int(inverse.max()) + 1):
        members = np.flatnonzero(inverse == k)
        blocks.append(members[rng.integers(0, members.size, size=n_per_stratum)])
    return np.concatenate(blocks).astype(np.int64)


def bucket_index(
    classes: np.ndarray | Sequence[int],
    buckets: Sequence[tuple[int, int]] = OOF_BUCKETS,
) -> np.ndarray:
    """Index of the bucket holding each class (-1 for classes in no bucket)."""
    c = np.asarray(classes).ravel()
    out = np.full(c.shape, -1, dtype=np.int64)
    for k, (lo, hi) in enumerate(buckets):
        out[(c >= lo) & (c <= hi)] = k
    return out


def group_folds(
    groups: np.ndarray | Sequence[object],
    rng: np.random.Generator,
    *,
    n_folds: int = 10,
) -> np.ndarray:
    """Fold number (0..k-1) of each sample, keeping every group in one fold.

    Groups (e.g. slides) are shuffled and dealt to ``k = min(n_folds, n_groups)``
    folds in turn, so fold sizes in groups differ by at most one.
    """
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    g = np.asarray(groups).ravel()
    uniq, inverse = np.unique(g, return_inverse=True)
    k = min(n_folds, uniq.size)
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    fold_of_group[rng.permutation(uniq.size)] = np.arange(uniq.size) % max(k, 1)
    return fold_of_group[inverse]
