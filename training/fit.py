"""Train a hip classifier on a cohort and save it as a model bundle.

:func:`fit` splits the cohort (patient-grouped, class-stratified) unless the
manifest already does, and crops every hip once with the bundle's
preprocessing. It trains with class-weighted cross-entropy and AdamW and stops
early on the validation macro AUC. It then fits a temperature on the validation
logits, evaluates the validation, test and external hips, and saves the bundle
with a summary of its training data and its metrics.

Two modes:

``end_to_end``
    Every layer learns, with image augmentation and modality dropout. The GPU
    mode; the demo preset also trains on a CPU in minutes.
``two_stage``
    The image encoders are frozen (random, or from ``init_from``), their
    features are computed once and cached, and only the projections, the
    attention and the classifier learn, with modality dropout. Minutes on a CPU.

Every epoch writes a checkpoint to the work folder. ``resume=True`` continues
from it and reaches the same weights as a run that was never interrupted,
because every random draw is seeded by ``(seed, epoch)`` or ``(seed, epoch, hip)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
import torch

from hipfuse.inference.model.bundle import build_model, save_bundle
from hipfuse.inference.model.config import BundleConfig
from hipfuse.training import distributed as dist_tools
from hipfuse.training.augment import AugmentSettings
from hipfuse.training.batches import CropSource, HipSource
from hipfuse.training.calibration import fit_temperature
from hipfuse.training.checkpoint import TrainingState, load_checkpoint, restore_random_states
from hipfuse.training.cohort import Cohort, Split
from hipfuse.training.fit_report import evaluate_split, training_data_summary
from hipfuse.training.fit_setup import (
    FitError,
    check_arguments,
    check_splits,
    feature_sources,
    initialise_from,
    load_text_encoder,
    prepare_crops_once,
    seed_everything,
    select_device,
    split_sources,
    wrap_for_training,
)
from hipfuse.training.loop import class_weights, evaluate, run_epochs
from hipfuse.training.splits import assign_splits
from hipfuse.training.two_stage import attach_encoders, detach_encoders

__all__ = ["FitError", "FitResult", "TrainingMode", "default_work_dir", "fit", "load_text_encoder"]

log = structlog.get_logger(__name__)


class TrainingMode(StrEnum):
    """Training mode: which layers learn."""

    END_TO_END = "end_to_end"
    TWO_STAGE = "two_stage"


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    bundle_dir
        Folder of the saved bundle (``None`` on ranks other than 0).
    work_dir
        Checkpoints, caches, per-split predictions and evaluations.
    best_epoch
        Epoch (0-based) whose weights were kept.
    epochs_run
        Epochs completed, including those of an interrupted run that was resumed.
    stopped_early
        Whether the validation macro AUC stopped improving for ``patience`` epochs.
    temperature
        Fitted calibration temperature, stored in the model.
    metrics
        Compact figures per split, as stored in the bundle.
    training_data
        The training-data summary stored in the bundle.
    history
        One record per epoch.
    """

    bundle_dir: Path | None
    work_dir: Path
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    temperature: float
    metrics: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def default_work_dir(out_dir: Path) -> Path:
    """Return the work folder beside a bundle folder: ``<out_dir>.work``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.work"


def fit(
    cohort: Cohort,
    config: BundleConfig,
    out_dir: Path | str,
    *,
    mode: TrainingMode | str = TrainingMode.END_TO_END,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    patience: int = 8,
    resume: bool = False,
    init_from: Path | str | None = None,
    device: str | torch.device | None = None,
    work_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    external_centres: tuple[str, ...] | list[str] = (),
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    augment: AugmentSettings | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    n_bootstrap: int = 1000,
    distributed: dist_tools.DistributedContext | None = None,
) -> FitResult:
    """Train on ``cohort`` and save a bundle in ``out_dir``.

    Parameters
    ----------
    cohort
        Validated cohort; its ``split`` column is used when every hip has one.
    config
        Bundle configuration (architecture, preprocessing, text model, name,
        version, intended use). ``training_data`` and ``metrics`` are filled here.
    out_dir
        Bundle folder to write.
    mode
        ``end_to_end`` or ``two_stage`` (see the module docstring).
    epochs
        Maximum number of epochs (a resumed run counts the epochs already done).
    batch_size
        Hips per optimisation step, summed over all processes.
    lr, weight_decay
        AdamW learning rate and decoupled weight decay.
    seed
        Seed of splitting, initialisation, shuffling, augmentation and dropout.
    patience
        Epochs without a better validation macro AUC before training stops.
    resume
        Continue from the work folder's checkpoint if there is one.
    init_from
        Bundle whose weights initialise the network; its architecture must
        equal ``config.architecture``.
    device
        ``cpu``, ``cuda`` or ``None`` for CUDA when available.
    work_dir
        Checkpoints, features and evaluations; default ``<out_dir>.work``.
    cache_dir
        Crop and text cache; default ``<work_dir>/cache``. Share it between runs
        with the same preprocessing to crop once.
    external_centres
        Centres evaluated as external hips and never trained on.
    test_fraction, validation_fraction
        Split sizes when the manifest has no ``split`` column.
    augment
        Augmentation and modality dropout ranges; ``None`` uses the defaults.
        Two-stage training applies only the modality dropout.
    workers
        Processes that read and crop images.
    overwrite
        Replace an existing bundle folder.
    progress
        Show progress bars.
    n_bootstrap
        Patient bootstrap resamples for the metric intervals.
    distributed
        Rank and world size; ``None`` reads them from the ``torchrun`` environment.

    Raises
    ------
    FitError
        When the bundle folder exists, a split is empty or has one class, the
        init bundle does not match, or the text model does not fit the
        architecture.
    """
    mode = TrainingMode(mode)
    context = distributed or dist_tools.context_from_environment()
    target = select_device(device, context)
    created_group = dist_tools.init_process_group(context, target.type)
    try:
        return _fit(
            cohort,
            config,
            Path(out_dir),
            mode=mode,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            patience=patience,
            resume=resume,
            init_from=Path(init_from) if init_from is not None else None,
            device=target,
            work_dir=Path(work_dir) if work_dir is not None else default_work_dir(Path(out_dir)),
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            external_centres=list(external_centres),
            test_fraction=test_fraction,
            validation_fraction=validation_fraction,
            augment=augment if augment is not None else AugmentSettings(),
            workers=workers,
            overwrite=overwrite,
            progress=progress and context.is_main,
            n_bootstrap=n_bootstrap,
            context=context,
        )
    finally:
        if created_group:
            dist_tools.destroy_process_group()


def _fit(
    cohort: Cohort,
    config: BundleConfig,
    out_dir: Path,
    *,
    mode: TrainingMode,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    patience: int,
    resume: bool,
    init_from: Path | None,
    device: torch.device,
    work_dir: Path,
    cache_dir: Path | None,
    external_centres: list[str],
    test_fraction: float,
    validation_fraction: float,
    augment: AugmentSettings,
    workers: int,
    overwrite: bool,
    progress: bool,
    n_bootstrap: int,
    context: dist_tools.DistributedContext,
) -> FitResult:
    started = time.perf_counter()
    check_arguments(out_dir, overwrite, epochs, batch_size, patience, context)
    seed_everything(seed)
    cohort = assign_splits(
        cohort,
        test_fraction=test_fraction,
        validation_fraction=validation_fraction,
        seed=seed,
        external_centres=external_centres,
    )

    text_encoder = load_text_encoder(config)
    crops = prepare_crops_once(
        cohort, config, cache_dir or work_dir / "cache", text_encoder, workers, progress, context
    )
    crop_sources = split_sources(cohort, crops, config)
    check_splits(crop_sources)
    sources: dict[Split, HipSource] = dict(crop_sources)

    model = build_model(config.architecture, seed=seed)
    init_summary = initialise_from(model, config, init_from) if init_from else None
    model.to(device)
    encoders = None
    if mode is TrainingMode.TWO_STAGE:
        sources = feature_sources(
            model, crop_sources, work_dir / "features", device, progress, context
        )
        encoders = detach_encoders(model)

    fingerprint = {
        "cohort_sha256": cohort.content_hash(),
        "config": config.model_dump(mode="json", include={"architecture", "preprocessing"}),
        "text_model": config.text_model.fingerprint,
        "mode": mode.value,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "patience": patience,
        "augment": asdict(augment),
        "init_from": init_summary,
    }
    train_source = sources[Split.TRAIN]
    weights = class_weights(train_source.labels).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    state = TrainingState()
    checkpoint_dir = work_dir / "checkpoints"
    if resume:
        payload = load_checkpoint(checkpoint_dir, fingerprint)
        if payload is not None:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            state = payload["state"]
            restore_random_states(payload["random_states"])
            log.info("training_resumed", work_dir=str(work_dir), epoch=state.epoch)
        else:
            log.info("training_resume_without_checkpoint", work_dir=str(work_dir))

    train_model = wrap_for_training(model, device, context)
    sampler = dist_tools.GlobalBatchSampler(len(train_source), batch_size, seed, context)
    run_epochs(
        model,
        train_model,
        sources,
        sampler,
        optimizer,
        weights,
        state,
        epochs=epochs,
        patience=patience,
        seed=seed,
        draw_settings=augment,
        device=device,
        context=context,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        progress=progress,
    )

    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    if encoders is not None:
        attach_encoders(model, encoders)
    # Calibrate and evaluate the complete network on crops, as the bundle will run.
    validation = evaluate(model, crop_sources[Split.VALIDATION], weights, device)
    temperature = fit_temperature(validation.logits, validation.labels)
    model.set_temperature(temperature)

    training_data = training_data_summary(
        cohort, crops.report, seed=seed, external_centres=external_centres
    )
    training_data.update(
        mode=mode.value,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        patience=patience,
        # Two-stage training trains on cached features, so only modality dropout applies.
        augmentation=(
            asdict(augment)
            if mode is TrainingMode.END_TO_END
            else {"modality_dropout": augment.modality_dropout}
        ),
        init_from=init_summary,
        world_size=context.world_size,
        device=device.type,
    )
    metrics: dict[str, Any] = {
        "selection": "validation macro AUC (classes present in validation)",
        "temperature": temperature,
        "best_validation_selection_metric": (
            state.best_metric if math.isfinite(state.best_metric) else None
        ),
    }
    bundle_dir = None
    if context.is_main:
        metrics.update(
            _evaluate_splits(model, crop_sources, weights, device, work_dir, seed, n_bootstrap)
        )
        final_config = config.model_copy(
            update={"training_data": training_data, "metrics": metrics}
        )
        bundle_dir = save_bundle(model.cpu(), final_config, out_dir, overwrite=overwrite)
    dist_tools.barrier(context)
    log.info(
        "training_finished",
        bundle=str(out_dir),
        mode=mode.value,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        temperature=round(temperature, 4),
        test_macro_auc=metrics.get("test", {}).get("macro_auc"),
        duration_s=round(time.perf_counter() - started, 1),
    )
    return FitResult(
        bundle_dir=bundle_dir,
        work_dir=work_dir,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stopped_early=state.stopped_early,
        temperature=temperature,
        metrics=metrics,
        training_data=training_data,
        history=state.history,
    )


def _evaluate_splits(
    model: torch.nn.Module,
    sources: dict[Split, CropSource],
    weights: torch.Tensor,
    device: torch.device,
    work_dir: Path,
    seed: int,
    n_bootstrap: int,
) -> dict[str, Any]:
    model.to(device)
    results: dict[str, Any] = {}
    for split in (Split.VALIDATION, Split.TEST, Split.EXTERNAL):
        source = sources.get(split)
        if source is None or len(source) == 0:
            continue
        evaluation = evaluate(model, source, weights, device)
        logits = torch.from_numpy(evaluation.logits)
        probabilities = torch.softmax(logits / model.temperature.cpu(), dim=1).double().numpy()
        results[split.value] = evaluate_split(
            source.hip_ids,
            source.patient_ids,
            source.labels,
            probabilities,
            split,
            work_dir / "evaluation",
            seed=seed,
            n_bootstrap=n_bootstrap,
        )
    return results
