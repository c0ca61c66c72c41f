"""The [http] section: defaults, invalid values, environment override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hipfuse.config.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HIPFUSE_"):
            monkeypatch.delenv(name)


def test_http_defaults() -> None:
    http = load_settings().http

    assert http.enabled is True
    assert http.bind_address == "127.0.0.1"
    assert http.port == 11180
    assert http.echo_interval_s == 60.0
    assert http.echo_max_age_s == 180.0


INVALID_CASES = [
    ("http.port", "port = 65536", "less than or equal to 65535"),
    ("http.port", "port = -1", "greater than or equal to 0"),
    ("http.bind_address", 'bind_address = "localhost"', "not an IPv4 or IPv6 address"),
    ("http.echo_interval_s", "echo_interval_s = 0", "greater than 0"),
    ("http.echo_max_age_s", "echo_max_age_s = 60.0", "must be above echo_interval_s (60.0)"),
    ("http.echo_max_age_s", "echo_interval_s = 300.0", "must be above echo_interval_s (300.0)"),
    ("http.metrics_path", 'metrics_path = "/m"', "unknown key"),
]


@pytest.mark.parametrize(
    ("path", "line", "reason"), INVALID_CASES, ids=[case[1] for case in INVALID_CASES]
)
def test_http_invalid_value(tmp_path: Path, path: str, line: str, reason: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f"[http]\n{line}\n")

    with pytest.raises(SettingsError) as raised:
        load_settings(config)

    problems = dict(raised.value.problems)
    assert path in problems, raised.value
    assert reason in problems[path]


def test_http_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIPFUSE_HTTP__PORT", "19180")
    monkeypatch.setenv("HIPFUSE_HTTP__ENABLED", "false")

    http = load_settings().http

    assert http.port == 19180
    assert http.enabled is False


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[node]\nport = 11180\n", "http.port", "port 11180 is also node.port on 127.0.0.1"),
        ("[hl7]\nenabled = true\nport = 11112\n", "hl7.port", "port 11112 is also node.port"),
        (
            '[node]\nbind_address = "0.0.0.0"\nport = 11180\n',
            "http.port",
            "port 11180 is also node.port on 0.0.0.0",
        ),
    ],
    ids=["http-on-node-port", "hl7-on-node-port", "wildcard-node-address"],
)
def test_listeners_sharing_a_port_rejected(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    problems = dict(caught.value.problems)
    assert reason in problems[key], problems


def test_listeners_on_other_addresses_may_share_a_port(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nbind_address = "10.0.0.2"\nport = 11180\n')

    assert load_settings(path).http.port == 11180
