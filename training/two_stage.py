"""Two-stage training: frozen image backbones, features computed once, head trained alone.

The image encoders run once over every crop (eval mode, no augmentation) and
their pooled features are cached. The network is then trained with the
encoders swapped for :class:`FeaturePassThrough`, so the fusion network's own
forward pass (projections, attention, classifier) runs on the cached features
and only those layers learn. The encoders are put back before the bundle is
saved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import structlog
import torch
from torch import nn

from hipfuse.inference.model.fusion import HipFusionNet
from hipfuse.training.batches import CropSource, FeatureSource

log = structlog.get_logger(__name__)

EXTRACTION_BATCH = 16
"""Crops per encoder call while extracting features."""


class FeaturePassThrough(nn.Module):
    """Stand-in encoder that returns its ``(B, features, 1, ...)`` input flattened."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as ``(B, features)``."""
        return x.flatten(start_dim=1)


def detach_encoders(model: HipFusionNet) -> tuple[nn.Module, nn.Module]:
    """Replace both image encoders with pass-throughs and return the originals."""
    encoders = (model.radiograph_encoder, model.ct_encoder)
    model.radiograph_encoder = FeaturePassThrough(encoders[0].out_features)
    model.ct_encoder = FeaturePassThrough(encoders[1].out_features)
    return encoders


def attach_encoders(model: HipFusionNet, encoders: tuple[nn.Module, nn.Module]) -> None:
    """Put back the encoders that :func:`detach_encoders` returned."""
    model.radiograph_encoder, model.ct_encoder = encoders


def encoder_digest(model: HipFusionNet) -> str:
    """Return the SHA-256 of both encoders' weights and buffers, for cache keys."""
    digest = hashlib.sha256()
    for encoder in (model.radiograph_encoder, model.ct_encoder):
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode("utf-8"))
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def extract_features(
    model: HipFusionNet,
    source: CropSource,
    cache_dir: Path,
    device: torch.device,
    *,
    progress: bool = True,
) -> FeatureSource:
    """Run the frozen encoders over every hip of ``source`` once; reuse the cache if present.

    The cache file is keyed by the encoders' weights, the preprocessing and
    the crops, so changing any of them recomputes the features.
    """
    key_payload = {
        "encoders": encoder_digest(model),
        "preprocessing": source.preprocessing.model_dump(mode="json"),
        "crops": [
            [str(entry.radiograph), str(entry.ct), str(entry.text)] for entry in source.entries
        ],
    }
    key = hashlib.sha256(json.dumps(key_payload, sort_keys=True).encode("utf-8")).hexdigest()
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            arrays = {name: cached[name] for name in cached.files}
        log.info("features_cache_hit", hips=len(source), path=str(path))
    else:
        arrays = _compute_features(model, source, device, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.partial.npz")
        np.savez(temporary, **arrays)
        temporary.replace(path)
        log.info("features_extracted", hips=len(source), path=str(path))
    return FeatureSource(source, arrays["radiograph"], arrays["ct"], arrays["text"])


@torch.inference_mode()
def _compute_features(
    model: HipFusionNet, source: CropSource, device: torch.device, progress: bool
) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    n = len(source)
    radiograph = np.zeros((n, model.radiograph_encoder.out_features), dtype=np.float32)
    ct = np.zeros((n, model.ct_encoder.out_features), dtype=np.float32)
    text = np.zeros((n, model.architecture.text_dim), dtype=np.float32)
    starts = range(0, n, EXTRACTION_BATCH)
    for start in tqdm(starts, desc="extracting features", unit="batch", disable=not progress):
        indices = list(range(start, min(start + EXTRACTION_BATCH, n)))
        batch = source.batch(indices, device)
        mask = batch.mask.cpu().numpy()
        if batch.radiograph is not None and mask[:, 0].any():
            rows = np.flatnonzero(mask[:, 0])
            features = model.radiograph_encoder(batch.radiograph[torch.from_numpy(rows).to(device)])
            radiograph[start + rows] = features.float().cpu().numpy()
        if batch.ct is not None and mask[:, 1].any():
            rows = np.flatnonzero(mask[:, 1])
            features = model.ct_encoder(batch.ct[torch.from_numpy(rows).to(device)])
            ct[start + rows] = features.float().cpu().numpy()
        if batch.text is not None:
            text[start : start + len(indices)] = batch.text.cpu().numpy()
    model.train(was_training)
    return {"radiograph": radiograph, "ct": ct, "text": text}
