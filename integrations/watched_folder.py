"""Building blocks of the watched folders: files that settle, change events, a watch thread.

A site that exports to disk writes a file in pieces, so a watcher takes a
file only once it is complete. A file is complete when it was renamed into
the folder (the usual way to publish a finished file), or when its size and
modification time have stayed the same for a settling time. The HL7 folder,
the node's DICOM drop folder and its bundle watcher build on these pieces.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import EventsLostEvent, FileSystemEvent, FileSystemEventHandler

# (size in bytes, modification time in ns) of a file.
FileSignature = tuple[int, int]
# Time a renamed-in file counts as first seen: long enough ago to be ready.
_RENAMED_IN = float("-inf")


class SettlingFiles:
    """Files waiting until they are complete, in a thread-safe queue.

    Parameters
    ----------
    clock
        Monotonic seconds; tests pass a controllable clock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # path -> (size, mtime_ns, clock time that signature was first seen).
        self._pending: dict[Path, tuple[int, int, float]] = {}
        # Files handled but left in place (permissions), by signature: ignored
        # until they change, so they are not handled again and again.
        self._held: dict[Path, FileSignature] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def note(self, path: Path, *, renamed_in: bool = False) -> None:
        """Queue a file; a renamed-in file is complete at once."""
        with self._lock:
            if renamed_in:
                self._pending[path] = (-1, -1, _RENAMED_IN)
            else:
                self._pending.setdefault(path, (-1, -1, self.clock()))

    def hold(self, path: Path) -> None:
        """Ignore a file that was handled but is still in place, until it changes."""
        try:
            stat = path.stat()
        except OSError:
            return
        with self._lock:
            self._held[path] = (stat.st_size, stat.st_mtime_ns)

    def release(self, path: Path) -> None:
        """Forget that a file was held, before it is handled again."""
        with self._lock:
            self._held.pop(path, None)

    def take_ready(self, settle_s: float) -> list[Path]:
        """Remove and return, sorted, the queued files that are complete.

        A file is complete when it was renamed in, or when its signature has
        not changed for ``settle_s`` seconds. Files that vanished are dropped.
        """
        now = self.clock()
        ready = []
        with self._lock:
            for path, (size, mtime_ns, since) in list(self._pending.items()):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                current = (stat.st_size, stat.st_mtime_ns)
                if self._held.get(path) == current:
                    del self._pending[path]
                elif since == _RENAMED_IN:
                    ready.append(path)
                elif current != (size, mtime_ns):
                    self._pending[path] = (*current, now)
                elif now - since >= settle_s:
                    ready.append(path)
            for path in ready:
                del self._pending[path]
        return sorted(ready)


class FolderEvents(FileSystemEventHandler):
    """Turn watchdog events into queued files and rescan requests.

    Parameters
    ----------
    note
        Called with each created, modified, closed or moved-in file, and
        whether it was moved in.
    request_rescan
        Called when events were lost, and for a folder created or moved in
        when ``rescan_new_folders`` is set: such a folder may already contain
        files that raise no event.
    rescan_new_folders
        Whether a new folder triggers a rescan (for recursive watches).
    """

    def __init__(
        self,
        note: Callable[[Path, bool], None],
        request_rescan: Callable[[], None],
        *,
        rescan_new_folders: bool = False,
    ) -> None:
        self.note = note
        self.request_rescan = request_rescan
        self.rescan_new_folders = rescan_new_folders

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Queue the event's file, or request a rescan for lost events and new folders."""
        if isinstance(event, EventsLostEvent):
            self.request_rescan()
            return
        if event.is_directory:
            if self.rescan_new_folders and event.event_type in ("created", "moved"):
                self.request_rescan()
            return
        if event.event_type == "moved":
            self.note(Path(os.fsdecode(event.dest_path)), True)
        elif event.event_type in ("created", "modified", "closed"):
            self.note(Path(os.fsdecode(event.src_path)), False)


class WatchThread:
    """A watchdog observer and a checking thread, started and stopped together.

    Parameters
    ----------
    name
        Name of the checking thread.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        # Set by stop(); the checking loop waits on it between checks.
        self.stopping = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def start(self, observer: Any, run: Callable[[], None]) -> None:
        """Start ``observer`` (already scheduled) and a daemon thread running ``run``."""
        observer.start()
        self._observer = observer
        self.stopping.clear()
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop the observer and wait up to ``timeout_s`` for each to end."""
        self.stopping.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def free_name(target: Path, companion_suffixes: tuple[str, ...] = ()) -> Path:
    """Return ``target``, or a free name beside it with a time stamp and counter.

    A name is free when neither it nor its companions (the name with each of
    ``companion_suffixes`` appended, such as a reason file) exist.

    Raises
    ------
    FileExistsError
        999 names with the same time stamp are taken.
    """

    def is_free(candidate: Path) -> bool:
        companions = [candidate.with_name(candidate.name + suffix) for suffix in companion_suffixes]
        return not any(path.exists() for path in (candidate, *companions))

    if is_free(target):
        return target
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for counter in range(1, 1000):
        candidate = target.with_name(f"{target.name}.{stamp}-{counter}")
        if is_free(candidate):
            return candidate
    raise FileExistsError(f"no free name for {target} after 999 tries; empty {target.parent}")


def delete_files_older_than(folder: Path, before: float) -> int:
    """Delete files under ``folder`` last modified before ``before`` (seconds since the epoch).

    Subfolders left empty are removed; ``folder`` itself stays. A missing
    folder counts as empty. Returns the number of files deleted.

    Raises
    ------
    OSError
        A file could not be deleted (other than being gone already).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    deleted = 0
    for root, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = Path(root) / name
            try:
                if path.lstat().st_mtime >= before:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
        if Path(root) != folder:
            try:
                Path(root).rmdir()
            except OSError:  # not empty: it still contains newer files
                pass
    return deleted
