"""The storage SCP with DICOM TLS, against DCMTK's storescu and pynetdicom on 127.0.0.1.

storescu only connects, so it needs no network namespace. The certificates
are made by ``openssl`` for each test module (see tls_helpers).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pydicom
import pytest
import structlog
from ingest_helpers import (
    STORESCU,
    XRAY_SAMPLES,
    dataset_bytes,
    free_port,
    running_scp,
    storescu,
    write_settings,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tls_helpers import Credential, TestPKI, make_pki, renew_server_certificate

from hipfuse.config.settings import Settings
from hipfuse.node.tls import TLSFileError

pytestmark = pytest.mark.skipif(
    not Path(STORESCU).exists(), reason="DCMTK storescu (Debian package dcmtk) is not installed"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(
    tmp_path: Path,
    pki: TestPKI,
    tls_keys: str = "",
    acse_timeout_s: float = 5.0,
    callers: str = '{ ae_title = "STORESCU" }, { ae_title = "ECHOSCU" }',
) -> Settings:
    return write_settings(
        tmp_path / "node.toml",
        tmp_path / "data",
        free_port(),
        callers=callers,
        extra_node=(
            f"acse_timeout_s = {acse_timeout_s}\n"
            f"[node.tls]\nenabled = true\n"
            f'cert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\n'
            f'ca_file = "{pki.ca}"\n{tls_keys}'
        ),
    )


def tls_options(client: Credential | None, ca: Path) -> tuple[str, ...]:
    """storescu options: TLS with ``client``'s certificate, or anonymous TLS without one."""
    if client is None:
        return ("+tla", "+cf", str(ca))
    # DCMTK takes the key first, then the certificate; -pw: the key has no password.
    return ("+tls", str(client.key), str(client.cert), "-pw", "+cf", str(ca))


def handshake_failures(logs: list[dict]) -> list[str]:
    return [entry["reason"] for entry in logs if entry["event"] == "tls_handshake_failed"]


# --------------------------------------------------------------------------- #
# DCMTK storescu
# --------------------------------------------------------------------------- #


def test_storescu_tls_stores_radiograph(tmp_path: Path, pki: TestPKI) -> None:
    sample = XRAY_SAMPLES[0]
    with running_scp(tls_settings(tmp_path, pki)) as (server, jobstore):
        result = storescu(server.port, sample, options=tls_options(pki.client, pki.ca))
        sent = pydicom.dcmread(sample, stop_before_pixels=True)
        instances = jobstore.list_instances(sent.StudyInstanceUID)

    assert result.returncode == 0, result.stderr
    [instance] = instances
    assert instance.calling_ae_title == "STORESCU"
    assert dataset_bytes(instance.path) == dataset_bytes(sample)


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("none", "wrong version number"),
        ("anonymous", "peer did not return a certificate"),
        ("other_client", "certificate verify failed: unable to get local issuer certificate"),
        ("expired_client", "certificate verify failed: certificate has expired"),
    ],
    ids=["plain-tcp", "no-client-certificate", "certificate-of-other-ca", "expired-certificate"],
)
def test_storescu_rejected_stores_nothing(
    tmp_path: Path, pki: TestPKI, client: str, reason: str
) -> None:
    if client == "none":
        options: tuple[str, ...] = ()
    elif client == "anonymous":
        options = tls_options(None, pki.ca)
    else:
        options = tls_options(getattr(pki, client), pki.ca)

    with (
        structlog.testing.capture_logs() as logs,
        running_scp(tls_settings(tmp_path, pki)) as (server, jobstore),
    ):
        result = storescu(server.port, XRAY_SAMPLES[0], options=options)
        studies = jobstore.list_studies()

    assert result.returncode != 0
    assert "Association Request Failed" in result.stderr
    assert studies == []
    assert handshake_failures(logs) == [reason]
    failed = next(entry for entry in logs if entry["event"] == "tls_handshake_failed")
    assert failed["peer_address"] == "127.0.0.1"


def test_storescu_tls_unknown_ae_rejected(tmp_path: Path, pki: TestPKI) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(tls_settings(tmp_path, pki)) as (server, jobstore),
    ):
        result = storescu(
            server.port,
            XRAY_SAMPLES[0],
            calling="INTRUDER",
            options=tls_options(pki.client, pki.ca),
        )
        studies = jobstore.list_studies()

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert studies == []
    assert handshake_failures(logs) == []
    reasons = [entry.get("reason") for entry in logs if entry["event"] == "association_rejected"]
    assert reasons == ["calling_ae_title_not_recognised"]


@pytest.mark.parametrize(
    ("names", "stored"),
    [('["storescu"]', True), ('["PACS-A", "pacs-a.hospital.example"]', False)],
    ids=["common-name-matches", "other-names"],
)
def test_storescu_certificate_names(tmp_path: Path, pki: TestPKI, names: str, stored: bool) -> None:
    # The client certificate's subject is CN=STORESCU; names match case-insensitively.
    callers = f'{{ ae_title = "STORESCU", certificate_names = {names} }}'
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(tls_settings(tmp_path, pki, callers=callers)) as (server, jobstore),
    ):
        result = storescu(server.port, XRAY_SAMPLES[0], options=tls_options(pki.client, pki.ca))
        studies = jobstore.list_studies()

    reasons = [entry.get("reason") for entry in logs if entry["event"] == "association_rejected"]
    if stored:
        assert result.returncode == 0, result.stderr
        assert len(studies) == 1
        assert reasons == []
    else:
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr
        assert studies == []
        assert reasons == ["client_certificate_not_allowed"]
        rejected = next(entry for entry in logs if entry["event"] == "association_rejected")
        assert rejected["certificate_names"] == ["storescu"]


# --------------------------------------------------------------------------- #
# pynetdicom clients
# --------------------------------------------------------------------------- #


def client_context(
    pki: TestPKI, client: Credential | None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    if max_version is not None:
        context.maximum_version = max_version
    return context


def echo(port: int, context: ssl.SSLContext) -> bool:
    """Return whether a C-ECHO over TLS succeeds."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.connection_timeout = 10
    association = ae.associate(
        "127.0.0.1", port, ae_title="HIPFUSE", tls_args=(context, "127.0.0.1")
    )
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return int(status.get("Status", -1)) == 0


def test_pynetdicom_echo_over_tls(tmp_path: Path, pki: TestPKI) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(tls_settings(tmp_path, pki)) as (server, _),
    ):
        assert echo(server.port, client_context(pki, pki.client))

    [completed] = [entry for entry in logs if entry["event"] == "tls_handshake_completed"]
    assert completed["client_certificate_subject"] == "CN=STORESCU"
    assert completed["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_client_without_certificate_when_not_required(tmp_path: Path, pki: TestPKI) -> None:
    settings = tls_settings(tmp_path, pki, "require_client_certificate = false\n")
    with running_scp(settings) as (server, _):
        assert echo(server.port, client_context(pki, None))


def test_min_version_rejects_tls_1_2_client(tmp_path: Path, pki: TestPKI) -> None:
    settings = tls_settings(tmp_path, pki, 'min_version = "1.3"\n')
    old_client = client_context(pki, pki.client, max_version=ssl.TLSVersion.TLSv1_2)
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(settings) as (server, _),
    ):
        assert not echo(server.port, old_client)
        assert echo(server.port, client_context(pki, pki.client))

    assert handshake_failures(logs) == ["unsupported protocol"]


def test_silent_client_does_not_block_others(tmp_path: Path, pki: TestPKI) -> None:
    # acse_timeout_s limits the handshake too.
    settings = tls_settings(tmp_path, pki, acse_timeout_s=1.0)
    with (
        structlog.testing.capture_logs() as logs,
        running_scp(settings) as (server, _),
        socket.create_connection(("127.0.0.1", server.port)) as silent,
    ):
        assert echo(server.port, client_context(pki, pki.client))
        silent.settimeout(30)
        closed_by_node = silent.recv(1) == b""

    assert closed_by_node
    assert handshake_failures(logs) == ["timed out"]


def served_certificate(port: int, pki: TestPKI) -> bytes:
    """Return the DER certificate the SCP presents in a TLS handshake."""
    context = client_context(pki, pki.client)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        certificate = wrapped.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_reload_tls_serves_renewed_certificate(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Its own PKI, because the renewal overwrites the server's files.
    pki = make_pki(tmp_path_factory.mktemp("renewed-pki"))
    original = der(pki.server.cert)
    settings = tls_settings(tmp_path, pki)
    with running_scp(settings) as (server, _):
        assert served_certificate(server.port, pki) == original
        renewed = renew_server_certificate(pki, tmp_path / "renewal")
        assert served_certificate(server.port, pki) == original  # read at start only

        server.reload_tls(settings.node.tls)

        assert served_certificate(server.port, pki) == der(renewed.cert)
        assert der(renewed.cert) != original
        assert echo(server.port, client_context(pki, pki.client))


def test_reload_tls_bad_file_keeps_certificate(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pki = make_pki(tmp_path_factory.mktemp("broken-pki"))
    original = der(pki.server.cert)
    settings = tls_settings(tmp_path, pki)
    with running_scp(settings) as (server, _):
        pki.server.key.write_text("not a key\n")

        with pytest.raises(TLSFileError) as error:
            server.reload_tls(settings.node.tls)

        assert error.value.setting == "node.tls.key_file"
        assert served_certificate(server.port, pki) == original


def test_certificate_name_matches_ip_alternative_name(tmp_path: Path, pki: TestPKI) -> None:
    # The server certificate also serves as a client certificate: CN=hipfuse-node,
    # IP subject alternative name 127.0.0.1.
    callers = '{ ae_title = "ECHOSCU", certificate_names = ["127.0.0.1"] }'
    with running_scp(tls_settings(tmp_path, pki, callers=callers)) as (server, _):
        assert echo(server.port, client_context(pki, pki.server))
        assert not echo(server.port, client_context(pki, pki.client))


def test_failed_handshakes_counted_in_metrics(tmp_path: Path, pki: TestPKI) -> None:
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.metrics import NodeMetrics
    from hipfuse.node.scp import start_scp
    from hipfuse.node.spool import Spool

    settings = tls_settings(tmp_path, pki)
    metrics = NodeMetrics()

    def failed_count() -> float | None:
        return metrics.registry.get_sample_value(
            "hipfuse_tls_handshakes_failed_total",
            {"reason": "peer did not return a certificate"},
        )

    with JobStore.in_data_dir(settings.storage.data_dir) as jobstore:
        server = start_scp(settings, jobstore, Spool(settings.storage.data_dir), metrics=metrics)
        try:
            assert not echo(server.port, client_context(pki, None))
            # The client gives up at its own alert; the node counts its side just after.
            deadline = time.monotonic() + 10
            while failed_count() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            server.stop()

    assert failed_count() == 1.0
