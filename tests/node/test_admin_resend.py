"""``hipfuse-node resend``: the same result objects, same UIDs, sent again to a real SCP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from admin_helpers import analysed_study, destination_sender, recording_pacs
from ingest_helpers import instance_record
from worker_helpers import FakeClock, node_settings

from hipfuse.node.audit import AuditEventType
from hipfuse.node.cli import main
from hipfuse.node.jobstore import JobStore
from hipfuse.node.jobstore_retention import DeletedFiles
from hipfuse.node.states import JobState, StudyState

STUDY = "1.2.3"
NODE_CLI = [sys.executable, "-m", "hipfuse.node.cli"]


def test_resend_stores_same_uids_twice(tmp_path: Path, capsys) -> None:
    # The command stamps the items with the wall clock: the node's clock must reach it.
    clock = FakeClock(time.time())
    with recording_pacs() as pacs:
        config, settings = node_settings(tmp_path, destinations=(("pacs", "PACS", pacs.port),))
        data_dir = settings.storage.data_dir
        with JobStore.in_data_dir(data_dir, clock=clock) as store:
            written = analysed_study(store, data_dir)
            sender = destination_sender(store, "pacs", pacs.port, clock)
            assert sender.run_once() == 2
            assert store.get_study(STUDY).state is StudyState.DONE

            status = main(["resend", STUDY, "--config", str(config)])

            output = capsys.readouterr().out
            assert status == 0
            assert store.get_study(STUDY).state is StudyState.SENDING
            clock.advance(60.0)
            assert sender.run_once() == 2
            assert store.get_study(STUDY).state is StudyState.DONE
            resend_rows = store.list_audit(event_types=(AuditEventType.RESEND_REQUESTED,))
            sent_rows = store.list_audit(event_types=(AuditEventType.RESULT_SENT,))

    uids = [result.sop_instance_uid for result in written]
    assert pacs.sop_uids() == uids + uids
    assert {calling for _, _, calling in pacs.received} == {"HIPFUSE"}
    for uid in uids:
        assert f"queued {uid} -> pacs (was sent after 1 attempt)" in output
    assert "2 item(s) queued for pacs; study state sending" in output
    assert len(resend_rows) == 1
    assert resend_rows[0].sop_instance_uids == tuple(uids)
    assert resend_rows[0].destination == "pacs"
    assert resend_rows[0].detail["requeued"] == 2
    assert [row.sop_instance_uids[0] for row in sent_rows] == uids + uids


def test_resend_from_other_process_while_sending(tmp_path: Path) -> None:
    """The CLI runs as its own process beside a sender thread that keeps the store open."""
    with recording_pacs() as pacs:
        config, settings = node_settings(tmp_path, destinations=(("pacs", "PACS", pacs.port),))
        data_dir = settings.storage.data_dir
        with JobStore.in_data_dir(data_dir) as store:
            written = analysed_study(store, data_dir)
            stop = threading.Event()
            sender = destination_sender(store, "pacs", pacs.port, clock=lambda: 1e12)
            thread = threading.Thread(target=sender.run, args=(stop, 0.05), daemon=True)
            thread.start()
            try:
                assert len(pacs.wait_for(2, timeout_s=30)) == 2

                result = subprocess.run(
                    [*NODE_CLI, "resend", STUDY, "--config", str(config)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

                assert result.returncode == 0, result.stderr
                received = pacs.wait_for(4, timeout_s=30)
            finally:
                stop.set()
                thread.join(timeout=30)
            items = store.list_outbox(study_uid=STUDY)

    uids = [obj.sop_instance_uid for obj in written]
    assert received == uids + uids
    assert [item.state for item in items] == [JobState.SUCCEEDED] * 2
    assert [item.attempts for item in items] == [1, 1]


def test_resend_one_destination_and_new_one(tmp_path: Path, capsys) -> None:
    clock = FakeClock(1000.0)
    config, settings = node_settings(
        tmp_path, destinations=(("pacs", "PACS", 11113), ("archive", "ARCHIVE", 11114))
    )
    with JobStore.in_data_dir(settings.storage.data_dir, clock=clock) as store:
        # Analysed while only "pacs" was configured; "archive" was added since.
        written = analysed_study(store, settings.storage.data_dir, destinations=["pacs"])

        assert main(["resend", STUDY, "--destination", "archive", "--config", str(config)]) == 0
        after_one = {(item.sop_instance_uid, item.destination) for item in store.list_outbox()}
        assert main(["resend", STUDY, "--config", str(config)]) == 0
        items = store.list_outbox()

    output = capsys.readouterr().out
    uids = [obj.sop_instance_uid for obj in written]
    assert after_one == {(uid, name) for uid in uids for name in ("pacs", "archive")}
    assert f"queued {uids[0]} -> archive (new for this destination)" in output
    assert len(items) == 4
    assert {item.state for item in items} == {JobState.PENDING}
    assert {item.attempts for item in items} == {0}


def test_resend_leaves_item_being_sent(tmp_path: Path, capsys) -> None:
    clock = FakeClock(1000.0)
    config, settings = node_settings(tmp_path)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=clock) as store:
        written = analysed_study(store, settings.storage.data_dir, count=1)
        claimed = store.claim_due_sends("pacs")

        assert main(["resend", STUDY, "--config", str(config)]) == 0
        item = store.list_outbox()[0]

    assert [c.sop_instance_uid for c in claimed] == [written[0].sop_instance_uid]
    assert item.state is JobState.RUNNING
    assert "the node is sending it now" in capsys.readouterr().out


def _unknown_study(store: JobStore, data_dir: Path) -> None:
    analysed_study(store, data_dir)


def _never_analysed(store: JobStore, data_dir: Path) -> None:
    store.record_instance(instance_record("4.5.6.1.1", study="4.5.6", series="4.5.6.1"))


def _no_destination(store: JobStore, data_dir: Path) -> None:
    analysed_study(store, data_dir, "4.5.6", destinations=[])


def _purged(store: JobStore, data_dir: Path) -> None:
    analysed_study(store, data_dir, "4.5.6")
    for item in store.claim_due_sends("pacs"):
        store.finish_job(item.job_id, succeeded=True)
    store.settle_study_sends("4.5.6")
    assert store.begin_purge("4.5.6", finished_before=2e9)
    store.finish_purge("4.5.6", DeletedFiles(1, 100, 2), retention_days=30.0)


def _file_missing(store: JobStore, data_dir: Path) -> None:
    written = analysed_study(store, data_dir, "4.5.6")
    written[1].path.unlink()


@pytest.mark.parametrize(
    ("prepare", "study", "extra", "message"),
    [
        (_unknown_study, "9.9.9", [], "no study with Study Instance UID '9.9.9'"),
        (_never_analysed, "4.5.6", [], "study 4.5.6 has no results: it was never analysed"),
        (_no_destination, "4.5.6", [], "analysed while no destination was configured"),
        (_purged, "4.5.6", [], "were deleted by retention on 1970-01-01T00:16:40.000Z"),
        (_file_missing, "4.5.6", [], "1 result file(s) of study 4.5.6 are missing"),
        (_unknown_study, STUDY, ["--destination", "nope"], "destination 'nope' is not configured"),
    ],
    ids=[
        "unknown-study",
        "never-analysed",
        "no-destination",
        "purged",
        "file-missing",
        "unknown-destination",
    ],
)
def test_resend_errors(tmp_path: Path, capsys, prepare, study, extra, message) -> None:
    config, settings = node_settings(tmp_path)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=FakeClock(1000.0)) as store:
        prepare(store, settings.storage.data_dir)
        before = [(item.job_id, item.state, item.attempts) for item in store.list_outbox()]

        status = main(["resend", study, *extra, "--config", str(config)])

        after = [(item.job_id, item.state, item.attempts) for item in store.list_outbox()]
        resends = store.list_audit(event_types=(AuditEventType.RESEND_REQUESTED,))
    assert status == 2
    assert message in capsys.readouterr().err
    assert after == before
    assert resends == []


def test_resend_without_job_store(tmp_path: Path, capsys) -> None:
    config, _ = node_settings(tmp_path)

    assert main(["resend", STUDY, "--config", str(config)]) == 1
    assert "no job store at" in capsys.readouterr().err


def test_resend_replaces_waiting_retry(tmp_path: Path, capsys) -> None:
    clock = FakeClock(time.time())
    config, settings = node_settings(tmp_path)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=clock) as store:
        analysed_study(store, settings.storage.data_dir, count=1)
        [claimed] = store.claim_due_sends("pacs")
        retry_at = clock() + 3600.0
        store.finish_job(claimed.job_id, succeeded=False, error="timed out", retry_at=retry_at)

        assert main(["resend", STUDY, "--config", str(config)]) == 0

        [item] = store.list_outbox()
        jobs = {job.job_id: job for job in store.list_jobs(STUDY)}
    assert "(was queued after 1 attempt: timed out)" in capsys.readouterr().out
    assert item.job_id != claimed.job_id
    assert (item.state, item.attempts) == (JobState.PENDING, 0)
    assert item.next_attempt_at < retry_at
    old = jobs[claimed.job_id]
    assert old.state is JobState.FAILED
    assert old.last_error == f"replaced by job {item.job_id} (resend)"
