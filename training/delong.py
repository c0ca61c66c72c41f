"""AUC of one-vs-rest scores and DeLong inference: variances, intervals, paired tests.

Functions take integer class indices and probability matrices as
:mod:`hipfuse.training.metrics` does, and mark undefined figures with its
``UndefinedReason`` instead of raising.

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more
correlated receiver operating characteristic curves: a nonparametric approach.
Biometrics 1988;44:837-845.

Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas
under correlated receiver operating characteristic curves. IEEE Signal
Processing Letters 2014;21(11):1389-1393.

Obuchowski NA. Nonparametric analysis of clustered ROC curve data.
Biometrics 1997;53:567-578.

With ``clusters`` (the patient of each hip) the variances are Obuchowski's
clustered form of DeLong's: the structural components are summed within each
patient before they are squared, so the correlation between the two hips of
one patient widens the interval as it should.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from hipfuse.training.metrics import UndefinedReason, validate_label_probabilities, z_quantile

# Name of the AUC interval and test method in reports that pass patients as clusters.
AUC_INTERVAL_METHOD = "DeLong, clustered by patient (Obuchowski 1997)"


@dataclass(frozen=True)
class AucEstimate:
    """Empirical AUC of one score against one binary outcome, with its DeLong interval.

    Attributes
    ----------
    auc
        Area under the empirical ROC curve (ties count one half).
    variance
        DeLong variance of ``auc``.
    ci_low, ci_high
        Normal interval ``auc ± z · sqrt(variance)`` clipped to ``[0, 1]``.
    n_positive, n_negative
        Cases with and without the outcome.
    reason
        Why ``auc`` or its variance is ``NaN``, else ``None``.
    """

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int
    reason: UndefinedReason | None = None


@dataclass(frozen=True)
class DeLongComparison:
    """Paired DeLong test of ``auc_first - auc_second`` on the same cases.

    Attributes
    ----------
    auc_first, auc_second
        The two AUCs (for a macro comparison, the two macro AUCs).
    difference
        ``auc_first - auc_second``.
    variance
        DeLong variance of ``difference``, covariance of the two AUCs included.
    z
        ``difference / sqrt(variance)``; 0 when both models rank every case alike.
    p_value
        Two-sided p-value of ``z`` under the standard normal.
    ci_low, ci_high
        Normal confidence interval of ``difference`` (not clipped).
    reason
        Why the test is ``NaN``, else ``None``.
    """

    auc_first: float
    auc_second: float
    difference: float
    variance: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    reason: UndefinedReason | None = None


def _missing_class_reason(n_positive: int, n_negative: int) -> UndefinedReason | None:
    if n_positive == 0:
        return UndefinedReason.NO_POSITIVES
    if n_negative == 0:
        return UndefinedReason.NO_NEGATIVES
    return None


def auc_from_ranks(is_positive: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Return the Mann-Whitney AUC of each row of ``ranks`` (midranks over all cases).

    Needs both outcomes in ``is_positive``; callers check that first.
    """
    m = int(is_positive.sum())
    n = is_positive.size - m
    rank_sum = ranks[..., is_positive].sum(axis=-1)
    return (rank_sum - m * (m + 1) / 2.0) / (m * n)


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Return the empirical AUC (higher score means positive), ``NaN`` without both outcomes."""
    is_positive = np.asarray(is_positive, dtype=bool)
    m = int(is_positive.sum())
    if m == 0 or m == is_positive.size:
        return float("nan")
    ranks = stats.rankdata(np.asarray(scores, dtype=np.float64))
    return float(auc_from_ranks(is_positive, ranks))


def _delong_components(
    is_positive: np.ndarray, scores: np.ndarray, clusters: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return AUCs and the DeLong components of score rows ``[k, n_cases]``.

    Structural components come from midranks (Sun & Xu 2014): for a positive
    case, ``V10 = (rank among all - rank among positives) / n``; for a negative
    case, ``V01 = 1 - (rank among all - rank among negatives) / m``.

    Without ``clusters`` they are centred and scaled by ``1 / sqrt(m (m - 1))``
    or ``1 / sqrt(n (n - 1))``, one column per case, so that
    ``components @ components.T`` is DeLong's covariance ``S10 / m + S01 / n``.

    With ``clusters`` (a label per case; needs two clusters or more) the
    centred components are scaled by ``1 / m`` or ``1 / n``, summed within each
    cluster and multiplied by ``sqrt(I / (I - 1))`` for ``I`` clusters, one
    column per cluster. ``components @ components.T`` is then Obuchowski's
    clustered covariance ``S10 / m + S01 / n + 2 S11 / (m n)``. Needs ``m, n >= 2``.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m = int(is_positive.sum())
    n = is_positive.size - m
    rank_all = stats.rankdata(scores, axis=1)
    rank_positive = stats.rankdata(scores[:, is_positive], axis=1)
    rank_negative = stats.rankdata(scores[:, ~is_positive], axis=1)
    v10 = (rank_all[:, is_positive] - rank_positive) / n
    v01 = 1.0 - (rank_all[:, ~is_positive] - rank_negative) / m
    theta = v10.mean(axis=1)
    components = np.empty_like(scores)
    if clusters is None:
        components[:, is_positive] = (v10 - theta[:, None]) / np.sqrt(m * (m - 1.0))
        components[:, ~is_positive] = (v01 - theta[:, None]) / np.sqrt(n * (n - 1.0))
        return theta, components
    components[:, is_positive] = (v10 - theta[:, None]) / m
    components[:, ~is_positive] = (v01 - theta[:, None]) / n
    _, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1
    per_cluster = np.zeros((scores.shape[0], n_clusters))
    np.add.at(per_cluster.T, cluster_index, components.T)
    return theta, per_cluster * np.sqrt(n_clusters / (n_clusters - 1.0))


def _check_clusters(clusters: np.ndarray | None, n_cases: int) -> np.ndarray | None:
    """Return ``clusters`` as an array after checking it labels every case."""
    if clusters is None:
        return None
    clusters = np.asarray(clusters)
    if clusters.shape != (n_cases,):
        raise ValueError(
            f"clusters has shape {clusters.shape} but there are {n_cases} cases; "
            "pass one patient ID per case"
        )
    return clusters


def _too_few_clusters(clusters: np.ndarray | None) -> bool:
    return clusters is not None and np.unique(clusters).size < 2


def delong_auc(
    is_positive: np.ndarray,
    scores: np.ndarray,
    confidence_level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> AucEstimate:
    """Estimate the AUC of one score with its DeLong variance and normal interval.

    Parameters
    ----------
    is_positive
        Boolean outcome per case.
    scores
        Score per case; higher means more likely positive. The direction is
        never flipped to make the AUC exceed one half.
    confidence_level
        Coverage of the interval.
    clusters
        Patient (or other cluster) of each case, for the clustered variance;
        ``None`` takes the cases as independent.
    """
    z = z_quantile(confidence_level)
    is_positive = np.asarray(is_positive, dtype=bool)
    clusters = _check_clusters(clusters, is_positive.size)
    m = int(is_positive.sum())
    n = is_positive.size - m
    reason = _missing_class_reason(m, n)
    if reason is not None:
        nan = float("nan")
        return AucEstimate(nan, nan, nan, nan, m, n, reason)
    if m < 2 or n < 2 or _too_few_clusters(clusters):
        nan = float("nan")
        auc = binary_auc(is_positive, scores)
        return AucEstimate(auc, nan, nan, nan, m, n, UndefinedReason.TOO_FEW_FOR_VARIANCE)
    theta, components = _delong_components(is_positive, scores, clusters)
    auc = float(theta[0])
    variance = float(np.sum(components[0] ** 2))
    half_width = z * np.sqrt(variance)
    return AucEstimate(
        auc=auc,
        variance=variance,
        ci_low=float(max(auc - half_width, 0.0)),
        ci_high=float(min(auc + half_width, 1.0)),
        n_positive=m,
        n_negative=n,
    )


def one_vs_rest_auc(
    labels: np.ndarray,
    probabilities: np.ndarray,
    confidence_level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> list[AucEstimate]:
    """Return the DeLong AUC estimate of every class against all others."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    validate_label_probabilities(labels, probabilities)
    return [
        delong_auc(labels == k, probabilities[:, k], confidence_level, clusters)
        for k in range(probabilities.shape[1])
    ]


def macro_auc(class_aucs: list[float]) -> tuple[float, UndefinedReason | None]:
    """Return the unweighted mean of the per-class AUCs.

    The mean is ``NaN`` with ``CLASS_AUC_UNDEFINED`` when any class AUC is
    undefined, as scikit-learn's ``roc_auc_score(multi_class="ovr")`` raises
    for such data. Averaging only the defined classes would change what the
    figure means from one data set to the next.
    """
    values = np.asarray(class_aucs, dtype=np.float64)
    if np.any(np.isnan(values)):
        return float("nan"), UndefinedReason.CLASS_AUC_UNDEFINED
    return float(values.mean()), None


def micro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the AUC of all ``n · C`` one-hot indicators pooled against all probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    one_hot = np.asarray(labels)[:, None] == np.arange(probabilities.shape[1])[None, :]
    return binary_auc(one_hot.ravel(), probabilities.ravel())


def _comparison_from_components(
    theta_first: float,
    theta_second: float,
    difference_components: np.ndarray,
    confidence_level: float,
) -> DeLongComparison:
    z_level = z_quantile(confidence_level)
    difference = theta_first - theta_second
    variance = float(np.sum(difference_components**2))
    nan = float("nan")
    if difference == 0.0 and variance == 0.0:
        # Identical curves: report no difference (Z = 0, p = 1) instead of 0 / 0.
        return DeLongComparison(theta_first, theta_second, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, None)
    if variance <= 0.0:
        return DeLongComparison(
            theta_first,
            theta_second,
            difference,
            variance,
            nan,
            nan,
            nan,
            nan,
            UndefinedReason.ZERO_VARIANCE,
        )
    standard_error = float(np.sqrt(variance))
    z = difference / standard_error
    return DeLongComparison(
        auc_first=theta_first,
        auc_second=theta_second,
        difference=difference,
        variance=variance,
        z=z,
        p_value=float(2.0 * stats.norm.sf(abs(z))),
        ci_low=difference - z_level * standard_error,
        ci_high=difference + z_level * standard_error,
    )


def _undefined_comparison(reason: UndefinedReason) -> DeLongComparison:
    nan = float("nan")
    return DeLongComparison(nan, nan, nan, nan, nan, nan, nan, nan, reason)


def delong_test(
    is_positive: np.ndarray,
    scores_first: np.ndarray,
    scores_second: np.ndarray,
    confidence_level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> DeLongComparison:
    """Compare two correlated AUCs on the same cases with DeLong's paired test.

    ``z`` is the difference over its DeLong standard error and ``p_value`` is
    two-sided; higher scores mean more likely positive for both. ``clusters``
    (the patient of each case) gives the clustered variance.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    clusters = _check_clusters(clusters, is_positive.size)
    m = int(is_positive.sum())
    n = is_positive.size - m
    reason = _missing_class_reason(m, n)
    if reason is not None:
        return _undefined_comparison(reason)
    if m < 2 or n < 2 or _too_few_clusters(clusters):
        return _undefined_comparison(UndefinedReason.TOO_FEW_FOR_VARIANCE)
    theta, components = _delong_components(
        is_positive, np.vstack([scores_first, scores_second]), clusters
    )
    return _comparison_from_components(
        float(theta[0]), float(theta[1]), components[0] - components[1], confidence_level
    )


def macro_delong_test(
    labels: np.ndarray,
    probabilities_first: np.ndarray,
    probabilities_second: np.ndarray,
    confidence_level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> DeLongComparison:
    """Compare the macro (one-vs-rest mean) AUCs of two models on the same cases.

    The variance of the macro difference sums, case by case (or cluster by
    cluster with ``clusters``), the DeLong components of every class, so it
    includes the covariance between the class AUCs that share cases. With one
    class it reduces to ``delong_test``.
    """
    labels = np.asarray(labels)
    clusters = _check_clusters(clusters, labels.size)
    probabilities_first = np.asarray(probabilities_first, dtype=np.float64)
    probabilities_second = np.asarray(probabilities_second, dtype=np.float64)
    validate_label_probabilities(labels, probabilities_first)
    validate_label_probabilities(labels, probabilities_second)
    n_classes = probabilities_first.shape[1]
    summed: np.ndarray | float = 0.0
    aucs_first = []
    aucs_second = []
    for k in range(n_classes):
        is_positive = labels == k
        m = int(is_positive.sum())
        n = is_positive.size - m
        if min(m, n) == 0:
            return _undefined_comparison(UndefinedReason.CLASS_AUC_UNDEFINED)
        if min(m, n) < 2 or _too_few_clusters(clusters):
            return _undefined_comparison(UndefinedReason.TOO_FEW_FOR_VARIANCE)
        theta, components = _delong_components(
            is_positive,
            np.vstack([probabilities_first[:, k], probabilities_second[:, k]]),
            clusters,
        )
        aucs_first.append(theta[0])
        aucs_second.append(theta[1])
        summed += components[0] - components[1]
    return _comparison_from_components(
        float(np.mean(aucs_first)),
        float(np.mean(aucs_second)),
        np.asarray(summed) / n_classes,
        confidence_level,
    )


def macro_delong_auc(
    labels: np.ndarray,
    probabilities: np.ndarray,
    confidence_level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> AucEstimate:
    """Estimate the macro (one-vs-rest mean) AUC with its DeLong variance and interval.

    The variance sums, case by case, the DeLong components of every class
    before squaring, so it includes the covariance between class AUCs that
    share cases, as :func:`macro_delong_test` does for a difference.
    ``n_positive`` and ``n_negative`` are the smallest counts over the classes.
    ``clusters`` (the patient of each case) gives the clustered variance.
    """
    z = z_quantile(confidence_level)
    labels = np.asarray(labels)
    clusters = _check_clusters(clusters, labels.size)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    validate_label_probabilities(labels, probabilities)
    n_classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=n_classes)
    m = int(counts.min())
    n = int(labels.size - counts.max())
    nan = float("nan")
    if m == 0 or n == 0:
        return AucEstimate(nan, nan, nan, nan, m, n, UndefinedReason.CLASS_AUC_UNDEFINED)
    if m < 2 or n < 2 or _too_few_clusters(clusters):
        aucs = [binary_auc(labels == k, probabilities[:, k]) for k in range(n_classes)]
        return AucEstimate(
            float(np.mean(aucs)), nan, nan, nan, m, n, UndefinedReason.TOO_FEW_FOR_VARIANCE
        )
    summed: np.ndarray | float = 0.0
    aucs = []
    for k in range(n_classes):
        theta, components = _delong_components(labels == k, probabilities[:, k], clusters)
        aucs.append(float(theta[0]))
        summed += components[0]
    auc = float(np.mean(aucs))
    variance = float(np.sum((np.asarray(summed) / n_classes) ** 2))
    half_width = z * np.sqrt(variance)
    return AucEstimate(
        auc=auc,
        variance=variance,
        ci_low=float(max(auc - half_width, 0.0)),
        ci_high=float(min(auc + half_width, 1.0)),
        n_positive=m,
        n_negative=n,
    )
