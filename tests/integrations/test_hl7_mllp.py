"""The MLLP listener over real sockets, with a separate sending process as the peer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from hl7_builders import (
    SAMPLES_TEXT,
    ack_segments,
    framed,
    hl7_escape,
    message,
    mllp_send,
    msh,
    oru,
    pid,
    split_acks,
)

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake
from hipfuse.integrations.hl7.mllp import MLLPListenerThread
from hipfuse.integrations.hl7.service import HL7Service
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.text_assembly import gather_clinical_text

RAW_SENDER = Path(__file__).with_name("mllp_raw_sender.py")
CHINESE_NOTE = (
    "左髋关节疼痛三年，加重两月。长期口服泼尼松（激素）治疗系统性红斑狼疮。饮酒史二十年。"
)


@dataclass
class Listener:
    port: int
    store: HL7Store
    settings: HL7Settings


def _start(tmp_path: Path, **overrides: object) -> tuple[MLLPListenerThread, HL7Store]:
    settings = HL7Settings(enabled=True, **overrides)  # type: ignore[arg-type]
    store = HL7Store.in_data_dir(tmp_path / "data")
    thread = MLLPListenerThread(settings, HL7Intake(store, settings), port=0)
    thread.start()
    return thread, store


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    thread, store = _start(tmp_path)
    yield Listener(thread.port, store, thread.server.settings)
    thread.stop()
    store.close()


def _send(listener: Listener, tmp_path: Path, *messages: bytes) -> list[bytes]:
    path = tmp_path / "outbound.mllp"
    path.write_bytes(framed(*messages))
    return mllp_send(listener.port, path)


def _raw_send(port: int, data: bytes, tmp_path: Path, *extra: str) -> bytes:
    path = tmp_path / "raw.bin"
    path.write_bytes(data)
    completed = subprocess.run(
        [sys.executable, str(RAW_SENDER), str(port), str(path), *extra],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return completed.stdout


def _texts(store: HL7Store, patient_id: str = "HIP001") -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for text in store.find_texts(patient_id):
        found.setdefault(text.control_id, []).append(text.item.text)
    return found


# -- one connection, every message type ----------------------------------- #

MDM_NOTE = "入院记录：右髋疼痛，髋关节活动受限。\nPatient café owner, consults for hip pain."


def _message_types() -> list[tuple[str, str, bytes]]:
    """(control id, MSH-18, encoded message) for each accepted message type."""
    oru_gb = oru("GB1", CHINESE_NOTE, charset="GB 18030-2000").encode("gb18030")
    mdm = message(
        msh("MDM1", "MDM^T02^MDM_T02", charset="UNICODE UTF-8"),
        pid(),
        "PV1|1|O",
        "TXA|1|HP|TX|20240215093000||20240215093000|||||||DOC77||||AU",
        f"OBX|1|TX|11506-3^Progress note^LN||{hl7_escape(MDM_NOTE)}||||||F",
    )
    mdm_bytes = b"\xef\xbb\xbf" + mdm.encode("utf-8")
    orm = message(
        msh("ORM1", "ORM^O01^ORM_O01", version="2.3", charset="8859/1"),
        pid(),
        "ORC|NW|PL900|||SC",
        "OBR|1|PL900||73502^XR hip left^C4|||||||||Douleur de hanche gauche, nécrose ?",
        "NTE|1||Patient sous corticoïdes depuis 2019",
    ).encode("latin-1")
    omi = message(
        msh("OMI1", "OMI^O23^OMI_O23", version="2.5.1"),
        pid(),
        "ORC|NW|PL901|FL901||SC",
        "TQ1|1||||||20240301",
        "OBR|1|PL901|FL901|CTPELVIS^CT pelvis|||||||||Right hip pain, rule out AVN",
        "IPC|ACC901|RP901|1.2.840.99.9.1|SPS901|CT",
    ).encode("ascii")
    adt = message(
        msh("ADT1", "ADT^A08^ADT_A01", version="2.4"),
        pid(),
        "PV1|1|I",
        "ZPV|site-specific^with^components~and repetitions|\\F\\escaped",
        "DG1|1||M87.05^Idiopathic aseptic necrosis of femur^I10|||W",
        "OBX|1|CE|72166-2^Tobacco smoking status^LN||8517006^Former smoker^SCT||||||F",
    ).encode("ascii")
    return [
        ("GB1", "GB 18030-2000", oru_gb),
        ("MDM1", "UNICODE UTF-8", mdm_bytes),
        ("ORM1", "8859/1", orm),
        ("OMI1", "", omi),
        ("ADT1", "", adt),
    ]


def test_mllp_acks_each_message_in_order(listener: Listener, tmp_path: Path) -> None:
    cases = _message_types()
    acks = _send(listener, tmp_path, *(data for _, _, data in cases))

    assert len(acks) == len(cases)
    codecs_by_charset = {"GB 18030-2000": "gb18030", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1"}
    for (control_id, charset, _), ack in zip(cases, acks, strict=True):
        segments = ack_segments(ack, codecs_by_charset.get(charset, "ascii"))
        assert segments["MSA"][1:3] == ["AA", control_id], control_id
        assert segments["MSH"][9].startswith("ACK"), control_id
        if charset:
            assert segments["MSH"][18] == charset, control_id
        assert "ERR" not in segments, control_id
    assert listener.store.message_count() == len(cases)


def test_mllp_text_arrives_intact(listener: Listener, tmp_path: Path) -> None:
    _send(listener, tmp_path, *(data for _, _, data in _message_types()))
    texts = _texts(listener.store)

    assert texts["GB1"] == [CHINESE_NOTE]
    assert texts["MDM1"] == [MDM_NOTE]
    assert texts["ORM1"] == [
        "Douleur de hanche gauche, nécrose ?",
        "Patient sous corticoïdes depuis 2019",
    ]
    assert texts["OMI1"] == ["Right hip pain, rule out AVN"]
    assert texts["ADT1"] == ["Idiopathic aseptic necrosis of femur", "Former smoker"]


def test_mllp_raw_bytes_kept(listener: Listener, tmp_path: Path) -> None:
    data = oru("RAW1", CHINESE_NOTE, charset="GB 18030-2000").encode("gb18030")
    _send(listener, tmp_path, data)
    (text,) = listener.store.find_texts("HIP001")
    # mllp_send strips the CR that ends the last segment.
    assert listener.store.raw_message(text.message_id) == data.rstrip(b"\r")


def test_mllp_order_numbers_indexed(listener: Listener, tmp_path: Path) -> None:
    _send(listener, tmp_path, *(data for _, _, data in _message_types()))
    omi_ids = listener.store.find_messages_by_order("ACC901")
    assert len(omi_ids) == 1
    assert listener.store.find_messages_by_order("PL900") != omi_ids


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_mllp_segment_terminators(listener: Listener, tmp_path: Path, terminator: str) -> None:
    text = oru("TERM1", "Left hip: joint space narrowing.\\.br\\No fracture.")
    data = text.replace("\r", terminator).encode("ascii")
    (ack,) = _send(listener, tmp_path, data)
    assert ack_segments(ack)["MSA"][1:3] == ["AA", "TERM1"]
    assert _texts(listener.store)["TERM1"] == ["Left hip: joint space narrowing.\nNo fracture."]


ESCAPED_NOTE = (
    "a\\F\\b \\S\\ \\T\\ \\R\\ \\E\\ hex:\\X41\\ utf8:\\XE4B8AD\\ "
    "\\H\\bold\\N\\ line\\.br\\next\\.sp 2\\end"
)
UNESCAPED_NOTE = "a|b ^ & ~ \\ hex:A utf8:中 bold line\nnext\n\nend"


def test_mllp_escape_sequences(listener: Listener, tmp_path: Path) -> None:
    data = oru("ESC1", ESCAPED_NOTE, charset="UNICODE UTF-8").encode("utf-8")
    _send(listener, tmp_path, data)
    assert _texts(listener.store)["ESC1"] == [UNESCAPED_NOTE]


def test_mllp_own_encoding_characters(listener: Listener, tmp_path: Path) -> None:
    # MSH-1 "#", MSH-2 "$*!@": component $, repetition *, escape !, subcomponent @.
    text = message(
        "MSH#$*!@#RIS#HOSP#HIPFUSE#HOSP#20240301##ORU$R01$ORU_R01#OWN1#P#2.5.1",
        "PID#1##HIP001$$$HOSP@1.2.840.99.1@ISO$MR",
        "OBR#1#PL7#FL7#XR$XR hip",
        "OBX#1#TX#X$Note##uses !F! and !S! and \\F\\ literally*second repetition",
    )
    (ack,) = _send(listener, tmp_path, text.encode("ascii"))
    assert ack.decode().split("\r")[1] == "MSA#AA#OWN1"
    assert _texts(listener.store)["OWN1"] == ["uses # and $ and \\F\\ literally\nsecond repetition"]


def test_mllp_duplicate_control_id(listener: Listener, tmp_path: Path) -> None:
    first = oru("DUP1", "Same note.").encode()
    resent = first.replace(b"20240301101500", b"20240301111500")  # new MSH-7 only
    changed = oru("DUP1", "Different note.").encode()
    acks = _send(listener, tmp_path, first, resent, changed)

    codes = [ack_segments(ack)["MSA"][1:3] for ack in acks]
    assert codes == [["AA", "DUP1"], ["AA", "DUP1"], ["AE", "DUP1"]]
    assert ack_segments(acks[2])["ERR"][3].startswith("205^")
    assert listener.store.message_count() == 1
    (rejected,) = listener.store.rejected_messages()
    assert "already received with different content" in rejected.reason


MALFORMED = [
    (b"PID|1||HIP001\r", "AR", "", "100^", "does not start with an MSH segment"),
    (message(msh("BAD2"), "OBX|1|TX|X^Y||no patient").encode(), "AE", "BAD2", "100^", "PID"),
    (oru("BAD3", "x", version="2.2").encode(), "AR", "BAD3", "203", "version"),
    (
        oru("BAD4", "caf\xe9", charset="UNICODE UTF-8").encode("latin-1"),
        "AE",
        "BAD4",
        "102^",
        "not valid UNICODE UTF-8",
    ),
    (
        message(msh("BAD5", "SIU^S12^SIU_S12"), pid()).encode(),
        "AR",
        "BAD5",
        "200^",
        "message type SIU",
    ),
]


def test_mllp_malformed_messages_nak(listener: Listener, tmp_path: Path) -> None:
    acks = _send(listener, tmp_path, *(case[0] for case in MALFORMED))

    assert len(acks) == len(MALFORMED)
    for (_, code, control_id, error, reason), ack in zip(MALFORMED, acks, strict=True):
        segments = ack_segments(ack)
        assert segments["MSA"][1] == code, reason
        assert segments["MSA"][2] == control_id, reason
        assert reason in segments["MSA"][3] or reason in segments["ERR"][-1], reason
        err = segments["ERR"]
        assert error in (err[3] if len(err) > 3 else err[1]), reason
    assert listener.store.message_count() == 0
    rejected = list(reversed(listener.store.rejected_messages()))
    assert [r.raw for r in rejected] == [case[0].rstrip(b"\r") for case in MALFORMED]
    assert [r.ack_code for r in rejected] == [case[1] for case in MALFORMED]


def test_mllp_err_segment_v23(listener: Listener, tmp_path: Path) -> None:
    data = message(msh("OLD1", version="2.3"), "OBX|1|TX|X^Y||no patient").encode()
    (ack,) = _send(listener, tmp_path, data)
    segments = ack_segments(ack)
    assert segments["MSH"][9] == "ACK^R01"
    # v2.3 ERR-1: segment^sequence^field^code&text&table.
    assert segments["ERR"][1] == "PID^^^100&Segment sequence error&HL70357"


def test_mllp_sender_address_not_allowed(listener: Listener, tmp_path: Path) -> None:
    data = framed(oru("ADDR1", "From a host not on the allow-list.").encode())
    refused = _raw_send(listener.port, data, tmp_path, "--source", "127.0.0.2")
    allowed = _raw_send(listener.port, data, tmp_path, "--source", "127.0.0.1")

    assert refused == b""
    assert ack_segments(split_acks(allowed)[0])["MSA"][1:3] == ["AA", "ADDR1"]
    assert listener.store.message_count() == 1


def _wait_for_rejected(store: HL7Store, count: int) -> list:
    for _ in range(200):
        rejected = store.rejected_messages()
        if len(rejected) >= count:
            return rejected
        time.sleep(0.05)
    return store.rejected_messages()


def test_mllp_connection_closed_mid_message(listener: Listener, tmp_path: Path) -> None:
    whole = oru("CUT1", "This note is cut off before the end block.").encode()
    partial = b"\x0b" + whole[: len(whole) // 2]
    received = _raw_send(listener.port, partial, tmp_path, "--half-close")

    assert received == b""
    (rejected,) = _wait_for_rejected(listener.store, 1)
    assert rejected.raw == whole[: len(whole) // 2]
    assert "connection closed before the end block" in rejected.reason
    assert rejected.control_id == "CUT1"


def test_mllp_missing_end_block(listener: Listener, tmp_path: Path) -> None:
    first = oru("NOEND1", "No end block after me.").encode()
    second = oru("NOEND2", "Properly framed.").encode()
    data = b"\x0b" + first + framed(second)
    acks = split_acks(_raw_send(listener.port, data, tmp_path, "--half-close"))

    assert [ack_segments(ack)["MSA"][1:3] for ack in acks] == [["AR", "NOEND1"], ["AA", "NOEND2"]]
    assert "start block (0x0B) arrived before the end block" in ack_segments(acks[0])["ERR"][-1]
    assert _texts(listener.store) == {"NOEND2": ["Properly framed."]}


def test_mllp_message_too_large(tmp_path: Path) -> None:
    thread, store = _start(tmp_path, max_message_bytes=4096)
    try:
        note = hl7_escape((SAMPLES_TEXT / "hip_osteoarthritis_left_mtsamples_258.txt").read_text())
        (ack,) = _send(
            Listener(thread.port, store, thread.server.settings),
            tmp_path,
            oru("BIG1", note).encode(),
        )
        segments = ack_segments(ack)
        assert segments["MSA"][1:3] == ["AR", "BIG1"]
        assert "larger than the 4096 bytes" in segments["ERR"][-1]
        (rejected,) = store.rejected_messages()
        assert rejected.truncated
        assert len(rejected.raw) == 4096
    finally:
        thread.stop()
        store.close()


def test_mllp_sample_note_in_assembled_text(listener: Listener, tmp_path: Path) -> None:
    note = (SAMPLES_TEXT / "hip_osteoarthritis_left_mtsamples_258.txt").read_text(encoding="utf-8")
    _send(listener, tmp_path, oru("OA1", hl7_escape(note), accession="ACC-OA-1").encode())
    settings = SimpleNamespace(hl7=listener.settings, fhir=FHIRSettings())

    gathered = gather_clinical_text(
        settings, listener.store, "HIP001", "HOSP", "ACC-OA-1", "20240302"
    )

    assert gathered is not None
    assert note.rstrip("\r\n") in gathered.text
    assert gathered.sources == ["hl7:OA1"]
    assert gathered.warnings == []


def test_mllp_idle_connection_closed(tmp_path: Path) -> None:
    thread, store = _start(tmp_path, idle_timeout_s=0.2)
    try:
        with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as connection:
            # The listener closes the idle connection, so recv returns the end of the stream.
            assert connection.recv(1024) == b""
    finally:
        thread.stop()
        store.close()


def test_mllp_stop_with_open_connection(tmp_path: Path) -> None:
    thread, store = _start(tmp_path)
    with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as connection:
        connection.sendall(framed(oru("OPEN1", "sent before the stop").encode()))
        assert b"MSA|AA|OPEN1" in connection.recv(4096)
        thread.stop()
        assert connection.recv(1024) == b""
    assert not thread.is_running
    assert store.message_count() == 1
    store.close()


def test_mllp_too_many_connections(tmp_path: Path) -> None:
    thread, store = _start(tmp_path, max_connections=1)
    try:
        with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as first:
            first.sendall(framed(oru("MAX1", "first connection").encode()))
            assert b"MSA|AA|MAX1" in first.recv(4096)
            with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as second:
                assert second.recv(1024) == b""
    finally:
        thread.stop()
        store.close()


def test_hl7_service_listener_and_folder(tmp_path: Path) -> None:
    settings = HL7Settings(enabled=True, watch_dir=tmp_path / "inbox", watch_stable_s=0.1)
    store = HL7Store.in_data_dir(tmp_path / "data")
    service = HL7Service(settings, store, port=0)
    service.start()
    try:
        (ack,) = _send(Listener(service.port, store, settings), tmp_path, oru("SVC1", "x").encode())
        assert ack_segments(ack)["MSA"][1:3] == ["AA", "SVC1"]
        (tmp_path / "inbox" / "export.hl7").write_bytes(oru("SVC2", "from a file").encode())
        for _ in range(200):
            if (tmp_path / "inbox" / "done" / "export.hl7").exists():
                break
            time.sleep(0.05)
    finally:
        service.stop()
    assert (tmp_path / "inbox" / "done" / "export.hl7").exists()
    assert set(_texts(store)) == {"SVC1", "SVC2"}
    assert not service.listener.is_running
    store.close()


def test_mllp_internal_fault_answers_ar(
    listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise IndexError("fault in the receiver")

    monkeypatch.setattr("hipfuse.integrations.hl7.intake.extract_content", broken)
    data = oru("FAULT1", "kept despite the fault").encode()
    (ack,) = _send(listener, tmp_path, data)

    segments = ack_segments(ack)
    assert segments["MSA"][1:3] == ["AR", "FAULT1"]
    assert segments["ERR"][3].startswith("207^")
    (rejected,) = listener.store.rejected_messages()
    assert rejected.raw == data.rstrip(b"\r")


def test_mllp_unframed_message_kept(listener: Listener, tmp_path: Path) -> None:
    data = oru("RAWTXT1", "sent without MLLP framing").encode()
    received = _raw_send(listener.port, data, tmp_path, "--half-close")

    assert received == b""
    (rejected,) = _wait_for_rejected(listener.store, 1)
    assert rejected.raw == data
    assert "outside MLLP framing" in rejected.reason
    assert rejected.control_id == "RAWTXT1"
