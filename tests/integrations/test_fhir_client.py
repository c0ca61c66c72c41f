"""The FHIR client against a real FHIR R4 engine (Medplum, in memory) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from fhir_dataset import (
    ADMISSION_NOTE_ZH,
    CONCLUSION,
    CONSULT_NOTE_GB,
    REPORT_TEXT,
    SYSTEM_HOSP,
    Dataset,
    load_dataset,
)
from fhir_peer import FHIRTestServer, self_signed_certificate, start_fhir_server

from hipfuse.config.clinical_text import FHIRSettings
from hipfuse.integrations.fhir.client import FHIRClient, FHIRError
from hipfuse.integrations.fhir.query import gather_fhir_items
from hipfuse.integrations.items import ClinicalItem, Section, WarningCode

TOKEN = "test-token-5f1c"
STUDY_DATE = date(2024, 3, 1)


@pytest.fixture(scope="module")
def server() -> Iterator[FHIRTestServer]:
    server = start_fhir_server(TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dataset(server: FHIRTestServer) -> Dataset:
    return load_dataset(server)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "fhir.token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


def _settings(server: FHIRTestServer, token_file: Path, **overrides: object) -> FHIRSettings:
    values: dict[str, object] = {
        "enabled": True,
        "base_url": server.base_url,
        "token_file": token_file,
        "issuer_systems": [{"issuer": "HOSP", "system": SYSTEM_HOSP}],
        "backoff_initial_s": 1.0,
    }
    values.update(overrides)
    return FHIRSettings.model_validate(values)


def _by_source(items: list[ClinicalItem]) -> dict[str, ClinicalItem]:
    return {item.source_id: item for item in items}


def test_fhir_reads_patient_text(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    gathered = gather_fhir_items(_settings(server, token_file), "HIP001", "HOSP", STUDY_DATE)
    items = _by_source(gathered.items)
    ids = dataset.ids

    assert gathered.patient_found
    assert items[f"fhir:DocumentReference/{ids['note_zh']}"].text == ADMISSION_NOTE_ZH
    assert items[f"fhir:DocumentReference/{ids['note_zh']}"].title == "入院记录"
    assert items[f"fhir:DocumentReference/{ids['note_url']}"].text == CONSULT_NOTE_GB
    report = items[f"fhir:DiagnosticReport/{ids['report']}"]
    assert report.text == REPORT_TEXT + "\n" + CONCLUSION
    assert report.order_numbers == frozenset({"ACC1001"})
    assert report.section is Section.REPORT
    assert items[f"fhir:MedicationRequest/{ids['prescription']}"].text == (
        "Prednisone 5 mg oral tablet; 10 mg once daily; reason: 系统性红斑狼疮; status: active"
    )
    assert items[f"fhir:MedicationStatement/{ids['statement']}"].text == (
        "Methylprednisolone pulse therapy; 500 mg IV daily for 3 days; status: completed"
    )
    assert items[f"fhir:Condition/{ids['condition_oa']}"].text == (
        "Osteoarthritis of left hip; clinical status: active"
    )
    alcohol = items[f"fhir:Observation/{ids['alcohol']}"]
    assert (alcohol.title, alcohol.text) == ("Alcoholic drinks per day", "4 drinks/day")
    assert alcohol.section is Section.SOCIAL_HISTORY
    assert items[f"fhir:Observation/{ids['smoking']}"].text == "Former smoker"


def test_fhir_leaves_out_other_resources(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    gathered = gather_fhir_items(_settings(server, token_file), "HIP001", "HOSP", STUDY_DATE)
    sources = {item.source_id for item in gathered.items}
    texts = " ".join(item.text for item in gathered.items)

    for role in ("note_old", "note_error", "note_pdf", "condition_refuted", "lab"):
        assert not any(dataset.ids[role] in source for source in sources), role
    assert "Decoy patient note." not in texts
    assert "Paged condition" not in texts
    (warning,) = gathered.warnings
    assert warning.code is WarningCode.ATTACHMENT_SKIPPED
    assert "application/pdf is not text" in warning.message


def test_fhir_sends_bearer_token(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    server.reset()
    gather_fhir_items(_settings(server, token_file), "HIP001", "HOSP", STUDY_DATE)
    requests = server.requests()
    assert len(requests) >= 7  # Patient, six searches, the Binary attachment
    assert {request["authorization"] for request in requests} == {f"Bearer {TOKEN}"}
    assert any(request["url"].startswith("/fhir/R4/Binary/") for request in requests)


def test_fhir_wrong_token(server: FHIRTestServer, dataset: Dataset, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token", encoding="utf-8")
    with pytest.raises(FHIRError, match="rejected with HTTP 401; check the token") as caught:
        gather_fhir_items(_settings(server, wrong), "HIP001", "HOSP", STUDY_DATE)
    assert caught.value.status == 401


def test_fhir_same_id_in_two_systems_is_ambiguous(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    settings = _settings(server, token_file, issuer_systems=[])
    gathered = gather_fhir_items(settings, "HIP001", "", STUDY_DATE)
    assert gathered.items == []
    (warning,) = gathered.warnings
    assert warning.code is WarningCode.AMBIGUOUS_PATIENT
    assert "2 FHIR Patient resources" in warning.message


def test_fhir_unknown_patient(server: FHIRTestServer, dataset: Dataset, token_file: Path) -> None:
    gathered = gather_fhir_items(_settings(server, token_file), "NOBODY", "HOSP", STUDY_DATE)
    assert (gathered.patient_found, gathered.items, gathered.warnings) == (False, [], [])


def test_fhir_follows_next_links(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    server.reset()
    settings = _settings(server, token_file, page_size=4)
    gathered = gather_fhir_items(settings, "PAGED1", "HOSP", STUDY_DATE)
    titles = sorted(item.text for item in gathered.items)

    assert titles == [f"Paged condition {n:02d}" for n in range(23)]
    condition_pages = [r["url"] for r in server.requests() if "/Condition?" in r["url"]]
    assert len(condition_pages) == 6
    assert "_offset=20" in condition_pages[-1]


def test_fhir_page_limit_warns(server: FHIRTestServer, dataset: Dataset, token_file: Path) -> None:
    settings = _settings(server, token_file, page_size=4, max_pages=2)
    gathered = gather_fhir_items(settings, "PAGED1", "HOSP", STUDY_DATE)
    assert len(gathered.items) == 8
    assert [w.code for w in gathered.warnings] == [WarningCode.FHIR_PAGE_LIMIT]
    assert "more than 2 pages" in gathered.warnings[0].message


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_sleeps"),
    [(503, None, [1.0, 2.0]), (429, "3", [3.0, 3.0]), (502, "0", [0.0, 0.0])],
    ids=["503-backoff", "429-retry-after", "502-retry-after-0"],
)
def test_fhir_retries_then_succeeds(
    server: FHIRTestServer,
    dataset: Dataset,
    token_file: Path,
    status: int,
    retry_after: str | None,
    expected_sleeps: list[float],
) -> None:
    sleeps: list[float] = []
    server.reset()
    server.set_faults(status, 2, retry_after)
    with FHIRClient(_settings(server, token_file), sleep=sleeps.append) as client:
        body = client.get_json(f"Patient/{dataset.patient}")
    assert body["id"] == dataset.patient
    assert sleeps == expected_sleeps
    assert len(server.requests()) == 3


def test_fhir_gives_up_after_max_attempts(
    server: FHIRTestServer, dataset: Dataset, token_file: Path
) -> None:
    sleeps: list[float] = []
    server.reset()
    server.set_faults(500, 10)
    settings = _settings(server, token_file, max_attempts=3, backoff_max_s=1.5)
    try:
        with FHIRClient(settings, sleep=sleeps.append) as client:
            with pytest.raises(FHIRError, match="still returned HTTP 500 after 3 attempts"):
                client.get_json(f"Patient/{dataset.patient}")
    finally:
        server.reset()
    assert sleeps == [1.0, 1.5]


def test_fhir_connection_refused_is_retried(token_file: Path) -> None:
    sleeps: list[float] = []
    # Port 9 (discard) has no listener on loopback here.
    settings = FHIRSettings(
        enabled=True, base_url="http://127.0.0.1:9/fhir", token_file=token_file, max_attempts=2
    )
    with FHIRClient(settings, sleep=sleeps.append) as client:
        with pytest.raises(FHIRError, match="failed after 2 attempts: ConnectError"):
            client.get_json("Patient")
    assert sleeps == [1.0]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FHIRTestServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    server = start_fhir_server(TOKEN, tls_cert=cert, tls_key=key)
    try:
        yield server
    finally:
        server.stop()


def test_fhir_tls_with_ca_file(tls_server: FHIRTestServer, token_file: Path) -> None:
    patient = tls_server.create({"resourceType": "Patient", "gender": "male"})
    settings = _settings(tls_server, token_file, ca_file=tls_server.ca_file)
    with FHIRClient(settings) as client:
        assert client.get_json(f"Patient/{patient['id']}")["gender"] == "male"


def test_fhir_tls_verifies_certificate(tls_server: FHIRTestServer, token_file: Path) -> None:
    settings = _settings(tls_server, token_file, max_attempts=1)
    with FHIRClient(settings) as client:
        with pytest.raises(FHIRError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get_json("Patient")
