"""Modality ablation: train and test the model on every non-empty subset of its three inputs.

Every subset uses the same architecture, split, seed, initial weights and
cached crops; a subset differs only in the modality mask. Modalities outside
the subset are masked for every hip at training, validation and test time,
so the fusion network gives them zero attention and never reads them, as it
does for a hip without that input. Zhang et al. (Medicina 2026;62(2):250)
report such a table: every single modality, every pair, and all three.

Every subset is tested on the same hips, those of the test split with all
three inputs, so the paired DeLong test against the full model compares
predictions for identical cases. Training and validation use every hip that
has at least one modality of the subset.

Probabilities are the softmax of the logits without temperature scaling:
AUC, accuracy, sensitivity and specificity at the argmax decision do not
depend on a temperature.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from hipfuse.inference.model.bundle import build_model
from hipfuse.inference.model.config import BundleConfig
from hipfuse.inference.types import INPUT_MODALITIES, InputModality
from hipfuse.training.augment import AugmentSettings
from hipfuse.training.batches import EpochDraw, HipSource
from hipfuse.training.checkpoint import TrainingState, load_checkpoint, restore_random_states
from hipfuse.training.cohort import Cohort, Split
from hipfuse.training.distributed import DistributedContext, GlobalBatchSampler
from hipfuse.training.fit import TrainingMode
from hipfuse.training.fit_setup import (
    FitError,
    check_splits,
    feature_sources,
    load_text_encoder,
    prepare_crops_once,
    seed_everything,
    select_device,
    split_sources,
)
from hipfuse.training.loop import class_weights, evaluate, run_epochs
from hipfuse.training.splits import assign_splits
from hipfuse.training.two_stage import detach_encoders

log = structlog.get_logger(__name__)

ModalitySubset = tuple[InputModality, ...]

# The seven non-empty subsets in the order the table lists them: singles, pairs, all three.
MODALITY_SUBSETS: tuple[ModalitySubset, ...] = (
    (InputModality.RADIOGRAPH,),
    (InputModality.CT,),
    (InputModality.TEXT,),
    (InputModality.RADIOGRAPH, InputModality.CT),
    (InputModality.RADIOGRAPH, InputModality.TEXT),
    (InputModality.CT, InputModality.TEXT),
    tuple(INPUT_MODALITIES),
)
FULL_SUBSET: ModalitySubset = tuple(INPUT_MODALITIES)


def subset_name(subset: Sequence[InputModality]) -> str:
    """Return the subset's name, its modalities joined by ``+`` in input order."""
    return "+".join(m.value for m in INPUT_MODALITIES if m in subset)


def subset_keep(subset: Sequence[InputModality]) -> np.ndarray:
    """Return the ``(3,)`` bool mask of the subset in ``INPUT_MODALITIES`` order."""
    return np.array([m in subset for m in INPUT_MODALITIES], dtype=bool)


class MaskedSource(HipSource):
    """Some hips of another source, with the modalities outside a subset masked.

    Parameters
    ----------
    source
        The source whose hips and inputs are reused (crops or cached features).
    keep
        ``(3,)`` bool: modalities of the subset.
    rows
        Indices into ``source`` of the hips to keep, in order.
    """

    def __init__(self, source: HipSource, keep: np.ndarray, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        super().__init__(
            [source.hip_ids[r] for r in rows],
            [source.patient_ids[r] for r in rows],
            source.labels[rows],
            source.mask[rows] & keep[None, :],
        )
        self.source = source
        self.rows = rows
        self.keep = keep

    def load(
        self,
        index: int,
        present: np.ndarray,
        rng: np.random.Generator | None,
        draw: EpochDraw | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Load the hip from the wrapped source with the subset's modalities only."""
        return self.source.load(int(self.rows[index]), present & self.keep, rng, draw)


def mask_source(source: HipSource, keep: np.ndarray) -> MaskedSource:
    """Return the hips of ``source`` that keep at least one modality of the subset."""
    rows = np.flatnonzero((source.mask & keep[None, :]).any(axis=1))
    return MaskedSource(source, keep, rows)


@dataclass
class SubsetRun:
    """Outcome of training one modality subset.

    Attributes
    ----------
    subset
        Modalities used.
    probabilities
        ``(n_test, classes)`` softmax probabilities on the common test hips.
    n_train, n_validation
        Hips that trained and selected the model.
    best_epoch, epochs_run
        Early-stopping outcome.
    best_validation_metric
        Validation macro AUC over the classes present, at ``best_epoch``.
    seconds
        Wall time of the subset's training and testing.
    """

    subset: ModalitySubset
    probabilities: np.ndarray
    n_train: int
    n_validation: int
    best_epoch: int
    epochs_run: int
    best_validation_metric: float
    seconds: float


@dataclass
class AblationRuns:
    """Every subset's run and the common test hips they were tested on.

    Attributes
    ----------
    runs
        One run per subset, in :data:`MODALITY_SUBSETS` order.
    hip_ids, patient_ids, labels
        The common test hips (test split, all three inputs present).
    excluded_test_hips
        Test hips left out because an input was missing.
    settings
        Training settings shared by every subset.
    """

    runs: list[SubsetRun]
    hip_ids: list[str]
    patient_ids: list[str]
    labels: np.ndarray
    excluded_test_hips: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def run_ablation(
    cohort: Cohort,
    config: BundleConfig,
    work_dir: Path | str,
    *,
    subsets: Sequence[ModalitySubset] = MODALITY_SUBSETS,
    mode: TrainingMode | str = TrainingMode.TWO_STAGE,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    patience: int = 8,
    resume: bool = False,
    device: str | torch.device | None = None,
    cache_dir: Path | str | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    augment: AugmentSettings | None = None,
    workers: int = 1,
    progress: bool = True,
) -> AblationRuns:
    """Train and test the model on each modality subset of ``subsets``.

    Parameters mean what they mean for :func:`hipfuse.training.fit.fit`;
    ``work_dir`` receives the checkpoints (``subsets/<name>/``), image
    features and, unless ``cache_dir`` is given, the crop cache.

    Raises
    ------
    FitError
        When a split is empty or has one class, a subset leaves the training
        or validation split empty, or no test hip has all three inputs.
    """
    mode = TrainingMode(mode)
    work_dir = Path(work_dir)
    augment = augment if augment is not None else AugmentSettings()
    context = DistributedContext()
    target = select_device(device, context)
    if epochs < 1 or patience < 1 or batch_size < 1:
        raise FitError(
            f"epochs {epochs}, patience {patience} and batch size {batch_size} must each be "
            "at least 1"
        )
    if not subsets:
        raise FitError("no modality subset given: pass at least one")

    seed_everything(seed)
    cohort = assign_splits(
        cohort, test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed
    )
    text_encoder = load_text_encoder(config)
    crops = prepare_crops_once(
        cohort,
        config,
        Path(cache_dir) if cache_dir is not None else work_dir / "cache",
        text_encoder,
        workers,
        progress,
        context,
    )
    crop_sources = split_sources(cohort, crops, config)
    check_splits(crop_sources)
    sources: dict[Split, HipSource] = dict(crop_sources)
    if mode is TrainingMode.TWO_STAGE:
        # Every subset starts from the same seeded encoders, so their features serve all.
        encoder_model = build_model(config.architecture, seed=seed).to(target)
        sources = feature_sources(
            encoder_model, crop_sources, work_dir / "features", target, progress, context
        )
        del encoder_model

    test_source = sources[Split.TEST]
    complete = np.flatnonzero(test_source.mask.all(axis=1))
    excluded = [test_source.hip_ids[i] for i in np.flatnonzero(~test_source.mask.all(axis=1))]
    if complete.size == 0:
        raise FitError(
            "no test hip has a radiograph, a CT and a note: the ablation compares subsets on "
            "hips with all three inputs; add such hips or change the split"
        )
    settings = {
        "cohort_sha256": cohort.content_hash(),
        "config": config.model_dump(mode="json", include={"architecture", "preprocessing"}),
        "text_model": config.text_model.fingerprint,
        "mode": mode.value,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "patience": patience,
        "augment": asdict(augment),
        "device": target.type,
    }
    runs = []
    for subset in subsets:
        keep = subset_keep(subset)
        subset_sources = {split: mask_source(source, keep) for split, source in sources.items()}
        subset_sources[Split.TEST] = MaskedSource(test_source, keep, complete)
        runs.append(
            _train_subset(
                subset,
                config,
                subset_sources,
                settings,
                work_dir / "subsets" / subset_name(subset),
                device=target,
                resume=resume,
                progress=progress,
                context=context,
                augment=augment,
            )
        )
    return AblationRuns(
        runs=runs,
        hip_ids=[test_source.hip_ids[i] for i in complete],
        patient_ids=[test_source.patient_ids[i] for i in complete],
        labels=test_source.labels[complete].copy(),
        excluded_test_hips=excluded,
        settings=settings,
    )


def _train_subset(
    subset: ModalitySubset,
    config: BundleConfig,
    sources: dict[Split, MaskedSource],
    settings: dict[str, Any],
    subset_dir: Path,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
    context: DistributedContext,
    augment: AugmentSettings,
) -> SubsetRun:
    started = time.perf_counter()
    name = subset_name(subset)
    for split in (Split.TRAIN, Split.VALIDATION):
        if len(sources[split]) == 0:
            raise FitError(
                f"subset {name}: no {split.value} hip has any of its modalities; add hips with "
                "these inputs or leave this subset out"
            )
    check_splits(sources)

    seed = settings["seed"]
    seed_everything(seed)
    model = build_model(config.architecture, seed=seed)
    if settings["mode"] == TrainingMode.TWO_STAGE.value:
        detach_encoders(model)
    model.to(device)
    train_source = sources[Split.TRAIN]
    weights = class_weights(train_source.labels).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
    )

    fingerprint = {key: value for key, value in settings.items() if key != "epochs"}
    fingerprint["subset"] = name
    state = TrainingState()
    checkpoint_dir = subset_dir / "checkpoints"
    if resume:
        payload = load_checkpoint(checkpoint_dir, fingerprint)
        if payload is not None:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            state = payload["state"]
            restore_random_states(payload["random_states"])
            log.info("ablation_subset_resumed", subset=name, epoch=state.epoch)

    run_epochs(
        model,
        model,
        dict(sources),
        GlobalBatchSampler(len(train_source), settings["batch_size"], seed, context),
        optimizer,
        weights,
        state,
        epochs=settings["epochs"],
        patience=settings["patience"],
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
    test = evaluate(model, sources[Split.TEST], weights, device)
    probabilities = torch.softmax(torch.from_numpy(test.logits).double(), dim=1).numpy()
    seconds = time.perf_counter() - started
    log.info(
        "ablation_subset_trained",
        subset=name,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        test_macro_auc=None if np.isnan(test.macro_auc) else round(test.macro_auc, 4),
        duration_s=round(seconds, 1),
    )
    return SubsetRun(
        subset=tuple(subset),
        probabilities=probabilities,
        n_train=len(train_source),
        n_validation=len(sources[Split.VALIDATION]),
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_validation_metric=float(state.best_metric),
        seconds=seconds,
    )
