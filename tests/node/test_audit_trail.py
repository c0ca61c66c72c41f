"""The audit trail: rows written by the SCP, assembly, analysis, sending; export parsed back."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from admin_helpers import analysed_study, destination_sender, scp_with_clock, send_datasets
from ingest_helpers import ct_dataset, free_port, instance_record, write_settings
from pydicom.uid import generate_uid
from worker_helpers import FakeClock, node_settings

from hipfuse.config.settings import StudySettings
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.audit import AuditEventType, parse_iso_time, utc_iso
from hipfuse.node.cli import main
from hipfuse.node.jobstore import JobStore
from hipfuse.node.scu import StoreOutcome
from hipfuse.node.states import StudyState

# Patient attributes of the sent instances that must never reach the audit trail.
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-93871", "PatientBirthDate": "19500317"}


def send_ct(port: int, calling: str, study: str, series: str, count: int) -> list[str]:
    """Send ``count`` CT instances with patient attributes; return the stored SOP UIDs."""
    datasets = [ct_dataset(study, series, index) for index in range(count)]
    for dataset in datasets:
        for keyword, value in PATIENT.items():
            setattr(dataset, keyword, value)
    statuses = send_datasets(port, calling, datasets)
    if statuses is None:
        return []
    assert statuses == [0x0000] * count
    return [str(dataset.SOPInstanceUID) for dataset in datasets]


def test_scp_and_assembly_audit_rows(tmp_path: Path) -> None:
    settings = write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())
    clock = FakeClock(1000.0)
    study, series = generate_uid(), generate_uid()
    with scp_with_clock(settings, clock) as (port, jobstore):
        sent = send_ct(port, "STORESCU", study, series, count=3)
        rejected = send_ct(port, "INTRUDER", study, series, count=1)
        # Association events are written by the association's thread, after release.
        before_assembly = [row.event_type for row in jobstore.list_audit()]
        clock.advance(60.0)
        StudyAssembler(jobstore, StudySettings(quiet_period_s=30.0)).run_once(clock())
        rows = jobstore.list_audit()
        dumped = json.dumps([row.as_export_dict() for row in rows])

    assert len(sent) == 3
    assert rejected == []
    # Three instances added no row of their own.
    assert sorted(before_assembly) == sorted(
        [
            AuditEventType.ASSOCIATION_ACCEPTED,
            AuditEventType.ASSOCIATION_CLOSED,
            AuditEventType.ASSOCIATION_REJECTED,
        ]
    )
    by_type = {row.event_type: row for row in rows}
    accepted = by_type[AuditEventType.ASSOCIATION_ACCEPTED]
    assert (accepted.calling_ae_title, accepted.called_ae_title, accepted.peer_address) == (
        "STORESCU",
        "HIPFUSE",
        "127.0.0.1",
    )
    closed = by_type[AuditEventType.ASSOCIATION_CLOSED]
    assert closed.detail == {"closed_by": "release", "instances_stored": 3, "instances_failed": 0}
    rejected = by_type[AuditEventType.ASSOCIATION_REJECTED]
    assert rejected.calling_ae_title == "INTRUDER"
    assert rejected.detail["reason"] == "calling_ae_title_not_recognised"
    received = by_type[AuditEventType.STUDY_RECEIVED]
    assert received.study_instance_uid == study
    assert received.series_instance_uids == (series,)
    assert (received.calling_ae_title, received.peer_address) == ("STORESCU", "127.0.0.1")
    assert received.detail["instances"] == 3
    assert received.at == 1060.0
    for value in PATIENT.values():
        assert value not in dumped


def test_reopened_study_counts_only_new_instances(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as store:
        for sop in ("1.2.3.1.1", "1.2.3.1.2"):
            store.record_instance(instance_record(sop, received_at=1000.0))
        clock.advance(60.0)
        store.transition("1.2.3", StudyState.COMPLETE)
        again = instance_record("1.2.3.2.1", series="1.2.3.2", received_at=2000.0)
        store.record_instance(again.__class__(**{**again.__dict__, "calling_ae_title": "MODALITY"}))
        clock.now = 2060.0
        store.transition("1.2.3", StudyState.COMPLETE)
        rows = store.list_audit(event_types=(AuditEventType.STUDY_RECEIVED,))

    assert [(row.calling_ae_title, row.detail["instances"]) for row in rows] == [
        ("PACS", 2),
        ("MODALITY", 1),
    ]
    assert rows[1].series_instance_uids == ("1.2.3.2",)
    assert [row.at for row in rows] == [1060.0, 2060.0]


class RejectOne:
    """Stores every file but ``rejected``, which gets status A700."""

    def __init__(self, rejected: Path) -> None:
        self.rejected = rejected

    def __call__(self, peer, files):
        return [
            StoreOutcome(file.path, 0xA700, "A700")
            if file.path == self.rejected
            else StoreOutcome(file.path, 0x0000, None)
            for file in files
        ]


def test_analysis_and_send_rows(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as store:
        written = analysed_study(store, tmp_path, count=2)
        reject_one = RejectOne(written[1].path)
        sender = destination_sender(store, "pacs", 11113, clock, store_fn=reject_one)
        sender.run_once()
        clock.advance(10.0)
        sender.run_once()
        store.record_instance(instance_record("4.5.1.1", study="4.5", series="4.5.1"))
        store.transition("4.5", StudyState.SKIPPED, reason="no_hip_images")
        store.record_instance(instance_record("6.7.1.1", study="6.7", series="6.7.1"))
        store.transition("6.7", StudyState.COMPLETE)
        store.transition("6.7", StudyState.ANALYSING)
        store.transition(
            "6.7", StudyState.FAILED, reason="hip_not_found", details={"message": "no hip"}
        )
        rows = store.list_audit()

    uids = tuple(obj.sop_instance_uid for obj in written)
    analysed = [row for row in rows if row.event_type is AuditEventType.STUDY_ANALYSED]
    assert [(row.study_instance_uid, row.sop_instance_uids) for row in analysed] == [
        ("1.2.3", uids)
    ]
    assert analysed[0].detail["destinations"] == ["pacs"]
    sent = [row for row in rows if row.event_type is AuditEventType.RESULT_SENT]
    assert [(row.sop_instance_uids, row.destination) for row in sent] == [((uids[0],), "pacs")]
    assert sent[0].job_id is not None
    failed = [row for row in rows if row.event_type is AuditEventType.SEND_FAILED]
    # Only the last attempt counts as a failed send; the first was retried.
    assert [(row.sop_instance_uids, row.detail["attempt"]) for row in failed] == [((uids[1],), 2)]
    assert failed[0].detail["error"] == "A700"
    skipped = [row for row in rows if row.event_type is AuditEventType.STUDY_SKIPPED]
    assert [(row.study_instance_uid, row.detail["reason"]) for row in skipped] == [
        ("4.5", "no_hip_images")
    ]
    analysis_failed = [row for row in rows if row.event_type is AuditEventType.ANALYSIS_FAILED]
    assert [(row.study_instance_uid, row.detail) for row in analysis_failed] == [
        ("6.7", {"reason": "hip_not_found", "message": "no hip"})
    ]


@pytest.fixture
def filled_node(tmp_path: Path):
    """A settings file and a job store with rows at 1000 s, 2000 s and 3000 s."""
    config, settings = node_settings(tmp_path)
    clock = FakeClock(1000.0)
    with JobStore.in_data_dir(settings.storage.data_dir, clock=clock) as store:
        analysed_study(store, settings.storage.data_dir, count=2)
        store.record_event(
            "association_rejected",
            details={
                "calling_ae_title": "INTRUDER",
                "called_ae_title": "HIPFUSE",
                "peer_address": "192.0.2.7",
                "reason": "calling_ae_title_not_recognised",
            },
            now=2000.0,
        )
        clock.now = 3000.0
        for item in store.claim_due_sends("pacs"):
            store.finish_job(item.job_id, succeeded=True)
    return config


def test_export_csv_parsed_back(filled_node: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.csv"

    assert main(["audit", "export", "--config", str(filled_node), "--out", str(out)]) == 0

    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [row["event_type"] for row in rows] == [
        "study_received",
        "study_analysed",
        "association_rejected",
        "result_sent",
        "result_sent",
    ]
    received, analysed, rejected, sent, _ = rows
    assert received["time"] == "1970-01-01T00:16:40.000Z"
    assert received["calling_ae_title"] == "PACS"
    assert received["study_instance_uid"] == "1.2.3"
    assert json.loads(received["detail"])["instances"] == 1
    assert len(analysed["sop_instance_uids"].split(" ")) == 2
    assert (rejected["calling_ae_title"], rejected["peer_address"]) == ("INTRUDER", "192.0.2.7")
    assert rejected["study_instance_uid"] == ""
    assert sent["destination"] == "pacs"
    assert sent["sop_instance_uids"] == analysed["sop_instance_uids"].split(" ")[0]
    assert sent["time"] == "1970-01-01T00:50:00.000Z"


def test_export_to_closed_pipe_ends_quietly(filled_node: Path) -> None:
    # As in "hipfuse-node audit export | head -1" once head has exited.
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run(
        [sys.executable, "-m", "hipfuse.node.cli", "audit", "export", "--config", str(filled_node)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write_end)

    assert result.returncode == 0
    assert "Traceback" not in result.stderr


def test_export_jsonl_to_stdout_with_window(filled_node: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hipfuse.node.cli",
            "audit",
            "export",
            "--config",
            str(filled_node),
            "--format",
            "jsonl",
            "--since",
            "1970-01-01T00:30:00",
            "--until",
            "1970-01-01T00:40:00+00:00",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["event_type"] for row in rows] == ["association_rejected"]
    assert rows[0]["time"] == "1970-01-01T00:33:20.000Z"
    assert rows[0]["called_ae_title"] == "HIPFUSE"
    assert rows[0]["detail"] == {"reason": "calling_ae_title_not_recognised"}
    assert rows[0]["sop_instance_uids"] == []
    assert "wrote 1 audit event(s) to stdout" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 date or time"),
        (["--until", "2026-13-01"], "--until '2026-13-01' is not an ISO 8601 date or time"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "is not after --since"),
    ],
    ids=["since-not-iso", "until-bad-month", "empty-window"],
)
def test_export_rejects_bad_times(filled_node: Path, capsys, options, message) -> None:
    assert main(["audit", "export", "--config", str(filled_node), *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-02", 86_400.0),
        ("1970-01-01T01:00:00Z", 3600.0),
        ("1970-01-01T02:00:00+01:00", 3600.0),
        ("1970-01-01T00:00:01.5", 1.5),
    ],
    ids=["date", "zulu", "offset", "naive-is-utc"],
)
def test_parse_iso_time(text: str, seconds: float) -> None:
    assert parse_iso_time(text, "--since") == seconds


def test_utc_iso_format() -> None:
    assert utc_iso(1_772_352_000.25) == "2026-03-01T08:00:00.250Z"
