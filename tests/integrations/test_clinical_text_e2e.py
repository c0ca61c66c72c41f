"""HL7 over MLLP and a real FHIR R4 engine together: one assembled text per study."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fhir_dataset import ADMISSION_NOTE_ZH, CONCLUSION, CONSULT_NOTE_GB, SYSTEM_HOSP, load_dataset
from fhir_peer import FHIRTestServer, start_fhir_server
from hl7_builders import SAMPLES_TEXT, framed, hl7_escape, message, mllp_send, msh, oru, pid

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake
from hipfuse.integrations.hl7.mllp import MLLPListenerThread
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.items import WarningCode
from hipfuse.integrations.text_assembly import GatheredText, gather_clinical_text

TOKEN = "e2e-token-8d2a"
OA_NOTE = (SAMPLES_TEXT / "hip_osteoarthritis_left_mtsamples_258.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    folder = tmp_path_factory.mktemp("e2e")
    server: FHIRTestServer = start_fhir_server(TOKEN)
    hl7_settings = HL7Settings(enabled=True)
    store = HL7Store.in_data_dir(folder / "data")
    listener = MLLPListenerThread(hl7_settings, HL7Intake(store, hl7_settings), port=0)
    listener.start()
    try:
        dataset = load_dataset(server)
        messages = [
            oru("RIS-1", hl7_escape(OA_NOTE), accession="ACC1001").encode(),
            oru(
                "RIS-2", "Knee: no effusion (HL7).", accession="ACC0999", observed="20240202090000"
            ).encode(),
            # The admission note also came over HL7: it must appear once.
            message(
                msh("EMR-7", "MDM^T02^MDM_T02", charset="UNICODE UTF-8"),
                pid(),
                "TXA|1|HP|TX|20240220090000",
                f"OBX|1|TX|34117-2^History and physical note^LN||{hl7_escape(ADMISSION_NOTE_ZH)}",
            ).encode("utf-8"),
        ]
        outbound = folder / "outbound.mllp"
        outbound.write_bytes(framed(*messages))
        acks = mllp_send(listener.port, outbound)
        assert all(b"MSA|AA|" in ack for ack in acks)
        token_file = folder / "token"
        token_file.write_text(TOKEN, encoding="utf-8")
        settings = SimpleNamespace(
            hl7=hl7_settings,
            fhir=FHIRSettings.model_validate(
                {
                    "enabled": True,
                    "base_url": server.base_url,
                    "token_file": token_file,
                    "issuer_systems": [{"issuer": "HOSP", "system": SYSTEM_HOSP}],
                }
            ),
        )
        yield SimpleNamespace(settings=settings, store=store, dataset=dataset)
    finally:
        listener.stop()
        store.close()
        server.stop()


def _gather(sites: SimpleNamespace, accession: str) -> GatheredText:
    gathered = gather_clinical_text(
        sites.settings, sites.store, "HIP001", "HOSP", accession, "20240301"
    )
    assert gathered is not None
    return gathered


def test_e2e_text_has_every_source(sites: SimpleNamespace) -> None:
    gathered = _gather(sites, "ACC1001")
    text = gathered.text

    assert OA_NOTE.rstrip("\r\n") in text
    assert text.count(ADMISSION_NOTE_ZH) == 1
    assert CONSULT_NOTE_GB in text
    assert CONCLUSION in text
    for expected in (
        "Prednisone 5 mg oral tablet; 10 mg once daily",
        "Methylprednisolone pulse therapy",
        "系统性红斑狼疮; clinical status: active",
        "4 drinks/day",
        "Former smoker",
    ):
        assert expected in text, expected
    assert gathered.duplicates_removed == 1


def test_e2e_other_orders_left_out(sites: SimpleNamespace) -> None:
    text = _gather(sites, "ACC1001").text
    assert "Knee: no effusion (HL7)." not in text
    assert "No knee effusion." not in text
    assert "Childhood fracture" not in text


def test_e2e_sections_and_sources(sites: SimpleNamespace) -> None:
    gathered = _gather(sites, "ACC1001")
    text = gathered.text
    titles = ["Complaints, history", "Reports:", "Conditions:", "Medications:", "Social history:"]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    # Newest first among the notes: the consultation (25 Feb) before admission (20 Feb).
    assert text.index(CONSULT_NOTE_GB) < text.index(ADMISSION_NOTE_ZH)
    ids = sites.dataset.ids
    assert "hl7:RIS-1" in gathered.sources
    assert f"fhir:DocumentReference/{ids['note_zh']}" in gathered.sources
    assert f"fhir:MedicationRequest/{ids['prescription']}" in gathered.sources
    assert "hl7:RIS-2" not in gathered.sources
    assert [w.code for w in gathered.warnings] == [WarningCode.ATTACHMENT_SKIPPED]


def test_e2e_without_accession_reports_ambiguity(sites: SimpleNamespace) -> None:
    gathered = _gather(sites, "")
    codes = sorted(w.code.value for w in gathered.warnings)
    assert codes == ["ambiguous_order", "ambiguous_order", "attachment_skipped"]
    # Patient-level text still arrives; the order-linked reports do not.
    assert ADMISSION_NOTE_ZH in gathered.text
    assert OA_NOTE.rstrip("\r\n") not in gathered.text
    assert CONCLUSION not in gathered.text


def test_e2e_same_call_same_text(sites: SimpleNamespace) -> None:
    assert _gather(sites, "ACC1001") == _gather(sites, "ACC1001")


def test_e2e_hl7_only_poll(sites: SimpleNamespace) -> None:
    gathered = gather_clinical_text(
        sites.settings, sites.store, "HIP001", "HOSP", "ACC1001", "20240301", include_fhir=False
    )
    assert gathered is not None
    assert all(source.startswith("hl7:") for source in gathered.sources)
    assert OA_NOTE.rstrip("\r\n") in gathered.text
