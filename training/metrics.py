"""Discrimination metrics, DeLong AUC inference and the patient-level bootstrap.

Every function works on integer class indices ``0 .. C-1`` and a probability
matrix ``[n_cases, C]``, so it serves any class list; the hip classes are one
such list. The predicted class of a case is the column with the highest
probability (the first one on a tie, as ``numpy.argmax`` breaks ties).

A figure that a sample cannot define (sensitivity of a class with no cases,
AUC without negatives) is ``NaN``, and an ``UndefinedReason`` next to it says
why. No function raises for such a sample.

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more
correlated receiver operating characteristic curves: a nonparametric approach.
Biometrics 1988;44:837-845.

Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas
under correlated receiver operating characteristic curves. IEEE Signal
Processing Letters 2014;21(11):1389-1393.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import stats


class UndefinedReason(StrEnum):
    """Reason that a figure is ``NaN`` for the sample at hand."""

    NO_POSITIVES = "no_positives"
    NO_NEGATIVES = "no_negatives"
    NO_PREDICTED_POSITIVES = "no_predicted_positives"
    NO_PREDICTED_NEGATIVES = "no_predicted_negatives"
    TOO_FEW_FOR_VARIANCE = "fewer_than_two_positives_or_negatives"
    CLASS_AUC_UNDEFINED = "class_auc_undefined"
    ZERO_VARIANCE = "zero_variance"
    PERFECT_SEPARATION = "perfect_separation"
    NO_VALID_RESAMPLES = "no_valid_resamples"


@dataclass(frozen=True)
class ClassMetrics:
    """One-vs-rest counts and threshold metrics of one class at the argmax decision.

    Attributes
    ----------
    true_positives, false_positives, true_negatives, false_negatives
        Case counts with this class as the positive class.
    sensitivity, specificity, ppv, npv, f1
        Ratios in ``[0, 1]``, ``NaN`` where the denominator is zero.
    undefined
        Metric name to reason for every ``NaN`` above.
    """

    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    undefined: dict[str, UndefinedReason] = field(default_factory=dict)

    @property
    def support(self) -> int:
        """Number of cases whose true class is this class."""
        return self.true_positives + self.false_negatives


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
        Normal interval ``auc ± z · sqrt(variance)`` clipped to ``[0, 1]``, as
        pROC's ``ci.auc(method = "delong")`` computes it.
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


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval of one statistic.

    Attributes
    ----------
    low, high
        Percentiles ``(1 - level) / 2`` and ``(1 + level) / 2`` of the resampled
        values that are defined (linear interpolation, R's quantile type 7).
    n_valid
        Resamples in which the statistic was defined; the others are left out.
    reason
        ``NO_VALID_RESAMPLES`` when no resample defined it, else ``None``.
    """

    low: float
    high: float
    n_valid: int
    reason: UndefinedReason | None = None


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def _z_quantile(confidence_level: float) -> float:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level {confidence_level!r} is outside (0, 1): pass e.g. 0.95")
    return float(stats.norm.ppf(0.5 + confidence_level / 2.0))


def validate_label_probabilities(labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Raise ``ValueError`` unless labels and probabilities describe the same cases.

    ``labels`` must be integer class indices ``0 .. C-1`` of shape ``[n]`` and
    ``probabilities`` a finite ``[n, C]`` matrix with at least two columns.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            f"probabilities have shape {probabilities.shape}: expected [n_cases, n_classes] "
            "with at least two classes"
        )
    if labels.shape != (probabilities.shape[0],):
        raise ValueError(
            f"labels have shape {labels.shape} but probabilities have "
            f"{probabilities.shape[0]} rows: pass one label per case"
        )
    if labels.size == 0:
        raise ValueError("no cases: pass at least one labelled case")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels have dtype {labels.dtype}: pass integer class indices")
    n_classes = probabilities.shape[1]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"labels range from {labels.min()} to {labels.max()}: "
            f"class indices must lie in 0..{n_classes - 1}"
        )
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contain NaN or infinity: remove or fix those cases")


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Return the index of the most probable class of each case (first on a tie)."""
    return np.argmax(np.asarray(probabilities), axis=1)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Count cases by true class (rows) and predicted class (columns).

    Returns
    -------
    numpy.ndarray
        ``int64`` matrix ``[n_classes, n_classes]``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Return the fraction of cases whose predicted class is the true class."""
    labels = np.asarray(labels)
    return _ratio(int(np.sum(labels == np.asarray(predicted))), labels.size)


def class_metrics(matrix: np.ndarray) -> list[ClassMetrics]:
    """Derive one-vs-rest metrics of every class from a confusion matrix.

    F1 is ``2·TP / (2·TP + FP + FN)``, undefined only when the class has
    neither cases nor predictions.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    total = int(matrix.sum())
    results = []
    for k in range(matrix.shape[0]):
        tp = int(matrix[k, k])
        fn = int(matrix[k, :].sum()) - tp
        fp = int(matrix[:, k].sum()) - tp
        tn = total - tp - fn - fp
        undefined: dict[str, UndefinedReason] = {}
        if tp + fn == 0:
            undefined["sensitivity"] = UndefinedReason.NO_POSITIVES
        if tn + fp == 0:
            undefined["specificity"] = UndefinedReason.NO_NEGATIVES
        if tp + fp == 0:
            undefined["ppv"] = UndefinedReason.NO_PREDICTED_POSITIVES
        if tn + fn == 0:
            undefined["npv"] = UndefinedReason.NO_PREDICTED_NEGATIVES
        if 2 * tp + fp + fn == 0:
            undefined["f1"] = UndefinedReason.NO_POSITIVES
        results.append(
            ClassMetrics(
                true_positives=tp,
                false_positives=fp,
                true_negatives=tn,
                false_negatives=fn,
                sensitivity=_ratio(tp, tp + fn),
                specificity=_ratio(tn, tn + fp),
                ppv=_ratio(tp, tp + fp),
                npv=_ratio(tn, tn + fn),
                f1=_ratio(2 * tp, 2 * tp + fp + fn),
                undefined=undefined,
            )
        )
    return results


# --- AUC and DeLong -------------------------------------------------------


def _missing_class_reason(n_positive: int, n_negative: int) -> UndefinedReason | None:
    if n_positive == 0:
        return UndefinedReason.NO_POSITIVES
    if n_negative == 0:
        return UndefinedReason.NO_NEGATIVES
    return None


def _auc_from_ranks(is_positive: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Return the Mann-Whitney AUC of each row of ``ranks`` (midranks over all cases)."""
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
    return float(_auc_from_ranks(is_positive, ranks))


def _delong_components(
    is_positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return AUCs and per-case DeLong components of score rows ``[k, n_cases]``.

    Structural components come from midranks (Sun & Xu 2014): for a positive
    case, ``V10 = (rank among all - rank among positives) / n``; for a negative
    case, ``V01 = 1 - (rank among all - rank among negatives) / m``. They are
    centred and scaled by ``1 / sqrt(m (m - 1))`` or ``1 / sqrt(n (n - 1))`` so
    that ``components @ components.T`` is DeLong's covariance matrix
    ``S10 / m + S01 / n``. Needs ``m, n >= 2``.
    """
    # NOTE: DeLong takes cases as independent, but the two hips of one patient
    # are correlated, so these variances are likely too small for bilateral
    # cohorts. Obuchowski's clustered variance (Biometrics 1997;53:567-578) is
    # not implemented; the patient-level bootstrap intervals allow for it.
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
    components[:, is_positive] = (v10 - theta[:, None]) / np.sqrt(m * (m - 1.0))
    components[:, ~is_positive] = (v01 - theta[:, None]) / np.sqrt(n * (n - 1.0))
    return theta, components


def delong_auc(
    is_positive: np.ndarray, scores: np.ndarray, confidence_level: float = 0.95
) -> AucEstimate:
    """Estimate the AUC of one score with its DeLong variance and normal interval.

    Parameters
    ----------
    is_positive
        Boolean outcome per case.
    scores
        Score per case; higher means more likely positive (no automatic
        direction, unlike pROC's ``roc()`` default).
    confidence_level
        Coverage of the interval.
    """
    z = _z_quantile(confidence_level)
    is_positive = np.asarray(is_positive, dtype=bool)
    m = int(is_positive.sum())
    n = is_positive.size - m
    reason = _missing_class_reason(m, n)
    if reason is not None:
        nan = float("nan")
        return AucEstimate(nan, nan, nan, nan, m, n, reason)
    if m < 2 or n < 2:
        nan = float("nan")
        auc = binary_auc(is_positive, scores)
        return AucEstimate(auc, nan, nan, nan, m, n, UndefinedReason.TOO_FEW_FOR_VARIANCE)
    theta, components = _delong_components(is_positive, scores)
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
    labels: np.ndarray, probabilities: np.ndarray, confidence_level: float = 0.95
) -> list[AucEstimate]:
    """Return the DeLong AUC estimate of every class against all others."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    validate_label_probabilities(labels, probabilities)
    return [
        delong_auc(labels == k, probabilities[:, k], confidence_level)
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
    z_level = _z_quantile(confidence_level)
    difference = theta_first - theta_second
    variance = float(np.sum(difference_components**2))
    nan = float("nan")
    if difference == 0.0 and variance == 0.0:
        # pROC's roc.test returns Z = 0 and p = 1 for identical curves.
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
) -> DeLongComparison:
    """Compare two correlated AUCs on the same cases with DeLong's paired test.

    The result matches pROC's ``roc.test(roc1, roc2, method = "delong")`` for
    two curves with the direction ``controls < cases``.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    m = int(is_positive.sum())
    n = is_positive.size - m
    reason = _missing_class_reason(m, n)
    if reason is not None:
        return _undefined_comparison(reason)
    if m < 2 or n < 2:
        return _undefined_comparison(UndefinedReason.TOO_FEW_FOR_VARIANCE)
    theta, components = _delong_components(is_positive, np.vstack([scores_first, scores_second]))
    return _comparison_from_components(
        float(theta[0]), float(theta[1]), components[0] - components[1], confidence_level
    )


def macro_delong_test(
    labels: np.ndarray,
    probabilities_first: np.ndarray,
    probabilities_second: np.ndarray,
    confidence_level: float = 0.95,
) -> DeLongComparison:
    """Compare the macro (one-vs-rest mean) AUCs of two models on the same cases.

    The variance of the macro difference sums, case by case, the DeLong
    components of every class, so it includes the covariance between the
    class AUCs that share cases. With one class it reduces to ``delong_test``.
    """
    labels = np.asarray(labels)
    probabilities_first = np.asarray(probabilities_first, dtype=np.float64)
    probabilities_second = np.asarray(probabilities_second, dtype=np.float64)
    validate_label_probabilities(labels, probabilities_first)
    validate_label_probabilities(labels, probabilities_second)
    n_classes = probabilities_first.shape[1]
    summed = np.zeros(labels.size)
    aucs_first = []
    aucs_second = []
    for k in range(n_classes):
        is_positive = labels == k
        m = int(is_positive.sum())
        n = is_positive.size - m
        if min(m, n) == 0:
            return _undefined_comparison(UndefinedReason.CLASS_AUC_UNDEFINED)
        if min(m, n) < 2:
            return _undefined_comparison(UndefinedReason.TOO_FEW_FOR_VARIANCE)
        theta, components = _delong_components(
            is_positive,
            np.vstack([probabilities_first[:, k], probabilities_second[:, k]]),
        )
        aucs_first.append(theta[0])
        aucs_second.append(theta[1])
        summed += components[0] - components[1]
    return _comparison_from_components(
        float(np.mean(aucs_first)),
        float(np.mean(aucs_second)),
        summed / n_classes,
        confidence_level,
    )


# --- Patient-level bootstrap ----------------------------------------------


def resample_patients(
    patient_ids: np.ndarray, rng: np.random.Generator
) -> Callable[[], np.ndarray]:
    """Build a sampler that draws patients with replacement and returns all their cases.

    Each call draws as many patients as there are distinct ids and returns the
    case indices of every drawn patient, once per draw, so a patient drawn
    twice contributes both hips twice.
    """
    _, codes = np.unique(np.asarray(patient_ids), return_inverse=True)
    codes = codes.ravel()
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_patients = counts.size

    def draw() -> np.ndarray:
        drawn = rng.integers(0, n_patients, size=n_patients)
        lengths = counts[drawn]
        output_starts = np.cumsum(lengths) - lengths
        positions = np.repeat(starts[drawn] - output_starts, lengths) + np.arange(lengths.sum())
        return order[positions]

    return draw


def patient_bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    patient_ids: np.ndarray,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, BootstrapInterval]:
    """Compute percentile intervals by resampling patients, not cases.

    Parameters
    ----------
    statistic
        Function of an array of case indices (a resample, with repeats) that
        returns named figures; ``NaN`` marks a figure the resample cannot define.
    patient_ids
        Patient of each case; all cases of a drawn patient enter together.
    n_resamples
        Number of bootstrap resamples.
    seed
        Seed of the ``numpy.random.Generator``; equal seeds give equal intervals.
    confidence_level
        Coverage of the percentile interval.
    """
    _z_quantile(confidence_level)
    if n_resamples < 1:
        raise ValueError(f"n_resamples is {n_resamples}: pass at least 1 (2000 is usual)")
    draw = resample_patients(patient_ids, np.random.default_rng(seed))
    collected: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        for name, value in statistic(draw()).items():
            collected.setdefault(name, []).append(float(value))
    tail = (1.0 - confidence_level) / 2.0
    intervals = {}
    for name, values in collected.items():
        array = np.asarray(values)
        valid = array[np.isfinite(array)]
        if valid.size == 0:
            nan = float("nan")
            intervals[name] = BootstrapInterval(nan, nan, 0, UndefinedReason.NO_VALID_RESAMPLES)
            continue
        low, high = np.quantile(valid, [tail, 1.0 - tail])
        intervals[name] = BootstrapInterval(float(low), float(high), int(valid.size))
    return intervals


def resample_statistics(
    labels: np.ndarray, probabilities: np.ndarray
) -> Callable[[np.ndarray], dict[str, float]]:
    """Build the bootstrap statistic for accuracy, AUCs and per-class metrics.

    The returned function maps case indices to ``accuracy``, ``macro_auc``,
    ``micro_auc`` and ``<metric>/<class index>`` for ``auc``, ``sensitivity``,
    ``specificity``, ``ppv``, ``npv`` and ``f1``.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    validate_label_probabilities(labels, probabilities)
    n_classes = probabilities.shape[1]
    predicted = predicted_classes(probabilities)

    def statistic(indices: np.ndarray) -> dict[str, float]:
        sample_labels = labels[indices]
        sample_probabilities = probabilities[indices]
        matrix = confusion_matrix(sample_labels, predicted[indices], n_classes)
        values = {"accuracy": float(np.trace(matrix)) / indices.size}
        for k, metrics in enumerate(class_metrics(matrix)):
            for name in ("sensitivity", "specificity", "ppv", "npv", "f1"):
                values[f"{name}/{k}"] = getattr(metrics, name)
        one_hot = sample_labels[:, None] == np.arange(n_classes)[None, :]
        ranks = stats.rankdata(sample_probabilities, axis=0)
        class_aucs = []
        for k in range(n_classes):
            m = int(one_hot[:, k].sum())
            if m in (0, indices.size):
                class_aucs.append(float("nan"))
            else:
                class_aucs.append(float(_auc_from_ranks(one_hot[:, k], ranks[:, k])))
            values[f"auc/{k}"] = class_aucs[-1]
        values["macro_auc"] = macro_auc(class_aucs)[0]
        values["micro_auc"] = micro_auc(sample_labels, sample_probabilities)
        return values

    return statistic
