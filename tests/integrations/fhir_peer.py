"""Start the FHIR R4 test server (Medplum's engine in Node) on loopback and load resources."""

from __future__ import annotations

import base64
import json
import select
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVER_DIR = Path(__file__).with_name("fhir_server")
START_TIMEOUT_S = 60.0


@dataclass
class FHIRTestServer:
    """A running server; ``base_url`` ends in ``/fhir/R4``."""

    process: subprocess.Popen[bytes]
    port: int
    token: str
    scheme: str = "http"
    ca_file: Path | None = None

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir/R4"

    def _client(self) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        return httpx.Client(timeout=30.0, verify=verify)

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """POST a resource; return it as stored (with its id)."""
        with self._client() as client:
            response = client.post(
                f"{self.base_url}/{resource['resourceType']}",
                content=json.dumps(resource).encode("utf-8"),
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Accept": "application/fhir+json",
                    "Content-Type": "application/fhir+json",
                },
            )
        assert response.status_code == 201, response.text
        return response.json()

    def set_faults(self, status: int, count: int, retry_after: str | None = None) -> None:
        """Make the server return ``status`` for the next ``count`` FHIR requests."""
        body: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            body["retryAfter"] = retry_after
        with self._client() as client:
            client.post(f"{self.origin}/_test/faults", json=body).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Every FHIR request the server saw since the last reset."""
        with self._client() as client:
            return client.get(f"{self.origin}/_test/requests").json()

    def reset(self) -> None:
        with self._client() as client:
            client.post(f"{self.origin}/_test/reset").raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_fhir_server(
    token: str, *, tls_cert: Path | None = None, tls_key: Path | None = None
) -> FHIRTestServer:
    """Start the server on a free loopback port; skip when Node is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the FHIR test server runs on Node 20 or later")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail(
            f"{SERVER_DIR / 'node_modules'} is missing; run scripts/install --test "
            "(npm ci --prefix tests/integrations/fhir_server)"
        )
    command = [node, "--experimental-websocket", "server.mjs", "--port", "0", "--token", token]
    if tls_cert is not None and tls_key is not None:
        command += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    process = subprocess.Popen(
        command, cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
    line = process.stdout.readline() if ready else b""
    if not line:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"the FHIR test server did not start within {START_TIMEOUT_S} s")
    port = int(json.loads(line)["port"])
    scheme = "https" if tls_cert is not None else "http"
    return FHIRTestServer(process, port, token, scheme, tls_cert)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """Create a certificate for 127.0.0.1 that is its own CA, with ``openssl``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
