"""``hipfuse-node status``: recent failures with reason, time and failed sends; rejections."""

from __future__ import annotations

import json
from pathlib import Path

from admin_helpers import analysed_study
from ingest_helpers import instance_record
from worker_helpers import FakeClock, node_settings

from hipfuse.node.cli import main
from hipfuse.node.jobstore import JobStore
from hipfuse.node.jobstore_retention import DeletedFiles
from hipfuse.node.states import StudyState

# 2026-03-01T08:00:00Z
MARCH_FIRST = 1_772_352_000.0


def fill(settings) -> list[str]:
    """A send failure at 08:00, an analysis failure at 09:00, a rejection, a purge."""
    clock = FakeClock(MARCH_FIRST - 600.0)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=clock) as store:
        written = analysed_study(store, settings.storage.data_dir, count=2)
        clock.now = MARCH_FIRST
        for item in store.claim_due_sends("pacs"):
            store.finish_job(item.job_id, succeeded=False, error="PACS@10.0.0.5:104 timed out")
        store.settle_study_sends("1.2.3")
        clock.now = MARCH_FIRST + 3600.0
        store.record_instance(instance_record("4.5.1.1", study="4.5", series="4.5.1"))
        store.transition(
            "4.5", StudyState.FAILED, reason="hip_not_found", details={"message": "no hip found"}
        )
        store.record_event(
            "association_rejected",
            details={
                "calling_ae_title": "INTRUDER",
                "called_ae_title": "HIPFUSE",
                "peer_address": "192.0.2.7",
                "reason": "calling_ae_title_not_recognised",
            },
        )
        store.record_instance(instance_record("7.8.1.1", study="7.8", series="7.8.1"))
        store.transition("7.8", StudyState.SKIPPED, reason="no_hip_images")
        assert store.begin_purge("7.8", finished_before=clock())
        store.finish_purge("7.8", DeletedFiles(1, 100, 0), retention_days=30.0)
    return [obj.sop_instance_uid for obj in written]


def test_status_text_lists_failures_with_time(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    uids = fill(settings)

    assert main(["status", "--config", str(config)]) == 0

    text = capsys.readouterr().out
    failures = text.split("recent failures (newest first):\n")[1].splitlines()
    assert failures[0] == "  2026-03-01T09:00:00.000Z  4.5  hip_not_found: no hip found"
    assert failures[1] == "  2026-03-01T08:00:00.000Z  1.2.3  send_failed"
    assert failures[2] == (
        f"    {uids[0]} -> pacs failed 2026-03-01T08:00:00.000Z after 1 attempts: "
        "PACS@10.0.0.5:104 timed out"
    )
    assert "hipfuse-node retry-failed --config FILE" in text
    assert (
        "  2026-03-01T09:00:00.000Z  INTRUDER from 192.0.2.7 to HIPFUSE: "
        "calling_ae_title_not_recognised"
    ) in text
    assert "last error (failed 2026-03-01T08:00:00.000Z): PACS@10.0.0.5:104 timed out" in text
    assert "studies whose files retention deleted: 1" in text


def test_status_json_failures(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    uids = fill(settings)

    assert main(["status", "--config", str(config), "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    send_failure = status["recent_failures"][1]
    assert send_failure["failed_at_utc"] == "2026-03-01T08:00:00.000Z"
    assert [item["sop_instance_uid"] for item in send_failure["failed_sends"]] == uids
    assert send_failure["failed_sends"][0]["last_error"] == "PACS@10.0.0.5:104 timed out"
    assert status["recent_failures"][0]["failed_sends"] == []
    assert status["recent_rejections"][0]["peer_address"] == "192.0.2.7"
    assert status["outbox"][0]["unsent"][0]["failed_at"] == "2026-03-01T08:00:00.000Z"
    assert status["purged_studies"] == 1
