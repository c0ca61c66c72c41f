"""What a training run records: per-split predictions, metrics and the training-data summary.

Full evaluations (every figure of :func:`hipfuse.training.evaluate.evaluate_predictions`)
and per-hip predictions go to the run's work folder. The bundle keeps a compact
subset (AUCs with intervals, accuracy, calibration summary), so ``bundle.json``
stays readable.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.cohort import Cohort, Split
from hipfuse.training.crops import CropReport

PREDICTIONS_FILE_NAME = "predictions.csv"


def write_predictions(
    path: Path,
    hip_ids: list[str],
    patient_ids: list[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    splits: Sequence[str],
) -> Path:
    """Write per-hip probabilities in the CSV layout that ``hipfuse-train evaluate`` reads.

    ``splits`` gives each hip's split name (empty when the manifest has none).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [hip_class.value for hip_class in HIP_CLASSES]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["case_id", "patient_id", "label", "split", *[f"prob_{name}" for name in names]]
        )
        for hip_id, patient_id, label, split, row in zip(
            hip_ids, patient_ids, labels, splits, probabilities, strict=True
        ):
            writer.writerow(
                [hip_id, patient_id, names[int(label)], split, *(f"{p:.8f}" for p in row)]
            )
    return path


def evaluate_split(
    hip_ids: list[str],
    patient_ids: list[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    split: Split,
    out_dir: Path,
    *,
    seed: int,
    n_bootstrap: int,
) -> dict[str, Any]:
    """Evaluate one split, write its files under ``out_dir / split``, return the compact figures."""
    from hipfuse.training.evaluate import evaluate_predictions
    from hipfuse.training.evaluation_files import write_evaluation

    split_dir = out_dir / split.value
    write_predictions(
        split_dir / PREDICTIONS_FILE_NAME,
        hip_ids,
        patient_ids,
        labels,
        probabilities,
        [split.value] * len(hip_ids),
    )
    result = evaluate_predictions(
        labels=labels,
        patient_ids=patient_ids,
        probabilities=probabilities,
        model_name=split.value,
        seed=seed,
        n_bootstrap=n_bootstrap,
    )
    write_evaluation(result, split_dir)
    return compact_metrics(result)


def compact_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """Pick the figures a bundle carries from a full evaluation result."""
    calibration = result.get("calibration", {})
    return {
        "n_cases": result["n_cases"],
        "n_patients": result["n_patients"],
        "macro_auc": result["macro_auc"],
        "macro_auc_ci": result["macro_auc_ci"],
        "auc": result["auc"],
        "auc_ci": result["auc_ci"],
        "accuracy": result["accuracy"],
        "accuracy_ci": result["accuracy_ci"],
        "brier_score": calibration.get("brier_score"),
        "ece_top_label": calibration.get("ece_top_label"),
        "undefined": result.get("undefined", []),
    }


def training_data_summary(
    cohort: Cohort,
    crop_report: CropReport,
    *,
    seed: int,
    external_centres: list[str],
) -> dict[str, Any]:
    """Summarise the cohort a bundle was trained on: sizes, classes, centres, hash, seed."""
    splits: dict[str, Any] = {}
    for split in Split:
        hips = cohort.hips_in(split)
        if not hips:
            continue
        splits[split.value] = {
            "n_hips": len(hips),
            "n_patients": len({hip.patient_id for hip in hips}),
            "class_counts": cohort.class_counts(split),
            "centres": dict(sorted(Counter(hip.centre for hip in hips).items())),
        }
    return {
        "manifest": cohort.manifest_path.name,
        "cohort_sha256": cohort.content_hash(),
        "n_hips": len(cohort),
        "n_patients": len({hip.patient_id for hip in cohort.hips}),
        "class_counts": cohort.class_counts(),
        "centres": cohort.centre_counts(),
        "external_centres": sorted(external_centres),
        "splits": splits,
        "masked_inputs": crop_report.summary(),
        "seed": seed,
    }
