"""The outbox folder and the outbox table of the job store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from ingest_helpers import ct_dataset, instance_record
from worker_helpers import FakeClock

from hipfuse.node.jobstore import JobStore, ResultObject, StateConflictError
from hipfuse.node.jobstore_schema import MIGRATIONS, SCHEMA_VERSION
from hipfuse.node.outbox import OutboxFolder, result_uid
from hipfuse.node.states import FailureCode, JobState, StudyState

STUDY = "1.2.3"
FINGERPRINT = "f" * 64


@pytest.fixture
def store(tmp_path: Path):
    clock = FakeClock(1000.0)
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as jobstore:
        yield jobstore


def analysing_study(store: JobStore) -> None:
    """Record one instance and move the study to analysing with FINGERPRINT."""
    store.record_instance(instance_record("1.2.3.1.1"))
    store._db.execute(
        "UPDATE studies SET input_fingerprint = ? WHERE study_instance_uid = ?",
        (FINGERPRINT, STUDY),
    )
    store.transition(STUDY, StudyState.COMPLETE)
    store.transition(STUDY, StudyState.ANALYSING)


def objects(count: int) -> list[ResultObject]:
    return [
        ResultObject(f"1.2.3.9.{index}", "1.2.840.10008.5.1.4.1.1.7", Path(f"/outbox/{index}.dcm"))
        for index in range(1, count + 1)
    ]


# --------------------------------------------------------------------------- #
# Folder and UIDs
# --------------------------------------------------------------------------- #


def test_result_uid_fixed_and_distinct() -> None:
    first = result_uid("sr", FINGERPRINT, "a" * 64)

    assert first == result_uid("sr", FINGERPRINT, "a" * 64)
    assert first != result_uid("sr", FINGERPRINT, "b" * 64)
    assert first != result_uid("sr", "e" * 64, "a" * 64)
    assert first != result_uid("sr-series", FINGERPRINT, "a" * 64)
    assert len(first) <= 64


def test_outbox_folder_writes_part10_files(tmp_path: Path) -> None:
    folder = OutboxFolder(tmp_path)
    folder.prepare()
    datasets = [ct_dataset(STUDY, "1.2.3.4", index) for index in range(2)]

    written = folder.write(STUDY, datasets)

    assert [obj.sop_instance_uid for obj in written] == [ds.SOPInstanceUID for ds in datasets]
    for obj in written:
        assert obj.path.parent == tmp_path / "outbox" / STUDY
        assert pydicom.dcmread(obj.path).SOPInstanceUID == obj.sop_instance_uid
    assert list((tmp_path / "outbox" / STUDY).glob(".*")) == []


def test_outbox_folder_removes_temp_files(tmp_path: Path) -> None:
    folder = OutboxFolder(tmp_path)
    (tmp_path / "outbox" / STUDY).mkdir(parents=True)
    (tmp_path / "outbox" / STUDY / ".1.2.3.9.abc.tmp").write_bytes(b"half")

    assert folder.prepare() == 1
    assert list((tmp_path / "outbox" / STUDY).iterdir()) == []


def test_outbox_folder_rejects_bad_study_uid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid UID"):
        OutboxFolder(tmp_path).write("../etc", [ct_dataset(STUDY, "1.2.3.4", 0)])


# --------------------------------------------------------------------------- #
# Job store outbox
# --------------------------------------------------------------------------- #


def test_record_results_queues_items_and_moves_study(store: JobStore) -> None:
    analysing_study(store)

    items = store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(3), destinations=["pacs", "archive"]
    )

    assert len(items) == 6
    assert {(item.sop_instance_uid, item.destination) for item in items} == {
        (f"1.2.3.9.{index}", name) for index in (1, 2, 3) for name in ("pacs", "archive")
    }
    study = store.get_study(STUDY)
    assert study.state is StudyState.SENDING
    assert study.analysed_fingerprint == FINGERPRINT
    events = [event.event for event in store.list_events(STUDY)]
    assert events[-2:] == ["study_analysed", "study_sending"]


def test_record_results_without_destination_is_done(store: JobStore) -> None:
    analysing_study(store)

    items = store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(2), destinations=[]
    )

    assert items == []
    assert store.get_study(STUDY).state is StudyState.DONE


def test_queue_results_keeps_study_analysing(store: JobStore) -> None:
    analysing_study(store)

    early = store.queue_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(1), destinations=["pacs"]
    )
    items = store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(3), destinations=["pacs"]
    )

    assert [item.sop_instance_uid for item in early] == ["1.2.3.9.1"]
    assert [item.sop_instance_uid for item in items] == ["1.2.3.9.2", "1.2.3.9.3"]
    assert store.get_study(STUDY).state is StudyState.SENDING


@pytest.mark.parametrize(
    ("sent", "state"),
    [(True, StudyState.DONE), (False, StudyState.SENDING)],
    ids=["sent-before-recorded", "still-queued"],
)
def test_results_queued_early_settle_the_study(
    store: JobStore, sent: bool, state: StudyState
) -> None:
    analysing_study(store)
    store.queue_results(STUDY, fingerprint=FINGERPRINT, objects=objects(1), destinations=["p"])
    if sent:
        (item,) = store.claim_due_sends("p")
        store.finish_job(item.job_id, succeeded=True)
        # The sender settles a study only once it is sending.
        assert store.settle_study_sends(STUDY) is None

    items = store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(1), destinations=["p"]
    )

    assert items == []
    assert store.get_study(STUDY).state is state


@pytest.mark.parametrize(
    ("fingerprint", "state", "match"),
    [
        ("0" * 64, StudyState.ANALYSING, "input fingerprint"),
        (FINGERPRINT, StudyState.SKIPPED, "not analysing"),
    ],
    ids=["fingerprint-changed", "not-analysing"],
)
def test_record_results_refuses_stale_work(
    store: JobStore, fingerprint: str, state: StudyState, match: str
) -> None:
    analysing_study(store)
    if state is not StudyState.ANALYSING:
        store.transition(STUDY, state, reason="inputs_changed")

    with pytest.raises(StateConflictError, match=match):
        store.record_results(STUDY, fingerprint=fingerprint, objects=objects(1), destinations=["x"])
    assert store.list_outbox() == []


def test_outbox_unique_per_object_and_destination(store: JobStore) -> None:
    analysing_study(store)
    store.record_results(STUDY, fingerprint=FINGERPRINT, objects=objects(1), destinations=["p"])

    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO outbox (study_instance_uid, input_fingerprint, sop_instance_uid, "
            "sop_class_uid, path, destination, job_id, created_at) "
            "VALUES (?, ?, '1.2.3.9.1', '1.2', '/x', 'p', 999, 0)",
            (STUDY, FINGERPRINT),
        )


def test_claim_due_sends_by_destination(store: JobStore) -> None:
    analysing_study(store)
    store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(3), destinations=["pacs", "archive"]
    )

    claimed = store.claim_due_sends("pacs", limit=2)

    assert [item.sop_instance_uid for item in claimed] == ["1.2.3.9.1", "1.2.3.9.2"]
    assert all(item.state is JobState.RUNNING and item.attempts == 1 for item in claimed)
    assert [item.sop_instance_uid for item in store.claim_due_sends("pacs")] == ["1.2.3.9.3"]
    assert store.claim_due_sends("pacs") == []
    assert len(store.claim_due_sends("archive")) == 3


def test_claim_waits_for_retry_time(store: JobStore) -> None:
    analysing_study(store)
    store.record_results(STUDY, fingerprint=FINGERPRINT, objects=objects(1), destinations=["p"])
    item = store.claim_due_sends("p")[0]
    store.finish_job(item.job_id, succeeded=False, error="down", retry_at=1030.0)

    assert store.claim_due_sends("p", now=1029.0) == []
    again = store.claim_due_sends("p", now=1030.0)
    assert [(i.attempts, i.last_error) for i in again] == [(2, "down")]


def test_requeue_interrupted_sends(store: JobStore) -> None:
    analysing_study(store)
    store.record_results(STUDY, fingerprint=FINGERPRINT, objects=objects(2), destinations=["p"])
    store.claim_due_sends("p")

    assert store.requeue_interrupted_sends() == 2
    assert [item.state for item in store.list_outbox()] == [JobState.PENDING] * 2


@pytest.mark.parametrize(
    ("outcomes", "state", "reason"),
    [
        ([True, True], StudyState.DONE, None),
        ([True, False], StudyState.FAILED, FailureCode.SEND_FAILED),
    ],
    ids=["all-sent", "one-failed"],
)
def test_settle_study_after_last_item(
    store: JobStore, outcomes: list[bool], state: StudyState, reason: str | None
) -> None:
    analysing_study(store)
    store.record_results(STUDY, fingerprint=FINGERPRINT, objects=objects(2), destinations=["p"])
    first, second = store.claim_due_sends("p")
    store.finish_job(first.job_id, succeeded=outcomes[0], error=None if outcomes[0] else "x")

    assert store.settle_study_sends(STUDY) is None
    store.finish_job(second.job_id, succeeded=outcomes[1], error=None if outcomes[1] else "x")
    assert store.settle_study_sends(STUDY) is state
    study = store.get_study(STUDY)
    assert study.state is state
    assert study.state_reason == reason


def test_summarise_outbox_counts(store: JobStore) -> None:
    analysing_study(store)
    store.record_results(
        STUDY, fingerprint=FINGERPRINT, objects=objects(3), destinations=["pacs", "archive"]
    )
    sent = store.claim_due_sends("pacs", limit=1)[0]
    store.finish_job(sent.job_id, succeeded=True)

    summaries = {summary.destination: summary for summary in store.summarise_outbox()}

    assert summaries["pacs"].counts == {JobState.SUCCEEDED: 1, JobState.PENDING: 2}
    assert summaries["archive"].counts == {JobState.PENDING: 3}
    assert summaries["pacs"].oldest_open_at == 1000.0


def test_version_one_store_gains_outbox(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.executescript(f"BEGIN;\n{MIGRATIONS[0][1]}\nINSERT INTO schema_version VALUES (1);\nCOMMIT;")
    db.close()

    with JobStore(path) as store:
        assert store.schema_version_before_open == 1
        assert store.list_outbox() == []
    assert SCHEMA_VERSION >= 2


def test_start_job_then_fail_interrupted(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    job_id = store.start_job("analyse", STUDY)

    assert store.fail_interrupted_jobs("analyse", "stopped") == 1
    job = store.list_jobs(STUDY)[0]
    assert (job.job_id, job.state, job.last_error) == (job_id, JobState.FAILED, "stopped")
