"""Durable record of received instances, study states, jobs and events (SQLite, WAL).

Every change is one transaction, committed with ``synchronous=FULL`` before the
method returns, so a C-STORE acknowledged after :meth:`JobStore.record_instance`
survives a crash. One connection is shared by all threads behind a lock: the
SCP records instances from association threads while the assembler and the
workers move studies along.

State changes go through :meth:`JobStore.transition` (or the assembly and
claim helpers built on it), which checks :data:`~hipfuse.node.states.TRANSITIONS`
and writes an ``events`` row in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hipfuse.integrations.sqlite_store import open_store_database
from hipfuse.node.jobstore_admin import AdminMixin
from hipfuse.node.jobstore_audit import AuditMixin
from hipfuse.node.jobstore_core import placeholders
from hipfuse.node.jobstore_events import EventsAndJobsMixin
from hipfuse.node.jobstore_outbox import OutboxItem, OutboxMixin, ResultObject
from hipfuse.node.jobstore_records import (
    INSTANCE_COLUMNS,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    EventRecord,
    IllegalTransitionError,
    InstanceRecord,
    JobRecord,
    JobStoreError,
    RecordOutcome,
    SeriesAssembly,
    SeriesRecord,
    StateConflictError,
    StoredInstance,
    StudyNotFoundError,
    StudyRecord,
    StudyTooLargeError,
    input_fingerprint,
    study_from_row,
)
from hipfuse.node.jobstore_retention import RetentionMixin
from hipfuse.node.jobstore_schema import migrate
from hipfuse.node.states import (
    FINAL_STATES,
    INTERRUPTED_STATES,
    PROCESSING_STATES,
    STATES_WITH_REASON,
    TRANSITIONS,
    StudyState,
)

__all__ = [
    "JOB_STORE_FILE_NAME",
    "EventRecord",
    "IllegalTransitionError",
    "InstanceRecord",
    "JobRecord",
    "JobStore",
    "JobStoreError",
    "OutboxItem",
    "RecordOutcome",
    "ResultObject",
    "SeriesAssembly",
    "SeriesRecord",
    "StateConflictError",
    "StoredInstance",
    "StudyNotFoundError",
    "StudyRecord",
    "StudyTooLargeError",
    "input_fingerprint",
]

JOB_STORE_FILE_NAME = "jobs.sqlite3"


class JobStore(AdminMixin, RetentionMixin, AuditMixin, OutboxMixin, EventsAndJobsMixin):
    """SQLite job store in ``data_dir``; safe to share between threads.

    Parameters
    ----------
    path
        Database file. Created with owner-only permissions when missing, and
        migrated to the current schema on open.
    clock
        Source of the times written when a method gets no ``now``: seconds
        since the epoch. Tests pass a controllable clock.
    durable_commits
        Sync the WAL at every commit (SQLite ``synchronous=FULL``), so a
        commit survives power loss. The SCP's connection turns it off: its
        instance records are rebuilt from the spool after a power loss
        (:mod:`hipfuse.node.spool_recovery`), and a process crash loses no
        commit either way.
    """

    def __init__(self, path: Path, clock: Any = time.time, *, durable_commits: bool = True) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = open_store_database(self.path, durable_commits=durable_commits)
        with self._lock:
            self.schema_version_before_open = migrate(self._db)

    @classmethod
    def in_data_dir(
        cls, data_dir: Path, clock: Any = time.time, *, durable_commits: bool = True
    ) -> JobStore:
        """Open the store at ``data_dir/jobs.sqlite3``, creating the folder (mode 0700)."""
        Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(
            Path(data_dir) / JOB_STORE_FILE_NAME, clock=clock, durable_commits=durable_commits
        )

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one write transaction under the lock, rolling back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self, now: float | None) -> float:
        return float(self._clock() if now is None else now)

    def probe_write(self) -> None:
        """Commit a write transaction that leaves no row behind, to prove the store is writable.

        Raises
        ------
        sqlite3.Error
            The database is locked past the busy timeout, read-only, full or closed.
        """
        # Version 0 is never a schema version; the row is gone again at COMMIT, but
        # its page still goes through the WAL and its fsync (synchronous=FULL).
        with self._transaction() as db:
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
            db.execute("DELETE FROM schema_version WHERE version = 0")

    # ------------------------------------------------------------------ #
    # Instances
    # ------------------------------------------------------------------ #

    def record_instance(
        self, record: InstanceRecord, *, max_study_bytes: int | None = None
    ) -> RecordOutcome:
        """Record a spooled instance; a re-sent SOP Instance UID replaces its row.

        The study is created in ``receiving`` on its first instance. A new
        instance re-opens a study that is ``complete`` or has ended, and marks
        one that a worker has claimed, so that it re-opens when that work ends. The
        node's own outputs (``is_node_output``) never re-open a study.

        Raises
        ------
        StudyTooLargeError
            The study would exceed ``max_study_bytes``; nothing is recorded.
        """
        with self._transaction() as db:
            study = self._study_row(db, record.study_instance_uid)
            study_created = study is None
            if study_created:
                db.execute(
                    "INSERT INTO studies (study_instance_uid, state, state_changed_at, "
                    "first_instance_at, last_instance_at) VALUES (?, ?, ?, ?, ?)",
                    (
                        record.study_instance_uid,
                        StudyState.RECEIVING.value,
                        record.received_at,
                        record.received_at,
                        record.received_at,
                    ),
                )
                self._event(
                    db,
                    record.received_at,
                    "study_receiving",
                    record.study_instance_uid,
                    {
                        "calling_ae_title": record.calling_ae_title,
                        "peer_address": record.peer_address,
                    },
                )

            previous = db.execute(
                "SELECT study_instance_uid, series_instance_uid, path, size_bytes "
                "FROM instances WHERE sop_instance_uid = ?",
                (record.sop_instance_uid,),
            ).fetchone()

            self._upsert_series(db, record)
            db.execute(
                f"INSERT INTO instances ({INSTANCE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sop_instance_uid) DO UPDATE SET "
                "sop_class_uid = excluded.sop_class_uid, "
                "study_instance_uid = excluded.study_instance_uid, "
                "series_instance_uid = excluded.series_instance_uid, "
                "path = excluded.path, size_bytes = excluded.size_bytes, "
                "transfer_syntax_uid = excluded.transfer_syntax_uid, "
                "received_at = excluded.received_at, "
                "calling_ae_title = excluded.calling_ae_title, "
                "peer_address = excluded.peer_address, "
                "is_node_output = excluded.is_node_output, header_json = excluded.header_json",
                (
                    record.sop_instance_uid,
                    record.sop_class_uid,
                    record.study_instance_uid,
                    record.series_instance_uid,
                    str(record.path),
                    record.size_bytes,
                    record.transfer_syntax_uid,
                    record.received_at,
                    record.calling_ae_title,
                    record.peer_address,
                    int(record.is_node_output),
                    json.dumps(record.header, sort_keys=True),
                ),
            )

            superseded: Path | None = None
            if previous is not None:
                old_path, old_size = previous[2], previous[3]
                if old_path != str(record.path):
                    superseded = Path(old_path)
                self._event(
                    db,
                    record.received_at,
                    "instance_replaced",
                    record.study_instance_uid,
                    {
                        "sop_instance_uid": record.sop_instance_uid,
                        "old_size_bytes": old_size,
                        "size_bytes": record.size_bytes,
                    },
                )
            moved = previous is not None and (
                previous[0] != record.study_instance_uid
                or previous[1] != record.series_instance_uid
            )
            if moved:
                # A re-sent instance now names another series or study: recount
                # everything it touches (rare, so the full count is fine).
                self._recount_series(db, previous[1])
                self._recount_study(db, previous[0])
                self._recount_series(db, record.series_instance_uid)
                study_bytes = self._recount_study(db, record.study_instance_uid)
            else:
                added = 1 if previous is None else 0
                old_size = 0 if previous is None else previous[3]
                db.execute(
                    "UPDATE series SET instance_count = instance_count + ? "
                    "WHERE series_instance_uid = ?",
                    (added, record.series_instance_uid),
                )
                study_bytes = db.execute(
                    "UPDATE studies SET instance_count = instance_count + ?, "
                    "bytes = bytes + ? WHERE study_instance_uid = ? RETURNING bytes",
                    (added, record.size_bytes - old_size, record.study_instance_uid),
                ).fetchone()[0]
            db.execute(
                "UPDATE studies SET last_instance_at = MAX(last_instance_at, ?) "
                "WHERE study_instance_uid = ?",
                (record.received_at, record.study_instance_uid),
            )

            if max_study_bytes is not None and study_bytes > max_study_bytes:
                raise StudyTooLargeError(
                    f"study {record.study_instance_uid} would hold {study_bytes} bytes, "
                    f"over max_study_bytes {max_study_bytes}"
                )

            reopened = False
            if not study_created and not record.is_node_output:
                reopened = self._reopen_for_new_instance(db, record)

        return RecordOutcome(
            created=previous is None,
            study_created=study_created,
            study_reopened=reopened,
            study_bytes=study_bytes,
            superseded_path=superseded,
        )

    def _upsert_series(self, db: sqlite3.Connection, record: InstanceRecord) -> None:
        header = record.header
        db.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid, modality, "
            "series_description, series_number, body_part_examined) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (series_instance_uid) DO UPDATE SET "
            "study_instance_uid = excluded.study_instance_uid, modality = excluded.modality, "
            "series_description = excluded.series_description, "
            "series_number = excluded.series_number, "
            "body_part_examined = excluded.body_part_examined",
            (
                record.series_instance_uid,
                record.study_instance_uid,
                str(header.get("Modality", "")),
                str(header.get("SeriesDescription", "")),
                str(header.get("SeriesNumber", "")),
                str(header.get("BodyPartExamined", "")),
            ),
        )

    def _recount_series(self, db: sqlite3.Connection, series_uid: str) -> None:
        count = db.execute(
            "SELECT COUNT(*) FROM instances WHERE series_instance_uid = ?", (series_uid,)
        ).fetchone()[0]
        if count == 0:
            db.execute("DELETE FROM series WHERE series_instance_uid = ?", (series_uid,))
        else:
            db.execute(
                "UPDATE series SET instance_count = ? WHERE series_instance_uid = ?",
                (count, series_uid),
            )

    def _recount_study(self, db: sqlite3.Connection, study_uid: str) -> int:
        count, total = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM instances "
            "WHERE study_instance_uid = ?",
            (study_uid,),
        ).fetchone()
        db.execute(
            "UPDATE studies SET instance_count = ?, bytes = ? WHERE study_instance_uid = ?",
            (count, total, study_uid),
        )
        return int(total)

    def _reopen_for_new_instance(self, db: sqlite3.Connection, record: InstanceRecord) -> bool:
        study = self._study_row(db, record.study_instance_uid)
        assert study is not None
        if study.state is StudyState.COMPLETE or study.state in FINAL_STATES:
            self._set_state(
                db,
                study,
                StudyState.RECEIVING,
                None,
                record.received_at,
                "study_reopened",
                {"sop_instance_uid": record.sop_instance_uid, "from_state": study.state.value},
            )
            return True
        if study.state in PROCESSING_STATES and not study.reopen_pending:
            db.execute(
                "UPDATE studies SET reopen_pending = 1 WHERE study_instance_uid = ?",
                (record.study_instance_uid,),
            )
        return False

    def projected_study_bytes(self, study_uid: str, sop_instance_uid: str, size_bytes: int) -> int:
        """Return the study's size after storing an instance of ``size_bytes``.

        A re-sent instance replaces its earlier copy, so its old size is not counted.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT bytes FROM studies WHERE study_instance_uid = ?", (study_uid,)
            ).fetchone()
            current = row[0] if row else 0
            old = self._db.execute(
                "SELECT size_bytes FROM instances WHERE sop_instance_uid = ? "
                "AND study_instance_uid = ?",
                (sop_instance_uid, study_uid),
            ).fetchone()
        return int(current - (old[0] if old else 0) + size_bytes)

    def recorded_sop_instance_uids(self) -> set[str]:
        """Return the SOP Instance UID of every recorded instance."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT sop_instance_uid FROM instances")}

    def list_instances(self, study_uid: str, series_uid: str | None = None) -> list[StoredInstance]:
        """Return the study's instances (of one series if given) in receipt order."""
        query = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE study_instance_uid = ?"
        params: tuple[Any, ...] = (study_uid,)
        if series_uid is not None:
            query += " AND series_instance_uid = ?"
            params += (series_uid,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY received_at, rowid", params).fetchall()
        return [
            StoredInstance(
                sop_instance_uid=row[0],
                sop_class_uid=row[1],
                study_instance_uid=row[2],
                series_instance_uid=row[3],
                path=Path(row[4]),
                size_bytes=row[5],
                transfer_syntax_uid=row[6],
                received_at=row[7],
                calling_ae_title=row[8],
                peer_address=row[9],
                is_node_output=bool(row[10]),
                header=json.loads(row[11]),
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ #
    # Studies and series
    # ------------------------------------------------------------------ #

    @staticmethod
    def _study_row(db: sqlite3.Connection, study_uid: str) -> StudyRecord | None:
        row = db.execute(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE study_instance_uid = ?", (study_uid,)
        ).fetchone()
        return study_from_row(row) if row else None

    def get_study(self, study_uid: str) -> StudyRecord:
        """Return the study; raise :class:`StudyNotFoundError` when unknown."""
        with self._lock:
            study = self._study_row(self._db, study_uid)
        if study is None:
            raise StudyNotFoundError(f"no study with Study Instance UID {study_uid!r}")
        return study

    def list_studies(
        self, states: Iterable[StudyState] | None = None, limit: int = 100
    ) -> list[StudyRecord]:
        """Return studies, most recent instance first, optionally only in ``states``."""
        query = f"SELECT {STUDY_COLUMNS} FROM studies"
        params: list[Any] = []
        if states is not None:
            wanted = [StudyState(state).value for state in states]
            query += f" WHERE state IN ({placeholders(len(wanted))})"
            params += wanted
        query += " ORDER BY last_instance_at DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [study_from_row(row) for row in rows]

    def count_studies_by_state(self) -> dict[StudyState, int]:
        """Return how many studies are in each state (states with none are left out)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {StudyState(state): count for state, count in rows}

    def studies_due(self, quiet_period_s: float, now: float | None = None) -> list[StudyRecord]:
        """Return ``receiving`` studies with no new instance for ``quiet_period_s`` seconds."""
        cutoff = self._now(now) - quiet_period_s
        with self._lock:
            rows = self._db.execute(
                f"SELECT {STUDY_COLUMNS} FROM studies WHERE state = ? "
                "AND last_instance_at <= ? ORDER BY last_instance_at",
                (StudyState.RECEIVING.value, cutoff),
            ).fetchall()
        return [study_from_row(row) for row in rows]

    def list_series(self, study_uid: str) -> list[SeriesRecord]:
        """Return the study's series ordered by Series Number, then UID."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {SERIES_COLUMNS} FROM series WHERE study_instance_uid = ? "
                "ORDER BY CAST(series_number AS INTEGER), series_instance_uid",
                (study_uid,),
            ).fetchall()
        return [
            SeriesRecord(*row[:10], warnings=json.loads(row[10]))  # type: ignore[misc]
            for row in rows
        ]

    def is_fingerprint_analysed(self, fingerprint: str) -> bool:
        """Return whether any study was analysed with exactly these inputs."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM studies WHERE analysed_fingerprint = ? LIMIT 1", (fingerprint,)
            ).fetchone()
        return row is not None

    def finish_assembly(
        self,
        study_uid: str,
        *,
        observed_last_instance_at: float,
        to_state: StudyState,
        reason: str | None,
        fingerprint: str | None,
        series: Iterable[SeriesAssembly],
        now: float | None = None,
    ) -> bool:
        """Store the series classification and move a ``receiving`` study on.

        Returns ``False``, changing nothing, when an instance arrived after
        ``observed_last_instance_at`` or the study left ``receiving``: the
        classification is out of date and the study is assembled again later.
        """
        at = self._now(now)
        with self._transaction() as db:
            study = self._study_row(db, study_uid)
            if study is None:
                raise StudyNotFoundError(f"no study with Study Instance UID {study_uid!r}")
            if (
                study.state is not StudyState.RECEIVING
                or study.last_instance_at != observed_last_instance_at
            ):
                return False
            series = list(series)
            for item in series:
                db.execute(
                    "UPDATE series SET classification = ?, classification_reason = ?, "
                    "input_role = ?, warnings_json = ? WHERE series_instance_uid = ?",
                    (
                        item.classification,
                        item.reason,
                        item.input_role,
                        json.dumps(list(item.warnings)),
                        item.series_instance_uid,
                    ),
                )
            db.execute(
                "UPDATE studies SET input_fingerprint = ? WHERE study_instance_uid = ?",
                (fingerprint, study_uid),
            )
            details = {
                "inputs": {
                    item.series_instance_uid: item.input_role for item in series if item.input_role
                },
                "fingerprint": fingerprint,
            }
            self._checked_transition(db, study, to_state, reason, at, details)
        return True

    def transition(
        self,
        study_uid: str,
        to_state: StudyState,
        *,
        reason: str | None = None,
        expected: StudyState | None = None,
        details: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> StudyRecord:
        """Move a study to ``to_state`` and record a ``study_<state>`` event.

        Parameters
        ----------
        reason
            Required for ``skipped`` and ``failed`` (a ``SkipReason`` value or an
            error code); stored with the state.
        expected
            State the caller believes the study is in; a different state raises
            :class:`StateConflictError` instead of moving it.

        Raises
        ------
        StudyNotFoundError, IllegalTransitionError, StateConflictError
        """
        at = self._now(now)
        with self._transaction() as db:
            study = self._study_row(db, study_uid)
            if study is None:
                raise StudyNotFoundError(f"no study with Study Instance UID {study_uid!r}")
            if expected is not None and study.state is not StudyState(expected):
                raise StateConflictError(
                    f"study {study_uid} is {study.state.value}, not {StudyState(expected).value}"
                )
            self._checked_transition(db, study, StudyState(to_state), reason, at, details or {})
            updated = self._study_row(db, study_uid)
        assert updated is not None
        return updated

    def claim_next(
        self, from_state: StudyState, to_state: StudyState, now: float | None = None
    ) -> StudyRecord | None:
        """Move the study that has waited longest in ``from_state`` to ``to_state``.

        Workers call this (``complete`` → ``analysing``) so that two threads
        never take the same study. Returns ``None`` when no study waits.
        """
        at = self._now(now)
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {STUDY_COLUMNS} FROM studies WHERE state = ? "
                "ORDER BY state_changed_at LIMIT 1",
                (StudyState(from_state).value,),
            ).fetchone()
            if row is None:
                return None
            study = study_from_row(row)
            self._checked_transition(db, study, StudyState(to_state), None, at, {})
            claimed = self._study_row(db, study.study_instance_uid)
        return claimed

    def recover_interrupted(self, now: float | None = None) -> list[str]:
        """Put studies left in ``analysing`` or ``encoding`` by a stopped process back.

        Call once at start-up, before any worker runs. Returns their Study Instance UIDs.
        """
        at = self._now(now)
        recovered = []
        with self._transaction() as db:
            for state, back_to in INTERRUPTED_STATES.items():
                rows = db.execute(
                    f"SELECT {STUDY_COLUMNS} FROM studies WHERE state = ?", (state.value,)
                ).fetchall()
                for row in rows:
                    study = study_from_row(row)
                    self._checked_transition(
                        db, study, back_to, None, at, {"interrupted_state": state.value}
                    )
                    recovered.append(study.study_instance_uid)
        return recovered

    def _checked_transition(
        self,
        db: sqlite3.Connection,
        study: StudyRecord,
        to_state: StudyState,
        reason: str | None,
        at: float,
        details: dict[str, Any],
    ) -> None:
        if to_state not in TRANSITIONS[study.state]:
            allowed = ", ".join(sorted(state.value for state in TRANSITIONS[study.state]))
            raise IllegalTransitionError(
                f"study {study.study_instance_uid} cannot go from {study.state.value} to "
                f"{to_state.value}; allowed: {allowed}"
            )
        if to_state in STATES_WITH_REASON and not reason:
            raise ValueError(f"moving a study to {to_state.value} needs a reason")
        self._set_state(db, study, to_state, reason, at, f"study_{to_state.value}", details)
        if to_state is StudyState.ANALYSED:
            db.execute(
                "UPDATE studies SET analysed_fingerprint = input_fingerprint "
                "WHERE study_instance_uid = ?",
                (study.study_instance_uid,),
            )
        if to_state in FINAL_STATES and study.reopen_pending:
            # An instance arrived while a worker held the study: receive again.
            ended = self._study_row(db, study.study_instance_uid)
            assert ended is not None
            self._set_state(
                db,
                ended,
                StudyState.RECEIVING,
                None,
                at,
                "study_reopened",
                {"from_state": to_state.value},
            )

    def _set_state(
        self,
        db: sqlite3.Connection,
        study: StudyRecord,
        to_state: StudyState,
        reason: str | None,
        at: float,
        event: str,
        details: dict[str, Any],
    ) -> None:
        db.execute(
            "UPDATE studies SET state = ?, state_reason = ?, state_changed_at = ?, "
            "reopen_pending = CASE WHEN ? = 'receiving' THEN 0 ELSE reopen_pending END "
            "WHERE study_instance_uid = ?",
            (to_state.value, reason, at, to_state.value, study.study_instance_uid),
        )
        payload = {"from_state": study.state.value, **details}
        if reason:
            payload["reason"] = reason
        self._event(db, at, event, study.study_instance_uid, payload)
