"""Net benefit checked against the dcurves package."""

import numpy as np
import pandas as pd
import pytest
from dcurves import dca
from scipy import special

from hipfuse.training import decision_curve


def _binary(n, seed, prevalence_shift=0.0, rounding=None):
    rng = np.random.default_rng(seed)
    risk_logit = rng.normal(loc=prevalence_shift, scale=1.5, size=n)
    outcome = rng.random(n) < special.expit(risk_logit)
    predicted = special.expit(risk_logit + rng.normal(scale=0.5, size=n))
    if rounding is not None:
        # Rounded to the threshold grid, so many predictions equal a threshold.
        predicted = np.clip(np.round(predicted, rounding), 0.01, 0.99)
    return outcome, predicted


def _dcurves_net_benefit(outcome, predicted, thresholds):
    data = pd.DataFrame({"outcome": outcome.astype(int), "model": predicted})
    table = dca(data=data, outcome="outcome", modelnames=["model"], thresholds=list(thresholds))
    return {
        name: table.loc[table["model"] == name, "net_benefit"].to_numpy()
        for name in ("model", "all", "none")
    }


CASES = {
    "balanced": lambda: _binary(300, 1),
    "rare_outcome": lambda: _binary(400, 2, prevalence_shift=-2.5),
    "common_outcome": lambda: _binary(200, 3, prevalence_shift=2.0),
    "predictions_on_threshold_grid": lambda: _binary(300, 4, rounding=2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_net_benefit_matches_dcurves(case):
    outcome, predicted = case()
    thresholds = decision_curve.DEFAULT_THRESHOLDS

    model = decision_curve.net_benefit(outcome, predicted, thresholds)
    treat_all = decision_curve.treat_all_net_benefit(outcome.mean(), thresholds)

    expected = _dcurves_net_benefit(outcome, predicted, thresholds)
    np.testing.assert_allclose(model, expected["model"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(treat_all, expected["all"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(expected["none"], 0.0, atol=1e-12)


def test_decision_curves_per_class_match_dcurves():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 250)
    logits = rng.normal(size=(250, 4))
    logits[np.arange(250), labels] += 1.0
    probabilities = special.softmax(logits, axis=1)
    thresholds = np.array([0.05, 0.1, 0.25, 0.5, 0.75])

    curves = decision_curve.decision_curves(labels, probabilities, thresholds)

    assert len(curves) == 4
    for k, curve in enumerate(curves):
        expected = _dcurves_net_benefit(labels == k, probabilities[:, k], thresholds)
        np.testing.assert_allclose(curve.model, expected["model"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(curve.treat_all, expected["all"], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(curve.treat_none, 0.0)
        np.testing.assert_array_equal(curve.thresholds, thresholds)


def test_net_benefit_hand_computed():
    # 10 cases, 4 events. At pt = 0.25 (odds 1/3) the model treats 3 events and 2 non-events:
    # NB = 3/10 - 2/10 * 1/3.
    outcome = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    predicted = np.array([0.9, 0.8, 0.25, 0.1, 0.6, 0.3, 0.2, 0.1, 0.1, 0.05])

    value = decision_curve.net_benefit(outcome, predicted, np.array([0.25]))

    assert value[0] == pytest.approx(0.3 - 0.2 / 3)


def test_default_thresholds_are_one_to_ninety_nine_percent():
    thresholds = decision_curve.DEFAULT_THRESHOLDS

    assert thresholds.size == 99
    assert thresholds[0] == 0.01
    assert thresholds[-1] == 0.99
    assert thresholds[49] == 0.5


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [([0.0, 0.5], "outside \\(0, 1\\)"), ([0.5, 1.0], "outside \\(0, 1\\)"), ([], "empty")],
    ids=["zero", "one", "empty"],
)
def test_thresholds_outside_open_interval_rejected(thresholds, message):
    with pytest.raises(ValueError, match=message):
        decision_curve.validate_thresholds(np.array(thresholds))
