"""Crop checks and intensity normalisation, shared by inference and training.

Each modality has one check (shape, finite values, range) that raises
:class:`~hipfuse.inference.types.InputError`, and one normalisation driven by the
bundle's preprocessing configuration, so a model gets the same inputs in
training and at the node.
"""

from __future__ import annotations

import numpy as np

from hipfuse.inference.model.config import (
    CTPreprocessing,
    RadiographNormalisation,
    RadiographPreprocessing,
)
from hipfuse.inference.types import InputError

# Radiograph crops are on the reader's [0, 1] scale; interpolation in the region
# finder may overshoot it by a rounding error, nothing more.
_RADIOGRAPH_RANGE_TOLERANCE = 1e-3
# Below this standard deviation a crop is treated as constant (for example all padding).
_MIN_STD = 1e-6


def check_radiograph_crop(crop: np.ndarray, preprocessing: RadiographPreprocessing) -> np.ndarray:
    """Validate a radiograph crop and return it as ``float32``.

    Raises
    ------
    InputError
        ``radiograph_crop_shape`` when the shape is not the bundle's crop shape,
        ``radiograph_crop_not_finite`` for NaN or infinite pixels, and
        ``radiograph_crop_range`` for values outside ``[0, 1]``.
    """
    expected = preprocessing.crop_shape
    array = np.asarray(crop)
    if array.shape != expected:
        raise InputError(
            "radiograph_crop_shape",
            f"radiograph crop has shape {array.shape}, this bundle expects {expected} "
            f"({preprocessing.crop_px} px over {preprocessing.crop_mm} mm): crop with the "
            f"bundle's preprocessing settings",
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError(
            "radiograph_crop_not_finite",
            f"radiograph crop has {int(np.count_nonzero(~np.isfinite(array)))} NaN or "
            f"infinite pixels: check the decoded image",
        )
    low, high = float(array.min()), float(array.max())
    if low < -_RADIOGRAPH_RANGE_TOLERANCE or high > 1.0 + _RADIOGRAPH_RANGE_TOLERANCE:
        raise InputError(
            "radiograph_crop_range",
            f"radiograph crop values lie in [{low:.4g}, {high:.4g}], expected [0, 1]: "
            f"pass the reader's scaled pixels, not stored values",
        )
    return array


def check_ct_crop(crop: np.ndarray, preprocessing: CTPreprocessing) -> np.ndarray:
    """Validate a CT crop in HU and return it as ``float32``.

    Raises
    ------
    InputError
        ``ct_crop_shape`` when the shape is not the bundle's crop shape and
        ``ct_crop_not_finite`` for NaN or infinite voxels.
    """
    expected = tuple(preprocessing.crop_shape)
    array = np.asarray(crop)
    if array.shape != expected:
        raise InputError(
            "ct_crop_shape",
            f"CT crop has shape {array.shape}, this bundle expects {expected} voxels (k, j, i) "
            f"at {tuple(preprocessing.spacing_mm)} mm: crop with the bundle's preprocessing "
            f"settings",
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError(
            "ct_crop_not_finite",
            f"CT crop has {int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite "
            f"voxels: check the decoded series",
        )
    return array


def normalise_radiograph(crop: np.ndarray, preprocessing: RadiographPreprocessing) -> np.ndarray:
    """Normalise a ``[0, 1]`` radiograph crop as the bundle specifies (``float32``)."""
    array = np.asarray(crop, dtype=np.float32)
    if preprocessing.normalisation is RadiographNormalisation.FIXED:
        return (array - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)
    mean = float(array.mean(dtype=np.float64))
    std = float(array.std(dtype=np.float64))
    if std < _MIN_STD:
        return np.zeros_like(array)
    return ((array - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)


def normalise_ct(crop_hu: np.ndarray, preprocessing: CTPreprocessing) -> np.ndarray:
    """Clip a CT crop to the bundle's HU window and scale it to ``[0, 1]`` (``float32``)."""
    low, high = preprocessing.hu_window
    array = np.clip(np.asarray(crop_hu, dtype=np.float32), low, high)
    return ((array - np.float32(low)) / np.float32(high - low)).astype(np.float32, copy=False)
