"""Predictions tables: validation of arrays, DataFrames and CSV files of per-hip probabilities.

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

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hipfuse.inference.types import HIP_CLASSES

PROBABILITY_PREFIX = "prob_"
SUM_TOLERANCE = 1e-3
DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(c.value for c in HIP_CLASSES)
# The message lists at most this many problems; .problems keeps all of them.
MAX_PROBLEMS_IN_MESSAGE = 50


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
