"""Light image augmentation and modality dropout, drawn per hip and per epoch.

Every random draw comes from a generator seeded by ``(seed, epoch, hip index)``,
so a hip gets the same augmentation whichever process or batch it lands in.
That makes a resumed run repeat the interrupted one exactly, and a run sharded
over several processes match a single-process run.

There is no left-right flip: crops are already mirrored to the canonical side,
so a flip would turn a right-hip look into an anatomically impossible one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Padding of the region finders outside the source image: black for
# radiographs (the [0, 1] scale), air for CT.
RADIOGRAPH_FILL = 0.0
CT_FILL_HU = -1024.0


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random changes; each is drawn uniformly in ``[-x, +x]``.

    Attributes
    ----------
    log_scale
        Natural log of the zoom factor around the crop centre (0.1 is about ±10 %).
    radiograph_log_gamma
        Natural log of the gamma applied to ``[0, 1]`` radiograph crops.
    radiograph_contrast, radiograph_brightness
        Relative contrast change and additive brightness on the ``[0, 1]`` scale.
    ct_gain, ct_offset_hu
        Relative gain and additive offset in HU applied to CT crops.
    modality_dropout
        Probability of masking each present modality of a hip; at least one
        modality is always kept.
    """

    log_scale: float = 0.1
    radiograph_log_gamma: float = 0.15
    radiograph_contrast: float = 0.1
    radiograph_brightness: float = 0.05
    ct_gain: float = 0.03
    ct_offset_hu: float = 20.0
    modality_dropout: float = 0.25


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Return the generator of one hip in one epoch."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def drop_modalities(
    present: np.ndarray, probability: float, rng: np.random.Generator
) -> np.ndarray:
    """Mask each present modality with ``probability``, keeping at least one.

    Parameters
    ----------
    present
        ``(3,)`` bool presence in ``INPUT_MODALITIES`` order.

    Returns
    -------
    numpy.ndarray
        The new presence; when every present modality was drawn for dropping,
        one of them, chosen at random, is kept.
    """
    present = np.asarray(present, dtype=bool)
    draws = rng.random(present.shape[0])
    kept = present & (draws >= probability)
    if not kept.any() and present.any():
        choices = np.flatnonzero(present)
        kept[choices[rng.integers(choices.size)]] = True
    return kept


def augment_radiograph(
    crop: np.ndarray, settings: AugmentSettings, rng: np.random.Generator
) -> np.ndarray:
    """Zoom, gamma, contrast and brightness jitter of a ``[0, 1]`` radiograph crop."""
    out = _zoom(crop, _uniform(rng, settings.log_scale), RADIOGRAPH_FILL)
    gamma = float(np.exp(_uniform(rng, settings.radiograph_log_gamma)))
    contrast = 1.0 + _uniform(rng, settings.radiograph_contrast)
    brightness = _uniform(rng, settings.radiograph_brightness)
    out = np.clip(out, 0.0, 1.0) ** gamma
    out = (out - 0.5) * contrast + 0.5 + brightness
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def augment_ct(
    crop_hu: np.ndarray, settings: AugmentSettings, rng: np.random.Generator
) -> np.ndarray:
    """Zoom, gain and offset jitter of a CT crop in HU."""
    out = _zoom(crop_hu, _uniform(rng, settings.log_scale), CT_FILL_HU)
    gain = 1.0 + _uniform(rng, settings.ct_gain)
    offset = _uniform(rng, settings.ct_offset_hu)
    return (out * gain + offset).astype(np.float32)


def _uniform(rng: np.random.Generator, half_width: float) -> float:
    return float(rng.uniform(-half_width, half_width)) if half_width > 0 else 0.0


def _zoom(array: np.ndarray, log_scale: float, fill: float) -> np.ndarray:
    """Zoom ``array`` about its centre by ``exp(log_scale)``, keeping its shape."""
    if log_scale == 0.0:
        return np.asarray(array, dtype=np.float32)
    scale = float(np.exp(log_scale))
    centre = (np.asarray(array.shape, dtype=np.float64) - 1.0) / 2.0
    # affine_transform maps output to input coordinates: input = centre + (out - centre) / scale.
    matrix = np.full(array.ndim, 1.0 / scale)
    offset = centre - centre / scale
    return ndimage.affine_transform(
        np.asarray(array, dtype=np.float32),
        matrix,
        offset=offset,
        order=1,
        mode="constant",
        cval=fill,
    )
