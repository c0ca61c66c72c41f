"""Geometry of a stack of CT slices: order, spacing, gaps, gantry tilt, affine and resampling.

Slices are ordered by their position along the slice normal, the cross
product of the Image Orientation (Patient) row and column cosines dotted with
Image Position (Patient) (PS3.3 C.7.6.2.1.1). Instance Number and file names
are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from hipfuse.inference.readers.codes import ErrorCode, WarningCode
from hipfuse.inference.readers.ct_series import SliceHeader
from hipfuse.inference.types import InputError, InputWarning

# Slices closer than this along the normal are at the same position (duplicates).
DUPLICATE_TOLERANCE_MM = 0.01
# Spacing is uneven when a gap differs from the median by more than the larger of these.
SPACING_TOLERANCE_FRACTION = 0.1
SPACING_TOLERANCE_MM = 0.1
# Slice origins that drift in-plane by more than this fraction of a pixel over
# the series mean that the slices are sheared (gantry tilt).
TILT_TOLERANCE_PIXELS = 0.1
# Value for voxels that resampling takes from outside the source slices: air.
AIR_HU = -1024.0
MIN_SLICES = 3


@dataclass
class StackGeometry:
    """Slice positions of a CT series and the grid that the volume is read onto.

    Attributes
    ----------
    order
        Indices into the slice headers of the slices kept, sorted along the normal.
    duplicates
        For a kept index, the indices of other slices at the same position.
    positions_mm
        Position of each kept slice along the normal.
    inplane_offsets_mm
        ``(n, 2)`` offset of each kept slice origin along the column cosine
        (rows) and the row cosine (columns).
    row_cosine, column_cosine, normal
        Unit vectors in LPS: direction of increasing column index, of
        increasing row index, and their cross product.
    pixel_spacing_mm
        ``(row spacing, column spacing)`` from Pixel Spacing.
    slice_spacing_mm
        Spacing of the output grid along the normal.
    target_positions_mm
        Positions of the output slices along the normal.
    reference_offset_mm
        In-plane offset of the output grid (that of the middle slice when tilted).
    uneven, tilted
        Whether the output grid differs from the source slices (resampling needed).
    """

    order: list[int]
    duplicates: dict[int, list[int]]
    positions_mm: np.ndarray
    inplane_offsets_mm: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    target_positions_mm: np.ndarray
    reference_offset_mm: np.ndarray
    uneven: bool
    tilted: bool

    @property
    def needs_resampling(self) -> bool:
        """Whether the source slices must be resampled onto an orthogonal, even grid."""
        return self.uneven or self.tilted


def analyse_stack(headers: list[SliceHeader]) -> tuple[StackGeometry, list[InputWarning]]:
    """Sort slices along the normal and check duplicates, gaps, spacing and tilt.

    All headers must share one Image Orientation (see ``keep_majority_orientation``).

    Raises
    ------
    InputError
        ``ct_inconsistent_slices`` (rows, columns or pixel spacing differ),
        ``ct_too_few_slices``, ``ct_missing_slices`` (names the gaps) or
        ``ct_geometry_invalid``.
    """
    first = headers[0].ds
    orientation = headers[0].orientation
    row_cosine = _unit(orientation[:3], headers[0])
    column_cosine = _unit(orientation[3:], headers[0])
    if abs(float(row_cosine @ column_cosine)) > 1e-3:
        raise InputError(
            ErrorCode.CT_GEOMETRY_INVALID,
            f"{headers[0].path}: Image Orientation (Patient) {list(orientation)} has row "
            "and column cosines that are not perpendicular",
        )
    normal = np.cross(row_cosine, column_cosine)
    pixel_spacing = _check_same_grid(headers, first)

    positions = np.array([_position(header) for header in headers])
    along_normal = positions @ normal
    sorted_indices = [int(i) for i in np.argsort(along_normal, kind="stable")]

    order: list[int] = []
    duplicates: dict[int, list[int]] = {}
    for index in sorted_indices:
        if order and abs(along_normal[index] - along_normal[order[-1]]) < DUPLICATE_TOLERANCE_MM:
            duplicates.setdefault(order[-1], []).append(index)
        else:
            order.append(index)
    if len(order) < MIN_SLICES:
        raise InputError(
            ErrorCode.CT_TOO_FEW_SLICES,
            f"the series has {len(order)} slice positions; at least {MIN_SLICES} are "
            "needed to build a volume",
        )

    kept_positions = along_normal[order]
    offsets = np.stack([positions[order] @ column_cosine, positions[order] @ row_cosine], axis=1)
    gaps = np.diff(kept_positions)
    median_gap = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_FRACTION * median_gap, SPACING_TOLERANCE_MM)
    uneven = bool(np.any(np.abs(gaps - median_gap) > tolerance))
    warnings: list[InputWarning] = []
    if uneven:
        _raise_if_slices_missing(kept_positions, gaps, median_gap, tolerance)
        count = int(np.floor((kept_positions[-1] - kept_positions[0]) / median_gap + 0.5)) + 1
        targets = kept_positions[0] + median_gap * np.arange(count)
        slice_spacing = median_gap
        warnings.append(
            InputWarning(
                WarningCode.CT_UNEVEN_SPACING_RESAMPLED,
                f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm; the "
                f"series was resampled to the median spacing {median_gap:.3g} mm "
                "by linear interpolation along the slice normal",
            )
        )
    else:
        targets = kept_positions
        slice_spacing = float((kept_positions[-1] - kept_positions[0]) / (len(order) - 1))

    drift_pixels = np.abs(offsets - offsets[0]) / np.array(pixel_spacing)
    tilted = bool(drift_pixels.max() > TILT_TOLERANCE_PIXELS)
    reference = offsets[len(order) // 2] if tilted else offsets[0]
    if tilted:
        shear = np.linalg.norm(offsets[-1] - offsets[0])
        along = kept_positions[-1] - kept_positions[0]
        tilt_deg = float(np.degrees(np.arctan2(shear, along)))
        warnings.append(
            InputWarning(
                WarningCode.CT_GANTRY_TILT_RESAMPLED,
                f"slice origins shift in-plane by {shear:.3g} mm over the series (gantry tilt "
                f"of about {tilt_deg:.1f} degrees); slices were resampled onto a grid "
                "perpendicular to them, centred on the middle slice",
            )
        )

    geometry = StackGeometry(
        order=order,
        duplicates=duplicates,
        positions_mm=kept_positions,
        inplane_offsets_mm=offsets,
        row_cosine=row_cosine,
        column_cosine=column_cosine,
        normal=normal,
        pixel_spacing_mm=pixel_spacing,
        slice_spacing_mm=slice_spacing,
        target_positions_mm=targets,
        reference_offset_mm=reference,
        uneven=uneven,
        tilted=tilted,
    )
    return geometry, warnings


def _unit(vector: np.ndarray, header: SliceHeader) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not 0.9 < norm < 1.1:
        raise InputError(
            ErrorCode.CT_GEOMETRY_INVALID,
            f"{header.path}: Image Orientation (Patient) cosine {list(vector)} is not a unit "
            "vector",
        )
    return vector / norm


def _position(header: SliceHeader) -> np.ndarray:
    value = header.ds.get("ImagePositionPatient")
    if value is None or len(value) != 3:
        raise InputError(
            ErrorCode.CT_GEOMETRY_INVALID,
            f"{header.path}: Image Position (Patient) is missing or malformed",
        )
    return np.array([float(v) for v in value], dtype=np.float64)


def _check_same_grid(headers: list[SliceHeader], first: Dataset) -> tuple[float, float]:
    def grid(header: SliceHeader) -> tuple[int, int, tuple[float, ...]]:
        spacing = header.ds.get("PixelSpacing")
        if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
            raise InputError(
                ErrorCode.CT_GEOMETRY_INVALID,
                f"{header.path}: Pixel Spacing {spacing} is missing or not positive",
            )
        return (
            int(header.ds.Rows),
            int(header.ds.Columns),
            tuple(round(float(v), 4) for v in spacing),
        )

    grids = {grid(header) for header in headers}
    if len(grids) > 1:
        described = ", ".join(f"{r}x{c} at {s[0]:g}x{s[1]:g} mm" for r, c, s in sorted(grids))
        raise InputError(
            ErrorCode.CT_INCONSISTENT_SLICES,
            f"slices of one series differ in size or pixel spacing ({described}); pass "
            "the images of one reconstruction",
        )
    spacing = first.PixelSpacing
    return float(spacing[0]), float(spacing[1])


def _raise_if_slices_missing(
    positions: np.ndarray, gaps: np.ndarray, median_gap: float, tolerance: float
) -> None:
    multiples = np.rint(gaps / median_gap)
    regular = np.all(np.abs(gaps - multiples * median_gap) <= tolerance) and np.all(multiples >= 1)
    if not (regular and np.any(multiples >= 2)):
        return
    holes = [
        f"between {positions[k]:.2f} and {positions[k + 1]:.2f} mm "
        f"({int(multiples[k]) - 1} missing)"
        for k in np.flatnonzero(multiples >= 2)
    ]
    raise InputError(
        ErrorCode.CT_MISSING_SLICES,
        f"slices are missing from the series at {median_gap:.3g} mm spacing, along the "
        f"slice normal: {'; '.join(holes)}. Resend the complete series",
    )


def stack_affine(geometry: StackGeometry) -> np.ndarray:
    """Build the ``4 x 4`` matrix from output index ``(k, j, i, 1)`` to LPS mm."""
    row_spacing, column_spacing = geometry.pixel_spacing_mm
    origin = (
        geometry.normal * geometry.target_positions_mm[0]
        + geometry.column_cosine * geometry.reference_offset_mm[0]
        + geometry.row_cosine * geometry.reference_offset_mm[1]
    )
    affine = np.eye(4)
    affine[:3, 0] = geometry.normal * geometry.slice_spacing_mm
    affine[:3, 1] = geometry.column_cosine * row_spacing
    affine[:3, 2] = geometry.row_cosine * column_spacing
    affine[:3, 3] = origin
    return affine


def resample_stack(volume: np.ndarray, geometry: StackGeometry) -> np.ndarray:
    """Resample sorted source slices onto the even, orthogonal output grid.

    Each output slice is interpolated linearly between the two source slices
    around its position along the normal, after shifting each of them in-plane
    (bilinear) so that their origins match the reference offset. That removes
    the shear of a gantry tilt and evens out the spacing in one pass.
    """
    positions = geometry.positions_mm
    shifts_px = (geometry.inplane_offsets_mm - geometry.reference_offset_mm) / np.array(
        geometry.pixel_spacing_mm
    )
    output = np.empty((len(geometry.target_positions_mm), *volume.shape[1:]), dtype=np.float32)
    for target_index, target in enumerate(geometry.target_positions_mm):
        lower = int(
            np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2)
        )
        weight = float(
            np.clip(
                (target - positions[lower]) / (positions[lower + 1] - positions[lower]), 0.0, 1.0
            )
        )
        output[target_index] = _shifted(volume[lower], shifts_px[lower], geometry.tilted)
        if weight > 0.0:
            output[target_index] *= 1.0 - weight
            output[target_index] += weight * _shifted(
                volume[lower + 1], shifts_px[lower + 1], geometry.tilted
            )
    return output


def _shifted(image: np.ndarray, shift_px: np.ndarray, tilted: bool) -> np.ndarray:
    if not tilted or not np.any(np.abs(shift_px) > 1e-6):
        return image
    # Source pixel (j, i) lies at output pixel (j, i) + shift, because the source
    # origin is offset by `shift` pixels from the reference.
    return ndimage.shift(image, shift_px, order=1, mode="grid-constant", cval=AIR_HU)


def nearest_source_slices(geometry: StackGeometry) -> list[int]:
    """Return, for each output slice, the position in ``order`` of the nearest source slice."""
    distances = np.abs(geometry.target_positions_mm[:, None] - geometry.positions_mm[None, :])
    return [int(i) for i in np.argmin(distances, axis=1)]
