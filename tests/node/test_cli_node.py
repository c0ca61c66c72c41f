"""``hipfuse-node``: help, check-config, status, and run with a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ingest_helpers import ECHOSCU, free_port, instance_record
from worker_helpers import node_settings, untrained_bundle_dir

from hipfuse.node.cli import main
from hipfuse.node.jobstore import JobStore, ResultObject
from hipfuse.node.states import StudyState

NODE = [sys.executable, "-m", "hipfuse.node.cli"]


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NODE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_help_lists_commands() -> None:
    result = run_cli("--help")

    assert result.returncode == 0
    for command in ("run", "check-config", "status", "demo"):
        assert command in result.stdout


def test_check_config_does_not_load_torch(tmp_path: Path) -> None:
    config, _ = node_settings(tmp_path)
    # Only the bundle folder's presence is checked, without torch.
    config.write_text(config.read_text() + f'\n[model]\nbundle_dir = "{tmp_path}"\n')
    code = (
        "import sys\nfrom hipfuse.node.cli import main\n"
        f"status = main(['check-config', {str(config)!r}])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
        "sys.exit(status)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "torch not loaded" in result.stdout
    assert "valid; node HIPFUSE on 127.0.0.1:11112" in result.stdout


def test_check_config_lists_every_problem(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        textwrap.dedent(
            """
            [node]
            port = 0
            ae_title = "A_TITLE_LONGER_THAN_16"

            [[destinations]]
            name = "pacs"
            ae_title = "PACS"
            host = "10.0.0.5"
            port = 104
            tls = true

            [send]
            backof_initial_s = 3
            """
        )
    )

    status = main(["check-config", str(config)])

    errors = capsys.readouterr().err
    assert status == 2
    for path in (
        "node.port",
        "node.ae_title",
        "destinations[0].tls_ca_file",
        "send.backof_initial_s",
    ):
        assert f"  {path}: " in errors
    assert "unknown key" in errors


def test_check_config_reports_empty_tls_ca_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "ca.pem").write_text("")
    config, _ = node_settings(tmp_path)
    text = config.read_text().replace(
        "port = 11113\n", f'port = 11113\ntls = true\ntls_ca_file = "{tmp_path / "ca.pem"}"\n'
    )
    config.write_text(text)

    status = main(["check-config", str(config)])

    assert status == 2
    assert (
        f"destinations[0].tls_ca_file: {tmp_path / 'ca.pem'}: contains no PEM certificate"
        in capsys.readouterr().err
    )


def test_check_config_missing_file(tmp_path: Path, capsys) -> None:
    status = main(["check-config", str(tmp_path / "absent.toml")])

    assert status == 2
    assert "(file): cannot be read" in capsys.readouterr().err


def test_status_without_job_store(tmp_path: Path, capsys) -> None:
    config, _ = node_settings(tmp_path)

    status = main(["status", "--config", str(config)])

    assert status == 1
    assert "no job store at" in capsys.readouterr().err


def fill_job_store(settings) -> None:
    """One study with two results: one sent, one waiting after a failed attempt."""
    data_dir = settings.storage.data_dir
    with JobStore.in_data_dir(data_dir, clock=lambda: 1000.0) as store:
        store.record_instance(instance_record("1.2.3.1.1"))
        store._db.execute("UPDATE studies SET input_fingerprint = 'abc'")
        store.transition("1.2.3", StudyState.COMPLETE)
        store.transition("1.2.3", StudyState.ANALYSING)
        results = [
            ResultObject(f"1.2.3.9.{n}", "1.2.840.10008.5.1.4.1.1.7", data_dir / f"{n}.dcm")
            for n in (1, 2)
        ]
        store.record_results("1.2.3", fingerprint="abc", objects=results, destinations=["pacs"])
        sent, waiting = store.claim_due_sends("pacs")
        store.finish_job(sent.job_id, succeeded=True)
        store.finish_job(
            waiting.job_id,
            succeeded=False,
            error="PACS@127.0.0.1:11113 could not be reached",
            retry_at=time.time() + 300,
        )
        store.record_instance(instance_record("4.5.1.1", study="4.5", series="4.5.1"))
        store.transition(
            "4.5",
            StudyState.FAILED,
            reason="hip_not_found",
            details={"message": "no hip was found in the radiograph or the CT"},
        )


def test_status_text_shows_outbox_and_failures(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    fill_job_store(settings)

    status = main(["status", "--config", str(config)])

    text = capsys.readouterr().out
    assert status == 0
    assert "pacs: 1 pending, 0 sending, 1 sent, 0 failed" in text
    assert "1.2.3.9.2 (study 1.2.3): pending, 1 attempts, next attempt in" in text
    assert "last error: PACS@127.0.0.1:11113 could not be reached" in text
    assert "4.5  hip_not_found: no hip was found in the radiograph or the CT" in text
    assert "1.2.3  sending, 1 instances" in text


def test_status_json(tmp_path: Path, capsys) -> None:
    config, settings = node_settings(tmp_path)
    fill_job_store(settings)

    assert main(["status", "--config", str(config), "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    pacs = status["outbox"][0]
    assert pacs["destination"] == "pacs"
    assert pacs["counts"] == {"pending": 1, "running": 0, "succeeded": 1, "failed": 0}
    assert pacs["unsent"][0]["attempts"] == 1
    assert status["studies"]["failed"] == 1
    assert status["recent_failures"][0]["reason"] == "hip_not_found"


def test_run_with_missing_bundle(tmp_path: Path) -> None:
    config, _ = node_settings(tmp_path)

    result = run_cli("run", "--config", str(config), "--bundle", str(tmp_path / "none"))

    assert result.returncode == 3
    assert f"model bundle {tmp_path / 'none'} cannot be loaded" in result.stderr


@pytest.mark.skipif(not Path(ECHOSCU).exists(), reason="DCMTK echoscu is not installed")
def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config, _ = node_settings(tmp_path, port=port)
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*NODE, "run", "--config", str(config), "--bundle", str(untrained_bundle_dir())],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while "node_started" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        echo = subprocess.run(
            [ECHOSCU, "-aet", "ECHOSCU", "-aec", "HIPFUSE", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
        )
        assert echo.returncode == 0, echo.stderr

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    events = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    stopped = [event for event in events if event["event"] == "node_stopped"]
    assert stopped == [stopped[0]]
    assert stopped[0]["clean"] is True


def test_check_config_reports_missing_bundle(tmp_path: Path, capsys) -> None:
    config, _ = node_settings(tmp_path)
    config.write_text(config.read_text() + f'\n[model]\nbundle_dir = "{tmp_path / "absent"}"\n')

    status = main(["check-config", str(config)])

    assert status == 2
    assert (
        f"model.bundle_dir: model bundle {tmp_path / 'absent'} cannot be loaded: no such folder "
        "(check the path, or copy the bundle folder there)" in capsys.readouterr().err
    )
