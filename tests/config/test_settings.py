from __future__ import annotations

import re
import textwrap
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from hipfuse.config.settings import (
    AllowedCaller,
    Settings,
    SettingsError,
    default_settings_text,
    load_settings,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("HIPFUSE_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults_load_from_shipped_file() -> None:
    settings = load_settings()
    assert settings.node.ae_title == "HIPFUSE"
    assert settings.node.bind_address == "127.0.0.1"
    assert settings.node.port == 11112
    assert settings.node.allowed_callers == []
    assert settings.study.quiet_period_s == 30.0
    assert settings.hl7.enabled is False
    assert settings.fhir.enabled is False
    assert settings.logging.json_lines is True


def test_shipped_file_equals_model_defaults() -> None:
    # The shipped file documents the defaults; it must not drift from the model.
    assert load_settings() == Settings()


def _keys(table: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in table.items():
        if isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _is_table_list(field: FieldInfo) -> bool:
    (item,) = typing.get_args(field.annotation) or (None,)
    is_list = typing.get_origin(field.annotation) is list
    return is_list and isinstance(item, type) and issubclass(item, BaseModel)


def _is_table(field: FieldInfo) -> bool:
    model = field.annotation
    return isinstance(model, type) and issubclass(model, BaseModel)


def _model_keys(model: type[BaseModel], prefix: str, optional: bool) -> set[str]:
    keys = set()
    for name, sub in model.model_fields.items():
        if _is_table(sub):
            keys |= _model_keys(sub.annotation, f"{prefix}{sub.alias or name}.", optional)
            continue
        is_optional = sub.default is None or _is_table_list(sub)
        if is_optional is optional:
            keys.add(f"{prefix}{sub.alias or name}")
    return keys


def _section_keys(optional: bool) -> set[str]:
    """Dotted keys of the sections and their sub-tables: optional ones or the rest.

    Optional keys have the default None or are lists of tables.
    """
    keys = set()
    for section, field in Settings.model_fields.items():
        if _is_table(field):
            keys |= _model_keys(field.annotation, f"{section}.", optional)
    return keys


def test_shipped_file_sets_every_scalar_key() -> None:
    # Optional keys (no default value, lists of tables) are shown commented out.
    shipped = set(_keys(tomllib.loads(default_settings_text())))
    assert shipped == _section_keys(optional=False)


def test_shipped_file_shows_every_optional_key() -> None:
    text = default_settings_text()
    for key in sorted(_section_keys(optional=True)):
        section, name = key.rsplit(".", 1)
        shown = re.search(rf"^# {name} = ", text, flags=re.MULTILINE) or re.search(
            rf"^# \[\[{section}\.{name}\]\]", text, flags=re.MULTILINE
        )
        assert shown, f"{key} is not shown in default.toml"


def test_shipped_file_documents_every_key() -> None:
    # Each key line follows a comment block; commented-out keys count too.
    lines = default_settings_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            block = [
                previous
                for previous in lines[max(0, index - 8) : index]
                if previous.startswith("#")
            ]
            assert block, f"key line {line!r} has no comment above it"


def test_user_file_overrides_some_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [node]
        port = 104
        [[node.allowed_callers]]
        ae_title = "PACS"
        addresses = ["10.0.0.5", "10.1.0.0/16"]
        [[destinations]]
        name = "pacs"
        ae_title = "PACS"
        host = "pacs.example.org"
        port = 104
        """,
    )
    settings = load_settings(path)
    assert settings.node.port == 104
    assert settings.node.ae_title == "HIPFUSE"
    assert settings.node.allowed_callers[0].addresses == ["10.0.0.5", "10.1.0.0/16"]
    assert settings.destinations[0].host == "pacs.example.org"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "[node]\nport = 104\n[study]\nquiet_period_s = 5\n")
    monkeypatch.setenv("HIPFUSE_NODE__PORT", "11113")
    monkeypatch.setenv("HIPFUSE_LOGGING__JSON", "false")
    monkeypatch.setenv(
        "HIPFUSE_NODE__ALLOWED_CALLERS", '[{"ae_title": "ORTHANC", "addresses": []}]'
    )
    settings = load_settings(path)
    assert settings.node.port == 11113
    assert settings.study.quiet_period_s == 5.0
    assert settings.logging.json_lines is False
    assert settings.node.allowed_callers == [AllowedCaller(ae_title="ORTHANC")]


INVALID_CASES = [
    ("node.ae_title", '[node]\nae_title = "A\\\\B"', "without backslash"),
    ("node.ae_title", '[node]\nae_title = "ABCDEFGHIJKLMNOPQ"', "1 to 16 characters"),
    ("node.ae_title", '[node]\nae_title = "    "', "all spaces"),
    ("node.ae_title", '[node]\nae_title = "KNOTEN\u00c4"', "DICOM default repertoire"),
    ("node.port", "[node]\nport = 0", "greater than or equal to 1"),
    ("node.port", "[node]\nport = 65536", "less than or equal to 65535"),
    ("node.bind_address", '[node]\nbind_address = "1.2.3"', "not an IPv4 or IPv6"),
    ("node.max_pdu_bytes", "[node]\nmax_pdu_bytes = 100", "0 (no limit) or between 4096"),
    ("node.dimse_timeout_s", "[node]\ndimse_timeout_s = 0", "greater than 0"),
    ("node.max_study_bytes", "[node]\nmax_study_bytes = -1", "greater than 0"),
    ("node.colour", "[node]\ncolour = 1", "unknown key"),
    (
        "node.allowed_callers[0].addresses[0]",
        '[[node.allowed_callers]]\nae_title = "PACS"\naddresses = ["10.0.0.1/8"]',
        "write the network as 10.0.0.0/8",
    ),
    (
        "node.allowed_callers[0].addresses[0]",
        '[[node.allowed_callers]]\nae_title = "PACS"\naddresses = ["pacs.local"]',
        "not an IP address or CIDR",
    ),
    (
        "node.allowed_callers",
        '[[node.allowed_callers]]\nae_title = "PACS"\n[[node.allowed_callers]]\nae_title = "PACS"',
        "more than once",
    ),
    (
        "destinations[0].host",
        '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "bad host"\nport = 104',
        "neither an IP address nor a host name",
    ),
    (
        "destinations[0].tls_ca_file",
        '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 104\ntls = true',
        "required with tls = true",
    ),
    ("study.quiet_period_s", "[study]\nquiet_period_s = -5", "greater than 0"),
    ("storage.retention_days", "[storage]\nretention_days = 0", "greater than 0"),
    ("model.device", '[model]\ndevice = "tpu"', "auto, cpu, cuda"),
    ("hl7.port", "[hl7]\nport = 99999", "less than or equal to 65535"),
    ("hl7.processing_ids", "[hl7]\nprocessing_ids = []", "at least one MSH-11 value"),
    ("hl7.default_charset", '[hl7]\ndefault_charset = "KLINGON"', "Table 0211"),
    ("hl7.allowed_addresses[1]", '[hl7]\nallowed_addresses = ["::1", "x"]', "not an IP"),
    ("hl7.text_wait_s", "[hl7]\ntext_wait_s = -1", "greater than or equal to 0"),
    ("fhir.base_url", "[fhir]\nenabled = true", "required with enabled = true"),
    ("fhir.base_url", '[fhir]\nbase_url = "ftp://x"', "http:// or https://"),
    ("fhir.backoff_max_s", "[fhir]\nbackoff_max_s = 0.5", "below backoff_initial_s"),
    (
        "fhir.issuer_systems",
        '[[fhir.issuer_systems]]\nissuer = "A"\nsystem = "s"\n'
        '[[fhir.issuer_systems]]\nissuer = "A"\nsystem = "t"',
        "more than once",
    ),
    ("fhir.issuer_systems[0].system", '[[fhir.issuer_systems]]\nissuer = "A"', "Field required"),
    ("fhir.text_wait_s", "[fhir]\ntext_wait_s = 5", "unknown key"),
    ("send.max_attempts", "[send]\nmax_attempts = 0", "greater than or equal to 1"),
    ("send.backoff_max_s", "[send]\nbackoff_max_s = 1", "below backoff_initial_s"),
    ("logging.level", '[logging]\nlevel = "LOUD"', "'DEBUG', 'INFO'"),
    ("extras", "[extras]\na = 1", "unknown key"),
]


@pytest.mark.parametrize(
    ("path", "text", "reason"),
    INVALID_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID_CASES)],
)
def test_invalid_key_reported_with_path(tmp_path: Path, path: str, text: str, reason: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(_write(tmp_path, text + "\n"))
    problems = dict(raised.value.problems)
    assert path in problems, raised.value
    assert reason in problems[path]


def test_every_invalid_key_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [node]
        ae_title = ""
        port = 70000
        bind_address = "nowhere"
        typo_key = 1
        [study]
        quiet_period_s = 0
        [logging]
        level = "LOUD"
        """,
    )
    with pytest.raises(SettingsError) as raised:
        load_settings(path)
    paths = sorted(problem_path for problem_path, _ in raised.value.problems)
    assert paths == [
        "logging.level",
        "node.ae_title",
        "node.bind_address",
        "node.port",
        "node.typo_key",
        "study.quiet_period_s",
    ]
    message = str(raised.value)
    assert "6 problems" in message
    assert "node.port:" in message


def test_unknown_environment_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIPFUSE_NODE__PROT", "11113")
    with pytest.raises(SettingsError, match=r"node\.prot: unknown key"):
        load_settings()


def test_invalid_environment_value_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIPFUSE_NODE__PORT", "eleven")
    with pytest.raises(SettingsError, match=r"node\.port: .*valid integer"):
        load_settings()


def test_missing_file_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\(file\): cannot be read"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_toml_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\(file\): is not valid TOML"):
        load_settings(_write(tmp_path, "[node\nport = 1\n"))


@pytest.mark.parametrize(
    ("addresses", "peer", "allowed"),
    [
        ([], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.8", False),
        (["192.0.2.0/24"], "192.0.2.200", True),
        (["192.0.2.0/24"], "198.51.100.1", False),
        (["::1"], "::1", True),
        (["192.0.2.0/24"], "not-an-address", False),
    ],
    ids=["any", "exact", "other-host", "cidr-inside", "cidr-outside", "ipv6", "garbage-peer"],
)
def test_allowed_caller_addresses(addresses: list[str], peer: str, allowed: bool) -> None:
    caller = AllowedCaller(ae_title="PACS", addresses=addresses)
    assert caller.allows(peer) is allowed


def test_ae_title_trailing_spaces_ignored(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, '[[node.allowed_callers]]\nae_title = "PACS  "\n'))
    assert settings.node.find_caller("PACS") is not None
    assert settings.node.find_caller("PACS    ") is not None
    assert settings.node.find_caller("OTHER") is None


def test_single_table_for_array_hints_double_brackets(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node.allowed_callers]\nae_title = "PACS"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    problems = dict(caught.value.problems)
    assert "write each entry as [[node.allowed_callers]]" in problems["node.allowed_callers"]


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIPFUSE_NODE__PORT", "abc")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    problems = dict(caught.value.problems)
    assert "environment variable HIPFUSE_NODE__PORT" in problems["node.port"]


def test_table_declared_twice_hints_double_brackets(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[node.allowed_callers]\nae_title = "PACS"\n\n[node.allowed_callers]\nae_title = "RIS"\n'
    )

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    problems = dict(caught.value.problems)
    assert (
        "write each entry of a list, such as an allowed caller, as [[table]]"
        in (problems["(file)"])
    )
