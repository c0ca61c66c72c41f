"""NIfTI CT reader: the real pelvis CT, and small files for scaling, units and shapes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hipfuse.inference.readers.nifti import read_nifti_ct
from hipfuse.inference.types import InputError

NIFTI = Path(__file__).resolve().parents[2] / "samples" / "ct" / "pelvis_ct_3mm.nii.gz"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header) -> Path:
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    for key, value in header.items():
        if key == "units":
            image.header.set_xyzt_units(xyz=value)
        elif key == "scaling":
            image.header.set_slope_inter(*value)
    nib.save(image, path)
    return path


def test_real_pelvis_ct():
    volume = read_nifti_ct(NIFTI)
    ras = nib.load(NIFTI)

    assert volume.voxels.shape == (122, 101, 112)
    assert volume.voxels.dtype == np.float32
    assert volume.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    # RAS -> LPS flips x and y, including the origin.
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([-3.0, -3.0, 3.0]))
    expected_origin = ras.affine[:3, 3] * [-1, -1, 1]
    np.testing.assert_allclose(volume.affine[:3, 3], expected_origin)
    np.testing.assert_array_equal(volume.voxels, np.asarray(ras.dataobj))
    assert volume.voxels.min() < -1000
    assert volume.voxels.max() > 1000
    assert volume.instances == []
    assert volume.warnings == []


def test_scaling_is_applied(tmp_path):
    data = np.full((4, 4, 4), 100, dtype=np.int16)
    data[0] = -600
    path = write_nifti(tmp_path / "scaled.nii.gz", data, scaling=(2.0, -24.0))

    volume = read_nifti_ct(path)

    assert volume.voxels[1, 0, 0] == 176.0
    assert volume.voxels[0, 0, 0] == -1224.0


def test_metre_units_become_mm(tmp_path):
    data = np.full((4, 4, 4), -1000, dtype=np.int16)
    affine = np.diag([0.002, 0.002, 0.003, 1.0])
    affine[:3, 3] = [0.1, 0.2, 0.3]
    path = write_nifti(tmp_path / "metres.nii", data, affine, units="meter")

    volume = read_nifti_ct(path)

    assert volume.spacing_mm == pytest.approx((2.0, 2.0, 3.0))
    np.testing.assert_allclose(volume.affine[:3, 3], [-100.0, -200.0, 300.0])


def test_trailing_singleton_axis_is_dropped(tmp_path):
    path = write_nifti(tmp_path / "4d.nii", np.full((4, 5, 6, 1), -1000, dtype=np.int16))

    assert read_nifti_ct(path).voxels.shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(np.zeros((4, 5, 6, 2), dtype=np.int16), "nifti_invalid", id="time-series"),
        pytest.param(np.zeros((4, 5), dtype=np.int16), "nifti_invalid", id="2d"),
    ],
)
def test_bad_shapes_are_rejected(tmp_path, data, code):
    path = write_nifti(tmp_path / "bad.nii", data)

    with pytest.raises(InputError, match="three spatial axes") as raised:
        read_nifti_ct(path)

    assert raised.value.code == code


def test_values_without_air_are_flagged(tmp_path):
    path = write_nifti(tmp_path / "raw.nii", np.full((4, 4, 4), 1024, dtype=np.int16))

    volume = read_nifti_ct(path)

    assert [warning.code for warning in volume.warnings] == ["ct_hu_range_implausible"]


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(InputError) as raised:
        read_nifti_ct(tmp_path / "absent.nii.gz")

    assert raised.value.code == "file_not_found"


def test_missing_orientation_is_flagged(tmp_path):
    image = nib.Nifti1Image(np.full((4, 4, 4), -1000, dtype=np.int16), np.eye(4))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    path = tmp_path / "no_orientation.nii"
    nib.save(image, path)

    volume = read_nifti_ct(path)

    assert [warning.code for warning in volume.warnings] == ["nifti_orientation_missing"]
