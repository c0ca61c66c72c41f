"""Modality attention weights per hip: computed over a source, written and read as CSV.

The report shows their distribution per true class. A modality a hip lacks
has weight 0, so the weights of each hip sum to 1 over its present inputs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hipfuse.inference.types import HIP_CLASSES, INPUT_MODALITIES

ATTENTION_FILE_NAME = "attention.csv"
EVALUATION_BATCH = 32
"""Hips per forward pass (no gradients)."""


def collect_attention(model, source, device) -> np.ndarray:
    """Return the ``(n, 3)`` attention weights of every hip of ``source`` in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    weights = []
    with torch.no_grad():
        for start in range(0, len(source), EVALUATION_BATCH):
            indices = list(range(start, min(start + EVALUATION_BATCH, len(source))))
            batch = source.batch(indices, device)
            output = model(batch.radiograph, batch.ct, batch.text, batch.mask)
            weights.append(output.attention.double().cpu().numpy())
    model.train(was_training)
    if not weights:
        return np.zeros((0, len(INPUT_MODALITIES)))
    return np.concatenate(weights)


def write_attention(
    path: Path, hip_ids: list[str], labels: np.ndarray, attention: np.ndarray
) -> Path:
    """Write one row per hip: ``case_id``, ``label`` and ``attention_<modality>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "label", *[f"attention_{m.value}" for m in INPUT_MODALITIES]])
        for hip_id, label, row in zip(hip_ids, labels, attention, strict=True):
            writer.writerow([hip_id, HIP_CLASSES[int(label)].value, *(f"{w:.6f}" for w in row)])
    return path


def read_attention(path: Path) -> dict[str, np.ndarray]:
    """Read ``attention.csv`` into ``{"labels": class names, "weights": (n, 3)}``."""
    with Path(path).open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    columns = [f"attention_{m.value}" for m in INPUT_MODALITIES]
    weights = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    return {
        "labels": np.array([row["label"] for row in rows]),
        "weights": weights.reshape(len(rows), len(columns)),
    }
