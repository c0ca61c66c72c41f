"""The admin HTTP endpoint of a running node: /metrics after a study, /healthz, requests.

Each test runs a real NodeService with the untrained test bundle (see
worker_helpers), its HTTP endpoint on 127.0.0.1 port 0, and a pynetdicom
storage and verification SCP as the destination.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from ingest_helpers import free_port
from peers import wait_for
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from worker_helpers import node_settings, sample_study, untrained_bundle_dir

from hipfuse.config.settings import load_settings
from hipfuse.node.service import NodeService, ServiceError
from hipfuse.node.states import StudyState

# Short enough that a stopped destination fails its check within seconds.
FAST_ECHO = "port = 0\necho_interval_s = 0.2\necho_max_age_s = 1.0"


class DestinationScp:
    """A pynetdicom SCP that accepts C-ECHO and stores nothing but counts C-STORE requests."""

    def __init__(self) -> None:
        self.stored = 0
        self.ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self.server.server_address[1])
        self.running = True

    def _store(self, event: Any) -> int:
        self.stored += 1
        return 0x0000

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.running = False


@pytest.fixture
def destination() -> Iterator[DestinationScp]:
    scp = DestinationScp()
    yield scp
    scp.stop()


@contextlib.contextmanager
def running_node(settings: Any) -> Iterator[NodeService]:
    service = NodeService(settings, bundle_dir=untrained_bundle_dir(), poll_interval_s=0.05)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def request(port: int, method: str, path: str, **headers: str) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = request(port, "GET", "/healthz")
    return status, json.loads(body)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of /metrics by (name, sorted labels)."""
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, sample_name: str, **labels: str) -> float | None:
    return samples.get((sample_name, tuple(sorted(labels.items()))))


def send_study(port: int, files: list[Path], calling: str = "STORESCU") -> list[int]:
    """Send files over one association with pynetdicom; return the C-STORE statuses."""
    ae = AE(ae_title=calling)
    for path in files[:1] + files[-1:]:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="HIPFUSE")
    assert association.is_established
    try:
        return [int(association.send_c_store(path).Status) for path in files]
    finally:
        association.release()


def test_metrics_count_one_study(tmp_path: Path, destination: DestinationScp) -> None:
    study = sample_study()
    files = sorted(study.files, key=lambda path: path != study.radiograph)
    assert files[0] == study.radiograph  # the one JPEG 2000 radiograph, then the CT slices
    _, settings = node_settings(
        tmp_path,
        port=free_port(),
        destinations=(("pacs", "PACS", destination.port),),
        quiet_period_s=0.5,
    )

    with running_node(settings) as service:
        unlisted = AE(ae_title="UNLISTED")
        unlisted.add_requested_context(Verification)
        assert unlisted.associate("127.0.0.1", service.port, ae_title="HIPFUSE").is_rejected
        statuses = send_study(service.port, files)
        wait_for(
            lambda: service.jobstore.get_study(study.study_instance_uid).state is StudyState.DONE,
            180,
            "the study to be analysed and sent",
        )
        results = len(service.jobstore.list_outbox(study_uid=study.study_instance_uid))
        samples = scrape(service.http_port)

    assert statuses == [0] * len(files)
    assert value(samples, "hipfuse_instances_received_total") == len(files)
    assert value(samples, "hipfuse_studies_completed_total", outcome="analysed") == 1
    assert value(samples, "hipfuse_studies_completed_total", outcome="skipped") == 0
    assert value(samples, "hipfuse_studies_completed_total", outcome="failed") == 0
    assert value(samples, "hipfuse_analysis_duration_seconds_count") == 1
    assert value(samples, "hipfuse_analysis_duration_seconds_sum") > 0
    rejected = "hipfuse_associations_rejected_total"
    assert value(samples, rejected, reason="calling_ae_title_not_recognised") == 1
    assert value(samples, rejected, reason="peer_address_not_allowed") == 0
    assert value(samples, "hipfuse_studies", state="done") == 1
    assert value(samples, "hipfuse_studies", state="receiving") == 0
    assert results == destination.stored
    assert value(samples, "hipfuse_outbox_items", destination="pacs", state="succeeded") == results
    assert value(samples, "hipfuse_outbox_items", destination="pacs", state="failed") == 0
    assert value(samples, "hipfuse_send_failures_total", destination="pacs") == 0
    assert value(samples, "hipfuse_send_retries_total", destination="pacs") == 0
    bundle = {"name": "hipfuse-test-untrained", "version": "0.0.1", "intended_use": "demo"}
    assert value(samples, "hipfuse_model_bundle_info", **bundle) == 1


def test_healthz_fails_when_destination_stops(tmp_path: Path, destination: DestinationScp) -> None:
    _, settings = node_settings(
        tmp_path,
        port=free_port(),
        destinations=(("pacs", "PACS", destination.port),),
        http=FAST_ECHO,
    )

    with running_node(settings) as service:
        # The first round of echoes runs right after the start.
        healthy = wait_for(
            lambda: (reply := healthz(service.http_port))[0] == 200 and reply,
            30,
            "/healthz to return 200",
        )
        destination.stop()
        unhealthy = wait_for(
            lambda: (reply := healthz(service.http_port))[0] == 503 and reply,
            30,
            "/healthz to return 503",
        )

    body = healthy[1]
    assert body["status"] == "pass"
    assert body["failing"] == []
    checks = {check["check"]: check for check in body["checks"]}
    assert list(checks) == [
        "scp_listening",
        "job_store_writable",
        "disk_space",
        "model_bundle",
        "destination_echo",
    ]
    assert all(check["ok"] for check in body["checks"])
    assert checks["model_bundle"]["name"] == "hipfuse-test-untrained"
    assert checks["model_bundle"]["version"] == "0.0.1"
    assert checks["destination_echo"]["destination"] == "pacs"
    body = unhealthy[1]
    assert body["status"] == "fail"
    assert body["failing"] == ["destination_echo:pacs"]
    assert "could not be reached" in body["checks"][-1]["message"]


def test_healthz_fails_on_low_disk_space(tmp_path: Path) -> None:
    config, _ = node_settings(tmp_path, port=free_port(), destinations=())
    config.write_text(
        config.read_text().replace("min_free_bytes = 1\n", f"min_free_bytes = {2**62}\n")
    )

    with running_node(load_settings(config)) as service:
        status, body = healthz(service.http_port)

    assert status == 503
    assert body["failing"] == ["disk_space"]
    assert "storage.min_free_bytes" in body["checks"][2]["message"]


def test_start_refuses_busy_http_port(tmp_path: Path) -> None:
    node_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http_port = busy.getsockname()[1]
        _, settings = node_settings(
            tmp_path, port=node_port, destinations=(), http=f"port = {http_port}"
        )
        service = NodeService(settings, bundle_dir=untrained_bundle_dir())

        with pytest.raises(ServiceError, match=r"choose a free \[http\] port"):
            service.start()

    assert service.scp is None
    assert service.jobstore is None
    # The SCP that started before the HTTP endpoint failed has released its port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", node_port))


def test_http_disabled_starts_no_endpoint(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path, port=free_port(), destinations=(), http="enabled = false")

    with running_node(settings) as service:
        assert service.http is None
        assert service.metrics is None
        with pytest.raises(RuntimeError, match="HTTP endpoint is not running"):
            _ = service.http_port


@pytest.fixture(scope="module")
def http_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp_path = tmp_path_factory.mktemp("node")
    _, settings = node_settings(tmp_path, port=free_port(), destinations=())
    with running_node(settings) as service:
        yield service.http_port


# (method, path, request headers, status, content type prefix, body expected)
REQUEST_CASES = [
    ("GET", "/metrics", {}, 200, "text/plain; version=0.0.4", True),
    ("GET", "/metrics?name[]=x", {}, 200, "text/plain; version=0.0.4", True),
    (
        "GET",
        "/metrics",
        {"Accept": "application/openmetrics-text; version=1.0.0"},
        200,
        "application/openmetrics-text",
        True,
    ),
    ("HEAD", "/metrics", {}, 200, "text/plain; version=0.0.4", False),
    ("GET", "/healthz", {}, 200, "application/json", True),
    ("HEAD", "/healthz", {}, 200, "application/json", False),
    ("GET", "/", {}, 404, "text/plain", True),
    ("GET", "/metrics/extra", {}, 404, "text/plain", True),
    ("POST", "/metrics", {}, 405, "text/plain", True),
    ("DELETE", "/healthz", {}, 405, "text/plain", True),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "content_type", "has_body"),
    REQUEST_CASES,
    ids=[
        "metrics",
        "metrics-query",
        "metrics-openmetrics",
        "metrics-head",
        "healthz",
        "healthz-head",
        "root",
        "unknown-path",
        "post",
        "delete",
    ],
)
def test_http_request(
    http_port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    content_type: str,
    has_body: bool,
) -> None:
    got_status, got_headers, body = request(http_port, method, path, **headers)

    assert got_status == status
    assert got_headers["Content-Type"].startswith(content_type)
    assert int(got_headers["Content-Length"]) > 0
    assert (len(body) > 0) is has_body
    if status == 405:
        assert got_headers["Allow"] == "GET, HEAD"
    assert "Python" not in got_headers["Server"]
