"""Watched folder for HL7 v2 files, for sites that export messages as files.

A file is processed once it is complete: when it was renamed into the folder
(the usual way to publish a finished file), or when its size and modification
time have not changed for ``[hl7] watch_stable_s``. Names starting with a dot
or ending in ``.tmp``, ``.part``, ``.partial`` or ``.filepart`` are files still
being written and are left alone. A file may hold several messages: MLLP
framed, one after the other, or inside FHS/BHS batch envelopes. After all its
messages went through the same intake as MLLP, the file moves to ``done/``
when every message was accepted, or to ``failed/`` beside a
``<name>.reason.txt`` that lists each message's outcome. Logs and the
message store name a file by a random file id, which its reason file repeats.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.observers import Observer

from hipfuse.integrations.hl7.intake import HL7Intake, IntakeOutcome, IntakeResult
from hipfuse.integrations.hl7.mllp import START_BLOCK, FrameDecoder
from hipfuse.integrations.hl7.parser import UTF8_BOM
from hipfuse.integrations.watched_folder import (
    FolderEvents,
    SettlingFiles,
    WatchThread,
    delete_files_older_than,
    free_name,
)

log = structlog.get_logger(__name__)

DONE_DIR_NAME = "done"
FAILED_DIR_NAME = "failed"
REASON_SUFFIX = ".reason.txt"
_IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".filepart")
# Batch and file envelope segments around messages (HL7 v2 chapter 2, batch protocol).
_ENVELOPE_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
# A segment starts at the beginning of the data or after a CR or LF; CR and LF
# bytes never occur inside a multi-byte character of UTF-8 or GB 18030.
_SEGMENT_START = re.compile(rb"(?:^|(?<=[\r\n]))(?=[A-Z][A-Z0-9]{2})")


@dataclass(frozen=True)
class FileResult:
    """Outcome of one processed file."""

    path: Path
    moved_to: Path
    results: tuple[IntakeResult, ...]
    reason: str = ""
    # Random id that the logs and the message store use for the file.
    file_id: str = ""

    @property
    def failed(self) -> bool:
        """Whether the file went to ``failed/``."""
        return self.moved_to.parent.name == FAILED_DIR_NAME


def split_file_messages(data: bytes, max_message_bytes: int) -> list[bytes]:
    """Split the content of an HL7 file into message byte strings.

    MLLP-framed content is split at its frames; other content at each MSH
    segment, with batch envelope segments removed. A UTF-8 byte order mark
    before a message stays with it, where the parser removes it.
    """
    if START_BLOCK in data:
        decoder = FrameDecoder(max_message_bytes)
        frames = decoder.feed(data)
        leftover = decoder.close()
        if leftover is not None:
            frames.append(leftover)
        return [frame.payload for frame in frames]
    data = data.removeprefix(UTF8_BOM)
    messages: list[bytes] = []
    for chunk in _split_segments_keep_terminators(data):
        # A segment ID is followed by the field separator, never by a letter or
        # digit. This distinguishes an envelope segment from a note line "BTS ...".
        segment_id = chunk[:3] if not chunk[3:4].isalnum() else b""
        if segment_id in _ENVELOPE_SEGMENTS:
            continue
        if segment_id == b"MSH" or not messages:
            messages.append(chunk)
        else:
            messages[-1] += chunk
    return [message for message in messages if message.strip(b"\r\n\t ")]


def _split_segments_keep_terminators(data: bytes) -> list[bytes]:
    starts = [match.start() for match in _SEGMENT_START.finditer(data)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(data))
    return [data[a:b] for a, b in itertools.pairwise(starts) if a < b]


def _is_candidate(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and not name.lower().endswith(_IN_PROGRESS_SUFFIXES)


class HL7FolderWatcher:
    """Process HL7 files dropped into a folder, once each is complete.

    Parameters
    ----------
    watch_dir
        The folder; ``done/`` and ``failed/`` are created inside it.
    intake
        Stores and acknowledges each message of a file.
    stable_s
        Seconds a file's size and modification time must stay unchanged.
    poll_interval_s
        Seconds between checks of the files waiting to become stable.
    rescan_interval_s
        Seconds between full listings of the folder, which catch files whose
        events were lost.
    clock
        Monotonic seconds; tests pass a controllable clock.
    """

    def __init__(
        self,
        watch_dir: Path,
        intake: HL7Intake,
        *,
        stable_s: float,
        poll_interval_s: float = 0.5,
        rescan_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch_dir = Path(watch_dir)
        self.intake = intake
        self.stable_s = stable_s
        self.poll_interval_s = poll_interval_s
        self.rescan_interval_s = rescan_interval_s
        self.clock = clock
        # Through self.clock, so that replacing the clock reaches the queue.
        self._files = SettlingFiles(lambda: self.clock())
        self._rescan = threading.Event()
        self._watch = WatchThread("hl7-folder")

    @property
    def done_dir(self) -> Path:
        """Folder of files whose messages were all accepted."""
        return self.watch_dir / DONE_DIR_NAME

    @property
    def failed_dir(self) -> Path:
        """Folder of files with a rejected message, beside their reason files."""
        return self.watch_dir / FAILED_DIR_NAME

    def start(self) -> None:
        """Create the folders, queue files already there and start watching."""
        # Created private to the node; an admin who lets an export running as
        # another user write here creates the folder beforehand with a shared group.
        for folder in (self.watch_dir, self.done_dir, self.failed_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rescan()
        observer = Observer()
        events = FolderEvents(
            lambda path, renamed_in: self.note(path, renamed_in=renamed_in), self.request_rescan
        )
        observer.schedule(events, str(self.watch_dir), recursive=False)
        self._watch.start(observer, self._run)
        log.info("hl7_folder_watch_started", watch_dir=str(self.watch_dir))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching; a file being processed is finished first."""
        self._watch.stop(timeout_s)
        log.info("hl7_folder_watch_stopped", watch_dir=str(self.watch_dir))

    def note(self, path: Path, *, renamed_in: bool = False) -> None:
        """Queue a file of the watched folder for processing once it is complete."""
        if path.parent != self.watch_dir or not _is_candidate(path):
            return
        self._files.note(path, renamed_in=renamed_in)

    def request_rescan(self) -> None:
        """Ask the watcher thread to list the folder again."""
        self._rescan.set()

    def rescan(self) -> None:
        """Queue every candidate file in the folder."""
        with os.scandir(self.watch_dir) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    self.note(Path(entry.path))

    def process_ready(self) -> list[FileResult]:
        """Process the queued files that are complete; return what was done."""
        ready = self._files.take_ready(self.stable_s)
        results = []
        for path in ready:
            result = self.process_file(path)
            if result is not None:
                results.append(result)
        return results

    def process_file(self, path: Path) -> FileResult | None:
        """Process every message of one file and move it to ``done/`` or ``failed/``.

        Returns ``None`` when the file vanished before it could be read.
        """
        # File names often contain a patient's name or ID, so logs and the
        # message store name the file by a random id instead.
        file_id = secrets.token_hex(6)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("hl7_file_read_failed", file_id=file_id, error=exc.strerror)
            reason = f"the file could not be read: {exc.strerror}"
            return self._finish(path, file_id, (), reason)
        messages = split_file_messages(data, self.intake.settings.max_message_bytes)
        if not messages:
            reason = "the file holds no HL7 message (no MSH segment)"
            return self._finish(path, file_id, (), reason)
        source = f"file:{file_id}"
        results = tuple(self.intake.process(message, source) for message in messages)
        return self._finish(path, file_id, results, "")

    def _finish(
        self, path: Path, file_id: str, results: tuple[IntakeResult, ...], reason: str
    ) -> FileResult:
        rejected = [r for r in results if r.outcome is IntakeOutcome.REJECTED]
        failed = bool(reason) or bool(rejected)
        target_dir = self.failed_dir if failed else self.done_dir
        target = free_name(target_dir / path.name, (REASON_SUFFIX,))
        os.replace(path, target)
        if failed:
            lines = [reason] if reason else []
            for number, result in enumerate(results, start=1):
                outcome = f"{result.ack_code.value} {result.outcome.value}"
                detail = f": {result.reason}" if result.reason else ""
                control_id = result.control_id or "(none)"
                lines.append(f"message {number}, control ID {control_id}: {outcome}{detail}")
            lines.append(f"file id: {file_id}")
            reason_path = target.with_name(target.name + REASON_SUFFIX)
            # Owner-only (0600) whatever the umask, like the folders created in start().
            fd = os.open(reason_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            reason = reason or f"{len(rejected)} of {len(results)} messages rejected"
        emit = log.warning if failed else log.info
        emit(
            "hl7_file_processed",
            file_id=file_id,
            moved_to=target_dir.name,
            messages=len(results),
            rejected=len(rejected),
        )
        return FileResult(path, target, results, reason, file_id)

    def _run(self) -> None:
        last_rescan = self.clock()
        while not self._watch.stopping.wait(self.poll_interval_s):
            if self._rescan.is_set() or self.clock() - last_rescan >= self.rescan_interval_s:
                self._rescan.clear()
                last_rescan = self.clock()
                try:
                    self.rescan()
                except OSError as exc:
                    log.error("hl7_folder_rescan_failed", error=exc.strerror or type(exc).__name__)
            try:
                self.process_ready()
            except OSError as exc:
                # A file that could not be moved is queued again by the next rescan,
                # and its messages come back as duplicates.
                log.error("hl7_folder_processing_failed", error=exc.strerror or type(exc).__name__)


def purge_processed_files(watch_dir: Path, before: float) -> int:
    """Delete files in ``done/`` and ``failed/`` last modified before ``before``.

    Their messages are in the HL7 store, which keeps them for its own
    retention time. Returns the number of files deleted.
    """
    return sum(
        delete_files_older_than(Path(watch_dir) / name, before)
        for name in (DONE_DIR_NAME, FAILED_DIR_NAME)
    )
