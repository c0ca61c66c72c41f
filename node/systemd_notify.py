"""Readiness, status and watchdog messages to systemd (``sd_notify``), without libsystemd.

systemd passes a ``Type=notify`` service the path of an ``AF_UNIX`` datagram
socket in ``$NOTIFY_SOCKET`` and, with ``WatchdogSec=``, the watchdog timeout in
``$WATCHDOG_USEC`` (microseconds). Each message is one datagram of
newline-separated ``KEY=VALUE`` assignments (sd_notify(3), systemd 252). A
path that starts with ``@`` names a socket in the Linux abstract namespace.
Without ``$NOTIFY_SOCKET`` (the node started by hand or under another
supervisor) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _socket_address(path: str) -> str | bytes:
    # systemd writes the abstract namespace as a leading "@", the kernel expects a NUL byte.
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class SystemdNotifier:
    """Sender of ``sd_notify`` messages to the socket named in the environment.

    Parameters
    ----------
    environ
        Environment to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` from; ``os.environ`` when ``None``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get(NOTIFY_SOCKET_ENV) or None
        self.watchdog_interval_s = _watchdog_interval_s(env)

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self.socket_path is not None

    def send(self, **fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; return whether it was sent.

        A failed send is logged and not raised: the node keeps running, and
        systemd acts on the missing message (start timeout, watchdog).
        """
        if self.socket_path is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(_socket_address(self.socket_path))
                sock.sendall(message.encode())
        except OSError as error:
            log.warning(
                "systemd_notify_failed",
                keys=sorted(fields),
                socket=self.socket_path,
                error=error.strerror or str(error),
            )
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd that start-up finished (``READY=1``), with a status line."""
        return self.send(READY="1", STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        """Tell systemd that shutdown began (``STOPPING=1``)."""
        return self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        """Set the line ``systemctl status`` shows (``STATUS=``)."""
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        """Reset the systemd watchdog timer (``WATCHDOG=1``)."""
        return self.send(WATCHDOG="1")


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Return half the watchdog timeout in seconds, or ``None`` when no watchdog applies.

    sd_watchdog_enabled(3) recommends pinging at half the timeout, and ignoring
    ``WATCHDOG_USEC`` when ``WATCHDOG_PID`` names another process.
    """
    usec = env.get(WATCHDOG_USEC_ENV)
    if not usec:
        return None
    pid = env.get(WATCHDOG_PID_ENV)
    if pid and pid != str(os.getpid()):
        return None
    try:
        timeout_us = int(usec)
    except ValueError:
        log.warning("systemd_watchdog_usec_invalid", value=usec)
        return None
    if timeout_us <= 0:
        return None
    return timeout_us / 2 / 1_000_000
