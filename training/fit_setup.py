"""Set-up steps of a training run: arguments, device, seeds, text encoder, crops, sources.

Every function here runs once per run, before or around the epoch loop of
:func:`hipfuse.training.fit.fit`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import structlog
import torch

from hipfuse.inference.model.bundle import BundleError, load_bundle
from hipfuse.inference.model.config import BundleConfig
from hipfuse.inference.model.text import TextEncoder
from hipfuse.training import distributed as dist_tools
from hipfuse.training.batches import CropSource, HipSource
from hipfuse.training.cohort import Cohort, Split
from hipfuse.training.crops import CropSet, prepare_crops
from hipfuse.training.two_stage import extract_features

log = structlog.get_logger(__name__)


class FitError(ValueError):
    """A training run that cannot start; the message names the value and the fix."""


def check_arguments(
    out_dir: Path,
    overwrite: bool,
    epochs: int,
    batch_size: int,
    patience: int,
    context: dist_tools.DistributedContext,
) -> None:
    """Raise :class:`FitError` for settings that cannot train."""
    if out_dir.exists() and not overwrite:
        raise FitError(f"bundle folder {out_dir} already exists: choose another or pass overwrite")
    if epochs < 1:
        raise FitError(f"epochs is {epochs}: train at least 1 epoch")
    if patience < 1:
        raise FitError(f"patience is {patience}: use at least 1 epoch")
    if batch_size < context.world_size:
        raise FitError(
            f"batch size {batch_size} is smaller than the {context.world_size} processes: "
            "raise the batch size"
        )


def select_device(
    device: str | torch.device | None, context: dist_tools.DistributedContext
) -> torch.device:
    """Return the device of this process (CUDA device ``local_rank`` under DDP)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise FitError("device cuda requested but torch sees no CUDA device: use --device cpu")
        if context.enabled:
            target = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(target)
    return target


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and turn on deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds third-party code that uses the global state)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def load_text_encoder(config: BundleConfig) -> TextEncoder:
    """Return the text encoder that ``config`` names, after checking its fingerprint and size."""
    reference = config.text_model
    encoder = TextEncoder(
        reference.resolve_path(None),
        chunk_tokens=reference.chunk_tokens,
        stride_tokens=reference.stride_tokens,
    )
    if encoder.fingerprint() != reference.fingerprint:
        raise FitError(
            f"text model in {encoder.model_dir} has fingerprint {encoder.fingerprint()}, the "
            f"configuration names {reference.fingerprint}: build the configuration for the "
            "installed text model"
        )
    dim = encoder.embedding_dim()
    if dim != config.architecture.text_dim:
        raise FitError(
            f"text model gives {dim}-dimensional embeddings but architecture.text_dim is "
            f"{config.architecture.text_dim}: set text_dim to {dim}"
        )
    return encoder


def prepare_crops_once(
    cohort: Cohort,
    config: BundleConfig,
    cache_dir: Path,
    text_encoder: TextEncoder,
    workers: int,
    progress: bool,
    context: dist_tools.DistributedContext,
) -> CropSet:
    """Crop the cohort on rank 0, then let the other ranks read the filled cache."""
    # Rank 0 fills the cache; the others then find every entry in it.
    if context.is_main:
        crops = prepare_crops(
            cohort,
            config.preprocessing,
            cache_dir,
            text_encoder,
            workers=workers,
            progress=progress,
        )
    dist_tools.barrier(context)
    if not context.is_main:
        crops = prepare_crops(
            cohort, config.preprocessing, cache_dir, text_encoder, workers=1, progress=False
        )
    return crops


def split_sources(cohort: Cohort, crops: CropSet, config: BundleConfig) -> dict[Split, CropSource]:
    """Return one crop source per split, without hips that have no usable input."""
    sources = {}
    for split in Split:
        hips = [hip for hip in cohort.hips_in(split) if hip.hip_id in crops.hips]
        sources[split] = CropSource(hips, crops, config.preprocessing)
    return sources


def check_splits(sources: dict[Split, HipSource]) -> None:
    """Raise :class:`FitError` when train or validation is empty or has one class."""
    for split in (Split.TRAIN, Split.VALIDATION):
        source = sources[split]
        if len(source) == 0:
            raise FitError(
                f"the {split.value} split has no hip with a usable input: add hips or "
                "change the split fractions"
            )
        if np.unique(source.labels).size < 2:
            raise FitError(
                f"the {split.value} split has only one class: AUC needs at least two; "
                "add patients or change the split seed"
            )


def initialise_from(model: torch.nn.Module, config: BundleConfig, path: Path) -> dict[str, str]:
    """Copy the weights of the bundle at ``path`` into ``model``; return its identity."""
    try:
        bundle = load_bundle(path, device="cpu")
    except BundleError as error:
        raise FitError(f"cannot initialise from bundle {path}: {error}") from error
    if bundle.config.architecture != config.architecture:
        raise FitError(
            f"bundle {path} has another architecture than the configuration: train with "
            "the bundle's own configuration (the CLI does so with --init-from)"
        )
    model.load_state_dict(bundle.model.state_dict())
    # load_bundle leaves the weights frozen and channels-last; the copy above
    # takes values only, so the new model stays trainable.
    return {
        "name": bundle.config.name,
        "version": bundle.config.version,
        "weights_sha256": bundle.config.weights_sha256,
    }


def feature_sources(
    model: torch.nn.Module,
    sources: dict[Split, CropSource],
    cache_dir: Path,
    device: torch.device,
    progress: bool,
    context: dist_tools.DistributedContext,
) -> dict[Split, HipSource]:
    """Extract frozen encoder features per split (rank 0 first, then the others)."""
    result: dict[Split, HipSource] = {}
    for split, source in sources.items():
        if len(source) == 0:
            result[split] = source
            continue
        if context.is_main:
            result[split] = extract_features(model, source, cache_dir, device, progress=progress)
        dist_tools.barrier(context)
        if not context.is_main:
            result[split] = extract_features(model, source, cache_dir, device, progress=False)
    return result


def wrap_for_training(
    model: torch.nn.Module, device: torch.device, context: dist_tools.DistributedContext
) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when several processes train."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # NOTE: BatchNorm layers of the image encoders keep per-process statistics under
    # DDP (no SyncBatchNorm), and end-to-end DDP on CUDA with NCCL has not been run;
    # only the gloo CPU path of two-stage training is tested against one process.
    # A modality missing from every hip of one process's batch skips its encoder
    # there, so some parameters get no gradient on that process.
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )
