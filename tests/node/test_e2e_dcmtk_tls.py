"""The node's sender against DCMTK storescp with DICOM TLS, in a network namespace.

DCMTK 3.6.7's storescp listens on every interface, so it runs in a network
namespace with only loopback (see peers.py). The sender runs in this
process, in a thread that joins the namespace with setns(2). Threads it
starts, such as pynetdicom's association thread, inherit the namespace, and
the job store is an ordinary file. This needs root, as the other peer tests do.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
import structlog
from peers import (
    DCMTK_ENV,
    ECHOSCU,
    STORESCP,
    Namespace,
    peers_available,
    stop_process,
    wait_for,
)
from tls_helpers import STUDY, Credential, TestPKI, make_pki, queue_results
from worker_helpers import FakeClock

from hipfuse.config.settings import Destination, NodeSettings, SendSettings
from hipfuse.node.jobstore import JobStore
from hipfuse.node.sender import DestinationSender
from hipfuse.node.states import JobState, StudyState

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(peers_available() is not None, reason=str(peers_available())),
]

STORESCP_PORT = 11113
SEND = SendSettings(max_attempts=3, backoff_initial_s=10.0, backoff_max_s=25.0)
NODE = NodeSettings(ae_title="HIPFUSE", acse_timeout_s=10.0, dimse_timeout_s=20.0)
# setns(2) flag for a network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def run_in_namespace(namespace: Namespace, function: Callable[[], T]) -> T:
    """Call ``function`` in a thread that has joined the namespace; return its result."""
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: dict[str, Any] = {}

    def target() -> None:
        with open(f"/run/netns/{namespace.name}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                outcome["error"] = OSError(error, f"setns: {os.strerror(error)}")
                return
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="in-namespace")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def tls_options(credential: Credential, ca: Path) -> list[str]:
    # DCMTK takes the key first, then the certificate; -pw: the key has no password.
    return ["+tls", str(credential.key), str(credential.cert), "-pw", "+cf", str(ca)]


def start_storescp(namespace: Namespace, pki: TestPKI, out_dir: Path) -> subprocess.Popen:
    """Start storescp with TLS and client certificates required; wait for a TLS C-ECHO."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [STORESCP, "-aet", "STORESCP", "-od", out_dir, *tls_options(pki.server, pki.ca)]
    process = namespace.start(
        [*command, str(STORESCP_PORT)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    echo = [ECHOSCU, "-aet", "ECHOSCU", "-aec", "STORESCP", *tls_options(pki.client, pki.ca)]
    echo += ["127.0.0.1", str(STORESCP_PORT)]
    wait_for(
        lambda: namespace.run(echo, env=DCMTK_ENV, timeout=30).returncode == 0,
        30,
        "storescp with TLS",
    )
    return process


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def destination(pki: TestPKI, ca: Path, client: Credential) -> Destination:
    return Destination(
        name="pacs",
        ae_title="STORESCP",
        host="127.0.0.1",
        port=STORESCP_PORT,
        tls=True,
        tls_ca_file=ca,
        tls_cert_file=client.cert,
        tls_key_file=client.key,
    )


def test_sender_stores_at_storescp_over_tls(tmp_path: Path, pki: TestPKI) -> None:
    received = tmp_path / "received"
    with (
        JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock(1000.0)) as store,
        Namespace() as namespace,
    ):
        sent = queue_results(store, tmp_path / "outbox", count=2)
        storescp = start_storescp(namespace, pki, received)
        sender = DestinationSender(destination(pki, pki.ca, pki.client), store, SEND, NODE)
        tried = run_in_namespace(namespace, sender.run_once)
        stop_process(storescp)
        items = store.list_outbox()
        state = store.get_study(STUDY).state

    assert tried == 2
    assert [item.state for item in items] == [JobState.SUCCEEDED] * 2
    assert state is StudyState.DONE
    files = sorted(path for path in received.iterdir() if path.is_file())
    received_uids = {pydicom.dcmread(path).SOPInstanceUID for path in files}
    assert received_uids == {pydicom.dcmread(path).SOPInstanceUID for path in sent}


@pytest.mark.parametrize(
    ("ca", "client", "reason"),
    [
        ("other_ca", "client", "certificate verify failed"),
        ("ca", "other_client", "TLS handshake failed: tlsv1 alert unknown ca"),
    ],
    ids=["node-trusts-other-ca", "client-certificate-of-other-ca"],
)
def test_sender_tls_failure_stays_queued(
    tmp_path: Path, pki: TestPKI, ca: str, client: str, reason: str
) -> None:
    received = tmp_path / "received"
    with (
        structlog.testing.capture_logs() as logs,
        JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock(1000.0)) as store,
        Namespace() as namespace,
    ):
        queue_results(store, tmp_path / "outbox", count=1)
        storescp = start_storescp(namespace, pki, received)
        wrong = destination(pki, getattr(pki, ca), getattr(pki, client))
        sender = DestinationSender(wrong, store, SEND, NODE, clock=FakeClock(1000.0))
        run_in_namespace(namespace, sender.run_once)
        stop_process(storescp)
        [item] = store.list_outbox()
        state = store.get_study(STUDY).state

    assert (item.state, item.attempts) == (JobState.PENDING, 1)
    assert item.next_attempt_at == 1000.0 + SEND.backoff_initial_s
    assert "TLS handshake failed" in item.last_error
    assert reason in item.last_error
    assert state is StudyState.SENDING
    assert [path for path in received.iterdir() if path.is_file()] == []
    failures = [entry for entry in logs if entry["event"] == "tls_handshake_failed"]
    assert [entry["peer_address"] for entry in failures] == ["127.0.0.1"]
    events = [entry["event"] for entry in logs]
    assert "send_retry" in events
