"""Patient-level bootstrap: resamples patients, not hips, and is reproducible."""

import numpy as np
import pytest

from hipfuse.training import bootstrap, delong, metrics
from hipfuse.training.metrics import UndefinedReason


def _accuracy_statistic(correct):
    return lambda indices: {"accuracy": float(np.mean(correct[indices]))}


def _width(interval):
    return interval.high - interval.low


def test_resampler_keeps_patients_whole():
    patient_ids = np.array(["p1", "p1", "p2", "p3", "p3", "p4"])
    draw = bootstrap.resample_patients(patient_ids, np.random.default_rng(0))

    for _ in range(50):
        indices = draw()
        drawn = patient_ids[indices]
        for patient in np.unique(drawn):
            hips_of_patient = np.flatnonzero(patient_ids == patient)
            copies = np.sum(drawn == patient) / hips_of_patient.size
            # Every hip of a drawn patient appears equally often.
            counts = [np.sum(indices == hip) for hip in hips_of_patient]
            assert counts == [copies] * hips_of_patient.size
        assert np.unique(patient_ids[indices]).size <= 4


def test_resampler_draws_as_many_patients_as_exist():
    patient_ids = np.repeat(np.arange(30), 2)
    draw = bootstrap.resample_patients(patient_ids, np.random.default_rng(1))

    sizes = {draw().size for _ in range(20)}

    assert sizes == {60}


def test_two_identical_hips_give_patient_level_interval():
    rng = np.random.default_rng(5)
    correct_per_patient = rng.random(150) < 0.7
    # Both hips of a patient share the outcome, as correlated hips often do.
    correct_per_hip = np.repeat(correct_per_patient, 2)
    patients_of_hips = np.repeat(np.arange(150), 2)

    by_patient = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct_per_hip), patients_of_hips, n_resamples=2000, seed=3
    )["accuracy"]
    one_hip_each = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct_per_patient), np.arange(150), n_resamples=2000, seed=3
    )["accuracy"]
    by_hip = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct_per_hip), np.arange(300), n_resamples=2000, seed=3
    )["accuracy"]

    # Duplicated hips add no information: the interval equals the one-hip interval.
    assert by_patient.low == one_hip_each.low
    assert by_patient.high == one_hip_each.high
    # Resampling hips would treat 300 hips as independent: about 1/sqrt(2) as wide.
    assert _width(by_hip) / _width(by_patient) == pytest.approx(1 / np.sqrt(2), rel=0.12)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    correct = rng.random(80) < 0.6
    patients = np.arange(80) // 2

    first = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct), patients, n_resamples=300, seed=9
    )
    again = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct), patients, n_resamples=300, seed=9
    )
    other = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct), patients, n_resamples=300, seed=10
    )

    assert first == again
    assert first["accuracy"] != other["accuracy"]


def test_bootstrap_interval_is_percentile_of_resamples():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    patients = np.arange(10)
    rng = np.random.default_rng(4)
    expected_values = [correct[rng.integers(0, 10, 10)].mean() for _ in range(500)]

    interval = bootstrap.patient_bootstrap(
        _accuracy_statistic(correct), patients, n_resamples=500, seed=4, confidence_level=0.9
    )["accuracy"]

    assert interval.low == pytest.approx(np.quantile(expected_values, 0.05))
    assert interval.high == pytest.approx(np.quantile(expected_values, 0.95))
    assert interval.n_valid == 500


def test_bootstrap_skips_undefined_resamples():
    # A rare class: many resamples contain no case of it, so its sensitivity is NaN there.
    labels = np.array([1] + [0] * 19)
    probabilities = np.tile([0.6, 0.4], (20, 1))
    probabilities[0] = [0.2, 0.8]

    intervals = bootstrap.patient_bootstrap(
        bootstrap.resample_statistics(labels, probabilities),
        np.arange(20),
        n_resamples=400,
        seed=0,
    )

    sensitivity = intervals["sensitivity/1"]
    assert 0 < sensitivity.n_valid < 400
    assert sensitivity.low == 1.0
    assert sensitivity.high == 1.0


def test_bootstrap_reports_statistic_never_defined():
    intervals = bootstrap.patient_bootstrap(
        lambda indices: {"never": float("nan")}, np.arange(5), n_resamples=10, seed=0
    )

    assert intervals["never"].n_valid == 0
    assert intervals["never"].reason is UndefinedReason.NO_VALID_RESAMPLES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_resamples": 0}, "at least 1"), ({"confidence_level": 1.5}, "outside \\(0, 1\\)")],
    ids=["zero_resamples", "level_above_one"],
)
def test_bootstrap_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap.patient_bootstrap(lambda indices: {}, np.arange(3), **kwargs)


def test_resample_statistics_match_full_sample_metrics():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), size=60)
    statistic = bootstrap.resample_statistics(labels, probabilities)

    values = statistic(np.arange(60))

    predicted = metrics.predicted_classes(probabilities)
    per_class = metrics.class_metrics(metrics.confusion_matrix(labels, predicted, 3))
    aucs = [e.auc for e in delong.one_vs_rest_auc(labels, probabilities)]
    assert values["accuracy"] == metrics.accuracy(labels, predicted)
    assert values["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert values["micro_auc"] == pytest.approx(delong.micro_auc(labels, probabilities))
    for k in range(3):
        assert values[f"auc/{k}"] == pytest.approx(aucs[k], abs=1e-12)
        assert values[f"f1/{k}"] == pytest.approx(per_class[k].f1)
        assert values[f"npv/{k}"] == pytest.approx(per_class[k].npv)
