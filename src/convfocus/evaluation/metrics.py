"""Evaluation metrics: correlation, regression, ranking AUCs, bootstrap, resampling.

Pure functions of numpy arrays; randomness only through an explicit
:class:`numpy.random.Generator`. Each matches its scipy / scikit-learn reference
(``scipy.stats.spearmanr``, ``pearsonr``, ``linregress``;
``sklearn.metrics.roc_auc_score``, ``average_precision_score``).

References: Kohlberger et al., J Pathol Inform 2019 (ConvFocus), Methods,
"ConvFocus evaluation" and "Measuring cancer detection algorithm performance".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: OOF class buckets of the detector experiment (inclusive bounds).
#: References: Kohlberger et al. 2019, Results: buckets 0-4, 5-9, 10-14, 15-19, 20-29.
OOF_BUCKETS: tuple[tuple[int, int], ...] = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29))

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


def _t_test_p(r: float, n: int) -> float:
    """Two-sided p-value of a correlation ``r`` from ``n`` pairs (t test, n - 2 dof)."""
    if n < 3 or not math.isfinite(r):
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    from scipy import stats  # imported when used: 2 s that a scan never needs

    t = r * math.sqrt((n - 2) / ((1.0 - r) * (1.0 + r)))
    return float(2.0 * stats.t.sf(abs(t), n - 2))


def _pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if den == 0.0:
        return math.nan
    return float(np.clip((dx @ dy) / den, -1.0, 1.0))


def pearson(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Correlation:
    """Pearson's linear correlation (PLCC) with its two-sided p-value.

    NaN when either input is constant or fewer than 2 (p: 3) pairs are given.
    """
    xa, ya = _pair(x, y)
    r = _pearson_r(xa, ya)
    return Correlation(r, _t_test_p(r, xa.size), int(xa.size))


def spearman(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Correlation:
    """Spearman's rank correlation (SRCC, ties get average ranks) with two-sided p-value.

    References: Kohlberger et al. 2019: the main metric, with a two-sided test;
    paper values rho = 0.808 (AT2) and 0.936 (S360).
    """
    from scipy import stats

    xa, ya = _pair(x, y)
    r = _pearson_r(stats.rankdata(xa), stats.rankdata(ya))
    return Correlation(r, _t_test_p(r, xa.size), int(xa.size))


def linregress(x: np.ndarray | Sequence[float], y: np.ndarray | Sequence[float]) -> Regression:
    """Ordinary least squares of ``y`` on ``x``, with standard errors.

    In the grade evaluation ``x`` is the pathologist grade (0..6) and ``y`` the
    predicted class (0..29); the ideal line has slope 29/6 = 4.83 and intercept 0.

    References: Kohlberger et al. 2019, Table 2.
    """
    xa, ya = _pair(x, y)
    n = int(xa.size)
    nan = math.nan
    if n < 2:
        return Regression(nan, nan, nan, nan, nan, nan, n)
    xm, ym = float(xa.mean()), float(ya.mean())
    dx, dy = xa - xm, ya - ym
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx == 0.0:
        return Regression(nan, nan, nan, nan, nan, nan, n)
    slope = sxy / sxx
    intercept = ym - slope * xm
    r = 0.0 if syy == 0.0 else float(np.clip(sxy / math.sqrt(sxx * syy), -1.0, 1.0))
    if n > 2:
        slope_se = math.sqrt(max(0.0, (1.0 - r * r) * syy / sxx / (n - 2)))
        intercept_se = slope_se * math.sqrt(float(xa @ xa) / n)
    else:
        slope_se = intercept_se = nan
    return Regression(slope, intercept, r, _t_test_p(r, n), slope_se, intercept_se, n)


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

    Computed as the normalised Mann-Whitney U statistic of the positives' scores.
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy import stats

    ranks = stats.rankdata(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def pr_auc(labels: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """Average precision: sum over score thresholds of precision x recall increment.

    The step-wise (not interpolated) area under the precision-recall curve, as
    ``sklearn.metrics.average_precision_score``; NaN when there is no positive.
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # the last index of each run of equal scores is one threshold
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), y_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(recall_step * precision))


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
