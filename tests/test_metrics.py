"""Metrics against their scipy / scikit-learn references, and known-truth behaviour."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from convfocus import metrics
from convfocus.types import OOF_BUCKETS


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _tied_pairs(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    grade = rng.integers(0, 13, n) / 2.0  # 0..6 in half steps: many ties
    cls = np.clip(np.round(29 / 6 * grade + rng.normal(0, 3, n)), 0, 29)
    return grade, cls


def test_spearman_matches_scipy(rng: np.random.Generator) -> None:
    for _ in range(5):
        x, y = _tied_pairs(rng)
        ref = stats.spearmanr(x, y)
        got = metrics.spearman(x, y)
        assert got.r == pytest.approx(ref.statistic, abs=1e-12)
        assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        assert got.n == x.size


def test_pearson_matches_scipy(rng: np.random.Generator) -> None:
    x = rng.normal(size=50)
    y = 0.3 * x + rng.normal(size=50)
    ref = stats.pearsonr(x, y)
    got = metrics.pearson(x, y)
    assert got.r == pytest.approx(ref.statistic, abs=1e-12)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-7)


def test_linregress_matches_scipy(rng: np.random.Generator) -> None:
    x, y = _tied_pairs(rng, 500)
    ref = stats.linregress(x, y)
    got = metrics.linregress(x, y)
    assert got.slope == pytest.approx(ref.slope, rel=1e-12)
    assert got.intercept == pytest.approx(ref.intercept, rel=1e-9, abs=1e-12)
    assert got.r == pytest.approx(ref.rvalue, rel=1e-12)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
    assert got.slope_stderr == pytest.approx(ref.stderr, rel=1e-9)
    assert got.intercept_stderr == pytest.approx(ref.intercept_stderr, rel=1e-9)


def test_degenerate_inputs_give_nan_not_errors() -> None:
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]).r)
    assert math.isnan(metrics.pearson([1.0], [2.0]).r)
    assert math.isnan(metrics.linregress([2, 2, 2], [1, 2, 3]).slope)
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(metrics.pr_auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError):
        metrics.spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 2], [0.1, 0.2])


def test_constant_input_is_nan_without_warnings() -> None:
    """One rule for a constant input: the correlation is undefined (NaN), silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (metrics.spearman, metrics.pearson):
            for x, y in (([1, 2, 3], [4, 4, 4]), ([2, 2, 2, 2], [1, 2, 3, 4])):
                got = fn(x, y)
                assert math.isnan(got.r) and math.isnan(got.p_value) and got.n == len(x)
        fit = metrics.linregress([1, 2, 3], [5, 5, 5])
    assert fit.slope == 0.0 and fit.intercept == 5.0
    assert math.isnan(fit.r) and math.isnan(fit.p_value)
    two = metrics.spearman([1, 2], [2, 1])  # r defined, no degree of freedom for a test
    assert two.r == pytest.approx(-1.0) and math.isnan(two.p_value)


def test_classification_metrics_known_cases() -> None:
    y = np.repeat(np.arange(30), 2)
    perfect = metrics.classification_metrics(y, y)
    assert perfect["exact"] == perfect["within1"] == perfect["within3"] == 1.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["n"] == 60
    assert perfect["mean_pred_per_class"] == [float(c) for c in range(30)]
    off = metrics.classification_metrics(y, np.minimum(y + 2, 29))
    assert off["exact"] == pytest.approx(2 / 60)  # class 29 stays
    assert off["within1"] == pytest.approx(4 / 60)  # and 28 moves by one
    assert off["within3"] == 1.0
    # a collapsed grader (one class for everything): Spearman undefined, reported as 0
    collapsed = metrics.classification_metrics(y, np.zeros_like(y))
    assert collapsed["spearman"] == 0.0 and collapsed["exact"] == pytest.approx(2 / 60)


def test_perfect_and_reversed_correlation() -> None:
    x = np.arange(10.0)
    assert metrics.spearman(x, x**3).r == pytest.approx(1.0)
    assert metrics.spearman(x, -x).r == pytest.approx(-1.0)
    assert metrics.spearman(x, x).p_value < 1e-50


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_pr_auc_match_sklearn(rng: np.random.Generator, ties: bool) -> None:
    for _ in range(5):
        y = rng.integers(0, 2, 400)
        s = rng.normal(size=400) + 0.8 * y
        if ties:
            s = np.round(s, 0)  # heavy ties
        assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert metrics.pr_auc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_shuffled_predictions_give_rho_near_zero(rng: np.random.Generator) -> None:
    grade, cls = _tied_pairs(rng, 20000)
    assert metrics.spearman(grade, cls).r > 0.8
    shuffled = metrics.spearman(grade, rng.permutation(cls))
    assert abs(shuffled.r) < 0.03
    assert shuffled.p_value > 1e-3


def test_balanced_resample_gives_equal_strata(rng: np.random.Generator) -> None:
    strata = np.r_[np.zeros(5), np.ones(500), np.full(1, 2.5)]
    idx = metrics.balanced_resample(strata, rng, n_per_stratum=3000)
    assert idx.size == 9000
    values, counts = np.unique(strata[idx], return_counts=True)
    assert values.tolist() == [0.0, 1.0, 2.5]
    assert counts.tolist() == [3000, 3000, 3000]
    again = metrics.balanced_resample(strata, np.random.default_rng(1234), n_per_stratum=3000)
    assert np.array_equal(idx, again)  # seeded


def test_bucket_index_uses_paper_buckets() -> None:
    got = metrics.bucket_index([0, 4, 5, 9, 10, 14, 15, 19, 20, 29, 30, -1])
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, -1, -1]
    assert OOF_BUCKETS == ((0, 4), (5, 9), (10, 14), (15, 19), (20, 29))


def test_group_folds_keep_groups_together(rng: np.random.Generator) -> None:
    groups = np.repeat(np.arange(23), 7)
    folds = metrics.group_folds(groups, rng, n_folds=10)
    assert set(folds.tolist()) == set(range(10))
    for g in range(23):
        assert np.unique(folds[groups == g]).size == 1
    few = metrics.group_folds(np.repeat([1, 2, 3], 4), rng, n_folds=10)
    assert set(few.tolist()) == {0, 1, 2}


def _simulated_detector(rng: np.random.Generator, d: float = 1.0) -> tuple:
    """Binormal scores with slide effects; the true AUC is Phi(d / sqrt(2))."""
    labels, scores, slides = [], [], []
    for slide in range(40):
        n = int(rng.integers(40, 80))
        y = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(int)
        labels.append(y)
        scores.append(rng.normal(size=n) + d * y)
        slides.append(np.full(n, slide))
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(slides)


def test_slide_bootstrap_interval_covers_true_auc(rng: np.random.Generator) -> None:
    true_auc = float(stats.norm.cdf(1.0 / math.sqrt(2.0)))
    y, s, slides = _simulated_detector(rng)
    ci = metrics.bootstrap_auc(y, s, slides, np.random.default_rng(7), n_boot=500)
    assert ci.n_valid == 500
    assert ci.low < ci.estimate < ci.high
    assert ci.low <= true_auc <= ci.high
    assert ci.high - ci.low < 0.1
    again = metrics.bootstrap_auc(y, s, slides, np.random.default_rng(7), n_boot=500)
    assert (again.low, again.high) == (ci.low, ci.high)


def test_bootstrap_coverage_is_near_nominal() -> None:
    """Over repeated simulated studies, the 95 % interval covers the truth most times."""
    true_auc = float(stats.norm.cdf(1.0 / math.sqrt(2.0)))
    covered = 0
    trials = 20
    for k in range(trials):
        r = np.random.default_rng(100 + k)
        y, s, slides = _simulated_detector(r)
        ci = metrics.bootstrap_auc(y, s, slides, r, n_boot=150)
        covered += ci.low <= true_auc <= ci.high
    assert covered >= 0.8 * trials


def test_bootstrap_skips_replicates_without_both_classes(rng: np.random.Generator) -> None:
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.1, 0.2])
    slides = np.array(["a", "a", "b", "b"])  # each slide has one class only
    ci = metrics.bootstrap_auc(y, s, slides, rng, n_boot=100)
    assert ci.estimate == 1.0
    assert 0 < ci.n_valid < 100
