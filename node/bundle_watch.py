"""Hot swap of the model bundle: watch ``[model] bundle_dir`` and switch to a new, valid bundle.

The watcher notices a change of the bundle folder in three ways. A watchdog
observer watches the folder and its parent, because a rename or a symbolic
link swap changes the parent. A periodic check also covers file systems
without change events. What counts as a change is the bundle's state on disk:
the folder's resolved path and the inode, size and modification time of
``bundle.json`` and ``weights.safetensors``.

Once that state has stayed the same for ``settle_s`` seconds (a copy writes
several files), the new bundle is loaded in the watcher's thread with every
check of :func:`~hipfuse.inference.model.bundle.load_bundle` and one forward
pass on a small synthetic input. A bundle that passes goes to the worker
(:meth:`~hipfuse.node.worker.AnalysisWorker.swap_bundle`), which takes it up
before its next study. A bundle that fails is rejected with a
``bundle_rejected`` event, the old one keeps serving, and the same state on
disk is not tried again: the next change is.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from hipfuse.integrations.watched_folder import WatchThread

if TYPE_CHECKING:
    from hipfuse.inference.model.bundle import Bundle
    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.node.worker import AnalysisWorker

log = structlog.get_logger(__name__)

# File names of a bundle folder (hipfuse.inference.model.bundle); repeated here
# so that this module imports without torch.
_BUNDLE_FILES = ("bundle.json", "weights.safetensors")
# Spatial size of the synthetic inputs of the forward-pass check: large enough
# to pass every stride of a ResNet, small enough to cost milliseconds.
_CHECK_RADIOGRAPH_PX = 64
_CHECK_CT_VOXELS = (16, 32, 32)
# The softmax probabilities of one hip must sum to 1 within this tolerance.
_PROBABILITY_SUM_TOLERANCE = 1e-3

BundleLoader = Callable[[Path], "Bundle"]
# One file's (inode, size in bytes, modification time in ns), None when missing.
_FileState = tuple[int, int, int] | None


class SwapResult(StrEnum):
    """Result of :meth:`BundleWatcher.check` for the bundle folder."""

    NO_CHANGE = "no_change"
    SETTLING = "settling"
    SWAPPED = "swapped"
    UNCHANGED_BUNDLE = "unchanged_bundle"
    REJECTED = "rejected"


@dataclass(frozen=True)
class BundleState:
    """The bundle folder's state on disk; any difference counts as a change."""

    resolved_dir: str
    files: tuple[_FileState, ...]

    @classmethod
    def read(cls, bundle_dir: Path) -> BundleState:
        """Read the state of ``bundle_dir`` (missing files included as ``None``)."""
        files: list[_FileState] = []
        for name in _BUNDLE_FILES:
            try:
                stat = os.stat(bundle_dir / name)
            except OSError:
                files.append(None)
            else:
                files.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return cls(os.path.realpath(bundle_dir), tuple(files))


def check_forward_pass(bundle: Bundle) -> None:
    """Run the bundle's network once on small random inputs of every modality.

    Raises
    ------
    BundleError
        ``bundle_forward_pass_failed`` when the pass raises, or its
        probabilities have the wrong shape, are not finite or do not sum to 1.
    """
    import torch

    from hipfuse.inference.model.bundle import BundleError

    architecture = bundle.config.architecture
    classes = len(bundle.config.class_names)
    device = bundle.device
    generator = torch.Generator().manual_seed(0)
    radiograph = torch.randn(1, 1, _CHECK_RADIOGRAPH_PX, _CHECK_RADIOGRAPH_PX, generator=generator)
    ct = torch.randn(1, 1, *_CHECK_CT_VOXELS, generator=generator)
    text = torch.randn(1, architecture.text_dim, generator=generator)
    mask = torch.ones(1, 3, dtype=torch.bool)
    try:
        with torch.inference_mode():
            output = bundle.model(
                radiograph.to(device), ct.to(device), text.to(device), mask.to(device)
            )
        probabilities = output.probabilities.float().cpu()
    except (RuntimeError, ValueError) as error:
        raise BundleError(
            "bundle_forward_pass_failed",
            f"the network of bundle {bundle.path} failed on a synthetic input: {error}",
        ) from error
    if tuple(probabilities.shape) != (1, classes):
        raise BundleError(
            "bundle_forward_pass_failed",
            f"the network of bundle {bundle.path} returned probabilities of shape "
            f"{tuple(probabilities.shape)}, expected (1, {classes})",
        )
    if not bool(torch.isfinite(probabilities).all()):
        raise BundleError(
            "bundle_forward_pass_failed",
            f"the network of bundle {bundle.path} returned non-finite probabilities on a "
            "synthetic input: the weights hold NaN or infinite values",
        )
    total = float(probabilities.sum())
    if abs(total - 1.0) > _PROBABILITY_SUM_TOLERANCE:
        raise BundleError(
            "bundle_forward_pass_failed",
            f"the probabilities of bundle {bundle.path} sum to {total:.4f}, not 1",
        )


def load_checked_bundle(bundle_dir: Path, device: str | None) -> Bundle:
    """Load a bundle with every check of ``load_bundle`` plus :func:`check_forward_pass`."""
    from hipfuse.inference.model.bundle import load_bundle

    bundle = load_bundle(bundle_dir, device=device)
    check_forward_pass(bundle)
    return bundle


class _WakeOnEvent(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()


class BundleWatcher:
    """Switch the worker to a new bundle when the bundle folder changes on disk.

    Parameters
    ----------
    bundle_dir
        The folder the node loaded its bundle from (``[model] bundle_dir``).
    worker
        Receives each new bundle through ``swap_bundle``.
    serving
        Configuration of the bundle the worker uses now.
    device
        ``device`` argument of ``load_bundle``; ``None`` picks CUDA when available.
    settle_s
        Seconds the folder's state must stay unchanged before a new bundle is loaded.
    poll_interval_s
        Seconds between checks of the folder without a change event.
    loader
        Loads and checks a bundle folder; tests may pass another.
    clock
        Monotonic seconds; tests pass a controllable clock.
    """

    def __init__(
        self,
        bundle_dir: Path,
        worker: AnalysisWorker,
        serving: BundleConfig,
        *,
        device: str | None = None,
        settle_s: float = 5.0,
        poll_interval_s: float = 2.0,
        loader: BundleLoader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.worker = worker
        self.serving = serving
        self.settle_s = settle_s
        self.poll_interval_s = poll_interval_s
        self.loader = loader or functools.partial(load_checked_bundle, device=device)
        self.clock = clock
        self._serving_state = BundleState.read(self.bundle_dir)
        self._rejected_state: BundleState | None = None
        self._pending: tuple[BundleState, float] | None = None
        self._wake = threading.Event()
        self._watch = WatchThread("hipfuse-bundle-watch")

    def start(self) -> None:
        """Start the observer and the checking thread."""
        observer = Observer()
        handler = _WakeOnEvent(self._wake)
        watched = [self.bundle_dir.parent]
        if self.bundle_dir.is_dir():
            watched.append(self.bundle_dir)
        for folder in watched:
            try:
                observer.schedule(handler, str(folder), recursive=False)
            except OSError as error:
                # The periodic check still finds changes, only later.
                log.warning("bundle_watch_unavailable", path=str(folder), error=str(error))
        self._watch.start(observer, self._run)
        log.info(
            "bundle_watch_started",
            bundle_dir=str(self.bundle_dir),
            settle_s=self.settle_s,
            poll_interval_s=self.poll_interval_s,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching, waiting up to ``timeout_s`` for a bundle being loaded."""
        # Set stopping first, so the woken thread finds it set and returns.
        self._watch.stopping.set()
        self._wake.set()
        self._watch.stop(timeout_s)
        log.info("bundle_watch_stopped", bundle_dir=str(self.bundle_dir))

    def check(self) -> SwapResult:
        """Compare the folder with the serving bundle and load a settled change."""
        state = BundleState.read(self.bundle_dir)
        if state in (self._serving_state, self._rejected_state):
            self._pending = None
            return SwapResult.NO_CHANGE
        now = self.clock()
        if self._pending is None or self._pending[0] != state:
            if self._pending is None:
                log.info("bundle_change_detected", bundle_dir=str(self.bundle_dir))
            self._pending = (state, now)
            return SwapResult.SETTLING
        if now - self._pending[1] < self.settle_s:
            return SwapResult.SETTLING
        self._pending = None
        return self._load(state)

    def _load(self, state: BundleState) -> SwapResult:
        from hipfuse.inference.model.bundle import BundleError

        started = time.perf_counter()
        try:
            bundle = self.loader(self.bundle_dir)
        except BundleError as error:
            return self._reject(state, error.code, str(error))
        except Exception as error:  # a file removed while it was read, or a torch error
            return self._reject(state, "bundle_load_failed", f"{type(error).__name__}: {error}")
        load_s = round(time.perf_counter() - started, 3)
        if BundleState.read(self.bundle_dir) != state:
            # The files changed while they were read: wait for them to settle again.
            log.info("bundle_changed_while_loading", bundle_dir=str(self.bundle_dir))
            return SwapResult.SETTLING
        self._serving_state = state
        self._rejected_state = None
        config = bundle.config
        if (config.weights_sha256, config.version) == (
            self.serving.weights_sha256,
            self.serving.version,
        ):
            log.info(
                "bundle_unchanged",
                bundle=config.name,
                version=config.version,
                bundle_dir=str(self.bundle_dir),
            )
            return SwapResult.UNCHANGED_BUNDLE
        from hipfuse.inference.pipeline import analyze_study

        self.worker.swap_bundle(functools.partial(analyze_study, bundle), config)
        log.info(
            "bundle_swap_scheduled",
            bundle=config.name,
            version=config.version,
            weights_sha256=config.weights_sha256,
            previous_version=self.serving.version,
            load_s=load_s,
        )
        self.serving = config
        return SwapResult.SWAPPED

    def _reject(self, state: BundleState, code: str, message: str) -> SwapResult:
        self._rejected_state = state
        log.warning(
            "bundle_rejected",
            bundle_dir=str(self.bundle_dir),
            error_code=code,
            error=message,
            serving_bundle=self.serving.name,
            serving_version=self.serving.version,
        )
        return SwapResult.REJECTED

    def _run(self) -> None:
        while not self._watch.stopping.is_set():
            timeout_s = self.poll_interval_s
            if self._pending is not None:
                # Wake when the pending change has settled, not a poll interval later.
                remaining_s = self.settle_s - (self.clock() - self._pending[1])
                timeout_s = min(timeout_s, max(remaining_s, 0.05))
            self._wake.wait(timeout_s)
            self._wake.clear()
            if self._watch.stopping.is_set():
                return
            try:
                self.check()
            except Exception:  # keep serving the current bundle, so the error is only logged
                log.exception("bundle_watch_error", bundle_dir=str(self.bundle_dir))
