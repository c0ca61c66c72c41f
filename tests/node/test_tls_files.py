"""TLS certificate, key and CA files: each problem named with its setting and file.

Covers the contexts' file checks, ``hipfuse-node check-config`` and the
service's refusal to start. The certificates are made by ``openssl`` (see
tls_helpers).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import pytest
import structlog
from tls_helpers import TestPKI, make_pki
from worker_helpers import node_settings

from hipfuse.config.settings import Destination, load_settings
from hipfuse.config.tls import NodeTLSSettings, TLSVersion
from hipfuse.node.cli import main
from hipfuse.node.service import NodeService, ServiceError, runtime_problems
from hipfuse.node.tls import ClientTLS, TLSFileError, build_server_context
from hipfuse.node.tls_files import load_ca_file

DAY_S = 86_400.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: TestPKI, **changes: object) -> NodeTLSSettings:
    values: dict[str, object] = {
        "enabled": True,
        "cert_file": pki.server.cert,
        "key_file": pki.server.key,
        "ca_file": pki.ca,
    }
    values.update(changes)
    return NodeTLSSettings(**values)


def broken_file(tmp_path: Path, pki: TestPKI, kind: str) -> Path:
    """Write a file that is wrong in the way ``kind`` names."""
    path = tmp_path / f"{kind}.pem"
    if kind == "folder":
        path.mkdir()
    elif kind == "junk":
        path.write_text("not a PEM file\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "encrypted-key":
        subprocess.run(
            [
                "openssl",
                "pkey",
                "-in",
                pki.server.key,
                "-aes256",
                "-passout",
                "pass:secret",
                "-out",
                path,
            ],
            check=True,
        )
    return path


@pytest.mark.parametrize(
    ("setting", "kind", "message"),
    [
        ("cert_file", "missing", "not found; check the path"),
        ("key_file", "missing", "not found; check the path"),
        ("ca_file", "missing", "not found; check the path"),
        ("key_file", "folder", "is a folder; name the PEM file"),
        ("cert_file", "junk", "contains no PEM certificate"),
        ("key_file", "junk", "contains no PEM private key"),
        ("ca_file", "empty", "contains no PEM certificate"),
        ("key_file", "encrypted-key", "the private key is encrypted with a password"),
    ],
    ids=[
        "cert-missing",
        "key-missing",
        "ca-missing",
        "key-is-folder",
        "cert-not-pem",
        "key-not-pem",
        "ca-empty",
        "key-encrypted",
    ],
)
def test_server_context_file_problem(
    tmp_path: Path, pki: TestPKI, setting: str, kind: str, message: str
) -> None:
    path = broken_file(tmp_path, pki, kind)

    with pytest.raises(TLSFileError) as caught:
        build_server_context(server_tls(pki, **{setting: path}))

    assert caught.value.setting == f"node.tls.{setting}"
    assert caught.value.path == path
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"node.tls.{setting} {path}: ")


def test_server_key_of_other_certificate(pki: TestPKI) -> None:
    with pytest.raises(TLSFileError, match="does not match the certificate") as caught:
        build_server_context(server_tls(pki, key_file=pki.client.key))

    assert caught.value.setting == "node.tls.key_file"
    assert str(pki.server.cert) in caught.value.reason


def test_server_certificate_expired(pki: TestPKI) -> None:
    tls = server_tls(pki, cert_file=pki.expired_client.cert, key_file=pki.expired_client.key)

    with pytest.raises(TLSFileError, match="the certificate expired on") as caught:
        build_server_context(tls)

    assert caught.value.setting == "node.tls.cert_file"


def test_server_certificate_not_valid_yet(pki: TestPKI) -> None:
    with pytest.raises(TLSFileError, match="is not valid before"):
        build_server_context(server_tls(pki), now=time.time() - 2 * DAY_S)


def test_every_ca_expired(pki: TestPKI) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    next_year = time.time() + 400 * DAY_S

    with pytest.raises(TLSFileError, match="every CA certificate in it has expired"):
        load_ca_file(context, "node.tls.ca_file", pki.ca, next_year)


def test_certificate_expiring_soon_warned(pki: TestPKI) -> None:
    # The test certificates are valid for 365 days.
    in_360_days = time.time() + 360 * DAY_S
    with structlog.testing.capture_logs() as logs:
        build_server_context(server_tls(pki), now=in_360_days)

    [warning] = [entry for entry in logs if entry["event"] == "tls_certificate_expires_soon"]
    assert warning["setting"] == "node.tls.cert_file"
    assert warning["path"] == str(pki.server.cert)
    assert 4 <= warning["days_left"] <= 6


@pytest.mark.parametrize(
    ("require", "ca", "mode"),
    [
        (True, True, ssl.CERT_REQUIRED),
        (False, True, ssl.CERT_OPTIONAL),
        (False, False, ssl.CERT_NONE),
    ],
    ids=["mutual", "optional-client-certificate", "no-client-ca"],
)
def test_server_context_settings(pki: TestPKI, require: bool, ca: bool, mode) -> None:
    tls = server_tls(
        pki,
        require_client_certificate=require,
        ca_file=pki.ca if ca else None,
        min_version=TLSVersion.TLS_1_3,
    )

    context = build_server_context(tls)

    assert context.verify_mode == mode
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_client_context_verifies_host(pki: TestPKI) -> None:
    destination = Destination(
        name="pacs",
        ae_title="PACS",
        host="127.0.0.1",
        port=2762,
        tls=True,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.client.cert,
        tls_key_file=pki.client.key,
    )

    context = ClientTLS.from_destination(destination).build_context()

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.hostname_checks_common_name is False
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_problem_names_destination(tmp_path: Path, pki: TestPKI) -> None:
    destination = Destination(
        name="pacs",
        ae_title="PACS",
        host="127.0.0.1",
        port=2762,
        tls=True,
        tls_ca_file=tmp_path / "absent.pem",
    )

    with pytest.raises(TLSFileError) as caught:
        ClientTLS.from_destination(destination).build_context()

    assert caught.value.setting == "destinations[name='pacs'].tls_ca_file"


# --------------------------------------------------------------------------- #
# check-config and the service's start
# --------------------------------------------------------------------------- #


def tls_config(tmp_path: Path, pki: TestPKI, *, node_key: Path, destination_ca: Path) -> Path:
    extra = textwrap.dedent(
        f"""
        [node.tls]
        enabled = true
        cert_file = "{pki.server.cert}"
        key_file = "{node_key}"
        ca_file = "{pki.ca}"
        """
    )
    config, _ = node_settings(tmp_path)
    text = config.read_text().replace(
        "port = 11113\n",
        f'port = 11113\ntls = true\ntls_ca_file = "{destination_ca}"\n'
        f'tls_cert_file = "{pki.client.cert}"\ntls_key_file = "{pki.client.key}"\n',
    )
    # [node.tls] must follow the [node] keys and come before the next table.
    text = text.replace("\n[[destinations]]", extra + "\n[[destinations]]", 1)
    # check-config wants the bundle folder to exist; its files are not read.
    text += f'\n[model]\nbundle_dir = "{tmp_path}"\n'
    config.write_text(text)
    return config


def test_check_config_accepts_tls(tmp_path: Path, pki: TestPKI, capsys) -> None:
    config = tls_config(tmp_path, pki, node_key=pki.server.key, destination_ca=pki.ca)

    assert main(["check-config", str(config)]) == 0
    assert "valid; node HIPFUSE on 127.0.0.1:11112 with DICOM TLS" in capsys.readouterr().out


def test_check_config_lists_every_tls_problem(tmp_path: Path, pki: TestPKI, capsys) -> None:
    config = tls_config(
        tmp_path, pki, node_key=pki.client.key, destination_ca=tmp_path / "absent.pem"
    )

    assert main(["check-config", str(config)]) == 2

    errors = capsys.readouterr().err
    assert f"settings in {config} that cannot be used on this host:" in errors
    assert f"  node.tls.key_file: {pki.client.key}: the private key does not match" in errors
    assert f"  destinations[0].tls_ca_file: {tmp_path / 'absent.pem'}: not found" in errors


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run check-config as another user")
def test_check_config_unreadable_key() -> None:
    # pytest's tmp_path is private to root, so the files go to a folder others can enter.
    shared = Path(tempfile.mkdtemp(prefix="hipfuse-tls-"))
    try:
        shared.chmod(0o755)
        readable = make_pki(shared / "tls")
        for path in (shared / "tls").iterdir():
            path.chmod(0o644)
        readable.server.key.chmod(0o600)
        config = tls_config(
            shared, readable, node_key=readable.server.key, destination_ca=readable.ca
        )
        config.chmod(0o644)
        status, errors = check_config_as_nobody(config)
    finally:
        shutil.rmtree(shared)

    assert status == 2, errors
    assert (
        f"node.tls.key_file: {readable.server.key}: cannot be read by user nobody "
        "(permission denied)" in errors
    )


def check_config_as_nobody(config: Path) -> tuple[int, str]:
    """Run check-config in a forked child that switched to user nobody; return status and stderr.

    The child runs the code this process already imported, so it works where
    nobody cannot read the checkout (a clone in a private temporary folder).
    """
    import pwd

    # Once as root first, so that every module check-config imports on the
    # way (its own and the standard library's) is loaded before the switch.
    assert main(["check-config", str(config)]) == 0
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            status = main(["check-config", str(config)])
        except BaseException:  # reported to the parent through the pipe
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as pipe:
        errors = pipe.read()
    _, wait_status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(wait_status), errors


def test_runtime_problems_empty_without_tls(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path)

    assert runtime_problems(settings) == []


def test_start_refuses_unusable_tls_file(tmp_path: Path, pki: TestPKI) -> None:
    config = tls_config(
        tmp_path, pki, node_key=pki.server.key, destination_ca=tmp_path / "absent.pem"
    )

    # The files are checked before the bundle is loaded, so any folder will do.
    with pytest.raises(ServiceError, match=r"destinations\[0\]\.tls_ca_file: .*not found"):
        NodeService(load_settings(config), bundle_dir=tmp_path).start()
