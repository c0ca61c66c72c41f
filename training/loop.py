"""One training epoch, one validation pass, and the early-stopping rule.

The loss is class-weighted cross-entropy summed over a process's hips, divided
by the global batch size and multiplied by ``world_size``. DDP averages the
gradients over processes, so every run computes the gradient of the mean loss
over the global batch, whatever the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training import distributed as dist_tools
from hipfuse.training.augment import AugmentSettings
from hipfuse.training.batches import EpochDraw, HipSource
from hipfuse.training.checkpoint import TrainingState, save_checkpoint
from hipfuse.training.cohort import Split
from hipfuse.training.delong import binary_auc
from hipfuse.training.distributed import DistributedContext, GlobalBatchSampler

log = structlog.get_logger(__name__)

EVALUATION_BATCH = 32
"""Hips per forward pass when evaluating (no gradients)."""


@dataclass(frozen=True)
class Evaluation:
    """Outputs of the model over one split, in the split's order.

    Attributes
    ----------
    logits
        ``(n, classes)`` raw logits.
    labels
        True class indices.
    loss
        Mean class-weighted cross-entropy.
    class_auc
        One-vs-rest AUC per class, ``NaN`` when the split lacks the class or its complement.
    """

    logits: np.ndarray
    labels: np.ndarray
    loss: float
    class_auc: list[float]

    @property
    def macro_auc(self) -> float:
        """Mean of the class AUCs, ``NaN`` if any is undefined."""
        values = np.asarray(self.class_auc)
        return float(values.mean()) if not np.isnan(values).any() else float("nan")

    @property
    def selection_metric(self) -> float:
        """Macro AUC over the classes present in the split, which early stopping maximises.

        A small validation split may lack a class. That class's AUC is then
        undefined and the mean runs over the other classes, so early stopping
        still works.
        """
        values = np.asarray(self.class_auc)
        defined = values[~np.isnan(values)]
        return float(defined.mean()) if defined.size else float("nan")


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Return inverse-frequency class weights ``n / (classes present * n_c)``.

    A class absent from ``labels`` gets weight 0; it has no hip to weigh.
    """
    counts = np.bincount(labels, minlength=len(HIP_CLASSES)).astype(np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = labels.size / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def train_epoch(
    model: nn.Module,
    source: HipSource,
    sampler: GlobalBatchSampler,
    optimizer: torch.optim.Optimizer,
    weights: torch.Tensor,
    draw: EpochDraw,
    device: torch.device,
    context: DistributedContext,
    on_batch: Callable[[], None] | None = None,
) -> float:
    """Run one epoch of optimisation and return the mean training loss of this process's hips."""
    # NOTE: batches are read, augmented and normalised in this process between
    # steps; with the default preset on a GPU this can leave the GPU waiting.
    model.train()
    total_loss = 0.0
    total_hips = 0
    for indices, global_size in sampler.epoch(draw.epoch):
        batch = source.batch(indices.tolist(), device, draw)
        output = model(batch.radiograph, batch.ct, batch.text, batch.mask)
        per_hip = F.cross_entropy(output.logits, batch.labels, weight=weights, reduction="none")
        loss = per_hip.sum() * (context.world_size / global_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(per_hip.detach().sum())
        total_hips += len(batch)
        if on_batch is not None:
            on_batch()
    return total_loss / max(total_hips, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, source: HipSource, weights: torch.Tensor, device: torch.device
) -> Evaluation:
    """Run the model in eval mode over every hip of ``source`` (no augmentation)."""
    was_training = model.training
    model.eval()
    logits = []
    for start in range(0, len(source), EVALUATION_BATCH):
        indices = list(range(start, min(start + EVALUATION_BATCH, len(source))))
        batch = source.batch(indices, device)
        logits.append(model(batch.radiograph, batch.ct, batch.text, batch.mask).logits.float())
    model.train(was_training)
    all_logits = torch.cat(logits) if logits else torch.zeros((0, len(HIP_CLASSES)))
    labels = torch.from_numpy(source.labels).to(all_logits.device)
    loss = F.cross_entropy(
        all_logits, labels, weight=weights.to(all_logits.device), reduction="sum"
    )
    loss_value = float(loss) / max(len(source), 1)
    probabilities = torch.softmax(all_logits, dim=1).cpu().numpy()
    class_auc = [
        binary_auc(source.labels == k, probabilities[:, k]) for k in range(len(HIP_CLASSES))
    ]
    return Evaluation(all_logits.cpu().numpy(), source.labels.copy(), loss_value, class_auc)


def run_epochs(
    model: torch.nn.Module,
    train_model: torch.nn.Module,
    sources: dict[Split, HipSource],
    sampler: dist_tools.GlobalBatchSampler,
    optimizer: torch.optim.Optimizer,
    weights: torch.Tensor,
    state: TrainingState,
    *,
    epochs: int,
    patience: int,
    seed: int,
    draw_settings: AugmentSettings,
    device: torch.device,
    context: dist_tools.DistributedContext,
    checkpoint_dir: Path,
    fingerprint: dict[str, Any],
    progress: bool,
) -> None:
    """Train until ``epochs`` or early stopping, checkpointing after every epoch."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=epochs,
        initial=min(state.epoch, epochs),
        desc="training",
        unit="epoch",
        disable=not progress,
    )
    with bar:
        for epoch in range(state.epoch, epochs):
            if state.stopped_early:
                break
            epoch_started = time.perf_counter()
            # nn.Dropout draws from the global generator: reseed it per epoch so a
            # resumed run draws what the uninterrupted run drew.
            torch.manual_seed(_epoch_seed(seed, epoch))
            draw = EpochDraw(seed=seed, epoch=epoch, augment=draw_settings)
            train_loss = train_epoch(
                train_model,
                sources[Split.TRAIN],
                sampler,
                optimizer,
                weights,
                draw,
                device,
                context,
            )
            validation = evaluate(model, sources[Split.VALIDATION], weights, device)
            metric = validation.selection_metric
            improved = np.isfinite(metric) and metric > state.best_metric
            if improved:
                state.best_metric = float(metric)
                state.best_epoch = epoch
                state.epochs_without_improvement = 0
                state.best_state = {
                    name: tensor.detach().cpu().clone()
                    for name, tensor in model.state_dict().items()
                }
            else:
                state.epochs_without_improvement += 1
            state.epoch = epoch + 1
            record = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "validation_loss": round(validation.loss, 6),
                "validation_macro_auc": _finite_or_none(validation.macro_auc),
                "validation_selection_metric": _finite_or_none(metric),
                "seconds": round(time.perf_counter() - epoch_started, 3),
            }
            state.history.append(record)
            if state.epochs_without_improvement >= patience:
                state.stopped_early = True
            if context.is_main:
                save_checkpoint(
                    checkpoint_dir,
                    fingerprint=fingerprint,
                    model_state=model.state_dict(),
                    optimizer_state=optimizer.state_dict(),
                    state=state,
                )
            dist_tools.barrier(context)
            log.info("epoch_finished", **record, improved=bool(improved))
            bar.set_postfix(loss=f"{train_loss:.3f}", val_auc=f"{metric:.3f}")
            bar.update()


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 104729]).generate_state(1)[0])


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None
