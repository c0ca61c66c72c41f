"""``hipfuse-node run`` reloads its settings file on SIGHUP, with the drop folder on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ingest_helpers import ECHOSCU, ct_dataset, free_port, write_dataset
from pydicom.uid import generate_uid
from worker_helpers import node_settings, untrained_bundle_dir

NODE = [sys.executable, "-m", "hipfuse.node.cli"]


def read_events(log_path: Path) -> list[dict]:
    lines = log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for_event(process: subprocess.Popen, log_path: Path, event: str, count: int) -> list:
    """Wait until ``event`` has been logged ``count`` times; return all events."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = read_events(log_path)
        if sum(entry["event"] == event for entry in events) >= count:
            return events
        assert process.poll() is None, log_path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no {event} #{count} in the log:\n{log_path.read_text()}")


def echo(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aet", "ECHOSCU", "-aec", "HIPFUSE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(not Path(ECHOSCU).exists(), reason="DCMTK echoscu is not installed")
def test_sighup_reloads_settings(tmp_path: Path) -> None:
    port, other_port = free_port(), free_port()
    dropfolder = tmp_path / "drop"
    config, _ = node_settings(
        tmp_path,
        port=port,
        quiet_period_s=1.0,
        extra=f'[dropfolder]\nenabled = true\ndir = "{dropfolder}"\nsettle_s = 0.5\n',
    )
    original = config.read_text()
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*NODE, "run", "--config", str(config), "--bundle", str(untrained_bundle_dir())],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        events = wait_for_event(process, log_path, "node_started", 1)
        started = [entry["event"] for entry in events]
        ct = ct_dataset(generate_uid(), generate_uid(), 0)
        write_dataset(ct, dropfolder / "STUDY" / "IM0")
        events = wait_for_event(process, log_path, "dropfolder_file_stored", 1)
        stored = next(entry for entry in events if entry["event"] == "dropfolder_file_stored")

        # Live keys and a key that needs a restart.
        config.write_text(
            original.replace("quiet_period_s = 1.0", "quiet_period_s = 2.5")
            .replace(f"port = {port}", f"port = {other_port}")
            .replace("settle_s = 0.5", "settle_s = 0.2")
        )
        process.send_signal(signal.SIGHUP)
        events = wait_for_event(process, log_path, "settings_reloaded", 1)
        first = next(entry for entry in events if entry["event"] == "settings_reloaded")
        restart = [entry["path"] for entry in events if entry["event"] == "setting_needs_restart"]

        # An invalid file: rejected whole, every problem logged.
        config.write_text(
            original.replace("quiet_period_s = 1.0", "quiet_period_s = -1").replace(
                "max_attempts", "max_atempts"
            )
        )
        process.send_signal(signal.SIGHUP)
        events = wait_for_event(process, log_path, "settings_reload_rejected", 1)
        problems = [
            entry["path"] for entry in events if entry["event"] == "settings_reload_problem"
        ]

        # The running quiet period is 2.5 s and the port unchanged: this file changes nothing.
        config.write_text(
            original.replace("quiet_period_s = 1.0", "quiet_period_s = 2.5").replace(
                "settle_s = 0.5", "settle_s = 0.2"
            )
        )
        process.send_signal(signal.SIGHUP)
        events = wait_for_event(process, log_path, "settings_reloaded", 2)
        third = [entry for entry in events if entry["event"] == "settings_reloaded"][1]
        echoed = echo(port)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()

    assert "bundle_watch_started" in started
    assert "dropfolder_started" in started
    assert stored["sop_instance_uid"] == ct.SOPInstanceUID
    assert not (dropfolder / "STUDY" / "IM0").exists()
    assert first["applied"] == ["dropfolder.settle_s", "study.quiet_period_s"]
    assert first["needs_restart"] == ["node.port"]
    assert restart == ["node.port"]
    assert sorted(problems) == ["send.max_atempts", "study.quiet_period_s"]
    assert (third["applied"], third["needs_restart"]) == ([], [])
    assert echoed.returncode == 0, echoed.stderr
