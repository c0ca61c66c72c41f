"""Cohort manifests: one row per hip, validated as a whole before any training.

A manifest is a CSV file (or Parquet, when ``pyarrow`` is installed) with the
columns in :data:`REQUIRED_COLUMNS`, an optional ``split`` column and any
number of extra columns (lesion masks, reader notes), which are kept verbatim.
Paths are relative to the manifest's folder unless absolute; an empty cell
means the hip has no input of that modality. ``ct_path`` is a DICOM series
folder, a list of files in a folder, or a NIfTI file.

:func:`load_cohort` reports every problem of a manifest at once, each with its
row number (1 is the first row after the CSV header) and column, so a user
fixes a manifest in one pass.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from hipfuse.inference.types import HIP_CLASSES, HipClass, Laterality


class Split(StrEnum):
    """Role of a hip in training and evaluation.

    ``EXTERNAL`` hips come from a centre that training never saw; they are
    evaluated with the trained model and never used to fit or select it.
    """

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"
    EXTERNAL = "external"


REQUIRED_COLUMNS: tuple[str, ...] = (
    "hip_id",
    "patient_id",
    "laterality",
    "label",
    "radiograph_path",
    "ct_path",
    "text_path",
    "centre",
)
PATH_COLUMNS: tuple[str, ...] = ("radiograph_path", "ct_path", "text_path")
SPLIT_COLUMN = "split"

# Accepted spellings of each class besides the enum value, compared case-insensitively.
LABEL_ALIASES: dict[str, HipClass] = {
    **{hip_class.value: hip_class for hip_class in HIP_CLASSES},
    "oa": HipClass.OSTEOARTHRITIS,
    "onfh": HipClass.OSTEONECROSIS,
    "osteonecrosis": HipClass.OSTEONECROSIS,
    "fai": HipClass.FAI,
}
LATERALITY_ALIASES: dict[str, Laterality] = {
    "r": Laterality.RIGHT,
    "right": Laterality.RIGHT,
    "l": Laterality.LEFT,
    "left": Laterality.LEFT,
}
SPLIT_ALIASES: dict[str, Split] = {
    **{split.value: split for split in Split},
    "val": Split.VALIDATION,
}


@dataclass(frozen=True)
class CohortProblem:
    """One problem found in a manifest.

    Attributes
    ----------
    row
        1-based data row (the first row after the header is 1), or ``None``
        for a problem of the whole file.
    column
        Column the problem is in, or ``None`` when it concerns no single column.
    message
        What is wrong, with the value, and how to fix it.
    """

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        prefix = ", ".join(where) if where else "manifest"
        return f"{prefix}: {self.message}"


class CohortError(ValueError):
    """A manifest with one or more problems; the message lists every one."""

    def __init__(self, manifest_path: Path, problems: list[CohortProblem]) -> None:
        self.manifest_path = manifest_path
        self.problems = list(problems)
        lines = [f"cohort manifest {manifest_path} has {len(problems)} problem(s):"]
        lines.extend(f"  - {problem}" for problem in problems)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class HipRecord:
    """One validated manifest row: a hip, its label and the paths of its inputs.

    Attributes
    ----------
    row
        1-based data row in the manifest, for messages.
    radiograph_path, ct_path, text_path
        Absolute paths, or ``None`` when the hip has no input of that modality.
    split
        Role in training, or ``None`` when the manifest assigns none.
    extras
        Values of the manifest's extra columns, verbatim.
    """

    hip_id: str
    patient_id: str
    laterality: Laterality
    label: HipClass
    radiograph_path: Path | None
    ct_path: Path | None
    text_path: Path | None
    centre: str
    split: Split | None = None
    row: int = 0
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Cohort:
    """A validated manifest.

    Attributes
    ----------
    manifest_path
        The manifest file the hips were read from.
    hips
        One record per manifest row, in manifest order.
    extra_columns
        Names of the manifest's columns beyond the required ones and ``split``.
    """

    manifest_path: Path
    hips: tuple[HipRecord, ...]
    extra_columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.hips)

    @property
    def has_splits(self) -> bool:
        """Whether every hip has a split assigned."""
        return bool(self.hips) and all(hip.split is not None for hip in self.hips)

    def hips_in(self, split: Split) -> list[HipRecord]:
        """Return the hips assigned to ``split``, in manifest order."""
        return [hip for hip in self.hips if hip.split is split]

    def with_splits(self, splits: dict[str, Split]) -> Cohort:
        """Return a copy with the split of each hip id replaced by ``splits``."""
        hips = tuple(replace(hip, split=splits.get(hip.hip_id, hip.split)) for hip in self.hips)
        return replace(self, hips=hips)

    def class_counts(self, split: Split | None = None) -> dict[str, int]:
        """Count hips per class (all four classes listed), optionally in one split."""
        hips = self.hips if split is None else self.hips_in(split)
        counts = Counter(hip.label for hip in hips)
        return {hip_class.value: counts.get(hip_class, 0) for hip_class in HIP_CLASSES}

    def centre_counts(self) -> dict[str, int]:
        """Count hips per centre."""
        return dict(sorted(Counter(hip.centre for hip in self.hips).items()))

    def content_hash(self) -> str:
        """Return the SHA-256 of the validated rows, independent of file format and path.

        Two manifests with the same hips, labels, inputs (paths relative to the
        manifest) and splits have the same hash, so a bundle's training summary
        identifies its cohort.
        """
        digest = hashlib.sha256()
        base = self.manifest_path.parent
        for hip in self.hips:
            fields = [
                hip.hip_id,
                hip.patient_id,
                hip.laterality.value,
                hip.label.value,
                *(_relative_text(path, base) for path in _paths(hip)),
                hip.centre,
                hip.split.value if hip.split else "",
            ]
            digest.update("\x1f".join(fields).encode("utf-8"))
            digest.update(b"\x1e")
        return digest.hexdigest()


def load_cohort(path: Path | str) -> Cohort:
    """Read and validate a cohort manifest.

    Parameters
    ----------
    path
        A ``.csv`` file, or a ``.parquet`` file when ``pyarrow`` is installed.

    Raises
    ------
    CohortError
        Listing every problem at once: missing columns or files, unknown
        labels, invalid laterality or split, duplicate hip ids, duplicate
        (patient, laterality), a patient split across train/validation/test,
        a hip with no input at all.
    """
    path = Path(path)
    rows, columns = _read_table(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise CohortError(
            path,
            [
                CohortProblem(
                    None,
                    column,
                    "required column is missing; the manifest needs the columns "
                    + ", ".join(REQUIRED_COLUMNS),
                )
                for column in missing
            ],
        )
    if not rows:
        raise CohortError(path, [CohortProblem(None, None, "the manifest has no rows")])

    extra_columns = tuple(c for c in columns if c not in REQUIRED_COLUMNS and c != SPLIT_COLUMN)
    problems: list[CohortProblem] = []
    hips: list[HipRecord] = []
    for index, values in enumerate(rows):
        hip = _parse_row(index + 1, values, path.parent, extra_columns, problems)
        if hip is not None:
            hips.append(hip)
    problems.extend(_check_uniqueness(rows))
    problems.extend(_check_split_groups(rows))
    if problems:
        problems.sort(key=lambda problem: problem.row or 0)
        raise CohortError(path, problems)
    return Cohort(path, tuple(hips), extra_columns)


def write_manifest(cohort: Cohort, path: Path | str) -> Path:
    """Write ``cohort`` as a CSV manifest with paths relative to ``path``'s folder.

    The ``split`` column is written when any hip has one; extra columns are
    written verbatim.
    """
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with_split = any(hip.split is not None for hip in cohort.hips)
    header = [*REQUIRED_COLUMNS, *([SPLIT_COLUMN] if with_split else []), *cohort.extra_columns]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for hip in cohort.hips:
            row = [
                hip.hip_id,
                hip.patient_id,
                hip.laterality.value,
                hip.label.value,
                *(_relative_text(p, base) for p in _paths(hip)),
                hip.centre,
            ]
            if with_split:
                row.append(hip.split.value if hip.split else "")
            row.extend(
                _rebase_extra(hip.extras.get(c, ""), cohort.manifest_path.parent, base)
                for c in cohort.extra_columns
            )
            writer.writerow(row)
    return path


def _read_table(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    if not path.is_file():
        raise CohortError(path, [CohortProblem(None, None, "file not found")])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise CohortError(
                path,
                [
                    CohortProblem(
                        None,
                        None,
                        "reading Parquet needs the package pyarrow: pip install pyarrow, "
                        "or save the manifest as CSV",
                    )
                ],
            ) from None
        table = parquet.read_table(path)
        columns = [str(name) for name in table.column_names]
        rows = [
            {key: "" if value is None else str(value) for key, value in row.items()}
            for row in table.to_pylist()
        ]
        return rows, columns
    if suffix not in (".csv", ".txt"):
        raise CohortError(
            path,
            [
                CohortProblem(
                    None, None, f"unknown manifest format {suffix!r}: use .csv or .parquet"
                )
            ],
        )
    import csv

    # utf-8-sig drops the byte order mark that spreadsheet programs write.
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = [name.strip() for name in (reader.fieldnames or [])]
        rows = []
        for raw in reader:
            rows.append(
                {
                    (key or "").strip(): (value or "").strip()
                    for key, value in raw.items()
                    if key is not None
                }
            )
    return rows, columns


def _parse_row(
    row: int,
    values: dict[str, str],
    base: Path,
    extra_columns: tuple[str, ...],
    problems: list[CohortProblem],
) -> HipRecord | None:
    found: list[CohortProblem] = []
    for column in ("hip_id", "patient_id", "centre"):
        if not values.get(column, ""):
            found.append(CohortProblem(row, column, "value is empty; every hip needs one"))

    laterality = LATERALITY_ALIASES.get(values.get("laterality", "").lower())
    if laterality is None:
        found.append(
            CohortProblem(
                row,
                "laterality",
                f"invalid laterality {values.get('laterality', '')!r}: use R or L",
            )
        )

    label = LABEL_ALIASES.get(values.get("label", "").lower())
    if label is None:
        accepted = ", ".join(hip_class.value for hip_class in HIP_CLASSES)
        found.append(
            CohortProblem(
                row,
                "label",
                f"unknown label {values.get('label', '')!r}: use one of {accepted} "
                "(or OA, ONFH, FAI)",
            )
        )

    split = None
    split_text = values.get(SPLIT_COLUMN, "")
    if split_text:
        split = SPLIT_ALIASES.get(split_text.lower())
        if split is None:
            accepted = ", ".join(s.value for s in Split)
            found.append(
                CohortProblem(
                    row, SPLIT_COLUMN, f"unknown split {split_text!r}: use one of {accepted}"
                )
            )

    paths: dict[str, Path | None] = {}
    for column in PATH_COLUMNS:
        text = values.get(column, "")
        if not text:
            paths[column] = None
            continue
        resolved = Path(text) if Path(text).is_absolute() else base / text
        if not resolved.exists():
            found.append(
                CohortProblem(row, column, f"file not found: {text} (looked at {resolved})")
            )
        paths[column] = resolved
    if all(paths[column] is None for column in PATH_COLUMNS):
        found.append(
            CohortProblem(
                row,
                None,
                "hip has no radiograph, no CT and no text: give at least one input path",
            )
        )

    problems.extend(found)
    if found:
        return None
    return HipRecord(
        hip_id=values["hip_id"],
        patient_id=values["patient_id"],
        laterality=laterality,
        label=label,
        radiograph_path=paths["radiograph_path"],
        ct_path=paths["ct_path"],
        text_path=paths["text_path"],
        centre=values["centre"],
        split=split,
        row=row,
        extras={column: values.get(column, "") for column in extra_columns},
    )


def _check_uniqueness(rows: list[dict[str, str]]) -> list[CohortProblem]:
    """Flag duplicate hip ids and duplicate (patient, laterality) pairs.

    Runs on the raw rows so that a duplicate is reported even when the row has
    other problems too.
    """
    problems = []
    first_row_of_id: dict[str, int] = {}
    first_row_of_side: dict[tuple[str, Laterality], int] = {}
    for row, values in enumerate(rows, start=1):
        hip_id = values.get("hip_id", "")
        if hip_id and hip_id in first_row_of_id:
            problems.append(
                CohortProblem(
                    row,
                    "hip_id",
                    f"duplicate hip id {hip_id!r}, first used in row "
                    f"{first_row_of_id[hip_id]}: give each hip its own id",
                )
            )
        elif hip_id:
            first_row_of_id[hip_id] = row
        patient_id = values.get("patient_id", "")
        laterality = LATERALITY_ALIASES.get(values.get("laterality", "").lower())
        if not patient_id or laterality is None:
            continue
        side = (patient_id, laterality)
        if side in first_row_of_side:
            problems.append(
                CohortProblem(
                    row,
                    "laterality",
                    f"duplicate hip: the same patient already has a {laterality.value} hip "
                    f"in row {first_row_of_side[side]}; each patient has one row per laterality",
                )
            )
        else:
            first_row_of_side[side] = row
    return problems


def _check_split_groups(rows: list[dict[str, str]]) -> list[CohortProblem]:
    """Flag patients whose hips lie in different splits, which leaks between them."""
    first_of_patient: dict[str, tuple[int, Split]] = {}
    problems = []
    for row, values in enumerate(rows, start=1):
        split = SPLIT_ALIASES.get(values.get(SPLIT_COLUMN, "").lower())
        patient_id = values.get("patient_id", "")
        if split is None or not patient_id:
            continue
        if patient_id not in first_of_patient:
            first_of_patient[patient_id] = (row, split)
            continue
        first_row, first_split = first_of_patient[patient_id]
        if split is not first_split:
            problems.append(
                CohortProblem(
                    row,
                    SPLIT_COLUMN,
                    f"split {split.value!r} differs from {first_split.value!r} of the same "
                    f"patient's hip in row {first_row}: both hips of a patient must be in "
                    "the same split",
                )
            )
    return problems


def _paths(hip: HipRecord) -> tuple[Path | None, Path | None, Path | None]:
    return hip.radiograph_path, hip.ct_path, hip.text_path


def _relative_text(path: Path | None, base: Path) -> str:
    if path is None:
        return ""
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _rebase_extra(value: str, old_base: Path, new_base: Path) -> str:
    """Rewrite an extra column's relative path for a manifest in another folder."""
    if not value or Path(value).is_absolute():
        return value
    candidate = old_base / value
    if not candidate.exists():
        return value
    return _relative_text(candidate, new_base)
