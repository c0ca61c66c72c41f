"""End-to-end checks of a small simulated cohort: files, DICOM validity, geometry, masks, notes."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.ndimage import map_coordinates

from hipfuse.inference.types import HipClass
from hipfuse.training.simulate import MANIFEST_COLUMNS, simulate_cohort

SEED = 20240
PATIENTS = 6
OPTIONS = {
    "language_mix": {"en": 0.5, "zh": 0.5},
    "centre_mix": {"SIM-A": 0.5, "SIM-B": 0.5},
    # High fractions so a six-patient cohort contains flipped and GB18030 cases.
    "flip_fraction": 0.5,
    "gb18030_fraction": 0.5,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort_a")
    started = time.perf_counter()
    simulate_cohort(out, PATIENTS, SEED, workers=1, **OPTIONS)
    elapsed = time.perf_counter() - started
    print(
        f"\nsimulated {PATIENTS} patients in {elapsed:.2f} s "
        f"({elapsed / PATIENTS:.2f} s per patient, 1 worker)"
    )
    return out


@pytest.fixture(scope="module")
def manifest(cohort: Path) -> list[dict[str, str]]:
    with (cohort / "manifest.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def truth(cohort: Path) -> dict[str, dict[str, str]]:
    with (cohort / "truth.csv").open(encoding="utf-8") as handle:
        return {row["hip_id"]: row for row in csv.DictReader(handle)}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_ct_series(folder: Path) -> list[pydicom.Dataset]:
    slices = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    return sorted(slices, key=lambda ds: int(ds.InstanceNumber))


def _dx_pixels(ds: pydicom.Dataset) -> np.ndarray:
    pixels = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2 ** int(ds.BitsStored) - 1) - pixels
    return pixels


def test_manifest_columns_and_rows(cohort: Path, manifest: list[dict[str, str]]) -> None:
    with (cohort / "manifest.csv").open(encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    assert header == list(MANIFEST_COLUMNS)
    assert len(manifest) == 2 * PATIENTS
    assert {row["laterality"] for row in manifest} == {"R", "L"}
    assert {row["label"] for row in manifest} <= {c.value for c in HipClass}
    for row in manifest:
        assert row["hip_id"] == f"{row['patient_id']}_{row['laterality']}"
        assert row["split"] == ""
        for column in ("radiograph_path", "ct_path", "text_path"):
            assert not Path(row[column]).is_absolute()
            assert (cohort / row[column]).exists(), (row["hip_id"], column)


def test_cohort_json_counts(cohort: Path, manifest: list[dict[str, str]]) -> None:
    summary = json.loads((cohort / "cohort.json").read_text(encoding="utf-8"))
    assert summary["seed"] == SEED
    assert summary["generator_version"]
    assert summary["patients"] == PATIENTS
    assert summary["hips"] == 2 * PATIENTS
    assert sum(summary["counts"]["label"].values()) == 2 * PATIENTS
    assert summary["counts"]["label"].get("normal", 0) == sum(
        r["label"] == "normal" for r in manifest
    )


def test_same_seed_same_bytes_any_workers(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "cohort_b"
    simulate_cohort(again, PATIENTS, SEED, workers=2, **OPTIONS)
    first, second = _files(cohort), _files(again)
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_different_seed_differs(cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "cohort_c"
    simulate_cohort(other, 1, SEED + 1, workers=1, **OPTIONS)
    first = pydicom.dcmread(next((cohort / "patients").glob("*/radiograph.dcm")))
    second = pydicom.dcmread(next((other / "patients").glob("*/radiograph.dcm")))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.PixelData != second.PixelData
    assert (cohort / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()


def test_dciodvfy_reports_no_errors(cohort: Path, manifest: list[dict[str, str]]) -> None:
    patients = sorted({row["patient_id"] for row in manifest})
    files = []
    for patient in patients:
        files.append(cohort / "patients" / patient / "radiograph.dcm")
        files.append(sorted((cohort / "patients" / patient / "ct").glob("*.dcm"))[0])
    for path in files:
        result = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.relative_to(cohort)}: {errors}"


def test_ct_geometry(cohort: Path, manifest: list[dict[str, str]]) -> None:
    for row in manifest[::2]:
        slices = _read_ct_series(cohort / row["ct_path"])
        assert 40 <= len(slices) <= 60
        spacing = float(slices[0].SliceThickness)
        assert spacing in (2.0, 2.5, 3.0)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
        steps = np.diff(positions, axis=0)
        np.testing.assert_allclose(
            steps, np.tile([0.0, 0.0, -spacing], (len(slices) - 1, 1)), atol=1e-3
        )
        first = slices[0]
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert first.PatientPosition == "HFS"
        assert first.BodyPartExamined == "PELVIS"
        assert first.ConvolutionKernel
        assert float(first.RescaleIntercept) == -1024.0
        assert (first.Rows, first.Columns) == (128, 128)
        assert len({ds.SeriesInstanceUID for ds in slices}) == 1
        assert len({ds.SOPInstanceUID for ds in slices}) == len(slices)
        assert all(len(ds.SOPInstanceUID) <= 64 for ds in slices)


def test_ct_hip_centres_are_in_bone(cohort: Path, manifest: list[dict[str, str]]) -> None:
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in manifest:
        if row["ct_path"] not in series:
            slices = _read_ct_series(cohort / row["ct_path"])
            hu = np.stack([ds.pixel_array.astype(np.float32) for ds in slices]) - 1024.0
            origin = np.array([float(v) for v in slices[0].ImagePositionPatient])
            spacing = np.array(
                [
                    float(slices[0].PixelSpacing[1]),
                    float(slices[0].PixelSpacing[0]),
                    float(slices[0].SliceThickness),
                ]
            )
            series[row["ct_path"]] = (hu, np.concatenate([origin, spacing]))
        hu, geometry = series[row["ct_path"]]
        origin, spacing = geometry[:3], geometry[3:]
        centre = np.array([float(v) for v in row["hip_centre_ct_mm"].split(";")])
        column = (centre[0] - origin[0]) / spacing[0]
        line = (centre[1] - origin[1]) / spacing[1]
        index = (origin[2] - centre[2]) / spacing[2]
        assert 0 <= index < hu.shape[0], row["hip_id"]
        assert 0 <= line < 128, row["hip_id"]
        assert 0 <= column < 128, row["hip_id"]
        value = float(map_coordinates(hu, [[index], [line], [column]], order=1)[0])
        # The femoral head centre is cancellous bone: well above soft tissue.
        assert value > 120.0, (row["hip_id"], value)
        assert float(hu[0, 0, 0]) < -800.0


def test_dx_attributes_follow_flip(
    cohort: Path, manifest: list[dict[str, str]], truth: dict
) -> None:
    for right, left in zip(manifest[::2], manifest[1::2], strict=True):
        ds = pydicom.dcmread(cohort / right["radiograph_path"])
        flipped = truth[right["hip_id"]]["radiograph_flipped"] == "1"
        assert list(ds.PatientOrientation) == (["R", "F"] if flipped else ["L", "F"])
        assert ds.ViewPosition == "AP"
        assert ds.ImageLaterality == "B"
        assert ds.BodyPartExamined == "PELVIS"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PhotometricInterpretation == truth[right["hip_id"]]["radiograph_photometric"]
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in ds.ImagerPixelSpacing]
        right_column = float(right["hip_centre_radiograph_px"].split(";")[1])
        left_column = float(left["hip_centre_radiograph_px"].split(";")[1])
        # Patient's left at image right unless flipped.
        assert (right_column < left_column) != flipped
    assert any(t["radiograph_flipped"] == "1" for t in truth.values())


def _head_radius_mm(
    image: np.ndarray, centre: tuple[float, float], spacing_mm: float, medial: float
) -> float:
    """Measure the head radius: the first strong falling edge below and medial to the centre."""
    radii = np.arange(8.0, 40.0, 0.25)
    profiles = []
    for angle in np.deg2rad(np.arange(20.0, 110.0, 5.0)):
        rows = centre[0] + radii / spacing_mm * np.sin(angle)
        columns = centre[1] + radii / spacing_mm * np.cos(angle) * medial
        profiles.append(map_coordinates(image, [rows, columns], order=1))
    slope = np.gradient(np.mean(profiles, axis=0))
    index = int(np.nonzero(slope <= 0.5 * slope.min())[0][0])
    while index + 1 < slope.size and slope[index + 1] < slope[index]:
        index += 1
    return float(radii[index])


def test_pixel_spacing_matches_head_size(
    cohort: Path, manifest: list[dict[str, str]], truth: dict
) -> None:
    ratios = []
    for row in manifest:
        ds = pydicom.dcmread(cohort / row["radiograph_path"])
        image = _dx_pixels(ds)
        spacing = float(ds.PixelSpacing[0])
        centre = tuple(float(v) for v in row["hip_centre_radiograph_px"].split(";"))
        toward_left = 1.0 if ds.PatientOrientation[0] == "L" else -1.0
        medial = toward_left * (1.0 if row["laterality"] == "R" else -1.0)
        measured_diameter = 2.0 * _head_radius_mm(image, centre, spacing, medial)
        true_diameter = 2.0 * float(truth[row["hip_id"]]["head_radius_mm"])
        ratios.append(measured_diameter / true_diameter)
        if row["label"] == HipClass.NORMAL.value:
            assert abs(measured_diameter / true_diameter - 1.0) < 0.15, row["hip_id"]
    assert abs(float(np.median(ratios)) - 1.0) < 0.05


def test_lesion_masks_match_labels(cohort: Path, manifest: list[dict[str, str]]) -> None:
    assert any(row["label"] == "normal" for row in manifest)
    assert any(row["label"] != "normal" for row in manifest)
    for row in manifest:
        if row["label"] == HipClass.NORMAL.value:
            assert row["lesion_mask_ct_path"] == ""
            assert row["lesion_mask_radiograph_path"] == ""
            continue
        slices = _read_ct_series(cohort / row["ct_path"])
        mask_image = nib.load(cohort / row["lesion_mask_ct_path"])
        mask = np.asarray(mask_image.dataobj)
        assert mask.shape == (128, 128, len(slices))
        assert mask.sum() > 0, row["hip_id"]
        # Voxel (0, 0, k) sits at slice k's Image Position, in RAS (x and y negated).
        for k in (0, len(slices) - 1):
            lps = np.array([float(v) for v in slices[k].ImagePositionPatient])
            ras = mask_image.affine @ np.array([0.0, 0.0, k, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
        # The lesion lies around its own hip.
        i, j, k = np.nonzero(mask)
        centroid_ras = (mask_image.affine @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]
        centre = np.array([float(v) for v in row["hip_centre_ct_mm"].split(";")])
        assert np.linalg.norm(centroid_ras * [-1, -1, 1] - centre) < 50.0, row["hip_id"]

        dx = pydicom.dcmread(cohort / row["radiograph_path"])
        shadow = np.asarray(Image.open(cohort / row["lesion_mask_radiograph_path"])) > 0
        assert shadow.shape == (dx.Rows, dx.Columns)
        assert shadow.any(), row["hip_id"]
        rows, columns = np.nonzero(shadow)
        centre_px = np.array([float(v) for v in row["hip_centre_radiograph_px"].split(";")])
        offset_mm = np.hypot(rows.mean() - centre_px[0], columns.mean() - centre_px[1]) * float(
            dx.PixelSpacing[0]
        )
        assert offset_mm < 50.0, row["hip_id"]


def test_notes_language_and_encoding(
    cohort: Path, manifest: list[dict[str, str]], truth: dict
) -> None:
    for row in manifest[::2]:
        facts = truth[row["hip_id"]]
        raw = (cohort / row["text_path"]).read_bytes()
        text = raw.decode(facts["text_encoding"])
        has_chinese = any("\u4e00" <= character <= "\u9fff" for character in text)
        assert has_chinese == (facts["text_language"] == "zh"), row["hip_id"]
        if facts["text_language"] == "zh":
            assert "主诉" in text
            assert "体格检查" in text
        else:
            assert "hip" in text.lower()
    languages = {truth[row["hip_id"]]["text_language"] for row in manifest}
    assert languages == {"en", "zh"}


def test_gb18030_notes_decode_to_same_text(tmp_path: Path) -> None:
    options = {"language_mix": {"zh": 1.0}, "flip_fraction": 0.0}
    simulate_cohort(tmp_path / "gb", 2, SEED, workers=1, gb18030_fraction=1.0, **options)
    simulate_cohort(tmp_path / "utf8", 2, SEED, workers=1, gb18030_fraction=0.0, **options)
    for note in sorted((tmp_path / "gb" / "patients").glob("*/note.txt")):
        twin = tmp_path / "utf8" / note.relative_to(tmp_path / "gb")
        raw = note.read_bytes()
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        assert raw.decode("gb18030") == twin.read_text(encoding="utf-8")
        assert "主诉" in raw.decode("gb18030")
