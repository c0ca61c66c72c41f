"""Radiograph hip regions: the real paediatric AP pelvis films, orientation, crops, heat maps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hipfuse.inference.readers.radiograph import read_radiograph
from hipfuse.inference.regions.radiograph import (
    REFERENCE_INTER_HIP_MM,
    find_radiograph_hips,
    radiograph_map_to_source,
)
from hipfuse.inference.types import InputError, Laterality, Radiograph

XRAY = Path(__file__).resolve().parents[2] / "samples" / "xray"
CROP_PX = 96
CROP_MM = 100.0

# Hip joint centres (row, column) on the 331 x 331 sample films. The femoral
# heads of these infants are still cartilage, so each was placed by eye on a
# zoomed film with a 10-pixel grid. It lies in the dark space that the head fills,
# below the acetabular roof and the lowest point of the ilium (Hilgenreiner's
# line), above the femoral metaphysis, medial of its middle and lateral of the
# triradiate cartilage. On film 107 the ossification centres of both heads are
# visible and the centres sit on them. The tolerance of 12 pixels is about a
# twentieth of the distance between the hips.
EXPECTED_CENTRES = {
    "ap_pelvis_ddh_1": {Laterality.RIGHT: (138, 68), Laterality.LEFT: (134, 265)},
    "ap_pelvis_ddh_10": {Laterality.RIGHT: (160, 57), Laterality.LEFT: (158, 265)},
    "ap_pelvis_ddh_107": {Laterality.RIGHT: (168, 60), Laterality.LEFT: (164, 262)},
    "ap_pelvis_ddh_115": {Laterality.RIGHT: (175, 60), Laterality.LEFT: (165, 262)},
    "ap_pelvis_ddh_116": {Laterality.RIGHT: (168, 68), Laterality.LEFT: (164, 270)},
}
TOLERANCE_PX = 12.0
FILMS = sorted(EXPECTED_CENTRES)


@pytest.fixture(scope="module")
def films() -> dict[str, Radiograph]:
    return {name: read_radiograph(XRAY / f"{name}.dcm") for name in FILMS}


@pytest.fixture(scope="module")
def found(films):
    return {name: find_radiograph_hips(film, CROP_PX, CROP_MM) for name, film in films.items()}


def flipped_left_right(film: Radiograph) -> Radiograph:
    """Return the film mirrored left-right, as stored with Patient Orientation R\\F."""
    return replace(film, pixels=np.ascontiguousarray(film.pixels[:, ::-1]), row_direction="R")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def blob(shape: tuple[int, int], row: float, column: float, sigma: float = 3.0) -> np.ndarray:
    rows, columns = np.indices(shape)
    return np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("name", FILMS)
def test_real_film_centres(found, name):
    result = found[name]
    assert set(result.regions) == {Laterality.RIGHT, Laterality.LEFT}
    for side, expected in EXPECTED_CENTRES[name].items():
        centre = result.regions[side].centre
        distance = float(np.hypot(centre[0] - expected[0], centre[1] - expected[1]))
        assert distance <= TOLERANCE_PX, f"{side.name} hip at {centre}"


@pytest.mark.parametrize("name", FILMS)
def test_real_film_sides(films, found, name):
    # Standard AP (row direction L): the patient's right hip is in the image's left half.
    columns = films[name].pixels.shape[1]
    regions = found[name].regions
    assert films[name].row_direction == "L"
    assert regions[Laterality.RIGHT].centre[1] < columns / 2
    assert regions[Laterality.LEFT].centre[1] > columns / 2
    assert regions[Laterality.RIGHT].mirrored is False
    assert regions[Laterality.LEFT].mirrored is True


@pytest.mark.parametrize("name", FILMS)
def test_real_film_crops_and_boxes(films, found, name):
    rows, columns = films[name].pixels.shape
    for region in found[name].regions.values():
        row_start, column_start, row_stop, column_stop = region.box
        assert region.crop.shape == (CROP_PX, CROP_PX)
        assert region.crop.dtype == np.float32
        assert region.crop.min() >= 0.0
        assert region.crop.max() <= 1.0
        assert row_start < region.centre[0] < row_stop
        assert column_start < region.centre[1] < column_stop
        assert row_stop - row_start == pytest.approx(column_stop - column_start)
        # The box overlaps the image and may reach past its edges by less than half its side.
        side = row_stop - row_start
        assert row_start > -side / 2
        assert row_stop < rows + side / 2
        assert column_start > -side / 2
        assert column_stop < columns + side / 2


@pytest.mark.parametrize("name", FILMS)
def test_real_film_boxes_on_film(films, found, name):
    # Most of each box lies on the film, and it stops short of the point
    # halfway between the hips, so a crop shows one hip, not half the pelvis.
    rows, columns = films[name].pixels.shape
    regions = found[name].regions
    between = (regions[Laterality.RIGHT].centre[1] + regions[Laterality.LEFT].centre[1]) / 2
    for region in regions.values():
        row_start, column_start, row_stop, column_stop = region.box
        inside = (min(row_stop, rows) - max(row_start, 0)) * (
            min(column_stop, columns) - max(column_start, 0)
        )
        assert inside / ((row_stop - row_start) * (column_stop - column_start)) >= 0.85
    assert regions[Laterality.RIGHT].box[3] < between
    assert regions[Laterality.LEFT].box[1] > between


@pytest.mark.parametrize("name", FILMS)
def test_unknown_spacing_sizes_crop_from_anatomy(films, found, name):
    # The sample films carry a placeholder Pixel Spacing that the reader drops.
    assert films[name].pixel_spacing_mm is None
    result = found[name]
    right, left = result.regions[Laterality.RIGHT], result.regions[Laterality.LEFT]
    inter_hip_px = float(
        np.hypot(right.centre[0] - left.centre[0], right.centre[1] - left.centre[1])
    )
    expected_side = CROP_MM / REFERENCE_INTER_HIP_MM * inter_hip_px
    assert right.box[2] - right.box[0] == pytest.approx(expected_side)
    assert [warning.code for warning in result.warnings] == ["crop_size_from_anatomy"]
    assert f"{REFERENCE_INTER_HIP_MM:g} mm" in result.warnings[0].message


@pytest.mark.parametrize("name", FILMS)
def test_flipped_film_keeps_lateralities(films, found, name):
    original = found[name].regions
    columns = films[name].pixels.shape[1]

    flipped = find_radiograph_hips(flipped_left_right(films[name]), CROP_PX, CROP_MM).regions

    for side in (Laterality.RIGHT, Laterality.LEFT):
        # Same anatomy on the other image side, same patient side.
        assert flipped[side].laterality is side
        assert flipped[side].centre[0] == pytest.approx(original[side].centre[0], abs=2.0)
        mirrored_column = columns - 1 - original[side].centre[1]
        assert flipped[side].centre[1] == pytest.approx(mirrored_column, abs=2.0)
        assert flipped[side].mirrored is not original[side].mirrored
        assert correlation(flipped[side].crop, original[side].crop) > 0.95
    assert flipped[Laterality.RIGHT].centre[1] > columns / 2


def test_symmetric_film_gives_matching_crops(films):
    # Mirror the image-left half onto the right: both hips become mirror images,
    # so the left hip's crop, mirrored back, must equal the right hip's.
    pixels = films["ap_pelvis_ddh_116"].pixels
    half = pixels.shape[1] // 2
    symmetric = np.concatenate([pixels[:, :half], pixels[:, :half][:, ::-1]], axis=1)
    film = replace(films["ap_pelvis_ddh_116"], pixels=np.ascontiguousarray(symmetric))

    regions = find_radiograph_hips(film, CROP_PX, CROP_MM).regions

    right, left = regions[Laterality.RIGHT], regions[Laterality.LEFT]
    assert right.centre[0] == pytest.approx(left.centre[0], abs=1.0)
    assert correlation(right.crop, left.crop) > 0.95


def test_upside_down_film(films, found):
    film = films["ap_pelvis_ddh_10"]
    rows = film.pixels.shape[0]
    upside_down = replace(
        film, pixels=np.ascontiguousarray(film.pixels[::-1]), column_direction="H"
    )

    regions = find_radiograph_hips(upside_down, CROP_PX, CROP_MM).regions

    for side, region in found["ap_pelvis_ddh_10"].regions.items():
        assert regions[side].centre[0] == pytest.approx(rows - 1 - region.centre[0], abs=2.0)
        assert regions[side].centre[1] == pytest.approx(region.centre[1], abs=2.0)


def test_known_spacing_uses_crop_mm(films):
    film = replace(films["ap_pelvis_ddh_1"], pixel_spacing_mm=(0.5, 0.4))

    result = find_radiograph_hips(film, CROP_PX, 40.0)

    assert result.warnings == []
    for region in result.regions.values():
        row_start, column_start, row_stop, column_stop = region.box
        assert row_stop - row_start == pytest.approx(40.0 / 0.5)
        assert column_stop - column_start == pytest.approx(40.0 / 0.4)


@pytest.mark.parametrize("side", list(Laterality), ids=lambda side: side.name.lower())
def test_heat_map_returns_to_centre(films, found, side):
    region = found["ap_pelvis_ddh_115"].regions[side]
    shape = films["ap_pelvis_ddh_115"].pixels.shape
    middle = (CROP_PX - 1) / 2

    pasted = radiograph_map_to_source(region, blob((CROP_PX, CROP_PX), middle, middle), shape)

    assert pasted.shape == shape
    peak = np.unravel_index(int(np.argmax(pasted)), shape)
    assert peak[0] == pytest.approx(region.centre[0], abs=1.0)
    assert peak[1] == pytest.approx(region.centre[1], abs=1.0)
    row_start, column_start, row_stop, column_stop = region.box
    outside = np.ones(shape, dtype=bool)
    outside[
        max(0, int(np.floor(row_start))) : int(np.ceil(row_stop)),
        max(0, int(np.floor(column_start))) : int(np.ceil(column_stop)),
    ] = False
    assert np.all(pasted[outside] == 0.0)


@pytest.mark.parametrize(
    ("side", "lateral_sign"),
    [(Laterality.RIGHT, -1.0), (Laterality.LEFT, 1.0)],
    ids=["right", "left"],
)
def test_heat_map_keeps_lateral_side(films, found, side, lateral_sign):
    # Crops show the lateral side at their left. Pasted back, a mark there must
    # land lateral to the hip, which is the image's left for the right hip and
    # the image's right for the left hip of a standard film.
    region = found["ap_pelvis_ddh_1"].regions[side]
    shape = films["ap_pelvis_ddh_1"].pixels.shape

    pasted = radiograph_map_to_source(region, blob((CROP_PX, CROP_PX), CROP_PX / 2, 10.0), shape)

    peak_column = np.unravel_index(int(np.argmax(pasted)), shape)[1]
    assert lateral_sign * (peak_column - region.centre[1]) > 20.0


def test_heat_map_shape_mismatch(films, found):
    region = found["ap_pelvis_ddh_1"].regions[Laterality.RIGHT]
    with pytest.raises(ValueError, match="differs from the crop shape"):
        radiograph_map_to_source(region, np.zeros((8, 8)), films["ap_pelvis_ddh_1"].pixels.shape)


def synthetic_film(pixels: np.ndarray) -> Radiograph:
    return Radiograph(
        pixels=pixels.astype(np.float32),
        pixel_spacing_mm=None,
        spacing_source="none",
        row_direction="L",
        column_direction="F",
        orientation_source="assumed_ap",
    )


@pytest.mark.parametrize(
    "pixels",
    [
        pytest.param(np.full((400, 500), 0.5), id="uniform"),
        pytest.param(np.tile(np.linspace(0.0, 1.0, 500), (400, 1)), id="ramp"),
    ],
)
def test_not_a_pelvis(pixels):
    with pytest.raises(InputError, match="no hip joint found") as raised:
        find_radiograph_hips(synthetic_film(pixels), CROP_PX, CROP_MM)
    assert raised.value.code == "hip_not_found"


@pytest.mark.parametrize(
    ("row_direction", "column_direction"),
    [("A", "F"), ("L", "A"), ("LH", "F")],
    ids=["lateral_view", "axial_columns", "oblique_rows"],
)
def test_unsupported_orientation(films, row_direction, column_direction):
    film = replace(
        films["ap_pelvis_ddh_1"], row_direction=row_direction, column_direction=column_direction
    )
    with pytest.raises(InputError, match="not a frontal view") as raised:
        find_radiograph_hips(film, CROP_PX, CROP_MM)
    assert raised.value.code == "radiograph_orientation_unsupported"


@pytest.mark.parametrize(
    ("crop_px", "crop_mm"),
    [(0, 100.0), (96, 0.0), (96, float("nan"))],
    ids=["zero_pixels", "zero_mm", "nan_mm"],
)
def test_invalid_crop_arguments(films, crop_px, crop_mm):
    with pytest.raises(ValueError, match="must be positive"):
        find_radiograph_hips(films["ap_pelvis_ddh_1"], crop_px, crop_mm)
