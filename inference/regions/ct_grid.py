"""Voxel grid helpers for the CT hip search: block averaging, windows, index and mm."""

from __future__ import annotations

import numpy as np


def spacing_mm(affine: np.ndarray) -> np.ndarray:
    """Return the voxel size along each array axis in mm."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def index_to_mm(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Map index rows ``[n, 3]`` to LPS mm rows ``[n, 3]``."""
    return (affine[:3, :3] @ np.asarray(index, dtype=float).T).T + affine[:3, 3]


def mm_to_index(affine: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Map LPS mm rows ``[n, 3]`` to fractional index rows ``[n, 3]``."""
    offsets = np.asarray(points_mm, dtype=float) - affine[:3, 3]
    return np.linalg.solve(affine[:3, :3], offsets.T).T


def mean_pool(voxels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Downsample by the mean over blocks of ``factors`` voxels, dropping incomplete blocks."""
    factors = tuple(min(f, n) for f, n in zip(factors, voxels.shape, strict=True))
    shape = tuple(n // f for n, f in zip(voxels.shape, factors, strict=True))
    total = np.zeros(shape, dtype=np.float32)
    # One strided view per offset inside a block reads the volume once in total.
    for offset in np.ndindex(*factors):
        total += voxels[offset[0] :: factors[0], offset[1] :: factors[1], offset[2] :: factors[2]][
            : shape[0], : shape[1], : shape[2]
        ]
    return total / float(np.prod(factors))


def pooled_affine(affine: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Return the affine of a block-averaged grid: index 0 is the centre of the first block."""
    scale = np.diag([*factors, 1]).astype(float)
    shift = np.eye(4)
    shift[:3, 3] = (np.asarray(factors, dtype=float) - 1) / 2
    return affine @ shift @ scale


def pool_factors(affine: np.ndarray, target_spacing_mm: float) -> tuple[int, ...]:
    """Return the block size per axis that brings the voxel size closest to the target."""
    return tuple(max(1, round(target_spacing_mm / s)) for s in spacing_mm(affine))


def window(
    voxels: np.ndarray, affine: np.ndarray, centre_mm: np.ndarray, half_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the sub-array within ``half_mm`` of a point on every axis, and its affine.

    The box is clipped to the volume, so it may be smaller near an edge.
    """
    centre_index = mm_to_index(affine, np.asarray(centre_mm)[None, :])[0]
    half_index = half_mm / spacing_mm(affine)
    start = np.maximum(np.floor(centre_index - half_index).astype(int), 0)
    stop = np.minimum(np.ceil(centre_index + half_index).astype(int) + 1, voxels.shape)
    start = np.minimum(start, stop)
    sub = voxels[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    sub_affine = np.array(affine, dtype=float)
    sub_affine[:3, 3] = index_to_mm(affine, start[None, :])[0]
    return sub, sub_affine


def squared_distance_mm(
    shape: tuple[int, ...], affine: np.ndarray, point_mm: np.ndarray
) -> np.ndarray:
    """Return the squared distance in mm from every voxel centre of a grid to a point."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    squared = np.zeros(shape, dtype=np.float32)
    for row in range(3):
        axis_mm = affine[row, 0] * k + affine[row, 1] * j + affine[row, 2] * i
        squared += (axis_mm + (affine[row, 3] - point_mm[row])) ** 2
    return squared


def sphere_directions(count: int) -> np.ndarray:
    """Return ``count`` nearly uniform unit vectors ``[count, 3]`` (Fibonacci lattice)."""
    n = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * n / count)
    azimuth = np.pi * (1 + 5**0.5) * n
    return np.stack(
        [np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1
    )
