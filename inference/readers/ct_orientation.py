"""Bring a CT volume to the canonical axis order: superior, posterior, patient left."""

from __future__ import annotations

import itertools

import numpy as np
import structlog
from scipy import ndimage

from hipfuse.inference.readers.codes import WarningCode
from hipfuse.inference.readers.ct_geometry import AIR_HU
from hipfuse.inference.types import CTVolume, InputWarning

log = structlog.get_logger(__name__)

# LPS component that each canonical axis runs along: axis 0 to +z (superior),
# axis 1 to +y (posterior), axis 2 to +x (patient left).
_CANONICAL_LPS_COMPONENT = (2, 1, 0)
# Axes within this angle of a patient axis are permuted and flipped only; a
# larger angle (an oblique acquisition) is resampled onto an axis-aligned grid.
MAX_AXIS_ANGLE_DEG = 1.0


def reorient_to_canonical(
    volume: CTVolume, *, max_axis_angle_deg: float = MAX_AXIS_ANGLE_DEG
) -> CTVolume:
    """Permute and flip the axes so that axis 0 goes superior, 1 posterior and 2 to the left.

    Each array axis is matched with the closest patient axis. When every axis
    lies within ``max_axis_angle_deg`` of its patient axis, the voxels are only
    transposed and flipped: no copy when nothing changes, one contiguous copy
    otherwise. A more oblique volume is resampled by trilinear interpolation
    onto an axis-aligned grid with the source spacing, covering the whole
    source (voxels outside it are -1024 HU), with warning ``ct_oblique_resampled``.

    ``instances`` is reversed when axis 0 is flipped. When the slice axis
    moves to another position, or the volume is resampled, ``instances`` is
    kept as it was and no longer matches axis 0 index by index.

    Returns
    -------
    CTVolume
        A new volume; its warnings are the source warnings plus any added here.
    """
    affine = np.asarray(volume.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / spacing
    permutation = _closest_permutation(directions)
    cosines = [
        abs(directions[_CANONICAL_LPS_COMPONENT[axis], permutation[axis]]) for axis in range(3)
    ]
    worst_angle_deg = float(np.degrees(np.arccos(np.clip(min(cosines), -1.0, 1.0))))
    if worst_angle_deg > max_axis_angle_deg:
        return _resample_axis_aligned(volume, affine, spacing, permutation, worst_angle_deg)

    voxels = np.transpose(volume.voxels, permutation)
    new_affine = np.eye(4)
    new_affine[:3, :3] = affine[:3, list(permutation)]
    new_affine[:3, 3] = affine[:3, 3]
    flipped = []
    for axis in range(3):
        if new_affine[_CANONICAL_LPS_COMPONENT[axis], axis] < 0:
            flipped.append(axis)
            new_affine[:3, 3] += new_affine[:3, axis] * (voxels.shape[axis] - 1)
            new_affine[:3, axis] *= -1
    if flipped:
        voxels = np.flip(voxels, axis=tuple(flipped))
    if tuple(permutation) == (0, 1, 2) and not flipped:
        voxels = volume.voxels
    else:
        voxels = np.ascontiguousarray(voxels)

    instances = list(volume.instances)
    if permutation[0] == 0 and 0 in flipped:
        instances.reverse()
    return CTVolume(
        voxels=voxels,
        affine=new_affine,
        identity=volume.identity,
        instances=instances,
        warnings=list(volume.warnings),
    )


def _closest_permutation(directions: np.ndarray) -> tuple[int, ...]:
    """Return, for each canonical axis, the source axis that best matches it."""
    best: tuple[int, ...] = (0, 1, 2)
    best_score = -1.0
    for permutation in itertools.permutations(range(3)):
        score = sum(
            abs(directions[_CANONICAL_LPS_COMPONENT[axis], permutation[axis]]) for axis in range(3)
        )
        if score > best_score:
            best, best_score = permutation, score
    return best


def _resample_axis_aligned(
    volume: CTVolume,
    affine: np.ndarray,
    spacing: np.ndarray,
    permutation: tuple[int, ...],
    angle_deg: float,
) -> CTVolume:
    output_spacing = np.array([spacing[permutation[axis]] for axis in range(3)])
    shape = np.array(volume.voxels.shape)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    corners_lps = (affine[:3, :3] @ corners.T).T + affine[:3, 3]

    output_affine = np.zeros((4, 4))
    output_affine[3, 3] = 1.0
    origin = np.zeros(3)
    output_shape = []
    for axis in range(3):
        component = _CANONICAL_LPS_COMPONENT[axis]
        low, high = corners_lps[:, component].min(), corners_lps[:, component].max()
        output_affine[component, axis] = output_spacing[axis]
        origin[component] = low
        output_shape.append(int(np.floor((high - low) / output_spacing[axis] + 1e-6)) + 1)
    output_affine[:3, 3] = origin

    # affine_transform maps each output index to a source index with one matrix.
    output_to_source = np.linalg.inv(affine) @ output_affine
    voxels = ndimage.affine_transform(
        volume.voxels,
        output_to_source[:3, :3],
        offset=output_to_source[:3, 3],
        output_shape=tuple(output_shape),
        output=np.float32,
        order=1,
        mode="grid-constant",
        cval=AIR_HU,
    )
    warning = InputWarning(
        WarningCode.CT_OBLIQUE_RESAMPLED,
        f"the volume axes are up to {angle_deg:.1f} degrees off the patient axes; it was "
        "resampled onto an axis-aligned grid by trilinear interpolation",
    )
    log.info("ct_oblique_resampled", angle_deg=round(angle_deg, 2), shape=output_shape)
    return CTVolume(
        voxels=voxels,
        affine=output_affine,
        identity=volume.identity,
        instances=list(volume.instances),
        warnings=[*volume.warnings, warning],
    )
