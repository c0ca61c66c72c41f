"""Contents of ``hipfuse-node status``: studies in flight, the outbox, recent failures.

:func:`collect_status` reads the job store into a JSON-ready dictionary and
:func:`format_status` renders it for people. Patient attributes are never
stored in the job store, so neither shows any.

Recent failures are failed studies with reason, time (UTC) and the failed
sends of each, and associations that were rejected.
"""

from __future__ import annotations

import time
from typing import Any

from hipfuse.config.settings import Settings
from hipfuse.node.audit import AuditEventType, utc_iso
from hipfuse.node.jobstore import JobStore
from hipfuse.node.states import FailureCode, JobState, StudyState

# Studies that are not finished yet, in flow order.
QUEUE_STATES = (
    StudyState.RECEIVING,
    StudyState.COMPLETE,
    StudyState.ANALYSING,
    StudyState.ANALYSED,
    StudyState.ENCODING,
    StudyState.SENDING,
)
_OPEN_OR_FAILED = (JobState.PENDING, JobState.RUNNING, JobState.FAILED)


def collect_status(
    jobstore: JobStore, settings: Settings, *, recent: int = 10, now: float | None = None
) -> dict[str, Any]:
    """Read the node's state from the job store.

    Parameters
    ----------
    recent
        Most failed studies, unsent items per destination and rejected
        associations listed.
    now
        Seconds since the epoch that ages and retry times are measured from.
    """
    at = time.time() if now is None else now
    counts = jobstore.count_studies_by_state()
    queue = [
        {
            "study_instance_uid": study.study_instance_uid,
            "state": study.state.value,
            "instances": study.instance_count,
            "idle_s": round(at - study.last_instance_at, 1),
        }
        for study in jobstore.list_studies(QUEUE_STATES, limit=100)
    ]

    summaries = {summary.destination: summary for summary in jobstore.summarise_outbox()}
    configured = [destination.name for destination in settings.destinations]
    outbox = []
    for name in [*configured, *sorted(set(summaries) - set(configured))]:
        summary = summaries.get(name)
        items = jobstore.list_outbox(destination=name, states=_OPEN_OR_FAILED, limit=recent)
        outbox.append(
            {
                "destination": name,
                "configured": name in configured,
                "counts": {
                    state.value: (summary.counts.get(state, 0) if summary else 0)
                    for state in JobState
                },
                "oldest_unsent_age_s": (
                    round(at - summary.oldest_open_at, 1)
                    if summary and summary.oldest_open_at is not None
                    else None
                ),
                "unsent": [
                    {
                        "study_instance_uid": item.study_instance_uid,
                        "sop_instance_uid": item.sop_instance_uid,
                        "state": item.state.value,
                        "attempts": item.attempts,
                        "last_error": item.last_error,
                        "next_attempt_in_s": (
                            round(max(item.next_attempt_at - at, 0.0), 1)
                            if item.state is JobState.PENDING
                            else None
                        ),
                        "failed_at": (
                            utc_iso(item.updated_at) if item.state is JobState.FAILED else None
                        ),
                    }
                    for item in items
                ],
            }
        )

    return {
        "data_dir": str(settings.storage.data_dir),
        "studies": {state.value: counts.get(state, 0) for state in StudyState},
        "queue": queue,
        "outbox": outbox,
        "recent_failures": _recent_failures(jobstore, recent),
        "recent_rejections": _recent_rejections(jobstore, recent),
        "purged_studies": jobstore.count_purged(),
    }


def _recent_failures(jobstore: JobStore, recent: int) -> list[dict[str, Any]]:
    """Return the failed studies, most recent first, with their reason, time and failed sends."""
    failures = []
    for study in jobstore.recent_failed_studies(recent):
        message = None
        for event in reversed(jobstore.list_events(study.study_instance_uid, limit=50)):
            if event.event == "study_failed":
                message = event.details.get("message")
                break
        failed_sends = []
        if study.state_reason == FailureCode.SEND_FAILED.value:
            failed_sends = [
                {
                    "destination": item.destination,
                    "sop_instance_uid": item.sop_instance_uid,
                    "attempts": item.attempts,
                    "last_error": item.last_error,
                    "failed_at": utc_iso(item.updated_at),
                }
                for item in jobstore.list_outbox(
                    study_uid=study.study_instance_uid, states=[JobState.FAILED], limit=recent
                )
            ]
        failures.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "reason": study.state_reason,
                "message": message,
                "failed_at": study.state_changed_at,
                "failed_at_utc": utc_iso(study.state_changed_at),
                "failed_sends": failed_sends,
            }
        )
    return failures


def _recent_rejections(jobstore: JobStore, recent: int) -> list[dict[str, Any]]:
    """Return the most recent rejected associations, newest first."""
    return [
        {
            "time": utc_iso(event.at),
            "calling_ae_title": event.calling_ae_title,
            "called_ae_title": event.called_ae_title,
            "peer_address": event.peer_address,
            "reason": event.detail.get("reason"),
        }
        for event in jobstore.recent_audit((AuditEventType.ASSOCIATION_REJECTED,), recent)
    ]


def format_status(status: dict[str, Any]) -> str:
    """Render :func:`collect_status` output as text, one section per topic."""
    lines = [f"data directory: {status['data_dir']}", "", "studies by state:"]
    studies = {state: count for state, count in status["studies"].items() if count}
    lines.append(
        "  " + ", ".join(f"{state} {count}" for state, count in studies.items())
        if studies
        else "  none"
    )

    lines += ["", "queue (studies not finished):"]
    if not status["queue"]:
        lines.append("  empty")
    for study in status["queue"]:
        lines.append(
            f"  {study['study_instance_uid']}  {study['state']}, {study['instances']} "
            f"instances, last one {study['idle_s']} s ago"
        )

    lines += ["", "outbox per destination:"]
    if not status["outbox"]:
        lines.append("  no destination configured and nothing queued")
    for destination in status["outbox"]:
        counts = destination["counts"]
        note = "" if destination["configured"] else " (no longer configured)"
        lines.append(
            f"  {destination['destination']}{note}: {counts['pending']} pending, "
            f"{counts['running']} sending, {counts['succeeded']} sent, {counts['failed']} failed"
        )
        if destination["oldest_unsent_age_s"] is not None:
            lines.append(
                f"    oldest unsent item queued {destination['oldest_unsent_age_s']} s ago"
            )
        for item in destination["unsent"]:
            retry = (
                f", next attempt in {item['next_attempt_in_s']} s"
                if item["next_attempt_in_s"] is not None
                else ""
            )
            lines.append(
                f"    {item['sop_instance_uid']} (study {item['study_instance_uid']}): "
                f"{item['state']}, {item['attempts']} attempts{retry}"
            )
            if item["last_error"]:
                failed = f" (failed {item['failed_at']})" if item["failed_at"] else ""
                lines.append(f"      last error{failed}: {item['last_error']}")

    lines += ["", "recent failures (newest first):"]
    if not status["recent_failures"]:
        lines.append("  none")
    for failure in status["recent_failures"]:
        detail = f": {failure['message']}" if failure["message"] else ""
        lines.append(
            f"  {failure['failed_at_utc']}  {failure['study_instance_uid']}  "
            f"{failure['reason']}{detail}"
        )
        for send in failure["failed_sends"]:
            lines.append(
                f"    {send['sop_instance_uid']} -> {send['destination']} failed "
                f"{send['failed_at']} after {send['attempts']} attempts: {send['last_error']}"
            )
    if status["recent_failures"]:
        lines.append("  queue them again with: hipfuse-node retry-failed --config FILE")

    lines += ["", "recent rejected associations (newest first):"]
    if not status["recent_rejections"]:
        lines.append("  none")
    for rejection in status["recent_rejections"]:
        lines.append(
            f"  {rejection['time']}  {rejection['calling_ae_title']} from "
            f"{rejection['peer_address']} to {rejection['called_ae_title']}: "
            f"{rejection['reason']}"
        )
    lines += ["", f"studies whose files retention deleted: {status['purged_studies']}"]
    return "\n".join(lines)
