"""Evaluate hip classifier predictions: every figure researchers report, in one place.

Predictions come as arrays, a ``pandas.DataFrame`` or a CSV file with one row
per hip (case) and the columns

``label``
    True class name.
``patient_id``
    Patient the hip belongs to; the bootstrap resamples patients, not hips.
``prob_<class>``
    Predicted probability of each class, one column per class, summing to 1.
``model`` (optional)
    Model name; several models in one file are compared case by case.
``case_id`` (required with several models)
    Identifier that pairs the rows of different models for the same hip.

Input checks collect every problem (line, column, message) before raising one
``PredictionsError``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training import calibration, decision_curve, metrics

log = structlog.get_logger(__name__)

PROBABILITY_PREFIX = "prob_"
SUM_TOLERANCE = 1e-3
DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(c.value for c in HIP_CLASSES)
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")
# The message lists at most this many problems; .problems keeps all of them.
MAX_PROBLEMS_IN_MESSAGE = 50


# --- Inputs --------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionProblem:
    """One invalid value or missing piece in a predictions table.

    Attributes
    ----------
    line
        Line in the CSV file, counting the header as line 1, so the first data
        row is line 2. ``None`` for a problem of the whole table.
    column
        Column name, or ``None`` for a problem of the whole row.
    message
        What is wrong and what is expected.
    """

    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class PredictionsError(ValueError):
    """Invalid predictions; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: Sequence[PredictionProblem], source: str = "predictions") -> None:
        self.problems = list(problems)
        listed = "\n  ".join(str(p) for p in self.problems[:MAX_PROBLEMS_IN_MESSAGE])
        more = len(self.problems) - MAX_PROBLEMS_IN_MESSAGE
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n  {listed}{suffix}")


@dataclass(frozen=True)
class Predictions:
    """Validated predictions of one model.

    Attributes
    ----------
    class_names
        Class names in column order of ``probabilities``.
    labels
        True class index per case.
    patient_ids
        Patient per case (strings).
    probabilities
        ``float64`` matrix ``[n_cases, n_classes]``.
    case_ids
        Case identifiers for pairing models, or ``None``.
    model_name
        Name of the model, or ``None``.
    """

    class_names: tuple[str, ...]
    labels: np.ndarray
    patient_ids: np.ndarray
    probabilities: np.ndarray
    case_ids: np.ndarray | None = None
    model_name: str | None = None

    @classmethod
    def from_arrays(
        cls,
        labels: Sequence[Any] | np.ndarray,
        patient_ids: Sequence[Any] | np.ndarray,
        probabilities: Sequence[Sequence[float]] | np.ndarray,
        class_names: Sequence[str] | None = None,
        *,
        case_ids: Sequence[Any] | np.ndarray | None = None,
        model_name: str | None = None,
    ) -> Predictions:
        """Validate arrays and build ``Predictions``.

        ``labels`` may hold class names or integer class indices. ``class_names``
        defaults to the four hip classes. Rows are numbered from 0 in problems.
        """
        names = (
            DEFAULT_CLASS_NAMES
            if class_names is None
            else tuple(str(_enum_value(c)) for c in class_names)
        )
        matrix = np.asarray(probabilities, dtype=np.float64)
        label_array = np.asarray([_enum_value(v) for v in labels])
        patient_array = np.asarray(patient_ids).astype(str)
        problems: list[PredictionProblem] = []
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"class_names {names!r} must hold at least two distinct names")
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ValueError(
                f"probabilities have shape {matrix.shape} but there are {len(names)} class "
                f"names {names!r}: pass one column per class"
            )
        n = matrix.shape[0]
        if n == 0:
            raise ValueError("no cases: pass at least one prediction")
        for name, array in (("labels", label_array), ("patient_ids", patient_array)):
            if array.shape != (n,):
                raise ValueError(f"{name} have shape {array.shape}: expected ({n},), one per case")
        if case_ids is not None and np.asarray(case_ids).shape != (n,):
            raise ValueError(f"case_ids have shape {np.asarray(case_ids).shape}: expected ({n},)")

        if np.issubdtype(label_array.dtype, np.integer):
            encoded = label_array.astype(np.int64)
            for row in np.flatnonzero((encoded < 0) | (encoded >= len(names))).tolist():
                problems.append(
                    PredictionProblem(
                        None,
                        "label",
                        f"row {row}: class index {encoded[row]} is not in 0..{len(names) - 1}",
                    )
                )
        else:
            index = {name: k for k, name in enumerate(names)}
            encoded = np.full(n, -1, dtype=np.int64)
            for row, value in enumerate(label_array.astype(str).tolist()):
                if value in index:
                    encoded[row] = index[value]
                else:
                    problems.append(
                        PredictionProblem(
                            None,
                            "label",
                            f"row {row}: unknown label {value!r}, expected one of {names}",
                        )
                    )
        for row in np.flatnonzero(np.char.strip(patient_array) == "").tolist():
            problems.append(
                PredictionProblem(None, "patient_id", f"row {row}: patient_id is empty")
            )
        problems.extend(_probability_row_problems(matrix, names, lambda row: None, "row {row}: "))
        if problems:
            raise PredictionsError(problems)
        return cls(
            class_names=names,
            labels=encoded,
            patient_ids=patient_array,
            probabilities=matrix,
            case_ids=None if case_ids is None else np.asarray(case_ids).astype(str),
            model_name=model_name,
        )


def _probability_row_problems(
    matrix: np.ndarray,
    class_names: Sequence[str],
    line_of: Any,
    prefix: str = "",
    already_reported: np.ndarray | None = None,
) -> list[PredictionProblem]:
    """Check every probability for NaN and range, and every complete row for its sum.

    Cells marked in ``already_reported`` (text that is not a number) get no
    second message; their rows, holding NaN, get no sum check.
    """
    problems = []
    if already_reported is None:
        already_reported = np.zeros(matrix.shape, dtype=bool)
    for row in range(matrix.shape[0]):
        line = line_of(row)
        lead = prefix.format(row=row)
        values = matrix[row]
        for k, value in enumerate(values):
            column = PROBABILITY_PREFIX + class_names[k]
            if already_reported[row, k]:
                continue
            if not np.isfinite(value):
                problems.append(
                    PredictionProblem(line, column, f"{lead}probability is missing or NaN")
                )
            elif not 0.0 <= value <= 1.0:
                problems.append(
                    PredictionProblem(
                        line, column, f"{lead}probability {value:g} is outside [0, 1]"
                    )
                )
        if np.all(np.isfinite(values)):
            total = float(values.sum())
            if abs(total - 1.0) > SUM_TOLERANCE:
                problems.append(
                    PredictionProblem(
                        line,
                        None,
                        f"{lead}probabilities sum to {total:.6g}, "
                        f"expected 1 within {SUM_TOLERANCE:g}",
                    )
                )
    return problems


def _enum_value(value: Any) -> Any:
    """Return an enum member's value (``HipClass.FAI`` -> its name string), else the value."""
    return value.value if isinstance(value, Enum) else value


def _is_missing(value: Any) -> bool:
    """Return whether a cell is empty, ``None``, NaN or ``pandas.NA``."""
    if value is None or str(value).strip() == "":
        return True
    return bool(np.ndim(value) == 0 and pd.isna(value))


def predictions_from_frame(
    frame: pd.DataFrame, class_names: Sequence[str] | None = None, source: str = "predictions"
) -> dict[str, Predictions]:
    """Validate a predictions table and split it by model.

    Parameters
    ----------
    frame
        Table with the columns described in the module docstring.
    class_names
        Expected classes; by default the ``prob_<class>`` columns in their order.
    source
        Name used in the error message (the file path for a CSV).

    Returns
    -------
    dict
        Model name to its predictions, in order of first appearance. Without a
        ``model`` column the only key is ``"model"``.

    Raises
    ------
    PredictionsError
        Listing every problem with its line (header = line 1) and column.
    """
    problems: list[PredictionProblem] = []
    columns = [str(c) for c in frame.columns]
    probability_columns = [c for c in columns if c.startswith(PROBABILITY_PREFIX)]
    if class_names is None:
        names = tuple(c[len(PROBABILITY_PREFIX) :] for c in probability_columns)
        if len(names) < 2:
            problems.append(
                PredictionProblem(
                    None,
                    None,
                    f"found {len(names)} '{PROBABILITY_PREFIX}<class>' column(s), need at least 2",
                )
            )
    else:
        names = tuple(str(c) for c in class_names)
        for name in names:
            if PROBABILITY_PREFIX + name not in columns:
                problems.append(
                    PredictionProblem(None, PROBABILITY_PREFIX + name, "missing column")
                )
        for column in probability_columns:
            if column[len(PROBABILITY_PREFIX) :] not in names:
                problems.append(
                    PredictionProblem(None, column, f"unexpected column: classes are {names}")
                )
    for required in ("label", "patient_id"):
        if required not in columns:
            problems.append(PredictionProblem(None, required, "missing column"))
    has_model = "model" in columns
    has_case_id = "case_id" in columns
    model_values = frame["model"].tolist() if has_model else ["model"] * len(frame)
    distinct_models = list(dict.fromkeys(str(m) for m in model_values if not _is_missing(m)))
    if len(distinct_models) > 1 and not has_case_id:
        problems.append(
            PredictionProblem(
                None, "case_id", f"missing column: needed to pair the {len(distinct_models)} models"
            )
        )
    if len(frame) == 0:
        problems.append(PredictionProblem(None, None, "no data rows"))
    if problems:
        raise PredictionsError(problems, source)

    def line_of(row: int) -> int:
        return row + 2

    index = {name: k for k, name in enumerate(names)}
    labels = np.full(len(frame), -1, dtype=np.int64)
    for row, value in enumerate(frame["label"].tolist()):
        if _is_missing(value):
            problems.append(PredictionProblem(line_of(row), "label", "label is missing"))
        elif str(value).strip() not in index:
            problems.append(
                PredictionProblem(
                    line_of(row), "label", f"unknown label {value!r}, expected one of {names}"
                )
            )
        else:
            labels[row] = index[str(value).strip()]
    identifier_columns = ["patient_id"]
    if has_case_id:
        identifier_columns.append("case_id")
    if has_model:
        identifier_columns.append("model")
    for column in identifier_columns:
        for row, value in enumerate(frame[column].tolist()):
            if _is_missing(value):
                problems.append(PredictionProblem(line_of(row), column, f"{column} is missing"))

    matrix = np.empty((len(frame), len(names)))
    not_a_number = np.zeros(matrix.shape, dtype=bool)
    for k, name in enumerate(names):
        raw = frame[PROBABILITY_PREFIX + name]
        numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        for row in np.flatnonzero(np.isnan(numeric)).tolist():
            value = raw.iloc[row]
            if not _is_missing(value) and str(value).strip().lower() != "nan":
                problems.append(
                    PredictionProblem(
                        line_of(row), PROBABILITY_PREFIX + name, f"{value!r} is not a number"
                    )
                )
                not_a_number[row, k] = True
        matrix[:, k] = numeric
    problems.extend(
        _probability_row_problems(matrix, names, line_of, already_reported=not_a_number)
    )

    patient_ids = frame["patient_id"].astype(str).str.strip().to_numpy()
    case_ids = frame["case_id"].astype(str).str.strip().to_numpy() if has_case_id else None
    models = np.array([str(m).strip() for m in model_values])
    if case_ids is not None:
        problems.extend(_pairing_problems(models, case_ids, labels, patient_ids, line_of))
    if problems:
        # File order: by line, then by column as the header lists them, row-level last.
        problems.sort(
            key=lambda p: (
                p.line or 0,
                columns.index(p.column) if p.column in columns else len(columns),
            )
        )
        raise PredictionsError(problems, source)

    result = {}
    for model in dict.fromkeys(models.tolist()):
        rows = models == model
        result[model] = Predictions(
            class_names=names,
            labels=labels[rows],
            patient_ids=patient_ids[rows],
            probabilities=matrix[rows],
            case_ids=None if case_ids is None else case_ids[rows],
            model_name=model if has_model else None,
        )
    return result


def _pairing_problems(
    models: np.ndarray,
    case_ids: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray,
    line_of: Any,
) -> list[PredictionProblem]:
    """Check that case ids are unique per model and describe the same hips in every model."""
    problems = []
    first_line: dict[tuple[str, str], int] = {}
    case_facts: dict[str, tuple[int, str, int]] = {}
    for row, (model, case) in enumerate(zip(models.tolist(), case_ids.tolist(), strict=True)):
        key = (model, case)
        if key in first_line:
            problems.append(
                PredictionProblem(
                    line_of(row),
                    "case_id",
                    f"case_id {case!r} appears again for model {model!r} "
                    f"(first on line {first_line[key]})",
                )
            )
            continue
        first_line[key] = line_of(row)
        facts = (int(labels[row]), str(patient_ids[row]))
        if case not in case_facts:
            case_facts[case] = (*facts, line_of(row))
            continue
        known_label, known_patient, known_line = case_facts[case]
        if labels[row] >= 0 and known_label >= 0 and labels[row] != known_label:
            problems.append(
                PredictionProblem(
                    line_of(row),
                    "label",
                    f"case_id {case!r} has a different label on line {known_line}",
                )
            )
        if facts[1] != known_patient:
            problems.append(
                PredictionProblem(
                    line_of(row),
                    "patient_id",
                    f"case_id {case!r} has a different patient_id on line {known_line}",
                )
            )
    all_cases = list(dict.fromkeys(case_ids.tolist()))
    for model in dict.fromkeys(models.tolist()):
        present = set(case_ids[models == model].tolist())
        for case in all_cases:
            if case not in present:
                problems.append(
                    PredictionProblem(
                        None, "case_id", f"model {model!r} has no row for case_id {case!r}"
                    )
                )
    return problems


def read_predictions_csv(
    path: str | Path, class_names: Sequence[str] | None = None
) -> dict[str, Predictions]:
    """Read and validate a predictions CSV (columns in the module docstring).

    Returns
    -------
    dict
        Model name to predictions, as ``predictions_from_frame`` returns.
    """
    path = Path(path)
    # Read every cell as text, so validation reports "", "NaN" and "abc" as written.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return predictions_from_frame(frame, class_names, source=str(path))


# --- Evaluation ----------------------------------------------------------------


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _json_list(values: np.ndarray) -> list[float | None]:
    return [_json_float(v) for v in np.asarray(values, dtype=np.float64)]


def _interval(interval: metrics.BootstrapInterval) -> list[float | None]:
    return [_json_float(interval.low), _json_float(interval.high)]


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
          ``bootstrap``: ``{"n_resamples", "seed", "unit": "patient"}``.
        - ``auc[class]``: one-vs-rest AUC; ``auc_ci[class]``: DeLong interval
          (cases taken as independent); ``auc_variance[class]``: DeLong
          variance; ``auc_bootstrap_ci[class]``: patient bootstrap interval.
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
    auc_estimates = metrics.one_vs_rest_auc(y, p, confidence_level)
    macro_value, macro_reason = metrics.macro_auc([e.auc for e in auc_estimates])
    note("macro_auc", None, macro_reason)
    micro_value = metrics.micro_auc(y, p)

    intervals = metrics.patient_bootstrap(
        metrics.resample_statistics(y, p),
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
        "auc": {},
        "auc_ci": {},
        "auc_variance": {},
        "auc_bootstrap_ci": {},
        "macro_auc": _json_float(macro_value),
        "macro_auc_ci": _interval(intervals["macro_auc"]),
        "micro_auc": _json_float(micro_value),
        "micro_auc_ci": _interval(intervals["micro_auc"]),
        "accuracy": _json_float(metrics.accuracy(y, predicted)),
        "accuracy_ci": _interval(intervals["accuracy"]),
        "per_class": {},
        "confusion_matrix": {"class_names": list(names), "counts": matrix.tolist()},
    }
    for k, name in enumerate(names):
        estimate = auc_estimates[k]
        note("auc", name, estimate.reason)
        result["auc"][name] = _json_float(estimate.auc)
        result["auc_ci"][name] = [_json_float(estimate.ci_low), _json_float(estimate.ci_high)]
        result["auc_variance"][name] = _json_float(estimate.variance)
        result["auc_bootstrap_ci"][name] = _interval(intervals[f"auc/{k}"])
        class_result = per_class_metrics[k]
        entry: dict[str, Any] = {
            "support": class_result.support,
            "true_positives": class_result.true_positives,
            "false_positives": class_result.false_positives,
            "true_negatives": class_result.true_negatives,
            "false_negatives": class_result.false_negatives,
        }
        for metric_name in THRESHOLD_METRICS:
            entry[metric_name] = _json_float(getattr(class_result, metric_name))
            entry[f"{metric_name}_ci"] = _interval(intervals[f"{metric_name}/{k}"])
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
        "mean_predicted": _json_list(bins.mean_predicted),
        "observed_fraction": _json_list(bins.observed_fraction),
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
        section["intercept"][name] = _json_float(fit.intercept)
        section["slope"][name] = _json_float(fit.slope)
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


# --- Comparison ------------------------------------------------------------------


def _comparison_entry(comparison: metrics.DeLongComparison) -> dict[str, Any]:
    return {
        "auc_first": _json_float(comparison.auc_first),
        "auc_second": _json_float(comparison.auc_second),
        "difference": _json_float(comparison.difference),
        "difference_ci": [_json_float(comparison.ci_low), _json_float(comparison.ci_high)],
        "z": _json_float(comparison.z),
        "p_value": _json_float(comparison.p_value),
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
    contains the paired DeLong test of each class AUC and of the macro AUC, and a
    patient-level paired bootstrap interval of the macro AUC difference, which
    unlike DeLong allows for two correlated hips per patient.

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
        per_class = {
            name: _comparison_entry(
                metrics.delong_test(y == k, p_first[:, k], p_second[:, k], confidence_level)
            )
            for k, name in enumerate(class_names)
        }
        macro = metrics.macro_delong_test(y, p_first, p_second, confidence_level)
        statistic_first = metrics.resample_statistics(y, p_first)
        statistic_second = metrics.resample_statistics(y, p_second)

        def macro_difference(
            indices: np.ndarray, f: Any = statistic_first, s: Any = statistic_second
        ) -> dict[str, float]:
            return {"macro_auc_difference": f(indices)["macro_auc"] - s(indices)["macro_auc"]}

        interval = metrics.patient_bootstrap(
            macro_difference,
            first.patient_ids[rows_first],
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
                "macro_difference_bootstrap_ci": _interval(interval),
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
        "comparisons": comparisons,
    }


# --- Output files ------------------------------------------------------------------


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def write_evaluation(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write an ``evaluate_predictions`` result as JSON and CSV tables.

    Files: ``metrics.json`` (the whole result), ``per_class.csv`` (one row per
    class), ``confusion_matrix.csv`` (rows true, columns predicted),
    ``decision_curve.csv`` and ``reliability.csv`` (long format, one row per
    class and threshold or bin). Undefined values are empty cells in CSV and
    ``null`` in JSON.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(result["class_names"])
    written = []

    path = out / "metrics.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written.append(path)

    path = out / "per_class.csv"
    header = ["class", "support", "auc", "auc_ci_low", "auc_ci_high"]
    for metric_name in THRESHOLD_METRICS:
        header += [metric_name, f"{metric_name}_ci_low", f"{metric_name}_ci_high"]
    header += ["brier_score", "calibration_intercept", "calibration_slope", "ece"]
    rows = []
    for name in names:
        entry = result["per_class"][name]
        row = [name, entry["support"], result["auc"][name], *result["auc_ci"][name]]
        for metric_name in THRESHOLD_METRICS:
            row += [entry[metric_name], *entry[f"{metric_name}_ci"]]
        cal = result["calibration"]
        row += [
            cal["brier_score_per_class"][name],
            cal["intercept"][name],
            cal["slope"][name],
            cal["ece_per_class"][name],
        ]
        rows.append(row)
    _write_csv(path, header, rows)
    written.append(path)

    path = out / "confusion_matrix.csv"
    counts = result["confusion_matrix"]["counts"]
    _write_csv(
        path,
        ["true_class", *names],
        [[name, *counts[k]] for k, name in enumerate(names)],
    )
    written.append(path)

    path = out / "decision_curve.csv"
    curve = result["decision_curve"]
    rows = []
    for name in names:
        values = curve["classes"][name]
        for i, threshold in enumerate(curve["thresholds"]):
            rows.append(
                [
                    name,
                    threshold,
                    values["model"][i],
                    values["treat_all"][i],
                    curve["treat_none"][i],
                ]
            )
    _write_csv(
        path,
        [
            "class",
            "threshold",
            "net_benefit_model",
            "net_benefit_treat_all",
            "net_benefit_treat_none",
        ],
        rows,
    )
    written.append(path)

    path = out / "reliability.csv"
    rows = []
    for curve_name, bins in result["calibration"]["reliability"].items():
        for i in range(len(bins["count"])):
            rows.append(
                [
                    curve_name,
                    i,
                    bins["bin_low"][i],
                    bins["bin_high"][i],
                    bins["mean_predicted"][i],
                    bins["observed_fraction"][i],
                    bins["count"][i],
                ]
            )
    _write_csv(
        path,
        ["curve", "bin", "bin_low", "bin_high", "mean_predicted", "observed_fraction", "count"],
        rows,
    )
    written.append(path)
    return written


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_csv_value(v) for v in row])
