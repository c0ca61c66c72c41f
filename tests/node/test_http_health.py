"""Health checks, the C-ECHO monitor and the SCP's counters, without a model bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_helpers import ct_dataset, free_port, write_dataset, write_settings
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from hipfuse.node.health import EchoMonitor, HealthCheck, HealthChecker
from hipfuse.node.jobstore import JobStore
from hipfuse.node.metrics import NodeMetrics, ProtocolRejectReason, protocol_reject_reason
from hipfuse.node.scp import start_scp
from hipfuse.node.scu import AssociationError, Peer, echo
from hipfuse.node.spool import Spool


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedEcho:
    """Stands in for scu.echo: returns the next status, or raises AssociationError for None."""

    def __init__(self, statuses: list[int | None]) -> None:
        self.statuses = list(statuses)

    def __call__(self, peer: Peer) -> int:
        status = self.statuses.pop(0)
        if status is None:
            raise AssociationError(f"{peer.describe()} could not be reached")
        return status


PEER = Peer("PACS", "127.0.0.1", 11113, "HIPFUSE")


def checker(
    tmp_path: Path, echoes: EchoMonitor, clock: FakeClock, jobstore: JobStore | None = None
) -> HealthChecker:
    return HealthChecker(
        data_dir=tmp_path,
        min_free_bytes=1,
        echo_max_age_s=10.0,
        jobstore=jobstore,
        scp=None,
        bundle_config=None,
        echoes=echoes,
        clock=clock,
    )


# (echo statuses, seconds after the last echo, expected ok, words in the message)
ECHO_CASES = [
    ([], 0.0, False, "no C-ECHO sent yet"),
    ([0], 5.0, True, "last successful C-ECHO 5.0 s ago"),
    ([0], 10.5, False, "more than echo_max_age_s (10.0 s)"),
    ([0, None], 10.5, False, "could not be reached"),
    ([None], 0.0, False, "no C-ECHO has succeeded since the node started"),
    ([0x0110], 0.0, False, "returned C-ECHO status 0x0110"),
    ([None, 0], 1.0, True, "last successful C-ECHO 1.0 s ago"),
]


@pytest.mark.parametrize(
    ("statuses", "age_s", "ok", "words"),
    ECHO_CASES,
    ids=["never", "recent", "too-old", "old-then-down", "down", "failure-status", "recovered"],
)
def test_destination_echo_check(
    tmp_path: Path, statuses: list[int | None], age_s: float, ok: bool, words: str
) -> None:
    clock = FakeClock()
    monitor = EchoMonitor({"pacs": PEER}, 1.0, echo_function=ScriptedEcho(statuses), clock=clock)
    for _ in statuses:
        monitor.echo_one("pacs")
    clock.now += age_s

    result = checker(tmp_path, monitor, clock).check_destination("pacs")

    assert result.check is HealthCheck.DESTINATION_ECHO
    assert result.key == "destination_echo:pacs"
    assert result.ok is ok
    assert words in result.message


def test_echo_failures_counted() -> None:
    monitor = EchoMonitor({"pacs": PEER}, 1.0, echo_function=ScriptedEcho([None, None, 0, None]))

    counts = [monitor.echo_one("pacs").consecutive_failures for _ in range(4)]

    assert counts == [1, 2, 0, 1]


def test_report_lists_failing_checks(tmp_path: Path) -> None:
    clock = FakeClock()
    monitor = EchoMonitor({"pacs": PEER}, 1.0, echo_function=ScriptedEcho([0]), clock=clock)
    monitor.echo_one("pacs")
    jobstore = JobStore.in_data_dir(tmp_path / "data")
    try:
        report = checker(tmp_path, monitor, clock, jobstore).check()
    finally:
        jobstore.close()

    body = report.to_json()
    assert report.healthy is False
    assert body["status"] == "fail"
    # No SCP and no bundle were given; the job store, disk and destination pass.
    assert body["failing"] == ["scp_listening", "model_bundle"]
    assert [check["check"] for check in body["checks"]] == [
        "scp_listening",
        "job_store_writable",
        "disk_space",
        "model_bundle",
        "destination_echo",
    ]


def test_jobstore_check_fails_when_closed(tmp_path: Path) -> None:
    monitor = EchoMonitor({}, 1.0)
    jobstore = JobStore.in_data_dir(tmp_path / "data")
    health = checker(tmp_path, monitor, FakeClock(), jobstore)
    assert health.check_jobstore().ok is True

    jobstore.close()
    result = health.check_jobstore()

    assert result.ok is False
    assert "a write transaction on" in result.message


def test_probe_write_leaves_no_row(tmp_path: Path) -> None:
    with JobStore.in_data_dir(tmp_path / "data") as jobstore:
        jobstore.probe_write()
        jobstore.probe_write()
        versions = jobstore._db.execute("SELECT version FROM schema_version").fetchall()

    assert 0 not in [version for (version,) in versions]


def test_disk_check_fails_below_minimum(tmp_path: Path) -> None:
    health = HealthChecker(
        data_dir=tmp_path,
        min_free_bytes=2**62,
        echo_max_age_s=10.0,
        jobstore=None,
        scp=None,
        bundle_config=None,
        echoes=EchoMonitor({}, 1.0),
    )

    result = health.check_disk_space()

    assert result.ok is False
    assert "storage.min_free_bytes (4611686018427387904)" in result.message
    assert result.details["min_free_bytes"] == 2**62


REJECT_CASES = [
    (1, 7, ProtocolRejectReason.CALLED_AE_TITLE_NOT_RECOGNISED),
    (3, 2, ProtocolRejectReason.LOCAL_LIMIT_EXCEEDED),
    (2, 2, ProtocolRejectReason.OTHER),
    (None, None, ProtocolRejectReason.OTHER),
]


@pytest.mark.parametrize(
    ("source", "diagnostic", "expected"),
    REJECT_CASES,
    ids=["called-ae", "limit", "protocol-version", "unknown"],
)
def test_protocol_reject_reason(
    source: int | None, diagnostic: int | None, expected: ProtocolRejectReason
) -> None:
    assert protocol_reject_reason(source, diagnostic) is expected


@pytest.fixture
def verification_scp() -> Iterator[int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    yield int(server.server_address[1])
    server.shutdown()


def test_echo_reaches_verification_scp(verification_scp: int) -> None:
    peer = Peer("PACS", "127.0.0.1", verification_scp, "HIPFUSE", acse_timeout_s=5.0)

    assert echo(peer, connection_timeout_s=5.0) == 0


def test_echo_raises_when_unreachable() -> None:
    peer = Peer("PACS", "127.0.0.1", free_port(), "HIPFUSE", acse_timeout_s=5.0)

    with pytest.raises(AssociationError, match="could not be reached"):
        echo(peer, connection_timeout_s=5.0)


def _sample(metrics: NodeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_scp_counts_instances_and_rejections(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path / "node.toml",
        tmp_path / "data",
        free_port(),
        extra_node="require_called_ae_title = true",
    )
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [
        write_dataset(ct_dataset(study_uid, series_uid, index), tmp_path / f"ct{index}.dcm")
        for index in range(3)
    ]
    metrics = NodeMetrics()
    jobstore = JobStore.in_data_dir(settings.storage.data_dir)
    server = start_scp(settings, jobstore, Spool(settings.storage.data_dir), metrics=metrics)
    try:
        assert server.is_listening is True
        sender = AE(ae_title="STORESCU")
        sender.add_requested_context(CTImageStorage)
        association = sender.associate("127.0.0.1", server.port, ae_title="HIPFUSE")
        assert association.is_established
        statuses = [int(association.send_c_store(path).Status) for path in files]
        association.release()

        unlisted = AE(ae_title="UNLISTED")
        unlisted.add_requested_context(Verification)
        assert unlisted.associate("127.0.0.1", server.port, ae_title="HIPFUSE").is_rejected
        wrong_called = AE(ae_title="STORESCU")
        wrong_called.add_requested_context(Verification)
        assert wrong_called.associate("127.0.0.1", server.port, ae_title="OTHER").is_rejected
    finally:
        server.stop()
        jobstore.close()

    assert server.is_listening is False
    assert statuses == [0, 0, 0]
    assert _sample(metrics, "hipfuse_instances_received_total") == 3
    rejected = "hipfuse_associations_rejected_total"
    assert _sample(metrics, rejected, reason="calling_ae_title_not_recognised") == 1
    assert _sample(metrics, rejected, reason="called_ae_title_not_recognised") == 1
    assert _sample(metrics, rejected, reason="peer_address_not_allowed") == 0
