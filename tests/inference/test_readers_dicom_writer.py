"""CT series writer: NIfTI -> DICOM -> reader round trip, dciodvfy validation, rescale."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from hipfuse.inference.readers.ct import read_ct_series, reorient_to_canonical
from hipfuse.inference.readers.dicom_series_writer import write_ct_series
from hipfuse.inference.readers.nifti import read_nifti_ct
from hipfuse.inference.types import CTVolume, InputError, SourceIdentity

NIFTI = Path(__file__).resolve().parents[2] / "samples" / "ct" / "pelvis_ct_3mm.nii.gz"
IDENTITY = SourceIdentity(
    patient_id="HIP-0001",
    issuer_of_patient_id="HOSPITAL-A",
    patient_name="Müller^Jörg",
    patient_birth_date="19600101",
    patient_sex="M",
    study_instance_uid="1.2.826.0.1.3680043.8.498.1",
    accession_number="ACC1",
    study_date="20240102",
)


@pytest.fixture(scope="module")
def canonical_nifti() -> CTVolume:
    return reorient_to_canonical(read_nifti_ct(NIFTI))


def small(volume: CTVolume, count: int = 6) -> CTVolume:
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([20, 20, 30])
    return CTVolume(voxels=volume.voxels[20 : 20 + count, 20:52, 30:62].copy(), affine=affine)


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def test_nifti_round_trip(tmp_path, canonical_nifti):
    paths = write_ct_series(canonical_nifti, tmp_path, IDENTITY)

    volume = reorient_to_canonical(read_ct_series(tmp_path))

    assert len(paths) == canonical_nifti.voxels.shape[0]
    np.testing.assert_array_equal(volume.voxels, canonical_nifti.voxels)
    np.testing.assert_allclose(volume.affine, canonical_nifti.affine, atol=1e-6)
    assert volume.warnings == []
    assert volume.identity.patient_id == IDENTITY.patient_id
    assert volume.identity.patient_name == IDENTITY.patient_name
    assert volume.identity.study_instance_uid == IDENTITY.study_instance_uid
    assert volume.identity.series_instance_uid not in ("", IDENTITY.series_instance_uid)


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        pytest.param(ExplicitVRLittleEndian, id="explicit"),
        pytest.param(JPEG2000Lossless, id="j2k-lossless"),
    ],
)
def test_written_slice_passes_dciodvfy(tmp_path, canonical_nifti, transfer_syntax):
    paths = write_ct_series(
        small(canonical_nifti), tmp_path, IDENTITY, transfer_syntax_uid=transfer_syntax
    )

    assert dciodvfy_errors(paths[2]) == []


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        pytest.param(ImplicitVRLittleEndian, id="implicit"),
        pytest.param(RLELossless, id="rle"),
        pytest.param(JPEG2000Lossless, id="j2k-lossless"),
    ],
)
def test_lossless_syntaxes_round_trip(tmp_path, canonical_nifti, transfer_syntax):
    volume = small(canonical_nifti)
    paths = write_ct_series(volume, tmp_path, IDENTITY, transfer_syntax_uid=transfer_syntax)

    read_back = read_ct_series(paths)

    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == transfer_syntax
    np.testing.assert_array_equal(read_back.voxels, volume.voxels)


def test_fractional_values_use_rescale(tmp_path, canonical_nifti):
    volume = small(canonical_nifti)
    volume.voxels = volume.voxels * 0.37 + 0.25
    paths = write_ct_series(volume, tmp_path, IDENTITY)

    read_back = read_ct_series(paths)

    slope = float(pydicom.dcmread(paths[0]).RescaleSlope)
    assert slope != 1.0
    assert np.abs(read_back.voxels - volume.voxels).max() <= slope / 2 + 1e-3


def test_written_attributes(tmp_path, canonical_nifti):
    paths = write_ct_series(small(canonical_nifti), tmp_path, IDENTITY, series_description="pelvis")

    first, last = (pydicom.dcmread(path) for path in (paths[0], paths[-1]))

    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.SeriesInstanceUID == last.SeriesInstanceUID
    assert first.SOPInstanceUID != last.SOPInstanceUID
    assert first.FrameOfReferenceUID == last.FrameOfReferenceUID
    assert first.SeriesDescription == "pelvis"
    assert first.SpecificCharacterSet == "ISO_IR 192"
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(last.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == 15.0
    assert [int(first.InstanceNumber), int(last.InstanceNumber)] == [1, 6]


def test_non_axial_volume_is_rejected(tmp_path):
    # The NIfTI's first axis runs right to left: a sagittal stack.
    with pytest.raises(InputError, match="reorient_to_canonical") as raised:
        write_ct_series(read_nifti_ct(NIFTI), tmp_path, IDENTITY)

    assert raised.value.code == "ct_not_axial"
