"""Audit trail of the node: event types, records, UTC times and export as CSV or JSON Lines.

The job store keeps the trail in its ``audit_events`` table
(:mod:`hipfuse.node.jobstore_audit`). Each row records what happened, when (UTC),
between which AE titles and addresses, to which Study, Series and SOP
Instances, for which destination and job. It never contains a patient attribute:
no name, patient ID or birth date reaches it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO


class AuditEventType(StrEnum):
    """Kind of action that an audit row records."""

    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    # Released or aborted, with the association's instance counts.
    ASSOCIATION_CLOSED = "association_closed"
    # Instances of one study from one calling AE title and address, written
    # once when the study is complete.
    STUDY_RECEIVED = "study_received"
    STUDY_ANALYSED = "study_analysed"
    STUDY_SKIPPED = "study_skipped"
    ANALYSIS_FAILED = "analysis_failed"
    RESULT_SENT = "result_sent"
    # A result that was not stored after its last attempt.
    SEND_FAILED = "send_failed"
    RESEND_REQUESTED = "resend_requested"
    RETRY_REQUESTED = "retry_requested"
    DATA_DELETED = "data_deleted"


class ExportFormat(StrEnum):
    """File formats of ``hipfuse-node audit export``."""

    CSV = "csv"
    JSONL = "jsonl"


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit trail.

    ``at`` is in seconds since the epoch; ``audit_id`` is 0 until the row is stored.
    """

    event_type: AuditEventType
    at: float
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    peer_address: str | None = None
    study_instance_uid: str | None = None
    series_instance_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    destination: str | None = None
    job_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    audit_id: int = 0

    def as_export_dict(self) -> dict[str, Any]:
        """Return the row as written to JSON Lines, in :data:`EXPORT_COLUMNS` order."""
        return {
            "audit_id": self.audit_id,
            "time": utc_iso(self.at),
            "event_type": self.event_type.value,
            "calling_ae_title": self.calling_ae_title,
            "called_ae_title": self.called_ae_title,
            "peer_address": self.peer_address,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uids": list(self.series_instance_uids),
            "sop_instance_uids": list(self.sop_instance_uids),
            "destination": self.destination,
            "job_id": self.job_id,
            "detail": self.detail,
        }


EXPORT_COLUMNS = (
    "audit_id",
    "time",
    "event_type",
    "calling_ae_title",
    "called_ae_title",
    "peer_address",
    "study_instance_uid",
    "series_instance_uids",
    "sop_instance_uids",
    "destination",
    "job_id",
    "detail",
)


def utc_iso(at: float) -> str:
    """Format seconds since the epoch as ISO 8601 in UTC to the millisecond, ``...Z``."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_time(text: str, option: str) -> float:
    """Return seconds since the epoch for an ISO 8601 date or date and time.

    A value without a UTC offset is taken as UTC.

    Raises
    ------
    ValueError
        ``text`` is not ISO 8601; the message names ``option`` and an example.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is not an ISO 8601 date or time; "
            "use for example 2026-03-01 or 2026-03-01T08:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def write_jsonl(events: Iterable[AuditEvent], handle: TextIO) -> int:
    """Write one JSON object per line; return the number of rows written."""
    count = 0
    for event in events:
        handle.write(json.dumps(event.as_export_dict(), sort_keys=False) + "\n")
        count += 1
    return count


def write_csv(events: Iterable[AuditEvent], handle: TextIO) -> int:
    """Write a header row and one row per event; return the number of events written.

    Lists of UIDs are joined with single spaces (a UID never contains one),
    ``detail`` is a JSON object, and an empty value is an empty cell.
    """
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for event in events:
        row = event.as_export_dict()
        row["series_instance_uids"] = " ".join(row["series_instance_uids"])
        row["sop_instance_uids"] = " ".join(row["sop_instance_uids"])
        row["detail"] = json.dumps(row["detail"], sort_keys=True)
        writer.writerow(["" if row[name] is None else row[name] for name in EXPORT_COLUMNS])
        count += 1
    return count


WRITERS = {ExportFormat.CSV: write_csv, ExportFormat.JSONL: write_jsonl}

# A-ASSOCIATE-RJ (source, reason/diagnostic) pairs that pynetdicom sends on its
# own, named as in PS3.8 Table 9-21.
_REJECT_REASONS = {
    (0x01, 0x01): "no_reason_given",
    (0x01, 0x02): "application_context_name_not_supported",
    (0x01, 0x03): "calling_ae_title_not_recognised",
    (0x01, 0x07): "called_ae_title_not_recognised",
    (0x02, 0x01): "no_reason_given",
    (0x02, 0x02): "protocol_version_not_supported",
    (0x03, 0x01): "temporary_congestion",
    (0x03, 0x02): "local_limit_exceeded",
}


def association_details(association: Any) -> dict[str, str]:
    """Return the calling and called AE titles and peer address of a pynetdicom association."""
    requestor = association.requestor
    # The A-ASSOCIATE-RQ primitive contains both titles from EVT_REQUESTED on,
    # but requestor.ae_title is only filled in once the association is accepted.
    primitive = getattr(requestor, "primitive", None)
    calling = getattr(primitive, "calling_ae_title", None) or requestor.ae_title
    called = getattr(primitive, "called_ae_title", None) or association.acceptor.ae_title
    return {
        "calling_ae_title": str(calling).strip(),
        "called_ae_title": str(called).strip(),
        "peer_address": str(requestor.address),
    }


def rejection_reason(association: Any) -> str:
    """Return the name of the A-ASSOCIATE-RJ reason pynetdicom sent on an association."""
    primitive = association.acceptor.primitive
    source = getattr(primitive, "result_source", None)
    diagnostic = getattr(primitive, "diagnostic", None)
    name = _REJECT_REASONS.get((source, diagnostic))
    if name is None:
        return f"rejected (source {source}, reason {diagnostic})"
    return name
