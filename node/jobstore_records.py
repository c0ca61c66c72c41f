"""Records, errors and row conversions of the job store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hipfuse.node.states import JobState, StudyState


class JobStoreError(RuntimeError):
    """Base class of the job store's own errors."""


class StudyNotFoundError(JobStoreError, KeyError):
    """No study with the given Study Instance UID."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument, which would quote the whole message.
        return str(self.args[0]) if self.args else ""


class IllegalTransitionError(JobStoreError, ValueError):
    """A state change that :data:`TRANSITIONS` does not allow."""


class StateConflictError(JobStoreError):
    """The study was not in the state the caller expected (another thread moved it)."""


class StudyTooLargeError(JobStoreError):
    """Recording the instance would take the study over its size limit."""


@dataclass(frozen=True)
class InstanceRecord:
    """One received SOP instance, as the SCP records it after spooling."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: Path
    size_bytes: int
    transfer_syntax_uid: str
    received_at: float
    calling_ae_title: str
    peer_address: str
    # Header attributes for classification (see hipfuse.node.series.HEADER_KEYWORDS).
    header: dict[str, Any] = field(default_factory=dict)
    is_node_output: bool = False


@dataclass(frozen=True)
class RecordOutcome:
    """Outcome of :meth:`JobStore.record_instance`."""

    created: bool
    study_created: bool
    study_reopened: bool
    study_bytes: int
    # File of the earlier copy when a re-sent instance moved to another path.
    superseded_path: Path | None = None


@dataclass(frozen=True)
class StudyRecord:
    """One row of the ``studies`` table."""

    study_instance_uid: str
    state: StudyState
    state_reason: str | None
    state_changed_at: float
    first_instance_at: float
    last_instance_at: float
    instance_count: int
    bytes: int
    reopen_pending: bool
    input_fingerprint: str | None
    analysed_fingerprint: str | None


@dataclass(frozen=True)
class SeriesRecord:
    """One row of the ``series`` table."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_description: str
    series_number: str
    body_part_examined: str
    instance_count: int
    classification: str | None
    classification_reason: str | None
    input_role: str | None
    warnings: list[str]


@dataclass(frozen=True)
class StoredInstance:
    """One row of the ``instances`` table."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: Path
    size_bytes: int
    transfer_syntax_uid: str
    received_at: float
    calling_ae_title: str
    peer_address: str
    is_node_output: bool
    header: dict[str, Any]


@dataclass(frozen=True)
class SeriesAssembly:
    """Classification of one series decided at assembly."""

    series_instance_uid: str
    classification: str
    reason: str
    input_role: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventRecord:
    """One row of the ``events`` audit table."""

    event_id: int
    at: float
    event: str
    study_instance_uid: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    """One row of the ``jobs`` table."""

    job_id: int
    study_instance_uid: str | None
    kind: str
    target: str | None
    state: JobState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    details: dict[str, Any]


def input_fingerprint(sop_instance_uids: Iterable[str]) -> str:
    """Return the sha256 hex digest of the sorted SOP Instance UIDs, one per line."""
    joined = "\n".join(sorted(set(sop_instance_uids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


# Column lists for SELECT statements, in the order the *_from_row helpers read.
STUDY_COLUMNS = (
    "study_instance_uid, state, state_reason, state_changed_at, first_instance_at, "
    "last_instance_at, instance_count, bytes, reopen_pending, input_fingerprint, "
    "analysed_fingerprint"
)
SERIES_COLUMNS = (
    "series_instance_uid, study_instance_uid, modality, series_description, series_number, "
    "body_part_examined, instance_count, classification, classification_reason, input_role, "
    "warnings_json"
)
INSTANCE_COLUMNS = (
    "sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, path, "
    "size_bytes, transfer_syntax_uid, received_at, calling_ae_title, peer_address, "
    "is_node_output, header_json"
)
JOB_COLUMNS = (
    "job_id, study_instance_uid, kind, target, state, attempts, next_attempt_at, last_error, "
    "details_json"
)


def study_from_row(row: tuple[Any, ...]) -> StudyRecord:
    """Build a :class:`StudyRecord` from a row selected with ``STUDY_COLUMNS``."""
    return StudyRecord(
        study_instance_uid=row[0],
        state=StudyState(row[1]),
        state_reason=row[2],
        state_changed_at=row[3],
        first_instance_at=row[4],
        last_instance_at=row[5],
        instance_count=row[6],
        bytes=row[7],
        reopen_pending=bool(row[8]),
        input_fingerprint=row[9],
        analysed_fingerprint=row[10],
    )


def job_from_row(row: tuple[Any, ...]) -> JobRecord:
    """Build a :class:`JobRecord` from a row selected with ``JOB_COLUMNS``."""
    return JobRecord(
        job_id=row[0],
        study_instance_uid=row[1],
        kind=row[2],
        target=row[3],
        state=JobState(row[4]),
        attempts=row[5],
        next_attempt_at=row[6],
        last_error=row[7],
        details=json.loads(row[8]),
    )
