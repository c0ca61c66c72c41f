"""Admin actions on the job store: resend a study's results, retry what failed.

Mixed into :class:`~hipfuse.node.jobstore.JobStore`. The commands
``hipfuse-node resend`` and ``retry-failed`` call these methods from their own
process while the node may be running: each method is one write transaction,
and the node's sender threads pick up the requeued items at their next round.
A ``running`` send job belongs to a sender that is sending it right now, so it
is never touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipfuse.node.audit import AuditEvent, AuditEventType, utc_iso
from hipfuse.node.jobstore_audit import insert_audit
from hipfuse.node.jobstore_core import JobStoreCore
from hipfuse.node.jobstore_outbox import ResultObject
from hipfuse.node.jobstore_records import (
    STUDY_COLUMNS,
    JobStoreError,
    StudyNotFoundError,
    StudyRecord,
    study_from_row,
)
from hipfuse.node.jobstore_retention import PurgeState
from hipfuse.node.states import FailureCode, JobKind, JobState, StudyState


class NoResultsError(JobStoreError):
    """The study has no result objects that can be sent again."""


@dataclass(frozen=True)
class RequeuedSend:
    """One result object put back in the queue for one destination, as a new send job.

    ``previous_job_id`` and ``previous_state`` are ``None`` when the object
    had never been queued for that destination (one added to the settings since).
    """

    study_instance_uid: str
    sop_instance_uid: str
    destination: str
    job_id: int
    previous_job_id: int | None
    previous_state: JobState | None
    previous_attempts: int
    previous_error: str | None


@dataclass(frozen=True)
class ResendOutcome:
    """Items that :meth:`AdminMixin.requeue_results` queued, and those it left alone."""

    study_instance_uid: str
    requeued: tuple[RequeuedSend, ...]
    # (SOP Instance UID, destination) pairs that a sender is sending right now.
    in_progress: tuple[tuple[str, str], ...]
    study_state: StudyState


@dataclass(frozen=True)
class RequeuedAnalysis:
    """A failed study put back to ``complete`` to be analysed again."""

    study_instance_uid: str
    previous_reason: str | None


@dataclass(frozen=True)
class RetryOutcome:
    """Sends and analyses that :meth:`AdminMixin.requeue_failed` put back in the queue."""

    sends: tuple[RequeuedSend, ...]
    analyses: tuple[RequeuedAnalysis, ...]


_OUTBOX_FIELDS = (
    "o.sop_instance_uid, o.sop_class_uid, o.path, o.destination, o.job_id, j.state, "
    "j.attempts, j.last_error, o.study_instance_uid"
)


class AdminMixin(JobStoreCore):
    """Resend and retry; needs the store's lock, connection, transitions and outbox."""

    def requeue_results(
        self,
        study_uid: str,
        destinations: Sequence[str],
        *,
        requested_by: str,
        now: float | None = None,
    ) -> ResendOutcome:
        """Queue the study's current results for ``destinations`` again, due now.

        The current results are the outbox objects of the study's last
        analysed input fingerprint. Each (object, destination) pair is reset
        to ``pending`` with no attempts counted; a pair never queued before is
        added. The files are sent as they are, so the SOP Instance UIDs stay
        the same and a destination that has the objects replaces them rather
        than storing second copies. A study that is ``done``, ``skipped`` or
        failed in sending moves to ``sending`` and settles again once the
        items are sent.

        Raises
        ------
        StudyNotFoundError
            No study has this Study Instance UID.
        NoResultsError
            The study was never analysed, its results were never queued, its
            files were deleted by retention, or a result file is missing.
        """
        at = self._now(now)
        with self._transaction() as db:
            study = self._study_row(db, study_uid)
            if study is None:
                raise StudyNotFoundError(f"no study with Study Instance UID {study_uid!r}")
            self._check_not_purged(db, study_uid)
            objects = self._current_results(db, study)
            missing = [obj.path for obj in objects if not obj.path.is_file()]
            if missing:
                raise NoResultsError(
                    f"{len(missing)} result file(s) of study {study_uid} are missing, "
                    f"for example {missing[0]}; nothing was queued"
                )

            requeued: list[RequeuedSend] = []
            in_progress: list[tuple[str, str]] = []
            for destination in destinations:
                for obj in objects:
                    row = db.execute(
                        f"SELECT {_OUTBOX_FIELDS} FROM outbox o JOIN jobs j ON j.job_id = o.job_id "
                        "WHERE o.sop_instance_uid = ? AND o.destination = ?",
                        (obj.sop_instance_uid, destination),
                    ).fetchone()
                    if row is None:
                        assert study.analysed_fingerprint is not None
                        job_id = self._insert_send(
                            db, study_uid, study.analysed_fingerprint, obj, destination, at
                        )
                        requeued.append(
                            RequeuedSend(
                                study_uid,
                                obj.sop_instance_uid,
                                destination,
                                job_id,
                                None,
                                None,
                                0,
                                None,
                            )
                        )
                    elif row[5] == JobState.RUNNING.value:
                        in_progress.append((obj.sop_instance_uid, destination))
                    else:
                        requeued.append(self._reset_send(db, row, at, "resend"))

            state = self._resume_sending(db, study, at, "resend", requested_by, bool(requeued))
            insert_audit(
                db,
                AuditEvent(
                    AuditEventType.RESEND_REQUESTED,
                    at,
                    study_instance_uid=study_uid,
                    sop_instance_uids=tuple(obj.sop_instance_uid for obj in objects),
                    destination=destinations[0] if len(destinations) == 1 else None,
                    detail={
                        "requested_by": requested_by,
                        "destinations": list(destinations),
                        "requeued": len(requeued),
                        "in_progress": len(in_progress),
                    },
                ),
            )
        return ResendOutcome(study_uid, tuple(requeued), tuple(in_progress), state)

    def requeue_failed(
        self,
        destinations: Sequence[str],
        *,
        analyses: bool,
        requested_by: str,
        now: float | None = None,
    ) -> RetryOutcome:
        """Put failed sends to ``destinations``, and failed analyses, back in the queue.

        Send jobs that are ``failed`` (attempts exhausted) become ``pending``,
        due now, with no attempts counted. Studies that failed in sending move
        back to ``sending``. With ``analyses``, studies that failed for any
        other reason move back to ``complete``, and the worker analyses them
        again.
        """
        at = self._now(now)
        sends: list[RequeuedSend] = []
        retried: list[RequeuedAnalysis] = []
        with self._transaction() as db:
            marks = ", ".join("?" * len(destinations))
            rows = db.execute(
                f"SELECT {_OUTBOX_FIELDS} FROM outbox o JOIN jobs j ON j.job_id = o.job_id "
                f"WHERE j.state = ? AND o.destination IN ({marks}) ORDER BY o.item_id",
                (JobState.FAILED.value, *destinations),
            ).fetchall()
            for row in rows:
                sends.append(self._reset_send(db, row, at, "retry"))

            by_study: dict[str, list[RequeuedSend]] = {}
            for send in sends:
                by_study.setdefault(send.study_instance_uid, []).append(send)
            for study_uid, study_sends in by_study.items():
                study = self._study_row(db, study_uid)
                assert study is not None
                self._resume_sending(db, study, at, "retry", requested_by, True)
                for destination in sorted({send.destination for send in study_sends}):
                    sent_again = [s for s in study_sends if s.destination == destination]
                    insert_audit(
                        db,
                        AuditEvent(
                            AuditEventType.RETRY_REQUESTED,
                            at,
                            study_instance_uid=study_uid,
                            sop_instance_uids=tuple(s.sop_instance_uid for s in sent_again),
                            destination=destination,
                            detail={"requested_by": requested_by, "kind": JobKind.SEND.value},
                        ),
                    )

            if analyses:
                retried = self._requeue_failed_analyses(db, at, requested_by)
        return RetryOutcome(tuple(sends), tuple(retried))

    def recent_failed_studies(self, limit: int = 10) -> list[StudyRecord]:
        """Return the ``failed`` studies, most recently failed first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {STUDY_COLUMNS} FROM studies WHERE state = ? "
                "ORDER BY state_changed_at DESC LIMIT ?",
                (StudyState.FAILED.value, limit),
            ).fetchall()
        return [study_from_row(row) for row in rows]

    # ------------------------------------------------------------------ #
    # Helpers inside a transaction
    # ------------------------------------------------------------------ #

    @staticmethod
    def _check_not_purged(db: sqlite3.Connection, study_uid: str) -> None:
        row = db.execute(
            "SELECT state, started_at, purged_at FROM study_purges WHERE study_instance_uid = ?",
            (study_uid,),
        ).fetchone()
        if row is None:
            return
        if row[0] == PurgeState.PURGING.value:
            raise NoResultsError(
                f"the files of study {study_uid} are being deleted by retention "
                f"(started {utc_iso(row[1])}); nothing was queued"
            )
        raise NoResultsError(
            f"the result files of study {study_uid} were deleted by retention on "
            f"{utc_iso(row[2])}; nothing was queued"
        )

    @staticmethod
    def _current_results(db: sqlite3.Connection, study: StudyRecord) -> list[ResultObject]:
        uid = study.study_instance_uid
        if study.analysed_fingerprint is None:
            raise NoResultsError(
                f"study {uid} has no results: it was never analysed (state {study.state.value}"
                + (f", {study.state_reason}" if study.state_reason else "")
                + ")"
            )
        rows = db.execute(
            "SELECT sop_instance_uid, sop_class_uid, path FROM outbox "
            "WHERE study_instance_uid = ? AND input_fingerprint = ? "
            "GROUP BY sop_instance_uid ORDER BY MIN(item_id)",
            (uid, study.analysed_fingerprint),
        ).fetchall()
        if not rows:
            raise NoResultsError(
                f"study {uid} has no queued results: it was analysed while no destination "
                "was configured, so its result files were never recorded in the outbox"
            )
        return [ResultObject(sop, sop_class, Path(path)) for sop, sop_class, path in rows]

    def _reset_send(
        self, db: sqlite3.Connection, row: tuple[Any, ...], at: float, requested: str
    ) -> RequeuedSend:
        """Point the outbox item at a new ``pending`` send job, due now, with no attempts.

        The previous job keeps its ``job_attempts`` rows, so the history of
        earlier attempts stays whole. A previous job still ``pending`` is
        closed as ``failed``, with the new job's id as its error. A job that
        was never tried is only made due now.
        """
        sop, _, _, destination, previous_job_id, state, attempts, error, study_uid = row
        if state == JobState.PENDING.value and attempts == 0:
            db.execute(
                "UPDATE jobs SET next_attempt_at = ?, updated_at = ? WHERE job_id = ?",
                (at, at, previous_job_id),
            )
            return RequeuedSend(
                study_uid,
                sop,
                destination,
                previous_job_id,
                previous_job_id,
                JobState.PENDING,
                0,
                error,
            )
        details = {
            "sop_instance_uid": sop,
            "previous_job_id": previous_job_id,
            "requested": requested,
        }
        job_id = self._insert_pending_job(
            db, study_uid, JobKind.SEND.value, destination, details, at
        )
        db.execute("UPDATE outbox SET job_id = ? WHERE job_id = ?", (job_id, previous_job_id))
        if state == JobState.PENDING.value:
            db.execute(
                "UPDATE jobs SET state = ?, last_error = ?, updated_at = ? WHERE job_id = ?",
                (
                    JobState.FAILED.value,
                    f"replaced by job {job_id} ({requested})",
                    at,
                    previous_job_id,
                ),
            )
        self._event(
            db,
            at,
            "job_requeued",
            study_uid,
            {
                "job_id": job_id,
                "previous_state": state,
                "previous_attempts": attempts,
                "destination": destination,
                **details,
            },
        )
        return RequeuedSend(
            study_uid, sop, destination, job_id, previous_job_id, JobState(state), attempts, error
        )

    def _resume_sending(
        self,
        db: sqlite3.Connection,
        study: StudyRecord,
        at: float,
        requested: str,
        requested_by: str,
        queued: bool,
    ) -> StudyState:
        """Move a finished study back to ``sending`` when items were queued; return its state."""
        resumable = study.state in (StudyState.DONE, StudyState.SKIPPED) or (
            study.state is StudyState.FAILED and study.state_reason == FailureCode.SEND_FAILED.value
        )
        if not (queued and resumable):
            return study.state
        details = {"requested": requested, "requested_by": requested_by}
        self._checked_transition(db, study, StudyState.SENDING, None, at, details)
        return StudyState.SENDING

    def _requeue_failed_analyses(
        self, db: sqlite3.Connection, at: float, requested_by: str
    ) -> list[RequeuedAnalysis]:
        rows = db.execute(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE state = ? AND "
            "COALESCE(state_reason, '') != ? ORDER BY state_changed_at",
            (StudyState.FAILED.value, FailureCode.SEND_FAILED.value),
        ).fetchall()
        retried = []
        for row in rows:
            study = study_from_row(row)
            details = {"requested": "retry", "requested_by": requested_by}
            self._checked_transition(db, study, StudyState.COMPLETE, None, at, details)
            insert_audit(
                db,
                AuditEvent(
                    AuditEventType.RETRY_REQUESTED,
                    at,
                    study_instance_uid=study.study_instance_uid,
                    detail={
                        "requested_by": requested_by,
                        "kind": JobKind.ANALYSE.value,
                        "previous_reason": study.state_reason,
                    },
                ),
            )
            retried.append(RequeuedAnalysis(study.study_instance_uid, study.state_reason))
        return retried
