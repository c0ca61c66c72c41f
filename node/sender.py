"""Send queued results from the outbox to one destination, with retries and back-off.

One :class:`DestinationSender` thread serves each ``[[destinations]]`` entry,
so a destination that is down delays only its own items. Each round claims
the due items of the destination, sends them over one association and
records each outcome once in the job store:

* stored (success or warning status): the item's job ``succeeded``;
* not stored, attempts left: ``pending`` again, due after
  ``backoff_initial_s * 2 ** (attempts - 1)`` seconds, at most ``backoff_max_s``;
* not stored after ``max_attempts``: ``failed``; the item stays in the outbox
  and in ``hipfuse-node status``.

A study moves to ``done`` when all its items are stored, or to ``failed``
(``send_failed``) when none is left to try and one failed.

A destination with ``tls = true`` is reached over DICOM TLS. A failed TLS
handshake, or a TLS file that cannot be used, fails the round like an
unreachable peer and is retried with the same back-off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog
from pydicom.errors import InvalidDicomError

from hipfuse.config.settings import Destination, NodeSettings, SendSettings
from hipfuse.node.jobstore import JobStore, OutboxItem
from hipfuse.node.metrics import NodeMetrics
from hipfuse.node.scu import AssociationError, FileToStore, Peer, StoreOutcome, store_files
from hipfuse.node.states import StudyState
from hipfuse.node.tls import ClientTLS
from hipfuse.node.wakeup import Wakeup

log = structlog.get_logger(__name__)

StoreFunction = Callable[[Peer, Sequence[FileToStore]], list[StoreOutcome]]

# Items sent over one association; the rest wait for the next round.
BATCH_SIZE = 64


def retry_delay_s(attempts: int, settings: SendSettings) -> float:
    """Return the wait before the next attempt after ``attempts`` failed ones."""
    exponent = max(attempts - 1, 0)
    # Capped before the power so a long outage cannot overflow the float.
    if exponent > 60:
        return settings.backoff_max_s
    return min(settings.backoff_initial_s * 2.0**exponent, settings.backoff_max_s)


def peer_for(destination: Destination, node: NodeSettings) -> Peer:
    """Return the peer of a destination, with the node's AE title, timeouts and TLS settings."""
    return Peer(
        called_ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        calling_ae_title=node.ae_title,
        acse_timeout_s=node.acse_timeout_s,
        dimse_timeout_s=node.dimse_timeout_s,
        network_timeout_s=node.network_timeout_s,
        max_pdu_bytes=node.max_pdu_bytes,
        tls=ClientTLS.from_destination(destination) if destination.tls else None,
    )


class DestinationSender:
    """Sends the outbox items of one destination.

    Parameters
    ----------
    destination
        The ``[[destinations]]`` entry.
    jobstore
        The node's job store.
    send_settings, node_settings
        ``[send]`` (attempts and back-off) and ``[node]`` (AE title, timeouts).
    store
        Sends files over one association; tests pass a fake.
    clock
        Seconds since the epoch for retry times.
    metrics
        Counts retried and failed sends; ``None`` counts nothing.
    """

    def __init__(
        self,
        destination: Destination,
        jobstore: JobStore,
        send_settings: SendSettings,
        node_settings: NodeSettings,
        *,
        store: StoreFunction = store_files,
        clock: Callable[[], float] = time.time,
        wake: Wakeup | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.destination = destination
        self.jobstore = jobstore
        self.settings = send_settings
        self.peer = peer_for(destination, node_settings)
        self.store = store
        self.clock = clock
        self.wake = wake
        self.metrics = metrics

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Send due items until ``stop`` is set; a round in progress is finished first."""
        while not stop.is_set():
            try:
                handled = self.run_once()
            except Exception:  # a job store error; logged, and the loop tries again
                log.exception("sender_error", destination=self.destination.name)
                handled = 0
            if not handled:
                if self.wake is not None:
                    self.wake.wait(stop, interval_s)
                else:
                    stop.wait(interval_s)

    def run_once(self) -> int:
        """Send the due items of the destination once; return how many were tried."""
        items = self.jobstore.claim_due_sends(self.destination.name, limit=BATCH_SIZE)
        if not items:
            return 0
        started_at = self.clock()
        outcomes = self._send(items)
        studies = []
        for item in items:
            error, elapsed_s = outcomes[item.job_id]
            # A stored item counts as sent when its response came, not when the
            # association's release ended.
            sent_at = started_at + elapsed_s if elapsed_s is not None else None
            self._record(item, error, started_at, sent_at)
            if item.study_instance_uid not in studies:
                studies.append(item.study_instance_uid)
        for study_uid in studies:
            state = self.jobstore.settle_study_sends(study_uid)
            if state is not None:
                level = log.error if state is StudyState.FAILED else log.info
                level(f"study_{state.value}", study_instance_uid=study_uid)
        return len(items)

    def _send(self, items: Sequence[OutboxItem]) -> dict[int, tuple[str | None, float | None]]:
        """Send the items; return each job id's error (``None`` when stored) and response time.

        The response time is in seconds from the start of the sending, ``None``
        where no response came.
        """
        errors: dict[int, tuple[str | None, float | None]] = {}
        files: list[tuple[OutboxItem, FileToStore]] = []
        for item in items:
            try:
                files.append((item, FileToStore.from_path(item.path)))
            except OSError as error:
                message = f"result file {item.path} cannot be read: {error.strerror}"
                errors[item.job_id] = (message, None)
            except InvalidDicomError as error:
                message = f"result file {item.path} is not a DICOM file: {error}"
                errors[item.job_id] = (message, None)
        if not files:
            return errors
        try:
            outcomes = self.store(self.peer, [file for _, file in files])
        except AssociationError as error:
            return errors | {item.job_id: (str(error), None) for item, _ in files}
        except Exception as error:  # a pynetdicom or encoding error: retried like a failure
            log.exception("send_error", destination=self.destination.name, items=len(files))
            message = f"sending failed: {type(error).__name__}: {error}"
            return errors | {item.job_id: (message, None) for item, _ in files}
        for (item, _), outcome in zip(files, outcomes, strict=True):
            if outcome.stored and outcome.status != 0:
                log.warning(
                    "result_stored_with_warning",
                    destination=self.destination.name,
                    sop_instance_uid=item.sop_instance_uid,
                    status=f"0x{outcome.status:04X}",
                )
            errors[item.job_id] = (None if outcome.stored else outcome.error, outcome.elapsed_s)
        return errors

    def _record(
        self, item: OutboxItem, error: str | None, started_at: float, sent_at: float | None
    ) -> None:
        ids = {
            "study_instance_uid": item.study_instance_uid,
            "sop_instance_uid": item.sop_instance_uid,
            "destination": self.destination.name,
            "job_id": item.job_id,
            "attempt": item.attempts,
        }
        if error is None:
            self.jobstore.finish_job(
                item.job_id, succeeded=True, started_at=started_at, now=sent_at
            )
            log.info("result_sent", **ids, sop_class_uid=item.sop_class_uid)
            return
        if item.attempts >= self.settings.max_attempts:
            self.jobstore.finish_job(
                item.job_id, succeeded=False, error=error, started_at=started_at
            )
            log.error("send_failed", **ids, error=error, max_attempts=self.settings.max_attempts)
            if self.metrics is not None:
                self.metrics.send_failed(self.destination.name)
            return
        delay_s = retry_delay_s(item.attempts, self.settings)
        self.jobstore.finish_job(
            item.job_id,
            succeeded=False,
            error=error,
            retry_at=self.clock() + delay_s,
            started_at=started_at,
        )
        log.warning("send_retry", **ids, error=error, retry_in_s=round(delay_s, 3))
        if self.metrics is not None:
            self.metrics.send_retried(self.destination.name)
