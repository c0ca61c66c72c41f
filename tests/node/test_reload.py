"""Settings reload: which changed keys apply live, how they reach the running parts, bad files."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from hipfuse.config.dropfolder import DropFolderSettings
from hipfuse.config.settings import Settings, load_settings
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.jobstore import JobStore
from hipfuse.node.reload import (
    ReloadResult,
    SettingsReloader,
    apply_settings,
    describe_reload,
    plan_reload,
    reload_settings,
)
from hipfuse.node.scp import StorageSCP
from hipfuse.node.sender import DestinationSender
from hipfuse.node.spool import Spool
from hipfuse.node.tls import TLSFileError

BASE = """
[node]
port = 11112
allowed_callers = [{ ae_title = "PACS" }]

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 11113

[study]
quiet_period_s = 30.0

[storage]
data_dir = "DATA_DIR"

[send]
max_attempts = 10
backoff_initial_s = 30.0
backoff_max_s = 3600.0

[dropfolder]
settle_s = 5.0

[logging]
level = "INFO"
json = true
"""


def settings_from(tmp_path: Path, text: str, name: str = "node.toml") -> Settings:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("DATA_DIR", str(tmp_path / "data")))
    return load_settings(path)


def changed(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new)


@pytest.mark.parametrize(
    ("new_text", "applied", "needs_restart"),
    [
        (BASE, [], []),
        (changed("quiet_period_s = 30.0", "quiet_period_s = 5.0"), ["study.quiet_period_s"], []),
        (changed("port = 11112", "port = 11114"), [], ["node.port"]),
        (changed('level = "INFO"', 'level = "DEBUG"'), ["logging.level"], []),
        (changed("json = true", "json = false"), ["logging.json"], []),
        (
            changed('allowed_callers = [{ ae_title = "PACS" }]', "allowed_callers = []"),
            ["node.allowed_callers"],
            [],
        ),
        (
            changed(
                "max_attempts = 10\nbackoff_initial_s = 30.0",
                "max_attempts = 3\nbackoff_initial_s = 5.0",
            ),
            ["send.backoff_initial_s", "send.max_attempts"],
            [],
        ),
        (changed('host = "127.0.0.1"', 'host = "10.0.0.5"'), ["destinations[0].host"], []),
        (
            changed('name = "pacs"', 'name = "archive"'),
            [],
            ["destinations"],
        ),
        (
            changed("port = 11113", 'port = 11113\ntls_ca_file = "/etc/ca.pem"'),
            [],
            ["destinations[0].tls_ca_file"],
        ),
        (changed("settle_s = 5.0", "settle_s = 1.0"), ["dropfolder.settle_s"], []),
        (changed("settle_s = 5.0", 'settle_s = 5.0\ndir = "/srv/in"'), [], ["dropfolder.dir"]),
        (changed("[logging]", "[hl7]\ntext_wait_s = 5.0\n\n[logging]"), [], ["hl7.text_wait_s"]),
        (
            changed("[logging]", "[model]\nwatch_settle_s = 1.0\n\n[logging]"),
            ["model.watch_settle_s"],
            [],
        ),
        (changed("[logging]", '[model]\ndevice = "cpu"\n\n[logging]'), [], ["model.device"]),
        (
            changed("quiet_period_s = 30.0", "quiet_period_s = 5.0").replace(
                "port = 11112", "port = 11114"
            ),
            ["study.quiet_period_s"],
            ["node.port"],
        ),
    ],
    ids=[
        "unchanged",
        "quiet-period",
        "port",
        "log-level",
        "log-format",
        "allowed-callers",
        "send-retries",
        "destination-host",
        "destination-renamed",
        "destination-tls-file",
        "dropfolder-settle",
        "dropfolder-dir",
        "hl7-wait",
        "bundle-settle",
        "model-device",
        "live-and-restart",
    ],
)
def test_plan_reload_sorts_changes(
    tmp_path: Path, new_text: str, applied: list[str], needs_restart: list[str]
) -> None:
    running = settings_from(tmp_path, BASE)
    new = settings_from(tmp_path, new_text, "new.toml")

    plan = plan_reload(running, new)

    assert sorted(plan.applied) == applied
    assert sorted(plan.needs_restart) == needs_restart


def test_plan_reload_keeps_restart_keys(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    new_text = changed("quiet_period_s = 30.0", "quiet_period_s = 5.0")
    new_text = new_text.replace("port = 11112", "port = 11114").replace(
        'host = "127.0.0.1"', 'host = "10.0.0.5"'
    )
    new = settings_from(tmp_path, new_text, "new.toml")

    effective = plan_reload(running, new).effective

    assert effective.study.quiet_period_s == 5.0
    assert effective.node.port == 11112
    assert effective.destinations[0].host == "10.0.0.5"
    assert effective.destinations[0].port == 11113
    # A second reload of the same file reports the port again, and nothing else.
    again = plan_reload(effective, new)
    assert (again.applied, again.needs_restart) == ((), ("node.port",))


def running_parts(tmp_path: Path, settings: Settings) -> SimpleNamespace:
    jobstore = JobStore.in_data_dir(settings.storage.data_dir)
    spool = Spool(settings.storage.data_dir)
    storage_scp = StorageSCP(settings, jobstore, spool)
    (destination,) = settings.destinations
    return SimpleNamespace(
        settings=settings,
        scp=SimpleNamespace(storage_scp=storage_scp, uses_tls=False),
        assembler=StudyAssembler(jobstore, settings.study),
        senders={
            destination.name: DestinationSender(destination, jobstore, settings.send, settings.node)
        },
        dropfolder=SimpleNamespace(settings=DropFolderSettings()),
        bundle_watcher=SimpleNamespace(settle_s=5.0),
        jobstore=jobstore,
    )


def service_without_parts(settings: Settings) -> SimpleNamespace:
    """Stand in for a node whose parts are not running: only its settings change."""
    return SimpleNamespace(
        settings=settings,
        scp=None,
        assembler=None,
        senders={},
        dropfolder=None,
        bundle_watcher=None,
    )


def test_apply_settings_reaches_running_parts(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = running_parts(tmp_path, running)
    new_text = (
        BASE.replace("quiet_period_s = 30.0", "quiet_period_s = 5.0")
        .replace(
            'allowed_callers = [{ ae_title = "PACS" }]',
            'allowed_callers = [{ ae_title = "NEWPACS" }]',
        )
        .replace("max_attempts = 10", "max_attempts = 2")
        .replace('host = "127.0.0.1"', 'host = "10.0.0.5"')
        .replace("settle_s = 5.0", "settle_s = 1.5")
        .replace("[logging]", "[model]\nwatch_settle_s = 0.5\n\n[logging]")
    )
    new = settings_from(tmp_path, new_text, "new.toml")

    apply_settings(service, plan_reload(running, new))

    storage_scp = service.scp.storage_scp
    assert storage_scp.settings.node.find_caller("NEWPACS") is not None
    assert storage_scp.settings.node.find_caller("PACS") is None
    assert service.assembler.settings.quiet_period_s == 5.0
    sender = service.senders["pacs"]
    assert sender.settings.max_attempts == 2
    assert sender.peer.host == "10.0.0.5"
    assert sender.destination.host == "10.0.0.5"
    assert service.dropfolder.settings.settle_s == 1.5
    assert service.bundle_watcher.settle_s == 0.5
    assert service.settings.study.quiet_period_s == 5.0
    service.jobstore.close()


class RecordingTLSListener:
    """Stands in for a TLS listener: records each reload, or fails with ``error``."""

    uses_tls = True

    def __init__(self, storage_scp: StorageSCP, error: Exception | None = None) -> None:
        self.storage_scp = storage_scp
        self.error = error
        self.reloaded: list[object] = []

    def reload_tls(self, tls: object) -> None:
        if self.error is not None:
            raise self.error
        self.reloaded.append(tls)


def test_apply_settings_rereads_tls_files(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = running_parts(tmp_path, running)
    service.scp = RecordingTLSListener(service.scp.storage_scp)

    apply_settings(service, plan_reload(running, running))

    assert service.scp.reloaded == [running.node.tls]
    service.jobstore.close()


def test_apply_settings_logs_tls_failure(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = running_parts(tmp_path, running)
    error = TLSFileError("node.tls.cert_file", tmp_path / "node.crt", "no such file")
    service.scp = RecordingTLSListener(service.scp.storage_scp, error)

    with structlog.testing.capture_logs() as logs:
        apply_settings(service, plan_reload(running, running))

    [failure] = [entry for entry in logs if entry["event"] == "tls_reload_failed"]
    assert failure["setting"] == "node.tls.cert_file"
    assert failure["log_level"] == "error"
    service.jobstore.close()


def test_reload_rejects_invalid_file(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = service_without_parts(running)
    config = tmp_path / "bad.toml"
    config.write_text(
        BASE.replace("DATA_DIR", str(tmp_path / "data"))
        .replace("quiet_period_s = 30.0", "quiet_period_s = 5.0")
        .replace("port = 11112", "port = 0")
        .replace("backoff_initial_s", "backof_initial_s")
    )

    with structlog.testing.capture_logs() as logs:
        result = reload_settings(service, config)

    assert not result.accepted
    assert sorted(path for path, _ in result.problems) == ["node.port", "send.backof_initial_s"]
    problems = [entry["path"] for entry in logs if entry["event"] == "settings_reload_problem"]
    assert sorted(problems) == ["node.port", "send.backof_initial_s"]
    assert [entry["event"] for entry in logs][-1] == "settings_reload_rejected"
    assert service.settings is running


def test_reload_rejects_runtime_problem(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = SimpleNamespace(settings=running)
    config = tmp_path / "bad.toml"
    config.write_text(
        BASE.replace("DATA_DIR", str(tmp_path / "data")).replace(
            "settle_s = 5.0", f'enabled = true\ndir = "{tmp_path / "data"}"'
        )
    )

    result = reload_settings(service, config)

    assert [path for path, _ in result.problems] == ["dropfolder.dir"]
    assert service.settings is running


def test_reload_changes_log_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running = settings_from(tmp_path, BASE)
    new = settings_from(tmp_path, BASE.replace('level = "INFO"', 'level = "WARNING"'), "new.toml")
    service = service_without_parts(running)
    saved = structlog.get_config()
    try:
        apply_settings(service, plan_reload(running, new))
        log = structlog.get_logger("hipfuse.test")
        log.info("quiet_event")
        log.warning("loud_event")
    finally:
        structlog.configure(**saved)

    err = capsys.readouterr().err
    assert "quiet_event" not in err
    assert '"event": "loud_event"' in err


class RecordingNotifier:
    """Stands in for the sd_notify socket: keeps each message's fields."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.ready = threading.Event()

    def send(self, **fields: str) -> bool:
        self.messages.append(fields)
        if "READY" in fields:
            self.ready.set()
        return True


def test_reloader_reports_outcome_in_status(tmp_path: Path) -> None:
    running = settings_from(tmp_path, BASE)
    service = service_without_parts(running)
    config = tmp_path / "new.toml"
    config.write_text(
        BASE.replace("DATA_DIR", str(tmp_path / "data"))
        .replace("quiet_period_s = 30.0", "quiet_period_s = 5.0")
        .replace("port = 11112", "port = 11113")
    )
    notifier = RecordingNotifier()
    reloader = SettingsReloader(service, config, notifier)
    reloader.base_status = "listening as HIPFUSE on 127.0.0.1:11112"

    reloader.start()
    reloader.request()
    try:
        assert notifier.ready.wait(30)
    finally:
        reloader.stop()

    reloading, ready = notifier.messages
    assert reloading["RELOADING"] == "1"
    assert ready["STATUS"].startswith("listening as HIPFUSE on 127.0.0.1:11112; settings reloaded")
    assert ready["STATUS"].endswith(": 1 applied, 1 needing a restart")


def test_describe_reload_rejected_and_failed() -> None:
    rejected = ReloadResult(None, (("node.port", "bad"), ("send.x", "unknown key")))

    assert describe_reload(rejected, 0.0) == (
        "settings reload at 00:00:00 UTC rejected (2 problems, see the log)"
    )
    assert describe_reload(None, 3600.0) == "settings reload at 01:00:00 UTC failed, see the log"
