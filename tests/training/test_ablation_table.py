"""Ablation table statistics: macro AUC DeLong interval, p-values against the full model."""

import csv

import numpy as np
import pytest

from hipfuse.training import bootstrap, delong
from hipfuse.training.ablation import MODALITY_SUBSETS, AblationRuns, SubsetRun
from hipfuse.training.ablation_table import CSV_COLUMNS, ablation_table, write_ablation
from hipfuse.training.metrics import UndefinedReason


def _probabilities(labels, rng, strength):
    logits = rng.normal(size=(labels.size, 4))
    logits[np.arange(labels.size), labels] += strength
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _runs(n=80, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    runs = [
        SubsetRun(subset, _probabilities(labels, rng, 0.5 + 0.3 * k), 50, 10, 3, 6, 0.7, 1.0)
        for k, subset in enumerate(MODALITY_SUBSETS)
    ]
    return AblationRuns(
        runs=runs,
        hip_ids=[f"h{i}" for i in range(n)],
        patient_ids=[f"p{i // 2}" for i in range(n)],
        labels=labels,
        excluded_test_hips=["h999"],
    )


def test_macro_delong_auc_matches_class_mean_and_variance():
    rng = np.random.default_rng(1)
    labels = np.arange(200) % 4
    probabilities = _probabilities(labels, rng, 1.0)
    uniform = np.full_like(probabilities, 0.25)

    estimate = delong.macro_delong_auc(labels, probabilities)
    against_uniform = delong.macro_delong_test(labels, probabilities, uniform)
    class_aucs = [e.auc for e in delong.one_vs_rest_auc(labels, probabilities)]

    assert estimate.auc == pytest.approx(np.mean(class_aucs))
    # A model with constant scores has zero DeLong components, so the difference
    # against it has the macro AUC's own variance.
    assert estimate.variance == pytest.approx(against_uniform.variance)
    assert estimate.ci_low < estimate.auc < estimate.ci_high


def test_macro_delong_auc_variance_close_to_bootstrap():
    rng = np.random.default_rng(2)
    labels = np.arange(400) % 4
    probabilities = _probabilities(labels, rng, 1.0)
    statistic = bootstrap.resample_statistics(labels, probabilities)
    draw = bootstrap.resample_patients(np.arange(400), np.random.default_rng(3))
    values = [statistic(draw())["macro_auc"] for _ in range(1000)]

    estimate = delong.macro_delong_auc(labels, probabilities)

    # A variance from 1000 resamples has a relative SD of about 4.5 %.
    assert estimate.variance == pytest.approx(np.var(values, ddof=1), rel=0.2)


def test_macro_delong_auc_missing_class_is_undefined():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.full((6, 4), 0.25)

    estimate = delong.macro_delong_auc(labels, probabilities)

    assert np.isnan(estimate.auc)
    assert estimate.reason is UndefinedReason.CLASS_AUC_UNDEFINED


def test_table_p_values_are_paired_delong_against_full():
    runs = _runs()

    table = ablation_table(runs, n_bootstrap=100, seed=0)

    full = runs.runs[-1].probabilities
    for run, row in zip(runs.runs, table["rows"], strict=True):
        expected = delong.macro_delong_test(
            runs.labels, run.probabilities, full, clusters=np.asarray(runs.patient_ids)
        )
        assert row["p_value_vs_full"] == pytest.approx(expected.p_value)
        assert row["macro_auc_difference_vs_full"] == pytest.approx(expected.difference)
    assert table["rows"][-1]["p_value_vs_full"] == 1.0
    assert table["excluded_test_hips"] == ["h999"]


def test_table_threshold_figures_and_intervals():
    runs = _runs()

    table = ablation_table(runs, n_bootstrap=200, seed=0)

    for run, row in zip(runs.runs, table["rows"], strict=True):
        predicted = run.probabilities.argmax(axis=1)
        sensitivity = np.mean([np.mean(predicted[runs.labels == k] == k) for k in range(4)])
        assert row["accuracy"] == pytest.approx(np.mean(predicted == runs.labels))
        assert row["macro_sensitivity"] == pytest.approx(sensitivity)
        for name in ("macro_auc", "accuracy", "macro_sensitivity", "macro_specificity"):
            low, high = row[f"{name}_ci"]
            assert low <= row[name] <= high, (row["subset"], name)


def test_write_ablation_csv_columns(tmp_path):
    runs = _runs(n=40)
    table = ablation_table(runs, n_bootstrap=50)

    write_ablation(table, runs, tmp_path)

    with (tmp_path / "ablation.csv").open() as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert float(rows[0]["macro_auc"]) == pytest.approx(table["rows"][0]["macro_auc"])
    assert not list(tmp_path.glob(".*.csv"))
