from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_helpers import XRAY_SAMPLES, ct_dataset
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hipfuse.inference.readers.dicom_series_writer import write_ct_series
from hipfuse.inference.types import CTVolume, SourceIdentity
from hipfuse.node.header import HEADER_KEYWORDS, HeaderError, read_header
from hipfuse.node.series import (
    BodyPartMatch,
    InputRole,
    KernelGroup,
    SeriesClass,
    classify_kernel,
    classify_series,
    is_node_output,
    select_inputs,
)


def _header_of(ds: Dataset) -> dict[str, Any]:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return read_header(buffer.getvalue()).attributes


def _ct_headers(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    study, series = generate_uid(), generate_uid()
    return [_header_of(ct_dataset(study, series, index, **kwargs)) for index in range(count)]


def _radiograph_header(**attributes: Any) -> dict[str, Any]:
    header = read_header(XRAY_SAMPLES[0].read_bytes()).attributes
    header.update(attributes)
    return {key: value for key, value in header.items() if value is not None}


def _written_ct_headers(tmp_path: Path) -> list[dict[str, Any]]:
    volume = CTVolume(
        voxels=np.full((4, 8, 8), 100.0, dtype=np.float32),
        # Columns map (k, j, i) to LPS: k runs superior, j posterior, i left.
        affine=np.array(
            [[0.0, 0.0, 0.8, 0.0], [0.0, 0.8, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]]
        ),
    )
    files = write_ct_series(volume, tmp_path / "ct", SourceIdentity(patient_id="TEST"))
    return [read_header(path.read_bytes()).attributes for path in files]


def _sr_header(manufacturer: str) -> dict[str, Any]:
    return {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "Modality": "SR",
        "Manufacturer": manufacturer,
    }


def test_read_header_of_real_radiograph() -> None:
    header = read_header(XRAY_SAMPLES[0].read_bytes())
    assert header.get("Modality") == "DX"
    assert header.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.1"
    assert header.get("BodyPartExamined") is None
    assert set(header.attributes) <= set(HEADER_KEYWORDS)
    assert "PatientName" not in header.attributes


def test_read_header_rejects_garbage() -> None:
    with pytest.raises(HeaderError, match="cannot be parsed"):
        read_header(b"this is not a DICOM file")


CASES = [
    (
        "real-radiograph-no-body-part",
        lambda tmp: [_radiograph_header()],
        SeriesClass.HIP_RADIOGRAPH,
    ),
    (
        "radiograph-body-part-pelvis",
        lambda tmp: [_radiograph_header(BodyPartExamined="PELVIS")],
        SeriesClass.HIP_RADIOGRAPH,
    ),
    (
        "radiograph-chinese-description",
        lambda tmp: [_radiograph_header(BodyPartExamined="LSPINE", SeriesDescription="双髋正位")],
        SeriesClass.HIP_RADIOGRAPH,
    ),
    (
        "radiograph-knee",
        lambda tmp: [_radiograph_header(BodyPartExamined="KNEE", SeriesDescription="AP")],
        SeriesClass.NOT_HIP,
    ),
    (
        "radiograph-word-inside-other-word",
        lambda tmp: [_radiograph_header(BodyPartExamined="CHEST", SeriesDescription="whipple")],
        SeriesClass.NOT_HIP,
    ),
    ("ct-written-by-hipfuse-writer", _written_ct_headers, SeriesClass.HIP_CT),
    ("ct-bone-kernel", lambda tmp: _ct_headers(5), SeriesClass.HIP_CT),
    ("ct-no-body-part", lambda tmp: _ct_headers(5, body_part=None), SeriesClass.HIP_CT),
    (
        "ct-localizer",
        lambda tmp: _ct_headers(2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        SeriesClass.LOCALIZER,
    ),
    ("ct-two-slices", lambda tmp: _ct_headers(2), SeriesClass.TOO_FEW_SLICES),
    ("ct-head", lambda tmp: _ct_headers(5, body_part="HEAD"), SeriesClass.NOT_HIP),
    ("sr-from-hipfuse", lambda tmp: [_sr_header("hipfuse")], SeriesClass.NODE_OUTPUT),
    ("sr-from-elsewhere", lambda tmp: [_sr_header("ACME")], SeriesClass.OTHER_MODALITY),
    (
        "mr-pelvis",
        lambda tmp: [
            {
                "Modality": "MR",
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
                "BodyPartExamined": "PELVIS",
            }
        ],
        SeriesClass.OTHER_MODALITY,
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_classify_series(tmp_path: Path, build: Any, expected: SeriesClass) -> None:
    result = classify_series("1.2.3", build(tmp_path))
    assert result.series_class is expected, result.reason


def test_real_radiograph_warns_about_missing_body_part() -> None:
    result = classify_series("1.2.3", [_radiograph_header()])
    assert result.warnings == ("no_body_part",)
    assert result.body_part_match is BodyPartMatch.ABSENT


def test_ct_localizer_images_dropped_from_series() -> None:
    headers = _ct_headers(4) + _ct_headers(1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    result = classify_series("1.2.3", headers)
    assert result.series_class is SeriesClass.HIP_CT
    assert result.slice_count == 4
    assert len(result.sop_instance_uids) == 4


@pytest.mark.parametrize(
    ("kernel", "group"),
    [
        ("B70f", KernelGroup.BONE),
        ("B30f", KernelGroup.STANDARD),
        ("B10s", KernelGroup.SOFT_TISSUE),
        (["Br38f", "3"], KernelGroup.STANDARD),
        ("Br64d", KernelGroup.BONE),
        ("Bl57", KernelGroup.LUNG),
        ("Hr40", KernelGroup.STANDARD),
        ("Ur77", KernelGroup.BONE),
        ("BONEPLUS", KernelGroup.BONE),
        ("STANDARD", KernelGroup.STANDARD),
        ("LUNG", KernelGroup.LUNG),
        ("SOFT", KernelGroup.SOFT_TISSUE),
        ("B", KernelGroup.STANDARD),
        ("D", KernelGroup.BONE),
        ("YB", KernelGroup.BONE),
        ("L", KernelGroup.LUNG),
        ("FC30", KernelGroup.BONE),
        ("FC13", KernelGroup.STANDARD),
        ("FC52", KernelGroup.LUNG),
        ("", KernelGroup.UNKNOWN),
        ("MYSTERY", KernelGroup.UNKNOWN),
    ],
)
def test_kernel_table(kernel: object, group: KernelGroup) -> None:
    assert classify_kernel(kernel) is group


def test_select_prefers_bone_or_standard_then_thinnest() -> None:
    series = {
        "lung-thin": _ct_headers(5, kernel="LUNG", thickness_mm=0.625),
        "standard-3mm": _ct_headers(5, kernel="STANDARD", thickness_mm=3.0),
        "bone-1mm": _ct_headers(5, kernel="BONE", thickness_mm=1.0),
        "standard-1mm": _ct_headers(6, kernel="STANDARD", thickness_mm=1.0),
        "localizer": _ct_headers(1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    }
    classifications = [classify_series(name, headers) for name, headers in series.items()]
    selected = select_inputs(classifications)
    assert selected[InputRole.CT].series_instance_uid == "bone-1mm"
    assert InputRole.RADIOGRAPH not in selected


def test_select_prefers_explicit_body_part_radiograph() -> None:
    classifications = [
        classify_series("no-body-part", [_radiograph_header(SeriesNumber=1)]),
        classify_series("pelvis", [_radiograph_header(BodyPartExamined="PELVIS", SeriesNumber=5)]),
        classify_series("knee", [_radiograph_header(BodyPartExamined="KNEE")]),
    ]
    selected = select_inputs(classifications)
    assert selected[InputRole.RADIOGRAPH].series_instance_uid == "pelvis"


def test_select_nothing_without_candidates() -> None:
    assert select_inputs([classify_series("sr", [_sr_header("hipfuse")])]) == {}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_sr_header("hipfuse"), True),
        ({**_sr_header("ACME"), "ManufacturerModelName": "hipfuse-node"}, True),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Manufacturer": "hipfuse"}, True),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "Manufacturer": "hipfuse"}, False),
        (_sr_header("ACME"), False),
    ],
    ids=["sr", "sr-model-name", "secondary-capture", "ct-by-hipfuse-writer", "foreign-sr"],
)
def test_is_node_output(header: dict[str, Any], expected: bool) -> None:
    assert is_node_output(header) is expected
