"""Lesion masks in the grids of the written images: NIfTI on the CT grid, PNG on the radiograph.

The NIfTI affine maps voxel ``(i, j, k)`` = (column, row, slice) of the CT
series to RAS millimetres: the CT's LPS affine with x and y negated, as NIfTI
requires. Loading it with nibabel and applying ``img.affine`` gives the same
physical points as the DICOM Image Position and Orientation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from hipfuse.training.simulate.ct import CtAcquisition
from hipfuse.training.simulate.resample import resample_separable
from hipfuse.training.simulate.shapes import Grid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ct_lesion_mask(mask: np.ndarray, grid: Grid, acquisition: CtAcquisition) -> np.ndarray:
    """Return a phantom-grid mask resampled to the CT series, ``uint8 [slice, row, column]``.

    A voxel is in the mask when at least half of it is lesion. A lesion smaller
    than a CT voxel keeps its most covered voxels, so a non-empty lesion never
    vanishes.
    """
    if not mask.any():
        return np.zeros((acquisition.slice_count, acquisition.rows, acquisition.columns), np.uint8)
    z_out, y_out, x_out = acquisition.axes_mm()
    fraction = resample_separable(
        mask.astype(np.float32),
        (grid.axis_mm(2), grid.axis_mm(1), grid.axis_mm(0)),
        (z_out, y_out, x_out),
        (
            0.42 * acquisition.slice_spacing_mm,
            0.42 * acquisition.pixel_spacing_mm,
            0.42 * acquisition.pixel_spacing_mm,
        ),
    )
    peak = float(fraction.max())
    if peak <= 1e-3:
        # The lesion lies outside the scanned range.
        return np.zeros(fraction.shape, np.uint8)
    return (fraction >= min(0.5, 0.5 * peak)).astype(np.uint8)


def ct_mask_affine_ras(acquisition: CtAcquisition) -> np.ndarray:
    """Return the NIfTI affine from ``(column, row, slice)`` to RAS mm."""
    lps = acquisition.affine()
    # Reorder the columns of the (slice, row, column) affine to (column, row, slice).
    reordered = lps[:, [2, 1, 0, 3]]
    return LPS_TO_RAS @ reordered


def write_ct_mask_nifti(path: Path, mask: np.ndarray, acquisition: CtAcquisition) -> Path:
    """Write a ``[slice, row, column]`` mask as gzip-compressed NIfTI-1 in RAS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(mask.transpose(2, 1, 0).astype(np.uint8))
    affine = ct_mask_affine_ras(acquisition)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """Write a 2D boolean mask as an 8-bit PNG (lesion 255, background 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, optimize=False)
    return path
