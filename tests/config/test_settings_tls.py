"""The ``[node.tls]`` section and the destinations' TLS keys: which keys go together."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from hipfuse.config.settings import SettingsError, load_settings
from hipfuse.config.tls import TLSVersion


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HIPFUSE_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_tls_off_by_default() -> None:
    tls = load_settings().node.tls

    assert tls.enabled is False
    assert tls.require_client_certificate is True
    assert tls.min_version is TLSVersion.TLS_1_2


def test_tls_section_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [node.tls]
        enabled = true
        cert_file = "/etc/hipfuse/tls/node.crt"
        key_file = "/etc/hipfuse/tls/node.key"
        ca_file = "/etc/hipfuse/tls/client-ca.pem"
        min_version = "1.3"
        """,
    )

    tls = load_settings(path).node.tls

    assert tls.enabled is True
    assert tls.cert_file == Path("/etc/hipfuse/tls/node.crt")
    assert tls.key_file == Path("/etc/hipfuse/tls/node.key")
    assert tls.ca_file == Path("/etc/hipfuse/tls/client-ca.pem")
    assert tls.min_version is TLSVersion.TLS_1_3


def test_tls_without_client_certificates_needs_no_ca(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [node.tls]
        enabled = true
        cert_file = "node.crt"
        key_file = "node.key"
        require_client_certificate = false
        """,
    )

    assert load_settings(path).node.tls.ca_file is None


def test_tls_enabled_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        """
        [node.tls]
        cert_file = "node.crt"
        key_file = "node.key"
        ca_file = "ca.pem"
        """,
    )
    monkeypatch.setenv("HIPFUSE_NODE__TLS__ENABLED", "true")

    assert load_settings(path).node.tls.enabled is True


_DESTINATION = '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 104\n'


@pytest.mark.parametrize(
    ("path", "text", "reason"),
    [
        (
            "node.tls.cert_file",
            "[node.tls]\nenabled = true",
            "required with enabled = true (also missing: key_file, ca_file)",
        ),
        (
            "node.tls.key_file",
            '[node.tls]\nenabled = true\ncert_file = "c.pem"',
            "required with enabled = true",
        ),
        (
            "node.tls.ca_file",
            '[node.tls]\nenabled = true\ncert_file = "c.pem"\nkey_file = "k.pem"',
            "required with require_client_certificate = true",
        ),
        ("node.tls.min_version", '[node.tls]\nmin_version = "1.1"', "'1.2' or '1.3'"),
        ("node.tls.verify", "[node.tls]\nverify = false", "unknown key"),
        (
            "destinations[0].tls_min_version",
            _DESTINATION + 'tls_min_version = "1.0"',
            "'1.2' or '1.3'",
        ),
        (
            "destinations[0].tls_key_file",
            _DESTINATION + 'tls = true\ntls_ca_file = "ca.pem"\ntls_cert_file = "c.pem"',
            "set both tls_cert_file and tls_key_file",
        ),
        (
            "node.allowed_callers",
            '[[node.allowed_callers]]\nae_title = "PACS"\ncertificate_names = ["pacs"]',
            "certificate_names is set for ['PACS'], but the listener does not require client",
        ),
        (
            "node.allowed_callers[0].certificate_names[0]",
            '[[node.allowed_callers]]\nae_title = "PACS"\ncertificate_names = [""]',
            "at least 1 character",
        ),
    ],
    ids=[
        "no-cert",
        "no-key",
        "no-client-ca",
        "old-version",
        "unknown-key",
        "destination-old-version",
        "destination-cert-without-key",
        "certificate-names-without-tls",
        "empty-certificate-name",
    ],
)
def test_tls_invalid_key_reported(tmp_path: Path, path: str, text: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_write(tmp_path, text))

    problems = dict(caught.value.problems)
    assert path in problems, problems
    assert reason in problems[path]


def test_certificate_names_load_with_tls(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [node.tls]
        enabled = true
        cert_file = "node.crt"
        key_file = "node.key"
        ca_file = "ca.pem"

        [[node.allowed_callers]]
        ae_title = "PACS"
        certificate_names = ["pacs.hospital.example", "10.0.0.5"]
        """,
    )

    (caller,) = load_settings(path).node.allowed_callers

    assert caller.certificate_names == ["pacs.hospital.example", "10.0.0.5"]
