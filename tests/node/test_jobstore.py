from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from ingest_helpers import instance_record

from hipfuse.node.jobstore import (
    IllegalTransitionError,
    JobStore,
    SeriesAssembly,
    StateConflictError,
    StudyNotFoundError,
    StudyTooLargeError,
    input_fingerprint,
)
from hipfuse.node.jobstore_schema import SCHEMA_VERSION, SchemaVersionError
from hipfuse.node.states import TRANSITIONS, JobState, SkipReason, StudyState


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> JobStore:
    with JobStore.in_data_dir(tmp_path / "data", clock=clock) as opened:
        yield opened


def _complete(store: JobStore, study: str = "1.2.3", fingerprint: str = "f1") -> None:
    record = store.get_study(study)
    assert store.finish_assembly(
        study,
        observed_last_instance_at=record.last_instance_at,
        to_state=StudyState.COMPLETE,
        reason=None,
        fingerprint=fingerprint,
        series=[SeriesAssembly("1.2.3.1", "hip_ct", "test", input_role="ct")],
    )


def test_open_sets_pragmas_and_permissions(tmp_path: Path) -> None:
    with JobStore.in_data_dir(tmp_path / "data") as store:
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
        db.close()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_reopen_keeps_data_and_skips_migration(tmp_path: Path) -> None:
    with JobStore.in_data_dir(tmp_path) as store:
        store.record_instance(instance_record("1.2.3.1.1"))
        assert store.schema_version_before_open == 0
    with JobStore.in_data_dir(tmp_path) as store:
        assert store.schema_version_before_open == SCHEMA_VERSION
        assert store.get_study("1.2.3").instance_count == 1


def test_newer_schema_rejected(tmp_path: Path) -> None:
    with JobStore.in_data_dir(tmp_path) as store:
        store._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="newer than this hipfuse supports"):
        JobStore.in_data_dir(tmp_path)


def test_record_instance_creates_study_and_series(store: JobStore) -> None:
    outcome = store.record_instance(instance_record("1.2.3.1.1", size_bytes=100))
    store.record_instance(instance_record("1.2.3.1.2", size_bytes=50, received_at=1005.0))
    assert outcome.created
    assert outcome.study_created
    study = store.get_study("1.2.3")
    assert study.state is StudyState.RECEIVING
    assert study.instance_count == 2
    assert study.bytes == 150
    assert study.first_instance_at == 1000.0
    assert study.last_instance_at == 1005.0
    [series] = store.list_series("1.2.3")
    assert series.instance_count == 2
    assert series.modality == "CT"
    assert [event.event for event in store.list_events("1.2.3")] == ["study_receiving"]


def test_resent_instance_counted_once(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1", size_bytes=100))
    outcome = store.record_instance(
        instance_record("1.2.3.1.1", size_bytes=120, received_at=1010.0)
    )
    assert not outcome.created
    assert outcome.superseded_path is None
    study = store.get_study("1.2.3")
    assert study.instance_count == 1
    assert study.bytes == 120
    assert study.last_instance_at == 1010.0
    assert len(store.list_instances("1.2.3")) == 1
    assert store.list_events("1.2.3")[-1].event == "instance_replaced"


def test_resent_instance_moved_to_other_series(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1", series="1.2.3.1"))
    outcome = store.record_instance(instance_record("1.2.3.1.1", series="1.2.3.2"))
    assert outcome.superseded_path == Path("/spool/1.2.3/1.2.3.1/1.2.3.1.1.dcm")
    assert [s.series_instance_uid for s in store.list_series("1.2.3")] == ["1.2.3.2"]
    assert store.get_study("1.2.3").instance_count == 1


def test_study_size_limit_records_nothing(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1", size_bytes=600), max_study_bytes=1000)
    with pytest.raises(StudyTooLargeError, match="over max_study_bytes 1000"):
        store.record_instance(instance_record("1.2.3.1.2", size_bytes=500), max_study_bytes=1000)
    assert store.get_study("1.2.3").bytes == 600
    assert store.projected_study_bytes("1.2.3", "1.2.3.1.1", 900) == 900
    assert store.projected_study_bytes("1.2.3", "1.2.3.1.9", 900) == 1500
    assert store.projected_study_bytes("9.9", "9.9.1", 10) == 10


def test_studies_due_after_quiet_period(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1", received_at=1000.0))
    store.record_instance(
        instance_record("4.5.1.1", study="4.5", series="4.5.1", received_at=1020.0)
    )
    assert store.studies_due(30.0, now=1029.9) == []
    assert [s.study_instance_uid for s in store.studies_due(30.0, now=1030.0)] == ["1.2.3"]
    assert [s.study_instance_uid for s in store.studies_due(30.0, now=1050.0)] == ["1.2.3", "4.5"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ([StudyState.COMPLETE, StudyState.ANALYSING, StudyState.ANALYSED], True),
        ([StudyState.SKIPPED], True),
        ([StudyState.ANALYSING], False),
        ([StudyState.DONE], False),
        ([StudyState.COMPLETE, StudyState.ANALYSED], False),
        (
            [StudyState.COMPLETE, StudyState.ANALYSING, StudyState.ANALYSED, StudyState.SENDING],
            True,
        ),
        (
            [StudyState.COMPLETE, StudyState.ANALYSING, StudyState.ANALYSED, StudyState.COMPLETE],
            False,
        ),
    ],
    ids=[
        "happy-path",
        "skip",
        "skip-complete",
        "done-early",
        "skip-analysing",
        "analysed-to-sending",
        "analysed-back-to-complete",
    ],
)
def test_transition_table_enforced(store: JobStore, path: list[StudyState], allowed: bool) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    *steps, last = path
    for step in steps:
        store.transition("1.2.3", step, reason="x" if step is StudyState.SKIPPED else None)
    reason = "no_hip_images" if last is StudyState.SKIPPED else None
    if allowed:
        assert store.transition("1.2.3", last, reason=reason).state is last
    else:
        with pytest.raises(IllegalTransitionError, match="cannot go from"):
            store.transition("1.2.3", last, reason=reason)


def test_every_state_has_transitions() -> None:
    assert set(TRANSITIONS) == set(StudyState)


def test_transition_needs_reason_for_skipped(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    with pytest.raises(ValueError, match="needs a reason"):
        store.transition("1.2.3", StudyState.SKIPPED)
    study = store.transition("1.2.3", StudyState.SKIPPED, reason=SkipReason.NO_HIP_IMAGES)
    assert study.state_reason == "no_hip_images"


def test_transition_expected_state_conflict(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    with pytest.raises(StateConflictError, match="is receiving, not complete"):
        store.transition("1.2.3", StudyState.ANALYSING, expected=StudyState.COMPLETE)


def test_transition_unknown_study(store: JobStore) -> None:
    with pytest.raises(StudyNotFoundError, match="no study"):
        store.transition("9.9", StudyState.COMPLETE)


def test_analysed_sets_fingerprint(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    _complete(store, fingerprint="abc")
    assert not store.is_fingerprint_analysed("abc")
    store.transition("1.2.3", StudyState.ANALYSING)
    store.transition("1.2.3", StudyState.ANALYSED)
    assert store.is_fingerprint_analysed("abc")
    assert store.get_study("1.2.3").analysed_fingerprint == "abc"


def test_finish_assembly_stale_after_new_instance(store: JobStore, clock: FakeClock) -> None:
    store.record_instance(instance_record("1.2.3.1.1", received_at=1000.0))
    observed = store.get_study("1.2.3").last_instance_at
    store.record_instance(instance_record("1.2.3.1.2", received_at=1001.0))
    changed = store.finish_assembly(
        "1.2.3",
        observed_last_instance_at=observed,
        to_state=StudyState.COMPLETE,
        reason=None,
        fingerprint="f",
        series=[],
    )
    assert not changed
    assert store.get_study("1.2.3").state is StudyState.RECEIVING


def test_new_instance_reopens_complete_study(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    _complete(store)
    outcome = store.record_instance(instance_record("1.2.3.1.2"))
    assert outcome.study_reopened
    assert store.get_study("1.2.3").state is StudyState.RECEIVING


def test_new_instance_during_analysis_reopens_afterwards(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    _complete(store)
    store.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)
    outcome = store.record_instance(instance_record("1.2.3.1.2"))
    assert not outcome.study_reopened
    assert store.get_study("1.2.3").reopen_pending
    for state in (StudyState.ANALYSED, StudyState.ENCODING, StudyState.SENDING):
        store.transition("1.2.3", state)
    study = store.transition("1.2.3", StudyState.DONE)
    assert study.state is StudyState.RECEIVING
    assert not study.reopen_pending
    events = [event.event for event in store.list_events("1.2.3")]
    assert events[-2:] == ["study_done", "study_reopened"]


def test_node_output_does_not_reopen(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    store.transition("1.2.3", StudyState.SKIPPED, reason="no_hip_images")
    outcome = store.record_instance(
        instance_record("1.2.3.9.1", series="1.2.3.9", is_node_output=True)
    )
    assert not outcome.study_reopened
    assert store.get_study("1.2.3").state is StudyState.SKIPPED


def test_claim_next_takes_each_study_once(store: JobStore) -> None:
    for index, study in enumerate(("1.1", "1.2")):
        store.record_instance(instance_record(f"{study}.1.1", study=study, series=f"{study}.1"))
        store.transition(study, StudyState.COMPLETE, now=2000.0 + index)
    first = store.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)
    second = store.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)
    assert first is not None and second is not None
    assert (first.study_instance_uid, second.study_instance_uid) == ("1.1", "1.2")
    assert store.claim_next(StudyState.COMPLETE, StudyState.ANALYSING) is None


def test_recover_interrupted(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    _complete(store)
    store.transition("1.2.3", StudyState.ANALYSING)
    assert store.recover_interrupted() == ["1.2.3"]
    assert store.get_study("1.2.3").state is StudyState.COMPLETE


def test_list_and_count_studies(store: JobStore) -> None:
    store.record_instance(instance_record("1.1.1.1", study="1.1", series="1.1.1", received_at=1.0))
    store.record_instance(instance_record("1.2.1.1", study="1.2", series="1.2.1", received_at=2.0))
    store.transition("1.1", StudyState.SKIPPED, reason="no_hip_images")
    assert [s.study_instance_uid for s in store.list_studies()] == ["1.2", "1.1"]
    assert [s.study_instance_uid for s in store.list_studies([StudyState.SKIPPED])] == ["1.1"]
    assert store.count_studies_by_state() == {StudyState.RECEIVING: 1, StudyState.SKIPPED: 1}


def test_concurrent_records_from_threads(store: JobStore) -> None:
    def send(thread: int) -> None:
        for index in range(25):
            store.record_instance(instance_record(f"1.2.3.1.{thread}{index:02d}", size_bytes=10))

    threads = [threading.Thread(target=send, args=(number + 1,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    study = store.get_study("1.2.3")
    assert study.instance_count == 100
    assert study.bytes == 1000


def test_jobs_retry_then_succeed(store: JobStore) -> None:
    store.record_instance(instance_record("1.2.3.1.1"))
    job_id = store.add_job("send", "1.2.3", target="pacs", now=100.0)
    job = store.claim_due_job("send", now=100.0)
    assert job is not None
    assert job.job_id == job_id
    assert job.attempts == 1
    assert store.claim_due_job("send", now=100.0) is None
    retried = store.finish_job(job_id, succeeded=False, error="refused", retry_at=130.0, now=101.0)
    assert retried.state is JobState.PENDING
    assert retried.last_error == "refused"
    assert store.claim_due_job("send", now=129.0) is None
    store.claim_due_job("send", now=130.0)
    done = store.finish_job(job_id, succeeded=True, now=131.0)
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 2
    assert [job.state for job in store.list_jobs("1.2.3")] == [JobState.SUCCEEDED]


def test_job_failure_without_retry_is_final(store: JobStore) -> None:
    job_id = store.add_job("send", target="pacs")
    store.claim_due_job("send")
    failed = store.finish_job(job_id, succeeded=False, error="unknown AE")
    assert failed.state is JobState.FAILED
    with pytest.raises(StateConflictError, match="not running"):
        store.finish_job(job_id, succeeded=True)


def test_input_fingerprint_ignores_order_and_duplicates() -> None:
    assert input_fingerprint(["1.2", "1.1"]) == input_fingerprint(["1.1", "1.2", "1.1"])
    assert input_fingerprint(["1.1"]) != input_fingerprint(["1.1", "1.2"])
    assert len(input_fingerprint(["1.1"])) == 64
