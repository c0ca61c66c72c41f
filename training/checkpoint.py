"""Training checkpoints: everything needed to continue a run as if it never stopped.

A checkpoint contains the model and optimizer states, the early-stopping state
(best weights, best validation macro AUC, epochs without improvement), the
history, and the random states of Python, NumPy and torch. It also holds a
fingerprint of the run (cohort, configuration, hyperparameters except the
number of epochs), and :func:`load_checkpoint` rejects a checkpoint of another run.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE_NAME = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the difference."""


@dataclass
class TrainingState:
    """Progress of a run, saved after every epoch.

    Attributes
    ----------
    epoch
        Epochs completed (the next epoch to run has this index).
    best_metric
        Best validation macro AUC so far (``-inf`` before the first epoch).
    best_epoch
        Epoch index that reached ``best_metric``.
    epochs_without_improvement
        Epochs since ``best_epoch``; training stops when it reaches the patience.
    best_state
        Model state at ``best_epoch``, on the CPU.
    history
        One record per epoch: losses, validation figures, seconds.
    stopped_early
        Whether early stopping ended the run.
    """

    epoch: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def random_states() -> dict[str, Any]:
    """Capture the random states of Python, NumPy, torch and CUDA (if used)."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global state is what is saved)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Restore what :func:`random_states` captured."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    directory: Path,
    *,
    fingerprint: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: TrainingState,
) -> Path:
    """Write the checkpoint atomically (temporary file, then rename) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE_NAME
    payload = {
        "fingerprint": fingerprint,
        "model": {name: tensor.detach().cpu() for name, tensor in model_state.items()},
        "optimizer": optimizer_state,
        "state": state.__dict__,
        "random_states": random_states(),
    }
    handle, temporary = tempfile.mkstemp(prefix=".last.", suffix=".pt", dir=directory)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(directory: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """Load the checkpoint of this run, or return ``None`` when there is none.

    Returns
    -------
    dict or None
        ``model``, ``optimizer``, ``state`` (a :class:`TrainingState`) and
        ``random_states``.

    Raises
    ------
    CheckpointError
        When the checkpoint belongs to another cohort, configuration or setting.
    """
    path = directory / CHECKPOINT_FILE_NAME
    if not path.is_file():
        return None
    # weights_only=False because the file contains Python and NumPy random
    # states, and this program wrote it into the run's own work folder.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    saved = payload.get("fingerprint", {})
    differences = sorted(
        key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key)
    )
    if differences:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: {', '.join(differences)} differ. "
            "Start without --resume, or use another work folder"
        )
    payload["state"] = TrainingState(**payload["state"])
    return payload
