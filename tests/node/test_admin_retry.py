"""``hipfuse-node retry-failed``: failed sends and failed analyses back in the queue."""

from __future__ import annotations

import time
from pathlib import Path

from admin_helpers import analysed_study, destination_sender
from ingest_helpers import instance_record
from worker_helpers import FakeClock, node_settings

from hipfuse.node.audit import AuditEventType
from hipfuse.node.cli import main
from hipfuse.node.jobstore import JobStore
from hipfuse.node.scu import AssociationError
from hipfuse.node.states import FailureCode, JobKind, JobState, StudyState


class DownThenUp:
    """Stands in for store_files: refuses to connect until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[Path] = []

    def __call__(self, peer, files):
        from hipfuse.node.scu import StoreOutcome

        if not self.up:
            raise AssociationError(f"{peer.describe()} could not be reached (connection refused)")
        self.sent += [file.path for file in files]
        return [StoreOutcome(file.path, 0x0000, None) for file in files]


def fail_sends(store: JobStore, clock: FakeClock, name: str, fake: DownThenUp) -> None:
    """Run the sender of ``name`` until its items fail for good (2 attempts)."""
    sender = destination_sender(store, name, 11113, clock, store_fn=fake)
    sender.run_once()
    clock.advance(10.0)
    sender.run_once()


def failed_node(tmp_path: Path, clock: FakeClock):
    """A job store with failed sends to pacs and archive, and one failed analysis."""
    config, settings = node_settings(
        tmp_path, destinations=(("pacs", "PACS", 11113), ("archive", "ARCHIVE", 11114))
    )
    store = JobStore.in_data_dir(settings.storage.data_dir, clock=clock)
    written = analysed_study(
        store, settings.storage.data_dir, destinations=["pacs", "archive"], count=2
    )
    fake = DownThenUp()
    fail_sends(store, clock, "pacs", fake)
    fail_sends(store, clock, "archive", fake)
    store.record_instance(instance_record("4.5.1.1", study="4.5", series="4.5.1"))
    store.transition("4.5", StudyState.COMPLETE)
    store.transition("4.5", StudyState.ANALYSING)
    store.transition(
        "4.5", StudyState.FAILED, reason="hip_not_found", details={"message": "no hip found"}
    )
    return config, store, written, fake


def test_retry_failed_requeues_sends_and_analyses(tmp_path: Path, capsys) -> None:
    clock = FakeClock(time.time())
    config, store, written, fake = failed_node(tmp_path, clock)
    with store:
        assert store.get_study("1.2.3").state_reason == FailureCode.SEND_FAILED
        assert {item.state for item in store.list_outbox()} == {JobState.FAILED}

        status = main(["retry-failed", "--config", str(config)])

        output = capsys.readouterr().out
        items = store.list_outbox()
        assert store.get_study("1.2.3").state is StudyState.SENDING
        assert store.get_study("4.5").state is StudyState.COMPLETE
        claimed = store.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)

        fake.up = True
        clock.advance(60.0)
        for name in ("pacs", "archive"):
            destination_sender(store, name, 11113, clock, store_fn=fake).run_once()
        final_state = store.get_study("1.2.3").state
        retries = store.list_audit(event_types=(AuditEventType.RETRY_REQUESTED,))
        send_jobs = store.list_jobs("1.2.3")

    assert status == 0
    uid = written[0].sop_instance_uid
    assert (
        f"queued send {uid} of study 1.2.3 -> pacs (was failed after 2 attempts: "
        "PACS@127.0.0.1:11113 could not be reached (connection refused))"
    ) in output
    assert "queued analysis of study 4.5 (failed: hip_not_found)" in output
    assert "queued 4 send(s) and 1 analysis(es)" in output
    assert [(item.state, item.attempts) for item in items] == [(JobState.PENDING, 0)] * 4
    assert claimed is not None and claimed.study_instance_uid == "4.5"
    assert final_state is StudyState.DONE
    assert len(fake.sent) == 4
    # The failed jobs keep their history; each item got a new job.
    kinds = [(job.kind, job.state) for job in send_jobs if job.kind == JobKind.SEND]
    assert kinds.count((JobKind.SEND, JobState.FAILED)) == 4
    assert kinds.count((JobKind.SEND, JobState.SUCCEEDED)) == 4
    by_kind = {(row.study_instance_uid, row.destination, row.detail["kind"]) for row in retries}
    assert by_kind == {
        ("1.2.3", "archive", "send"),
        ("1.2.3", "pacs", "send"),
        ("4.5", None, "analyse"),
    }


def test_retry_failed_one_destination(tmp_path: Path, capsys) -> None:
    clock = FakeClock(time.time())
    config, store, _, _ = failed_node(tmp_path, clock)
    with store:
        status = main(["retry-failed", "--config", str(config), "--destination", "pacs"])

        states = {(item.destination, item.state) for item in store.list_outbox()}
        analysis_state = store.get_study("4.5").state

    assert status == 0
    assert states == {("pacs", JobState.PENDING), ("archive", JobState.FAILED)}
    assert analysis_state is StudyState.FAILED
    assert "queued 2 send(s) and 0 analysis(es)" in capsys.readouterr().out


def test_retry_failed_leaves_unconfigured_destination(tmp_path: Path, capsys) -> None:
    clock = FakeClock(time.time())
    _, store, _, _ = failed_node(tmp_path, clock)
    store.close()
    # The same node, with "archive" removed from the settings.
    config, _ = node_settings(tmp_path, destinations=(("pacs", "PACS", 11113),))

    assert main(["retry-failed", "--config", str(config)]) == 0

    output = capsys.readouterr().out
    assert "left 2 failed item(s) for destination archive: it is not in" in output
    assert "queued 2 send(s) and 1 analysis(es)" in output


def test_retry_failed_with_nothing_failed(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=FakeClock(1000.0)) as store:
        analysed_study(store, settings.storage.data_dir)

        assert main(["retry-failed", "--config", str(config)]) == 0

        states = {item.state for item in store.list_outbox()}
    assert capsys.readouterr().out.strip() == "nothing failed to retry"
    assert states == {JobState.PENDING}


def test_retry_failed_unknown_destination(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    JobStore.in_data_dir(settings.storage.data_dir).close()

    assert main(["retry-failed", "--config", str(config), "--destination", "old"]) == 2
    assert "destination 'old' is not configured" in capsys.readouterr().err
