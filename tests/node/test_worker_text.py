"""Clinical text in the analysis worker: waiting for HL7 text, FHIR once, records, stop.

Most cases replace ``gather_clinical_text`` by a scripted stand-in, so what
each call returns drives the wait. One case uses a real HL7 store, and one
runs the real model (random weights, see worker_helpers).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
import structlog
from worker_helpers import (
    CompleteStudy,
    complete_sample_study,
    loaded_bundle,
    sample_result,
    sample_study,
)

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake, IntakeOutcome
from hipfuse.integrations.hl7.send import note_message
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.items import MatchWarning, WarningCode
from hipfuse.integrations.text_assembly import GatheredText
from hipfuse.node.clinical_text import StudyKeys, TextGatherer
from hipfuse.node.sr_findings import read_clinical_text_available, read_hip_findings
from hipfuse.node.states import JobKind, JobState, StudyState
from hipfuse.node.worker import AnalysisWorker

NOTE = "Left hip pain for three years, worse on walking. Kellgren-Lawrence grade 3."
# A stand-in for the HL7 store: the scripted gather never reads it.
STORE = object()


@dataclass
class ScriptedGather:
    """Return ``polls[i]`` on the i-th call without FHIR (the last repeats), ``full`` with FHIR."""

    polls: list[Any]
    full: Any = None
    on_call: Any = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, settings, store, patient_id, issuer, accession, study_date, *, include_fhir):
        self.calls.append(
            {
                "patient_id": patient_id,
                "issuer": issuer,
                "accession": accession,
                "study_date": study_date,
                "include_fhir": include_fhir,
            }
        )
        if self.on_call is not None:
            self.on_call()
        if include_fhir:
            result = self.full
        else:
            polls = [call for call in self.calls if not call["include_fhir"]]
            result = self.polls[min(len(polls), len(self.polls)) - 1]
        if isinstance(result, Exception):
            raise result
        return result

    @property
    def polls_made(self) -> int:
        return sum(not call["include_fhir"] for call in self.calls)


Node = CompleteStudy


@pytest.fixture
def node(tmp_path: Path):
    node = complete_sample_study(tmp_path / "data")
    yield node
    node.jobstore.close()


def _settings(text_wait_s: float = 30.0, *, hl7: bool = True, fhir: bool = False) -> Any:
    fhir_settings = FHIRSettings(enabled=True, base_url="http://127.0.0.1:9") if fhir else None
    return SimpleNamespace(
        hl7=HL7Settings(enabled=hl7, text_wait_s=text_wait_s),
        fhir=fhir_settings or FHIRSettings(),
    )


def _worker(node: Node, gatherer: TextGatherer, analyze=None) -> AnalysisWorker:
    return AnalysisWorker(
        node.jobstore,
        node.outbox,
        analyze=analyze or (lambda inputs: sample_result()),
        bundle_config=loaded_bundle().config,
        destinations=["pacs"],
        clock=node.clock,
        text=gatherer,
    )


def _events(node: Node, name: str) -> list[dict[str, Any]]:
    return [event.details for event in node.jobstore.list_events(node.uid) if event.event == name]


def test_text_arriving_during_wait_reaches_model(node: Node) -> None:
    gathered = GatheredText(
        NOTE,
        ["hl7:RIS-7", "fhir:DocumentReference/12"],
        [MatchWarning(WarningCode.ATTACHMENT_SKIPPED, "FHIR: attachment skipped")],
    )
    script = ScriptedGather([None, None, GatheredText(NOTE, ["hl7:RIS-7"])], full=gathered)
    gatherer = TextGatherer(_settings(), STORE, poll_interval_s=0.01, gather=script)
    received = []

    def analyze(inputs):
        received.append(inputs)
        return _analyze_real(inputs)

    with structlog.testing.capture_logs() as logs:
        outcome = _worker(node, gatherer, analyze).run_once()

    assert outcome.state is StudyState.SENDING
    assert script.polls_made == 3
    assert [call["include_fhir"] for call in script.calls] == [False, False, False, True]
    header = pydicom.dcmread(sample_study().radiograph, stop_before_pixels=True)
    assert script.calls[-1]["patient_id"] == header.PatientID
    assert script.calls[-1]["accession"] == header.AccessionNumber
    assert script.calls[-1]["study_date"] == datetime.strptime(header.StudyDate, "%Y%m%d").date()
    text = received[0].text
    assert text.text == NOTE
    assert text.sources == ["hl7:RIS-7", "fhir:DocumentReference/12"]
    assert text.identity.patient_id == header.PatientID

    (event,) = _events(node, "clinical_text_gathered")
    assert event["job_id"] == outcome.job_id
    assert event["available"] is True
    assert event["sources"] == ["hl7:RIS-7", "fhir:DocumentReference/12"]
    assert event["warnings"] == [
        {"code": "attachment_skipped", "message": "FHIR: attachment skipped"}
    ]
    (analysed,) = _events(node, "study_analysed")
    assert analysed["clinical_text"]["sources"] == event["sources"]

    sr = pydicom.dcmread(outcome.objects[0].path)
    assert read_clinical_text_available(sr) is True
    assert all(finding.attention["text"] > 0 for finding in read_hip_findings(sr))

    stored = json.dumps([event.details for event in node.jobstore.list_events(node.uid)])
    logged = json.dumps(logs, default=str)
    for record in (stored, logged):
        assert "Kellgren" not in record
        assert header.PatientID not in record


def _analyze_real(inputs):
    from hipfuse.inference.pipeline import analyze_study

    return analyze_study(loaded_bundle(), inputs)


def test_no_text_within_wait(node: Node) -> None:
    script = ScriptedGather([None], full=None)
    gatherer = TextGatherer(_settings(text_wait_s=0.3), STORE, poll_interval_s=0.05, gather=script)
    received = []

    def analyze(inputs):
        received.append(inputs)
        return sample_result()

    outcome = _worker(node, gatherer, analyze).run_once()

    assert outcome.state is StudyState.SENDING
    assert received[0].text is None
    assert script.polls_made >= 2
    assert script.calls[-1]["include_fhir"] is True
    (event,) = _events(node, "clinical_text_gathered")
    assert event["available"] is False
    assert event["sources"] == []


def test_wait_counts_from_completion(node: Node) -> None:
    # The study became complete 31 s ago (it queued behind others): no wait is left.
    node.clock.advance(31.0)
    script = ScriptedGather([None], full=None)
    gatherer = TextGatherer(_settings(text_wait_s=30.0), STORE, poll_interval_s=5.0, gather=script)

    _worker(node, gatherer).run_once()

    assert [call["include_fhir"] for call in script.calls] == [False, True]


def test_hl7_off_queries_fhir_once(node: Node) -> None:
    script = ScriptedGather([None], full=GatheredText(NOTE, ["fhir:Condition/3"]))
    settings = _settings(text_wait_s=30.0, hl7=False, fhir=True)
    gatherer = TextGatherer(settings, None, poll_interval_s=5.0, gather=script)
    received = []

    def analyze(inputs):
        received.append(inputs)
        return sample_result()

    _worker(node, gatherer, analyze).run_once()

    assert [call["include_fhir"] for call in script.calls] == [True]
    assert received[0].text.sources == ["fhir:Condition/3"]


def test_stop_during_wait_puts_study_back(node: Node) -> None:
    stop = threading.Event()
    script = ScriptedGather([None], full=None, on_call=stop.set)
    gatherer = TextGatherer(_settings(text_wait_s=60.0), STORE, poll_interval_s=5.0, gather=script)
    calls = []

    outcome = _worker(node, gatherer, analyze=calls.append).run_once(stop)

    assert outcome.state is StudyState.COMPLETE
    assert outcome.reason == "interrupted"
    assert calls == []
    assert node.jobstore.get_study(node.uid).state is StudyState.COMPLETE
    (job,) = [job for job in node.jobstore.list_jobs(node.uid) if job.kind == JobKind.ANALYSE]
    assert job.state is JobState.FAILED
    assert job.last_error.startswith("interrupted: the node stopped")
    assert _events(node, "clinical_text_gathered") == []


def test_gathering_error_analyses_without_text(node: Node) -> None:
    failure = sqlite3.OperationalError("disk I/O error near PATIENT-42")
    script = ScriptedGather([failure], full=failure)
    gatherer = TextGatherer(_settings(), STORE, poll_interval_s=0.01, gather=script)
    received = []

    def analyze(inputs):
        received.append(inputs)
        return sample_result()

    with structlog.testing.capture_logs() as logs:
        outcome = _worker(node, gatherer, analyze).run_once()

    assert outcome.state is StudyState.SENDING
    assert received[0].text is None
    (event,) = _events(node, "clinical_text_gathered")
    assert [warning["code"] for warning in event["warnings"]] == ["text_gathering_failed"]
    failed = [entry for entry in logs if entry["event"] == "clinical_text_failed"]
    assert failed[0]["error_type"] == "OperationalError"
    assert "PATIENT-42" not in json.dumps(logs, default=str)


@pytest.mark.parametrize(
    ("keys", "calls", "codes"),
    [
        (StudyKeys(), 0, ["no_patient_id"]),
        (StudyKeys("P1", study_date="2024-03-01"), 2, ["study_date_invalid"]),
        (StudyKeys("P1", study_date="20240301"), 2, []),
    ],
    ids=["no-patient-id", "invalid-date", "valid-date"],
)
def test_gatherer_checks_keys(keys: StudyKeys, calls: int, codes: list[str]) -> None:
    script = ScriptedGather([None], full=None)
    gatherer = TextGatherer(_settings(text_wait_s=0.0), STORE, gather=script)

    outcome = gatherer.gather(keys, wait_s=0.0)

    assert len(script.calls) == calls
    assert [code for code, _ in outcome.warnings] == codes
    assert outcome.text is None
    if calls:
        expected = date(2024, 3, 1) if not codes else None
        assert script.calls[-1]["study_date"] == expected


def test_gatherer_reads_real_store(tmp_path: Path) -> None:
    settings = _settings(text_wait_s=0.0)
    store = HL7Store.in_data_dir(tmp_path)
    message = note_message(
        control_id="RIS-1",
        patient_id="P1",
        issuer="HOSP",
        accession_number="ACC1",
        note=NOTE,
        observed_at=datetime(2024, 3, 1, 9, 0),
    )
    result = HL7Intake(store, settings.hl7).process(message.encode("utf-8"), "test")
    assert result.outcome is IntakeOutcome.ACCEPTED
    gatherer = TextGatherer(settings, store)

    outcome = gatherer.gather(StudyKeys("P1", "HOSP", "ACC1", "20240301"), wait_s=0.0)
    store.close()

    assert outcome.sources == ("hl7:RIS-1",)
    assert outcome.text is not None
    assert NOTE in outcome.text.text
    assert outcome.text.identity.issuer_of_patient_id == "HOSP"
    assert outcome.details()["available"] is True
