"""A small cohort whose crops come from a stand-in region finder, for training-loop tests.

Each patient's "radiograph" and "CT" files are JSON files naming the class of
each hip. :func:`fake_crop_one_image` replaces the reader and region finder: it
draws a crop whose bright blob position depends on the class, so a network can
learn the labels in a few epochs. Notes are real text run through the real
text encoder. The crop cache then contains ordinary entries, so processes started
later (the distributed test) read them without the stand-in.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from hipfuse.inference.types import HIP_CLASSES, Laterality
from hipfuse.training import crops as crops_module

NOTES = {
    "normal": "No hip complaints. Full painless range of motion.",
    "osteoarthritis": "Groin pain on walking, morning stiffness, joint space narrowing.",
    "osteonecrosis_of_femoral_head": "Long-term steroid use, deep hip pain, crescent sign.",
    "femoroacetabular_impingement": "Young athlete, pain on flexion and internal rotation.",
}


def write_synthetic_cohort(
    root: Path,
    n_patients: int,
    seed: int = 0,
    *,
    missing_side: tuple[str, str] | None = None,
    split_column: bool = False,
    centre_b_patients: int = 0,
) -> Path:
    """Write the files and manifest of ``n_patients`` patients and return the manifest path.

    ``missing_side`` is ``(patient_id, "R" or "L")`` whose radiograph region the
    stand-in reports as not found. The last ``centre_b_patients`` patients
    belong to centre ``B``, the others to ``A``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_patients):
        patient = f"p{index:03d}"
        folder = root / patient
        folder.mkdir(parents=True, exist_ok=True)
        labels = {
            Laterality.RIGHT.value: HIP_CLASSES[(index + int(rng.integers(2))) % 4].value,
            Laterality.LEFT.value: HIP_CLASSES[(index * 3 + 1) % 4].value,
        }
        hidden = [missing_side[1]] if missing_side and missing_side[0] == patient else []
        image = {"labels": labels, "seed": seed * 1000 + index, "not_found": hidden}
        (folder / "xray.json").write_text(json.dumps(image), encoding="utf-8")
        (folder / "ct.json").write_text(json.dumps({**image, "not_found": []}), encoding="utf-8")
        note = f"Right hip: {NOTES[labels['R']]} Left hip: {NOTES[labels['L']]}"
        (folder / "note.txt").write_text(note, encoding="utf-8")
        split = ["train", "train", "train", "validation", "test"][index % 5]
        for side in ("R", "L"):
            row = {
                "hip_id": f"{patient}-{side}",
                "patient_id": patient,
                "laterality": side,
                "label": labels[side],
                "radiograph_path": f"{patient}/xray.json",
                "ct_path": f"{patient}/ct.json",
                "text_path": f"{patient}/note.txt",
                "centre": "B" if index >= n_patients - centre_b_patients else "A",
            }
            if split_column:
                row["split"] = split
            rows.append(row)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def fake_crop_one_image(job: tuple[str, str, str, dict]) -> None:
    """Write a cache entry as ``crops._crop_one_image`` does, from a JSON stand-in image."""
    modality, source, entry_dir_text, geometry = job
    entry_dir = Path(entry_dir_text)
    entry_dir.mkdir(parents=True, exist_ok=True)
    image = json.loads(Path(source).read_text(encoding="utf-8"))
    found = []
    for side, label in image["labels"].items():
        if side in image["not_found"]:
            continue
        rng = np.random.default_rng([image["seed"], ord(side), len(modality)])
        class_index = [c.value for c in HIP_CLASSES].index(label)
        if modality == "radiograph":
            shape = (geometry["crop_px"], geometry["crop_px"])
            crop = 0.3 + 0.1 * rng.standard_normal(shape)
            _add_blob(crop, class_index, 0.5)
            crop = np.clip(crop, 0.0, 1.0)
        else:
            shape = tuple(geometry["crop_shape"])
            crop = -100.0 + 80.0 * rng.standard_normal(shape)
            _add_blob(crop, class_index, 900.0)
        np.save(entry_dir / f"{side}.npy", crop.astype(np.float32))
        found.append(side)
    result = {
        "source": source,
        "found": found,
        "missing": {s: "stand-in" for s in image["not_found"]},
    }
    (entry_dir / crops_module.RESULT_FILE_NAME).write_text(json.dumps(result), encoding="utf-8")


def _add_blob(array: np.ndarray, class_index: int, value: float) -> None:
    # The blob sits in one quadrant per class, over every leading axis.
    half = [size // 2 for size in array.shape[-2:]]
    row = slice(0, half[0]) if class_index in (0, 1) else slice(half[0], None)
    column = slice(0, half[1]) if class_index in (0, 2) else slice(half[1], None)
    array[..., row, column] += value


def use_fake_cropper(monkeypatch) -> None:
    """Make ``prepare_crops`` use the stand-in region finder in this process."""
    monkeypatch.setattr(crops_module, "_crop_one_image", fake_crop_one_image)
