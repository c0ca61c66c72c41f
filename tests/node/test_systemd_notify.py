"""sd_notify messages: the notifier on its own, and ``hipfuse-node run`` under a fake systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_helpers import free_port
from worker_helpers import node_settings, untrained_bundle_dir

from hipfuse.node.service import NodeService, ServiceError
from hipfuse.node.systemd_notify import SystemdNotifier

NODE = [sys.executable, "-m", "hipfuse.node.cli"]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """Yield a bound datagram socket, as systemd creates one, and its path."""
    # AF_UNIX paths are limited to 107 bytes, and pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="hf-notify-") as folder:
        path = str(Path(folder) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(60.0)
            yield sock, path


def receive(sock: socket.socket) -> dict[str, str]:
    """Read one datagram as its ``KEY=VALUE`` lines."""
    lines = sock.recv(4096).decode().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})

    assert not notifier.enabled
    assert notifier.ready("listening") is False
    assert notifier.watchdog_interval_s is None


def test_ready_reaches_a_socket_path(notify_socket) -> None:
    sock, path = notify_socket

    sent = SystemdNotifier({"NOTIFY_SOCKET": path}).ready("listening on 127.0.0.1:11112")

    assert sent is True
    assert receive(sock) == {"READY": "1", "STATUS": "listening on 127.0.0.1:11112"}


def test_abstract_namespace_socket() -> None:
    name = f"hipfuse-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10.0)

        sent = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"}).stopping()

        assert sent is True
        assert receive(sock) == {"STOPPING": "1", "STATUS": "stopping"}


def test_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})

    assert notifier.watchdog() is False


@pytest.mark.parametrize(
    ("environ", "interval_s"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({}, None),
    ],
    ids=["200ms", "own-pid", "other-pid", "zero", "not-a-number", "unset"],
)
def test_watchdog_interval_is_half_the_timeout(environ, interval_s) -> None:
    assert SystemdNotifier(environ).watchdog_interval_s == interval_s


def test_wait_calls_on_healthy_while_threads_live(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path)
    service = NodeService(settings)
    stop = threading.Event()
    alive = threading.Thread(target=stop.wait, daemon=True)
    alive.start()
    service._threads = [alive]
    pings = []

    def ping() -> None:
        pings.append(1)
        if len(pings) == 3:
            stop.set()

    service.wait(stop, 0.01, on_healthy=ping)

    assert len(pings) == 3


def test_wait_stops_pinging_when_a_thread_died(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path)
    service = NodeService(settings)
    dead = threading.Thread(target=lambda: None, name="hipfuse-worker")
    dead.start()
    dead.join()
    service._threads = [dead]
    pings = []

    with pytest.raises(ServiceError, match="stopped unexpectedly: hipfuse-worker"):
        service.wait(threading.Event(), 0.01, on_healthy=lambda: pings.append(1))

    assert pings == []


def test_run_notifies_ready_watchdog_and_stopping(tmp_path: Path, notify_socket) -> None:
    sock, path = notify_socket
    port = free_port()
    config, _ = node_settings(tmp_path, port=port)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "200000",
    }
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*NODE, "run", "--config", str(config), "--bundle", str(untrained_bundle_dir())],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        ready = receive(sock)
        assert ready == {"READY": "1", "STATUS": f"listening as HIPFUSE on 127.0.0.1:{port}"}
        # The SCP accepts connections by the time READY=1 arrives.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        pings = [receive(sock) for _ in range(3)]
        assert pings == [{"WATCHDOG": "1"}] * 3

        process.send_signal(signal.SIGTERM)
        messages = [receive(sock)]
        while "STOPPING" not in messages[-1]:
            messages.append(receive(sock))
        assert process.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert messages[-1] == {"STOPPING": "1", "STATUS": "stopping"}
    assert all(message == {"WATCHDOG": "1"} for message in messages[:-1])
