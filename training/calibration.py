"""Calibration of predicted class probabilities: scores, recalibration fits, binning.

Inputs are integer class indices ``0 .. C-1`` and probability matrices
``[n_cases, C]`` as in ``hipfuse.training.metrics``; per-class figures treat
each class one-vs-rest.

References
----------
Brier GW. Verification of forecasts expressed in terms of probability.
Monthly Weather Review 1950;78(1):1-3.

Cox DR. Two further applications of a model for binary regression.
Biometrika 1958;45:562-565 (calibration slope and intercept).

Guo C, Pleiss G, Sun Y, Weinberger KQ. On calibration of modern neural
networks. ICML 2017 (expected calibration error, temperature scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import structlog
from scipy import optimize, special

from hipfuse.training.metrics import UndefinedReason

log = structlog.get_logger(__name__)

DEFAULT_N_BINS = 15
# Probabilities are clipped to [eps, 1 - eps] before taking logits, so a model
# that outputs exact 0 or 1 gets a finite logit of about ±27.6.
LOGIT_CLIP_EPS = 1e-12
TEMPERATURE_BOUNDS = (0.05, 20.0)


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the multiclass Brier score: mean over cases of ``sum_k (p_k - y_k)²``.

    This is Brier's original definition, with range ``[0, 2]``; scikit-learn's
    ``brier_score_loss`` gives the same value for more than two classes.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    one_hot = _one_hot(labels, probabilities.shape[1])
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def brier_score_per_class(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Return the one-vs-rest Brier score ``mean((p_k - y_k)²)`` of each class, range ``[0, 1]``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    one_hot = _one_hot(labels, probabilities.shape[1])
    return np.mean((probabilities - one_hot) ** 2, axis=0)


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return (np.asarray(labels)[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)


# --- Logistic recalibration -----------------------------------------------


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of one class's probabilities.

    Attributes
    ----------
    intercept
        Calibration intercept (calibration-in-the-large): ``a`` in
        ``logit P(y) = a + logit(p)``, the slope fixed at 1 through an offset.
        0 when the mean prediction matches the event rate on the logit scale.
    slope
        Calibration slope: ``b`` in ``logit P(y) = c + b · logit(p)``. Below 1
        means overconfident predictions (too extreme), above 1 underconfident.
    reason
        Why ``intercept`` or ``slope`` is ``NaN``, else ``None``.
    """

    intercept: float
    slope: float
    reason: UndefinedReason | None = None


def _logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(
        np.asarray(probabilities, dtype=np.float64), LOGIT_CLIP_EPS, 1 - LOGIT_CLIP_EPS
    )
    return special.logit(clipped)


def _fit_offset_intercept(outcome: np.ndarray, offset: np.ndarray) -> float:
    """Solve the score equation ``sum(y - expit(a + offset)) = 0`` for ``a``."""

    def score(a: float) -> float:
        return float(np.sum(outcome - special.expit(a + offset)))

    # score() decreases monotonically in a, so widen the bracket until it changes sign.
    low, high = -1.0, 1.0
    while score(low) < 0.0:
        low *= 2.0
    while score(high) > 0.0:
        high *= 2.0
    return float(optimize.brentq(score, low, high, xtol=1e-14, rtol=1e-14))


def _fit_logistic_slope(outcome: np.ndarray, x: np.ndarray) -> float:
    """Fit unpenalised ``logit P(y) = c + b x`` by maximum likelihood and return ``b``."""
    design = np.column_stack([np.ones_like(x), x])

    def negative_log_likelihood(beta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = design @ beta
        # log(1 + e^eta) - y·eta, written with logaddexp to stay finite for large |eta|.
        value = float(np.sum(np.logaddexp(0.0, eta) - outcome * eta))
        gradient = design.T @ (special.expit(eta) - outcome)
        return value, gradient

    def hessian(beta: np.ndarray) -> np.ndarray:
        p = special.expit(design @ beta)
        return (design * (p * (1 - p))[:, None]).T @ design

    result = optimize.minimize(
        negative_log_likelihood,
        x0=np.array([0.0, 1.0]),
        jac=True,
        hess=hessian,
        method="trust-exact",
        options={"gtol": 1e-10},
    )
    return float(result.x[1])


def calibration_intercept_slope(
    is_positive: np.ndarray, probabilities: np.ndarray
) -> CalibrationFit:
    """Fit the calibration intercept and slope of one class's predicted probabilities.

    Parameters
    ----------
    is_positive
        Boolean outcome per case.
    probabilities
        Predicted probability of the outcome per case.

    Returns
    -------
    CalibrationFit
        ``NaN`` fields with a reason when the class has no positives or no
        negatives, and a ``NaN`` slope when the logits separate the outcomes
        perfectly (the maximum-likelihood slope is then infinite).
    """
    outcome = np.asarray(is_positive, dtype=np.float64)
    n_positive = int(outcome.sum())
    nan = float("nan")
    if n_positive == 0:
        return CalibrationFit(nan, nan, UndefinedReason.NO_POSITIVES)
    if n_positive == outcome.size:
        return CalibrationFit(nan, nan, UndefinedReason.NO_NEGATIVES)
    x = _logit(probabilities)
    intercept = _fit_offset_intercept(outcome, x)
    if x[outcome == 0].max() <= x[outcome == 1].min():
        return CalibrationFit(intercept, nan, UndefinedReason.PERFECT_SEPARATION)
    return CalibrationFit(intercept, _fit_logistic_slope(outcome, x))


# --- Binning: reliability diagram and ECE ----------------------------------


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of predicted probability for a reliability diagram.

    Bin ``i`` contains probabilities in ``(edges[i], edges[i + 1]]``, and the
    first bin also contains 0, as in scikit-learn's ``calibration_curve``.

    Attributes
    ----------
    edges
        ``n_bins + 1`` bin edges from 0 to 1.
    mean_predicted
        Mean predicted probability per bin, ``NaN`` for an empty bin.
    observed_fraction
        Fraction of cases with the outcome per bin, ``NaN`` for an empty bin.
    count
        Cases per bin.
    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed_fraction: np.ndarray
    count: np.ndarray

    @property
    def expected_calibration_error(self) -> float:
        """Count-weighted mean of ``|observed_fraction - mean_predicted|`` over non-empty bins."""
        filled = self.count > 0
        gaps = np.abs(self.observed_fraction[filled] - self.mean_predicted[filled])
        return float(np.sum(self.count[filled] * gaps) / np.sum(self.count))


def reliability_bins(
    outcome: np.ndarray, predicted: np.ndarray, n_bins: int = DEFAULT_N_BINS
) -> ReliabilityBins:
    """Bin predicted probabilities into ``n_bins`` equal-width bins and summarise each.

    Parameters
    ----------
    outcome
        Boolean event per case (the class, or "top label was correct").
    predicted
        Predicted probability of that event per case, in ``[0, 1]``.
    n_bins
        Number of equal-width bins on ``[0, 1]``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins is {n_bins}: pass at least 1 (15 is usual)")
    outcome = np.asarray(outcome, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.searchsorted(edges[1:-1], predicted, side="left")
    count = np.bincount(bin_index, minlength=n_bins)
    predicted_sum = np.bincount(bin_index, weights=predicted, minlength=n_bins)
    outcome_sum = np.bincount(bin_index, weights=outcome, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, predicted_sum / count, np.nan)
        observed_fraction = np.where(count > 0, outcome_sum / count, np.nan)
    return ReliabilityBins(edges, mean_predicted, observed_fraction, count)


def top_label_reliability(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_N_BINS
) -> ReliabilityBins:
    """Bin the top-label confidence against whether the top label was correct.

    Its ``expected_calibration_error`` is the ECE of Guo et al. (2017).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = np.argmax(probabilities, axis=1)
    confidence = probabilities[np.arange(predicted.size), predicted]
    return reliability_bins(predicted == np.asarray(labels), confidence, n_bins)


def class_reliability(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_N_BINS
) -> list[ReliabilityBins]:
    """Bin each class's probability against membership of that class (one-vs-rest)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    return [
        reliability_bins(labels == k, probabilities[:, k], n_bins)
        for k in range(probabilities.shape[1])
    ]


# --- Temperature scaling -----------------------------------------------------


def _mean_negative_log_likelihood(
    logits: np.ndarray, labels: np.ndarray, temperature: float
) -> float:
    log_probabilities = special.log_softmax(logits / temperature, axis=1)
    return float(-np.mean(log_probabilities[np.arange(labels.size), labels]))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Fit the temperature ``T > 0`` that minimises the NLL of ``softmax(logits / T)``.

    Fit on validation logits, never on the test set. The search runs over
    ``log T`` within ``bounds`` (bounded Brent, ``scipy.optimize.minimize_scalar``),
    which treats halving and doubling ``T`` alike.

    Parameters
    ----------
    logits
        Pre-softmax outputs ``[n_cases, C]``.
    labels
        True class index per case.
    bounds
        Lowest and highest temperature searched.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    low, high = bounds
    if not 0.0 < low < high:
        raise ValueError(f"temperature bounds {bounds!r} are invalid: pass 0 < low < high")
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"logits have shape {logits.shape} and labels {labels.shape}: "
            "expected [n_cases, n_classes] and [n_cases]"
        )
    result = optimize.minimize_scalar(
        lambda log_t: _mean_negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    temperature = float(np.exp(result.x))
    if min(temperature / low, high / temperature) < 1.001:
        log.warning(
            "temperature_at_search_bound",
            temperature=temperature,
            low=low,
            high=high,
            n_cases=int(labels.size),
        )
    return temperature


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Return ``softmax(logits / temperature)`` row by row."""
    if not temperature > 0.0:
        raise ValueError(
            f"temperature {temperature!r} is not positive: fit it with fit_temperature"
        )
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
