"""Calling AE titles and addresses on the allow-list, and the default listen addresses.

A pynetdicom requestor requests an association from 127.0.0.1 or 127.0.0.2:
Linux routes all of 127.0.0.0/8 to loopback, so a second source address
needs no network set-up. The checks are what the sender receives (the
A-ASSOCIATE-RJ result, source and reason that pynetdicom reports) and what
the node records (the ``association_rejected`` event and its reason).

The settings files here leave ``bind_address`` out, so the SCP and the MLLP
listener bind to the default addresses. Something bound to 0.0.0.0 would
also accept connections to 127.0.0.2, so a refused connection there shows
that only 127.0.0.1 is bound.
"""

from __future__ import annotations

import os
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from ingest_helpers import free_port, running_scp
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from hipfuse.config.settings import Settings, load_settings
from hipfuse.integrations.hl7.service import HL7Service
from hipfuse.integrations.hl7.store import HL7Store

LOOPBACK = "127.0.0.1"
# Another loopback address: the source of a peer that is not on the list, and
# the target that shows a listener is not bound to every address.
OTHER_LOOPBACK = "127.0.0.2"


@pytest.fixture(autouse=True)
def _defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # HIPFUSE_* variables override the files and the defaults under test.
    for name in list(os.environ):
        if name.startswith("HIPFUSE_"):
            monkeypatch.delenv(name)


def write_node_settings(tmp_path: Path, port: int, callers: str, extra: str = "") -> Settings:
    """Write settings without any bind_address, so the defaults apply."""
    path = tmp_path / "node.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            port = {port}
            allowed_callers = [{callers}]
            acse_timeout_s = 5.0

            [storage]
            data_dir = "{tmp_path / "data"}"
            min_free_bytes = 1
            """
        )
        + extra
    )
    return load_settings(path)


@dataclass(frozen=True)
class Request:
    """An association request: the allow-list, then the calling AE title and its source address."""

    callers: str  # TOML array items of [node] allowed_callers
    calling_ae_title: str
    source_address: str
    rejected_because: str | None  # the RejectReason recorded, None when accepted


CASES = {
    "listed-ae-listed-address": Request(
        '{ ae_title = "PACS", addresses = ["127.0.0.1"] }', "PACS", LOOPBACK, None
    ),
    "listed-ae-in-listed-network": Request(
        '{ ae_title = "PACS", addresses = ["127.0.0.0/30"] }', "PACS", OTHER_LOOPBACK, None
    ),
    "listed-ae-any-address": Request('{ ae_title = "PACS" }', "PACS", OTHER_LOOPBACK, None),
    "listed-ae-unlisted-address": Request(
        '{ ae_title = "PACS", addresses = ["127.0.0.1"] }',
        "PACS",
        OTHER_LOOPBACK,
        "peer_address_not_allowed",
    ),
    "unlisted-ae": Request(
        '{ ae_title = "PACS", addresses = ["127.0.0.1"] }',
        "MODALITY1",
        LOOPBACK,
        "calling_ae_title_not_recognised",
    ),
    "unlisted-ae-listed-address-of-other": Request(
        '{ ae_title = "PACS" }, { ae_title = "CT1", addresses = ["127.0.0.2"] }',
        "CT2",
        OTHER_LOOPBACK,
        "calling_ae_title_not_recognised",
    ),
    "empty-allow-list": Request("", "PACS", LOOPBACK, "calling_ae_title_not_recognised"),
}


def request_association(port: int, request: Request):
    """Request a Verification association as ``request`` describes; return the Association."""
    ae = AE(ae_title=request.calling_ae_title)
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    return ae.associate(
        LOOPBACK, port, ae_title="HIPFUSE", bind_address=(request.source_address, 0)
    )


@pytest.mark.parametrize("request_case", CASES.values(), ids=CASES.keys())
def test_allow_list_decides_association(tmp_path: Path, request_case: Request) -> None:
    settings = write_node_settings(tmp_path, free_port(), request_case.callers)

    with running_scp(settings) as (server, jobstore):
        association = request_association(server.port, request_case)
        established = association.is_established
        if established:
            echo_status = association.send_c_echo()
            association.release()
        events = jobstore.list_events()

    if request_case.rejected_because is None:
        assert established
        assert echo_status.Status == 0x0000
        assert "association_rejected" not in [event.event for event in events]
        return
    assert association.is_rejected
    primitive = association.acceptor.primitive
    assert primitive.result == 0x01  # rejected-permanent
    assert primitive.result_source == 0x01  # DICOM UL service-user
    assert primitive.diagnostic == 0x03
    assert primitive.reason_str == "Calling AE title not recognised"
    assert [event.event for event in events] == ["association_rejected"]
    details = events[0].details
    assert details["reason"] == request_case.rejected_because
    assert details["calling_ae_title"] == request_case.calling_ae_title
    assert details["peer_address"] == request_case.source_address


def test_default_bind_addresses_are_loopback() -> None:
    settings = load_settings()  # the shipped default.toml

    assert settings.node.bind_address == LOOPBACK
    assert settings.hl7.bind_address == LOOPBACK
    assert Settings().node.bind_address == LOOPBACK
    assert Settings().hl7.bind_address == LOOPBACK


def can_connect(address: str, port: int) -> bool:
    """Return whether a TCP connection to ``address:port`` is accepted."""
    try:
        with socket.create_connection((address, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_scp_listens_on_loopback_only(tmp_path: Path) -> None:
    settings = write_node_settings(tmp_path, free_port(), '{ ae_title = "PACS" }')

    with structlog.testing.capture_logs() as logs, running_scp(settings) as (server, _):
        reachable = can_connect(LOOPBACK, server.port)
        reachable_elsewhere = can_connect(OTHER_LOOPBACK, server.port)

    (started,) = [entry for entry in logs if entry["event"] == "scp_started"]
    assert started["bind_address"] == LOOPBACK
    assert reachable is True
    assert reachable_elsewhere is False


def test_mllp_listens_on_loopback_only(tmp_path: Path) -> None:
    hl7 = f"\n[hl7]\nenabled = true\nport = {free_port()}\n"
    settings = write_node_settings(tmp_path, free_port(), '{ ae_title = "PACS" }', hl7)
    store = HL7Store.in_data_dir(settings.storage.data_dir)
    service = HL7Service(settings.hl7, store)
    service.start()
    try:
        reachable = can_connect(LOOPBACK, service.port)
        reachable_elsewhere = can_connect(OTHER_LOOPBACK, service.port)
    finally:
        service.stop()
        store.close()

    assert reachable is True
    assert reachable_elsewhere is False
