"""DICOM drop folder: store files that an export writes to disk as if they came by C-STORE.

A file is taken once its size and modification time have not changed for
``[dropfolder] settle_s`` seconds. Names starting with a dot, files in folders
starting with a dot, and names ending in ``.part``, ``.tmp`` or ``.filepart``
are still being written and are left alone. Subfolders are read, so an
export may write one folder per study. Files are found by a watchdog
observer, by a listing of the whole folder at start, and by another listing
every ``poll_interval_s`` seconds for file systems that send no change
events (NFS and SMB mounts).

A taken file is read and its File Meta Information is checked: Part 10
format, Media Storage SOP Class and Instance UIDs, a transfer syntax the SCP
accepts. A file that ends before its data set does is rejected. The file then
goes through :meth:`StorageSCP.store_part10
<hipfuse.node.scp.StorageSCP.store_part10>`, exactly as a received instance
does. The original is deleted only after the instance is spooled and
recorded. A file that is not DICOM or fails a check moves to ``failed/``
(under its subfolder path) beside ``<name>.reason.txt``. A file rejected for
lack of disk space or by a job store error stays where it is and is tried
again after the next listing.

File and folder names often contain patient names, so no log line names a
file: each taken file gets a random ``file_id``, which its reason file repeats.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import structlog
from pydicom.errors import InvalidDicomError
from watchdog.observers import Observer

from hipfuse.integrations.watched_folder import FolderEvents, SettlingFiles, WatchThread, free_name
from hipfuse.node.header import HeaderError, find_truncation
from hipfuse.node.scp import STORAGE_TRANSFER_SYNTAXES, StoreStatus
from hipfuse.node.spool import SPOOL_DIR_NAME, InvalidUIDError, validate_uid

if TYPE_CHECKING:
    from hipfuse.config.dropfolder import DropFolderSettings
    from hipfuse.config.settings import Settings
    from hipfuse.node.scp import StorageSCP

log = structlog.get_logger(__name__)

FAILED_DIR_NAME = "failed"
REASON_SUFFIX = ".reason.txt"
# Value recorded as the peer address of instances taken from the drop folder.
DROPFOLDER_PEER = "dropfolder"
_IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".filepart")
# Media Storage Directory Storage (PS3.4 Annex F): a DICOMDIR, which indexes
# the files of an export and is no instance itself.
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Data folders of the node (hipfuse.node.outbox writes results to "outbox").
_DATA_DIR_FOLDERS = (SPOOL_DIR_NAME, "outbox")
_STATUS_TEXT = {
    StoreStatus.CANNOT_UNDERSTAND: "C000 Cannot understand",
    StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "A900 Data Set does not match SOP Class",
    StoreStatus.OUT_OF_RESOURCES: "A700 Refused: Out of Resources",
}


class DropOutcome(StrEnum):
    """Outcome of one file of the drop folder."""

    STORED = "stored"
    FAILED = "failed"
    DEFERRED = "deferred"
    VANISHED = "vanished"


@dataclass(frozen=True)
class DropFileResult:
    """Result of one processed file. ``moved_to`` is set for files moved to ``failed/``."""

    path: Path
    outcome: DropOutcome
    file_id: str
    reason: str = ""
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    moved_to: Path | None = None


class _FileRejectedError(Exception):
    """A file that goes to ``failed/``. The message is its reason."""


def dropfolder_problems(settings: Settings) -> list[tuple[str, str]]:
    """Return drop folder settings that would make the node take its own files.

    Each item is a (dotted key path, reason) pair, as in ``runtime_problems``.
    """
    dropfolder = settings.dropfolder
    if not dropfolder.enabled or dropfolder.dir is None:
        return []
    folder = Path(os.path.abspath(dropfolder.dir))
    data_dir = Path(os.path.abspath(settings.storage.data_dir))
    inside_data = [data_dir / name for name in _DATA_DIR_FOLDERS]
    if folder == data_dir or folder in data_dir.parents:
        reason = f"{folder} is storage.data_dir or contains it"
    elif any(folder == part or part in folder.parents for part in inside_data):
        reason = f"{folder} lies inside the spool or outbox of storage.data_dir"
    else:
        return []
    return [
        (
            "dropfolder.dir",
            f"{reason}, so the node would take its own files; use a folder of its own, "
            "for example /srv/hipfuse/dropfolder",
        )
    ]


def _is_candidate(relative: Path) -> bool:
    parts = relative.parts
    if not parts or parts[0] == FAILED_DIR_NAME:
        return False
    if any(part.startswith(".") for part in parts):
        return False
    return not relative.name.lower().endswith(_IN_PROGRESS_SUFFIXES)


class DropFolderWatcher:
    """Store the DICOM files dropped into a folder once each is complete.

    Parameters
    ----------
    settings
        The ``[dropfolder]`` settings; ``settle_s`` and ``poll_interval_s``
        are read at each use, so replacing ``settings`` changes them live.
    storage_scp
        The node's storage SCP; files are stored through its ``store_part10``.
    check_interval_s
        Seconds between checks of the files waiting to become stable.
    clock
        Monotonic seconds; tests pass a controllable clock.
    """

    def __init__(
        self,
        settings: DropFolderSettings,
        storage_scp: StorageSCP,
        *,
        check_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.dir is None:
            raise ValueError("dropfolder.dir is not set: set it to the folder exports write to")
        self.settings = settings
        self.folder = Path(settings.dir)
        self.storage_scp = storage_scp
        self.check_interval_s = check_interval_s
        self.clock = clock
        # Through self.clock, so that replacing the clock reaches the queue.
        self._files = SettlingFiles(lambda: self.clock())
        self._rescan = threading.Event()
        self._watch = WatchThread("hipfuse-dropfolder")

    @property
    def failed_dir(self) -> Path:
        """Folder of files that were not stored, beside their reason files."""
        return self.folder / FAILED_DIR_NAME

    def start(self) -> None:
        """Create the folders, queue files already there and start watching.

        Raises
        ------
        OSError
            The folder cannot be created or watched.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed_dir.mkdir(mode=0o700, exist_ok=True)
        self.rescan()
        observer = Observer()
        events = FolderEvents(
            lambda path, _renamed_in: self.note(path),
            self.request_rescan,
            rescan_new_folders=True,
        )
        observer.schedule(events, str(self.folder), recursive=True)
        self._watch.start(observer, self._run)
        log.info(
            "dropfolder_started",
            dropfolder=str(self.folder),
            settle_s=self.settings.settle_s,
            poll_interval_s=self.settings.poll_interval_s,
            queued_files=len(self._files),
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop watching once the file being stored, if any, is finished."""
        self._watch.stop(timeout_s)
        log.info("dropfolder_stopped", dropfolder=str(self.folder))

    def note(self, path: Path) -> None:
        """Queue a file of the folder, to be taken once it is stable for ``settle_s``."""
        try:
            relative = path.relative_to(self.folder)
        except ValueError:
            return
        if not _is_candidate(relative):
            return
        self._files.note(path)

    def request_rescan(self) -> None:
        """Ask the watcher thread to list the folder again."""
        self._rescan.set()

    def rescan(self) -> None:
        """Queue every candidate file below the folder and remove empty, settled subfolders."""
        folders = []
        for root, dirs, files in os.walk(self.folder):
            root_path = Path(root)
            if root_path == self.folder:
                dirs[:] = [name for name in dirs if name != FAILED_DIR_NAME]
            else:
                folders.append(root_path)
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            for name in files:
                self.note(root_path / name)
        self._remove_empty_folders(folders)

    def _remove_empty_folders(self, folders: list[Path]) -> None:
        # Deepest first, so a study folder goes after its series folders. A folder
        # younger than settle_s is kept: an export may be about to write into it.
        # Ages are read before any removal, which makes the parent folder look new.
        cutoff = time.time() - self.settings.settle_s
        settled = []
        for folder in folders:
            try:
                if folder.stat().st_mtime < cutoff:
                    settled.append(folder)
            except OSError:
                continue
        for folder in sorted(settled, key=lambda path: len(path.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                continue

    def process_ready(self) -> list[DropFileResult]:
        """Store the queued files that have been stable for ``settle_s`` and return the results."""
        ready = self._files.take_ready(self.settings.settle_s)
        return [self.process_file(path) for path in ready]

    def process_file(self, path: Path) -> DropFileResult:
        """Store one file and delete it, or move it to ``failed/``, or leave it for later."""
        file_id = secrets.token_hex(6)
        self._files.release(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return DropFileResult(path, DropOutcome.VANISHED, file_id)
        except OSError as error:
            return self._fail(path, file_id, f"the file cannot be read: {error.strerror}")

        ids: dict[str, Any] = {"source": DROPFOLDER_PEER, "file_id": file_id}
        try:
            meta = read_file_meta(data)
            ids["sop_instance_uid"] = meta.sop_instance_uid
            _check_complete(data)
            outcome = self.storage_scp.store_part10(
                data,
                requested_class=meta.sop_class_uid,
                requested_instance=meta.sop_instance_uid,
                transfer_syntax=meta.transfer_syntax_uid,
                calling=meta.source_ae_title,
                peer=DROPFOLDER_PEER,
                received_at=self.storage_scp.clock(),
                ids=ids,
            )
        except _FileRejectedError as error:
            return self._fail(path, file_id, str(error))

        sop_uid = ids.get("sop_instance_uid")
        study_uid = ids.get("study_instance_uid")
        if outcome.status is not StoreStatus.SUCCESS:
            reason = f"{_STATUS_TEXT[outcome.status]}: {outcome.comment}"
            if outcome.detail:
                reason += f" ({outcome.detail})"
            if outcome.retry_later:
                log.warning("dropfolder_file_deferred", file_id=file_id, reason=reason)
                return DropFileResult(path, DropOutcome.DEFERRED, file_id, reason, sop_uid)
            return self._fail(path, file_id, reason, sop_uid)

        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            self._files.hold(path)
            log.error(
                "dropfolder_delete_failed",
                file_id=file_id,
                sop_instance_uid=sop_uid,
                error=error.strerror,
                message="the file was stored but stays in the folder; it is stored again "
                "only once it changes",
            )
        log.info(
            "dropfolder_file_stored",
            file_id=file_id,
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            size_bytes=len(data),
        )
        return DropFileResult(
            path,
            DropOutcome.STORED,
            file_id,
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
        )

    def _fail(
        self, path: Path, file_id: str, reason: str, sop_uid: str | None = None
    ) -> DropFileResult:
        relative = path.relative_to(self.folder)
        try:
            target = free_name(self.failed_dir / relative, (REASON_SUFFIX,))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as error:
            self._files.hold(path)
            log.error(
                "dropfolder_move_failed",
                file_id=file_id,
                reason=reason,
                error=error.strerror,
                message="the file stays in place and is tried again when it changes",
            )
            return DropFileResult(path, DropOutcome.FAILED, file_id, reason, sop_uid)
        lines = [
            f"reason: {reason}",
            f"file id: {file_id}",
            f"original path: {relative}",
            f"rejected at: {datetime.now(UTC).isoformat(timespec='seconds')}",
        ]
        reason_path = target.with_name(target.name + REASON_SUFFIX)
        try:
            reason_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as error:
            log.error("dropfolder_reason_write_failed", file_id=file_id, error=error.strerror)
        log.warning("dropfolder_file_failed", file_id=file_id, reason=reason)
        return DropFileResult(path, DropOutcome.FAILED, file_id, reason, sop_uid, moved_to=target)

    def _run(self) -> None:
        last_rescan = self.clock()
        while not self._watch.stopping.wait(self.check_interval_s):
            rescan_due = self.clock() - last_rescan >= self.settings.poll_interval_s
            if self._rescan.is_set() or rescan_due:
                self._rescan.clear()
                last_rescan = self.clock()
                try:
                    self.rescan()
                except OSError as error:
                    log.error("dropfolder_rescan_failed", error=error.strerror)
            try:
                self.process_ready()
            except Exception:  # one bad file must not stop the folder, so the error is only logged
                log.exception("dropfolder_processing_failed")


def _check_complete(data: bytes) -> None:
    """Reject a file that ends before its data set does, such as an interrupted export.

    Raises
    ------
    _FileRejectedError
        The file is cut short or cannot be parsed.
    """
    try:
        truncation = find_truncation(data)
    except HeaderError as error:
        raise _FileRejectedError(str(error)) from error
    if truncation is not None:
        raise _FileRejectedError(f"the file is incomplete: {truncation}; export the instance again")


@dataclass(frozen=True)
class FileMeta:
    """The File Meta Information (PS3.10 section 7.1) that storing a file needs, validated."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    # Source Application Entity Title (0002,0016); empty when absent.
    source_ae_title: str


def read_file_meta(data: bytes) -> FileMeta:
    """Read and check the File Meta Information of a Part 10 file's bytes.

    Raises
    ------
    _FileRejectedError
        Not a DICOM Part 10 file, a DICOMDIR, an invalid or missing UID, or a
        transfer syntax the node does not accept.
    """
    try:
        dataset = pydicom.dcmread(
            BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"], force=False
        )
    except InvalidDicomError as error:
        # pydicom's message ends with advice for its own callers ("Use force=True").
        raise _FileRejectedError(
            "not a DICOM Part 10 file (no 128-byte preamble and DICM prefix); export the "
            "study as DICOM files with File Meta Information"
        ) from error
    # pydicom raises many unrelated types for malformed input (see hipfuse.node.header).
    except Exception as error:
        raise _FileRejectedError(
            f"the File Meta Information cannot be parsed: {type(error).__name__}: {error}"
        ) from error
    meta = dataset.file_meta
    try:
        sop_class = validate_uid("MediaStorageSOPClassUID", meta.get("MediaStorageSOPClassUID"))
        sop_instance = validate_uid(
            "MediaStorageSOPInstanceUID", meta.get("MediaStorageSOPInstanceUID")
        )
        transfer_syntax = validate_uid("TransferSyntaxUID", meta.get("TransferSyntaxUID"))
    except InvalidUIDError as error:
        raise _FileRejectedError(f"File Meta Information: {error}") from error
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        raise _FileRejectedError(
            "a DICOMDIR (Media Storage Directory) indexes an export and contains no image. "
            "The images it lists are taken on their own"
        )
    if transfer_syntax not in STORAGE_TRANSFER_SYNTAXES:
        raise _FileRejectedError(
            f"Transfer Syntax UID {transfer_syntax} is not accepted by the node: "
            "export the study uncompressed or as JPEG, JPEG-LS, JPEG 2000 or RLE"
        )
    source_ae_title = str(meta.get("SourceApplicationEntityTitle", "") or "").strip()
    return FileMeta(sop_class, sop_instance, transfer_syntax, source_ae_title)
