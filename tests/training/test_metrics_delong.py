"""DeLong AUC variance, interval and paired test.

Reference values come from pROC's own test suite (github.com/xrobin/pROC,
tests/testthat/test-var.R, test-ci.auc.R and test-roc.test.R) on pROC's
``aSAH`` data set (Turck et al., Intensive Care Med 2010;36:107-115). There
``r.wfns``, ``r.s100b`` and ``r.ndka`` are ``roc(aSAH$outcome, marker)``, and
pROC's automatic direction is ``controls < cases`` for all three.
"""

import numpy as np
import pytest
from scipy import stats

from hipfuse.training import delong
from hipfuse.training.metrics import UndefinedReason

# pROC's aSAH rows in data-set order: outcome, wfns, s100b, ndka. The values
# reproduce pROC's published AUCs and DeLong variances to 1e-12 (tests below),
# which checks the transcription.
ASAH_ROWS = """
    Good 1 0.13 3.01 | Good 1 0.14 8.54 | Good 1 0.10 8.09 | Good 1 0.04 10.42
    Poor 3 0.13 17.40 | Poor 2 0.10 12.75 | Good 5 0.47 6.00 | Poor 4 0.16 13.20
    Good 1 0.18 15.54 | Good 2 0.10 6.01 | Poor 5 0.12 15.96 | Good 2 0.10 17.86
    Poor 5 0.44 5.18 | Poor 5 0.71 8.90 | Good 1 0.04 13.41 | Good 2 0.08 20.75
    Poor 5 0.49 11.60 | Good 2 0.04 16.11 | Poor 2 0.07 32.37 | Poor 5 0.33 54.82
    Poor 2 0.09 32.41 | Good 1 0.09 49.94 | Poor 1 0.07 40.34 | Good 1 0.11 9.47
    Good 1 0.07 6.29 | Good 2 0.17 12.53 | Good 1 0.07 6.54 | Good 2 0.11 6.30
    Good 1 0.13 80.30 | Good 1 0.19 12.80 | Good 3 0.05 9.80 | Good 4 0.16 9.81
    Poor 2 0.41 9.85 | Good 1 0.14 18.21 | Good 4 0.34 5.03 | Poor 5 0.35 14.04
    Poor 4 0.48 21.93 | Good 1 0.09 8.02 | Poor 4 0.96 7.42 | Poor 2 0.25 8.38
    Good 5 0.50 6.59 | Good 5 0.46 9.63 | Good 1 0.16 13.12 | Good 1 0.07 7.96
    Good 2 0.43 14.34 | Good 4 0.45 41.43 | Good 1 0.11 7.63 | Good 1 0.08 7.06
    Good 2 0.09 12.59 | Poor 5 0.86 13.56 | Poor 5 0.52 3.87 | Good 2 0.08 9.44
    Good 1 0.06 7.66 | Good 2 0.13 12.98 | Poor 5 2.07 419.19 | Good 1 0.10 27.19
    Good 2 0.14 22.27 | Good 2 0.15 9.95 | Poor 2 0.07 21.22 | Good 1 0.06 11.73
    Poor 5 0.77 10.40 | Good 1 0.05 58.83 | Good 1 0.09 6.39 | Poor 2 0.30 11.09
    Poor 5 0.03 12.22 | Poor 2 0.09 13.67 | Good 1 0.04 17.21 | Poor 4 0.23 22.63
    Poor 5 0.70 12.90 | Good 2 0.09 9.70 | Poor 4 0.27 21.57 | Poor 4 0.71 8.23
    Poor 1 0.08 72.57 | Poor 4 0.26 15.54 | Good 1 0.08 10.51 | Good 2 0.16 10.60
    Good 1 0.09 14.57 | Poor 4 0.13 5.19 | Poor 2 0.10 9.63 | Good 1 0.08 4.61
    Poor 2 0.11 21.48 | Good 3 0.33 17.30 | Good 2 0.11 12.71 | Good 4 0.28 9.44
    Good 2 0.07 11.07 | Good 1 0.10 19.46 | Good 4 0.32 10.83 | Poor 5 0.22 5.37
    Good 1 0.07 11.97 | Good 1 0.05 7.75 | Good 5 0.24 9.83 | Good 4 0.38 10.55
    Good 2 0.10 28.49 | Good 2 0.15 8.53 | Good 1 0.08 12.57 | Good 1 0.14 12.90
    Good 1 0.10 46.83 | Good 3 0.07 11.68 | Good 1 0.04 12.67 | Good 2 0.19 9.01
    Poor 5 0.56 9.57 | Poor 2 0.14 34.06 | Poor 2 0.58 11.72 | Poor 5 0.32 14.26
    Poor 5 0.82 47.61 | Poor 5 0.74 11.67 | Good 2 0.15 24.58 | Good 4 0.47 10.33
    Good 4 0.17 13.87 | Poor 5 0.44 15.89 | Good 1 0.15 22.43 | Good 1 0.50 6.79
    Good 1 0.48 13.45
"""


def _load_asah():
    records = [r.split() for r in ASAH_ROWS.replace("\n", "|").split("|") if r.strip()]
    poor = np.array([r[0] == "Poor" for r in records])
    markers = {
        name: np.array([float(r[column]) for r in records])
        for column, name in ((1, "wfns"), (2, "s100b"), (3, "ndka"))
    }
    return poor, markers


POOR, MARKERS = _load_asah()
Z_95 = stats.norm.ppf(0.975)


def test_asah_has_proc_counts():
    assert POOR.size == 113
    assert POOR.sum() == 41


# marker, AUC (roc.test estimates and test-auc.R), DeLong variance (test-var.R)
PROC_VARIANCES = {
    "wfns": ("wfns", 0.823678861788618, 0.00146991470882363),
    "ndka": ("ndka", 0.611957994579946, 0.0031908105493913),
    "s100b": ("s100b", None, 0.00266868245717244),
}


@pytest.mark.parametrize(
    ("marker", "auc", "variance"), PROC_VARIANCES.values(), ids=PROC_VARIANCES.keys()
)
def test_delong_variance_matches_proc(marker, auc, variance):
    estimate = delong.delong_auc(POOR, MARKERS[marker])

    assert estimate.variance == pytest.approx(variance, rel=1e-10)
    if auc is not None:
        assert estimate.auc == pytest.approx(auc, rel=1e-12)
    assert estimate.n_positive == 41
    assert estimate.n_negative == 72


def test_delong_ci_matches_proc_ci_auc():
    # test-ci.auc.R: ci.auc(r.ndka) with the default DeLong method.
    estimate = delong.delong_auc(POOR, MARKERS["ndka"])

    assert estimate.ci_low == pytest.approx(0.501244999271703, rel=1e-10)
    assert estimate.ci_high == pytest.approx(0.722670989888189, rel=1e-10)


def test_delong_ci_is_normal_interval_on_variance():
    estimate = delong.delong_auc(POOR, MARKERS["s100b"])
    half_width = Z_95 * np.sqrt(0.00266868245717244)

    assert estimate.auc == pytest.approx(0.7313685636856369, rel=1e-12)
    assert estimate.ci_low == pytest.approx(estimate.auc - half_width, rel=1e-10)
    assert estimate.ci_high == pytest.approx(estimate.auc + half_width, rel=1e-10)
    assert round(estimate.ci_low, 4) == 0.6301
    assert round(estimate.ci_high, 4) == 0.8326


# first, second, Z, p, difference interval (test-roc.test.R)
PROC_TESTS = {
    "wfns_vs_s100b": (
        "wfns",
        "s100b",
        2.20898359144091,
        0.0271757822291882,
        0.0104061769564846,
        0.174214419249478,
    ),
    "wfns_vs_ndka": (
        "wfns",
        "ndka",
        2.79777591868904,
        0.00514557970691098,
        0.0634011709339876,
        0.3600405634833566,
    ),
    "ndka_vs_s100b": (
        "ndka",
        "s100b",
        -1.39077002573558,
        0.164295175223054,
        -0.2876917446341914,
        0.0488706064228094,
    ),
}


@pytest.mark.parametrize(
    ("first", "second", "z", "p_value", "ci_low", "ci_high"),
    PROC_TESTS.values(),
    ids=PROC_TESTS.keys(),
)
def test_paired_delong_matches_proc_roc_test(first, second, z, p_value, ci_low, ci_high):
    result = delong.delong_test(POOR, MARKERS[first], MARKERS[second])
    reversed_result = delong.delong_test(POOR, MARKERS[second], MARKERS[first])

    assert result.z == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p_value, rel=1e-10)
    assert result.ci_low == pytest.approx(ci_low, rel=1e-10)
    assert result.ci_high == pytest.approx(ci_high, rel=1e-10)
    assert reversed_result.z == pytest.approx(-z, rel=1e-10)
    assert reversed_result.p_value == pytest.approx(p_value, rel=1e-10)


def test_paired_delong_identical_curves_z0_p1():
    result = delong.delong_test(POOR, MARKERS["wfns"], MARKERS["wfns"])

    assert result.z == 0.0
    assert result.p_value == 1.0
    assert result.reason is None


def test_paired_delong_without_positives_is_undefined():
    is_positive = np.zeros(10, dtype=bool)
    scores = np.linspace(0, 1, 10)

    result = delong.delong_test(is_positive, scores, scores[::-1])

    assert np.isnan(result.z)
    assert result.reason is UndefinedReason.NO_POSITIVES


# --- Independent checks on synthetic data ---------------------------------------


def _direct_delong_covariance(is_positive, scores_a, scores_b):
    """DeLong (1988) covariance of two AUCs from explicit pairwise kernels, O(m·n)."""
    positives = np.flatnonzero(is_positive)
    negatives = np.flatnonzero(~is_positive)

    def psi(x, y):
        if x > y:
            return 1.0
        if x == y:
            return 0.5
        return 0.0

    def components(scores):
        v10 = [np.mean([psi(scores[i], scores[j]) for j in negatives]) for i in positives]
        v01 = [np.mean([psi(scores[i], scores[j]) for i in positives]) for j in negatives]
        return np.array(v10), np.array(v01)

    a10, a01 = components(scores_a)
    b10, b01 = components(scores_b)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    return np.array([a10.mean(), b10.mean()]), s10 / positives.size + s01 / negatives.size


def _correlated_scores(n, seed, rounding=None):
    rng = np.random.default_rng(seed)
    is_positive = rng.random(n) < 0.35
    shared = rng.normal(size=n)
    scores_a = shared + 1.0 * is_positive + rng.normal(scale=0.8, size=n)
    scores_b = shared + 0.6 * is_positive + rng.normal(scale=0.8, size=n)
    if rounding is not None:
        scores_a = np.round(scores_a, rounding)
        scores_b = np.round(scores_b, rounding)
    return is_positive, scores_a, scores_b


SYNTHETIC = {
    "continuous": lambda: _correlated_scores(90, 11),
    "heavy_ties": lambda: _correlated_scores(90, 12, rounding=0),
    "small": lambda: _correlated_scores(12, 13),
}


@pytest.mark.parametrize("case", SYNTHETIC.values(), ids=SYNTHETIC.keys())
def test_fast_delong_matches_direct_pairwise(case):
    is_positive, scores_a, scores_b = case()
    aucs, covariance = _direct_delong_covariance(is_positive, scores_a, scores_b)

    first = delong.delong_auc(is_positive, scores_a)
    comparison = delong.delong_test(is_positive, scores_a, scores_b)

    assert first.auc == pytest.approx(aucs[0], rel=1e-12)
    assert first.variance == pytest.approx(covariance[0, 0], rel=1e-10)
    expected_variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    assert comparison.variance == pytest.approx(expected_variance, rel=1e-10)
    assert comparison.difference == pytest.approx(aucs[0] - aucs[1], rel=1e-10)


def _bootstrap_variance(statistic, n, n_resamples, seed):
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(n_resamples)]
    return np.var(values, ddof=1)


def test_delong_variance_close_to_bootstrap():
    is_positive, scores_a, scores_b = _correlated_scores(400, 21)

    unpaired = delong.delong_auc(is_positive, scores_a).variance
    paired = delong.delong_test(is_positive, scores_a, scores_b).variance
    boot = _bootstrap_variance(
        lambda i: delong.binary_auc(is_positive[i], scores_a[i]), 400, 2000, 1
    )
    boot_paired = _bootstrap_variance(
        lambda i: (
            delong.binary_auc(is_positive[i], scores_a[i])
            - delong.binary_auc(is_positive[i], scores_b[i])
        ),
        400,
        2000,
        2,
    )

    # Bootstrap variance from 2000 resamples has a relative SD of about 3 %.
    assert unpaired == pytest.approx(boot, rel=0.15)
    assert paired == pytest.approx(boot_paired, rel=0.15)


def _four_class_models(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    shared = rng.normal(size=(n, 4))
    first = shared + rng.normal(scale=0.7, size=(n, 4))
    second = shared + rng.normal(scale=0.7, size=(n, 4))
    first[np.arange(n), labels] += 1.2
    second[np.arange(n), labels] += 0.8

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return labels, softmax(first), softmax(second)


def test_macro_delong_variance_close_to_bootstrap():
    labels, first, second = _four_class_models(400, 31)

    result = delong.macro_delong_test(labels, first, second)

    def macro_difference(indices):
        y = labels[indices]
        return np.mean(
            [
                delong.binary_auc(y == k, first[indices, k])
                - delong.binary_auc(y == k, second[indices, k])
                for k in range(4)
            ]
        )

    boot = _bootstrap_variance(macro_difference, 400, 2000, 3)
    assert result.variance == pytest.approx(boot, rel=0.15)
    expected_first = np.mean([delong.binary_auc(labels == k, first[:, k]) for k in range(4)])
    assert result.auc_first == pytest.approx(expected_first, rel=1e-12)


def test_macro_delong_binary_equals_single_class_test():
    is_positive, scores_a, scores_b = _correlated_scores(80, 41)
    probability_a = 1 / (1 + np.exp(-scores_a))
    probability_b = 1 / (1 + np.exp(-scores_b))
    labels = is_positive.astype(int)

    macro = delong.macro_delong_test(
        labels,
        np.column_stack([1 - probability_a, probability_a]),
        np.column_stack([1 - probability_b, probability_b]),
    )
    single = delong.delong_test(is_positive, probability_a, probability_b)

    assert macro.z == pytest.approx(single.z, rel=1e-10)
    assert macro.variance == pytest.approx(single.variance, rel=1e-10)


def test_macro_delong_absent_class_is_undefined():
    labels, first, second = _four_class_models(40, 51)
    labels[labels == 3] = 0

    result = delong.macro_delong_test(labels, first, second)

    assert np.isnan(result.z)
    assert result.reason is UndefinedReason.CLASS_AUC_UNDEFINED
