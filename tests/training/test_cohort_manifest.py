import csv
from pathlib import Path

import pytest

from hipfuse.inference.types import HipClass, Laterality
from hipfuse.training.cohort import (
    REQUIRED_COLUMNS,
    CohortError,
    Split,
    load_cohort,
    write_manifest,
)

HEADER = [*REQUIRED_COLUMNS, "split", "lesion_mask_path"]


def good_row(patient: str, side: str, label: str = "normal", split: str = "train") -> dict:
    return {
        "hip_id": f"{patient}-{side}",
        "patient_id": patient,
        "laterality": side,
        "label": label,
        "radiograph_path": f"{patient}/xray.dcm",
        "ct_path": f"{patient}/ct",
        "text_path": f"{patient}/note.txt",
        "centre": "A",
        "split": split,
        "lesion_mask_path": "",
    }


def write_cohort(root: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    for row in rows:
        patient_dir = root / row["patient_id"]
        (patient_dir / "ct").mkdir(parents=True, exist_ok=True)
        (patient_dir / "xray.dcm").write_bytes(b"")
        (patient_dir / "note.txt").write_text("note", encoding="utf-8")
    path = root / name
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_valid_manifest_loads(tmp_path):
    rows = [good_row("p1", "R", "OA"), good_row("p1", "L", "normal"), good_row("p2", "R", "FAI")]
    rows[0]["lesion_mask_path"] = "p1/mask.nii.gz"
    cohort = load_cohort(write_cohort(tmp_path, rows))

    assert len(cohort) == 3
    first = cohort.hips[0]
    assert first.label is HipClass.OSTEOARTHRITIS
    assert first.laterality is Laterality.RIGHT
    assert first.split is Split.TRAIN
    assert first.radiograph_path == tmp_path / "p1" / "xray.dcm"
    assert first.extras == {"lesion_mask_path": "p1/mask.nii.gz"}
    assert cohort.extra_columns == ("lesion_mask_path",)
    assert cohort.class_counts()["femoroacetabular_impingement"] == 1


def _mutate(field: str, value: str):
    def apply(rows: list[dict], root: Path) -> None:
        rows[1][field] = value

    return apply


def _missing_file(rows: list[dict], root: Path) -> None:
    rows[1]["radiograph_path"] = "p1/absent.dcm"


def _no_inputs(rows: list[dict], root: Path) -> None:
    rows[1].update(radiograph_path="", ct_path="", text_path="")


def _duplicate_side(rows: list[dict], root: Path) -> None:
    rows[1]["laterality"] = "R"


def _straddle(rows: list[dict], root: Path) -> None:
    rows[1]["split"] = "test"


# Each case breaks row 2 (the left hip of p1) and expects that row and column.
PROBLEM_CASES = [
    ("unknown label", _mutate("label", "tumour"), 2, "label", "unknown label 'tumour'"),
    ("bad laterality", _mutate("laterality", "both"), 2, "laterality", "invalid laterality"),
    ("missing file", _missing_file, 2, "radiograph_path", "file not found: p1/absent.dcm"),
    ("duplicate hip id", _mutate("hip_id", "p1-R"), 2, "hip_id", "duplicate hip id 'p1-R'"),
    ("duplicate side", _duplicate_side, 2, "laterality", "already has a R hip in row 1"),
    ("patient straddles", _straddle, 2, "split", "both hips of a patient"),
    ("no inputs", _no_inputs, 2, None, "no radiograph, no CT and no text"),
    ("empty patient", _mutate("patient_id", ""), 2, "patient_id", "value is empty"),
    ("unknown split", _mutate("split", "holdout"), 2, "split", "unknown split 'holdout'"),
]


@pytest.mark.parametrize(
    ("breaker", "row", "column", "message"),
    [case[1:] for case in PROBLEM_CASES],
    ids=[case[0] for case in PROBLEM_CASES],
)
def test_manifest_problem_reported(tmp_path, breaker, row, column, message):
    rows = [good_row("p1", "R"), good_row("p1", "L"), good_row("p2", "R")]
    path = write_cohort(tmp_path, rows)
    breaker(rows, tmp_path)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)

    with pytest.raises(CohortError, match=message) as caught:
        load_cohort(path)

    matching = [p for p in caught.value.problems if message in p.message]
    assert len(matching) == 1
    assert matching[0].row == row
    assert matching[0].column == column


def test_manifest_reports_every_problem(tmp_path):
    rows = [good_row("p1", "R"), good_row("p1", "L"), good_row("p2", "R"), good_row("p3", "L")]
    path = write_cohort(tmp_path, rows)
    rows[0]["label"] = "sprain"
    rows[1]["laterality"] = "X"
    rows[2]["hip_id"] = "p1-R"
    rows[3]["text_path"] = "p3/missing.txt"
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)

    with pytest.raises(CohortError) as caught:
        load_cohort(path)

    located = {(p.row, p.column) for p in caught.value.problems}
    assert located == {(1, "label"), (2, "laterality"), (3, "hip_id"), (4, "text_path")}
    message = str(caught.value)
    assert "has 4 problem(s)" in message
    assert "row 4, column text_path: file not found: p3/missing.txt" in message


def test_missing_columns_listed(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("hip_id,patient_id,label\nh1,p1,normal\n", encoding="utf-8")

    with pytest.raises(CohortError) as caught:
        load_cohort(path)

    missing = [p.column for p in caught.value.problems]
    assert missing == ["laterality", "radiograph_path", "ct_path", "text_path", "centre"]


def test_parquet_without_pyarrow_names_package(tmp_path):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyarrow is installed, so Parquet manifests load")
    path = tmp_path / "manifest.parquet"
    path.write_bytes(b"PAR1")

    with pytest.raises(CohortError, match="pip install pyarrow"):
        load_cohort(path)


def test_write_manifest_round_trips(tmp_path):
    rows = [good_row("p1", "R", "ONFH"), good_row("p1", "L")]
    rows[0]["lesion_mask_path"] = "p1/note.txt"
    cohort = load_cohort(write_cohort(tmp_path, rows))

    same_folder = load_cohort(write_manifest(cohort, tmp_path / "copy.csv"))
    elsewhere = load_cohort(write_manifest(cohort, tmp_path / "elsewhere" / "copy.csv"))

    assert same_folder.content_hash() == cohort.content_hash()
    assert same_folder.hips[0].label is HipClass.OSTEONECROSIS
    assert elsewhere.hips[0].radiograph_path.resolve() == (tmp_path / "p1" / "xray.dcm").resolve()
    assert elsewhere.hips[0].extras["lesion_mask_path"] == "../p1/note.txt"
