"""CT hip regions: femoral heads of the real pelvis CT, crop geometry, heat maps, rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hipfuse.inference.readers.ct import read_ct_series
from hipfuse.inference.readers.nifti import read_nifti_ct
from hipfuse.inference.regions.ct import ct_map_to_volume, find_ct_hips
from hipfuse.inference.types import CTVolume, InputError, Laterality

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "ct"
CROP_SHAPE = (48, 64, 80)
CROP_SPACING_MM = (2.0, 1.5, 1.25)

# Femoral head centres on the real 3 mm pelvis CT, in LPS mm, checked on axial,
# coronal and sagittal slices (the left head contains a fixation screw). One
# voxel is 3 mm, so the tolerance is three voxels.
EXPECTED_CENTRES_MM = {
    Laterality.RIGHT: (-80.0, -143.4, 136.4),
    Laterality.LEFT: (87.8, -140.5, 145.4),
}
TOLERANCE_MM = 9.0


@pytest.fixture(scope="module")
def pelvis() -> CTVolume:
    return read_nifti_ct(SAMPLES / "pelvis_ct_3mm.nii.gz")


@pytest.fixture(scope="module")
def pelvis_hips(pelvis):
    return find_ct_hips(pelvis, CROP_SHAPE, CROP_SPACING_MM)


def flipped(volume: CTVolume, axis: int) -> CTVolume:
    """Return the volume with one array axis reversed and the affine updated to match."""
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, axis] * (volume.voxels.shape[axis] - 1)
    affine[:3, axis] *= -1
    return CTVolume(np.flip(volume.voxels, axis=axis), affine)


def transposed(volume: CTVolume, order: tuple[int, int, int]) -> CTVolume:
    """Return the volume with its array axes permuted and the affine updated to match."""
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(order)]
    return CTVolume(np.transpose(volume.voxels, order), affine)


def centre_index(shape: tuple[int, ...]) -> np.ndarray:
    return (np.asarray(shape, dtype=float) - 1) / 2


@pytest.mark.parametrize("side", list(Laterality), ids=lambda side: side.name.lower())
def test_real_ct_head_centre(pelvis_hips, side):
    region = pelvis_hips.regions[side]
    distance_mm = np.linalg.norm(np.subtract(region.centre_mm, EXPECTED_CENTRES_MM[side]))
    assert distance_mm <= TOLERANCE_MM, f"{side.name} head at {region.centre_mm}"
    assert region.laterality is side


def test_real_ct_left_head_has_larger_x(pelvis_hips):
    assert not pelvis_hips.missing
    assert not pelvis_hips.warnings
    left_x = pelvis_hips.regions[Laterality.LEFT].centre_mm[0]
    right_x = pelvis_hips.regions[Laterality.RIGHT].centre_mm[0]
    assert left_x > right_x + 100.0


@pytest.mark.parametrize(
    ("side", "mirrored", "lateral_to_medial_x"),
    [(Laterality.RIGHT, False, 1.0), (Laterality.LEFT, True, -1.0)],
    ids=["right", "left"],
)
def test_crop_geometry(pelvis_hips, side, mirrored, lateral_to_medial_x):
    region = pelvis_hips.regions[side]

    assert region.crop.shape == CROP_SHAPE
    assert region.crop.dtype == np.float32
    assert region.mirrored is mirrored
    np.testing.assert_allclose(np.linalg.norm(region.affine[:3, :3], axis=0), CROP_SPACING_MM)
    # Axis 0 toward superior, axis 1 toward posterior, axis 2 from lateral to medial.
    np.testing.assert_allclose(region.affine[:3, 0], [0.0, 0.0, CROP_SPACING_MM[0]])
    np.testing.assert_allclose(region.affine[:3, 1], [0.0, CROP_SPACING_MM[1], 0.0])
    np.testing.assert_allclose(
        region.affine[:3, 2], [lateral_to_medial_x * CROP_SPACING_MM[2], 0.0, 0.0]
    )


@pytest.mark.parametrize("side", list(Laterality), ids=lambda side: side.name.lower())
def test_crop_affine_maps_centre(pelvis_hips, side):
    region = pelvis_hips.regions[side]
    centre = region.affine @ np.append(centre_index(region.crop.shape), 1.0)
    np.testing.assert_allclose(centre[:3], region.centre_mm, atol=1e-6)


@pytest.mark.parametrize("side", list(Laterality), ids=lambda side: side.name.lower())
def test_crop_centre_is_bone(pelvis_hips, side):
    crop = pelvis_hips.regions[side].crop
    k, j, i = (n // 2 for n in crop.shape)
    assert crop[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean() > 150.0


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda volume: flipped(volume, 2), id="flip_axis_2"),
        pytest.param(lambda volume: flipped(volume, 0), id="flip_axis_0"),
        pytest.param(lambda volume: transposed(volume, (2, 1, 0)), id="slices_first"),
    ],
)
def test_array_order_changes_nothing(pelvis, pelvis_hips, transform):
    moved = find_ct_hips(transform(pelvis), CROP_SHAPE, CROP_SPACING_MM)

    assert set(moved.regions) == set(pelvis_hips.regions)
    for side, region in moved.regions.items():
        original = pelvis_hips.regions[side]
        np.testing.assert_allclose(region.centre_mm, original.centre_mm, atol=1.5)
        assert region.mirrored is original.mirrored
        correlation = np.corrcoef(region.crop.ravel(), original.crop.ravel())[0, 1]
        assert correlation > 0.95


@pytest.mark.parametrize("side", list(Laterality), ids=lambda side: side.name.lower())
def test_heat_map_returns_to_head(pelvis, pelvis_hips, side):
    region = pelvis_hips.regions[side]
    heatmap = np.zeros(CROP_SHAPE, dtype=np.float32)
    k, j, i = np.indices(CROP_SHAPE)
    centre = centre_index(CROP_SHAPE)
    heatmap[:] = np.exp(-(((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) / 8))

    mapped = ct_map_to_volume(region, heatmap, pelvis)

    assert mapped.shape == pelvis.voxels.shape
    peak = np.array(np.unravel_index(np.argmax(mapped), mapped.shape), dtype=float)
    peak_mm = pelvis.affine[:3, :3] @ peak + pelvis.affine[:3, 3]
    assert np.linalg.norm(peak_mm - region.centre_mm) <= 3.0  # one source voxel
    # Far from the crop the map is exactly zero.
    assert mapped[0, 0, -1] == 0.0


def test_heat_map_keeps_lateral_side(pelvis, pelvis_hips):
    # A mark at the lateral end of the left crop (axis 2 index 0) must land
    # lateral to the left head, at larger LPS x, because the crop is mirrored.
    region = pelvis_hips.regions[Laterality.LEFT]
    heatmap = np.zeros(CROP_SHAPE, dtype=np.float32)
    heatmap[CROP_SHAPE[0] // 2, CROP_SHAPE[1] // 2, :8] = 1.0

    mapped = ct_map_to_volume(region, heatmap, pelvis)

    marked = np.argwhere(mapped > 0.1).astype(float)
    marked_mm = (pelvis.affine[:3, :3] @ marked.T).T + pelvis.affine[:3, 3]
    assert marked_mm[:, 0].min() > region.centre_mm[0] + 30.0


def test_heat_map_shape_mismatch(pelvis, pelvis_hips):
    region = pelvis_hips.regions[Laterality.RIGHT]
    with pytest.raises(ValueError, match="differs from the crop shape"):
        ct_map_to_volume(region, np.zeros((4, 4, 4)), pelvis)


def test_crop_outside_volume_is_air(pelvis, pelvis_hips):
    # The real volume ends about 42 mm below the right head centre, so the
    # lowest slices of a 96 mm tall crop lie outside it.
    region = pelvis_hips.regions[Laterality.RIGHT]
    bottom_mm = region.centre_mm[2] - CROP_SPACING_MM[0] * centre_index(CROP_SHAPE)[0]
    volume_bottom_mm = pelvis.affine[2, 3]
    assert bottom_mm < volume_bottom_mm
    assert np.all(region.crop[0] == -1024.0)


def uniform_volume(value_hu: float) -> CTVolume:
    affine = np.diag([2.0, 1.5, 1.5, 1.0])
    return CTVolume(np.full((60, 120, 120), value_hu, dtype=np.float32), affine)


@pytest.mark.parametrize(
    ("volume_factory", "reason"),
    [
        pytest.param(
            lambda: read_ct_series(SAMPLES / "abdomen_ct_dicom_j2k"),
            "no ball of bone",
            id="upper_abdomen",
        ),
        pytest.param(lambda: uniform_volume(-1000.0), "contains no body", id="air"),
        pytest.param(lambda: uniform_volume(40.0), "no ball of bone", id="soft_tissue"),
    ],
)
def test_not_a_pelvis(volume_factory, reason):
    with pytest.raises(InputError, match=reason) as raised:
        find_ct_hips(volume_factory(), CROP_SHAPE, CROP_SPACING_MM)
    assert raised.value.code == "hip_not_found"


@pytest.mark.parametrize(
    ("crop_shape", "crop_spacing_mm", "message"),
    [
        ((0, 64, 64), (1.0, 1.0, 1.0), "crop_shape"),
        ((64, 64), (1.0, 1.0, 1.0), "crop_shape"),
        ((64, 64, 64), (1.0, 0.0, 1.0), "crop_spacing_mm"),
        ((64, 64, 64), (1.0, float("nan"), 1.0), "crop_spacing_mm"),
    ],
    ids=["zero_size", "two_axes", "zero_spacing", "nan_spacing"],
)
def test_invalid_crop_arguments(pelvis, crop_shape, crop_spacing_mm, message):
    with pytest.raises(ValueError, match=message):
        find_ct_hips(pelvis, crop_shape, crop_spacing_mm)


def test_body_cut_off_at_one_side(pelvis):
    # Keep only the patient's right half: the field of view cuts through the
    # body, so the midline is unknown and the lone head's side cannot be determined.
    right_half = CTVolume(pelvis.voxels[62:].copy(), pelvis.affine.copy())
    right_half.affine[:3, 3] += pelvis.affine[:3, 0] * 62

    with pytest.raises(InputError, match="cut off at the left or right edge") as raised:
        find_ct_hips(right_half, CROP_SHAPE, CROP_SPACING_MM)
    assert raised.value.code == "hip_not_found"


def test_one_head_missing(pelvis):
    # Replace the left hip joint by soft tissue: the right head is still found.
    voxels = pelvis.voxels.copy()
    left_centre = np.linalg.solve(pelvis.affine, [*EXPECTED_CENTRES_MM[Laterality.LEFT], 1.0])
    k, j, i = np.round(left_centre[:3]).astype(int)
    voxels[k - 15 : k + 16, j - 15 : j + 16, i - 15 : i + 16] = 40.0

    result = find_ct_hips(CTVolume(voxels, pelvis.affine), CROP_SHAPE, CROP_SPACING_MM)

    assert set(result.regions) == {Laterality.RIGHT}
    assert set(result.missing) == {Laterality.LEFT}
    assert [warning.code for warning in result.warnings] == ["hip_not_found"]
    assert "left femoral head was not found" in result.warnings[0].message
