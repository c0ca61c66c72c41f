"""The ``audit_events`` table of the job store, mixed into :class:`JobStore`.

Most audit rows come from job store events, in the transaction that records
the event: :func:`audit_from_event` turns ``study_complete``,
``study_analysed``, a send job's ``job_succeeded`` and others into audit
rows, and ignores the rest. So the per-instance path of the SCP gains no
write. A study's received instances are counted from the ``instances`` table
once the study is complete, grouped by calling AE title and peer address.
Admin commands and retention add their own rows with :meth:`AuditMixin.record_audit`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from hipfuse.node.audit import AuditEvent, AuditEventType
from hipfuse.node.jobstore_core import JobStoreCore, placeholders
from hipfuse.node.states import FailureCode, StudyState

_AUDIT_COLUMNS = (
    "audit_id, at, event_type, calling_ae_title, called_ae_title, peer_address, "
    "study_instance_uid, series_instance_uids_json, sop_instance_uids_json, destination, "
    "job_id, detail_json"
)
# Rows read per query while an export streams the table.
_EXPORT_BATCH = 1000


def insert_audit(db: sqlite3.Connection, event: AuditEvent) -> int:
    """Insert one audit row in the caller's transaction; return its id."""
    cursor = db.execute(
        "INSERT INTO audit_events (at, event_type, calling_ae_title, called_ae_title, "
        "peer_address, study_instance_uid, series_instance_uids_json, sop_instance_uids_json, "
        "destination, job_id, detail_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.at,
            AuditEventType(event.event_type).value,
            event.calling_ae_title,
            event.called_ae_title,
            event.peer_address,
            event.study_instance_uid,
            json.dumps(list(event.series_instance_uids)),
            json.dumps(list(event.sop_instance_uids)),
            event.destination,
            event.job_id,
            json.dumps(event.detail, sort_keys=True, default=str),
        ),
    )
    return int(cursor.lastrowid or 0)


def audit_from_row(row: tuple[Any, ...]) -> AuditEvent:
    """Build an :class:`AuditEvent` from a row selected with ``_AUDIT_COLUMNS``."""
    return AuditEvent(
        audit_id=row[0],
        at=row[1],
        event_type=AuditEventType(row[2]),
        calling_ae_title=row[3],
        called_ae_title=row[4],
        peer_address=row[5],
        study_instance_uid=row[6],
        series_instance_uids=tuple(json.loads(row[7])),
        sop_instance_uids=tuple(json.loads(row[8])),
        destination=row[9],
        job_id=row[10],
        detail=json.loads(row[11]),
    )


# --------------------------------------------------------------------------- #
# Audit rows derived from job store events
# --------------------------------------------------------------------------- #


_ASSOCIATION_EVENTS: dict[str, tuple[AuditEventType, str | None]] = {
    "association_accepted": (AuditEventType.ASSOCIATION_ACCEPTED, None),
    "association_rejected": (AuditEventType.ASSOCIATION_REJECTED, None),
    "association_released": (AuditEventType.ASSOCIATION_CLOSED, "release"),
    "association_aborted": (AuditEventType.ASSOCIATION_CLOSED, "abort"),
}
_SEND_JOB_EVENTS = frozenset({"job_succeeded", "job_failed"})
_STUDY_EVENTS = frozenset({"study_complete", "study_skipped", "study_analysed", "study_failed"})
_AUDITED_EVENTS = frozenset(_ASSOCIATION_EVENTS) | _SEND_JOB_EVENTS | _STUDY_EVENTS


def _association(at: float, event: str, details: dict[str, Any]) -> AuditEvent:
    event_type, closed_by = _ASSOCIATION_EVENTS[event]
    detail = {
        key: details[key]
        for key in ("reason", "instances_stored", "instances_failed")
        if key in details
    }
    if closed_by is not None:
        detail["closed_by"] = closed_by
    return AuditEvent(
        event_type,
        at,
        calling_ae_title=details.get("calling_ae_title"),
        called_ae_title=details.get("called_ae_title"),
        peer_address=details.get("peer_address"),
        detail=detail,
    )


def _study_received(db: sqlite3.Connection, at: float, study_uid: str) -> list[AuditEvent]:
    """Count the instances received since the study's last ``study_received`` row."""
    rows = db.execute(
        "SELECT calling_ae_title, peer_address, COUNT(*), SUM(is_node_output), "
        "MIN(received_at), MAX(received_at), json_group_array(DISTINCT series_instance_uid) "
        "FROM instances WHERE study_instance_uid = ? AND received_at > COALESCE(("
        "  SELECT MAX(at) FROM audit_events WHERE study_instance_uid = ? AND event_type = ?"
        "), -1.0e300) GROUP BY calling_ae_title, peer_address ORDER BY MIN(received_at)",
        (study_uid, study_uid, AuditEventType.STUDY_RECEIVED.value),
    ).fetchall()
    events = []
    for calling, address, count, node_outputs, first_at, last_at, series in rows:
        events.append(
            AuditEvent(
                AuditEventType.STUDY_RECEIVED,
                at,
                calling_ae_title=calling,
                peer_address=address,
                study_instance_uid=study_uid,
                series_instance_uids=tuple(sorted(json.loads(series))),
                detail={
                    "instances": count,
                    "node_outputs": node_outputs,
                    "first_received_at": first_at,
                    "last_received_at": last_at,
                },
            )
        )
    return events


def _study_result_uids(db: sqlite3.Connection, study_uid: str) -> tuple[str, ...]:
    """Return the SOP Instance UIDs queued for the study's current input fingerprint."""
    rows = db.execute(
        "SELECT DISTINCT o.sop_instance_uid FROM outbox o JOIN studies s "
        "ON s.study_instance_uid = o.study_instance_uid "
        "AND s.input_fingerprint = o.input_fingerprint "
        "WHERE o.study_instance_uid = ? ORDER BY o.item_id",
        (study_uid,),
    ).fetchall()
    return tuple(row[0] for row in rows)


def _send_job(
    db: sqlite3.Connection, at: float, study_uid: str | None, details: dict[str, Any], *, ok: bool
) -> list[AuditEvent]:
    row = db.execute(
        "SELECT sop_instance_uid, destination FROM outbox WHERE job_id = ?",
        (details.get("job_id"),),
    ).fetchone()
    if row is None:  # not a send job (an analysis)
        return []
    # NOTE: the job store does not store the destination's AE title, so result
    # rows name the [[destinations]] entry and leave the AE titles empty.
    detail: dict[str, Any] = {"attempt": details.get("attempt")}
    if not ok:
        detail["error"] = details.get("error")
    return [
        AuditEvent(
            AuditEventType.RESULT_SENT if ok else AuditEventType.SEND_FAILED,
            at,
            study_instance_uid=study_uid,
            sop_instance_uids=(row[0],),
            destination=row[1],
            job_id=details.get("job_id"),
            detail=detail,
        )
    ]


def _study_event(
    db: sqlite3.Connection, at: float, event: str, study_uid: str, details: dict[str, Any]
) -> list[AuditEvent]:
    from_receiving = details.get("from_state") == StudyState.RECEIVING.value
    events = []
    if event in ("study_complete", "study_skipped") and from_receiving:
        events += _study_received(db, at, study_uid)
    if event == "study_skipped":
        events.append(
            AuditEvent(
                AuditEventType.STUDY_SKIPPED,
                at,
                study_instance_uid=study_uid,
                detail={"reason": details.get("reason")},
            )
        )
    elif event == "study_analysed":
        events.append(
            AuditEvent(
                AuditEventType.STUDY_ANALYSED,
                at,
                study_instance_uid=study_uid,
                sop_instance_uids=_study_result_uids(db, study_uid),
                job_id=details.get("job_id"),
                detail={
                    "objects": details.get("objects"),
                    "destinations": details.get("destinations"),
                    "clinical_text": (details.get("clinical_text") or {}).get("available"),
                },
            )
        )
    elif event == "study_failed" and details.get("reason") != FailureCode.SEND_FAILED.value:
        # A failed send is audited per result (send_failed), not per study.
        events.append(
            AuditEvent(
                AuditEventType.ANALYSIS_FAILED,
                at,
                study_instance_uid=study_uid,
                job_id=details.get("job_id"),
                detail={"reason": details.get("reason"), "message": details.get("message")},
            )
        )
    return events


def audit_from_event(
    db: sqlite3.Connection,
    at: float,
    event: str,
    study_uid: str | None,
    details: dict[str, Any],
) -> None:
    """Write the audit rows that a job store event implies, in the caller's transaction.

    Events without an audit meaning (``instance_replaced``, ``job_added``...)
    cost one dictionary lookup.
    """
    if event not in _AUDITED_EVENTS:
        return
    if event in _ASSOCIATION_EVENTS:
        derived = [_association(at, event, details)]
    elif event in _SEND_JOB_EVENTS:
        derived = _send_job(db, at, study_uid, details, ok=event == "job_succeeded")
    elif study_uid is not None:
        derived = _study_event(db, at, event, study_uid, details)
    else:
        derived = []
    for audit_event in derived:
        insert_audit(db, audit_event)


# --------------------------------------------------------------------------- #
# Job store methods
# --------------------------------------------------------------------------- #


class AuditMixin(JobStoreCore):
    """Methods on the ``audit_events`` table; needs the store's lock and connection."""

    def record_audit(self, event: AuditEvent) -> int:
        """Append one audit row in its own transaction; return its id."""
        with self._transaction() as db:
            return insert_audit(db, event)

    def iter_audit(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        study_uid: str | None = None,
        event_types: tuple[AuditEventType, ...] | None = None,
    ) -> Iterator[AuditEvent]:
        """Yield audit rows in the order they were written.

        Parameters
        ----------
        since, until
            Seconds since the epoch; rows at or after ``since`` and before
            ``until`` are returned.
        """
        conditions = ["audit_id > ?"]
        params: list[Any] = []
        if since is not None:
            conditions.append("at >= ?")
            params.append(since)
        if until is not None:
            conditions.append("at < ?")
            params.append(until)
        if study_uid is not None:
            conditions.append("study_instance_uid = ?")
            params.append(study_uid)
        if event_types is not None:
            conditions.append(f"event_type IN ({placeholders(len(event_types))})")
            params += [AuditEventType(kind).value for kind in event_types]
        query = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE {' AND '.join(conditions)} "
            "ORDER BY audit_id LIMIT ?"
        )
        last_id = 0
        while True:
            # Read in batches, so a long export does not hold the lock throughout.
            with self._lock:
                rows = self._db.execute(query, [last_id, *params, _EXPORT_BATCH]).fetchall()
            for row in rows:
                yield audit_from_row(row)
            if len(rows) < _EXPORT_BATCH:
                return
            last_id = rows[-1][0]

    def list_audit(
        self,
        *,
        study_uid: str | None = None,
        event_types: tuple[AuditEventType, ...] | None = None,
    ) -> list[AuditEvent]:
        """Return audit rows, oldest first, of one study and of some types if given."""
        return list(self.iter_audit(study_uid=study_uid, event_types=event_types))

    def recent_audit(
        self, event_types: tuple[AuditEventType, ...], limit: int = 10
    ) -> list[AuditEvent]:
        """Return the ``limit`` most recent rows of ``event_types``, newest first."""
        marks = ", ".join("?" * len(event_types))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE event_type IN ({marks}) "
                "ORDER BY audit_id DESC LIMIT ?",
                [*(AuditEventType(kind).value for kind in event_types), limit],
            ).fetchall()
        return [audit_from_row(row) for row in rows]
