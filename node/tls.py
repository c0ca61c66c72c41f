"""TLS contexts of the node: the listener's server context and each destination's client context.

Both contexts accept TLS 1.2 or newer only (``min_version`` raises the
floor to 1.3) and verify the peer's certificate against the configured CA
file. The client context also checks that the destination's certificate
names the destination's ``host``:

* a host name must match a DNS name in the certificate's Subject Alternative
  Name, by OpenSSL's host name check;
* an IP address must equal an IP Address entry of the Subject Alternative
  Name.

The Common Name is never compared with ``host``.

Before a context is built, each file is checked by
:mod:`hipfuse.node.tls_files`, which raises :class:`TLSFileError` naming the
setting and the file. :func:`tls_problems` collects every such problem for
``hipfuse-node check-config`` and for the service's start.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hipfuse.config.tls import NodeTLSSettings, TLSVersion
from hipfuse.node.tls_files import (
    TLSFileError,
    check_files,
    load_ca_file,
    load_certificate_chain,
    warn_if_expiring,
)

if TYPE_CHECKING:
    from hipfuse.config.settings import Destination, Settings

__all__ = [
    "ClientContext",
    "ClientTLS",
    "TLSFileError",
    "build_server_context",
    "describe_tls_error",
    "server_problems",
    "tls_problems",
]

_MIN_VERSIONS = {
    TLSVersion.TLS_1_2: ssl.TLSVersion.TLSv1_2,
    TLSVersion.TLS_1_3: ssl.TLSVersion.TLSv1_3,
}


def build_server_context(
    tls: NodeTLSSettings, prefix: str = "node.tls", now: float | None = None
) -> ssl.SSLContext:
    """Build the listener's context from ``[node.tls]``.

    With ``require_client_certificate`` every peer must present a certificate
    that ``ca_file`` verifies (mutual authentication). Without it a peer may
    connect without one, but a certificate it does present is still verified
    against ``ca_file`` when that is set.

    Raises
    ------
    TLSFileError
        For the first file problem found (see :func:`server_problems` for all).
    """
    now = time.time() if now is None else now
    problems = server_problems(tls, prefix, now)
    if problems:
        raise problems[0]
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[tls.min_version]
    load_certificate_chain(
        context, f"{prefix}.cert_file", tls.cert_file, f"{prefix}.key_file", tls.key_file
    )
    warn_if_expiring(f"{prefix}.cert_file", tls.cert_file, now)
    if tls.ca_file is not None:
        load_ca_file(context, f"{prefix}.ca_file", tls.ca_file, now)
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def server_problems(
    tls: NodeTLSSettings, prefix: str = "node.tls", now: float | None = None
) -> list[TLSFileError]:
    """Return every problem of the ``[node.tls]`` files, file by file."""
    if not tls.enabled:
        return []
    now = time.time() if now is None else now
    return check_files(
        [
            (f"{prefix}.cert_file", tls.cert_file, "certificate"),
            (f"{prefix}.key_file", tls.key_file, "key"),
            (f"{prefix}.ca_file", tls.ca_file, "ca"),
        ],
        now,
    )


class _HandshakeRecordingSocket(ssl.SSLSocket):
    """An SSLSocket that hands the error of a failed handshake to its context.

    Under TLS 1.3 a client finishes its side of the handshake before the
    server has checked the client's certificate, so a rejection arrives as
    an alert on the first read. Errors of reads before any data arrived count
    as handshake failures for that reason.
    """

    _data_received = False

    def do_handshake(self, block: bool = False) -> None:
        """Run the handshake; record its error on the context before re-raising it."""
        try:
            super().do_handshake(block)
        except OSError as error:  # ssl.SSLError, a time-out or a reset connection
            _record_failure(self.context, error)
            raise

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        """Read decrypted data; record an error before the first data as a handshake failure."""
        try:
            data = super().read(len, buffer)
        except ssl.SSLError as error:
            if not self._data_received:
                _record_failure(self.context, error)
            raise
        self._data_received = True
        return data


def _record_failure(context: ssl.SSLContext, error: OSError) -> None:
    if isinstance(context, ClientContext) and context.handshake_error is None:
        context.handshake_error = error


class ClientContext(ssl.SSLContext):
    """A client context that keeps the error of the first failed handshake.

    Build one per association (:meth:`ClientTLS.build_context`): the error
    belongs to the connection the context was used for.
    """

    sslsocket_class = _HandshakeRecordingSocket
    handshake_error: OSError | None = None


@dataclass(frozen=True)
class ClientTLS:
    """TLS settings of one destination, ready to build a client context per association.

    Attributes
    ----------
    ca_file
        CA certificates that verify the destination's certificate.
    cert_file, key_file
        This node's client certificate and key, or ``None`` to present none.
    min_version
        Lowest TLS version offered.
    server_hostname
        Host name or IP address the destination's certificate must name.
    prefix
        Settings path of the destination, used in error messages. Empty for
        the command line, whose messages name the options (``--tls-ca-file``).
    """

    ca_file: Path
    cert_file: Path | None
    key_file: Path | None
    min_version: TLSVersion
    server_hostname: str
    prefix: str

    @classmethod
    def from_destination(cls, destination: Destination, prefix: str | None = None) -> ClientTLS:
        """Return the TLS settings of a destination with ``tls = true``."""
        if not destination.tls or destination.tls_ca_file is None:
            raise ValueError(f"destination {destination.name!r} has no tls = true and tls_ca_file")
        return cls(
            ca_file=destination.tls_ca_file,
            cert_file=destination.tls_cert_file,
            key_file=destination.tls_key_file,
            min_version=destination.tls_min_version,
            server_hostname=destination.host,
            prefix=prefix or f"destinations[name={destination.name!r}]",
        )

    def _setting(self, key: str) -> str:
        if not self.prefix:
            return "--" + key.replace("_", "-")
        return f"{self.prefix}.{key}"

    def problems(self, now: float | None = None) -> list[TLSFileError]:
        """Return every problem of the destination's files, file by file."""
        return check_files(
            [
                (self._setting("tls_ca_file"), self.ca_file, "ca"),
                (self._setting("tls_cert_file"), self.cert_file, "certificate"),
                (self._setting("tls_key_file"), self.key_file, "key"),
            ],
            time.time() if now is None else now,
        )

    def build_context(self, now: float | None = None) -> ClientContext:
        """Build a client context; files are read again each time, so renewed ones apply.

        Raises
        ------
        TLSFileError
            For the first file problem found.
        """
        now = time.time() if now is None else now
        problems = self.problems(now)
        if problems:
            raise problems[0]
        context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
        # PROTOCOL_TLS_CLIENT already sets CERT_REQUIRED and check_hostname;
        # they are set again so that no later default can weaken them.
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        # A certificate without a Subject Alternative Name matches no host name.
        context.hostname_checks_common_name = False
        context.minimum_version = _MIN_VERSIONS[self.min_version]
        load_ca_file(context, self._setting("tls_ca_file"), self.ca_file, now)
        if self.cert_file is not None and self.key_file is not None:
            load_certificate_chain(
                context,
                self._setting("tls_cert_file"),
                self.cert_file,
                self._setting("tls_key_file"),
                self.key_file,
            )
            warn_if_expiring(self._setting("tls_cert_file"), self.cert_file, now)
        return context


def describe_tls_error(error: BaseException) -> str:
    """Return a short reason for a failed TLS handshake, in OpenSSL's terms."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return (error.reason or str(error)).replace("_", " ").lower()
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionError):
        return "connection closed by the peer"
    return str(error) or type(error).__name__


def tls_problems(settings: Settings, now: float | None = None) -> list[tuple[str, str]]:
    """Return ``(setting, reason)`` for every unusable TLS file of the settings.

    The contexts are built as well where each file passes its own checks, so
    a key that does not match its certificate is reported too.
    """
    now = time.time() if now is None else now
    errors = server_problems(settings.node.tls, now=now)
    if settings.node.tls.enabled and not errors:
        try:
            build_server_context(settings.node.tls, now=now)
        except TLSFileError as error:
            errors.append(error)
    for index, destination in enumerate(settings.destinations):
        if not destination.tls:
            continue
        client = ClientTLS.from_destination(destination, prefix=f"destinations[{index}]")
        found = client.problems(now)
        if not found:
            try:
                client.build_context(now)
            except TLSFileError as error:
                found.append(error)
        errors += found
    return [(error.setting, f"{error.path}: {error.reason}") for error in errors]
