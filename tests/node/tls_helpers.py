"""Certificates for the DICOM TLS tests, made with the ``openssl`` command line, and an outbox.

:func:`make_pki` writes two independent CAs into a folder and the
certificates the tests present. The first CA signs a server certificate for
127.0.0.1 (IP Subject Alternative Name only), a client certificate and an
expired client certificate. The other CA signs a client certificate. Keys
are unencrypted RSA 2048 PEM files, as DCMTK and the node read them.
:func:`queue_results` puts small results into an outbox.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from ingest_helpers import ct_dataset, instance_record

from hipfuse.node.jobstore import JobStore
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.states import StudyState

OPENSSL = shutil.which("openssl")
# Study of the results that queue_results puts in the outbox.
STUDY = "1.2.3"

_EXTENSIONS = """
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
# The node presents its server certificate as a client too, when it sends.
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    """The files :func:`make_pki` writes."""

    __test__ = False  # not a test class, despite its name

    ca: Path
    server: Credential
    client: Credential
    expired_client: Credential
    other_ca: Path
    other_client: Credential


def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None
    result = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def _new_key_and_request(folder: Path, name: str, common_name: str) -> tuple[Path, Path]:
    key, request = folder / f"{name}.key", folder / f"{name}.csr"
    _openssl(*"req -new -newkey rsa:2048 -nodes".split(), "-keyout", key, "-out", request,
             "-subj", f"/CN={common_name}")  # fmt: skip
    return key, request


def _make_ca(folder: Path, name: str, extensions: Path) -> Credential:
    key, request = _new_key_and_request(folder, name, f"hipfuse test {name}")
    cert = folder / f"{name}.pem"
    _openssl("x509", "-req", "-in", request, "-signkey", key, "-days", "365", "-out", cert,
             "-extfile", extensions, "-extensions", "ca")  # fmt: skip
    return Credential(cert, key)


def _make_leaf(
    folder: Path,
    name: str,
    common_name: str,
    ca: Credential,
    section: str,
    extensions: Path,
    *,
    days: int = 365,
) -> Credential:
    key, request = _new_key_and_request(folder, name, common_name)
    cert = folder / f"{name}.pem"
    # A negative -days gives a certificate whose notAfter is before now: expired.
    _openssl("x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key,
             "-CAcreateserial", "-days", str(days), "-out", cert,
             "-extfile", extensions, "-extensions", section)  # fmt: skip
    return Credential(cert, key)


def make_pki(folder: Path) -> TestPKI:
    """Write the test CAs, certificates and keys into ``folder``; skip without openssl."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    extensions = folder / "extensions.cnf"
    extensions.write_text(textwrap.dedent(_EXTENSIONS))
    ca = _make_ca(folder, "ca", extensions)
    other_ca = _make_ca(folder, "other-ca", extensions)
    return TestPKI(
        ca=ca.cert,
        server=_make_leaf(folder, "server", "hipfuse-node", ca, "server", extensions),
        client=_make_leaf(folder, "client", "STORESCU", ca, "client", extensions),
        expired_client=_make_leaf(
            folder, "expired-client", "STORESCU", ca, "client", extensions, days=-1
        ),
        other_ca=other_ca.cert,
        other_client=_make_leaf(folder, "other-client", "STORESCU", other_ca, "client", extensions),
    )


def renew_server_certificate(pki: TestPKI, folder: Path) -> Credential:
    """Sign a new server certificate with the test CA and write it over the old files.

    Returns the new certificate and key, written to ``folder`` first and then
    copied over ``pki.server``, as a certificate renewal does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pki_dir = pki.ca.parent
    ca = Credential(pki.ca, pki_dir / "ca.key")
    renewed = _make_leaf(folder, "server", "hipfuse-node", ca, "server", pki_dir / "extensions.cnf")
    shutil.copyfile(renewed.key, pki.server.key)
    shutil.copyfile(renewed.cert, pki.server.cert)
    return renewed


def queue_results(store: JobStore, folder: Path, count: int) -> list[Path]:
    """Put STUDY through analysis with ``count`` small CT results queued for "pacs"."""
    fingerprint = "f" * 64
    store.record_instance(instance_record("1.2.3.1.1", study=STUDY))
    # JobStore.finish_assembly sets the input fingerprint; the assembler is skipped here.
    store._db.execute(
        "UPDATE studies SET input_fingerprint = ? WHERE study_instance_uid = ?",
        (fingerprint, STUDY),
    )
    store.transition(STUDY, StudyState.COMPLETE)
    store.transition(STUDY, StudyState.ANALYSING)
    written = OutboxFolder(folder).write(
        STUDY, [ct_dataset(STUDY, "1.2.3.9", index) for index in range(count)]
    )
    store.record_results(STUDY, fingerprint=fingerprint, objects=written, destinations=["pacs"])
    return [item.path for item in written]
