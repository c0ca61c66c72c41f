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


# --- Clustered (two hips per patient) -----------------------------------------


def _direct_clustered_variance(is_positive, scores, clusters):
    """Obuchowski's clustered variance written out with S10, S01 and S11, O(m·n)."""
    positives = np.flatnonzero(is_positive)
    negatives = np.flatnonzero(~is_positive)
    m, n = positives.size, negatives.size
    psi = (scores[positives][:, None] > scores[negatives][None, :]) + 0.5 * (
        scores[positives][:, None] == scores[negatives][None, :]
    )
    auc = psi.mean()
    v10 = dict(zip(positives, psi.mean(axis=1), strict=True))
    v01 = dict(zip(negatives, psi.mean(axis=0), strict=True))
    labels = np.unique(clusters)
    i = labels.size
    s10 = s01 = s11 = 0.0
    for label in labels:
        members = np.flatnonzero(clusters == label)
        pos = [u for u in members if is_positive[u]]
        neg = [u for u in members if not is_positive[u]]
        a = sum(v10[u] for u in pos) - len(pos) * auc
        b = sum(v01[u] for u in neg) - len(neg) * auc
        s10 += a * a
        s01 += b * b
        s11 += a * b
    s10 *= i / ((i - 1) * m)
    s01 *= i / ((i - 1) * n)
    s11 *= i / (i - 1)
    return auc, s10 / m + s01 / n + 2 * s11 / (m * n)


def _direct_clustered_covariance(is_positive, score_rows, clusters):
    """Clustered covariance matrix of several AUCs on the same cases, term by term."""
    positives = np.flatnonzero(is_positive)
    negatives = np.flatnonzero(~is_positive)
    m, n = positives.size, negatives.size
    labels = np.unique(clusters)
    i = labels.size
    sums = []
    for scores in score_rows:
        x, y = scores[positives][:, None], scores[negatives][None, :]
        psi = (x > y) + 0.5 * (x == y)
        auc = psi.mean()
        v10 = np.zeros(scores.size)
        v01 = np.zeros(scores.size)
        v10[positives] = psi.mean(axis=1)
        v01[negatives] = psi.mean(axis=0)
        a = np.array([v10[clusters == c].sum() - (is_positive & (clusters == c)).sum() * auc
                      for c in labels])  # fmt: skip
        b = np.array([v01[clusters == c].sum() - (~is_positive & (clusters == c)).sum() * auc
                      for c in labels])  # fmt: skip
        sums.append((a, b))
    covariance = np.empty((len(score_rows), len(score_rows)))
    for r, (a_r, b_r) in enumerate(sums):
        for c, (a_c, b_c) in enumerate(sums):
            total = a_r @ a_c / m**2 + b_r @ b_c / n**2 + (a_r @ b_c + b_r @ a_c) / (m * n)
            covariance[r, c] = i / (i - 1) * total
    return covariance


def _bilateral_scores(n_patients, seed, correlation=0.95, noise=0.5):
    """Two hips per patient whose outcomes and scores are strongly correlated."""
    rng = np.random.default_rng(seed)
    patient_risk = rng.normal(size=n_patients)
    clusters = np.repeat(np.arange(n_patients), 2)
    shared = np.repeat(patient_risk, 2)
    own = rng.normal(size=2 * n_patients)
    latent = np.sqrt(correlation) * shared + np.sqrt(1 - correlation) * own
    is_positive = latent + rng.normal(scale=0.3, size=latent.size) > 0.6
    scores = latent + rng.normal(scale=noise, size=latent.size)
    return is_positive, scores, clusters


def test_clustered_variance_matches_direct_formula():
    is_positive, scores, clusters = _bilateral_scores(40, 71)
    scores = np.round(scores, 1)  # ties as well

    estimate = delong.delong_auc(is_positive, scores, clusters=clusters)
    auc, variance = _direct_clustered_variance(is_positive, scores, clusters)

    assert estimate.auc == pytest.approx(auc, rel=1e-12)
    assert estimate.variance == pytest.approx(variance, rel=1e-10)


def test_clustered_singletons_close_to_delong():
    is_positive, scores, _ = _correlated_scores(200, 81)

    clustered = delong.delong_auc(is_positive, scores, clusters=np.arange(200))
    independent = delong.delong_auc(is_positive, scores)

    # Only the small-sample factors differ: I / (I - 1) against m / (m - 1).
    assert clustered.variance == pytest.approx(independent.variance, rel=0.02)


def test_clustered_variance_close_to_patient_bootstrap():
    is_positive, scores, clusters = _bilateral_scores(300, 91)
    rng = np.random.default_rng(4)
    members = np.arange(600).reshape(300, 2)
    boot = [
        delong.binary_auc(is_positive[rows], scores[rows])
        for rows in (members[rng.integers(0, 300, 300)].ravel() for _ in range(2000))
    ]

    clustered = delong.delong_auc(is_positive, scores, clusters=clusters).variance
    independent = delong.delong_auc(is_positive, scores).variance

    # Bootstrap variance from 2000 resamples has a relative SD of about 3 %.
    assert clustered == pytest.approx(np.var(boot, ddof=1), rel=0.1)
    # Correlated hips: taking them as independent understates the variance.
    assert independent < 0.88 * np.var(boot, ddof=1)


def test_clustered_paired_test_matches_direct_formula():
    is_positive, scores_a, clusters = _bilateral_scores(50, 101)
    scores_b = scores_a + np.random.default_rng(5).normal(scale=0.7, size=scores_a.size)

    result = delong.delong_test(is_positive, scores_a, scores_b, clusters=clusters)
    covariance = _direct_clustered_covariance(is_positive, [scores_a, scores_b], clusters)

    expected = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    assert result.variance == pytest.approx(expected, rel=1e-10)
    assert result.z == pytest.approx(result.difference / np.sqrt(expected), rel=1e-10)


def test_clustered_single_patient_is_undefined():
    is_positive = np.array([True, True, False, False])
    scores = np.array([0.9, 0.8, 0.2, 0.1])

    estimate = delong.delong_auc(is_positive, scores, clusters=np.zeros(4))

    assert np.isnan(estimate.variance)
    assert estimate.reason is UndefinedReason.TOO_FEW_FOR_VARIANCE


def test_clusters_of_wrong_length_raise():
    with pytest.raises(ValueError, match="one patient ID per case"):
        delong.delong_auc(np.array([True, False, True]), np.zeros(3), clusters=np.zeros(2))


def test_clustered_macro_binary_equals_single_class():
    is_positive, scores_a, clusters = _bilateral_scores(60, 111)
    scores_b = scores_a + np.random.default_rng(6).normal(scale=0.7, size=scores_a.size)
    probability_a = 1 / (1 + np.exp(-scores_a))
    probability_b = 1 / (1 + np.exp(-scores_b))

    macro = delong.macro_delong_test(
        is_positive.astype(int),
        np.column_stack([1 - probability_a, probability_a]),
        np.column_stack([1 - probability_b, probability_b]),
        clusters=clusters,
    )
    single = delong.delong_test(is_positive, probability_a, probability_b, clusters=clusters)

    assert macro.variance == pytest.approx(single.variance, rel=1e-10)
    assert macro.z == pytest.approx(single.z, rel=1e-10)
