"""Patient-level bootstrap: percentile intervals from resampling patients, not hips.

Both hips of a patient are correlated, so a resample draws patients with
replacement and takes all their hips. The statistic of
:func:`resample_statistics` covers accuracy, AUCs and the per-class threshold
metrics of :mod:`hipfuse.training.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hipfuse.training.delong import auc_from_ranks, macro_auc, micro_auc
from hipfuse.training.metrics import (
    UndefinedReason,
    class_metrics,
    confusion_matrix,
    predicted_classes,
    validate_label_probabilities,
    z_quantile,
)


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
    z_quantile(confidence_level)
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
                class_aucs.append(float(auc_from_ranks(one_hot[:, k], ranks[:, k])))
            values[f"auc/{k}"] = class_aucs[-1]
        values["macro_auc"] = macro_auc(class_aucs)[0]
        values["micro_auc"] = micro_auc(sample_labels, sample_probabilities)
        return values

    return statistic
