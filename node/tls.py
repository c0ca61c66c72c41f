"""TLS contexts of the node: the listener's server context and each destination's client context.

Both contexts accept TLS 1.2 or newer only (``min_version`` raises the
floor to 1.3) and verify the peer's certificate against the configured CA
file. The client context also checks that the destination's certificate
names the destination's ``host``:

* a host name must match a DNS name in the certificate's Subject Alternative
  Name, wildcards as in RFC 6125;
* an IP address must equal an IP Address entry of the Subject Alternative
  Name. OpenSSL never matches an IP address against the Common Name.

Before a context is built, each file is checked on its own. It must exist
and be readable by the user the node runs as. A certificate must be PEM and
valid today, and a private key must be unencrypted and belong to its
certificate. Each problem raises :class:`TLSFileError`, whose message names
the setting and the file. :func:`tls_problems` collects them for
``hipfuse-node check-config`` and for the service's start.
"""

from __future__ import annotations

import os
import pwd
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.config.tls import NodeTLSSettings, TLSVersion

if TYPE_CHECKING:
    from hipfuse.config.settings import Destination, Settings

log = structlog.get_logger(__name__)

# A certificate that expires within this many days is reported with a warning.
EXPIRY_WARNING_DAYS = 30.0
_SECONDS_PER_DAY = 86_400.0

_MIN_VERSIONS = {
    TLSVersion.TLS_1_2: ssl.TLSVersion.TLSv1_2,
    TLSVersion.TLS_1_3: ssl.TLSVersion.TLSv1_3,
}


class TLSFileError(ValueError):
    """A certificate, key or CA file of a TLS setting cannot be used.

    Attributes
    ----------
    setting
        Dotted settings key, such as ``node.tls.key_file``.
    path
        The file named by that setting.
    reason
        What is wrong and how to fix it.
    """

    def __init__(self, setting: str, path: Path, reason: str) -> None:
        self.setting = setting
        self.path = path
        self.reason = reason
        super().__init__(f"{setting} {path}: {reason}")


_ENCRYPTED_KEY_REASON = (
    "the private key is encrypted with a password, which the node cannot enter; "
    "store it unencrypted (openssl pkey -in KEY -out KEY.plain) and protect it "
    "with file permissions"
)


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a password, which the node never has."""


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block the service.
    raise _EncryptedKeyError


# --------------------------------------------------------------------------- #
# File checks
# --------------------------------------------------------------------------- #


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a user id without a passwd entry, as in some containers
        return f"uid {os.geteuid()}"


def _read(setting: str, path: Path) -> bytes:
    """Return the bytes of ``path``, or raise :class:`TLSFileError` naming the setting."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSFileError(setting, path, "not found; check the path") from None
    except IsADirectoryError:
        raise TLSFileError(setting, path, "is a folder; name the PEM file") from None
    except PermissionError:
        raise TLSFileError(
            setting,
            path,
            f"cannot be read by user {_user_name()} (permission denied); give that "
            "user's group read access, as systemd/README.md shows",
        ) from None
    except OSError as error:
        raise TLSFileError(setting, path, f"cannot be read: {error.strerror}") from None


def _decode_certificate(path: Path) -> dict[str, Any] | None:
    """Decode the first certificate of a PEM file; ``None`` where Python cannot decode it.

    Raises ``ssl.SSLError`` for a file without a PEM certificate.
    """
    # NOTE: the ssl module has no public decoder for a certificate file.
    # _test_decode_cert has been in CPython since 2.7 and returns the same
    # dictionary as SSLSocket.getpeercert(). Without it the expiry checks are
    # skipped, and the peer still rejects an expired certificate.
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    return dict(decode(str(path)))


def _check_validity(setting: str, path: Path, certificate: dict[str, Any], now: float) -> None:
    not_before = ssl.cert_time_to_seconds(certificate["notBefore"])
    not_after = ssl.cert_time_to_seconds(certificate["notAfter"])
    if now > not_after:
        raise TLSFileError(
            setting,
            path,
            f"the certificate expired on {certificate['notAfter']}; install a renewed one",
        )
    if now < not_before:
        raise TLSFileError(
            setting,
            path,
            f"the certificate is not valid before {certificate['notBefore']}; check the "
            "system clock or the certificate's start date",
        )


# (setting, path, event) of the warnings logged so far. Client contexts are
# built for every association, so each warning is logged once per process.
_warned: set[tuple[str, str, str]] = set()


def _warn_once(event: str, setting: str, path: Path, **details: Any) -> None:
    key = (setting, str(path), event)
    if key in _warned:
        return
    _warned.add(key)
    log.warning(event, setting=setting, path=str(path), **details)


def _warn_if_expiring(setting: str, path: Path, now: float) -> None:
    try:
        certificate = _decode_certificate(path)
    except ssl.SSLError:  # the file changed after it was checked
        return
    if certificate is None:
        return
    days_left = (ssl.cert_time_to_seconds(certificate["notAfter"]) - now) / _SECONDS_PER_DAY
    if days_left < EXPIRY_WARNING_DAYS:
        _warn_once(
            "tls_certificate_expires_soon",
            setting,
            path,
            not_after=certificate["notAfter"],
            days_left=round(days_left, 1),
        )


def check_certificate_file(setting: str, path: Path, now: float | None = None) -> None:
    """Check that ``path`` is a readable PEM certificate that is valid at ``now``.

    Raises
    ------
    TLSFileError
        The file is missing or unreadable, contains no PEM certificate, or its
        first certificate has expired or is not valid yet.
    """
    _read(setting, path)
    try:
        certificate = _decode_certificate(path)
    except ssl.SSLError:
        raise TLSFileError(
            setting, path, "contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    if certificate is not None:
        _check_validity(setting, path, certificate, time.time() if now is None else now)


def check_key_file(setting: str, path: Path) -> None:
    """Check that ``path`` is readable and not encrypted with a password."""
    data = _read(setting, path)
    # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY" and the traditional "Proc-Type: 4,ENCRYPTED".
    if b"ENCRYPTED" in data:
        raise TLSFileError(setting, path, _ENCRYPTED_KEY_REASON)


def load_ca_file(context: ssl.SSLContext, setting: str, path: Path, now: float) -> None:
    """Load the CA certificates of ``path`` into ``context``.

    Raises
    ------
    TLSFileError
        The file is missing or unreadable, contains no certificate, or every CA
        certificate in it has expired. A file in which only some have expired
        is accepted with a ``tls_ca_certificate_expired`` warning per certificate.
    """
    _read(setting, path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        raise TLSFileError(
            setting, path, "contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    authorities = context.get_ca_certs()
    expired = [ca for ca in authorities if ssl.cert_time_to_seconds(ca["notAfter"]) < now]
    if authorities and len(expired) == len(authorities):
        raise TLSFileError(
            setting,
            path,
            f"every CA certificate in it has expired (the last on "
            f"{max(ca['notAfter'] for ca in expired)}); install the renewed CA certificates",
        )
    for ca in expired:
        _warn_once(
            "tls_ca_certificate_expired",
            setting,
            path,
            subject=_common_name(ca.get("subject", ())),
            not_after=ca["notAfter"],
        )


def load_certificate_chain(
    context: ssl.SSLContext,
    cert_setting: str,
    cert_path: Path,
    key_setting: str,
    key_path: Path,
) -> None:
    """Load a certificate and its private key into ``context``.

    Raises
    ------
    TLSFileError
        The key does not belong to the certificate, is not a PEM private
        key, or is encrypted.
    """
    try:
        context.load_cert_chain(str(cert_path), str(key_path), password=_refuse_password)
    except _EncryptedKeyError:
        raise TLSFileError(key_setting, key_path, _ENCRYPTED_KEY_REASON) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError(
                key_setting,
                key_path,
                f"the private key does not match the certificate in {cert_setting} "
                f"{cert_path}; install the key made with that certificate",
            ) from None
        raise TLSFileError(
            key_setting, key_path, "contains no PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    except OSError as error:  # the file changed since it was checked
        raise TLSFileError(key_setting, key_path, f"cannot be read: {error.strerror}") from None


def _common_name(subject: Any) -> str | None:
    """Return the Common Name of a decoded certificate subject, if any."""
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _check_files(files: list[tuple[str, Path | None, str]], now: float) -> list[TLSFileError]:
    """Check each ``(setting, path, kind)`` on its own; return every problem found."""
    problems = []
    for setting, path, kind in files:
        if path is None:
            continue
        try:
            if kind == "certificate":
                check_certificate_file(setting, path, now)
            elif kind == "key":
                check_key_file(setting, path)
            else:
                _read(setting, path)
        except TLSFileError as error:
            problems.append(error)
    return problems


# --------------------------------------------------------------------------- #
# Contexts
# --------------------------------------------------------------------------- #


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
    _warn_if_expiring(f"{prefix}.cert_file", tls.cert_file, now)
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
    return _check_files(
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
        return _check_files(
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
            _warn_if_expiring(self._setting("tls_cert_file"), self.cert_file, now)
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
