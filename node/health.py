"""Health checks of the running node, and the C-ECHO monitor of the destinations.

:class:`HealthChecker` runs every check when ``/healthz`` is requested:

* ``scp_listening``: the storage SCP's socket is open and listening;
* ``job_store_writable``: a write transaction commits;
* ``disk_space``: ``storage.data_dir`` has more than ``storage.min_free_bytes`` free;
* ``model_bundle``: a bundle is loaded (its name and version are reported);
* ``destination_echo``, one per destination: the last successful C-ECHO is at
  most ``[http] echo_max_age_s`` seconds old.

:class:`EchoMonitor` sends those C-ECHO requests from its own thread every
``[http] echo_interval_s`` seconds. A health request reads the last results,
so it does not wait for the network.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.node.scu import AssociationError, Peer, echo

if TYPE_CHECKING:
    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.scp import ScpServer

log = structlog.get_logger(__name__)

EchoFunction = Callable[[Peer], int]


class HealthCheck(StrEnum):
    """Names of the health checks, as ``/healthz`` reports them."""

    SCP_LISTENING = "scp_listening"
    JOB_STORE_WRITABLE = "job_store_writable"
    DISK_SPACE = "disk_space"
    MODEL_BUNDLE = "model_bundle"
    DESTINATION_ECHO = "destination_echo"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: passed or not, a sentence for people, values for machines."""

    check: HealthCheck
    ok: bool
    message: str
    destination: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Name of the check, with ``:destination`` for a destination check."""
        if self.destination is None:
            return self.check.value
        return f"{self.check.value}:{self.destination}"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this result."""
        result: dict[str, Any] = {"check": self.check.value, "ok": self.ok}
        if self.destination is not None:
            result["destination"] = self.destination
        result["message"] = self.message
        return result | self.details


@dataclass(frozen=True)
class HealthReport:
    """Results of one run of every check."""

    results: tuple[CheckResult, ...]

    @property
    def healthy(self) -> bool:
        """Whether every check passed."""
        return all(result.ok for result in self.results)

    @property
    def failing(self) -> list[str]:
        """Keys of the checks that failed."""
        return [result.key for result in self.results if not result.ok]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of ``/healthz``."""
        return {
            "status": "pass" if self.healthy else "fail",
            "failing": self.failing,
            "checks": [result.to_json() for result in self.results],
        }


@dataclass(frozen=True)
class EchoStatus:
    """Last C-ECHO outcomes of one destination; times are ``time.monotonic()`` seconds."""

    last_success_at: float | None = None
    last_attempt_at: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0


class EchoMonitor:
    """Sends C-ECHO to each destination every ``interval_s`` seconds from one thread.

    Parameters
    ----------
    peers
        Destination name to peer.
    interval_s
        Seconds from the start of one round of echoes to the next.
    echo_function
        Sends one C-ECHO and returns its status; tests pass a fake.
    clock
        Monotonic seconds for the ages; tests pass a controllable one.
    """

    def __init__(
        self,
        peers: Mapping[str, Peer],
        interval_s: float,
        *,
        echo_function: EchoFunction | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers = dict(peers)
        self.interval_s = interval_s
        self.echo_function = echo_function or _echo_with_connect_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._statuses = {name: EchoStatus() for name in self.peers}

    def run(self, stop: threading.Event) -> None:
        """Echo every destination each ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = self.clock()
            self.echo_all(stop)
            stop.wait(max(self.interval_s - (self.clock() - started), 0.0))

    def echo_all(self, stop: threading.Event | None = None) -> None:
        """Echo each destination once, in order; ``stop`` ends the round early."""
        # NOTE: one thread for all destinations: each unreachable host that drops
        # packets delays the next echoes by up to its acse_timeout_s.
        for name in self.peers:
            if stop is not None and stop.is_set():
                return
            self.echo_one(name)

    def echo_one(self, name: str) -> EchoStatus:
        """Echo one destination, record the outcome and return its new status."""
        peer = self.peers[name]
        error = None
        try:
            status = self.echo_function(peer)
            if status != 0:
                error = f"{peer.describe()} returned C-ECHO status 0x{status:04X}"
        except AssociationError as exc:
            error = str(exc)
        except Exception as exc:  # a pynetdicom or socket error: the destination counts as down
            error = f"C-ECHO to {peer.describe()} failed: {type(exc).__name__}: {exc}"
        now = self.clock()
        with self._lock:
            before = self._statuses[name]
            if error is None:
                after = EchoStatus(now, now, None, 0)
            else:
                after = EchoStatus(
                    before.last_success_at, now, error, before.consecutive_failures + 1
                )
            self._statuses[name] = after
        self._log_change(name, before, after)
        return after

    def status(self, name: str) -> EchoStatus:
        """Return the last recorded status of destination ``name``."""
        with self._lock:
            return self._statuses[name]

    @staticmethod
    def _log_change(name: str, before: EchoStatus, after: EchoStatus) -> None:
        # One line when a destination goes down or comes back; repeats go to DEBUG.
        if after.last_error is None:
            if before.last_error is not None or before.last_attempt_at is None:
                log.info("destination_echo_succeeded", destination=name)
        elif before.last_error is None:
            log.warning("destination_echo_failed", destination=name, error=after.last_error)
        else:
            log.debug(
                "destination_echo_failed",
                destination=name,
                error=after.last_error,
                consecutive_failures=after.consecutive_failures,
            )


def _echo_with_connect_timeout(peer: Peer) -> int:
    # Without a connect timeout a host that drops packets blocks the thread for
    # the operating system's TCP timeout (minutes); the ACSE timeout bounds it.
    return echo(peer, connection_timeout_s=peer.acse_timeout_s)


class HealthChecker:
    """Runs the node's health checks.

    Parameters
    ----------
    data_dir, min_free_bytes
        ``[storage] data_dir`` and ``min_free_bytes``.
    echo_max_age_s
        ``[http] echo_max_age_s``.
    jobstore, scp, bundle_config
        The running node's parts; ``None`` fails their check.
    echoes
        The monitor whose destinations are checked.
    clock
        Monotonic seconds, the clock of ``echoes``.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        min_free_bytes: int,
        echo_max_age_s: float,
        jobstore: JobStore | None,
        scp: ScpServer | None,
        bundle_config: BundleConfig | None,
        echoes: EchoMonitor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.min_free_bytes = min_free_bytes
        self.echo_max_age_s = echo_max_age_s
        self.jobstore = jobstore
        self.scp = scp
        self.bundle_config = bundle_config
        self.echoes = echoes
        self.clock = clock
        self._lock = threading.Lock()
        self._last_ok: dict[str, bool] = {}

    def check(self) -> HealthReport:
        """Run every check and return the report; log each check that starts or stops failing."""
        results = [
            self.check_scp(),
            self.check_jobstore(),
            self.check_disk_space(),
            self.check_model_bundle(),
            *(self.check_destination(name) for name in self.echoes.peers),
        ]
        self._log_changes(results)
        return HealthReport(tuple(results))

    def check_scp(self) -> CheckResult:
        """Check that the storage SCP's socket is open and listening."""
        # NOTE: pynetdicom keeps no handle on the thread that accepts connections,
        # so a listening socket whose accept loop has died still passes.
        check = HealthCheck.SCP_LISTENING
        if self.scp is None:
            return CheckResult(check, False, "the storage SCP is not running")
        if not self.scp.is_listening:
            return CheckResult(
                check, False, f"the storage SCP's socket on port {self.scp.port} is not listening"
            )
        return CheckResult(
            check, True, f"listening on port {self.scp.port}", details={"port": self.scp.port}
        )

    def check_jobstore(self) -> CheckResult:
        """Check that a write transaction on the job store commits."""
        check = HealthCheck.JOB_STORE_WRITABLE
        if self.jobstore is None:
            return CheckResult(check, False, "the job store is not open")
        try:
            self.jobstore.probe_write()
        except sqlite3.Error as error:
            return CheckResult(
                check, False, f"a write transaction on {self.jobstore.path} failed: {error}"
            )
        return CheckResult(check, True, "a write transaction committed")

    def check_disk_space(self) -> CheckResult:
        """Check that ``data_dir`` has more than ``min_free_bytes`` free."""
        check = HealthCheck.DISK_SPACE
        try:
            free_bytes = shutil.disk_usage(self.data_dir).free
        except OSError as error:
            return CheckResult(
                check, False, f"free space of {self.data_dir} cannot be read: {error.strerror}"
            )
        details = {"free_bytes": free_bytes, "min_free_bytes": self.min_free_bytes}
        if free_bytes <= self.min_free_bytes:
            message = (
                f"{self.data_dir} has {free_bytes} bytes free, not more than "
                f"storage.min_free_bytes ({self.min_free_bytes}); C-STORE is refused "
                "until space is freed"
            )
            return CheckResult(check, False, message, details=details)
        return CheckResult(check, True, f"{free_bytes} bytes free", details=details)

    def check_model_bundle(self) -> CheckResult:
        """Check that a model bundle is loaded; report its name and version."""
        check = HealthCheck.MODEL_BUNDLE
        config = self.bundle_config
        if config is None:
            return CheckResult(check, False, "no model bundle is loaded")
        return CheckResult(
            check,
            True,
            f"{config.name} {config.version} loaded",
            details={"name": config.name, "version": config.version},
        )

    def check_destination(self, name: str) -> CheckResult:
        """Check that destination ``name`` returned C-ECHO Success within ``echo_max_age_s``."""
        check = HealthCheck.DESTINATION_ECHO
        status = self.echoes.status(name)
        if status.last_success_at is None:
            if status.last_attempt_at is None:
                message = "no C-ECHO sent yet"
            else:
                message = f"no C-ECHO has succeeded since the node started: {status.last_error}"
            return CheckResult(check, False, message, destination=name)

        age_s = round(self.clock() - status.last_success_at, 1)
        details = {"last_success_age_s": age_s, "max_age_s": self.echo_max_age_s}
        if age_s > self.echo_max_age_s:
            message = (
                f"last successful C-ECHO {age_s} s ago, more than echo_max_age_s "
                f"({self.echo_max_age_s} s)"
            )
            if status.last_error is not None:
                message += f": {status.last_error}"
            return CheckResult(check, False, message, destination=name, details=details)
        message = f"last successful C-ECHO {age_s} s ago"
        return CheckResult(check, True, message, destination=name, details=details)

    def _log_changes(self, results: list[CheckResult]) -> None:
        with self._lock:
            for result in results:
                before = self._last_ok.get(result.key)
                self._last_ok[result.key] = result.ok
                if not result.ok and before is not False:
                    log.warning("health_check_failed", check=result.key, reason=result.message)
                elif result.ok and before is False:
                    log.info("health_check_recovered", check=result.key)
