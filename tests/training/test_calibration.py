"""Brier score, calibration intercept and slope, ECE, reliability bins, temperature scaling."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from hipfuse.training import calibration
from hipfuse.training.metrics import UndefinedReason


def _multiclass(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += 1.0
    return labels, special.softmax(logits, axis=1)


@pytest.mark.parametrize(
    ("n", "n_classes", "seed"),
    [(200, 4, 1), (50, 3, 2), (100, 2, 3)],
    ids=["four_classes", "three_classes", "two_classes"],
)
def test_brier_matches_sklearn(n, n_classes, seed):
    labels, probabilities = _multiclass(n, n_classes, seed)

    multiclass = calibration.brier_score(labels, probabilities)
    per_class = calibration.brier_score_per_class(labels, probabilities)

    expected = brier_score_loss(
        labels, probabilities, labels=list(range(n_classes)), scale_by_half=False
    )
    assert multiclass == pytest.approx(expected, rel=1e-12)
    for k in range(n_classes):
        expected_k = brier_score_loss(labels == k, probabilities[:, k])
        assert per_class[k] == pytest.approx(expected_k, rel=1e-12)


def _binary_outcomes(n, seed, distortion):
    """True risks, outcomes drawn from them, and predictions with logit scaled by ``distortion``."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(scale=1.5, size=n)
    outcome = rng.random(n) < special.expit(true_logit)
    return outcome, special.expit(distortion * true_logit)


RECALIBRATION_CASES = {
    # distortion of the logit, expected slope (1 / distortion), expected intercept
    "perfectly_calibrated": (1.0, 1.0),
    "overconfident": (2.0, 0.5),
    "underconfident": (0.5, 2.0),
}


@pytest.mark.parametrize(
    ("distortion", "slope"), RECALIBRATION_CASES.values(), ids=RECALIBRATION_CASES.keys()
)
def test_calibration_slope_recovers_distortion(distortion, slope):
    outcome, predicted = _binary_outcomes(20000, 7, distortion)

    fit = calibration.calibration_intercept_slope(outcome, predicted)

    assert fit.slope == pytest.approx(slope, rel=0.06)
    # Symmetric distortion of a centred logit keeps the mean on the logit scale.
    assert fit.intercept == pytest.approx(0.0, abs=0.06)
    assert fit.reason is None


def test_calibration_intercept_detects_shift():
    outcome, predicted = _binary_outcomes(20000, 8, 1.0)
    shifted = special.expit(special.logit(predicted) - 0.7)

    fit = calibration.calibration_intercept_slope(outcome, shifted)

    assert fit.intercept == pytest.approx(0.7, abs=0.06)
    assert fit.slope == pytest.approx(1.0, rel=0.06)


@pytest.mark.parametrize("seed", [11, 12, 13], ids=["seed11", "seed12", "seed13"])
def test_calibration_fits_match_statsmodels_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    predicted = rng.uniform(0.02, 0.98, 300)
    outcome = rng.random(300) < special.expit(0.8 * special.logit(predicted) + 0.3)
    logit = special.logit(predicted)

    fit = calibration.calibration_intercept_slope(outcome, predicted)

    binomial = sm.families.Binomial()
    offset_fit = sm.GLM(outcome.astype(float), np.ones((300, 1)), family=binomial, offset=logit)
    slope_fit = sm.GLM(outcome.astype(float), sm.add_constant(logit), family=binomial)
    assert fit.intercept == pytest.approx(offset_fit.fit(tol=1e-12).params[0], abs=1e-8)
    assert fit.slope == pytest.approx(slope_fit.fit(tol=1e-12).params[1], abs=1e-8)
    sklearn_fit = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000)
    sklearn_fit.fit(logit[:, None], outcome)
    assert fit.slope == pytest.approx(sklearn_fit.coef_[0, 0], abs=1e-5)


UNDEFINED_FITS = {
    "no_positives": ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "no_positives", False),
    "no_negatives": ([1, 1, 1], [0.1, 0.2, 0.3], "no_negatives", False),
    "perfect_separation": ([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], "perfect_separation", True),
}


@pytest.mark.parametrize(
    ("outcome", "predicted", "reason", "intercept_defined"),
    UNDEFINED_FITS.values(),
    ids=UNDEFINED_FITS.keys(),
)
def test_calibration_fit_undefined(outcome, predicted, reason, intercept_defined):
    fit = calibration.calibration_intercept_slope(np.array(outcome, bool), np.array(predicted))

    assert np.isnan(fit.slope)
    assert fit.reason is UndefinedReason(reason)
    assert np.isfinite(fit.intercept) == intercept_defined


def test_calibration_fit_accepts_exact_zero_and_one():
    outcome = np.array([0, 1, 0, 1, 1, 0], bool)
    predicted = np.array([0.0, 1.0, 0.4, 0.3, 0.6, 0.7])

    fit = calibration.calibration_intercept_slope(outcome, predicted)

    assert np.isfinite(fit.intercept)
    assert np.isfinite(fit.slope)


@pytest.mark.parametrize("n_bins", [5, 10, 15], ids=["5_bins", "10_bins", "15_bins"])
def test_reliability_bins_match_sklearn_calibration_curve(n_bins):
    outcome, predicted = _binary_outcomes(500, 21, 1.3)

    bins = calibration.reliability_bins(outcome, predicted, n_bins)

    prob_true, prob_pred = calibration_curve(outcome, predicted, n_bins=n_bins)
    filled = bins.count > 0
    np.testing.assert_allclose(bins.observed_fraction[filled], prob_true, rtol=1e-12)
    np.testing.assert_allclose(bins.mean_predicted[filled], prob_pred, rtol=1e-12)
    assert bins.count.sum() == 500
    assert np.all(np.isnan(bins.mean_predicted[~filled]))


def test_reliability_bin_edges_are_right_closed():
    predicted = np.array([0.0, 0.2, 0.2000001, 0.5, 1.0])
    outcome = np.array([0, 1, 0, 1, 1], bool)

    bins = calibration.reliability_bins(outcome, predicted, n_bins=5)

    np.testing.assert_array_equal(bins.count, [2, 1, 1, 0, 1])


def _ece_from_sklearn(outcome, predicted, n_bins):
    prob_true, prob_pred = calibration_curve(outcome, predicted, n_bins=n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], predicted), minlength=n_bins)
    counts = counts[counts > 0]
    return np.sum(counts * np.abs(prob_true - prob_pred)) / outcome.size


def test_ece_matches_binned_sklearn_curve():
    labels, probabilities = _multiclass(400, 4, 31)

    top = calibration.top_label_reliability(labels, probabilities)
    per_class = calibration.class_reliability(labels, probabilities)

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    expected_top = _ece_from_sklearn(predicted == labels, confidence, 15)
    assert top.expected_calibration_error == pytest.approx(expected_top, rel=1e-12)
    for k in range(4):
        expected_k = _ece_from_sklearn(labels == k, probabilities[:, k], 15)
        assert per_class[k].expected_calibration_error == pytest.approx(expected_k, rel=1e-12)


def test_ece_hand_computed():
    # Two bins of width 0.5: (0, 0.5] contains 0.2, 0.4 (mean 0.3, 1 of 2 events),
    # (0.5, 1] contains 0.9 (1 event). ECE = 2/3 · |0.5 - 0.3| + 1/3 · |1 - 0.9|.
    bins = calibration.reliability_bins(np.array([1, 0, 1], bool), np.array([0.2, 0.4, 0.9]), 2)

    assert bins.expected_calibration_error == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.1)


def _sampled_labels(logits, temperature, seed):
    rng = np.random.default_rng(seed)
    probabilities = special.softmax(logits / temperature, axis=1)
    cumulative = probabilities.cumsum(axis=1)
    draws = rng.random((logits.shape[0], 1))
    return np.minimum((draws > cumulative).sum(axis=1), logits.shape[1] - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5], ids=["sharpen", "identity", "soften"])
def test_temperature_scaling_recovers_known_temperature(true_temperature):
    rng = np.random.default_rng(41)
    logits = rng.normal(scale=3.0, size=(20000, 4))
    labels = _sampled_labels(logits, true_temperature, 42)

    fitted = calibration.fit_temperature(logits, labels)

    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_temperature_scaling_lowers_nll():
    rng = np.random.default_rng(43)
    logits = rng.normal(scale=3.0, size=(5000, 4))
    labels = _sampled_labels(logits, 2.0, 44)

    fitted = calibration.fit_temperature(logits, labels)

    def nll(probabilities):
        return -np.mean(np.log(probabilities[np.arange(labels.size), labels]))

    assert nll(calibration.apply_temperature(logits, fitted)) < nll(special.softmax(logits, axis=1))
    np.testing.assert_allclose(
        calibration.apply_temperature(logits, 1.0), special.softmax(logits, axis=1), rtol=1e-12
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: calibration.apply_temperature(np.zeros((2, 3)), 0.0), "not positive"),
        (
            lambda: calibration.fit_temperature(np.zeros((2, 3)), np.array([0, 1]), (2.0, 1.0)),
            "0 < low < high",
        ),
        (lambda: calibration.fit_temperature(np.zeros((2, 3)), np.array([0])), "expected"),
        (lambda: calibration.reliability_bins(np.array([True]), np.array([0.5]), 0), "at least 1"),
    ],
    ids=["zero_temperature", "reversed_bounds", "label_count", "zero_bins"],
)
def test_calibration_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
