"""Threshold metrics of multiclass predictions at the argmax decision.

Every function works on integer class indices ``0 .. C-1`` and a probability
matrix ``[n_cases, C]``, so it serves any class list; the hip classes are one
such list. The predicted class of a case is the column with the highest
probability (the first one on a tie, as ``numpy.argmax`` breaks ties).

A figure that a sample cannot define (sensitivity of a class with no cases,
AUC without negatives) is ``NaN``, and an ``UndefinedReason`` next to it says
why. No function raises for such a sample. AUCs and their DeLong inference are
in :mod:`hipfuse.training.delong`, the patient-level bootstrap in
:mod:`hipfuse.training.bootstrap`.
"""

from __future__ import annotations

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


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def z_quantile(confidence_level: float) -> float:
    """Return the standard normal quantile of a two-sided interval with this coverage."""
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
