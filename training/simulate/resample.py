"""Separable Gaussian resampling between axis-aligned grids, done as three matrix products.

The simulated CT and radiograph grids are axis-aligned with the phantom, so
resampling factors into one small matrix per axis. A Gaussian weight per
output sample does interpolation, anti-aliasing (a width tied to the output
spacing) and the blur of a reconstruction kernel or detector in one step.
Matrix products on BLAS are also faster than ``scipy.ndimage.map_coordinates``:
about 0.05 s against 0.12 s for one 50-slice CT of 128 x 128 pixels, measured
on a 2-core machine.
"""

from __future__ import annotations

import numpy as np

# Standard deviation of a Gaussian with the same variance as a box of width 1 is
# 1/sqrt(12) = 0.29; 0.42 is the Gaussian that matches a box's full width at half
# maximum, which keeps thin structures closer to a real slice profile.
BOX_TO_SIGMA = 0.42


def resampling_matrix(
    in_mm: np.ndarray, out_mm: np.ndarray, sigma_mm: float
) -> tuple[np.ndarray, slice]:
    """Return Gaussian weights from input to output samples and the input range they touch.

    Parameters
    ----------
    in_mm, out_mm
        Sample positions along one axis (either may be descending).
    sigma_mm
        Gaussian width; at least half the input spacing is used, so that the
        result interpolates.

    Returns
    -------
    matrix, used
        ``matrix[o, i]`` weights ``in_mm[used][i]`` for output ``o``. Weights are
        normalised as if the input extended forever, so samples near an edge
        fade toward the fill value of :func:`resample_separable`.
    """
    in_mm = np.asarray(in_mm, dtype=np.float64)
    out_mm = np.asarray(out_mm, dtype=np.float64)
    step = float(in_mm[1] - in_mm[0])
    sigma = max(sigma_mm, 0.5 * abs(step))
    reach = 3.0 * sigma
    # Weights are computed on the input lattice extended past both ends, and each
    # row is normalised over that whole lattice: rows sum to exactly 1 in the
    # interior (no ripple between samples) and fade out past the edges.
    pad = int(np.ceil(reach / abs(step))) + 1
    lattice = in_mm[0] + step * np.arange(-pad, in_mm.size + pad)
    lo = min(out_mm.min(), out_mm.max()) - reach
    hi = max(out_mm.min(), out_mm.max()) + reach
    near = np.nonzero((lattice >= lo) & (lattice <= hi))[0]
    offset = (lattice[near][None, :] - out_mm[:, None]) / sigma
    weights = np.exp(-0.5 * offset**2)
    weights[np.abs(offset) > 3.0] = 0.0
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    real = near - pad
    keep = (real >= 0) & (real < in_mm.size)
    if not keep.any():
        return np.zeros((out_mm.size, 0), dtype=np.float32), slice(0, 0)
    weights = weights[:, keep]
    real = real[keep]
    used = slice(int(real[0]), int(real[-1]) + 1)
    return weights.astype(np.float32), used


def apply_along_axis(volume: np.ndarray, matrix: np.ndarray, used: slice, axis: int) -> np.ndarray:
    """Apply a resampling matrix along ``axis`` of ``volume`` (``matrix @`` that axis)."""
    index = [slice(None)] * volume.ndim
    index[axis] = used
    cropped = volume[tuple(index)]
    if axis == 0:
        flat = cropped.reshape(cropped.shape[0], -1)
        return (matrix @ flat).reshape((matrix.shape[0], *cropped.shape[1:]))
    moved = np.ascontiguousarray(np.moveaxis(cropped, axis, -1))
    out = moved.reshape(-1, moved.shape[-1]) @ matrix.T
    out = out.reshape((*moved.shape[:-1], matrix.shape[0]))
    return np.moveaxis(out, -1, axis)


def resample_separable(
    volume: np.ndarray,
    in_axes_mm: tuple[np.ndarray, ...],
    out_axes_mm: tuple[np.ndarray, ...],
    sigmas_mm: tuple[float, ...],
    fill: float = 0.0,
) -> np.ndarray:
    """Resample ``volume`` onto the product grid of ``out_axes_mm``, axis by axis.

    Axes are given in the array's own order. Outside the input, values fade to
    ``fill`` (air for CT).
    """
    shifted = volume.astype(np.float32, copy=False) - np.float32(fill)
    result = shifted
    # The axis that shrinks most goes first, so later products work on less data.
    order = sorted(range(volume.ndim), key=lambda a: len(out_axes_mm[a]) / volume.shape[a])
    for axis in order:
        matrix, used = resampling_matrix(in_axes_mm[axis], out_axes_mm[axis], sigmas_mm[axis])
        result = apply_along_axis(result, matrix, used, axis)
    return result + np.float32(fill)
