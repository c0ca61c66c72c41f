"""CT series reader: the real J2K series, and edited copies of a series cut from the real NIfTI."""

from __future__ import annotations

import random
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from hipfuse.inference.readers.ct import read_ct_series, reorient_to_canonical
from hipfuse.inference.readers.dicom_series_writer import write_ct_series
from hipfuse.inference.readers.nifti import read_nifti_ct
from hipfuse.inference.types import CTVolume, InputError, SourceIdentity

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "ct"
J2K_SERIES = SAMPLES / "abdomen_ct_dicom_j2k"
SLICE_COUNT = 12
SLICE_SPACING_MM = 3.0


def codes(volume) -> list[str]:
    return [warning.code for warning in volume.warnings]


@pytest.fixture(scope="module")
def small_volume() -> CTVolume:
    """12 axial slices of 64 x 64 voxels through the hips of the real pelvis CT, canonical axes."""
    canonical = reorient_to_canonical(read_nifti_ct(SAMPLES / "pelvis_ct_3mm.nii.gz"))
    start = np.array([15, 18, 29])
    voxels = canonical.voxels[15 : 15 + SLICE_COUNT, 18:82, 29:93].copy()
    affine = canonical.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start
    return CTVolume(voxels=voxels, affine=affine)


@pytest.fixture(scope="module")
def base_series(tmp_path_factory, small_volume) -> list[Path]:
    folder = tmp_path_factory.mktemp("base_series")
    return write_ct_series(small_volume, folder, SourceIdentity(patient_id="CT-TEST"))


@pytest.fixture
def series_copy(tmp_path, base_series) -> list[Path]:
    folder = tmp_path / "series"
    folder.mkdir()
    return [Path(shutil.copy(path, folder / path.name)) for path in base_series]


def edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def copy_as_new_instance(source: Path, target: Path, **attributes) -> Path:
    shutil.copy(source, target)
    edit(target, SOPInstanceUID=generate_uid(), **attributes)
    return target


def position(path: Path) -> list[float]:
    return [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]


# Real series: 20 Siemens slices, JPEG 2000 lossless, with empty Study/Series/SOP Instance UIDs.


def test_real_j2k_series():
    volume = read_ct_series(J2K_SERIES)

    assert volume.voxels.shape == (20, 512, 512)
    assert volume.voxels.dtype == np.float32
    assert volume.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert set(codes(volume)) == {"series_uid_missing", "sop_instance_uid_missing"}
    # HU: air outside the body at -1024, bone above 1000.
    assert volume.voxels.min() == -1024.0
    assert 1000.0 < volume.voxels.max() < 3100.0
    assert volume.identity.modality == "CT"
    assert volume.identity.frame_of_reference_uid


def test_real_j2k_series_sorted_by_position():
    volume = read_ct_series(J2K_SERIES)

    # Axis 0 runs along the normal (+z, superior) from the lowest slice.
    np.testing.assert_allclose(volume.affine[:3, 0], [0.0, 0.0, 2.0])
    np.testing.assert_allclose(volume.affine[:3, 3], [-249.51171875, -437.51171875, -804.5])
    heights = [position(instance.path)[2] for instance in volume.instances]
    assert heights == sorted(heights)
    assert heights[0] == -804.5
    # Instance Numbers run the other way (267 at the top), so they were not used.
    first = pydicom.dcmread(volume.instances[0].path)
    assert int(first.InstanceNumber) == 286
    np.testing.assert_array_equal(volume.voxels[0], first.pixel_array.astype(np.float32) - 1024.0)


# Series written from the real NIfTI, then edited.


def test_written_series_reads_back(base_series, small_volume):
    volume = read_ct_series(base_series[0].parent)

    assert codes(volume) == []
    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)
    np.testing.assert_allclose(volume.affine, small_volume.affine, atol=1e-6)
    assert [instance.path.name for instance in volume.instances] == [p.name for p in base_series]


def test_shuffled_files_and_instance_numbers(series_copy, small_volume):
    folder = series_copy[0].parent
    numbers = list(range(1, SLICE_COUNT + 1))
    random.Random(7).shuffle(numbers)
    names = [f"{generate_uid()}.dcm" for _ in series_copy]
    for path, number, name in zip(series_copy, numbers, names, strict=True):
        edit(path, InstanceNumber=number)
        path.rename(folder / name)
    shuffled_list = [folder / name for name in names]
    random.Random(3).shuffle(shuffled_list)

    from_folder = read_ct_series(folder)
    from_list = read_ct_series(shuffled_list)

    for volume in (from_folder, from_list):
        np.testing.assert_array_equal(volume.voxels, small_volume.voxels)
        np.testing.assert_allclose(volume.affine, small_volume.affine, atol=1e-6)


def test_per_slice_rescale(series_copy, small_volume):
    ds = pydicom.dcmread(series_copy[4])
    hu = ds.pixel_array.astype(np.int32)
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "-1024"
    ds.PixelData = ((hu + 1024) * 2).astype(np.int16).tobytes()
    ds.save_as(series_copy[4])

    volume = read_ct_series(series_copy[0].parent)

    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)


def test_missing_slice_is_rejected(series_copy):
    removed = position(series_copy[5])[2]
    series_copy[5].unlink()

    with pytest.raises(InputError, match="slices are missing") as raised:
        read_ct_series(series_copy[0].parent)

    assert raised.value.code == "ct_missing_slices"
    assert f"between {removed - SLICE_SPACING_MM:.2f} and {removed + SLICE_SPACING_MM:.2f}" in str(
        raised.value
    )


def test_identical_duplicate_is_dropped(series_copy, small_volume):
    copy_as_new_instance(series_copy[3], series_copy[0].parent / "duplicate.dcm")

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == ["ct_duplicate_slices_dropped"]
    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)


def test_conflicting_duplicate_is_rejected(series_copy):
    duplicate = copy_as_new_instance(series_copy[3], series_copy[0].parent / "duplicate.dcm")
    ds = pydicom.dcmread(duplicate)
    ds.PixelData = (ds.pixel_array + 50).astype(np.int16).tobytes()
    ds.save_as(duplicate)

    with pytest.raises(InputError, match="same position") as raised:
        read_ct_series(series_copy[0].parent)

    assert raised.value.code == "ct_duplicate_positions"


@pytest.mark.parametrize(
    "offset_mm",
    [pytest.param(1.0, id="one-third-gap"), pytest.param(-0.8, id="short-gap")],
)
def test_uneven_spacing_is_resampled(series_copy, small_volume, offset_mm):
    moved = position(series_copy[6])
    moved[2] += offset_mm
    edit(series_copy[6], ImagePositionPatient=[f"{v:.6f}" for v in moved])

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == ["ct_uneven_spacing_resampled"]
    assert volume.voxels.shape == small_volume.voxels.shape
    assert volume.spacing_mm[0] == pytest.approx(SLICE_SPACING_MM)
    # Slices away from the moved one are unchanged; the one at its old place is interpolated.
    np.testing.assert_array_equal(volume.voxels[:5], small_volume.voxels[:5])
    np.testing.assert_array_equal(volume.voxels[8:], small_volume.voxels[8:])
    assert not np.array_equal(volume.voxels[6], small_volume.voxels[6])
    assert len(volume.instances) == SLICE_COUNT


def test_gantry_tilt_is_resampled(series_copy, small_volume):
    # Shift each slice origin by one row (3 mm along +y) per slice: a sheared stack.
    row_spacing = small_volume.spacing_mm[1]
    for index, path in enumerate(series_copy):
        shifted = position(path)
        shifted[1] += index * row_spacing
        edit(path, ImagePositionPatient=[f"{v:.6f}" for v in shifted])
    middle = SLICE_COUNT // 2

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == ["ct_gantry_tilt_resampled"]
    assert volume.voxels.shape == small_volume.voxels.shape
    # The grid is that of the middle slice; slice k moved by (k - middle) rows.
    expected_origin = small_volume.affine[:3, 3] + [0.0, middle * row_spacing, 0.0]
    np.testing.assert_allclose(volume.affine[:3, 3], expected_origin, atol=1e-4)
    for k in (0, middle, SLICE_COUNT - 1):
        shift = k - middle
        source = small_volume.voxels[k]
        rows = slice(max(shift, 0), 64 + min(shift, 0))
        source_rows = slice(max(-shift, 0), 64 - max(shift, 0))
        np.testing.assert_allclose(volume.voxels[k, rows], source[source_rows], atol=1e-3)


def test_localizer_is_dropped(series_copy, small_volume):
    copy_as_new_instance(
        series_copy[0],
        series_copy[0].parent / "scout.dcm",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"],
    )

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == ["ct_localizer_dropped"]
    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)


def test_stray_orientation_is_dropped(series_copy, small_volume):
    copy_as_new_instance(
        series_copy[0],
        series_copy[0].parent / "coronal.dcm",
        ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"],
    )

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == ["ct_orientation_minority_dropped"]
    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)


def test_mixed_orientations_are_rejected(series_copy):
    for index in range(3):
        copy_as_new_instance(
            series_copy[index],
            series_copy[0].parent / f"coronal_{index}.dcm",
            ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"],
        )

    with pytest.raises(InputError, match="mixes 2 orientations") as raised:
        read_ct_series(series_copy[0].parent)

    assert raised.value.code == "ct_mixed_orientation"


def test_two_series_are_listed(tmp_path, base_series, small_volume):
    folder = tmp_path / "two"
    first = write_ct_series(small_volume, folder / "a", SourceIdentity(patient_id="CT-TEST"))
    second = write_ct_series(
        small_volume, folder / "b", SourceIdentity(patient_id="CT-TEST"), series_number=2
    )
    first_uid = pydicom.dcmread(first[0]).SeriesInstanceUID
    second_uid = pydicom.dcmread(second[0]).SeriesInstanceUID

    with pytest.raises(InputError, match="2 CT series") as raised:
        read_ct_series(folder)

    assert raised.value.code == "ct_several_series"
    assert first_uid in str(raised.value)
    assert second_uid in str(raised.value)
    chosen = read_ct_series(folder, series_instance_uid=second_uid)
    assert chosen.identity.series_instance_uid == second_uid
    assert [instance.path for instance in chosen.instances] == second


def test_unknown_series_uid_is_rejected(base_series):
    with pytest.raises(InputError, match="is not among the images") as raised:
        read_ct_series(base_series[0].parent, series_instance_uid="1.2.3.4")

    assert raised.value.code == "ct_series_not_found"


def test_too_few_slices_are_rejected(base_series):
    with pytest.raises(InputError, match="at least 3") as raised:
        read_ct_series(base_series[:2])

    assert raised.value.code == "ct_too_few_slices"


def test_non_dicom_files_are_skipped(series_copy, small_volume):
    (series_copy[0].parent / "README.txt").write_text("exported by PACS\n")

    volume = read_ct_series(series_copy[0].parent)

    assert codes(volume) == []
    np.testing.assert_array_equal(volume.voxels, small_volume.voxels)


def test_folder_without_images_is_rejected(tmp_path):
    (tmp_path / "note.txt").write_text("no images here\n")

    with pytest.raises(InputError, match="is a DICOM image") as raised:
        read_ct_series(tmp_path)

    assert raised.value.code == "ct_no_images"


# reorient_to_canonical


def flipped_variant(volume: CTVolume, axes: tuple[int, ...]) -> CTVolume:
    affine = volume.affine.copy()
    for axis in axes:
        affine[:3, 3] += affine[:3, axis] * (volume.voxels.shape[axis] - 1)
        affine[:3, axis] *= -1
    return CTVolume(voxels=np.flip(volume.voxels, axis=axes).copy(), affine=affine)


def permuted_variant(volume: CTVolume, order: tuple[int, ...]) -> CTVolume:
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(order)]
    return CTVolume(voxels=np.transpose(volume.voxels, order).copy(), affine=affine)


@pytest.mark.parametrize(
    ("flips", "order"),
    [
        pytest.param((0,), (0, 1, 2), id="feet-to-head-reversed"),
        pytest.param((1, 2), (0, 1, 2), id="prone"),
        pytest.param((), (2, 1, 0), id="nifti-like-axes"),
        pytest.param((0, 2), (1, 0, 2), id="coronal-stack"),
    ],
)
def test_reorient_restores_canonical(small_volume, flips, order):
    variant = permuted_variant(flipped_variant(small_volume, flips), order)

    canonical = reorient_to_canonical(variant)

    np.testing.assert_array_equal(canonical.voxels, small_volume.voxels)
    np.testing.assert_allclose(canonical.affine, small_volume.affine, atol=1e-9)
    assert canonical.voxels.flags.c_contiguous
    assert codes(canonical) == []


def test_reorient_of_canonical_does_not_copy(small_volume):
    canonical = reorient_to_canonical(small_volume)

    assert canonical.voxels is small_volume.voxels


def test_reorient_reverses_instances(base_series):
    volume = read_ct_series(base_series)
    reversed_volume = flipped_variant(volume, (0,))
    reversed_volume.instances = list(reversed(volume.instances))

    canonical = reorient_to_canonical(reversed_volume)

    assert canonical.instances == volume.instances


def test_reorient_resamples_oblique_volume(small_volume):
    angle = np.radians(10.0)
    rotation = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, np.cos(angle), -np.sin(angle)],
            [0.0, np.sin(angle), np.cos(angle)],
        ]
    )
    affine = small_volume.affine.copy()
    affine[:3, :] = rotation @ affine[:3, :]
    oblique = CTVolume(voxels=small_volume.voxels, affine=affine)

    canonical = reorient_to_canonical(oblique)

    assert codes(canonical) == ["ct_oblique_resampled"]
    directions = canonical.affine[:3, :3]
    assert np.count_nonzero(directions) == 3
    assert np.all(np.diag(directions[::-1]) > 0)
    # The centre voxel of the source lands at the index that the output affine gives.
    centre = np.array(small_volume.voxels.shape) // 2
    centre_lps = affine[:3, :3] @ centre + affine[:3, 3]
    index = np.linalg.solve(canonical.affine[:3, :3], centre_lps - canonical.affine[:3, 3])
    nearest = tuple(int(v) for v in np.rint(index))
    neighbourhood = small_volume.voxels[
        centre[0] - 1 : centre[0] + 2, centre[1] - 1 : centre[1] + 2, centre[2] - 1 : centre[2] + 2
    ]
    assert neighbourhood.min() - 1 <= canonical.voxels[nearest] <= neighbourhood.max() + 1


def drop_position(path: Path) -> None:
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(drop_position, "ct_geometry_invalid", id="no-image-position"),
        pytest.param(
            lambda path: edit(path, PixelSpacing=["0.5", "0.5"]),
            "ct_inconsistent_slices",
            id="other-pixel-spacing",
        ),
        pytest.param(
            lambda path: edit(path, NumberOfFrames=2), "ct_multiframe_unsupported", id="multiframe"
        ),
    ],
)
def test_broken_slice_is_rejected(series_copy, change, code):
    change(series_copy[4])

    with pytest.raises(InputError) as raised:
        read_ct_series(series_copy[0].parent)

    assert raised.value.code == code
    assert series_copy[4].name in str(raised.value) or code == "ct_inconsistent_slices"


def test_volume_is_allocated_once(tmp_path):
    # The whole real CT, padded with air to 112 axial slices of 256 x 256 (29 MB as
    # float32), so that the volume outweighs the 112 parsed headers.
    canonical = reorient_to_canonical(read_nifti_ct(SAMPLES / "pelvis_ct_3mm.nii.gz"))
    padded = np.full((112, 256, 256), -1024.0, dtype=np.float32)
    padded[:, :101, :122] = canonical.voxels
    write_ct_series(CTVolume(padded, canonical.affine), tmp_path, SourceIdentity())
    volume_bytes = padded.nbytes
    del padded, canonical

    tracemalloc.start()
    try:
        volume = read_ct_series(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert volume.voxels.nbytes == volume_bytes
    # One float32 volume plus per-slice buffers and headers, never a second volume.
    assert peak < 1.3 * volume_bytes
