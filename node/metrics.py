"""Prometheus metrics of the node, kept in a registry the node owns.

:class:`NodeMetrics` contains the counters and the histogram that the SCP,
assembler, worker and senders update where they log the matching event, and
reads the queue depths from the job store at scrape time. Each instance has its
own :class:`~prometheus_client.CollectorRegistry`, never the process-wide one,
so two nodes in one process (as in tests) do not share values.

================================================  =============================
metric                                            updated at
================================================  =============================
``hipfuse_instances_received_total``              ``instance_stored``
``hipfuse_associations_rejected_total{reason}``   ``association_rejected``
``hipfuse_tls_handshakes_failed_total{reason}``   ``tls_handshake_failed``
``hipfuse_studies_completed_total{outcome}``      ``study_skipped``,
                                                  ``analysis_finished``,
                                                  ``analysis_failed``
``hipfuse_analysis_duration_seconds``             ``analysis_finished``
``hipfuse_send_retries_total{destination}``       ``send_retry``
``hipfuse_send_failures_total{destination}``      ``send_failed``
``hipfuse_studies{state}``                        read at scrape time
``hipfuse_outbox_items{destination,state}``       read at scrape time
``hipfuse_model_bundle_info{name,version,...}``   when the bundle is loaded
================================================  =============================
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hipfuse.node.scp import RejectReason
from hipfuse.node.states import JobState, StudyState

if TYPE_CHECKING:
    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.node.jobstore import JobStore

log = structlog.get_logger(__name__)

# Upper bounds of the analysis duration buckets, in seconds. The demo-preset
# test bundle takes about 3.5 s per study on 2 CPU cores; full-size backbones
# take longer. A study slower than 120 s is counted only in the +Inf bucket.
ANALYSIS_DURATION_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0)


class StudyOutcome(StrEnum):
    """Outcome of a study at the end of the analysis stage (label ``outcome``)."""

    ANALYSED = "analysed"
    SKIPPED = "skipped"
    FAILED = "failed"


class ProtocolRejectReason(StrEnum):
    """Reasons pynetdicom rejects an association itself, before the allow-list is read."""

    CALLED_AE_TITLE_NOT_RECOGNISED = "called_ae_title_not_recognised"
    LOCAL_LIMIT_EXCEEDED = "local_limit_exceeded"
    OTHER = "other"


def protocol_reject_reason(source: int | None, diagnostic: int | None) -> ProtocolRejectReason:
    """Return the reason for the Result Source and Reason/Diag. of an A-ASSOCIATE-RJ.

    The codes are those of PS3.8 Table 9-21.
    """
    # Source 1 is the service user, reason 7 "called-AE-title-not-recognized";
    # source 3 is the presentation service provider, reason 2 "local-limit-exceeded".
    if (source, diagnostic) == (1, 7):
        return ProtocolRejectReason.CALLED_AE_TITLE_NOT_RECOGNISED
    if (source, diagnostic) == (3, 2):
        return ProtocolRejectReason.LOCAL_LIMIT_EXCEEDED
    return ProtocolRejectReason.OTHER


class JobStoreCollector(Collector):
    """Reads study and outbox counts from the job store at each scrape.

    Parameters
    ----------
    jobstore
        The node's job store; must stay open while the registry is scraped.
    destinations
        Names of the configured destinations, reported at 0 before any item exists.
    """

    def __init__(self, jobstore: JobStore, destinations: Sequence[str]) -> None:
        self.jobstore = jobstore
        self.destinations = list(destinations)

    def describe(self) -> Iterable[Metric]:
        """Return the metric families without values, so registering reads nothing."""
        return [self._studies_family(), self._outbox_family()]

    def collect(self) -> Iterator[Metric]:
        """Yield the current counts; nothing when the job store cannot be read."""
        try:
            study_counts = self.jobstore.count_studies_by_state()
            summaries = self.jobstore.summarise_outbox()
        except sqlite3.Error as error:
            # The scrape still returns the other metrics; the missing gauges show the gap.
            log.warning("metrics_jobstore_read_failed", error=str(error))
            return
        studies = self._studies_family()
        for state in StudyState:
            studies.add_metric([state.value], study_counts.get(state, 0))
        yield studies

        outbox = self._outbox_family()
        counts = {summary.destination: summary.counts for summary in summaries}
        names = [*self.destinations, *sorted(set(counts) - set(self.destinations))]
        for name in names:
            for state in JobState:
                outbox.add_metric([name, state.value], counts.get(name, {}).get(state, 0))
        yield outbox

    @staticmethod
    def _studies_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "hipfuse_studies", "Studies in the job store, by state.", labels=["state"]
        )

    @staticmethod
    def _outbox_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "hipfuse_outbox_items",
            "Result objects in the outbox, by destination and sending job state.",
            labels=["destination", "state"],
        )


class NodeMetrics:
    """The node's metrics and the registry that ``/metrics`` exposes.

    Parameters
    ----------
    destinations
        Names of the configured destinations; their per-destination counters
        start at 0, so a rate over them exists before the first failure.
    """

    def __init__(self, destinations: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        # Receiving.
        self.instances_received = Counter(
            "hipfuse_instances_received",
            "DICOM instances stored and acknowledged with C-STORE Success.",
            registry=self.registry,
        )
        self.associations_rejected = Counter(
            "hipfuse_associations_rejected",
            "Association requests rejected, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.tls_handshakes_failed = Counter(
            "hipfuse_tls_handshakes_failed",
            "TLS handshakes on the DICOM port that failed, by OpenSSL's reason.",
            ["reason"],
            registry=self.registry,
        )

        # Analysis.
        self.studies_completed = Counter(
            "hipfuse_studies_completed",
            "Studies that left the analysis stage, by outcome (analysed, skipped, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.analysis_duration = Histogram(
            "hipfuse_analysis_duration_seconds",
            "Seconds from claiming a study to its results queued, without the wait for "
            "clinical text; successful analyses only.",
            buckets=ANALYSIS_DURATION_BUCKETS_S,
            registry=self.registry,
        )

        # Sending.
        self.send_retries = Counter(
            "hipfuse_send_retries",
            "C-STORE attempts of a result that failed and were scheduled again.",
            ["destination"],
            registry=self.registry,
        )
        self.send_failures = Counter(
            "hipfuse_send_failures",
            "Results that failed their last allowed attempt and stay unsent in the outbox.",
            ["destination"],
            registry=self.registry,
        )
        self.model_bundle = Info(
            "hipfuse_model_bundle", "The model bundle the node loaded.", registry=self.registry
        )

        # Every label value is exported from the start, at zero.
        for reason in [*RejectReason, *ProtocolRejectReason]:
            self.associations_rejected.labels(reason=reason.value)
        for outcome in StudyOutcome:
            self.studies_completed.labels(outcome=outcome.value)
        for name in destinations:
            self.send_retries.labels(destination=name)
            self.send_failures.labels(destination=name)

    def watch_jobstore(self, jobstore: JobStore, destinations: Sequence[str]) -> None:
        """Report the job store's study and outbox counts at each scrape."""
        self.registry.register(JobStoreCollector(jobstore, destinations))

    def set_bundle(self, config: BundleConfig) -> None:
        """Record the loaded bundle's name, version and intended use."""
        self.model_bundle.info(
            {
                "name": config.name,
                "version": config.version,
                "intended_use": config.intended_use.value,
            }
        )

    def instance_received(self) -> None:
        """Count one acknowledged instance."""
        self.instances_received.inc()

    def association_rejected(self, reason: str) -> None:
        """Count one rejected association request; ``reason`` is a reject reason value."""
        self.associations_rejected.labels(reason=reason).inc()

    def tls_handshake_failed(self, reason: str) -> None:
        """Count one failed TLS handshake; ``reason`` is OpenSSL's short reason."""
        self.tls_handshakes_failed.labels(reason=reason).inc()

    def association_rejected_by_protocol(self, source: int | None, diagnostic: int | None) -> None:
        """Count one association that pynetdicom rejected, from its A-ASSOCIATE-RJ fields."""
        self.association_rejected(protocol_reject_reason(source, diagnostic).value)

    def study_completed(self, outcome: StudyOutcome, duration_s: float | None = None) -> None:
        """Count one study's outcome; ``duration_s`` goes into the analysis histogram."""
        self.studies_completed.labels(outcome=outcome.value).inc()
        if duration_s is not None:
            self.analysis_duration.observe(duration_s)

    def send_retried(self, destination: str) -> None:
        """Count one failed attempt that will be retried."""
        self.send_retries.labels(destination=destination).inc()

    def send_failed(self, destination: str) -> None:
        """Count one result that has no attempt left."""
        self.send_failures.labels(destination=destination).inc()
