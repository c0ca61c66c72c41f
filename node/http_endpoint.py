"""Admin HTTP endpoint of the node: ``GET /healthz`` and ``GET /metrics``.

``/healthz`` returns 200 when every check of :class:`~hipfuse.node.health.HealthChecker`
passes and 503 otherwise, both with a JSON body that lists each check.
``/metrics`` returns the node's Prometheus registry in the text format (or
OpenMetrics when the scraper requests it). Other paths get 404, and methods
other than GET and HEAD get 405. The server is the standard library's
:class:`~http.server.ThreadingHTTPServer` in its own thread. It has no
authentication or TLS, so ``[http] bind_address`` stays on loopback or a
management network.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from prometheus_client.exposition import choose_encoder

from hipfuse.config.settings import Settings
from hipfuse.node.health import EchoMonitor, HealthChecker
from hipfuse.node.metrics import NodeMetrics
from hipfuse.node.sender import peer_for

if TYPE_CHECKING:
    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.scp import ScpServer

log = structlog.get_logger(__name__)

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
_ALLOWED_METHODS = "GET, HEAD"
# Seconds a client may take to send its request before the connection is closed.
REQUEST_TIMEOUT_S = 10.0
# Seconds :meth:`AdminEndpoint.stop` waits for an echo in progress.
ECHO_STOP_TIMEOUT_S = 5.0


class AdminRequestHandler(BaseHTTPRequestHandler):
    """Serves one request of the admin endpoint."""

    server: AdminHTTPServer
    server_version = "hipfuse-node"
    # Left empty so the Server header does not advertise the Python version.
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        """Serve ``/healthz`` or ``/metrics``."""
        self._serve(include_body=True)

    def do_HEAD(self) -> None:
        """Serve the headers of ``/healthz`` or ``/metrics``."""
        self._serve(include_body=False)

    def _method_not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD are allowed\n", True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815

    def _serve(self, *, include_body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path == HEALTH_PATH:
                report = self.server.health.check()
                status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
                body = json.dumps(report.to_json(), indent=2).encode() + b"\n"
                self._send(status, body, include_body, "application/json")
            elif path == METRICS_PATH:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(self.server.metrics.registry)
                self._send(HTTPStatus.OK, body, include_body, content_type)
            else:
                message = f"no such path; use {HEALTH_PATH} or {METRICS_PATH}\n"
                self._send(HTTPStatus.NOT_FOUND, message.encode(), include_body)
        except Exception:  # a bug in a check or collector: return 500 and keep serving
            log.exception("http_request_failed", path=path)
            body = b"internal error; see the node's log\n"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, body, include_body)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        include_body: bool,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status is HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", _ALLOWED_METHODS)
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log the request at DEBUG: scrapers request every few seconds."""
        log.debug(
            "http_request",
            method=self.command,
            path=urlsplit(self.path).path,
            status=int(code) if str(code).isdigit() else code,
            client_address=self.client_address[0],
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Log protocol errors (malformed requests, timeouts) as structured lines."""
        message = format % args
        log.info("http_protocol_error", client_address=self.client_address[0], message=message)


class AdminHTTPServer(ThreadingHTTPServer):
    """The HTTP server, holding the health checker and metrics its handlers read."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], health: HealthChecker, metrics: NodeMetrics
    ) -> None:
        if ipaddress.ip_address(address[0]).version == 6:
            self.address_family = socket.AF_INET6
        self.health = health
        self.metrics = metrics
        super().__init__(address, AdminRequestHandler)


class AdminEndpoint:
    """The HTTP server and the C-ECHO monitor, each in its own thread.

    Parameters
    ----------
    settings
        Node settings (``[http]`` is read).
    health, metrics
        What ``/healthz`` and ``/metrics`` serve.
    echoes
        The monitor the destination checks read.
    """

    def __init__(
        self,
        settings: Settings,
        health: HealthChecker,
        metrics: NodeMetrics,
        echoes: EchoMonitor,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.echoes = echoes
        self._server: AdminHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """TCP port the endpoint listens on (useful when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the HTTP endpoint is not running; call start() first")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind the port and start serving; raise OSError when the port cannot be bound."""
        http = self.settings.http
        self._server = AdminHTTPServer((http.bind_address, http.port), self.health, self.metrics)
        self._spawn("http", self._server.serve_forever)
        if self.echoes.peers:
            self._spawn("echo", self.echoes.run, self._stop)
        log.info(
            "http_endpoint_started",
            bind_address=http.bind_address,
            port=self.port,
            echo_interval_s=http.echo_interval_s,
            destinations=list(self.echoes.peers),
        )

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"hipfuse-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop serving and close the port; an echo in progress gets a few seconds to end."""
        self._stop.set()
        if self._server is not None:
            port = self.port
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            log.info("http_endpoint_stopped", port=port)
        deadline = time.monotonic() + ECHO_STOP_TIMEOUT_S
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                # A daemon thread: it cannot keep the process alive.
                log.warning("http_thread_stop_timed_out", thread=thread.name)
        self._threads = []


def start_admin_endpoint(
    settings: Settings,
    metrics: NodeMetrics,
    *,
    jobstore: JobStore,
    scp: ScpServer,
    bundle_config: BundleConfig,
) -> AdminEndpoint:
    """Build the health checks and the echo monitor, then start the endpoint.

    Raises
    ------
    OSError
        ``[http] bind_address:port`` cannot be bound (in use, or not an
        address of this host).
    """
    peers = {
        destination.name: peer_for(destination, settings.node)
        for destination in settings.destinations
    }
    echoes = EchoMonitor(peers, settings.http.echo_interval_s)
    health = HealthChecker(
        data_dir=settings.storage.data_dir,
        min_free_bytes=settings.storage.min_free_bytes,
        echo_max_age_s=settings.http.echo_max_age_s,
        jobstore=jobstore,
        scp=scp,
        bundle_config=bundle_config,
        echoes=echoes,
    )
    endpoint = AdminEndpoint(settings, health, metrics, echoes)
    endpoint.start()
    return endpoint
