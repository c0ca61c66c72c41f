import copy
import re

import numpy as np
import pydicom
import pytest
from encode_study import build_study, bundle_config, run_tool, tool_available

from hipfuse.inference.outputs import radiograph_overlay
from hipfuse.inference.types import Laterality
from hipfuse.node.encode import build_secondary_captures
from hipfuse.node.encode.sc import ct_peak_index

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

ALLOWED_WARNINGS = (
    r"needed to build DICOMDIR - Study Date",
    r"needed to build DICOMDIR - Study Time",
    r"Patient's Name .* Retired Person Name form",
)

# (laterality, view, Patient Orientation) of the images in the order they are built.
EXPECTED_IMAGES = [
    ("R", "radiograph", ["L", "F"]),
    ("R", "CT axial", ["L", "P"]),
    ("R", "CT coronal", ["L", "F"]),
    ("R", "CT sagittal", ["P", "F"]),
    ("L", "radiograph", ["L", "F"]),
    ("L", "CT axial", ["L", "P"]),
    ("L", "CT coronal", ["L", "F"]),
    ("L", "CT sagittal", ["P", "F"]),
]

# Rows of the caption band burned into the top of every rendering (4 lines of 12 px).
CAPTION_ROWS = 60


class _Bundle:
    def __init__(self, config):
        self.config = config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def captures(study):
    return build_secondary_captures(
        study.result, bundle_config("demo"), study.sources, series_number=901
    )


@pytest.fixture(scope="module")
def capture_paths(captures, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sc")
    paths = []
    for index, image in enumerate(captures):
        path = folder / f"sc_{index}.dcm"
        image.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _heat_centre(pixels: np.ndarray) -> tuple[float, float]:
    """Return the (row, column) fraction of the centroid of the red heat-map core."""
    body = pixels[CAPTION_ROWS:].astype(np.int32)
    # Red minus the larger of green and blue: zero for the yellow box and grey anatomy.
    redness = body[..., 0] - np.maximum(body[..., 1], body[..., 2])
    assert redness.max() > 60, "no red heat-map pixels found"
    rows, columns = np.nonzero(redness >= 0.8 * redness.max())
    return (rows.mean() + CAPTION_ROWS) / pixels.shape[0], columns.mean() / pixels.shape[1]


def test_sc_count_and_order(captures):
    assert len(captures) == len(EXPECTED_IMAGES)
    for image, (laterality, view, _) in zip(captures, EXPECTED_IMAGES, strict=True):
        assert image.Laterality == laterality
        assert view in image.ImageComments


@pytest.mark.skipif(not tool_available("dciodvfy"), reason="dicom3tools not installed")
def test_sc_passes_dciodvfy(capture_paths):
    for path in capture_paths:
        output = run_tool("dciodvfy", path)
        lines = (output.stdout + output.stderr).splitlines()
        assert [line for line in lines if line.startswith("Error")] == [], path.name
        warnings = [line for line in lines if line.startswith("Warning")]
        unexpected = [w for w in warnings if not any(re.search(p, w) for p in ALLOWED_WARNINGS)]
        assert unexpected == [], path.name


@pytest.mark.parametrize(
    ("index", "orientation"),
    [(i, expected[2]) for i, expected in enumerate(EXPECTED_IMAGES)],
    ids=[f"{e[0]}-{e[1].replace(' ', '-')}" for e in EXPECTED_IMAGES],
)
def test_sc_patient_orientation(captures, index, orientation):
    assert list(captures[index].PatientOrientation) == orientation


def test_sc_header_modules(captures, study):
    source = study.radiograph_dataset
    for image in captures:
        assert image.SOPClassUID == SECONDARY_CAPTURE
        assert image.StudyInstanceUID == source.StudyInstanceUID
        assert image.PatientID == source.PatientID
        assert image.Manufacturer == "hipfuse"
        assert list(image.ImageType) == ["DERIVED", "SECONDARY"]
        assert image.BurnedInAnnotation == "YES"
        assert image.PhotometricInterpretation == "RGB"
        assert image.SamplesPerPixel == 3
        assert image.BitsAllocated == 8
        assert image.BodyPartExamined == "HIP"
        assert "Grad-CAM" in image.DerivationDescription
        assert "NOT FOR CLINICAL USE" in image.DerivationDescription


def test_sc_one_series_per_hip(captures, study):
    right = captures[:4]
    left = captures[4:]
    assert {image.SeriesNumber for image in right} == {901}
    assert {image.SeriesNumber for image in left} == {902}
    assert len({image.SeriesInstanceUID for image in right}) == 1
    assert len({image.SeriesInstanceUID for image in left}) == 1
    assert right[0].SeriesInstanceUID != left[0].SeriesInstanceUID
    assert right[0].SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in study.sources}
    assert [image.InstanceNumber for image in right] == [1, 2, 3, 4]
    assert len({image.SOPInstanceUID for image in captures}) == len(captures)


def test_sc_series_description_demo(captures):
    assert captures[0].SeriesDescription == (
        "hipfuse Grad-CAM right hip (AI output) - NOT FOR CLINICAL USE"
    )
    assert captures[4].SeriesDescription == (
        "hipfuse Grad-CAM left hip (AI output) - NOT FOR CLINICAL USE"
    )
    assert all(len(image.SeriesDescription) <= 64 for image in captures)


def test_sc_clinical_bundle_unlabelled(study):
    images = build_secondary_captures(
        study.result, bundle_config("clinical"), study.sources, series_number=901
    )
    assert images[0].SeriesDescription == "hipfuse Grad-CAM right hip (AI output)"
    assert "NOT FOR CLINICAL USE" not in images[0].DerivationDescription
    assert "NOT FOR CLINICAL USE" not in images[0].ImageComments


def test_sc_radiograph_pixels_are_overlay(captures, study):
    right = next(h for h in study.result.hips if h.laterality is Laterality.RIGHT)
    expected = radiograph_overlay(study.result, right, _Bundle(bundle_config("demo")))
    np.testing.assert_array_equal(captures[0].pixel_array, expected)


def test_sc_source_image_references(captures, study):
    radiograph_uid = study.radiograph_dataset.SOPInstanceUID
    ct_uids = [ds.SOPInstanceUID for ds in study.ct_datasets]
    for offset in (0, 4):
        radiograph, axial, coronal, sagittal = captures[offset : offset + 4]
        assert [i.ReferencedSOPInstanceUID for i in radiograph.SourceImageSequence] == [
            radiograph_uid
        ]
        assert len(axial.SourceImageSequence) == 1
        assert {i.ReferencedSOPInstanceUID for i in coronal.SourceImageSequence} == set(ct_uids)
        assert {i.ReferencedSOPInstanceUID for i in sagittal.SourceImageSequence} == set(ct_uids)


def test_sc_axial_references_slice_through_peak(captures, study):
    for hip, axial in ((h, captures[4 * i + 1]) for i, h in enumerate(_right_first(study))):
        k = ct_peak_index(study.result, hip)[0]
        # The test series has one slice per canonical k, numbered from 1.
        expected = study.ct_datasets[k].SOPInstanceUID
        assert axial.SourceImageSequence[0].ReferencedSOPInstanceUID == expected


def _right_first(study):
    return sorted(study.result.hips, key=lambda h: h.laterality is not Laterality.RIGHT)


def test_sc_heat_spot_matches_orientation(captures, study):
    """Check that the red spot lies where Patient Orientation puts the hip."""
    shape = study.result.ct.voxels.shape  # (superior, posterior, left)
    for i, hip in enumerate(_right_first(study)):
        k, j, column_index = ct_peak_index(study.result, hip)
        radiograph, axial, coronal, sagittal = (captures[4 * i + n].pixel_array for n in range(4))
        on_left_half = hip.laterality is Laterality.LEFT
        # Columns run to the patient's left in the radiograph, axial and coronal images.
        for pixels in (radiograph, axial, coronal):
            assert (_heat_centre(pixels)[1] > 0.5) == on_left_half
        # Axial columns run to the patient's left: column fraction follows i.
        _, column_fraction = _heat_centre(axial)
        assert column_fraction == pytest.approx((column_index + 0.5) / shape[2], abs=0.05)
        # Coronal and sagittal rows run to the feet: superior k is near the top.
        expected_row = (shape[0] - k - 0.5) / shape[0]
        assert _heat_centre(coronal)[0] == pytest.approx(expected_row, abs=0.08)
        sagittal_row, sagittal_column = _heat_centre(sagittal)
        assert sagittal_row == pytest.approx(expected_row, abs=0.08)
        # Sagittal columns run posterior: column fraction follows j.
        assert sagittal_column == pytest.approx((j + 0.5) / shape[1], abs=0.05)


def test_sc_rejects_mixed_patients(study):
    other = copy.deepcopy(study.ct_datasets[0])
    other.PatientID = "OTHER-123"
    with pytest.raises(ValueError, match=r"Patient ID \(0010,0020\) differs"):
        build_secondary_captures(
            study.result, bundle_config(), [study.radiograph_dataset, other], series_number=901
        )


def test_sc_hip_without_maps_skipped(study):
    from dataclasses import replace

    hips = [
        replace(hip, radiograph_cam=None, ct_cam=None)
        if hip.laterality is Laterality.RIGHT
        else hip
        for hip in study.result.hips
    ]
    images = build_secondary_captures(
        replace(study.result, hips=hips), bundle_config(), study.sources, series_number=901
    )
    assert [image.Laterality for image in images] == ["L"] * 4
    assert {image.SeriesNumber for image in images} == {901}


def test_sc_written_file_reads_back(capture_paths):
    image = pydicom.dcmread(capture_paths[1])
    assert image.pixel_array.shape == (image.Rows, image.Columns, 3)
    assert image.Laterality == "R"
