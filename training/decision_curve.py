"""One-vs-rest decision curve analysis.

Net benefit at threshold probability ``pt`` is ``TP/n - FP/n · pt / (1 - pt)``,
where a case counts as "treated" when its predicted probability is at least
``pt`` (Vickers AJ, Elkin EB. Decision curve analysis: a novel method for
evaluating prediction models. Med Decis Making 2006;26(6):565-574). The
``>=`` rule matches the ``dcurves`` package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 0.01, 0.02, ..., 0.99, rounded so the values print and compare exactly.
DEFAULT_THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)


@dataclass(frozen=True)
class DecisionCurve:
    """Net benefit of one class's probabilities and of the default strategies.

    Attributes
    ----------
    thresholds
        Threshold probabilities ``pt`` in ``(0, 1)``.
    model
        Net benefit of treating cases with probability ``>= pt``.
    treat_all
        Net benefit of treating every case: ``prevalence - (1 - prevalence) · pt / (1 - pt)``.
    treat_none
        Net benefit of treating no case (always 0).
    """

    thresholds: np.ndarray
    model: np.ndarray
    treat_all: np.ndarray
    treat_none: np.ndarray


def validate_thresholds(thresholds: np.ndarray | None) -> np.ndarray:
    """Return the thresholds as floats, raising ``ValueError`` unless all lie in ``(0, 1)``."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS.copy()
    values = np.asarray(thresholds, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("thresholds are empty: pass at least one value in (0, 1)")
    outside = values[~((values > 0.0) & (values < 1.0))]
    if outside.size:
        raise ValueError(
            f"thresholds {outside.tolist()} lie outside (0, 1): net benefit needs 0 < pt < 1"
        )
    return values


def net_benefit(
    is_positive: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Return the net benefit of treating cases with ``probability >= pt`` at each threshold."""
    is_positive = np.asarray(is_positive, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = validate_thresholds(thresholds)
    n = is_positive.size
    treated = probabilities[None, :] >= thresholds[:, None]
    true_positives = np.sum(treated & is_positive[None, :], axis=1)
    false_positives = np.sum(treated & ~is_positive[None, :], axis=1)
    odds = thresholds / (1.0 - thresholds)
    return true_positives / n - false_positives / n * odds


def treat_all_net_benefit(prevalence: float, thresholds: np.ndarray) -> np.ndarray:
    """Return the net benefit of treating everyone at each threshold."""
    thresholds = validate_thresholds(thresholds)
    return prevalence - (1.0 - prevalence) * thresholds / (1.0 - thresholds)


def decision_curves(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray | None = None
) -> list[DecisionCurve]:
    """Compute the one-vs-rest decision curve of every class.

    Parameters
    ----------
    labels
        True class index per case.
    probabilities
        Probability matrix ``[n_cases, C]``.
    thresholds
        Threshold probabilities in ``(0, 1)``; default 0.01 to 0.99 in steps of 0.01.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    grid = validate_thresholds(thresholds)
    curves = []
    for k in range(probabilities.shape[1]):
        is_positive = labels == k
        curves.append(
            DecisionCurve(
                thresholds=grid,
                model=net_benefit(is_positive, probabilities[:, k], grid),
                treat_all=treat_all_net_benefit(float(is_positive.mean()), grid),
                treat_none=np.zeros_like(grid),
            )
        )
    return curves
