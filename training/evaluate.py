"""Evaluate hip classifier predictions: every figure researchers report, in one place.

Predictions come as arrays, a ``pandas.DataFrame`` or :class:`Predictions`
(see :mod:`hipfuse.training.predictions_io` for the table layout and its
checks). :func:`evaluate_predictions` returns one JSON-serialisable result;
:mod:`hipfuse.training.evaluation_files` writes it as files and
:mod:`hipfuse.training.model_comparison` compares models on the same hips.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import structlog

from hipfuse.training import bootstrap, calibration, decision_curve, delong, metrics
from hipfuse.training.predictions_io import Predictions, predictions_from_frame

log = structlog.get_logger(__name__)

THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")


def json_float(value: float) -> float | None:
    """Return ``value`` as a float, or ``None`` (JSON null) when it is NaN or infinite."""
    return float(value) if np.isfinite(value) else None


def json_list(values: np.ndarray) -> list[float | None]:
    """Return ``values`` as a list of floats with ``None`` for NaN."""
    return [json_float(v) for v in np.asarray(values, dtype=np.float64)]


def json_interval(interval: bootstrap.BootstrapInterval) -> list[float | None]:
    """Return a bootstrap interval as ``[low, high]`` with ``None`` for undefined ends."""
    return [json_float(interval.low), json_float(interval.high)]


def _coerce_predictions(
    data: pd.DataFrame | Predictions | None,
    labels: Any,
    patient_ids: Any,
    probabilities: Any,
    class_names: Sequence[str] | None,
    model_name: str | None,
) -> Predictions:
    if isinstance(data, Predictions):
        return data
    if isinstance(data, pd.DataFrame):
        by_model = predictions_from_frame(data, class_names)
        if len(by_model) != 1:
            raise ValueError(
                f"the table contains {len(by_model)} models {list(by_model)}: evaluate one model "
                "at a time or use compare_models"
            )
        only = next(iter(by_model.values()))
        if model_name is not None:
            only = Predictions(
                only.class_names,
                only.labels,
                only.patient_ids,
                only.probabilities,
                only.case_ids,
                model_name,
            )
        return only
    if data is not None:
        raise TypeError(f"data is a {type(data).__name__}: pass a DataFrame, Predictions or arrays")
    if labels is None or patient_ids is None or probabilities is None:
        raise ValueError("pass data, or all of labels, patient_ids and probabilities")
    return Predictions.from_arrays(
        labels, patient_ids, probabilities, class_names, model_name=model_name
    )


def evaluate_predictions(
    data: pd.DataFrame | Predictions | None = None,
    *,
    labels: Any = None,
    patient_ids: Any = None,
    probabilities: Any = None,
    class_names: Sequence[str] | None = None,
    model_name: str | None = None,
    seed: int = 0,
    n_bootstrap: int = 2000,
    confidence_level: float = 0.95,
    n_bins: int = calibration.DEFAULT_N_BINS,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Compute every evaluation figure of one model's predictions.

    Pass either ``data`` (a DataFrame with the module's columns, or
    ``Predictions``) or the arrays ``labels`` (class names or indices),
    ``patient_ids`` and ``probabilities`` with ``class_names`` (default: the
    four hip classes). The predicted class is the most probable one.

    Returns
    -------
    dict
        JSON-serialisable; ``None`` stands for an undefined figure, whose reason
        is listed under ``undefined``. Intervals are ``[low, high]``. Keys:

        - ``model_name``, ``class_names``, ``n_cases``, ``n_patients``,
          ``confidence_level``, ``decision_rule`` (``"argmax"``),
          ``bootstrap``: ``{"n_resamples", "seed", "unit": "patient"}``,
          ``auc_interval``: how the AUC intervals are computed.
        - ``auc[class]``: one-vs-rest AUC; ``auc_ci[class]``: DeLong interval
          clustered by patient (Obuchowski), so the two hips of a patient are
          not taken as independent; ``auc_variance[class]``: its variance;
          ``auc_bootstrap_ci[class]``: patient bootstrap interval.
        - ``macro_auc``, ``macro_auc_ci``, ``micro_auc``, ``micro_auc_ci``,
          ``accuracy``, ``accuracy_ci``: intervals from the patient bootstrap.
        - ``per_class[class]``: ``support``, ``true_positives``,
          ``false_positives``, ``true_negatives``, ``false_negatives`` and, each
          with a ``<name>_ci`` bootstrap interval, ``sensitivity``,
          ``specificity``, ``ppv``, ``npv``, ``f1``.
        - ``confusion_matrix``: ``{"class_names", "counts"}``, rows true class,
          columns predicted class.
        - ``calibration``: ``brier_score`` (multiclass, range 0 to 2),
          ``brier_score_per_class[class]``, ``intercept[class]``,
          ``slope[class]``, ``ece_top_label``, ``ece_per_class[class]``,
          ``n_bins`` and ``reliability`` (``"top_label"`` and each class:
          ``bin_low``, ``bin_high``, ``mean_predicted``,
          ``observed_fraction``, ``count`` per bin).
        - ``decision_curve``: ``thresholds``, ``treat_none`` and
          ``classes[class]``: ``{"model", "treat_all"}`` net benefits.
        - ``undefined``: list of ``{"figure", "class", "reason"}``.
        - ``bootstrap_valid_resamples``: figure to the number of resamples
          that defined it, listed only where some did not.
    """
    started = time.perf_counter()
    predictions = _coerce_predictions(
        data, labels, patient_ids, probabilities, class_names, model_name
    )
    names = predictions.class_names
    y = predictions.labels
    p = predictions.probabilities
    n_classes = len(names)
    undefined: list[dict[str, str | None]] = []

    def note(figure: str, class_name: str | None, reason: metrics.UndefinedReason | None) -> None:
        if reason is not None:
            undefined.append({"figure": figure, "class": class_name, "reason": reason.value})

    predicted = metrics.predicted_classes(p)
    matrix = metrics.confusion_matrix(y, predicted, n_classes)
    per_class_metrics = metrics.class_metrics(matrix)
    auc_estimates = delong.one_vs_rest_auc(y, p, confidence_level, clusters=predictions.patient_ids)
    macro_value, macro_reason = delong.macro_auc([e.auc for e in auc_estimates])
    note("macro_auc", None, macro_reason)
    micro_value = delong.micro_auc(y, p)

    intervals = bootstrap.patient_bootstrap(
        bootstrap.resample_statistics(y, p),
        predictions.patient_ids,
        n_resamples=n_bootstrap,
        seed=seed,
        confidence_level=confidence_level,
    )
    valid_counts = {
        key: interval.n_valid
        for key, interval in intervals.items()
        if interval.n_valid < n_bootstrap
    }

    result: dict[str, Any] = {
        "model_name": predictions.model_name,
        "class_names": list(names),
        "n_cases": int(y.size),
        "n_patients": int(np.unique(predictions.patient_ids).size),
        "confidence_level": confidence_level,
        "decision_rule": "argmax",
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "unit": "patient"},
        "auc_interval": delong.AUC_INTERVAL_METHOD,
        "auc": {},
        "auc_ci": {},
        "auc_variance": {},
        "auc_bootstrap_ci": {},
        "macro_auc": json_float(macro_value),
        "macro_auc_ci": json_interval(intervals["macro_auc"]),
        "micro_auc": json_float(micro_value),
        "micro_auc_ci": json_interval(intervals["micro_auc"]),
        "accuracy": json_float(metrics.accuracy(y, predicted)),
        "accuracy_ci": json_interval(intervals["accuracy"]),
        "per_class": {},
        "confusion_matrix": {"class_names": list(names), "counts": matrix.tolist()},
    }
    for k, name in enumerate(names):
        estimate = auc_estimates[k]
        note("auc", name, estimate.reason)
        result["auc"][name] = json_float(estimate.auc)
        result["auc_ci"][name] = [json_float(estimate.ci_low), json_float(estimate.ci_high)]
        result["auc_variance"][name] = json_float(estimate.variance)
        result["auc_bootstrap_ci"][name] = json_interval(intervals[f"auc/{k}"])
        class_result = per_class_metrics[k]
        entry: dict[str, Any] = {
            "support": class_result.support,
            "true_positives": class_result.true_positives,
            "false_positives": class_result.false_positives,
            "true_negatives": class_result.true_negatives,
            "false_negatives": class_result.false_negatives,
        }
        for metric_name in THRESHOLD_METRICS:
            entry[metric_name] = json_float(getattr(class_result, metric_name))
            entry[f"{metric_name}_ci"] = json_interval(intervals[f"{metric_name}/{k}"])
            note(metric_name, name, class_result.undefined.get(metric_name))
        result["per_class"][name] = entry

    result["calibration"] = _calibration_section(y, p, names, n_bins, note)
    result["decision_curve"] = _decision_curve_section(y, p, names, thresholds)
    result["undefined"] = undefined
    result["bootstrap_valid_resamples"] = _rename_bootstrap_keys(valid_counts, names)
    log.info(
        "predictions_evaluated",
        model_name=predictions.model_name,
        n_cases=int(y.size),
        n_classes=n_classes,
        n_bootstrap=n_bootstrap,
        duration_s=round(time.perf_counter() - started, 3),
    )
    return result


def _rename_bootstrap_keys(counts: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    """Turn ``metric/<index>`` keys into ``metric/<class name>``."""
    renamed = {}
    for key, value in counts.items():
        figure, _, index = key.partition("/")
        renamed[f"{figure}/{names[int(index)]}" if index else figure] = value
    return renamed


def _reliability_entry(bins: calibration.ReliabilityBins) -> dict[str, list[Any]]:
    return {
        "bin_low": bins.edges[:-1].tolist(),
        "bin_high": bins.edges[1:].tolist(),
        "mean_predicted": json_list(bins.mean_predicted),
        "observed_fraction": json_list(bins.observed_fraction),
        "count": bins.count.astype(int).tolist(),
    }


def _calibration_section(
    y: np.ndarray, p: np.ndarray, names: Sequence[str], n_bins: int, note: Any
) -> dict[str, Any]:
    top_label = calibration.top_label_reliability(y, p, n_bins)
    per_class_bins = calibration.class_reliability(y, p, n_bins)
    per_class_brier = calibration.brier_score_per_class(y, p)
    section: dict[str, Any] = {
        "brier_score": calibration.brier_score(y, p),
        "brier_score_per_class": {},
        "intercept": {},
        "slope": {},
        "ece_top_label": top_label.expected_calibration_error,
        "ece_per_class": {},
        "n_bins": n_bins,
        "reliability": {"top_label": _reliability_entry(top_label)},
    }
    for k, name in enumerate(names):
        fit = calibration.calibration_intercept_slope(y == k, p[:, k])
        if fit.reason is not None:
            figure = "calibration_slope" if np.isfinite(fit.intercept) else "calibration"
            note(figure, name, fit.reason)
        section["brier_score_per_class"][name] = float(per_class_brier[k])
        section["intercept"][name] = json_float(fit.intercept)
        section["slope"][name] = json_float(fit.slope)
        section["ece_per_class"][name] = per_class_bins[k].expected_calibration_error
        section["reliability"][name] = _reliability_entry(per_class_bins[k])
    return section


def _decision_curve_section(
    y: np.ndarray, p: np.ndarray, names: Sequence[str], thresholds: Sequence[float] | None
) -> dict[str, Any]:
    curves = decision_curve.decision_curves(
        y, p, None if thresholds is None else np.asarray(thresholds)
    )
    return {
        "thresholds": curves[0].thresholds.tolist(),
        "treat_none": curves[0].treat_none.tolist(),
        "classes": {
            name: {"model": curve.model.tolist(), "treat_all": curve.treat_all.tolist()}
            for name, curve in zip(names, curves, strict=True)
        },
    }
