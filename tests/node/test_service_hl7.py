"""The node service with ``[hl7] enabled``: the MLLP listener starts and stops with the node."""

from __future__ import annotations

import socket
from datetime import datetime
from pathlib import Path

import pytest
from worker_helpers import node_settings, untrained_bundle_dir

from hipfuse.integrations.hl7.send import note_message, send_messages
from hipfuse.integrations.hl7.store import HL7_STORE_FILE_NAME
from hipfuse.node.demo import free_port
from hipfuse.node.service import NodeService, ServiceError


def _hl7_section(port: int) -> str:
    return f'\n[hl7]\nenabled = true\nbind_address = "127.0.0.1"\nport = {port}\n'


def _message(control_id: str) -> bytes:
    return note_message(
        control_id=control_id,
        patient_id="SVC-1",
        note="Hip pain.",
        observed_at=datetime(2024, 3, 1, 9, 0),
    ).encode("utf-8")


def test_service_runs_hl7_listener(tmp_path: Path) -> None:
    hl7_port = free_port()
    _, settings = node_settings(
        tmp_path, port=free_port(), destinations=(), extra=_hl7_section(hl7_port)
    )
    service = NodeService(settings, bundle_dir=untrained_bundle_dir())
    service.start()
    try:
        assert service.hl7_port == hl7_port
        (ack,) = send_messages("127.0.0.1", hl7_port, [_message("SVC-A")])
        assert ack.code == "AA"
        assert service.hl7_store is not None
        assert service.hl7_store.message_count() == 1
    finally:
        assert service.stop() is True

    assert service.hl7 is None
    assert service.hl7_store is None
    assert (settings.storage.data_dir / HL7_STORE_FILE_NAME).is_file()
    with pytest.raises(ConnectionRefusedError):
        send_messages("127.0.0.1", hl7_port, [_message("SVC-B")], timeout_s=5.0)


def test_service_without_hl7(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path, port=free_port(), destinations=())
    service = NodeService(settings, bundle_dir=untrained_bundle_dir())
    service.start()
    try:
        with pytest.raises(RuntimeError, match=r"set \[hl7\] enabled"):
            _ = service.hl7_port
    finally:
        service.stop()
    assert not (settings.storage.data_dir / HL7_STORE_FILE_NAME).exists()


def test_start_refuses_busy_hl7_port(tmp_path: Path) -> None:
    node_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        hl7_port = busy.getsockname()[1]
        _, settings = node_settings(
            tmp_path, port=node_port, destinations=(), extra=_hl7_section(hl7_port)
        )
        service = NodeService(settings, bundle_dir=untrained_bundle_dir())

        with pytest.raises(ServiceError, match=f"HL7 intake on 127.0.0.1:{hl7_port}"):
            service.start()

    assert service.jobstore is None
    assert service.hl7_store is None
    # The DICOM port was never taken, so a node can start on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", node_port))
