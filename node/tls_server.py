"""The storage SCP's association server with DICOM TLS.

pynetdicom 3.0's own TLS server (``AE.start_server(ssl_context=...)``) runs
the TLS handshake in its accepting thread, with no time-out, and drops a
failed handshake without a trace. One client that connects and sends nothing
would stop every other association. :class:`TLSAssociationServer` accepts
without a handshake and runs it in the connection's own thread, limited to
``handshake_timeout_s``. It logs each failure as ``tls_handshake_failed``
with the peer address and OpenSSL's reason.

The allow-list of calling AE titles and addresses is checked afterwards, on
the A-ASSOCIATE-RQ, exactly as without TLS. An entry with
``certificate_names`` also needs a client certificate that carries one of
them (:func:`peer_certificate_names`). Without that key, any certificate that
``ca_file`` verifies may send under that AE title.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from hipfuse.config.tls import NodeTLSSettings
from hipfuse.node.tls import build_server_context, describe_tls_error

log = structlog.get_logger(__name__)


class TLSAssociationServer(ThreadedAssociationServer):
    """A threaded association server that runs each TLS handshake in the connection's thread."""

    # A connection stuck in its handshake must not keep the process alive at exit.
    daemon_threads = True
    handshake_timeout_s: float = 30.0
    # Called with the reason of each failed handshake (the node's metrics).
    on_handshake_failed: Callable[[str], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and wrap it for TLS without running the handshake yet."""
        assert self.socket is not None and self.ssl_context is not None
        client_socket, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(
            client_socket, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run the handshake, then serve the association; close the connection if it fails."""
        if not self._handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        peer_address, peer_port = str(client_address[0]), int(client_address[1])
        previous_timeout = request.gettimeout()
        request.settimeout(self.handshake_timeout_s)
        try:
            request.do_handshake()
        except OSError as error:  # ssl.SSLError, a time-out or a reset connection
            reason = describe_tls_error(error)
            log.warning(
                "tls_handshake_failed",
                peer_address=peer_address,
                peer_port=peer_port,
                reason=reason,
            )
            if self.on_handshake_failed is not None:
                self.on_handshake_failed(reason)
            return False
        finally:
            request.settimeout(previous_timeout)
        certificate = request.getpeercert() or {}
        log.debug(
            "tls_handshake_completed",
            peer_address=peer_address,
            peer_port=peer_port,
            tls_version=request.version(),
            cipher=(request.cipher() or ("",))[0],
            client_certificate_subject=_subject_text(certificate.get("subject", ())),
        )
        return True


def peer_certificate_names(connection: Any) -> frozenset[str] | None:
    """Return the names of a TLS peer's verified certificate, case-folded.

    The names are the subject's common names and the DNS and IP address
    subject alternative names. ``None`` when ``connection`` is not a TLS
    socket or the peer presented no certificate.
    """
    if not isinstance(connection, ssl.SSLSocket):
        return None
    certificate = connection.getpeercert()
    if not certificate:
        return None
    names = {
        str(value)
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    }
    names.update(
        str(value)
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    )
    return frozenset(name.casefold() for name in names)


def _subject_text(subject: Any) -> str | None:
    """Return a certificate subject as ``CN=...,O=...``, or ``None`` without one."""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    parts = [f"{names.get(key, key)}={value}" for rdn in subject for key, value in rdn]
    return ",".join(parts) or None


def start_tls_server(
    ae: AE,
    address: tuple[str, int],
    handlers: Sequence[tuple[Any, Any]],
    tls: NodeTLSSettings,
    *,
    handshake_timeout_s: float,
    on_handshake_failed: Callable[[str], None] | None = None,
) -> ThreadedAssociationServer:
    """Start a TLS association server in a background thread, as ``AE.start_server`` does.

    Raises
    ------
    hipfuse.node.tls.TLSFileError
        A file of ``[node.tls]`` cannot be used.
    OSError
        The address cannot be bound.
    """
    context = build_server_context(tls)
    server = ae.make_server(
        address,
        ssl_context=context,
        evt_handlers=list(handlers),
        server_class=TLSAssociationServer,
    )
    assert isinstance(server, TLSAssociationServer)
    server.handshake_timeout_s = handshake_timeout_s
    server.on_handshake_failed = on_handshake_failed
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(
        target=make_target(server.serve_forever), name=f"TLSAcceptorServer@{timestamp}", daemon=True
    )
    thread.start()
    # AssociationServer.shutdown() removes the server from this list, and
    # AE.shutdown() stops every server in it; start_server adds it the same way.
    ae._servers.append(server)
    return server
