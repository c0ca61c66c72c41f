"""Checks of the TLS certificate, key and CA files, each problem named with its setting.

Each file is checked on its own. It must exist and be readable by the user
the node runs as. A certificate must be PEM and valid today, and a private
key must be unencrypted and belong to its certificate. Each problem raises
:class:`TLSFileError`, whose message names the setting and the file.
:mod:`hipfuse.node.tls` builds the contexts from the checked files.
"""

from __future__ import annotations

import os
import pwd
import ssl
import time
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# A certificate that expires within this many days is reported with a warning.
EXPIRY_WARNING_DAYS = 30.0
_SECONDS_PER_DAY = 86_400.0


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


def _reject_password_prompt() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block the service.
    raise _EncryptedKeyError


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


def warn_if_expiring(setting: str, path: Path, now: float) -> None:
    """Log ``tls_certificate_expires_soon`` once when the certificate has little time left."""
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
        context.load_cert_chain(str(cert_path), str(key_path), password=_reject_password_prompt)
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


def check_files(files: list[tuple[str, Path | None, str]], now: float) -> list[TLSFileError]:
    """Check each ``(setting, path, kind)`` on its own; return every problem found.

    ``kind`` is ``"certificate"``, ``"key"`` or ``"ca"``.
    """
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
