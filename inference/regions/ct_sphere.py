"""Femoral head centre by a gradient Hough transform for spheres.

Every strong bone edge near the coarse centre votes for the points that lie
15 to 35 mm from it along its gradient, toward the denser side. The exposed
part of the femoral head (lateral, anterior, posterior, inferior) is a patch of
one sphere, so its votes meet at the head centre, while flat and irregular
bone surfaces spread theirs. Unlike the largest inscribed ball, the vote does
not drift into the acetabulum where head and acetabulum merge across a joint
space thinner than the voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from hipfuse.inference.regions import ct_grid

FIT_SPACING_MM = 1.5
"""Grid of the vote, reached by averaging blocks of finer voxels."""

FIT_REACH_MM = 20.0
"""Largest distance of the fitted centre from the coarse one. On a 3 mm grid a
head merged with its acetabulum shifted the coarse centre by up to about 12 mm
on simulated pelves."""

FIT_PRIOR_MM = 20.0
"""Standard deviation of a Gaussian weight on the votes around the coarse centre.
Without it, a deep acetabulum and the ilium above it drew the fit 24 mm upward
on one simulated hip with impingement; 10 mm pulled fits toward the coarse
centre's bias instead."""

FIT_SMOOTHING_MM = 1.0
"""Gaussian sigma before the gradient, against noise."""

FIT_CLIP_HU = (-100.0, 1000.0)
"""Densities are clipped to this range, so metal, gas and air edges outvote no bone edge."""

EDGE_PERCENTILE = 95.0
"""Only voxels whose gradient magnitude is in this top percentile of the window vote."""


def fit_sphere_centre(
    voxels: np.ndarray,
    affine: np.ndarray,
    coarse_centre_mm: np.ndarray,
    radius_range_mm: tuple[float, float],
) -> tuple[np.ndarray, float, float]:
    """Fit the centre of the best supported sphere near a coarse centre.

    Parameters
    ----------
    voxels
        HU array.
    affine
        Its index to LPS mm matrix.
    coarse_centre_mm
        Starting point in LPS mm.
    radius_range_mm
        Radii that may vote.

    Returns
    -------
    tuple
        Centre in LPS mm, radius in mm (weighted median distance of the edges
        that voted for the centre) and the vote at the centre as a fraction of
        all votes cast.
    """
    coarse_centre_mm = np.asarray(coarse_centre_mm, dtype=float)
    half_mm = FIT_REACH_MM + radius_range_mm[1] + 2 * FIT_SPACING_MM
    sub, sub_affine = ct_grid.window(voxels, affine, coarse_centre_mm, half_mm)
    factors = ct_grid.pool_factors(sub_affine, FIT_SPACING_MM)
    grid = ct_grid.mean_pool(np.clip(sub, *FIT_CLIP_HU), factors)
    grid_affine = ct_grid.pooled_affine(sub_affine, factors)
    spacing = ct_grid.spacing_mm(grid_affine)
    if min(grid.shape) < 3:
        return coarse_centre_mm, 0.0, 0.0
    grid = ndi.gaussian_filter(grid, sigma=FIT_SMOOTHING_MM / spacing)

    # d/dx_mm = d/d_index @ A^-1 for the index-to-mm matrix A.
    gradient_mm = np.stack(np.gradient(grid), axis=-1) @ np.linalg.inv(grid_affine[:3, :3])
    magnitude = np.linalg.norm(gradient_mm, axis=-1)
    edges = magnitude >= max(float(np.percentile(magnitude, EDGE_PERCENTILE)), 1e-6)
    edge_index = np.argwhere(edges)
    normals = gradient_mm[edges] / magnitude[edges][:, None]
    # A few very strong edges (cortex against air) must not outvote the head.
    weights = np.minimum(magnitude[edges], float(np.percentile(magnitude[edges], 90)))
    edge_mm = ct_grid.index_to_mm(grid_affine, edge_index)

    votes = np.zeros(grid.shape, dtype=np.float32)
    radii_mm = np.arange(radius_range_mm[0], radius_range_mm[1] + 1e-6, float(spacing.min()))
    for radius_mm in radii_mm:
        target = np.rint(ct_grid.mm_to_index(grid_affine, edge_mm + radius_mm * normals))
        target = target.astype(int)
        inside = np.all((target >= 0) & (target < grid.shape), axis=1)
        np.add.at(votes, tuple(target[inside].T), weights[inside])
    votes = ndi.gaussian_filter(votes, sigma=1.0)
    squared_mm = ct_grid.squared_distance_mm(grid.shape, grid_affine, coarse_centre_mm)
    votes *= np.exp(-0.5 * squared_mm / FIT_PRIOR_MM**2)
    votes[squared_mm > FIT_REACH_MM**2] = 0.0
    peak = np.unravel_index(int(np.argmax(votes)), votes.shape)
    if votes[peak] <= 0:
        return coarse_centre_mm, 0.0, 0.0

    # Sub-voxel centre: vote-weighted mean over the 3 x 3 x 3 neighbourhood of the peak.
    low = np.maximum(np.asarray(peak) - 1, 0)
    high = np.minimum(np.asarray(peak) + 2, grid.shape)
    block = votes[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    offsets = np.argwhere(np.ones(block.shape, dtype=bool))
    mean_index = low + (offsets * block.ravel()[:, None]).sum(axis=0) / block.sum()
    centre_mm = ct_grid.index_to_mm(grid_affine, mean_index[None, :])[0]

    radius_mm = _supporting_radius(edge_mm, normals, weights, centre_mm, radius_range_mm)
    support = float(votes[peak] / max(float(weights.sum()) * len(radii_mm), 1e-6))
    return centre_mm, radius_mm, support


def _supporting_radius(
    edge_mm: np.ndarray,
    normals: np.ndarray,
    weights: np.ndarray,
    centre_mm: np.ndarray,
    radius_range_mm: tuple[float, float],
) -> float:
    """Return the weighted median distance of edges whose gradient points at the centre."""
    to_centre = centre_mm - edge_mm
    distance_mm = np.linalg.norm(to_centre, axis=1)
    cosine = np.einsum("ij,ij->i", normals, to_centre) / np.maximum(distance_mm, 1e-6)
    supporting = (
        (cosine > 0.9) & (distance_mm >= radius_range_mm[0]) & (distance_mm <= radius_range_mm[1])
    )
    if not supporting.any():
        return 0.0
    order = np.argsort(distance_mm[supporting])
    cumulative = np.cumsum(weights[supporting][order])
    median_at = int(np.searchsorted(cumulative, cumulative[-1] / 2))
    return float(distance_mm[supporting][order][median_at])
