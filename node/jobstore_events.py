"""Audit events and retried jobs of the job store, mixed into :class:`JobStore`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from hipfuse.node.jobstore_audit import audit_from_event
from hipfuse.node.jobstore_core import JobStoreCore, placeholders
from hipfuse.node.jobstore_records import (
    JOB_COLUMNS,
    EventRecord,
    JobRecord,
    JobStoreError,
    StateConflictError,
    job_from_row,
)
from hipfuse.node.states import JobState


class EventsAndJobsMixin(JobStoreCore):
    """Methods on the ``events`` and ``jobs`` tables; needs the store's lock and connection."""

    @staticmethod
    def _event(
        db: sqlite3.Connection,
        at: float,
        event: str,
        study_uid: str | None,
        details: dict[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO events (at, event, study_instance_uid, details_json) VALUES (?, ?, ?, ?)",
            (at, event, study_uid, json.dumps(details, sort_keys=True, default=str)),
        )
        # Audit rows that this event implies, in the same transaction.
        audit_from_event(db, at, event, study_uid, details)

    @staticmethod
    def _insert_pending_job(
        db: sqlite3.Connection,
        study_uid: str | None,
        kind: str,
        target: str | None,
        details: dict[str, Any],
        at: float,
        next_attempt_at: float | None = None,
    ) -> int:
        """Insert a ``pending`` job due at ``next_attempt_at`` (default ``at``); return its id."""
        cursor = db.execute(
            "INSERT INTO jobs (study_instance_uid, kind, target, state, next_attempt_at, "
            "created_at, updated_at, details_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study_uid,
                kind,
                target,
                JobState.PENDING.value,
                at if next_attempt_at is None else next_attempt_at,
                at,
                at,
                json.dumps(details, sort_keys=True, default=str),
            ),
        )
        return int(cursor.lastrowid or 0)

    def record_event(
        self,
        event: str,
        study_uid: str | None = None,
        details: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Append an audit event (``association_rejected``, ``sr_sent``, …)."""
        with self._transaction() as db:
            self._event(db, self._now(now), event, study_uid, details or {})

    def list_events(self, study_uid: str | None = None, limit: int = 100) -> list[EventRecord]:
        """Return the most recent events, oldest first, for one study or all."""
        query = "SELECT event_id, at, event, study_instance_uid, details_json FROM events"
        params: list[Any] = []
        if study_uid is not None:
            query += " WHERE study_instance_uid = ?"
            params.append(study_uid)
        query += " ORDER BY event_id DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [
            EventRecord(row[0], row[1], row[2], row[3], json.loads(row[4]))
            for row in reversed(rows)
        ]

    # ------------------------------------------------------------------ #
    # Jobs
    # ------------------------------------------------------------------ #

    def add_job(
        self,
        kind: str,
        study_uid: str | None = None,
        *,
        target: str | None = None,
        details: dict[str, Any] | None = None,
        not_before: float | None = None,
        now: float | None = None,
    ) -> int:
        """Queue a job of ``kind`` (for example ``send``) and return its id."""
        at = self._now(now)
        with self._transaction() as db:
            job_id = self._insert_pending_job(
                db, study_uid, kind, target, details or {}, at, next_attempt_at=not_before
            )
            self._event(db, at, "job_added", study_uid, {"job_id": job_id, "kind": kind})
        return job_id

    def claim_due_job(self, kind: str, now: float | None = None) -> JobRecord | None:
        """Mark the oldest due ``pending`` job of ``kind`` as ``running`` and return it."""
        at = self._now(now)
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = ? AND state = ? "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, job_id LIMIT 1",
                (kind, JobState.PENDING.value, at),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE job_id = ?",
                (JobState.RUNNING.value, at, row[0]),
            )
            claimed = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (row[0],)
            ).fetchone()
        return job_from_row(claimed)

    def finish_job(
        self,
        job_id: int,
        *,
        succeeded: bool,
        error: str | None = None,
        retry_at: float | None = None,
        started_at: float | None = None,
        now: float | None = None,
    ) -> JobRecord:
        """Record the outcome of a ``running`` job's attempt.

        A failure with ``retry_at`` puts the job back to ``pending`` until then;
        a failure without it marks the job ``failed`` for good.
        """
        at = self._now(now)
        if succeeded:
            state = JobState.SUCCEEDED
        elif retry_at is not None:
            state = JobState.PENDING
        else:
            state = JobState.FAILED
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, attempts, study_instance_uid FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise JobStoreError(f"no job with id {job_id}")
            if row[0] != JobState.RUNNING.value:
                raise StateConflictError(f"job {job_id} is {row[0]}, not running")
            db.execute(
                "UPDATE jobs SET state = ?, last_error = ?, updated_at = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at) WHERE job_id = ?",
                (state.value, error, at, retry_at, job_id),
            )
            db.execute(
                "INSERT INTO job_attempts (job_id, attempt, started_at, finished_at, succeeded, "
                "error) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    row[1],
                    at if started_at is None else started_at,
                    at,
                    int(succeeded),
                    error,
                ),
            )
            self._event(
                db,
                at,
                f"job_{state.value}",
                row[2],
                {"job_id": job_id, "attempt": row[1], "error": error},
            )
            finished = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return job_from_row(finished)

    def list_jobs(
        self, study_uid: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobRecord]:
        """Return jobs, optionally of one study and in ``states``, oldest first."""
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"
        params: list[Any] = []
        if study_uid is not None:
            query += " AND study_instance_uid = ?"
            params.append(study_uid)
        if states is not None:
            wanted = [JobState(state).value for state in states]
            query += f" AND state IN ({placeholders(len(wanted))})"
            params += wanted
        with self._lock:
            rows = self._db.execute(query + " ORDER BY job_id", params).fetchall()
        return [job_from_row(row) for row in rows]
