"""The outbox sender: outcomes recorded once, retries with back-off, real C-STORE."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pydicom
import pytest
import structlog
from ingest_helpers import ct_dataset, free_port, instance_record
from worker_helpers import FakeClock

from hipfuse.config.settings import Destination, NodeSettings, SendSettings
from hipfuse.node.jobstore import JobStore
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.receiver import Receiver
from hipfuse.node.scu import AssociationError, FileToStore, Peer, StoreOutcome, store_files
from hipfuse.node.sender import DestinationSender, retry_delay_s
from hipfuse.node.states import FailureCode, JobState, StudyState

STUDY = "1.2.3"
FINGERPRINT = "f" * 64
SEND = SendSettings(max_attempts=3, backoff_initial_s=10.0, backoff_max_s=25.0)
NODE = NodeSettings(acse_timeout_s=5.0, dimse_timeout_s=10.0, network_timeout_s=10.0)


class FakeStore:
    """Stands in for store_files: returns a planned status or error for each file."""

    def __init__(self) -> None:
        self.calls: list[list[Path]] = []
        self.down = False
        self.statuses: dict[int, int] = {}  # index in the call -> status

    def __call__(self, peer: Peer, files: list[FileToStore]) -> list[StoreOutcome]:
        self.calls.append([file.path for file in files])
        if self.down:
            raise AssociationError(f"{peer.describe()} could not be reached (connection refused)")
        outcomes = []
        for index, file in enumerate(files):
            status = self.statuses.get(index, 0x0000)
            error = f"returned C-STORE status 0x{status:04X}" if status >= 0xA000 else None
            outcomes.append(StoreOutcome(file.path, status, error))
        return outcomes


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock):
    with JobStore(tmp_path / "jobs.sqlite3", clock=clock) as jobstore:
        yield jobstore


def queue_results(store: JobStore, tmp_path: Path, count: int = 3) -> list[Path]:
    """Put STUDY through analysis with ``count`` real result files queued for "pacs"."""
    store.record_instance(instance_record("1.2.3.1.1"))
    store._db.execute(
        "UPDATE studies SET input_fingerprint = ? WHERE study_instance_uid = ?",
        (FINGERPRINT, STUDY),
    )
    store.transition(STUDY, StudyState.COMPLETE)
    store.transition(STUDY, StudyState.ANALYSING)
    folder = OutboxFolder(tmp_path)
    written = folder.write(STUDY, [ct_dataset(STUDY, "1.2.3.9", index) for index in range(count)])
    store.record_results(STUDY, fingerprint=FINGERPRINT, objects=written, destinations=["pacs"])
    return [obj.path for obj in written]


def sender(store: JobStore, fake, clock: FakeClock, port: int = 11113) -> DestinationSender:
    destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    return DestinationSender(destination, store, SEND, NODE, store=fake, clock=clock)


class TimedStore(FakeStore):
    """Return the response to file ``i`` ``i + 1`` seconds after the sending began."""

    def __call__(self, peer: Peer, files: list[FileToStore]) -> list[StoreOutcome]:
        outcomes = super().__call__(peer, files)
        return [
            dataclasses.replace(outcome, elapsed_s=float(index + 1))
            for index, outcome in enumerate(outcomes)
        ]


@pytest.mark.parametrize(
    ("attempts", "delay_s"),
    [(1, 10.0), (2, 20.0), (3, 25.0), (1000, 25.0)],
    ids=["first", "doubled", "capped", "long-outage"],
)
def test_retry_delay_doubles_up_to_max(attempts: int, delay_s: float) -> None:
    assert retry_delay_s(attempts, SEND) == delay_s


def test_sender_success_recorded_once(store: JobStore, tmp_path: Path, clock) -> None:
    paths = queue_results(store, tmp_path)
    fake = FakeStore()

    with structlog.testing.capture_logs() as logs:
        assert sender(store, fake, clock).run_once() == 3
        assert sender(store, fake, clock).run_once() == 0

    assert fake.calls == [paths]
    assert [item.state for item in store.list_outbox()] == [JobState.SUCCEEDED] * 3
    assert store.get_study(STUDY).state is StudyState.DONE
    sent = [entry for entry in logs if entry["event"] == "result_sent"]
    assert len(sent) == 3
    assert {entry["destination"] for entry in sent} == {"pacs"}


def test_sender_down_retries_then_fails(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path, count=2)
    fake = FakeStore()
    fake.down = True
    worker = sender(store, fake, clock)

    with structlog.testing.capture_logs() as logs:
        worker.run_once()
        items = store.list_outbox()
        assert [(item.state, item.attempts) for item in items] == [(JobState.PENDING, 1)] * 2
        assert items[0].next_attempt_at == 1010.0
        assert "could not be reached" in items[0].last_error

        assert worker.run_once() == 0  # not due yet
        clock.advance(10.0)
        worker.run_once()
        assert store.list_outbox()[0].next_attempt_at == 1030.0
        clock.advance(20.0)
        worker.run_once()

    items = store.list_outbox()
    assert [(item.state, item.attempts) for item in items] == [(JobState.FAILED, 3)] * 2
    study = store.get_study(STUDY)
    assert study.state is StudyState.FAILED
    assert study.state_reason == FailureCode.SEND_FAILED
    events = [entry["event"] for entry in logs]
    assert events.count("send_retry") == 4
    assert events.count("send_failed") == 2


def test_sender_sends_after_destination_returns(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path, count=2)
    fake = FakeStore()
    fake.down = True
    worker = sender(store, fake, clock)
    worker.run_once()

    fake.down = False
    clock.advance(10.0)
    worker.run_once()

    assert [item.state for item in store.list_outbox()] == [JobState.SUCCEEDED] * 2
    assert store.get_study(STUDY).state is StudyState.DONE


def test_sender_records_each_result_at_its_response(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path)
    sender(store, TimedStore(), clock).run_once()

    # The fake clock does not advance, so each time is 1000 s plus the response offset.
    times = sorted(item.updated_at for item in store.list_outbox())
    assert times == [1001.0, 1002.0, 1003.0]


@pytest.mark.parametrize(
    ("status", "state"),
    [(0xB000, JobState.SUCCEEDED), (0xA700, JobState.PENDING), (0xC000, JobState.PENDING)],
    ids=["warning-stored", "out-of-resources", "cannot-understand"],
)
def test_sender_status_per_item(
    store: JobStore, tmp_path: Path, clock, status: int, state: JobState
) -> None:
    queue_results(store, tmp_path, count=2)
    fake = FakeStore()
    fake.statuses = {1: status}

    sender(store, fake, clock).run_once()

    items = store.list_outbox()
    assert items[0].state is JobState.SUCCEEDED
    assert items[1].state is state
    expected = StudyState.DONE if state is JobState.SUCCEEDED else StudyState.SENDING
    assert store.get_study(STUDY).state is expected


def test_sender_missing_file_is_an_error(store: JobStore, tmp_path: Path, clock) -> None:
    paths = queue_results(store, tmp_path, count=2)
    paths[0].unlink()
    fake = FakeStore()

    sender(store, fake, clock).run_once()

    first, second = store.list_outbox()
    assert first.state is JobState.PENDING
    assert f"result file {paths[0]} cannot be read" in first.last_error
    assert second.state is JobState.SUCCEEDED
    assert fake.calls == [[paths[1]]]


def test_sender_corrupt_file_is_an_error(store: JobStore, tmp_path: Path, clock) -> None:
    paths = queue_results(store, tmp_path, count=1)
    paths[0].write_bytes(b"not DICOM")

    sender(store, FakeStore(), clock).run_once()

    item = store.list_outbox()[0]
    assert item.state is JobState.PENDING
    assert f"result file {paths[0]} is not a DICOM file" in item.last_error


def test_sender_unexpected_error_is_retried(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path, count=2)

    def broken(peer, files):
        raise RuntimeError("encoder crashed")

    sender(store, broken, clock).run_once()

    items = store.list_outbox()
    assert [item.state for item in items] == [JobState.PENDING] * 2
    assert items[0].last_error == "sending failed: RuntimeError: encoder crashed"


# --------------------------------------------------------------------------- #
# Real C-STORE over loopback
# --------------------------------------------------------------------------- #


@pytest.fixture
def receiver(tmp_path: Path):
    server = Receiver(tmp_path / "received").start("127.0.0.1", 0, "PACS")
    yield server
    server.shutdown()


def test_sender_stores_at_receiver(store: JobStore, tmp_path: Path, clock, receiver) -> None:
    paths = queue_results(store, tmp_path)
    port = receiver.server_address[1]

    sender(store, store_files, clock, port=port).run_once()

    received = sorted((tmp_path / "received" / STUDY).glob("*.dcm"))
    assert sorted(p.name for p in received) == sorted(p.name for p in paths)
    assert pydicom.dcmread(received[0]).StudyInstanceUID == STUDY
    assert store.get_study(STUDY).state is StudyState.DONE


def test_sender_closed_port_queues(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path, count=1)

    sender(store, store_files, clock, port=free_port()).run_once()

    item = store.list_outbox()[0]
    assert item.state is JobState.PENDING
    assert "could not be reached" in item.last_error


def test_sender_thread_stops_on_event(store: JobStore, tmp_path: Path, clock) -> None:
    queue_results(store, tmp_path, count=1)
    stop = threading.Event()
    thread = threading.Thread(target=sender(store, FakeStore(), clock).run, args=(stop, 0.05))

    thread.start()
    stop.set()
    thread.join(timeout=5)

    assert not thread.is_alive()


# --------------------------------------------------------------------------- #
# python -m hipfuse.node.scu, the demo's sender without DCMTK
# --------------------------------------------------------------------------- #


def test_scu_command_stores_files(tmp_path: Path, receiver, capsys) -> None:
    from hipfuse.node.scu import main

    ct = OutboxFolder(tmp_path).write(STUDY, [ct_dataset(STUDY, "1.2.3.9", 0)])[0]
    port = str(receiver.server_address[1])

    assert main(["--aec", "PACS", "127.0.0.1", port, str(ct.path)]) == 0

    assert f"stored {ct.path} (status 0x0000)" in capsys.readouterr().out
    assert (tmp_path / "received" / STUDY / f"{ct.sop_instance_uid}.dcm").is_file()


def test_scu_command_reports_rejected_context(tmp_path: Path, receiver, capsys) -> None:
    from hipfuse.node.scu import main

    # The receiver accepts uncompressed transfer syntaxes only.
    radiograph = Path(__file__).resolve().parents[2] / "samples/xray/ap_pelvis_ddh_1.dcm"
    port = str(receiver.server_address[1])

    assert main(["--aec", "PACS", "127.0.0.1", port, str(radiograph)]) == 2

    error = capsys.readouterr().err
    assert "accepts none of the proposed presentation contexts" in error
    assert "1.2.840.10008.1.2.4.91" in error


def test_scu_command_without_peer(capsys) -> None:
    from hipfuse.node.scu import main

    radiograph = Path(__file__).resolve().parents[2] / "samples/xray/ap_pelvis_ddh_1.dcm"

    assert main(["127.0.0.1", str(free_port()), str(radiograph)]) == 2
    assert "could not be reached" in capsys.readouterr().err
