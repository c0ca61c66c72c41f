"""Per-hip radiograph regions: locate both hips, crop each, map heat maps back.

Coordinates: ``centre`` is in pixel indices (pixel ``(r, c)`` has its centre
at ``(r, c)``). ``box`` is in edge coordinates, where pixel ``(r, c)`` covers
``[r, r + 1) x [c, c + 1)`` and ``(0, 0, rows, columns)`` is the whole image,
so a box centred on a hip centre has its middle at ``centre + 0.5``.

Every crop is brought to the look of a right hip in radiological convention:
lateral at the crop's left, medial at its right. A hip whose lateral side
is at the image's right (the left hip of a standard AP, the right hip of a
left-right flipped one) is mirrored.
"""

from __future__ import annotations

import numpy as np
import structlog
from scipy import ndimage as ndi

from hipfuse.inference.regions.radiograph_landmarks import (
    HipLandmarks,
    HipsNotFoundError,
    locate_hip_centres,
)
from hipfuse.inference.regions.radiograph_shafts import ImageSide
from hipfuse.inference.regions.result import HipSearchResult, RegionIssueCode
from hipfuse.inference.types import (
    InputError,
    InputWarning,
    Laterality,
    Radiograph,
    RadiographRegion,
)

log = structlog.get_logger(__name__)

REFERENCE_INTER_HIP_MM = 180.0
"""Distance between the two hip joint centres of an average adult, used to size
crops when the pixel spacing is unknown. An estimate, in the middle of the 168
to 192 mm that the simulated adult cohort draws. Because the crop then scales
with the patient's own pelvis, a child's crop shows the same anatomy as an
adult's."""


def find_radiograph_hips(
    radiograph: Radiograph, crop_px: int, crop_mm: float
) -> HipSearchResult[RadiographRegion]:
    """Locate both hip joints on an AP pelvis radiograph and crop a square around each.

    Parameters
    ----------
    radiograph
        Decoded radiograph with bone bright. ``row_direction`` must be ``L``
        or ``R`` and ``column_direction`` ``F`` or ``H``.
    crop_px
        Side of the output crop in pixels.
    crop_mm
        Side of the cropped square in mm when ``pixel_spacing_mm`` is known.
        Otherwise the side is ``crop_mm / REFERENCE_INTER_HIP_MM`` times the
        distance between the two hip centres, and a ``crop_size_from_anatomy``
        warning records it.

    Returns
    -------
    HipSearchResult[RadiographRegion]
        One region per patient side. The search relies on the mirror symmetry
        of the pelvis, so it finds both hips or raises.

    Raises
    ------
    InputError
        ``hip_not_found`` when no pair of hip joints is found,
        ``radiograph_orientation_unsupported`` for a view that is not frontal,
        ``radiograph_not_2d`` for pixels that are not one 2D image.
    """
    if int(crop_px) < 1 or not np.isfinite(crop_mm) or crop_mm <= 0:
        raise ValueError(f"crop_px {crop_px!r} and crop_mm {crop_mm!r} must be positive")
    pixels = np.asarray(radiograph.pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise InputError(
            RegionIssueCode.RADIOGRAPH_NOT_2D,
            f"radiograph pixels have shape {pixels.shape}; a 2D [row, column] array is required",
        )
    upside_down = _check_orientation(radiograph)
    search_pixels = pixels[::-1] if upside_down else pixels
    try:
        landmarks = locate_hip_centres(search_pixels)
    except HipsNotFoundError as error:
        raise InputError(
            RegionIssueCode.HIP_NOT_FOUND,
            f"no hip joint found on the radiograph: {error}. An AP pelvis showing both "
            "hip joints is required.",
        ) from error
    if upside_down:
        landmarks = _flip_rows(landmarks, pixels.shape[0])

    side_px = _crop_side_px(radiograph, landmarks, crop_mm)
    result: HipSearchResult[RadiographRegion] = HipSearchResult()
    if radiograph.pixel_spacing_mm is None:
        result.warnings.append(
            InputWarning(
                RegionIssueCode.CROP_SIZE_FROM_ANATOMY,
                f"pixel spacing is unknown, so the hip centres, {landmarks.inter_hip_px:.0f} "
                f"pixels apart, were taken as {REFERENCE_INTER_HIP_MM:g} mm apart, and each "
                f"{crop_mm:g} mm hip crop is {side_px[1]:.0f} pixels wide",
            )
        )

    for image_side, centre in landmarks.centres.items():
        laterality = _laterality(image_side, radiograph.row_direction)
        # Mirror the hip whose lateral side is at the image's right.
        mirrored = image_side is ImageSide.RIGHT
        box = (
            centre[0] + 0.5 - side_px[0] / 2,
            centre[1] + 0.5 - side_px[1] / 2,
            centre[0] + 0.5 + side_px[0] / 2,
            centre[1] + 0.5 + side_px[1] / 2,
        )
        crop = crop_box(pixels, box, int(crop_px))
        if mirrored:
            crop = np.ascontiguousarray(crop[:, ::-1])
        result.regions[laterality] = RadiographRegion(
            laterality=laterality,
            crop=crop,
            box=box,
            mirrored=mirrored,
            centre=(float(centre[0]), float(centre[1])),
        )
    log.info(
        "radiograph_hips_found",
        sop_instance_uid=radiograph.instance.sop_instance_uid if radiograph.instance else None,
        method=str(landmarks.method),
        centres={
            region.laterality.value: [round(v, 1) for v in region.centre]
            for region in result.regions.values()
        },
        crop_side_px=[round(v, 1) for v in side_px],
    )
    return result


def radiograph_map_to_source(
    region: RadiographRegion, heatmap: np.ndarray, source_shape: tuple[int, int]
) -> np.ndarray:
    """Resample a crop-shaped heat map into the source radiograph's pixel grid.

    Mirroring and scaling are undone with bilinear interpolation. Pixels
    outside the region's box are zero.

    Parameters
    ----------
    region
        The region the heat map was computed on.
    heatmap
        Array of the crop's shape.
    source_shape
        ``(rows, columns)`` of the source radiograph.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of ``source_shape``.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != region.crop.shape:
        raise ValueError(
            f"heat map shape {heatmap.shape} differs from the crop shape {region.crop.shape}"
        )
    rows, columns = (int(n) for n in source_shape)
    output = np.zeros((rows, columns), dtype=np.float32)
    row_start, column_start, row_stop, column_stop = region.box
    first_row = max(0, int(np.floor(row_start)))
    last_row = min(rows, int(np.ceil(row_stop)))
    first_column = max(0, int(np.floor(column_start)))
    last_column = min(columns, int(np.ceil(column_stop)))
    if last_row <= first_row or last_column <= first_column:
        return output

    crop_rows, crop_columns = heatmap.shape
    if region.mirrored:
        heatmap = heatmap[:, ::-1]
    # Source pixel centre (index i) sits at edge coordinate i + 0.5; the crop
    # pixel whose centre is there has index (edge - start) * n / side - 0.5.
    source_rows = np.arange(first_row, last_row) + 0.5
    source_columns = np.arange(first_column, last_column) + 0.5
    crop_row = (source_rows - row_start) * crop_rows / (row_stop - row_start) - 0.5
    crop_column = (source_columns - column_start) * crop_columns / (
        column_stop - column_start
    ) - 0.5
    grid = np.meshgrid(crop_row, crop_column, indexing="ij")
    output[first_row:last_row, first_column:last_column] = ndi.map_coordinates(
        heatmap, grid, order=1, mode="constant", cval=0.0
    )
    return output


def crop_box(
    pixels: np.ndarray, box: tuple[float, float, float, float], crop_px: int
) -> np.ndarray:
    """Resample the part of ``pixels`` inside ``box`` (edge coordinates) to ``crop_px`` squared.

    Bilinear interpolation after a Gaussian anti-aliasing blur when the box is
    larger than the crop; parts of the box outside the image are zero.
    """
    row_start, column_start, row_stop, column_stop = box
    step_row = (row_stop - row_start) / crop_px
    step_column = (column_stop - column_start) / crop_px
    # Read only the source pixels under the box, with a margin for the blur.
    margin = int(np.ceil(2 * max(step_row, step_column))) + 2
    first_row = max(0, int(np.floor(row_start)) - margin)
    last_row = min(pixels.shape[0], int(np.ceil(row_stop)) + margin)
    first_column = max(0, int(np.floor(column_start)) - margin)
    last_column = min(pixels.shape[1], int(np.ceil(column_stop)) + margin)
    if last_row <= first_row or last_column <= first_column:
        return np.zeros((crop_px, crop_px), dtype=np.float32)
    window = np.asarray(pixels[first_row:last_row, first_column:last_column], dtype=np.float32)
    # Anti-aliasing blur of about half a crop pixel, only when shrinking.
    sigma = (max(0.0, 0.5 * (step_row - 1)), max(0.0, 0.5 * (step_column - 1)))
    if max(sigma) > 0:
        window = ndi.gaussian_filter(window, sigma)

    # Crop pixel j has its centre at edge coordinate start + (j + 0.5) * step,
    # which is source index start + (j + 0.5) * step - 0.5.
    rows = row_start + (np.arange(crop_px) + 0.5) * step_row - 0.5 - first_row
    columns = column_start + (np.arange(crop_px) + 0.5) * step_column - 0.5 - first_column
    grid = np.meshgrid(rows, columns, indexing="ij")
    crop = ndi.map_coordinates(window, grid, order=1, mode="nearest")
    # Zero where the crop pixel centre lies outside the image.
    outside_rows = (rows + first_row < -0.5) | (rows + first_row > pixels.shape[0] - 0.5)
    outside_columns = (columns + first_column < -0.5) | (
        columns + first_column > pixels.shape[1] - 0.5
    )
    crop[outside_rows, :] = 0.0
    crop[:, outside_columns] = 0.0
    return crop.astype(np.float32)


def _check_orientation(radiograph: Radiograph) -> bool:
    """Return whether the image is upside down; raise for a view that is not frontal."""
    row_direction = str(radiograph.row_direction).upper()
    column_direction = str(radiograph.column_direction).upper()
    if row_direction not in ("L", "R") or column_direction not in ("F", "H"):
        raise InputError(
            RegionIssueCode.RADIOGRAPH_ORIENTATION_UNSUPPORTED,
            f"Patient Orientation {row_direction}\\{column_direction} is not a frontal view "
            "with the patient upright in the image; hip regions need an AP or PA pelvis "
            "(row direction L or R, column direction F or H).",
        )
    return column_direction == "H"


def _flip_rows(landmarks: HipLandmarks, rows: int) -> HipLandmarks:
    """Return landmarks found on the vertically flipped image in the original rows."""
    centres = {side: (rows - 1 - row, column) for side, (row, column) in landmarks.centres.items()}
    return HipLandmarks(centres, landmarks.method, landmarks.midline_column)


def _laterality(image_side: ImageSide, row_direction: str) -> Laterality:
    """Return the patient's side shown in an image half.

    ``row_direction`` is the patient direction of increasing column index, so
    with ``L`` the image's left half shows the patient's right side.
    """
    patient_left_at_image_right = str(row_direction).upper() == "L"
    if (image_side is ImageSide.LEFT) == patient_left_at_image_right:
        return Laterality.RIGHT
    return Laterality.LEFT


def _crop_side_px(
    radiograph: Radiograph, landmarks: HipLandmarks, crop_mm: float
) -> tuple[float, float]:
    """Return the crop side in source pixels along rows and columns."""
    if radiograph.pixel_spacing_mm is not None:
        row_spacing_mm, column_spacing_mm = radiograph.pixel_spacing_mm
        return crop_mm / float(row_spacing_mm), crop_mm / float(column_spacing_mm)
    side = crop_mm / REFERENCE_INTER_HIP_MM * landmarks.inter_hip_px
    return side, side
