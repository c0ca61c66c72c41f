"""DeLong AUC variance, interval and paired test.

Reference values are worked by hand from the placement values of DeLong's
method, or computed in the test from explicit pairwise kernels, independently
of the fast rank-based implementation.
"""

import numpy as np
import pytest
from scipy import stats

from hipfuse.training import delong
from hipfuse.training.metrics import UndefinedReason

Z_95 = stats.norm.ppf(0.975)

# Worked by hand. Positives 0.9, 0.6, 0.4 and negatives 0.5, 0.2 give the
# placement values V10 = (1, 1, 1/2) and V01 = (2/3, 1), so AUC = 5/6,
# S10 = 1/12, S01 = 1/18 and the variance is S10 / 3 + S01 / 2 = 1/18.
# With 0.6 replaced by 0.5 (a tie, counted one half), V10 = (1, 3/4, 1/2) and
# V01 = (1/2, 1), so AUC = 3/4, S10 = 1/16, S01 = 1/8 and the variance is 1/12.
HAND_CASES = {
    "no_ties": ([0.9, 0.6, 0.4, 0.5, 0.2], 5 / 6, 1 / 18),
    "one_tie": ([0.9, 0.5, 0.4, 0.5, 0.2], 3 / 4, 1 / 12),
}
HAND_OUTCOME = np.array([True, True, True, False, False])


@pytest.mark.parametrize(("scores", "auc", "variance"), HAND_CASES.values(), ids=HAND_CASES.keys())
def test_delong_variance_hand_worked(scores, auc, variance):
    estimate = delong.delong_auc(HAND_OUTCOME, np.array(scores))

    assert estimate.auc == pytest.approx(auc, rel=1e-12)
    assert estimate.variance == pytest.approx(variance, rel=1e-12)
    assert estimate.n_positive == 3
    assert estimate.n_negative == 2


def test_delong_ci_is_clipped_normal_interval():
    estimate = delong.delong_auc(HAND_OUTCOME, np.array([0.9, 0.5, 0.4, 0.5, 0.2]))
    half_width = Z_95 * np.sqrt(1 / 12)

    assert estimate.ci_low == pytest.approx(0.75 - half_width, rel=1e-12)
    # 0.75 + 0.566 exceeds one, so the upper end is clipped.
    assert estimate.ci_high == 1.0


def test_paired_delong_hand_worked():
    # First scores as in the "no_ties" case, second as in "one_tie": the
    # difference components are V10 = (0, 1/4, 0) and V01 = (1/6, 0), so the
    # variance of the difference is (1/48) / 3 + (1/72) / 2 = 1/72.
    first = np.array([0.9, 0.6, 0.4, 0.5, 0.2])
    second = np.array([0.9, 0.5, 0.4, 0.5, 0.2])

    result = delong.delong_test(HAND_OUTCOME, first, second)
    reversed_result = delong.delong_test(HAND_OUTCOME, second, first)

    z = (1 / 12) / np.sqrt(1 / 72)
    assert result.difference == pytest.approx(1 / 12, rel=1e-12)
    assert result.variance == pytest.approx(1 / 72, rel=1e-12)
    assert result.z == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(z), rel=1e-12)
    assert result.ci_low == pytest.approx(1 / 12 - Z_95 * np.sqrt(1 / 72), rel=1e-12)
    assert result.ci_high == pytest.approx(1 / 12 + Z_95 * np.sqrt(1 / 72), rel=1e-12)
    assert reversed_result.z == pytest.approx(-z, rel=1e-12)
    assert reversed_result.p_value == pytest.approx(result.p_value, rel=1e-12)


def test_paired_delong_identical_curves_z0_p1():
    is_positive, scores, _ = _correlated_scores(60, 61)

    result = delong.delong_test(is_positive, scores, scores)

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
    expected_z = (aucs[0] - aucs[1]) / np.sqrt(expected_variance)
    assert comparison.z == pytest.approx(expected_z, rel=1e-10)


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
