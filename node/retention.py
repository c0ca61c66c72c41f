"""Retention: delete the files of studies finished more than ``retention_days`` ago.

:class:`Housekeeper` runs a pass every ``[storage] housekeeping_interval_s``
in its own thread of the node. Each pass first finishes deletions that a
stopped process left half done. It then deletes the spool folder
(``data_dir/spool/<study>``) and the outbox folder (``data_dir/outbox/<study>``)
of every study that qualifies (see :mod:`hipfuse.node.jobstore_retention`).
A study qualifies when it has been ``done`` with all results sent, or
``skipped``, for longer than ``[storage] retention_days``, and no result of
it is pending, running or failed.
The job store keeps the study's rows and marks it purged, and the audit
trail gets one ``data_deleted`` row per study.

With an HL7 store, a pass also deletes accepted messages received more than
``[hl7] retention_days`` ago, rejected messages older than ``[storage]
retention_days``, and files of the HL7 watch folder's ``done/`` and
``failed/`` not modified for ``[storage] retention_days``. With a drop
folder, it deletes the files of its ``failed/`` as old as that. Each source
with deletions gets one ``data_deleted`` audit row with the counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.config.dropfolder import DropFolderSettings
from hipfuse.config.settings import StorageSettings
from hipfuse.integrations.hl7.folder import purge_processed_files
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.watched_folder import delete_files_older_than
from hipfuse.node.audit import AuditEvent, AuditEventType
from hipfuse.node.dropfolder import FAILED_DIR_NAME as DROPFOLDER_FAILED_DIR
from hipfuse.node.durable_files import fsync_dir
from hipfuse.node.jobstore import JobStore
from hipfuse.node.jobstore_retention import DeletedFiles
from hipfuse.node.outbox import OUTBOX_DIR_NAME
from hipfuse.node.spool import SPOOL_DIR_NAME, validate_uid

log = structlog.get_logger(__name__)

SECONDS_PER_DAY = 86_400.0
# Studies marked per job store query; a pass repeats the query until none is left.
_BATCH = 100


@dataclass(frozen=True)
class PurgeOutcome:
    """One study handled by a pass: deleted, or left for the next pass after an error."""

    study_instance_uid: str
    deleted: DeletedFiles | None
    error: str | None = None
    resumed: bool = False


def delete_tree(folder: Path) -> tuple[int, int]:
    """Delete every file and folder under ``folder`` and the folder itself.

    Returns the number of files and their total size in bytes. A folder that
    does not exist counts as empty.

    Raises
    ------
    OSError
        A file or folder could not be deleted (other than being gone already).
    """
    if not folder.is_dir():
        return 0, 0
    files = 0
    size_bytes = 0
    for root, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = Path(root) / name
            try:
                size = path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            files += 1
            size_bytes += size
        for name in dirnames:
            try:
                (Path(root) / name).rmdir()
            except FileNotFoundError:
                continue
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    fsync_dir(folder.parent)
    return files, size_bytes


class Housekeeper:
    """Periodic deletion of the files of studies past retention; see :meth:`run_once`.

    Parameters
    ----------
    jobstore
        The node's job store.
    data_dir
        The node's data folder, holding ``spool`` and ``outbox``.
    settings
        The ``[storage]`` settings: ``retention_days``.
    clock
        Seconds since the epoch; tests pass a controllable one.
    """

    def __init__(
        self,
        jobstore: JobStore,
        data_dir: Path,
        settings: StorageSettings,
        clock: Callable[[], float] = time.time,
        *,
        hl7_store: HL7Store | None = None,
        hl7_settings: HL7Settings | None = None,
        dropfolder_settings: DropFolderSettings | None = None,
    ) -> None:
        self.jobstore = jobstore
        self.spool_root = Path(data_dir) / SPOOL_DIR_NAME
        self.outbox_root = Path(data_dir) / OUTBOX_DIR_NAME
        self.settings = settings
        self.clock = clock
        self.hl7_store = hl7_store
        self.hl7_settings = hl7_settings
        self.dropfolder_settings = dropfolder_settings

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Run a pass at once, then every ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.run_once(stop)
            except Exception:  # a job store or file system error; logged, retried next pass
                log.exception("retention_pass_failed")
            stop.wait(interval_s)

    def run_once(self, stop: threading.Event | None = None) -> list[PurgeOutcome]:
        """Delete the files of every qualifying study; return what was done.

        ``stop`` ends the pass early between two studies.
        """
        outcomes = [self._purge(uid, resumed=True) for uid in self.jobstore.purges_in_progress()]
        cutoff = self.clock() - self.settings.retention_days * SECONDS_PER_DAY
        # Each study is tried once per pass: one whose files cannot be deleted
        # qualifies again at the next pass.
        seen: set[str] = set()
        while stop is None or not stop.is_set():
            found = self.jobstore.retention_candidates(cutoff, limit=_BATCH + len(seen))
            candidates = [uid for uid in found if uid not in seen]
            if not candidates:
                break
            for uid in candidates:
                if stop is not None and stop.is_set():
                    break
                seen.add(uid)
                if self.jobstore.begin_purge(uid, cutoff):
                    outcomes.append(self._purge(uid))
        if self.hl7_store is not None and self.hl7_settings is not None:
            self._purge_hl7(self.hl7_store, self.hl7_settings, cutoff)
        dropfolder = self.dropfolder_settings
        if dropfolder is not None and dropfolder.enabled and dropfolder.dir is not None:
            self._purge_dropfolder_failed(Path(dropfolder.dir) / DROPFOLDER_FAILED_DIR, cutoff)
        deleted = [outcome for outcome in outcomes if outcome.deleted is not None]
        if outcomes:
            log.info(
                "retention_pass_finished",
                studies_purged=len(deleted),
                studies_failed=len(outcomes) - len(deleted),
                spool_files=sum(o.deleted.spool_files for o in deleted if o.deleted),
                spool_bytes=sum(o.deleted.spool_bytes for o in deleted if o.deleted),
                retention_days=self.settings.retention_days,
            )
        return outcomes

    def _purge_hl7(self, store: HL7Store, settings: HL7Settings, cutoff: float) -> None:
        """Delete HL7 messages and processed watch-folder files past their retention."""
        messages_before = self.clock() - settings.retention_days * SECONDS_PER_DAY
        accepted, rejected = store.purge(messages_before=messages_before, rejected_before=cutoff)
        files = 0
        if settings.watch_dir is not None:
            try:
                files = purge_processed_files(settings.watch_dir, cutoff)
            except OSError as error:
                log.error("hl7_files_purge_failed", error=error.strerror or type(error).__name__)
        if accepted or rejected or files:
            details = {"messages": accepted, "rejected_messages": rejected, "files": files}
            self._audit_deleted("hl7", details)
            log.info("hl7_data_deleted", **details)

    def _purge_dropfolder_failed(self, failed_dir: Path, cutoff: float) -> None:
        """Delete drop-folder files that were rejected longer ago than the retention time."""
        try:
            files = delete_files_older_than(failed_dir, cutoff)
        except OSError as error:
            log.error("dropfolder_purge_failed", error=error.strerror or type(error).__name__)
            return
        if files:
            self._audit_deleted("dropfolder_failed", {"files": files})
            log.info("dropfolder_failed_deleted", files=files)

    def _audit_deleted(self, source: str, counts: dict[str, int]) -> None:
        detail = {"source": source, **counts, "retention_days": self.settings.retention_days}
        self.jobstore.record_audit(
            AuditEvent(AuditEventType.DATA_DELETED, self.clock(), detail=detail)
        )

    def _purge(self, uid: str, *, resumed: bool = False) -> PurgeOutcome:
        """Delete one ``purging`` study's folders and mark it purged."""
        try:
            study_uid = validate_uid("StudyInstanceUID", uid)
            spool_files, spool_bytes = delete_tree(self.spool_root / study_uid)
            outbox_files, _ = delete_tree(self.outbox_root / study_uid)
        except (OSError, ValueError) as error:
            self.jobstore.abort_purge(uid)
            log.error("retention_delete_failed", study_instance_uid=uid, error=str(error))
            return PurgeOutcome(uid, None, str(error), resumed)
        deleted = DeletedFiles(spool_files, spool_bytes, outbox_files)
        self.jobstore.finish_purge(uid, deleted, retention_days=self.settings.retention_days)
        log.info(
            "study_purged",
            study_instance_uid=uid,
            spool_files=spool_files,
            spool_bytes=spool_bytes,
            outbox_files=outbox_files,
            resumed=resumed,
        )
        return PurgeOutcome(uid, deleted, None, resumed)
