"""The shipped ``hipfuse-node.service``: systemd accepts it and its sandbox exposure stays low."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hipfuse-node.service"
EXEC_START = "ExecStart=/opt/hipfuse/.venv/bin/hipfuse-node run --config /etc/hipfuse/node.toml"
# `systemd-analyze security` grades from 0 (fully sandboxed) to 10 (no sandbox).
MAX_EXPOSURE = 2.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze (package systemd) is not installed"
)


def service_settings() -> dict[str, list[str]]:
    """Return every ``Key=value`` of the unit, comments skipped, values in file order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("User", "hipfuse"),
        ("Group", "hipfuse"),
        ("StateDirectory", "hipfuse"),
        ("ReadWritePaths", "/var/lib/hipfuse"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("UMask", "0077"),
        ("Environment", "HIPFUSE_LOGGING__JSON=true"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ],
    ids=lambda item: item or "empty",
)
def test_unit_sets(key: str, value: str) -> None:
    assert value in service_settings()[key]


def test_unit_leaves_memory_deny_write_execute_off() -> None:
    # torch's oneDNN CPU kernels need writable+executable memory (see the unit's comment).
    assert "MemoryDenyWriteExecute" not in service_settings()


def test_exec_start_is_the_documented_command() -> None:
    assert service_settings()["ExecStart"] == [EXEC_START.removeprefix("ExecStart=")]


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    # /opt/hipfuse is not installed on a development machine, and `verify` rejects
    # an ExecStart binary that does not exist. The copy runs this Python instead,
    # with the same arguments. Every other line is verified as shipped.
    text = UNIT.read_text()
    assert EXEC_START in text
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace(
            "ExecStart=/opt/hipfuse/.venv/bin/hipfuse-node",
            f"ExecStart={sys.executable} -m hipfuse.node.cli",
        )
    )

    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown or misspelled keys and only prints a warning.
    assert result.stderr == ""
    assert result.stdout == ""


@needs_systemd_analyze
def test_security_exposure_is_low() -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )

    match = re.search(r"Overall exposure level for hipfuse-node\.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE
