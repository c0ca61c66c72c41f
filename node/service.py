"""Lifecycle of the node: start every part in order, stop them cleanly.

:meth:`NodeService.start` opens the job store, puts back work a stopped
process left half done and loads the model bundle once. It then starts the
HL7 intake (with ``[hl7] enabled``), the storage SCP, the admin HTTP
endpoint (with ``[http] enabled``), the study assembler, the analysis worker,
one sender per destination and the retention housekeeper, each in its own
thread, and watches the model bundle folder (``[model] watch_bundle``) and
the DICOM drop folder (``[dropfolder] enabled``). :meth:`NodeService.stop`
stops the HTTP endpoint, then stops accepting associations and HL7 messages,
lets the worker and senders finish what they hold, and leaves queued work in
the job store for the next start.
"""

from __future__ import annotations

import functools
import gc
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.config.settings import Settings
from hipfuse.node.wakeup import Wakeup

if TYPE_CHECKING:
    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.integrations.hl7.service import HL7Service
    from hipfuse.integrations.hl7.store import HL7Store
    from hipfuse.node.assembly import StudyAssembler
    from hipfuse.node.bundle_watch import BundleWatcher
    from hipfuse.node.dropfolder import DropFolderWatcher
    from hipfuse.node.http_endpoint import AdminEndpoint
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.metrics import NodeMetrics
    from hipfuse.node.scp import ScpServer
    from hipfuse.node.sender import DestinationSender
    from hipfuse.node.worker import AnalysisWorker

log = structlog.get_logger(__name__)

# The demo bundle that ``hipfuse-train demo-bundle --out bundles/demo`` builds,
# relative to the working directory, used when ``[model] bundle_dir`` is not set.
DEFAULT_BUNDLE_DIR = Path("bundles/demo")
# Seconds :meth:`NodeService.stop` waits for each thread; an analysis still
# running after that is redone at the next start.
DEFAULT_STOP_TIMEOUT_S = 30.0
# Minimum seconds between two assembler runs that stored instances start.
ASSEMBLY_WAKE_SPACING_S = 0.02


class ServiceError(RuntimeError):
    """The node cannot start; the message names the setting or file to fix."""


def runtime_problems(settings: Settings) -> list[tuple[str, str]]:
    """Return settings that are valid but that this host cannot run, as (path, reason).

    These are the TLS certificate, key and CA files (missing, unreadable, not
    matching or expired) and a drop folder that overlaps the data folder.
    """
    from hipfuse.node.dropfolder import dropfolder_problems
    from hipfuse.node.tls import tls_problems

    return tls_problems(settings) + dropfolder_problems(settings)


def resolve_bundle_dir(settings: Settings, override: Path | None = None) -> Path:
    """Return the bundle folder: ``override``, else ``[model] bundle_dir``, else the demo."""
    if override is not None:
        return Path(override)
    if settings.model.bundle_dir is not None:
        return settings.model.bundle_dir
    return DEFAULT_BUNDLE_DIR


def bundle_problems(settings: Settings, override: Path | None = None) -> list[tuple[str, str]]:
    """Return ``[model] bundle_dir`` as a (path, reason) problem when it is not a folder.

    Only the folder is checked, before torch is imported; loading the bundle
    checks its files.
    """
    bundle_dir = resolve_bundle_dir(settings, override)
    if bundle_dir.is_dir():
        return []
    if bundle_dir == DEFAULT_BUNDLE_DIR:
        fix = (
            "set [model] bundle_dir, or build the demo bundle with "
            "hipfuse-train demo-bundle --out bundles/demo"
        )
    else:
        fix = "check the path, or copy the bundle folder there"
    return [
        ("model.bundle_dir", f"model bundle {bundle_dir} cannot be loaded: no such folder ({fix})")
    ]


def _torch_device(device: str) -> str | None:
    # load_bundle picks CUDA when available for None, which is what "auto" means.
    return None if device == "auto" else device


class NodeService:
    """The running node.

    Parameters
    ----------
    settings
        Validated node settings.
    bundle_dir
        Model bundle folder; overrides ``[model] bundle_dir``.
    clock
        Seconds since the epoch for every part; tests pass a controllable one.
    poll_interval_s
        Seconds the assembler, worker and senders wait when they find no work.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bundle_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self.bundle_dir = resolve_bundle_dir(settings, bundle_dir)
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.jobstore: JobStore | None = None
        self._scp_store: JobStore | None = None
        self.scp: ScpServer | None = None
        self.hl7_store: HL7Store | None = None
        self.hl7: HL7Service | None = None
        self.metrics: NodeMetrics | None = None
        self.http: AdminEndpoint | None = None
        # The running parts whose settings a reload (hipfuse.node.reload) changes.
        self.assembler: StudyAssembler | None = None
        self.worker: AnalysisWorker | None = None
        self.senders: dict[str, DestinationSender] = {}
        self.dropfolder: DropFolderWatcher | None = None
        self.bundle_watcher: BundleWatcher | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wakes: list[Wakeup] = []

    @property
    def port(self) -> int:
        """TCP port of the running SCP."""
        if self.scp is None:
            raise RuntimeError("the node is not running; call start() first")
        return self.scp.port

    @property
    def hl7_port(self) -> int:
        """TCP port of the running MLLP listener."""
        if self.hl7 is None:
            raise RuntimeError("the HL7 intake is not running; set [hl7] enabled and start()")
        return self.hl7.port

    @property
    def http_port(self) -> int:
        """TCP port of the running admin HTTP endpoint."""
        if self.http is None:
            raise RuntimeError("the HTTP endpoint is not running; set [http] enabled and start()")
        return self.http.port

    def start(self) -> None:
        """Start every part; raise :class:`ServiceError` when the node cannot run."""
        problems = runtime_problems(self.settings)
        if problems:
            raise ServiceError("; ".join(f"{path}: {reason}" for path, reason in problems))
        missing_bundle = bundle_problems(self.settings, self.bundle_dir)
        if missing_bundle:
            # Checked before torch is imported, so a wrong path fails at once.
            raise ServiceError(missing_bundle[0][1])

        from hipfuse.inference.model.bundle import BundleError, load_bundle
        from hipfuse.inference.pipeline import analyze_study
        from hipfuse.node.assembly import StudyAssembler
        from hipfuse.node.clinical_text import TextGatherer
        from hipfuse.node.encode import DeviceIdentity
        from hipfuse.node.jobstore import JobStore
        from hipfuse.node.metrics import NodeMetrics
        from hipfuse.node.outbox import OutboxFolder
        from hipfuse.node.retention import Housekeeper
        from hipfuse.node.scp import start_scp
        from hipfuse.node.sender import DestinationSender
        from hipfuse.node.spool import Spool
        from hipfuse.node.spool_recovery import record_unrecorded_instances
        from hipfuse.node.tls import TLSFileError
        from hipfuse.node.worker import AnalysisWorker

        settings = self.settings
        data_dir = settings.storage.data_dir
        try:
            jobstore = JobStore.in_data_dir(data_dir, clock=self.clock)
        except OSError as error:
            raise ServiceError(
                f"storage.data_dir {data_dir} cannot be used: {error.strerror}; "
                "create it or point storage.data_dir at a writable folder"
            ) from error
        self.jobstore = jobstore
        self._recover(jobstore)

        try:
            bundle = load_bundle(self.bundle_dir, device=_torch_device(settings.model.device))
        except BundleError as error:
            jobstore.close()
            raise ServiceError(
                f"model bundle {self.bundle_dir} cannot be loaded: {error} "
                "(set [model] bundle_dir, or build the demo bundle with "
                "hipfuse-train demo-bundle --out bundles/demo)"
            ) from error
        # load_bundle logs bundle_loaded with name, version, device and load time.

        names = [destination.name for destination in settings.destinations]
        metrics = None
        if settings.http.enabled:
            metrics = NodeMetrics(names)
            metrics.set_bundle(bundle.config)
            metrics.watch_jobstore(jobstore, names)
        self.metrics = metrics

        self._start_hl7(data_dir)
        text = None
        if settings.hl7.enabled or settings.fhir.enabled:
            text = TextGatherer(settings, self.hl7_store)

        outbox = OutboxFolder(data_dir)
        outbox.prepare()
        send_wakes = [Wakeup() for _ in settings.destinations]
        analyse_wake = Wakeup()
        # Spaced: early completion classifies the whole study on each run.
        assemble_wake = Wakeup(min_spacing_s=ASSEMBLY_WAKE_SPACING_S)
        self._wakes = [assemble_wake, analyse_wake, *send_wakes]
        assembler = StudyAssembler(
            jobstore,
            settings.study,
            clock=self.clock,
            wake=assemble_wake,
            on_complete=analyse_wake.notify,
            metrics=metrics,
        )
        worker = AnalysisWorker(
            jobstore,
            outbox,
            analyze=functools.partial(analyze_study, bundle),
            bundle_config=bundle.config,
            destinations=[destination.name for destination in settings.destinations],
            device=DeviceIdentity(station_name=settings.node.ae_title),
            clock=self.clock,
            text=text,
            wake=analyse_wake,
            on_results=lambda: [wake.notify() for wake in send_wakes],
            metrics=metrics,
        )
        spool = Spool(data_dir)
        spool.prepare()
        recovered = record_unrecorded_instances(spool, jobstore)
        if recovered:
            log.warning("spooled_instances_recovered", count=recovered)
        # The SCP records instances on a connection of its own whose commits are
        # not synced: the spooled file is, and start-up recovers from it.
        self._scp_store = JobStore.in_data_dir(data_dir, clock=self.clock, durable_commits=False)
        try:
            self.scp = start_scp(
                settings,
                self._scp_store,
                spool,
                clock=self.clock,
                on_stored=assemble_wake.notify,
                metrics=metrics,
            )
        except TLSFileError as error:
            self._abandon_start(jobstore)
            raise ServiceError(f"cannot start DICOM TLS: {error}") from error
        except OSError as error:
            self._abandon_start(jobstore)
            node = settings.node
            raise ServiceError(
                f"cannot listen on {node.bind_address}:{node.port}: {error.strerror}; "
                "choose a free [node] port or another bind_address"
            ) from error
        if metrics is not None:
            self._start_http(metrics, bundle.config)
            worker.on_bundle_swapped = self._report_bundle

        self._start_watchers(worker, bundle.config)

        interval = self.poll_interval_s
        self.assembler, self.worker = assembler, worker
        self._spawn("assembler", assembler.run, interval)
        self._spawn("worker", worker.run, interval)
        for destination, wake in zip(settings.destinations, send_wakes, strict=True):
            sender = DestinationSender(
                destination,
                jobstore,
                settings.send,
                settings.node,
                clock=self.clock,
                wake=wake,
                metrics=metrics,
            )
            self.senders[destination.name] = sender
            self._spawn(f"sender-{destination.name}", sender.run, interval)
        housekeeper = Housekeeper(
            jobstore,
            data_dir,
            settings.storage,
            clock=self.clock,
            hl7_store=self.hl7_store,
            hl7_settings=settings.hl7,
            dropfolder_settings=settings.dropfolder,
        )
        self._spawn("housekeeping", housekeeper.run, settings.storage.housekeeping_interval_s)
        # The model, the imported modules and the settings live as long as the
        # process. Frozen, they are no longer scanned by the collector's full
        # collections, each of which otherwise took 0.3 s of a study's latency.
        gc.freeze()
        log.info(
            "node_started",
            ae_title=settings.node.ae_title,
            port=self.scp.port,
            data_dir=str(data_dir),
            destinations=[destination.name for destination in settings.destinations],
            hl7_port=self.hl7.port if self.hl7 is not None else None,
            fhir=settings.fhir.enabled,
            http_port=self.http.port if self.http is not None else None,
            dropfolder=str(settings.dropfolder.dir) if self.dropfolder is not None else None,
        )

    def _start_http(self, metrics: NodeMetrics, bundle_config: BundleConfig) -> None:
        """Start the admin HTTP endpoint; on failure stop what started and raise ServiceError."""
        from hipfuse.node.http_endpoint import start_admin_endpoint

        assert self.jobstore is not None and self.scp is not None
        try:
            self.http = start_admin_endpoint(
                self.settings,
                metrics,
                jobstore=self.jobstore,
                scp=self.scp,
                bundle_config=bundle_config,
            )
        except OSError as error:
            self.scp.stop()
            self.scp = None
            self._abandon_start(self.jobstore)
            self.jobstore = None
            http = self.settings.http
            raise ServiceError(
                f"cannot start the HTTP endpoint on {http.bind_address}:{http.port}: "
                f"{error.strerror or error}; choose a free [http] port or another "
                "bind_address, or set [http] enabled = false"
            ) from error

    def _report_bundle(self, bundle_config: BundleConfig) -> None:
        """Show a bundle the worker swapped to in /healthz and /metrics."""
        if self.metrics is not None:
            self.metrics.set_bundle(bundle_config)
        if self.http is not None:
            self.http.health.bundle_config = bundle_config

    def _abandon_start(self, jobstore: JobStore) -> None:
        """Undo a start that failed once the HL7 intake and both store connections were open."""
        self._stop_hl7()
        self._close_hl7_store()
        if self._scp_store is not None:
            self._scp_store.close()
            self._scp_store = None
        jobstore.close()

    def _start_watchers(self, worker: AnalysisWorker, bundle_config: BundleConfig) -> None:
        """Start the drop folder (``[dropfolder] enabled``) and the bundle watcher."""
        from hipfuse.node.bundle_watch import BundleWatcher
        from hipfuse.node.dropfolder import DropFolderWatcher

        settings = self.settings
        if settings.model.watch_bundle:
            self.bundle_watcher = BundleWatcher(
                self.bundle_dir,
                worker,
                bundle_config,
                device=_torch_device(settings.model.device),
                settle_s=settings.model.watch_settle_s,
            )
            self.bundle_watcher.start()
        if settings.dropfolder.enabled:
            assert self.scp is not None and self.scp.storage_scp is not None
            dropfolder = DropFolderWatcher(settings.dropfolder, self.scp.storage_scp)
            try:
                dropfolder.start()
            except OSError as error:
                self.stop()
                raise ServiceError(
                    f"dropfolder.dir {settings.dropfolder.dir} cannot be watched: "
                    f"{error.strerror or error}; create it, make it writable for the node, "
                    "or set [dropfolder] enabled = false"
                ) from error
            self.dropfolder = dropfolder

    def _start_hl7(self, data_dir: Path) -> None:
        """Open the HL7 store and start the MLLP listener when ``[hl7] enabled``."""
        hl7 = self.settings.hl7
        if not hl7.enabled:
            return
        from hipfuse.integrations.hl7.service import HL7Service
        from hipfuse.integrations.hl7.store import HL7Store

        assert self.jobstore is not None
        try:
            self.hl7_store = HL7Store.in_data_dir(data_dir)
        # RuntimeError: the store was written by a newer hipfuse.
        except (OSError, sqlite3.Error, RuntimeError) as error:
            self.jobstore.close()
            self.jobstore = None
            raise ServiceError(
                f"the HL7 store in storage.data_dir {data_dir} cannot be opened: {error}"
            ) from error
        try:
            self.hl7 = HL7Service(hl7, self.hl7_store)
            self.hl7.start()
        except OSError as error:
            self.hl7 = None
            self._close_hl7_store()
            self.jobstore.close()
            self.jobstore = None
            raise ServiceError(
                f"cannot start the HL7 intake on {hl7.bind_address}:{hl7.port}: "
                f"{error.strerror or error}; choose a free [hl7] port or another bind_address, "
                "and check [hl7] watch_dir"
            ) from error

    def _stop_hl7(self) -> None:
        if self.hl7 is not None:
            self.hl7.stop()
            self.hl7 = None

    def _close_hl7_store(self) -> None:
        if self.hl7_store is not None:
            self.hl7_store.close()
            self.hl7_store = None

    def _recover(self, jobstore: JobStore) -> None:
        from hipfuse.node.states import JobKind, StudyState

        studies = jobstore.recover_interrupted()
        analyses = jobstore.fail_interrupted_jobs(
            JobKind.ANALYSE, "interrupted by a stop of the node; the study is analysed again"
        )
        sends = jobstore.requeue_interrupted_sends()
        settled = [
            uid
            for uid in jobstore.studies_in_state(StudyState.SENDING)
            if jobstore.settle_study_sends(uid) is not None
        ]
        if studies or analyses or sends or settled:
            log.warning(
                "interrupted_work_recovered",
                studies=studies,
                analyses=analyses,
                sends=sends,
                settled_studies=settled,
            )

    def _spawn(self, name: str, target: Callable[..., Any], interval_s: float) -> None:
        thread = threading.Thread(
            target=target, args=(self._stop, interval_s), name=f"hipfuse-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """Stop accepting, let running work finish, and close the job store.

        Returns ``False`` when a thread was still busy after ``timeout_s``
        seconds. Its work stays in the job store and is redone at the next start.
        """
        # Stopped first: a health check after this point would report the SCP down.
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        for watcher in (self.dropfolder, self.bundle_watcher):
            if watcher is not None:
                watcher.stop()
        self.dropfolder = self.bundle_watcher = None
        # Stopped before the worker: no message is acknowledged that the store
        # cannot keep. The store stays open until the worker has finished.
        self._stop_hl7()
        self._stop.set()
        for wake in self._wakes:
            wake.notify()
        deadline = time.monotonic() + timeout_s
        busy = []
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                busy.append(thread.name)
        self._threads = []
        if busy:
            log.warning("node_stop_timed_out", busy_threads=busy, timeout_s=timeout_s)
        else:
            self._close_hl7_store()
            if self._scp_store is not None:
                self._scp_store.close()
                self._scp_store = None
            if self.jobstore is not None:
                self.jobstore.close()
                self.jobstore = None
        log.info("node_stopped", clean=not busy)
        return not busy

    def wait(
        self,
        stop: threading.Event,
        check_interval_s: float = 1.0,
        on_healthy: Callable[[], object] | None = None,
    ) -> None:
        """Block until ``stop`` is set (by a signal handler, for example).

        Every ``check_interval_s`` seconds the assembler, worker and sender
        threads are checked. ``on_healthy`` (the systemd watchdog ping) is
        called after each check that finds all of them alive. A dead thread
        raises :class:`ServiceError` instead, so the pings stop.
        """
        while not stop.wait(check_interval_s):
            dead = [thread.name for thread in self._threads if not thread.is_alive()]
            if dead:
                raise ServiceError(f"node threads stopped unexpectedly: {', '.join(dead)}")
            if on_healthy is not None:
                on_healthy()
