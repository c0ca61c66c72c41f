"""Compare hip classifiers on the same hips: paired DeLong tests and a paired bootstrap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import structlog

from hipfuse.training import bootstrap, delong
from hipfuse.training.evaluate import json_float, json_interval
from hipfuse.training.predictions_io import Predictions

log = structlog.get_logger(__name__)


def _comparison_entry(comparison: delong.DeLongComparison) -> dict[str, Any]:
    return {
        "auc_first": json_float(comparison.auc_first),
        "auc_second": json_float(comparison.auc_second),
        "difference": json_float(comparison.difference),
        "difference_ci": [json_float(comparison.ci_low), json_float(comparison.ci_high)],
        "z": json_float(comparison.z),
        "p_value": json_float(comparison.p_value),
        "reason": None if comparison.reason is None else comparison.reason.value,
    }


def _align(first: Predictions, second: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Return row indices of ``second`` that pair with the rows of ``first``."""
    if first.class_names != second.class_names:
        raise ValueError(
            f"models have different classes {first.class_names} and {second.class_names}"
        )
    if first.case_ids is not None and second.case_ids is not None:
        position = {case: row for row, case in enumerate(second.case_ids)}
        missing = [case for case in first.case_ids if case not in position]
        if missing or len(position) != len(first.case_ids):
            raise ValueError(
                f"models {first.model_name!r} and {second.model_name!r} cover different cases "
                f"(for example {missing[:3]}): pass predictions for the same hips"
            )
        order = np.array([position[case] for case in first.case_ids])
    elif first.case_ids is None and second.case_ids is None:
        if first.labels.size != second.labels.size:
            raise ValueError("models without case_ids must list the same cases in the same order")
        order = np.arange(first.labels.size)
    else:
        raise ValueError("pass case_ids for both models or for neither")
    if not (
        np.array_equal(first.labels, second.labels[order])
        and np.array_equal(first.patient_ids, second.patient_ids[order])
    ):
        raise ValueError(
            f"models {first.model_name!r} and {second.model_name!r} disagree on the label or "
            "patient of some cases: pair rows by case_id"
        )
    return np.arange(first.labels.size), order


def compare_models(
    predictions: Mapping[str, Predictions] | Sequence[Predictions],
    *,
    seed: int = 0,
    n_bootstrap: int = 2000,
    confidence_level: float = 0.95,
) -> dict[str, Any]:
    """Compare every pair of models on the same hips.

    For each pair (in input order, ``first`` before ``second``) the result
    contains the paired DeLong test of each class AUC and of the macro AUC,
    clustered by patient (Obuchowski) so that two correlated hips of one
    patient are not taken as independent, and a patient-level paired
    bootstrap interval of the macro AUC difference.

    Returns
    -------
    dict
        JSON-serialisable: ``class_names``, ``confidence_level``, ``bootstrap``
        and ``comparisons``, a list of ``{"first", "second", "n_cases",
        "per_class": {class: test}, "macro": test,
        "macro_difference_bootstrap_ci"}`` where a test has ``auc_first``,
        ``auc_second``, ``difference``, ``difference_ci``, ``z``, ``p_value``
        and ``reason`` (``None`` unless undefined).
    """
    named = (
        dict(predictions)
        if isinstance(predictions, Mapping)
        else {(p.model_name or f"model_{i}"): p for i, p in enumerate(predictions)}
    )
    if len(named) < 2:
        raise ValueError(f"got {len(named)} model(s): compare_models needs at least two")
    class_names = next(iter(named.values())).class_names
    comparisons = []
    for first_name, second_name in combinations(named, 2):
        first = named[first_name]
        second = named[second_name]
        rows_first, rows_second = _align(first, second)
        y = first.labels[rows_first]
        p_first = first.probabilities[rows_first]
        p_second = second.probabilities[rows_second]
        patients = first.patient_ids[rows_first]
        per_class = {
            name: _comparison_entry(
                delong.delong_test(
                    y == k, p_first[:, k], p_second[:, k], confidence_level, clusters=patients
                )
            )
            for k, name in enumerate(class_names)
        }
        macro = delong.macro_delong_test(y, p_first, p_second, confidence_level, clusters=patients)
        statistic_first = bootstrap.resample_statistics(y, p_first)
        statistic_second = bootstrap.resample_statistics(y, p_second)

        def macro_difference(
            indices: np.ndarray, f: Any = statistic_first, s: Any = statistic_second
        ) -> dict[str, float]:
            return {"macro_auc_difference": f(indices)["macro_auc"] - s(indices)["macro_auc"]}

        interval = bootstrap.patient_bootstrap(
            macro_difference,
            patients,
            n_resamples=n_bootstrap,
            seed=seed,
            confidence_level=confidence_level,
        )["macro_auc_difference"]
        comparisons.append(
            {
                "first": first_name,
                "second": second_name,
                "n_cases": int(y.size),
                "per_class": per_class,
                "macro": _comparison_entry(macro),
                "macro_difference_bootstrap_ci": json_interval(interval),
            }
        )
    log.info(
        "models_compared",
        model_names=list(named),
        n_pairs=len(comparisons),
        n_bootstrap=n_bootstrap,
    )
    return {
        "class_names": list(class_names),
        "confidence_level": confidence_level,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "unit": "patient"},
        "delong": delong.AUC_INTERVAL_METHOD,
        "comparisons": comparisons,
    }
