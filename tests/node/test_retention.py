"""Retention: only studies sent (or skipped) long enough ago lose their files."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest
from admin_helpers import analysed_study, scp_with_clock, send_datasets
from ingest_helpers import ct_dataset, free_port, instance_record, write_settings
from pydicom.uid import generate_uid
from worker_helpers import FakeClock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
from hl7_builders import message, msh, oru, pid

import hipfuse.node.retention
from hipfuse.config.clinical_text import HL7Settings
from hipfuse.config.dropfolder import DropFolderSettings
from hipfuse.config.settings import StorageSettings, StudySettings
from hipfuse.integrations.hl7.intake import HL7Intake
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.audit import AuditEventType
from hipfuse.node.jobstore import JobStore
from hipfuse.node.jobstore_retention import PurgeState
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.retention import SECONDS_PER_DAY, Housekeeper
from hipfuse.node.states import StudyState

RETENTION = StorageSettings(retention_days=30.0)
START = 1_000_000.0


def spool_file(data_dir: Path, study: str, size_bytes: int = 100) -> Path:
    """Write one received file of ``study`` into the spool folder."""
    path = data_dir / "spool" / study / f"{study}.1" / f"{study}.1.1.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size_bytes)
    return path


def send_all(store: JobStore, study: str, *, fail: bool = False) -> None:
    """Record every due item of ``study`` as stored (or failed for good) and settle it."""
    for item in store.claim_due_sends("pacs"):
        store.finish_job(item.job_id, succeeded=not fail, error="A700" if fail else None)
    store.settle_study_sends(study)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock):
    with JobStore.in_data_dir(tmp_path, clock=clock) as opened:
        yield opened


def test_only_finished_studies_lose_files(tmp_path: Path, store: JobStore, clock) -> None:
    analysed_study(store, tmp_path, "1.1")
    send_all(store, "1.1")  # done: every result sent
    analysed_study(store, tmp_path, "2.2")
    send_all(store, "2.2", fail=True)  # failed: a result was not stored
    analysed_study(store, tmp_path, "3.3")  # sending: results still pending
    analysed_study(store, tmp_path, "4.4", destinations=[])  # done, results never sent
    store.record_instance(instance_record("5.5.1.1", study="5.5", series="5.5.1"))
    store.transition("5.5", StudyState.SKIPPED, reason="no_hip_images")
    store.record_instance(instance_record("6.6.1.1", study="6.6", series="6.6.1"))
    store.transition("6.6", StudyState.FAILED, reason="hip_not_found")
    studies = ("1.1", "2.2", "3.3", "4.4", "5.5", "6.6")
    for study in studies:
        spool_file(tmp_path, study, size_bytes=250)
    states = {study: store.get_study(study).state for study in studies}
    assert states == {
        "1.1": StudyState.DONE,
        "2.2": StudyState.FAILED,
        "3.3": StudyState.SENDING,
        "4.4": StudyState.DONE,
        "5.5": StudyState.SKIPPED,
        "6.6": StudyState.FAILED,
    }
    housekeeper = Housekeeper(store, tmp_path, RETENTION, clock=clock)

    clock.advance(30 * SECONDS_PER_DAY - 1.0)
    assert housekeeper.run_once() == []
    clock.advance(2.0)
    outcomes = housekeeper.run_once()

    assert [outcome.study_instance_uid for outcome in outcomes] == ["1.1", "5.5"]
    remaining = {study for study in studies if (tmp_path / "spool" / study).exists()}
    assert remaining == {"2.2", "3.3", "4.4", "6.6"}
    assert not (tmp_path / "outbox" / "1.1").exists()
    for study in ("2.2", "3.3", "4.4"):
        assert len(list((tmp_path / "outbox" / study).iterdir())) == 2
    done = outcomes[0].deleted
    assert (done.spool_files, done.spool_bytes, done.outbox_files) == (1, 250, 2)
    # The rows stay; the study is marked purged.
    assert store.get_study("1.1").state is StudyState.DONE
    assert len(store.list_outbox(study_uid="1.1")) == 2
    assert store.get_purge("1.1").state is PurgeState.PURGED
    assert store.get_purge("2.2") is None
    deleted = store.list_audit(event_types=(AuditEventType.DATA_DELETED,))
    assert [(row.study_instance_uid, row.series_instance_uids) for row in deleted] == [
        ("1.1", ("1.1.1",)),
        ("5.5", ("5.5.1",)),
    ]
    assert deleted[0].detail["spool_bytes"] == 250
    assert deleted[0].detail["retention_days"] == 30.0
    # A second pass finds nothing more.
    assert housekeeper.run_once() == []


def test_recent_result_keeps_clock_from_last_send(tmp_path: Path, store, clock) -> None:
    analysed_study(store, tmp_path, "1.1")
    clock.advance(10 * SECONDS_PER_DAY)  # sent ten days after the analysis
    send_all(store, "1.1")
    spool_file(tmp_path, "1.1")
    housekeeper = Housekeeper(store, tmp_path, RETENTION, clock=clock)

    clock.advance(25 * SECONDS_PER_DAY)
    assert housekeeper.run_once() == []
    clock.advance(5 * SECONDS_PER_DAY)
    assert [outcome.study_instance_uid for outcome in housekeeper.run_once()] == ["1.1"]


def test_instances_refused_while_purging(tmp_path: Path, store, clock) -> None:
    analysed_study(store, tmp_path, "1.1")
    send_all(store, "1.1")
    assert store.begin_purge("1.1", finished_before=clock())

    with pytest.raises(sqlite3.IntegrityError, match="being deleted by retention"):
        store.record_instance(instance_record("1.1.1.1", study="1.1", series="1.1.1"))
    with pytest.raises(sqlite3.IntegrityError, match="being deleted by retention"):
        store.record_instance(instance_record("1.1.1.2", study="1.1", series="1.1.1"))
    store.abort_purge("1.1")
    outcome = store.record_instance(instance_record("1.1.1.2", study="1.1", series="1.1.1"))

    assert store.get_purge("1.1") is None
    assert outcome.study_reopened


def test_delete_failure_leaves_study_for_next_pass(
    tmp_path: Path, store, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    analysed_study(store, tmp_path, "1.1")
    send_all(store, "1.1")
    spool_file(tmp_path, "1.1")
    housekeeper = Housekeeper(store, tmp_path, RETENTION, clock=clock)
    clock.advance(31 * SECONDS_PER_DAY)

    def read_only(folder: Path) -> tuple[int, int]:
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(hipfuse.node.retention, "delete_tree", read_only)
    [failed] = housekeeper.run_once()
    assert "Permission denied" in failed.error
    assert store.get_purge("1.1") is None
    assert store.list_audit(event_types=(AuditEventType.DATA_DELETED,)) == []

    monkeypatch.undo()
    [purged] = housekeeper.run_once()
    assert purged.deleted is not None
    assert not (tmp_path / "spool" / "1.1").exists()


def test_interrupted_purge_finished_at_next_pass(tmp_path: Path, store, clock) -> None:
    analysed_study(store, tmp_path, "1.1")
    send_all(store, "1.1")
    spool_file(tmp_path, "1.1")
    # A node that stopped after marking the study, before deleting its files.
    assert store.begin_purge("1.1", finished_before=clock())

    [outcome] = Housekeeper(store, tmp_path, RETENTION, clock=clock).run_once()

    assert outcome.resumed
    assert outcome.deleted.spool_files == 1
    assert store.get_purge("1.1").state is PurgeState.PURGED
    assert not (tmp_path / "spool" / "1.1").exists()


def test_purged_study_sent_again_is_not_analysed(tmp_path: Path) -> None:
    """Through the real SCP: purge, PACS sends the same study, assembly skips it."""
    settings = write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())
    data_dir = settings.storage.data_dir
    clock = FakeClock(START)
    study, series = generate_uid(), generate_uid()
    datasets = [ct_dataset(study, series, index) for index in range(4)]
    assembler = StudyAssembler(JobStore, StudySettings(quiet_period_s=10.0))
    with scp_with_clock(settings, clock) as (port, store):
        assembler.jobstore = store
        assert send_datasets(port, "STORESCU", datasets) == [0] * 4
        clock.advance(60.0)
        [assembled] = assembler.run_once(clock())
        assert assembled.state is StudyState.COMPLETE
        fingerprint = store.get_study(study).input_fingerprint
        store.transition(study, StudyState.ANALYSING)
        results = OutboxFolder(data_dir).write(study, [ct_dataset(study, "1.2.9", 0)])
        store.record_results(study, fingerprint=fingerprint, objects=results, destinations=["pacs"])
        send_all(store, study)
        assert store.get_study(study).state is StudyState.DONE

        clock.advance(31 * SECONDS_PER_DAY)
        [purged] = Housekeeper(store, data_dir, RETENTION, clock=clock).run_once()
        assert purged.deleted.spool_files == 4
        assert not (data_dir / "spool" / study).exists()

        # PACS sends the same study again.
        assert send_datasets(port, "STORESCU", datasets) == [0] * 4
        clock.advance(60.0)
        [again] = assembler.run_once(clock())
        spooled = sorted(path.name for path in (data_dir / "spool" / study).rglob("*.dcm"))
        analysed = store.list_audit(event_types=(AuditEventType.STUDY_ANALYSED,))
        outbox = store.list_outbox(study_uid=study)

    assert again.state is StudyState.SKIPPED
    assert again.reason == "already_analysed"
    assert spooled == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in datasets)
    assert len(analysed) == 1
    assert len(outbox) == 1


def test_scp_answers_a700_while_purging(tmp_path: Path) -> None:
    settings = write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())
    clock = FakeClock(START)
    study, series = generate_uid(), generate_uid()
    with scp_with_clock(settings, clock) as (port, store):
        assert send_datasets(port, "STORESCU", [ct_dataset(study, series, 0)]) == [0]
        store.transition(study, StudyState.SKIPPED, reason="no_hip_images")
        assert store.begin_purge(study, finished_before=clock())

        late = ct_dataset(study, series, 1)
        statuses = send_datasets(port, "STORESCU", [late])
        late_file = (
            settings.storage.data_dir / "spool" / study / series / f"{late.SOPInstanceUID}.dcm"
        )
        exists_while_purging = late_file.exists()
        store.abort_purge(study)
        statuses_after = send_datasets(port, "STORESCU", [late])

    assert statuses == [0xA700]
    assert not exists_while_purging
    assert statuses_after == [0]
    assert late_file.exists()


def test_retention_purges_old_hl7_messages_and_files(tmp_path: Path) -> None:
    clock = FakeClock(START)
    watch_dir = tmp_path / "hl7in"
    settings = HL7Settings(enabled=True, watch_dir=watch_dir, retention_days=90.0)
    hl7_store = HL7Store.in_data_dir(tmp_path / "data", clock=clock)
    intake = HL7Intake(hl7_store, settings)
    intake.process(oru("OLD1", "note from long ago").encode(), "test")
    intake.process(message(msh("BAD1", version="2.1"), pid()).encode(), "test")
    clock.advance(60 * SECONDS_PER_DAY)
    intake.process(oru("NEW1", "recent note").encode(), "test")
    done = watch_dir / "done"
    done.mkdir(parents=True)
    old_file, new_file = done / "old.hl7", done / "new.hl7"
    old_file.write_text("MSH|")
    new_file.write_text("MSH|")
    clock.advance(40 * SECONDS_PER_DAY)  # OLD1 is now 100 days old, NEW1 40 days
    os.utime(old_file, (START, START))
    os.utime(new_file, (clock() - SECONDS_PER_DAY,) * 2)

    with JobStore.in_data_dir(tmp_path / "data", clock=clock) as store:
        housekeeper = Housekeeper(
            store, tmp_path / "data", RETENTION, clock=clock,
            hl7_store=hl7_store, hl7_settings=settings,
        )  # fmt: skip
        housekeeper.run_once()
        deleted = [e.detail for e in store.iter_audit(event_types=(AuditEventType.DATA_DELETED,))]

    # Accepted messages follow [hl7] retention_days (90), the rest [storage] (30).
    assert hl7_store.message_count() == 1
    assert {text.control_id for text in hl7_store.find_texts("HIP001")} == {"NEW1"}
    assert hl7_store.rejected_messages() == []
    assert not old_file.exists()
    assert new_file.exists()
    store_files = sorted((tmp_path / "data").glob("hl7.sqlite3*"))
    assert not any(b"note from long ago" in path.read_bytes() for path in store_files)
    assert deleted == [
        {
            "source": "hl7",
            "messages": 1,
            "rejected_messages": 1,
            "files": 1,
            "retention_days": 30.0,
        }
    ]
    hl7_store.close()


def test_retention_purges_old_rejected_dropfolder_files(tmp_path: Path) -> None:
    clock = FakeClock(START)
    folder = tmp_path / "drop"
    old_file = folder / "failed" / "STUDY1" / "file0001"
    new_file = folder / "failed" / "file0002"
    for path in (old_file, new_file):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"rejected export")
    os.utime(old_file, (START - 31 * SECONDS_PER_DAY,) * 2)
    os.utime(new_file, (START - SECONDS_PER_DAY,) * 2)
    settings = DropFolderSettings(enabled=True, dir=folder)

    with JobStore.in_data_dir(tmp_path / "data", clock=clock) as store:
        housekeeper = Housekeeper(
            store, tmp_path / "data", RETENTION, clock=clock, dropfolder_settings=settings
        )
        housekeeper.run_once()
        deleted = [e.detail for e in store.iter_audit(event_types=(AuditEventType.DATA_DELETED,))]

    assert not old_file.exists()
    assert not old_file.parent.exists()  # the emptied study folder goes too
    assert new_file.exists()
    assert deleted == [{"source": "dropfolder_failed", "files": 1, "retention_days": 30.0}]
