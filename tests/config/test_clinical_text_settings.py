"""The [hl7] and [fhir] section models on their own: invalid values, address checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings


@pytest.mark.parametrize(
    ("model", "values", "match"),
    [
        (HL7Settings, {"port": 0}, "greater than or equal to 1"),
        (HL7Settings, {"bind_address": "localhost"}, "not an IPv4 or IPv6 address"),
        (HL7Settings, {"allowed_addresses": ["10.0.0.1/8"]}, "write the network as 10.0.0.0/8"),
        (HL7Settings, {"default_charset": "KLINGON"}, "not an HL7 Table 0211 value"),
        (HL7Settings, {"default_charset": "UNICODE UTF-16"}, "not supported"),
        (HL7Settings, {"processing_ids": []}, "at least one MSH-11 value"),
        (HL7Settings, {"max_message_bytes": 10}, "greater than or equal to 1024"),
        (HL7Settings, {"prot": 2575}, "Extra inputs are not permitted"),
        (FHIRSettings, {"enabled": True}, "base_url is required"),
        (FHIRSettings, {"base_url": "ftp://x"}, "must start with http:// or https://"),
        (FHIRSettings, {"backoff_initial_s": 10, "backoff_max_s": 5}, "below backoff_initial_s"),
        (
            FHIRSettings,
            {"issuer_systems": [{"issuer": "A", "system": "s1"}, {"issuer": "A", "system": "s2"}]},
            "more than once",
        ),
        (FHIRSettings, {"max_attempts": 0}, "greater than or equal to 1"),
    ],
    ids=[
        "port-0",
        "bind-name",
        "host-bits",
        "charset-unknown",
        "charset-utf16",
        "no-processing-id",
        "tiny-messages",
        "misspelt-key",
        "fhir-no-url",
        "fhir-ftp",
        "backoff-order",
        "duplicate-issuer",
        "no-attempts",
    ],
)
def test_settings_invalid(model: type, values: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        model.model_validate(values)


@pytest.mark.parametrize(
    ("allowed", "address", "expected"),
    [
        (["127.0.0.1", "::1"], "127.0.0.1", True),
        (["127.0.0.1", "::1"], "127.0.0.2", False),
        (["127.0.0.1", "::1"], "::1", True),
        (["10.1.0.0/16"], "10.1.200.7", True),
        (["10.1.0.0/16"], "::ffff:10.1.200.7", True),
        (["10.1.0.0/16"], "10.2.0.1", False),
        ([], "127.0.0.1", False),
        (["127.0.0.1"], "not-an-address", False),
    ],
    ids=[
        "loopback",
        "other-loopback",
        "ipv6-loopback",
        "network",
        "ipv4-mapped",
        "outside",
        "empty-list",
        "garbage",
    ],
)
def test_hl7_allows(allowed: list[str], address: str, expected: bool) -> None:
    assert HL7Settings(allowed_addresses=allowed).allows(address) is expected


def test_fhir_identifier_system() -> None:
    settings = FHIRSettings(
        issuer_systems=[{"issuer": "HOSP", "system": "urn:oid:1.2.3"}],  # type: ignore[list-item]
        default_identifier_system="urn:oid:9.9",
    )
    assert settings.identifier_system("HOSP") == "urn:oid:1.2.3"
    assert settings.identifier_system(" HOSP ") == "urn:oid:1.2.3"
    assert settings.identifier_system("") == "urn:oid:9.9"
    assert settings.identifier_system("OTHER") == "urn:oid:9.9"
