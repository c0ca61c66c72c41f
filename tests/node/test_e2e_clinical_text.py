"""Clinical text end to end: HL7 over MLLP and FHIR R4 into the node's SR.

One node process (``python -m hipfuse.node.cli run``) listens for DICOM and
HL7 on 127.0.0.1, with FHIR pointed at the FHIR R4 test engine of the
integrations tests. Three studies of the sample images, each of its own
patient, go in with DCMTK storescu:

- the real osteoarthritis note arrives first over MLLP from python-hl7's
  ``mllp_send`` (a separate process), for the study's patient and accession;
- no text arrives for the second patient within ``[hl7] text_wait_s``;
- the third patient's note is a FHIR DocumentReference.

The results go to hipfuse's receiving SCP in a separate process. The model
bundle has random weights (see worker_helpers), so only the plumbing is
checked: text availability, attention weights, the job store's sources, and
a log without patient data.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import DCMTK_ENV, STORESCU, NodeProcess, stop_process, wait_for
from worker_helpers import node_settings, untrained_bundle_dir

from hipfuse.node.demo import (
    ReceiverProcess,
    SampleStudy,
    find_samples_dir,
    free_port,
    prepare_sample_study,
)
from hipfuse.node.jobstore import JobStore
from hipfuse.node.sr_findings import read_clinical_text_available, read_hip_findings
from hipfuse.node.states import StudyState

# The FHIR test engine and the HL7 message builders live with the integrations tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
from fhir_peer import FHIRTestServer, b64, start_fhir_server
from hl7_builders import SAMPLES_TEXT, ack_segments, framed, hl7_escape, mllp_send, oru

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason=f"{STORESCU} is not installed")

OA_NOTE = (SAMPLES_TEXT / "hip_osteoarthritis_left_mtsamples_258.txt").read_text(encoding="utf-8")
FAI_NOTE = (SAMPLES_TEXT / "hip_pain_fai_bilateral_mtsamples_2303.txt").read_text(encoding="utf-8")
HL7_PATIENT = "E2E-HL7-5081"
SILENT_PATIENT = "E2E-NONE-5082"
FHIR_PATIENT = "E2E-FHIR-5083"
CONTROL_ID = "E2E-RIS-1"
TOKEN = "node-e2e-token-41c7"
TEXT_WAIT_S = 2.0


class Loopback:
    """Starts peer processes directly on this host; they all bind 127.0.0.1 only."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen] = []

    def start(self, args: list[Any], **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen([str(arg) for arg in args], **kwargs)
        self._processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self._processes):
            stop_process(process)


@dataclass
class Run:
    studies: dict[str, SampleStudy]
    data_dir: Path
    received: Path
    log_path: Path
    acks: list[bytes]
    fhir_note_id: str | None


def _load_fhir_note(server: FHIRTestServer) -> str:
    patient = server.create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.840.99.1", "value": FHIR_PATIENT}],
        }
    )
    note = server.create(
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"text": "Orthopaedic consultation"},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "date": date.today().isoformat(),
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "data": b64(FAI_NOTE.encode("utf-8")),
                    }
                }
            ],
        }
    )
    return str(note["id"])


def _fhir_section(server: FHIRTestServer | None, token_file: Path) -> str:
    if server is None:
        return ""
    return (
        f'\n[fhir]\nenabled = true\nbase_url = "{server.base_url}"\n'
        f'token_file = "{token_file}"\ntimeout_s = 10.0\n'
    )


def _studies_done(data_dir: Path, uids: list[str]) -> bool:
    with JobStore.in_data_dir(data_dir) as store:
        states = []
        for uid in uids:
            try:
                states.append(store.get_study(uid).state)
            except KeyError:
                return False
    if StudyState.FAILED in states:
        raise AssertionError(f"a study failed: {states}")
    return all(state is StudyState.DONE for state in states)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("clinical-text-e2e")
    samples = find_samples_dir()
    studies = {
        patient: prepare_sample_study(samples, root / patient, patient_id=patient)
        for patient in (HL7_PATIENT, SILENT_PATIENT, FHIR_PATIENT)
    }
    try:
        server: FHIRTestServer | None = start_fhir_server(TOKEN)
    except pytest.skip.Exception:
        server = None  # Node.js is missing: the FHIR case is skipped, the others run.
    peers = Loopback()
    receiver = ReceiverProcess(root / "received")
    try:
        fhir_note_id = _load_fhir_note(server) if server is not None else None
        token_file = root / "fhir.token"
        token_file.write_text(TOKEN, encoding="utf-8")
        hl7_port = free_port()
        node_port = free_port()
        config, settings = node_settings(
            root,
            port=node_port,
            destinations=[("receiver", "DEMOPACS", receiver.port)],
            quiet_period_s=1.0,
            extra=(
                f'\n[hl7]\nenabled = true\nbind_address = "127.0.0.1"\nport = {hl7_port}\n'
                f"text_wait_s = {TEXT_WAIT_S}\n" + _fhir_section(server, token_file)
            ),
        )
        log_path = root / "node.log"
        NodeProcess(peers, config, untrained_bundle_dir(), log_path).start()  # type: ignore[arg-type]

        hl7_study = studies[HL7_PATIENT]
        observed = datetime.now().strftime("%Y%m%d%H%M%S")
        message = oru(
            CONTROL_ID,
            hl7_escape(OA_NOTE),
            accession=hl7_study.accession_number,
            patient_id=HL7_PATIENT,
            observed=observed,
        )
        outbound = root / "note.mllp"
        outbound.write_bytes(framed(message.encode("utf-8")))
        acks = mllp_send(hl7_port, outbound)

        files = [str(path) for study in studies.values() for path in study.files]
        options = ["-aet", "STORESCU", "-aec", "HIPFUSE", "-R", "-xw"]
        sent = subprocess.run(
            [STORESCU, *options, "127.0.0.1", str(node_port), *files],
            capture_output=True,
            text=True,
            timeout=300,
            env=DCMTK_ENV,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        uids = [study.study_instance_uid for study in studies.values()]
        data_dir = settings.storage.data_dir
        wait_for(lambda: _studies_done(data_dir, uids), 240, "the three SRs to be sent")
        yield Run(studies, data_dir, root / "received", log_path, acks, fhir_note_id)
    finally:
        peers.stop()
        receiver.stop()
        if server is not None:
            server.stop()


def _sr(run: Run, patient: str) -> pydicom.Dataset:
    folder = run.received / run.studies[patient].study_instance_uid
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        if dataset.SOPClassUID.startswith("1.2.840.10008.5.1.4.1.1.88."):
            return dataset
    raise AssertionError(f"no SR received in {folder}")


def _text_event(run: Run, patient: str) -> dict[str, Any]:
    with JobStore.in_data_dir(run.data_dir) as store:
        events = store.list_events(run.studies[patient].study_instance_uid, limit=1000)
    (event,) = [event.details for event in events if event.event == "clinical_text_gathered"]
    return event


def test_hl7_note_acknowledged(run: Run) -> None:
    (ack,) = run.acks
    segments = ack_segments(ack)
    assert segments["MSA"][1] == "AA"
    assert segments["MSA"][2] == CONTROL_ID


def test_hl7_note_used_by_model(run: Run) -> None:
    sr = _sr(run, HL7_PATIENT)

    assert read_clinical_text_available(sr) is True
    findings = read_hip_findings(sr)
    assert [finding.laterality for finding in findings] == ["Right", "Left"]
    for finding in findings:
        assert finding.attention["text"] > 0, finding.laterality
    event = _text_event(run, HL7_PATIENT)
    assert event["available"] is True
    assert f"hl7:{CONTROL_ID}" in event["sources"]


def test_no_text_analysed_without(run: Run) -> None:
    sr = _sr(run, SILENT_PATIENT)

    assert read_clinical_text_available(sr) is False
    for finding in read_hip_findings(sr):
        assert finding.attention.get("text", 0.0) == 0.0
        assert finding.attention["radiograph"] > 0
    event = _text_event(run, SILENT_PATIENT)
    assert event["available"] is False
    assert event["sources"] == []


def test_fhir_note_used_by_model(run: Run) -> None:
    if run.fhir_note_id is None:
        pytest.skip("node is not installed; the FHIR test server runs on Node 20 or later")
    sr = _sr(run, FHIR_PATIENT)

    assert read_clinical_text_available(sr) is True
    for finding in read_hip_findings(sr):
        assert finding.attention["text"] > 0, finding.laterality
    event = _text_event(run, FHIR_PATIENT)
    assert event["sources"] == [f"fhir:DocumentReference/{run.fhir_note_id}"]


def test_log_has_no_patient_data(run: Run) -> None:
    log = run.log_path.read_text(encoding="utf-8")
    assert '"event": "clinical_text_gathered"' in log
    for patient in (HL7_PATIENT, SILENT_PATIENT, FHIR_PATIENT):
        assert patient not in log
    for note in (OA_NOTE, FAI_NOTE):
        sentences = [part.strip() for part in re.split(r"[.,:]", note)]
        for sentence in sentences:
            if len(sentence) >= 20:
                assert sentence not in log, sentence
