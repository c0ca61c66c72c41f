"""FHIR resource readers and client rules that need no server (httpx mock transport)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from hipfuse.config.clinical_text import FHIRSettings
from hipfuse.integrations.fhir.client import FHIRClient, FHIRError
from hipfuse.integrations.fhir.query import token_search_value
from hipfuse.integrations.fhir.resources import (
    AttachmentSkippedError,
    ResourceReader,
    binary_content,
    decode_attachment,
    parse_fhir_datetime,
    value_text,
)
from hipfuse.integrations.items import WarningCode

NOTE_ZH = "左髋疼痛，夜间加重。"


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (NOTE_ZH.encode("utf-8"), "text/plain; charset=utf-8", NOTE_ZH),
        (NOTE_ZH.encode("utf-8"), "text/plain", NOTE_ZH),
        (b"\xef\xbb\xbf" + NOTE_ZH.encode("utf-8"), "text/plain", NOTE_ZH),
        (NOTE_ZH.encode("gb18030"), 'text/plain; charset="GB18030"', NOTE_ZH),
        ("Hüfte".encode("latin-1"), "text/plain;charset=ISO-8859-1", "Hüfte"),
        (b"# Note\n*hip*", "text/markdown", "# Note\n*hip*"),
        (
            "<div><p>Hip <b>pain</b></p><script>x()</script><p>左髋</p></div>".encode(),
            "text/html; charset=utf-8",
            "Hip pain\n左髋",
        ),
    ],
    ids=["utf8", "no-charset", "bom", "gb18030", "latin1", "markdown", "html"],
)
def test_decode_attachment(data: bytes, content_type: str, expected: str) -> None:
    assert decode_attachment(data, content_type) == expected


@pytest.mark.parametrize(
    ("data", "content_type", "match"),
    [
        (b"%PDF-1.7", "application/pdf", "application/pdf is not text"),
        (b"x", "text/plain; charset=klingon", "charset 'klingon' is unknown"),
        (b"\xff\xfe", "text/plain; charset=utf-8", "not valid utf-8"),
        (b"x", "", r"\(none\) is not text"),
    ],
    ids=["pdf", "unknown-charset", "bad-bytes", "no-type"],
)
def test_decode_attachment_skips(data: bytes, content_type: str, match: str) -> None:
    with pytest.raises(AttachmentSkippedError, match=match):
        decode_attachment(data, content_type)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("2024-03", datetime(2024, 3, 1)),
        ("2024-03-01", datetime(2024, 3, 1)),
        ("2024-03-01T10:15:00+08:00", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:00Z", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:00.123-05:00", datetime(2024, 3, 1, 10, 15, 0, 123000)),
        ("not a date", None),
        (20240301, None),
    ],
    ids=["year", "month", "date", "offset", "zulu", "fraction", "text", "number"],
)
def test_parse_fhir_datetime(value: object, expected: datetime | None) -> None:
    assert parse_fhir_datetime(value) == expected


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ({"valueQuantity": {"value": 40, "unit": "g/d"}}, "40 g/d"),
        ({"valueQuantity": {"value": 2, "comparator": ">", "code": "{drinks}/d"}}, ">2 {drinks}/d"),
        ({"valueCodeableConcept": {"coding": [{"code": "8517006"}]}}, "8517006"),
        ({"valueString": "每日饮白酒半斤"}, "每日饮白酒半斤"),
        ({"valueBoolean": False}, "false"),
        ({"valueInteger": 0}, "0"),
        ({"valueRange": {"low": {"value": 1, "unit": "packs"}}}, "1 packs"),
        ({}, ""),
    ],
    ids=["quantity", "comparator", "code-only", "string", "boolean", "zero", "range", "none"],
)
def test_value_text(element: dict, expected: str) -> None:
    assert value_text(element) == expected


def test_reader_skips_entered_in_error() -> None:
    reader = ResourceReader(lambda url: (b"", ""), 1 << 20)
    for resource in (
        {
            "resourceType": "Condition",
            "id": "1",
            "code": {"text": "x"},
            "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "2",
            "status": "entered-in-error",
            "medicationCodeableConcept": {"text": "x"},
        },
        {
            "resourceType": "Observation",
            "id": "3",
            "status": "entered-in-error",
            "valueString": "x",
        },
        {"resourceType": "DiagnosticReport", "id": "4", "status": "cancelled", "conclusion": "x"},
        {
            "resourceType": "DocumentReference",
            "id": "5",
            "status": "superseded",
            "description": "x",
        },
    ):
        kind = resource["resourceType"]
        read = {
            "Condition": reader.condition,
            "Observation": reader.social_history,
            "DiagnosticReport": reader.diagnostic_report,
            "DocumentReference": reader.document_reference,
        }.get(kind)
        items = read(resource) if read else reader.medication(resource, {})
        assert items == [], kind


def test_reader_contained_medication_and_tolerates_odd_json() -> None:
    reader = ResourceReader(lambda url: (b"", ""), 1 << 20)
    resource = {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "meta": {"project": "vendor-extra", "author": {"reference": "Practitioner/1"}},
        "contained": [{"resourceType": "Medication", "id": "m", "code": {"text": "泼尼松"}}],
        "medicationReference": {"reference": "#m"},
        "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 30, "unit": "mg"}}]}],
        "note": [{"text": "已停药半年"}, "not an annotation"],
        "effectiveDateTime": 20230101,
        "status": "stopped",
    }
    (item,) = reader.medication(resource, {})
    assert item.text == "泼尼松; 30 mg; status: stopped\n已停药半年"
    assert item.effective_at is None
    assert item.source_id == "fhir:MedicationStatement/ms1"


def test_reader_attachment_url_and_size_limit() -> None:
    fetched: list[str] = []

    def fetch(url: str) -> tuple[bytes, str]:
        fetched.append(url)
        return NOTE_ZH.encode("gb18030"), "text/plain; charset=GB18030"

    reader = ResourceReader(fetch, 1024)
    note = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "content": [
            {"attachment": {"contentType": "text/plain", "url": "Binary/b1"}},
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(b"x" * 4096).decode(),
                }
            },
        ],
    }
    (item,) = reader.document_reference(note)
    assert item.text == NOTE_ZH
    assert fetched == ["Binary/b1"]
    assert [w.code for w in reader.warnings] == [WarningCode.ATTACHMENT_SKIPPED]
    assert "too large" in reader.warnings[0].message


def test_binary_content_unwraps_fhir_json() -> None:
    body = json.dumps(
        {
            "resourceType": "Binary",
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(NOTE_ZH.encode()).decode(),
        }
    ).encode()
    assert binary_content(body, "application/fhir+json; charset=utf-8") == (
        NOTE_ZH.encode(),
        "text/plain; charset=utf-8",
    )
    assert binary_content(b"raw", "text/plain") == (b"raw", "text/plain")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("HIP001", "HIP001"), ("A|B,C$D\\E", "A\\|B\\,C\\$D\\\\E")],
    ids=["plain", "special"],
)
def test_token_search_value(value: str, expected: str) -> None:
    assert token_search_value(value) == expected


def _client(handler, tmp_path: Path, **overrides: object) -> FHIRClient:
    token = tmp_path / "token"
    token.write_text("secret-token", encoding="utf-8")
    settings = FHIRSettings.model_validate(
        {"enabled": True, "base_url": "https://fhir.example.test/r4", "token_file": token}
        | overrides
    )
    return FHIRClient(settings, transport=httpx.MockTransport(handler), sleep=lambda s: None)


def test_client_does_not_follow_foreign_next_link(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}],
            "link": [{"relation": "next", "url": "https://elsewhere.test/r4/Condition?page=2"}],
        }
        return httpx.Response(200, json=bundle)

    with _client(handler, tmp_path) as client:
        entries = client.search("Condition", [("patient", "Patient/p1")])
        assert next(entries).resource["id"] == "c1"
        with pytest.raises(FHIRError, match="outside \\[fhir\\] base_url"):
            next(entries)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://fhir.example.test/other/Binary/1",
        "http://fhir.example.test/r4/Binary/1",
        "https://fhir.example.test/r4x/Binary/1",
        "https://evil.test/r4/Binary/1",
    ],
    ids=["other-path", "other-scheme", "prefix-trick", "other-host"],
)
def test_client_resolve_rejects_outside_base(tmp_path: Path, url: str) -> None:
    with _client(lambda r: httpx.Response(200), tmp_path) as client:
        with pytest.raises(FHIRError, match="outside"):
            client.resolve(url)


def test_client_resolves_relative_reference(tmp_path: Path) -> None:
    with _client(lambda r: httpx.Response(200), tmp_path) as client:
        assert client.resolve("Binary/7") == "https://fhir.example.test/r4/Binary/7"


def test_client_reads_token_at_each_request(tmp_path: Path) -> None:
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["Authorization"])
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"})

    with _client(handler, tmp_path) as client:
        client.get_json("Patient/p")
        (tmp_path / "token").write_text("rotated-token\n", encoding="utf-8")
        client.get_json("Patient/p")
    assert tokens == ["Bearer secret-token", "Bearer rotated-token"]


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot be read"), ("  \n", "is empty")],
    ids=["missing", "empty"],
)
def test_client_token_file_problems(tmp_path: Path, content: str | None, match: str) -> None:
    with _client(lambda r: httpx.Response(200, json={}), tmp_path) as client:
        if content is None:
            (tmp_path / "token").unlink()
        else:
            (tmp_path / "token").write_text(content, encoding="utf-8")
        with pytest.raises(FHIRError, match=match):
            client.get_json("Patient")


def test_client_error_hides_search_values(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad HIP001"}],
        }
        return httpx.Response(400, json=outcome)

    with _client(handler, tmp_path) as client:
        with pytest.raises(FHIRError) as caught:
            client.get_json("Patient", [("identifier", "HIP001")])
    message = str(caught.value)
    assert "HTTP 400" in message
    assert "issue codes: invalid" in message
    assert "HIP001" not in message


def test_client_unreadable_ca_file(tmp_path: Path) -> None:
    settings = FHIRSettings(enabled=True, base_url="https://x.test", ca_file=tmp_path / "none.pem")
    with pytest.raises(FHIRError, match=r"ca_file .* cannot be loaded"):
        FHIRClient(settings)
