"""The outbox of the job store, and jobs that a thread runs at once (analysis).

One ``outbox`` row exists per (result object, destination), unique on SOP
Instance UID and destination, so one object is queued for one destination at
most once. Its sending state is the ``send`` job it points to: ``pending``
until due, ``running`` while the sender holds it, then ``succeeded``, or
``failed`` after the last attempt. Mixed into :class:`~hipfuse.node.jobstore.JobStore`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipfuse.node.jobstore_core import JobStoreCore, placeholders
from hipfuse.node.jobstore_records import (
    StateConflictError,
    StudyNotFoundError,
    StudyRecord,
)
from hipfuse.node.states import FailureCode, JobKind, JobState, StudyState

_OUTBOX_COLUMNS = (
    "o.item_id, o.job_id, o.study_instance_uid, o.input_fingerprint, o.sop_instance_uid, "
    "o.sop_class_uid, o.path, o.destination, o.created_at, j.state, j.attempts, "
    "j.next_attempt_at, j.last_error, j.updated_at"
)
_OUTBOX_FROM = "FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
_OPEN_JOB_STATES = (JobState.PENDING.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class ResultObject:
    """One encoded result file (SR or Secondary Capture) written into the outbox folder."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class OutboxItem:
    """One result object queued for one destination, with its send job's state.

    ``updated_at`` is the time of the job's last change: the time of the
    C-STORE success when ``state`` is ``succeeded``.
    """

    item_id: int
    job_id: int
    study_instance_uid: str
    input_fingerprint: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    destination: str
    created_at: float
    state: JobState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class DestinationSummary:
    """Outbox counts of one destination for ``status``."""

    destination: str
    counts: dict[JobState, int]
    oldest_open_at: float | None


def _item_from_row(row: tuple[Any, ...]) -> OutboxItem:
    return OutboxItem(
        item_id=row[0],
        job_id=row[1],
        study_instance_uid=row[2],
        input_fingerprint=row[3],
        sop_instance_uid=row[4],
        sop_class_uid=row[5],
        path=Path(row[6]),
        destination=row[7],
        created_at=row[8],
        state=JobState(row[9]),
        attempts=row[10],
        next_attempt_at=row[11],
        last_error=row[12],
        updated_at=row[13],
    )


class OutboxMixin(JobStoreCore):
    """Methods on the ``outbox`` table; needs the store's lock, connection and transitions."""

    def record_results(
        self,
        study_uid: str,
        *,
        fingerprint: str,
        objects: Sequence[ResultObject],
        destinations: Sequence[str],
        job_id: int | None = None,
        details: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> list[OutboxItem]:
        """Queue an analysed study's result objects and move it out of ``analysing``.

        In one transaction: one ``send`` job and outbox row per object and
        destination (an object already queued for a destination is not queued
        again), then ``analysing → analysed`` (which records the analysed
        fingerprint) and ``analysed → sending``, or ``→ done`` when there is
        no destination. The ``running`` job ``job_id`` (the analysis), if
        given, succeeds in the same transaction. A crash before the commit
        leaves the study in ``analysing`` with nothing queued.

        Returns
        -------
        list of OutboxItem
            The items queued now.

        Raises
        ------
        StudyNotFoundError
            The study is unknown.
        StateConflictError
            The study is not ``analysing``, or its inputs' fingerprint is no
            longer ``fingerprint``.
        """
        at = self._now(now)
        with self._transaction() as db:
            study = self._analysing_study(db, study_uid, fingerprint)
            job_ids, already_queued = self._queue_sends(
                db, study_uid, fingerprint, objects, destinations, at
            )
            summary = {
                **(details or {}),
                "objects": len(objects),
                "destinations": list(destinations),
                "already_queued": already_queued,
            }
            self._checked_transition(db, study, StudyState.ANALYSED, None, at, summary)
            analysed = self._study_row(db, study_uid)
            assert analysed is not None
            sending = bool(job_ids or already_queued)
            next_state = StudyState.SENDING if sending else StudyState.DONE
            self._checked_transition(db, analysed, next_state, None, at, {})
            if job_id is not None:
                self._succeed_running_job(db, job_id, study_uid, at)
            rows = self._items_of_jobs(db, job_ids)
        if already_queued:
            # Items queued early (the SR) may all be sent already; then nothing
            # else would move the study on.
            self.settle_study_sends(study_uid, now=at)
        return [_item_from_row(row) for row in rows]

    def queue_results(
        self,
        study_uid: str,
        *,
        fingerprint: str,
        objects: Sequence[ResultObject],
        destinations: Sequence[str],
        now: float | None = None,
    ) -> list[OutboxItem]:
        """Queue result objects of a study that is still ``analysing``.

        The worker queues the SR this way before it encodes the Secondary
        Captures, so the SR reaches PACS while they are made.
        :meth:`record_results` later queues the rest and does not queue these
        again. The study's state does not change.

        Raises
        ------
        StudyNotFoundError, StateConflictError
            As for :meth:`record_results`.
        """
        at = self._now(now)
        with self._transaction() as db:
            self._analysing_study(db, study_uid, fingerprint)
            job_ids, _ = self._queue_sends(db, study_uid, fingerprint, objects, destinations, at)
            rows = self._items_of_jobs(db, job_ids)
        return [_item_from_row(row) for row in rows]

    def _analysing_study(
        self, db: sqlite3.Connection, study_uid: str, fingerprint: str
    ) -> StudyRecord:
        """Return the study; raise unless it is ``analysing`` with ``fingerprint``."""
        study = self._study_row(db, study_uid)
        if study is None:
            raise StudyNotFoundError(f"no study with Study Instance UID {study_uid!r}")
        if study.state is not StudyState.ANALYSING:
            raise StateConflictError(
                f"study {study_uid} is {study.state.value}, not analysing: "
                "its results are not queued"
            )
        if study.input_fingerprint != fingerprint:
            raise StateConflictError(
                f"study {study_uid} now has input fingerprint {study.input_fingerprint}, "
                f"not {fingerprint}: its results are not queued"
            )
        return study

    def _queue_sends(
        self,
        db: sqlite3.Connection,
        study_uid: str,
        fingerprint: str,
        objects: Sequence[ResultObject],
        destinations: Sequence[str],
        at: float,
    ) -> tuple[list[int], int]:
        """Insert one send per object and destination not queued yet; return (job ids, skipped)."""
        job_ids = []
        already_queued = 0
        for result in objects:
            for destination in destinations:
                queued = db.execute(
                    "SELECT 1 FROM outbox WHERE sop_instance_uid = ? AND destination = ?",
                    (result.sop_instance_uid, destination),
                ).fetchone()
                if queued:
                    already_queued += 1
                    continue
                job_ids.append(
                    self._insert_send(db, study_uid, fingerprint, result, destination, at)
                )
        return job_ids, already_queued

    @staticmethod
    def _items_of_jobs(db: sqlite3.Connection, job_ids: Sequence[int]) -> list[tuple[Any, ...]]:
        return db.execute(
            f"SELECT {_OUTBOX_COLUMNS} {_OUTBOX_FROM} "
            f"WHERE o.job_id IN ({placeholders(len(job_ids))}) ORDER BY o.item_id",
            list(job_ids),
        ).fetchall()

    def _succeed_running_job(
        self, db: sqlite3.Connection, job_id: int, study_uid: str, at: float
    ) -> None:
        row = db.execute("SELECT state, attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or row[0] != JobState.RUNNING.value:
            state = row[0] if row else "missing"
            raise StateConflictError(f"job {job_id} is {state}, not running")
        db.execute(
            "UPDATE jobs SET state = ?, last_error = NULL, updated_at = ? WHERE job_id = ?",
            (JobState.SUCCEEDED.value, at, job_id),
        )
        db.execute(
            "INSERT INTO job_attempts (job_id, attempt, started_at, finished_at, succeeded, "
            "error) SELECT job_id, attempts, created_at, ?, 1, NULL FROM jobs WHERE job_id = ?",
            (at, job_id),
        )
        self._event(db, at, "job_succeeded", study_uid, {"job_id": job_id, "attempt": row[1]})

    def _insert_send(
        self,
        db: sqlite3.Connection,
        study_uid: str,
        fingerprint: str,
        result: ResultObject,
        destination: str,
        at: float,
    ) -> int:
        details = {"sop_instance_uid": result.sop_instance_uid}
        job_id = self._insert_pending_job(
            db, study_uid, JobKind.SEND.value, destination, details, at
        )
        db.execute(
            "INSERT INTO outbox (study_instance_uid, input_fingerprint, sop_instance_uid, "
            "sop_class_uid, path, destination, job_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study_uid,
                fingerprint,
                result.sop_instance_uid,
                result.sop_class_uid,
                str(result.path),
                destination,
                job_id,
                at,
            ),
        )
        self._event(
            db,
            at,
            "job_added",
            study_uid,
            {"job_id": job_id, "kind": JobKind.SEND.value, "destination": destination, **details},
        )
        return job_id

    def start_job(
        self,
        kind: JobKind,
        study_uid: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> int:
        """Insert a job already ``running`` in its first attempt and return its id.

        For work that one thread starts at once, such as analysing a study it
        has claimed; finish it with ``finish_job``.
        """
        at = self._now(now)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (study_instance_uid, kind, state, attempts, next_attempt_at, "
                "created_at, updated_at, details_json) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (
                    study_uid,
                    JobKind(kind).value,
                    JobState.RUNNING.value,
                    at,
                    at,
                    at,
                    json.dumps(details or {}, sort_keys=True, default=str),
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            self._event(db, at, "job_started", study_uid, {"job_id": job_id, "kind": kind})
        return job_id

    def fail_interrupted_jobs(self, kind: JobKind, error: str, now: float | None = None) -> int:
        """Mark ``running`` jobs of ``kind`` left by a stopped process as ``failed``.

        Call once at start-up, before any worker runs. Returns how many were marked.
        """
        at = self._now(now)
        with self._transaction() as db:
            rows = db.execute(
                "SELECT job_id, study_instance_uid, attempts FROM jobs "
                "WHERE kind = ? AND state = ?",
                (JobKind(kind).value, JobState.RUNNING.value),
            ).fetchall()
            for job_id, study_uid, attempt in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, last_error = ?, updated_at = ? WHERE job_id = ?",
                    (JobState.FAILED.value, error, at, job_id),
                )
                db.execute(
                    "INSERT INTO job_attempts (job_id, attempt, started_at, finished_at, "
                    "succeeded, error) VALUES (?, ?, ?, ?, 0, ?)",
                    (job_id, attempt, at, at, error),
                )
                self._event(db, at, "job_failed", study_uid, {"job_id": job_id, "error": error})
        return len(rows)

    def claim_due_sends(
        self, destination: str, limit: int = 64, now: float | None = None
    ) -> list[OutboxItem]:
        """Mark up to ``limit`` due ``pending`` items of ``destination`` as ``running``.

        Each claim counts as one attempt. Items come oldest first, so a
        study's SR goes before its Secondary Captures.
        """
        at = self._now(now)
        with self._transaction() as db:
            job_ids = [
                row[0]
                for row in db.execute(
                    "SELECT j.job_id FROM outbox o JOIN jobs j ON j.job_id = o.job_id "
                    "WHERE o.destination = ? AND j.state = ? AND j.next_attempt_at <= ? "
                    "ORDER BY j.next_attempt_at, o.item_id LIMIT ?",
                    (destination, JobState.PENDING.value, at, limit),
                ).fetchall()
            ]
            if not job_ids:
                return []
            marks = ", ".join("?" * len(job_ids))
            db.execute(
                f"UPDATE jobs SET state = ?, attempts = attempts + 1, updated_at = ? "
                f"WHERE job_id IN ({marks})",
                (JobState.RUNNING.value, at, *job_ids),
            )
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} {_OUTBOX_FROM} WHERE o.job_id IN ({marks}) "
                "ORDER BY o.item_id",
                job_ids,
            ).fetchall()
        return [_item_from_row(row) for row in rows]

    def requeue_interrupted_sends(self, now: float | None = None) -> int:
        """Put ``running`` send jobs left by a stopped process back to ``pending``, due now.

        Call once at start-up, before any sender runs. The destination may
        already have stored such an object. Sending it again repeats its SOP
        Instance UID, so the destination gets the same object again, not a
        second SR. Returns how many were put back.
        """
        at = self._now(now)
        with self._transaction() as db:
            rows = db.execute(
                "SELECT job_id, study_instance_uid FROM jobs WHERE kind = ? AND state = ?",
                (JobKind.SEND.value, JobState.RUNNING.value),
            ).fetchall()
            for job_id, study_uid in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, next_attempt_at = ?, updated_at = ? "
                    "WHERE job_id = ?",
                    (JobState.PENDING.value, at, at, job_id),
                )
                self._event(db, at, "job_requeued", study_uid, {"job_id": job_id})
        return len(rows)

    def settle_study_sends(self, study_uid: str, now: float | None = None) -> StudyState | None:
        """Move a ``sending`` study on once none of its items is pending or running.

        Every item succeeded: ``done``. Some item failed for good: ``failed``
        with reason ``send_failed``. Returns the new state, or ``None`` when the
        study is not ``sending`` or still has items to send.
        """
        at = self._now(now)
        with self._transaction() as db:
            study = self._study_row(db, study_uid)
            if study is None or study.state is not StudyState.SENDING:
                return None
            counts = dict(
                db.execute(
                    "SELECT j.state, COUNT(*) FROM outbox o JOIN jobs j ON j.job_id = o.job_id "
                    "WHERE o.study_instance_uid = ? AND o.input_fingerprint = ? GROUP BY j.state",
                    (study_uid, study.analysed_fingerprint),
                ).fetchall()
            )
            if any(counts.get(state, 0) for state in _OPEN_JOB_STATES):
                return None
            failed = counts.get(JobState.FAILED.value, 0)
            details = {"sent": counts.get(JobState.SUCCEEDED.value, 0), "failed": failed}
            if failed:
                to_state, reason = StudyState.FAILED, FailureCode.SEND_FAILED.value
            else:
                to_state, reason = StudyState.DONE, None
            self._checked_transition(db, study, to_state, reason, at, details)
        return to_state

    def studies_in_state(self, state: StudyState) -> list[str]:
        """Return the Study Instance UIDs of every study in ``state``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_instance_uid FROM studies WHERE state = ? ORDER BY state_changed_at",
                (StudyState(state).value,),
            ).fetchall()
        return [row[0] for row in rows]

    def list_outbox(
        self,
        *,
        study_uid: str | None = None,
        destination: str | None = None,
        states: Iterable[JobState] | None = None,
        limit: int = 1000,
    ) -> list[OutboxItem]:
        """Return outbox items, oldest first, filtered by study, destination and job state."""
        query = f"SELECT {_OUTBOX_COLUMNS} {_OUTBOX_FROM} WHERE 1 = 1"
        params: list[Any] = []
        if study_uid is not None:
            query += " AND o.study_instance_uid = ?"
            params.append(study_uid)
        if destination is not None:
            query += " AND o.destination = ?"
            params.append(destination)
        if states is not None:
            wanted = [JobState(state).value for state in states]
            query += f" AND j.state IN ({placeholders(len(wanted))})"
            params += wanted
        query += " ORDER BY o.item_id LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_item_from_row(row) for row in rows]

    def summarise_outbox(self) -> list[DestinationSummary]:
        """Return item counts per destination and job state, destinations by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.destination, j.state, COUNT(*), "
                "MIN(CASE WHEN j.state IN (?, ?) THEN o.created_at END) "
                f"{_OUTBOX_FROM} GROUP BY o.destination, j.state ORDER BY o.destination",
                _OPEN_JOB_STATES,
            ).fetchall()
        summaries: dict[str, DestinationSummary] = {}
        for destination, state, count, oldest in rows:
            summary = summaries.setdefault(destination, DestinationSummary(destination, {}, None))
            summary.counts[JobState(state)] = count
            if oldest is not None and (
                summary.oldest_open_at is None or oldest < summary.oldest_open_at
            ):
                summaries[destination] = DestinationSummary(destination, summary.counts, oldest)
        return list(summaries.values())
