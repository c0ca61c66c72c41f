"""Helpers for the admin, audit and retention tests: a recording PACS and analysed studies."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest_helpers import ct_dataset, instance_record
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from hipfuse.config.settings import Destination, NodeSettings, SendSettings
from hipfuse.node.jobstore import JobStore, ResultObject
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.sender import DestinationSender

FINGERPRINT = "f" * 64
SEND = SendSettings(max_attempts=2, backoff_initial_s=10.0, backoff_max_s=20.0)
NODE = NodeSettings(acse_timeout_s=5.0, dimse_timeout_s=10.0, network_timeout_s=10.0)


@dataclass
class RecordingPACS:
    """A pynetdicom storage SCP on 127.0.0.1 that records each C-STORE request it receives."""

    port: int = 0
    # (SOP Instance UID, SOP Class UID, calling AE title) in arrival order.
    received: list[tuple[str, str, str]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def handle_store(self, event: Event) -> int:
        dataset = event.dataset
        with self.arrived:
            self.received.append(
                (
                    str(dataset.SOPInstanceUID),
                    str(dataset.SOPClassUID),
                    str(event.assoc.requestor.ae_title).strip(),
                )
            )
            self.arrived.notify_all()
        return 0x0000

    def sop_uids(self) -> list[str]:
        with self.arrived:
            return [sop for sop, _, _ in self.received]

    def wait_for(self, count: int, timeout_s: float) -> list[str]:
        """Wait until ``count`` instances arrived in all; return their SOP Instance UIDs."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout_s)
            return [sop for sop, _, _ in self.received]


@contextlib.contextmanager
def recording_pacs(ae_title: str = "PACS") -> Iterator[RecordingPACS]:
    """Run a :class:`RecordingPACS` on a free port of 127.0.0.1 until the block ends."""
    pacs = RecordingPACS()
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(
            context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, pacs.handle_store)]
    )
    assert server is not None
    pacs.port = int(server.server_address[1])
    try:
        yield pacs
    finally:
        server.shutdown()


def analysed_study(
    store: JobStore,
    data_dir: Path,
    study_uid: str = "1.2.3",
    *,
    destinations: Sequence[str] = ("pacs",),
    count: int = 2,
    fingerprint: str = FINGERPRINT,
) -> list[ResultObject]:
    """Record one instance of ``study_uid`` and queue ``count`` real result files for it.

    The result files are small CT objects standing in for the SR and
    Secondary Captures: what matters here is their SOP Instance UIDs.
    """
    from hipfuse.node.states import StudyState

    store.record_instance(
        instance_record(f"{study_uid}.1.1", study=study_uid, series=f"{study_uid}.1")
    )
    store._db.execute(
        "UPDATE studies SET input_fingerprint = ? WHERE study_instance_uid = ?",
        (fingerprint, study_uid),
    )
    store.transition(study_uid, StudyState.COMPLETE)
    store.transition(study_uid, StudyState.ANALYSING)
    written = OutboxFolder(data_dir).write(
        study_uid, [ct_dataset(study_uid, f"{study_uid}.9", index) for index in range(count)]
    )
    store.record_results(
        study_uid, fingerprint=fingerprint, objects=written, destinations=list(destinations)
    )
    return written


def destination_sender(
    store: JobStore, name: str, port: int, clock, *, send: SendSettings = SEND, store_fn=None
) -> DestinationSender:
    """Build the node's sender for one destination on 127.0.0.1:``port``."""
    destination = Destination(name=name, ae_title="PACS", host="127.0.0.1", port=port)
    kwargs = {} if store_fn is None else {"store": store_fn}
    return DestinationSender(destination, store, send, NODE, clock=clock, **kwargs)


def send_datasets(port: int, calling: str, datasets: Sequence) -> list[int] | None:
    """C-STORE datasets to the node on 127.0.0.1 over one association.

    Returns each response status, or ``None`` when the association was rejected.
    """
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    association = ae.associate("127.0.0.1", port, ae_title="HIPFUSE")
    if not association.is_established:
        return None
    statuses = [int(association.send_c_store(dataset).Status) for dataset in datasets]
    association.release()
    return statuses


@contextlib.contextmanager
def scp_with_clock(settings, clock) -> Iterator[tuple[int, JobStore]]:
    """Start the node's SCP with a job store and spool that both read ``clock``."""
    from hipfuse.node.scp import start_scp
    from hipfuse.node.spool import Spool

    data_dir = settings.storage.data_dir
    store = JobStore.in_data_dir(data_dir, clock=clock)
    server = start_scp(settings, store, Spool(data_dir), clock=clock)
    try:
        yield server.port, store
    finally:
        server.stop()
        store.close()
