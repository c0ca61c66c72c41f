"""Retention marks of the job store (``study_purges``), mixed into :class:`JobStore`.

A study may lose its spool and outbox files once it has been ``done`` or
``skipped`` for the retention period and none of its outbox items is pending,
running or failed. A ``done`` study also needs at least one outbox item: one
analysed while no destination was configured has results that were never
sent, and keeps them. Failed studies are kept.

Deleting runs in three steps. :meth:`RetentionMixin.begin_purge` marks the
study ``purging``, and a trigger on ``instances`` then rejects new instances
of it: the SCP returns A700, and the sender tries again later. The caller
then deletes the files, and :meth:`RetentionMixin.finish_purge` marks the
study ``purged`` and writes the ``data_deleted`` audit row. The
studies, series, instances and outbox rows stay, so a study that PACS sends
again with the same inputs is recognised by its fingerprint and skipped as
``already_analysed``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from enum import StrEnum

from hipfuse.node.audit import AuditEvent, AuditEventType
from hipfuse.node.jobstore_audit import insert_audit
from hipfuse.node.jobstore_core import JobStoreCore
from hipfuse.node.states import JobState, StudyState


class PurgeState(StrEnum):
    """State of a row of ``study_purges``."""

    # The study's files are being deleted; its instances are refused meanwhile.
    PURGING = "purging"
    PURGED = "purged"


@dataclass(frozen=True)
class PurgeRecord:
    """One row of ``study_purges``."""

    study_instance_uid: str
    state: PurgeState
    started_at: float
    purged_at: float | None
    spool_files: int
    spool_bytes: int
    outbox_files: int


@dataclass(frozen=True)
class DeletedFiles:
    """Counts of files retention deleted for one study."""

    spool_files: int = 0
    spool_bytes: int = 0
    outbox_files: int = 0


# Studies whose files retention may delete once they finished before the cutoff
# (parameters: cutoff, then the study UID filter twice).
_ELIGIBLE = f"""
SELECT s.study_instance_uid FROM studies s
LEFT JOIN study_purges p ON p.study_instance_uid = s.study_instance_uid
WHERE s.state IN ('{StudyState.DONE.value}', '{StudyState.SKIPPED.value}')
  AND s.state_changed_at <= ?
  AND s.reopen_pending = 0
  AND (p.study_instance_uid IS NULL
       OR (p.state = '{PurgeState.PURGED.value}' AND s.last_instance_at > p.purged_at))
  AND NOT EXISTS (
      SELECT 1 FROM outbox o JOIN jobs j ON j.job_id = o.job_id
      WHERE o.study_instance_uid = s.study_instance_uid
        AND j.state != '{JobState.SUCCEEDED.value}')
  AND (s.state = '{StudyState.SKIPPED.value}'
       OR EXISTS (SELECT 1 FROM outbox o WHERE o.study_instance_uid = s.study_instance_uid))
  AND (? IS NULL OR s.study_instance_uid = ?)
ORDER BY s.state_changed_at
"""

_PURGE_COLUMNS = (
    "study_instance_uid, state, started_at, purged_at, spool_files, spool_bytes, outbox_files"
)


class RetentionMixin(JobStoreCore):
    """Methods on ``study_purges``; needs the store's lock and connection."""

    def retention_candidates(self, finished_before: float, limit: int = 100) -> list[str]:
        """Return studies whose files may be deleted, longest finished first.

        Parameters
        ----------
        finished_before
            Seconds since the epoch: studies that became ``done`` or
            ``skipped`` at or before this time qualify.
        """
        with self._lock:
            rows = self._db.execute(
                _ELIGIBLE + " LIMIT ?", (finished_before, None, None, limit)
            ).fetchall()
        return [row[0] for row in rows]

    def begin_purge(self, study_uid: str, finished_before: float, now: float | None = None) -> bool:
        """Mark the study ``purging`` if it still qualifies; return whether it was marked."""
        at = self._now(now)
        with self._transaction() as db:
            still = db.execute(_ELIGIBLE, (finished_before, study_uid, study_uid)).fetchone()
            if still is None:
                return False
            db.execute(
                "INSERT INTO study_purges (study_instance_uid, state, started_at) "
                "VALUES (?, ?, ?) ON CONFLICT (study_instance_uid) DO UPDATE SET "
                "state = excluded.state, started_at = excluded.started_at",
                (study_uid, PurgeState.PURGING.value, at),
            )
        return True

    # NOTE: the instances rows of a purged study still name their deleted
    # files. If PACS later sends only part of the study plus a new series, the
    # inputs change, and the analysis fails on the missing files until PACS
    # sends the whole study again.
    def finish_purge(
        self,
        study_uid: str,
        deleted: DeletedFiles,
        *,
        retention_days: float,
        now: float | None = None,
    ) -> None:
        """Mark a ``purging`` study ``purged`` and write the ``data_deleted`` audit row."""
        at = self._now(now)
        with self._transaction() as db:
            db.execute(
                "UPDATE study_purges SET state = ?, purged_at = ?, spool_files = ?, "
                "spool_bytes = ?, outbox_files = ? WHERE study_instance_uid = ?",
                (
                    PurgeState.PURGED.value,
                    at,
                    deleted.spool_files,
                    deleted.spool_bytes,
                    deleted.outbox_files,
                    study_uid,
                ),
            )
            state = db.execute(
                "SELECT state FROM studies WHERE study_instance_uid = ?", (study_uid,)
            ).fetchone()
            series = [
                row[0]
                for row in db.execute(
                    "SELECT series_instance_uid FROM series WHERE study_instance_uid = ? "
                    "ORDER BY series_instance_uid",
                    (study_uid,),
                )
            ]
            detail = {
                "spool_files": deleted.spool_files,
                "spool_bytes": deleted.spool_bytes,
                "outbox_files": deleted.outbox_files,
                "retention_days": retention_days,
                "study_state": state[0] if state else None,
            }
            self._event(db, at, "study_purged", study_uid, detail)
            insert_audit(
                db,
                AuditEvent(
                    AuditEventType.DATA_DELETED,
                    at,
                    study_instance_uid=study_uid,
                    series_instance_uids=tuple(series),
                    detail=detail,
                ),
            )

    def abort_purge(self, study_uid: str) -> None:
        """Undo :meth:`begin_purge` after the files could not be deleted.

        A study purged before keeps that mark; otherwise the mark is removed,
        and the study qualifies again at the next pass.
        """
        with self._transaction() as db:
            db.execute(
                "DELETE FROM study_purges WHERE study_instance_uid = ? AND state = ? "
                "AND purged_at IS NULL",
                (study_uid, PurgeState.PURGING.value),
            )
            db.execute(
                "UPDATE study_purges SET state = ? WHERE study_instance_uid = ? AND state = ?",
                (PurgeState.PURGED.value, study_uid, PurgeState.PURGING.value),
            )

    def purges_in_progress(self) -> list[str]:
        """Return studies left ``purging`` by a stopped process."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_instance_uid FROM study_purges WHERE state = ? ORDER BY started_at",
                (PurgeState.PURGING.value,),
            ).fetchall()
        return [row[0] for row in rows]

    def get_purge(self, study_uid: str) -> PurgeRecord | None:
        """Return the study's retention mark, or ``None`` when its files were never deleted."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_PURGE_COLUMNS} FROM study_purges WHERE study_instance_uid = ?",
                (study_uid,),
            ).fetchone()
        if row is None:
            return None
        return PurgeRecord(row[0], PurgeState(row[1]), *row[2:])

    def count_purged(self, states: Set[PurgeState] = frozenset(PurgeState)) -> int:
        """Return how many studies have a retention mark in ``states``."""
        values = [PurgeState(state).value for state in states]
        marks = ", ".join("?" * len(values))
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM study_purges WHERE state IN ({marks})", values
            ).fetchone()
        return int(row[0])
