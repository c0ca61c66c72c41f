"""The ablation table: per modality subset, the figures the study reports, with intervals.

Columns per subset, all on the same test hips:

- macro AUC (one-vs-rest mean) with its DeLong 95 % interval;
- accuracy, macro sensitivity and macro specificity (means over the classes
  at the argmax decision), each with a patient-level bootstrap interval;
- the paired DeLong test of the macro AUC difference against the full model
  (p = 1 for the full model itself).

The bootstrap draws the same patients for every subset (one seed), so the
intervals of different rows come from the same resamples.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.ablation import FULL_SUBSET, AblationRuns, subset_name
from hipfuse.training.bootstrap import patient_bootstrap, resample_statistics
from hipfuse.training.delong import AUC_INTERVAL_METHOD, macro_delong_auc, macro_delong_test
from hipfuse.training.fit_report import write_predictions
from hipfuse.training.metrics import accuracy, class_metrics, confusion_matrix, predicted_classes

TABLE_CSV_NAME = "ablation.csv"
TABLE_JSON_NAME = "ablation.json"
PREDICTIONS_CSV_NAME = "predictions.csv"

CSV_COLUMNS = (
    "subset",
    "n_hips",
    "macro_auc",
    "macro_auc_ci_low",
    "macro_auc_ci_high",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "macro_sensitivity",
    "macro_sensitivity_ci_low",
    "macro_sensitivity_ci_high",
    "macro_specificity",
    "macro_specificity_ci_low",
    "macro_specificity_ci_high",
    "macro_auc_difference_vs_full",
    "p_value_vs_full",
)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _macro_threshold_statistic(
    labels: np.ndarray, probabilities: np.ndarray
) -> Callable[[np.ndarray], dict[str, float]]:
    """Bootstrap statistic: accuracy and the class means of sensitivity and specificity.

    A mean is NaN in a resample that lacks a class, as the macro AUC is.
    """
    per_case = resample_statistics(labels, probabilities)
    n_classes = probabilities.shape[1]

    def statistic(indices: np.ndarray) -> dict[str, float]:
        values = per_case(indices)
        return {
            "accuracy": values["accuracy"],
            "macro_sensitivity": float(
                np.mean([values[f"sensitivity/{k}"] for k in range(n_classes)])
            ),
            "macro_specificity": float(
                np.mean([values[f"specificity/{k}"] for k in range(n_classes)])
            ),
        }

    return statistic


def ablation_table(
    runs: AblationRuns,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> dict[str, Any]:
    """Compute the comparison table of every subset against the full model.

    Returns
    -------
    dict
        JSON-ready: ``class_names``, ``n_hips``, ``n_patients``,
        ``excluded_test_hips``, ``confidence_level``, ``bootstrap``,
        ``settings`` and ``rows``, one per subset with ``subset``,
        ``modalities``, ``n_hips``, ``macro_auc``, ``macro_auc_ci`` (DeLong),
        ``accuracy``, ``macro_sensitivity``, ``macro_specificity`` (each with a
        ``_ci`` bootstrap interval), ``macro_auc_difference_vs_full``,
        ``macro_auc_difference_ci`` (DeLong), ``p_value_vs_full``,
        ``p_value_reason`` and the training outcome (``n_train``,
        ``n_validation``, ``best_epoch``, ``epochs_run``, ``seconds``).
        Undefined figures are ``None``.
    """
    labels = np.asarray(runs.labels)
    patients = np.asarray(runs.patient_ids)
    full = next((run for run in runs.runs if set(run.subset) == set(FULL_SUBSET)), None)
    rows = []
    for run in runs.runs:
        probabilities = run.probabilities
        predicted = predicted_classes(probabilities)
        per_class = class_metrics(confusion_matrix(labels, predicted, probabilities.shape[1]))
        auc = macro_delong_auc(labels, probabilities, confidence_level, clusters=patients)
        intervals = patient_bootstrap(
            _macro_threshold_statistic(labels, probabilities),
            patients,
            n_resamples=n_bootstrap,
            seed=seed,
            confidence_level=confidence_level,
        )
        row: dict[str, Any] = {
            "subset": subset_name(run.subset),
            "modalities": [m.value for m in run.subset],
            "n_hips": int(labels.size),
            "macro_auc": _finite(auc.auc),
            "macro_auc_ci": [_finite(auc.ci_low), _finite(auc.ci_high)],
            "macro_auc_reason": None if auc.reason is None else auc.reason.value,
            "accuracy": _finite(accuracy(labels, predicted)),
            "macro_sensitivity": _finite(float(np.mean([m.sensitivity for m in per_class]))),
            "macro_specificity": _finite(float(np.mean([m.specificity for m in per_class]))),
        }
        for name in ("accuracy", "macro_sensitivity", "macro_specificity"):
            row[f"{name}_ci"] = [_finite(intervals[name].low), _finite(intervals[name].high)]
        if full is None:
            comparison = None
        else:
            comparison = macro_delong_test(
                labels, probabilities, full.probabilities, confidence_level, clusters=patients
            )
        row["macro_auc_difference_vs_full"] = (
            None if comparison is None else _finite(comparison.difference)
        )
        row["macro_auc_difference_ci"] = (
            [None, None]
            if comparison is None
            else [_finite(comparison.ci_low), _finite(comparison.ci_high)]
        )
        row["p_value_vs_full"] = None if comparison is None else _finite(comparison.p_value)
        row["p_value_reason"] = (
            None if comparison is None or comparison.reason is None else comparison.reason.value
        )
        row.update(
            n_train=run.n_train,
            n_validation=run.n_validation,
            best_epoch=run.best_epoch,
            epochs_run=run.epochs_run,
            seconds=round(run.seconds, 2),
        )
        rows.append(row)
    return {
        "class_names": [c.value for c in HIP_CLASSES],
        "n_hips": int(labels.size),
        "n_patients": int(np.unique(patients).size),
        "excluded_test_hips": list(runs.excluded_test_hips),
        "confidence_level": confidence_level,
        "auc_interval": AUC_INTERVAL_METHOD,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "unit": "patient"},
        "settings": runs.settings,
        "rows": rows,
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_interval(value: float | None, interval: Sequence[float | None]) -> str:
    if value is None:
        return "n/a"
    if interval[0] is None or interval[1] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def _p_value_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_table(table: dict[str, Any]) -> str:
    """Render the table as fixed-width text, one line per subset."""
    header = (
        f"{'subset':<22}{'macro AUC (95% CI)':<24}{'accuracy':<24}"
        f"{'sensitivity':<24}{'specificity':<24}{'p vs full':>9}"
    )
    lines = [
        f"modality ablation on {table['n_hips']} test hips of {table['n_patients']} patients "
        "(AUC interval DeLong clustered by patient, others patient bootstrap)",
        header,
        "-" * len(header),
    ]
    for row in table["rows"]:
        lines.append(
            f"{row['subset']:<22}"
            f"{_with_interval(row['macro_auc'], row['macro_auc_ci']):<24}"
            f"{_with_interval(row['accuracy'], row['accuracy_ci']):<24}"
            f"{_with_interval(row['macro_sensitivity'], row['macro_sensitivity_ci']):<24}"
            f"{_with_interval(row['macro_specificity'], row['macro_specificity_ci']):<24}"
            f"{_p_value_text(row['p_value_vs_full']):>9}"
        )
    if table["excluded_test_hips"]:
        lines.append(
            f"{len(table['excluded_test_hips'])} test hip(s) without all three inputs left out"
        )
    return "\n".join(lines)


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def write_ablation(table: dict[str, Any], runs: AblationRuns, out_dir: Path) -> list[Path]:
    """Write ``ablation.json``, ``ablation.csv`` and the per-hip ``predictions.csv``.

    ``predictions.csv`` has one block of rows per subset (``model`` column =
    subset name), so ``hipfuse-train evaluate --predictions`` can compare any
    two subsets further.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / TABLE_JSON_NAME
    json_path.write_text(json.dumps(table, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    csv_path = out_dir / TABLE_CSV_NAME
    with csv_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for row in table["rows"]:
            writer.writerow(
                [
                    _csv_cell(v)
                    for v in (
                        row["subset"],
                        row["n_hips"],
                        row["macro_auc"],
                        *row["macro_auc_ci"],
                        row["accuracy"],
                        *row["accuracy_ci"],
                        row["macro_sensitivity"],
                        *row["macro_sensitivity_ci"],
                        row["macro_specificity"],
                        *row["macro_specificity_ci"],
                        row["macro_auc_difference_vs_full"],
                        row["p_value_vs_full"],
                    )
                ]
            )

    predictions_path = out_dir / PREDICTIONS_CSV_NAME
    blocks = []
    for run in runs.runs:
        block = out_dir / f".{subset_name(run.subset)}.csv"
        write_predictions(
            block,
            runs.hip_ids,
            runs.patient_ids,
            runs.labels,
            run.probabilities,
            ["test"] * len(runs.hip_ids),
        )
        blocks.append((subset_name(run.subset), block))
    with predictions_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        for index, (name, block) in enumerate(blocks):
            with block.open(newline="", encoding="utf-8") as source:
                reader = csv.reader(source)
                header = next(reader)
                if index == 0:
                    writer.writerow(["model", *header])
                for record in reader:
                    writer.writerow([name, *record])
            block.unlink()
    return [json_path, csv_path, predictions_path]
