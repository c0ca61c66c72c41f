"""Write an evaluation result as ``metrics.json`` and CSV tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hipfuse.training.evaluate import THRESHOLD_METRICS


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
