"""Sending over DICOM TLS to the node's own TLS SCP on 127.0.0.1: success, failures, retries.

The receiving SCP is the node's storage SCP with ``[node.tls]``, so the
tests need no network namespace. The certificates are made by ``openssl``
(see tls_helpers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from ingest_helpers import ct_dataset, free_port, running_scp, write_settings
from tls_helpers import STUDY, TestPKI, make_pki, queue_results
from worker_helpers import FakeClock

from hipfuse.config.settings import Destination, NodeSettings, SendSettings, Settings
from hipfuse.node.jobstore import JobStore
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.scu import AssociationError, FileToStore, main, store_files
from hipfuse.node.sender import DestinationSender, peer_for
from hipfuse.node.states import JobState

SEND = SendSettings(max_attempts=3, backoff_initial_s=10.0, backoff_max_s=25.0)
# The sending node's AE title is the calling AE title the receiving SCP checks.
NODE = NodeSettings(ae_title="SENDER", acse_timeout_s=5.0, dimse_timeout_s=10.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def receiver_settings(tmp_path: Path, pki: TestPKI) -> Settings:
    return write_settings(
        tmp_path / "receiver.toml",
        tmp_path / "receiver",
        free_port(),
        callers='{ ae_title = "SENDER", addresses = ["127.0.0.1"] }',
        extra_node=(
            f'[node.tls]\nenabled = true\ncert_file = "{pki.server.cert}"\n'
            f'key_file = "{pki.server.key}"\nca_file = "{pki.ca}"\n'
        ),
    )


def destination(port: int, pki: TestPKI, **changes: object) -> Destination:
    values: dict[str, object] = {
        "name": "pacs",
        "ae_title": "HIPFUSE",
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "tls_ca_file": pki.ca,
        "tls_cert_file": pki.client.cert,
        "tls_key_file": pki.client.key,
    }
    values.update(changes)
    return Destination(**values)


def result_files(tmp_path: Path, count: int) -> list[FileToStore]:
    written = OutboxFolder(tmp_path / "outbox").write(
        STUDY, [ct_dataset(STUDY, "1.2.3.9", index) for index in range(count)]
    )
    return [FileToStore.from_path(item.path) for item in written]


def test_store_files_over_tls(tmp_path: Path, pki: TestPKI, receiver_settings) -> None:
    files = result_files(tmp_path, 2)
    with running_scp(receiver_settings) as (server, jobstore):
        peer = peer_for(destination(server.port, pki), NODE)
        outcomes = store_files(peer, files)
        instances = jobstore.list_instances(STUDY)

    assert [outcome.stored for outcome in outcomes] == [True, True]
    assert len(instances) == 2
    assert {instance.calling_ae_title for instance in instances} == {"SENDER"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            # The SCP sends its CA certificate along with its own.
            lambda pki: {"tls_ca_file": pki.other_ca},
            "TLS handshake failed: certificate verify failed: self-signed certificate in "
            "certificate chain",
        ),
        (
            lambda pki: {"host": "localhost"},
            "TLS handshake failed: certificate verify failed: Hostname mismatch, certificate "
            "is not valid for 'localhost'.",
        ),
        (
            lambda pki: {
                "tls_cert_file": pki.other_client.cert,
                "tls_key_file": pki.other_client.key,
            },
            "TLS handshake failed: tlsv1 alert unknown ca",
        ),
        (
            lambda pki: {"tls_cert_file": None, "tls_key_file": None},
            "TLS handshake failed: tlsv13 alert certificate required",
        ),
    ],
    ids=["wrong-ca", "host-name-not-in-certificate", "client-of-other-ca", "no-client-certificate"],
)
def test_store_files_handshake_failure(
    tmp_path: Path, pki: TestPKI, receiver_settings, changes, reason: str
) -> None:
    files = result_files(tmp_path, 1)
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(receiver_settings) as (server, jobstore),
    ):
        peer = peer_for(destination(server.port, pki, **changes(pki)), NODE)
        with pytest.raises(AssociationError) as caught:
            store_files(peer, files)
        studies = jobstore.list_studies()

    assert str(caught.value) == f"HIPFUSE@{peer.host}:{server.port} {reason}"
    assert studies == []
    # The receiving SCP runs in this process and logs its side without a called AE title.
    [failed] = [
        entry
        for entry in logs
        if entry["event"] == "tls_handshake_failed" and "called_ae_title" in entry
    ]
    assert failed["peer_address"] == peer.host
    assert failed["peer_port"] == server.port
    assert reason.endswith(failed["reason"])


def test_store_files_missing_ca_file(tmp_path: Path, pki: TestPKI) -> None:
    absent = tmp_path / "absent.pem"
    peer = peer_for(destination(free_port(), pki, tls_ca_file=absent), NODE)

    with pytest.raises(AssociationError) as caught:
        store_files(peer, result_files(tmp_path, 1))

    assert f"destinations[name='pacs'].tls_ca_file {absent}: not found" in str(caught.value)


# --------------------------------------------------------------------------- #
# DestinationSender: a handshake failure is retried with back-off
# --------------------------------------------------------------------------- #


def test_sender_retries_after_handshake_failure(
    tmp_path: Path, pki: TestPKI, receiver_settings
) -> None:
    clock = FakeClock(1000.0)
    with (
        JobStore(tmp_path / "jobs.sqlite3", clock=clock) as store,
        running_scp(receiver_settings) as (server, receiving_store),
    ):
        queue_results(store, tmp_path / "outbox", count=2)
        wrong_ca = destination(server.port, pki, tls_ca_file=pki.other_ca)
        DestinationSender(wrong_ca, store, SEND, NODE, clock=clock).run_once()
        first = store.list_outbox()

        clock.advance(SEND.backoff_initial_s)
        right_ca = destination(server.port, pki)
        DestinationSender(right_ca, store, SEND, NODE, clock=clock).run_once()
        second = store.list_outbox()
        received = receiving_store.list_instances(STUDY)

    assert [(item.state, item.attempts) for item in first] == [(JobState.PENDING, 1)] * 2
    assert first[0].next_attempt_at == 1000.0 + SEND.backoff_initial_s
    assert "TLS handshake failed: certificate verify failed" in first[0].last_error
    assert [item.state for item in second] == [JobState.SUCCEEDED] * 2
    assert len(received) == 2


def test_scu_command_over_tls(tmp_path: Path, pki: TestPKI, receiver_settings, capsys) -> None:
    [file] = result_files(tmp_path, 1)
    with running_scp(receiver_settings) as (server, jobstore):
        tls = ["--tls-ca-file", str(pki.ca), "--tls-cert-file", str(pki.client.cert)]
        tls += ["--tls-key-file", str(pki.client.key)]
        address = ["127.0.0.1", str(server.port)]
        status = main(["--aet", "SENDER", "--aec", "HIPFUSE", *address, str(file.path), *tls])
        instances = jobstore.list_instances(STUDY)

    assert status == 0, capsys.readouterr().err
    assert f"stored {file.path} (status 0x0000)" in capsys.readouterr().out
    assert len(instances) == 1
