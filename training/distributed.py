"""Data-parallel training: process group set-up and sharding of global batches.

``fit`` runs unchanged under ``torchrun --nproc_per_node=N``: every process
reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, joins a
process group (gloo on CPU, NCCL on CUDA) and trains a
``DistributedDataParallel`` copy of the model. Only rank 0 writes checkpoints
and the bundle.

Sharding keeps the effective batch of a single-process run: all processes
shuffle with the same seed, cut the permutation into global batches of
``batch_size`` hips, and process ``rank`` takes every ``world_size``-th hip of
each global batch. Each process divides its summed loss by the global batch
size and multiplies by ``world_size``, so the gradient that DDP averages is the
single-process gradient. ``torch.utils.data.DistributedSampler`` is not used
because it shards the whole epoch rather than each batch and pads with
repeated samples, which changes the batches.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process in a data-parallel run.

    Attributes
    ----------
    rank, world_size
        Global rank of this process and number of processes.
    local_rank
        Rank on this machine; selects the CUDA device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def context_from_environment() -> DistributedContext:
    """Read the rank variables that ``torchrun`` sets; a single process without them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_process_group(context: DistributedContext, device_type: str) -> bool:
    """Join the default process group (gloo for CPU, NCCL for CUDA) unless already joined.

    ``MASTER_ADDR`` and ``MASTER_PORT`` must be set, as ``torchrun`` does.

    Returns
    -------
    bool
        Whether this call created the group, so the caller knows to destroy it.
    """
    import torch.distributed as dist

    if not context.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    return True


def barrier(context: DistributedContext) -> None:
    """Wait for every process; a no-op in a single-process run."""
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def destroy_process_group() -> None:
    """Leave the default process group if there is one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now (for tests and local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GlobalBatchSampler:
    """Yield this process's share of each global batch of a shuffled epoch.

    Parameters
    ----------
    n_samples
        Hips in the training split.
    batch_size
        Hips per global batch, summed over all processes.
    seed
        Shuffling seed; the permutation of epoch ``e`` depends on ``(seed, e)`` only.
    context
        Rank and world size.

    Notes
    -----
    A final global batch with fewer hips than processes is dropped, because a
    process with no hip would have no loss to contribute. A single-process run
    therefore trains on up to ``world_size - 1`` more hips per epoch than a run
    over ``world_size`` processes. The two match when the split size leaves no
    such remainder.
    """

    def __init__(
        self, n_samples: int, batch_size: int, seed: int, context: DistributedContext
    ) -> None:
        if batch_size < context.world_size:
            raise ValueError(
                f"batch size {batch_size} is smaller than the {context.world_size} processes: "
                "each process needs at least one hip per batch"
            )
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.seed = seed
        self.context = context

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Return every global batch of ``epoch`` as arrays of sample indices."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 7919]))
        order = rng.permutation(self.n_samples)
        batches = [
            order[start : start + self.batch_size]
            for start in range(0, self.n_samples, self.batch_size)
        ]
        return [batch for batch in batches if batch.size >= self.context.world_size]

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """Yield ``(indices of this process, size of the global batch)`` for ``epoch``."""
        for batch in self.global_batches(epoch):
            yield batch[self.context.rank :: self.context.world_size], int(batch.size)


def fit_in_local_processes(world_size: int, *fit_args: object, **fit_kwargs: object) -> None:
    """Run :func:`hipfuse.training.fit.fit` in ``world_size`` CPU processes on this machine.

    The processes talk over gloo on 127.0.0.1 at a free port, as ``torchrun``
    would set them up; rank 0 writes the bundle. Arguments are passed to
    ``fit`` unchanged and must be picklable.

    Raises
    ------
    torch.multiprocessing.ProcessRaisedException
        When any process fails; the message carries its traceback.
    """
    import torch.multiprocessing as mp

    port = free_loopback_port()
    mp.spawn(
        _fit_process,
        args=(world_size, port, fit_args, fit_kwargs),
        nprocs=world_size,
        join=True,
    )


def _fit_process(rank: int, world_size: int, port: int, fit_args: tuple, fit_kwargs: dict) -> None:
    import torch

    from hipfuse.training.fit import fit

    # Share the cores between the processes instead of oversubscribing them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=rank)
    fit(*fit_args, **fit_kwargs, device="cpu", distributed=context)
