"""Shared needs of the job store's mixins: what each takes from the store it is mixed into.

:class:`~hipfuse.node.jobstore.JobStore` combines one mixin per group of
tables (events and jobs, outbox, audit, retention, admin). Each mixin uses
the store's connection and lock and a few steps defined elsewhere: a write
transaction and the clock (``JobStore``), the study row and checked state
transitions (``JobStore``), the event and job rows (``EventsAndJobsMixin``)
and the send row (``OutboxMixin``). They are declared here once, for type checkers.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hipfuse.node.jobstore_outbox import ResultObject
    from hipfuse.node.jobstore_records import StudyRecord
    from hipfuse.node.states import StudyState


def placeholders(count: int) -> str:
    """Return ``count`` SQL parameter markers for an ``IN (...)`` list, such as ``?, ?, ?``."""
    return ", ".join("?" * count)


class JobStoreCore:
    """Base of the job store's mixins: the store's connection, lock and shared steps."""

    _db: sqlite3.Connection
    _lock: threading.RLock

    if TYPE_CHECKING:

        def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _now(self, now: float | None) -> float: ...

        @staticmethod
        def _study_row(db: sqlite3.Connection, study_uid: str) -> StudyRecord | None: ...

        def _checked_transition(
            self,
            db: sqlite3.Connection,
            study: StudyRecord,
            to_state: StudyState,
            reason: str | None,
            at: float,
            details: dict[str, Any],
        ) -> None: ...

        @staticmethod
        def _event(
            db: sqlite3.Connection,
            at: float,
            event: str,
            study_uid: str | None,
            details: dict[str, Any],
        ) -> None: ...

        @staticmethod
        def _insert_pending_job(
            db: sqlite3.Connection,
            study_uid: str | None,
            kind: str,
            target: str | None,
            details: dict[str, Any],
            at: float,
            next_attempt_at: float | None = None,
        ) -> int: ...

        def _insert_send(
            self,
            db: sqlite3.Connection,
            study_uid: str,
            fingerprint: str,
            result: ResultObject,
            destination: str,
            at: float,
        ) -> int: ...
