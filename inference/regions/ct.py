"""Per-hip CT regions: find each femoral head, crop around it, map heat maps back.

Each crop is sampled on a grid defined in patient space: axis 0 toward
superior, axis 1 toward posterior, axis 2 toward the patient's left, reversed
for left hips so both look like a right hip. The search, too, works in LPS
millimetres through the volume's affine. The array order of the source
(slices first or last, flipped or not) therefore changes neither the centres
nor the crops, and the volume is never reoriented or copied as a whole. Only
the source voxels under a crop are read and resampled.
"""

from __future__ import annotations

import itertools

import numpy as np
import structlog
from scipy import ndimage as ndi

from hipfuse.inference.regions.ct_heads import locate_femoral_heads
from hipfuse.inference.regions.result import HipSearchResult, RegionIssueCode, side_name
from hipfuse.inference.types import CTRegion, CTVolume, InputError, InputWarning, Laterality

log = structlog.get_logger(__name__)

AIR_HU = -1024.0
"""Value of crop voxels outside the source volume."""


def find_ct_hips(
    volume: CTVolume,
    crop_shape: tuple[int, int, int],
    crop_spacing_mm: tuple[float, float, float],
) -> HipSearchResult[CTRegion]:
    """Locate both femoral heads on a CT volume and crop a canonical region around each.

    Parameters
    ----------
    volume
        CT volume in HU with its index to LPS affine, in any array orientation.
    crop_shape
        Crop size ``(k, j, i)`` in voxels along superior, posterior and
        lateral-to-medial.
    crop_spacing_mm
        Crop voxel size in mm along the same axes.

    Returns
    -------
    HipSearchResult[CTRegion]
        A region per femoral head found, centred on the head. Left hips are
        mirrored along axis 2. A side that was not found is named in
        ``missing`` and in a ``hip_not_found`` warning.

    Raises
    ------
    InputError
        ``hip_not_found`` when neither femoral head is found, ``ct_not_3d``
        or ``ct_affine_invalid`` for a malformed volume.
    """
    shape = _check_crop_shape(crop_shape)
    spacing_mm = _check_crop_spacing(crop_spacing_mm)
    voxels = np.asarray(volume.voxels)
    if voxels.ndim != 3:
        raise InputError(
            RegionIssueCode.CT_NOT_3D,
            f"CT voxels have shape {voxels.shape}; a 3D [k, j, i] array is required",
        )
    affine = _check_affine(volume.affine)
    search = locate_femoral_heads(voxels, affine)

    if not search.heads:
        reasons = "; ".join(
            f"{side_name(side)}: {reason}" for side, reason in search.missing.items()
        )
        raise InputError(
            RegionIssueCode.HIP_NOT_FOUND,
            f"no femoral head found on the CT volume ({reasons}). Provide a CT that "
            "covers the pelvis down to below both femoral heads.",
        )

    result: HipSearchResult[CTRegion] = HipSearchResult(missing=dict(search.missing))
    for side, reason in search.missing.items():
        result.warnings.append(
            InputWarning(
                RegionIssueCode.HIP_NOT_FOUND,
                f"the {side_name(side)} femoral head was not found on the CT ({reason}); "
                "that hip is analysed without CT.",
            )
        )
    for side, head in search.heads.items():
        mirrored = side is Laterality.LEFT
        to_mm = crop_affine(head.centre_mm, shape, spacing_mm, mirrored=mirrored)
        result.regions[side] = CTRegion(
            laterality=side,
            crop=resample_crop(voxels, affine, to_mm, shape),
            affine=to_mm,
            centre_mm=head.centre_mm,
            mirrored=mirrored,
        )
        log.info(
            "ct_hip_found",
            series_instance_uid=volume.identity.series_instance_uid,
            laterality=side.value,
            centre_mm=[round(v, 1) for v in head.centre_mm],
            radius_mm=round(head.radius_mm, 1),
        )
    return result


def ct_map_to_volume(region: CTRegion, heatmap: np.ndarray, volume: CTVolume) -> np.ndarray:
    """Resample a crop-shaped heat map into the geometry of the source volume.

    Parameters
    ----------
    region
        The region the heat map was computed on.
    heatmap
        Array of the crop's shape.
    volume
        The volume the region was cut from.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the volume's shape: the heat map, trilinearly
        interpolated through the region's and the volume's affines, and zero
        outside the crop.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != region.crop.shape:
        raise ValueError(
            f"heat map shape {heatmap.shape} differs from the crop shape {region.crop.shape}"
        )
    volume_shape = np.asarray(volume.voxels).shape
    output = np.zeros(volume_shape, dtype=np.float32)

    # Volume index -> crop index, applied only inside the crop's bounding box.
    volume_to_crop = np.linalg.solve(region.affine, volume.affine)
    crop_to_volume = np.linalg.solve(volume.affine, region.affine)
    start, stop = _bounding_box(crop_to_volume, heatmap.shape, volume_shape, margin=1)
    if np.any(stop <= start):
        return output
    box_to_crop = volume_to_crop.copy()
    box_to_crop[:3, 3] += volume_to_crop[:3, :3] @ start
    box_shape = tuple(int(v) for v in stop - start)
    output[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = ndi.affine_transform(
        heatmap,
        box_to_crop[:3, :3],
        offset=box_to_crop[:3, 3],
        output_shape=box_shape,
        order=1,
        mode="constant",
        cval=0.0,
    )
    return output


def crop_affine(
    centre_mm: tuple[float, float, float],
    crop_shape: tuple[int, int, int],
    crop_spacing_mm: tuple[float, float, float],
    mirrored: bool,
) -> np.ndarray:
    """Return the crop index to LPS mm affine of a canonical crop centred on ``centre_mm``.

    Axis 0 runs toward superior (+z), axis 1 toward posterior (+y) and axis 2
    toward the patient's left (+x), or toward the patient's right when
    ``mirrored``. The centre of the crop, index ``(n - 1) / 2`` on each axis,
    maps to ``centre_mm``.
    """
    directions = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0 if mirrored else 1.0, 0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = directions.T * np.asarray(crop_spacing_mm, dtype=float)
    centre_index = (np.asarray(crop_shape, dtype=float) - 1) / 2
    affine[:3, 3] = np.asarray(centre_mm, dtype=float) - affine[:3, :3] @ centre_index
    return affine


def resample_crop(
    voxels: np.ndarray,
    volume_affine: np.ndarray,
    crop_to_mm: np.ndarray,
    crop_shape: tuple[int, int, int],
) -> np.ndarray:
    """Sample a crop from a volume with trilinear interpolation, reading only the voxels under it.

    Parameters
    ----------
    voxels
        Source HU array.
    volume_affine
        Source index to LPS mm matrix.
    crop_to_mm
        Crop index to LPS mm matrix.
    crop_shape
        Output shape.

    Returns
    -------
    numpy.ndarray
        ``float32`` crop; points outside the source volume are air (-1024 HU).
    """
    crop_to_volume = np.linalg.solve(volume_affine, crop_to_mm)
    start, stop = _bounding_box(crop_to_volume, crop_shape, voxels.shape, margin=1)
    if np.any(stop <= start):
        return np.full(crop_shape, AIR_HU, dtype=np.float32)
    window = np.asarray(
        voxels[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]], dtype=np.float32
    )
    return ndi.affine_transform(
        window,
        crop_to_volume[:3, :3],
        offset=crop_to_volume[:3, 3] - start,
        output_shape=tuple(crop_shape),
        order=1,
        mode="constant",
        cval=AIR_HU,
    ).astype(np.float32, copy=False)


def _bounding_box(
    index_map: np.ndarray,
    source_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    margin: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the index box in the target grid covered by the source grid under ``index_map``."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in source_shape])), dtype=float)
    mapped = (index_map[:3, :3] @ corners.T).T + index_map[:3, 3]
    start = np.maximum(np.floor(mapped.min(axis=0)).astype(int) - margin, 0)
    stop = np.minimum(np.ceil(mapped.max(axis=0)).astype(int) + 1 + margin, target_shape)
    return start, stop


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            RegionIssueCode.CT_AFFINE_INVALID,
            f"CT affine {affine.tolist()} is not an invertible 4 x 4 matrix; "
            "check Image Orientation (Patient) and Pixel Spacing of the series.",
        )
    return affine


def _check_crop_shape(crop_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in crop_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"crop_shape {crop_shape!r} must be three positive voxel counts")
    return shape


def _check_crop_spacing(crop_spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in crop_spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"crop_spacing_mm {crop_spacing_mm!r} must be three positive sizes in mm")
    return spacing
