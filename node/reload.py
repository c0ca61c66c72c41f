"""Reload of the settings file on SIGHUP.

The file is read and validated again, with the ``HIPFUSE_*`` environment
applied, exactly as at start. A file with any problem is rejected as a whole:
each problem is logged (``settings_reload_problem``) and the running settings
stay. Otherwise every key that differs from the running settings is either
applied at once or logged as ``setting_needs_restart`` with its dotted path.
These keys apply at once:

* ``logging.level`` and ``logging.json``;
* ``node.allowed_callers``, checked at the next association request;
* ``study.quiet_period_s`` and ``study.complete_when_expected_series_present``;
* ``send.max_attempts``, ``send.backoff_initial_s`` and ``send.backoff_max_s``,
  for the next attempt of each item;
* ``ae_title``, ``host`` and ``port`` of an existing destination (matched by
  ``name``), for its next association;
* ``dropfolder.settle_s`` and ``dropfolder.poll_interval_s``;
* ``model.watch_settle_s``.

The node then runs with its running settings plus these changes only, so a
key that needs a restart keeps its old value until the restart and is
reported again at each reload.

A listener with DICOM TLS also reads its certificate, key and CA files again
at each reload, from the running paths, so a renewed certificate written over
the old files serves the next connections. Files that fail the checks reject
the reload as a whole, like any other problem. ``tls_reload_failed`` is
logged when a file changes between the checks and the reading, and the
listener keeps its certificate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.config.settings import Destination, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from hipfuse.node.scp import ScpServer
    from hipfuse.node.service import NodeService
    from hipfuse.node.systemd_notify import SystemdNotifier

log = structlog.get_logger(__name__)

# Keys, as (section, key), that running parts read again at each use.
LIVE_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("logging", "level"),
        ("logging", "json"),
        ("node", "allowed_callers"),
        ("study", "quiet_period_s"),
        ("study", "complete_when_expected_series_present"),
        ("send", "max_attempts"),
        ("send", "backoff_initial_s"),
        ("send", "backoff_max_s"),
        ("dropfolder", "settle_s"),
        ("dropfolder", "poll_interval_s"),
        ("model", "watch_settle_s"),
    }
)
# Keys of a [[destinations]] entry that apply to its sender's next association.
LIVE_DESTINATION_KEYS: frozenset[str] = frozenset({"ae_title", "host", "port"})


@dataclass(frozen=True)
class ReloadPlan:
    """Settings to run with after a reload, and the dotted paths of the changed keys."""

    effective: Settings
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of one reload: a plan, or the problems that rejected the file."""

    plan: ReloadPlan | None
    problems: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        """Whether the file was valid and its live changes applied."""
        return self.plan is not None


def _dump(settings: Any) -> dict[str, Any]:
    # by_alias: the dotted paths use the file's key names ("json", not "json_lines").
    dumped: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    return dumped


def _changed_keys(running: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Return the keys whose values differ. A list counts as one value."""
    return sorted(key for key in running.keys() | new.keys() if running.get(key) != new.get(key))


def plan_reload(running: Settings, new: Settings) -> ReloadPlan:
    """Compare new settings with the running ones and keep only the changes that apply live."""
    running_values, new_values = _dump(running), _dump(new)
    applied: list[str] = []
    needs_restart: list[str] = []
    section_updates: dict[str, Any] = {}

    for section in sorted(running_values.keys() - {"destinations"}):
        running_section, new_section = getattr(running, section), getattr(new, section)
        live_updates = {}
        for key in _changed_keys(running_values[section], new_values[section]):
            path = f"{section}.{key}"
            if (section, key) in LIVE_KEYS:
                name = _field_name(running_section, key)
                live_updates[name] = getattr(new_section, name)
                applied.append(path)
            else:
                needs_restart.append(path)
        if live_updates:
            section_updates[section] = running_section.model_copy(update=live_updates)

    destinations, destination_applied, destination_restart = _plan_destinations(
        running.destinations, new.destinations
    )
    applied += destination_applied
    needs_restart += destination_restart
    if destination_applied:
        section_updates["destinations"] = destinations

    # The values come from validated settings, so the copy needs no new validation.
    effective = running.model_copy(update=section_updates)
    return ReloadPlan(effective, tuple(applied), tuple(needs_restart))


def _field_name(section: Any, key: str) -> str:
    """Return the attribute name of a file key (``json`` is ``json_lines``)."""
    for name, field in type(section).model_fields.items():
        if (field.alias or name) == key:
            return name
    return key


def _plan_destinations(
    running: list[Destination], new: list[Destination]
) -> tuple[list[Destination], list[str], list[str]]:
    """Keep live changes of destinations matched by name; adding or removing one needs a restart."""
    new_by_name = {destination.name: (index, destination) for index, destination in enumerate(new)}
    running_names = [destination.name for destination in running]
    applied: list[str] = []
    needs_restart: list[str] = []
    if running_names != [destination.name for destination in new]:
        needs_restart.append("destinations")
    result = []
    for destination in running:
        if destination.name not in new_by_name:
            result.append(destination)
            continue
        index, replacement = new_by_name[destination.name]
        live_updates = {}
        old_values, new_values = _dump(destination), _dump(replacement)
        for key in _changed_keys(old_values, new_values):
            path = f"destinations[{index}].{key}"
            if key in LIVE_DESTINATION_KEYS:
                live_updates[key] = getattr(replacement, key)
                applied.append(path)
            else:
                needs_restart.append(path)
        result.append(destination.model_copy(update=live_updates) if live_updates else destination)
    return result, applied, needs_restart


def apply_settings(service: NodeService, plan: ReloadPlan) -> None:
    """Hand the effective settings to every running part of ``service``."""
    from hipfuse.config.logging import configure_logging
    from hipfuse.node.sender import peer_for

    settings = plan.effective
    if any(path.startswith("logging.") for path in plan.applied):
        configure_logging(settings.logging.level.value, settings.logging.json_lines)
    if service.scp is not None and service.scp.storage_scp is not None:
        service.scp.storage_scp.settings = settings
    if service.scp is not None and service.scp.uses_tls:
        _reload_certificates(service.scp, settings)
    if service.assembler is not None:
        service.assembler.settings = settings.study
    destinations = {destination.name: destination for destination in settings.destinations}
    for name, sender in service.senders.items():
        sender.settings = settings.send
        destination = destinations.get(name)
        if destination is not None and destination != sender.destination:
            sender.peer = peer_for(destination, settings.node)
            sender.destination = destination
    if service.dropfolder is not None:
        service.dropfolder.settings = settings.dropfolder
    if service.bundle_watcher is not None:
        service.bundle_watcher.settle_s = settings.model.watch_settle_s
    service.settings = settings


def _reload_certificates(scp: ScpServer, settings: Settings) -> None:
    """Re-read the listener's TLS files, which a certificate renewal replaces in place."""
    from hipfuse.node.tls import TLSFileError

    try:
        scp.reload_tls(settings.node.tls)
    except TLSFileError as error:
        log.error(
            "tls_reload_failed",
            setting=error.setting,
            error=str(error),
            message="the listener keeps its current certificate; fix the file and reload again",
        )


def reload_settings(service: NodeService, config: Path) -> ReloadResult:
    """Read ``config`` again and apply what can change while the node runs."""
    from hipfuse.node.service import runtime_problems

    started = time.perf_counter()
    try:
        new = load_settings(config)
    except SettingsError as error:
        return _reject(config, error.problems)
    problems = runtime_problems(new)
    if problems:
        return _reject(config, problems)

    plan = plan_reload(service.settings, new)
    apply_settings(service, plan)
    for path in plan.needs_restart:
        log.warning("setting_needs_restart", path=path)
    log.info(
        "settings_reloaded",
        config=str(config),
        applied=list(plan.applied),
        needs_restart=list(plan.needs_restart),
        reload_s=round(time.perf_counter() - started, 3),
    )
    return ReloadResult(plan)


def describe_reload(result: ReloadResult | None, at: float) -> str:
    """Return a status line for a reload's outcome; ``None`` is a reload that raised."""
    clock = time.strftime("%H:%M:%S UTC", time.gmtime(at))
    if result is None:
        return f"settings reload at {clock} failed, see the log"
    if result.plan is None:
        count = len(result.problems)
        problems = f"{count} problem" if count == 1 else f"{count} problems"
        return f"settings reload at {clock} rejected ({problems}, see the log)"
    applied, restart = len(result.plan.applied), len(result.plan.needs_restart)
    return f"settings reloaded at {clock}: {applied} applied, {restart} needing a restart"


def _reject(config: Path, problems: list[tuple[str, str]]) -> ReloadResult:
    for path, reason in problems:
        log.error("settings_reload_problem", config=str(config), path=path, reason=reason)
    log.error(
        "settings_reload_rejected",
        config=str(config),
        problems=len(problems),
        message="the running settings stay unchanged. Fix the file and send SIGHUP again",
    )
    return ReloadResult(None, tuple(problems))


class SettingsReloader:
    """Reload the settings in a thread of its own whenever :meth:`request` is called.

    :meth:`request` only sets an event, so a signal handler may call it.

    Parameters
    ----------
    service
        The node whose settings change.
    config
        The settings file the node was started with.
    notifier
        Tells systemd that a reload runs (``RELOADING=1``) and ended (``READY=1``).
    """

    def __init__(
        self, service: NodeService, config: Path, notifier: SystemdNotifier | None = None
    ) -> None:
        self.service = service
        self.config = Path(config)
        self.notifier = notifier
        # The status line set at start; each reload's outcome is appended to it.
        self.base_status = ""
        self._requested = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a reload."""
        self._requested.set()

    def start(self) -> None:
        """Start the thread. A reload requested before the start runs at once."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hipfuse-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the reload in progress, if any."""
        self._stop.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._requested.wait()
            if self._stop.is_set():
                return
            self._requested.clear()
            if self.notifier is not None:
                # MONOTONIC_USEC lets systemd tell this reload from an earlier one.
                monotonic_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                self.notifier.send(RELOADING="1", MONOTONIC_USEC=str(monotonic_us))
            result: ReloadResult | None = None
            try:
                result = reload_settings(self.service, self.config)
            except Exception:  # keep the node running on its current settings
                log.exception("settings_reload_failed", config=str(self.config))
            if self.notifier is not None:
                # The outcome stays visible in systemctl status whatever the log level.
                outcome = describe_reload(result, time.time())
                status = f"{self.base_status}; {outcome}" if self.base_status else outcome
                self.notifier.send(READY="1", STATUS=status)
