"""Training and evaluation batches from cached crops or cached backbone features.

A source contains the hips of one split in a fixed order, and a batch is a
list of indices into that order. Augmentation and modality dropout are drawn per hip
from ``(seed, epoch, index)`` (see :mod:`hipfuse.training.augment`), so a batch
does not depend on which process assembles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hipfuse.inference.model.config import PreprocessingConfig
from hipfuse.inference.model.preprocess import normalise_ct, normalise_radiograph
from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.augment import (
    AugmentSettings,
    augment_ct,
    augment_radiograph,
    drop_modalities,
    sample_generator,
)
from hipfuse.training.cohort import HipRecord
from hipfuse.training.crops import CropSet

CLASS_INDEX = {hip_class: index for index, hip_class in enumerate(HIP_CLASSES)}


@dataclass
class Batch:
    """Model inputs of a batch of hips, on one device.

    ``radiograph``, ``ct`` and ``text`` are ``None`` when no hip of the batch has
    that modality. Rows of hips without it are zeros, which the model never reads.
    """

    radiograph: torch.Tensor | None
    ct: torch.Tensor | None
    text: torch.Tensor | None
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class EpochDraw:
    """Settings of the random changes of one training epoch."""

    seed: int
    epoch: int
    augment: AugmentSettings | None


class HipSource:
    """Hips of one split with their labels and modality presence.

    Subclasses load the three inputs of one hip; this class stacks them and
    applies modality dropout.
    """

    def __init__(
        self,
        hip_ids: Sequence[str],
        patient_ids: Sequence[str],
        labels: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        self.hip_ids = list(hip_ids)
        self.patient_ids = list(patient_ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mask = np.asarray(mask, dtype=bool).reshape(len(self.hip_ids), 3)

    def __len__(self) -> int:
        return len(self.hip_ids)

    def batch(
        self, indices: Sequence[int], device: torch.device, draw: EpochDraw | None = None
    ) -> Batch:
        """Assemble the batch of ``indices``; ``draw`` turns on augmentation and dropout."""
        radiographs, cts, texts, masks = [], [], [], []
        for index in indices:
            rng = None
            present = self.mask[index]
            if draw is not None and draw.augment is not None:
                rng = sample_generator(draw.seed, draw.epoch, int(index))
                present = drop_modalities(present, draw.augment.modality_dropout, rng)
            radiograph, ct, text = self.load(int(index), present, rng, draw)
            radiographs.append(radiograph)
            cts.append(ct)
            texts.append(text)
            masks.append(present)
        return Batch(
            radiograph=_stack(radiographs, device),
            ct=_stack(cts, device),
            text=_stack(texts, device),
            mask=torch.from_numpy(np.stack(masks)).to(device),
            labels=torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)]).to(device),
        )

    def load(
        self,
        index: int,
        present: np.ndarray,
        rng: np.random.Generator | None,
        draw: EpochDraw | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Return the model-ready radiograph, CT and text arrays of one hip (``None`` if masked)."""
        raise NotImplementedError


class CropSource(HipSource):
    """Normalised crops loaded from the crop cache, with optional augmentation.

    Normalisation uses the same functions as inference, so the network gets
    the same intensities in training and at the node.
    """

    def __init__(
        self, hips: Sequence[HipRecord], crops: CropSet, preprocessing: PreprocessingConfig
    ) -> None:
        entries = [crops[hip.hip_id] for hip in hips]
        super().__init__(
            [hip.hip_id for hip in hips],
            [hip.patient_id for hip in hips],
            np.array([CLASS_INDEX[hip.label] for hip in hips], dtype=np.int64),
            np.array([entry.mask for entry in entries], dtype=bool).reshape(len(hips), 3),
        )
        self.entries = entries
        self.preprocessing = preprocessing

    def load(
        self,
        index: int,
        present: np.ndarray,
        rng: np.random.Generator | None,
        draw: EpochDraw | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Return the normalised crops and note embedding of one hip."""
        entry = self.entries[index]
        settings = draw.augment if draw is not None else None
        radiograph = ct = text = None
        # Draw order is fixed (radiograph, then CT) so that a hip's draws never
        # depend on which modalities the dropout kept.
        if entry.radiograph is not None:
            crop = np.load(entry.radiograph)
            if rng is not None and settings is not None:
                crop = augment_radiograph(crop, settings, rng)
            if present[0]:
                radiograph = normalise_radiograph(crop, self.preprocessing.radiograph)[None]
        if entry.ct is not None:
            crop = np.load(entry.ct)
            if rng is not None and settings is not None:
                crop = augment_ct(crop, settings, rng)
            if present[1]:
                ct = normalise_ct(crop, self.preprocessing.ct)[None]
        if entry.text is not None and present[2]:
            text = np.load(entry.text).astype(np.float32)
        return radiograph, ct, text


class FeatureSource(HipSource):
    """Backbone features computed once by the frozen image encoders.

    Features are shaped ``(features, 1, 1)`` and ``(features, 1, 1, 1)`` so the
    fusion network's forward pass runs unchanged with pass-through encoders.
    """

    def __init__(
        self,
        source: HipSource,
        radiograph_features: np.ndarray,
        ct_features: np.ndarray,
        text: np.ndarray,
    ) -> None:
        super().__init__(source.hip_ids, source.patient_ids, source.labels, source.mask)
        self.radiograph_features = radiograph_features
        self.ct_features = ct_features
        self.text = text

    def load(
        self,
        index: int,
        present: np.ndarray,
        rng: np.random.Generator | None,
        draw: EpochDraw | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Return the cached features of one hip."""
        radiograph = self.radiograph_features[index][:, None, None] if present[0] else None
        ct = self.ct_features[index][:, None, None, None] if present[1] else None
        text = self.text[index] if present[2] else None
        return radiograph, ct, text


def _stack(arrays: list[np.ndarray | None], device: torch.device) -> torch.Tensor | None:
    present = [array for array in arrays if array is not None]
    if not present:
        return None
    batch = np.zeros((len(arrays), *present[0].shape), dtype=np.float32)
    for row, array in enumerate(arrays):
        if array is not None:
            batch[row] = array
    return torch.from_numpy(batch).to(device)
