"""The package's HL7 sender: the note message it builds and the sending process over MLLP.

python-hl7 reads the built messages as an independent parser; the node's own
listener receives them from ``python -m hipfuse.integrations.hl7.send``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import hl7
import pytest
from hl7_builders import SAMPLES_TEXT

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake
from hipfuse.integrations.hl7.mllp import MLLPListenerThread
from hipfuse.integrations.hl7.send import note_message, read_acknowledgement
from hipfuse.integrations.hl7.store import HL7Store

OA_NOTE = (SAMPLES_TEXT / "hip_osteoarthritis_left_mtsamples_258.txt").read_text(encoding="utf-8")
DELIMITER_NOTE = "Pain 7|10 ^ left & right ~ both \\ C:\\temp\nSecond line\r\nThird line"
CHINESE_NOTE = "左髋关节疼痛三年，加重两月。\n查体：左髋屈曲受限。"
OBSERVED_AT = datetime(2024, 3, 1, 10, 15)


def _message(note: str, control_id: str = "N1", **overrides: str) -> str:
    values = {"patient_id": "PAT|77", "issuer": "HOSP", "accession_number": "ACC^9"} | overrides
    return note_message(control_id=control_id, note=note, observed_at=OBSERVED_AT, **values)


@pytest.mark.parametrize(
    "note",
    [OA_NOTE, DELIMITER_NOTE, CHINESE_NOTE],
    ids=["sample-note", "delimiters-and-breaks", "chinese"],
)
def test_note_message_read_by_python_hl7(note: str) -> None:
    parsed = hl7.parse(_message(note))
    obx = parsed.segment("OBX")

    assert str(obx[2]) == "FT"
    # python-hl7 turns \.br\ into CR.
    expected = note.rstrip("\r\n").replace("\r\n", "\n").replace("\n", "\r")
    assert parsed.unescape(str(obx[5])) == expected
    assert parsed.unescape(str(parsed.segment("PID")[3][0][0])) == "PAT|77"
    assert str(parsed.segment("PID")[3][0][3]) == "HOSP"
    assert parsed.unescape(str(parsed.segment("OBR")[18])) == "ACC^9"
    assert str(parsed.segment("MSH")[18]) == "UNICODE UTF-8"


def test_note_message_without_issuer_or_accession() -> None:
    parsed = hl7.parse(_message("Note.", issuer="", accession_number=""))
    assert str(parsed.segment("PID")[3]) == "PAT\\F\\77"
    assert str(parsed.segment("OBR")[18]) == ""


@pytest.mark.parametrize(
    ("reply", "code", "control_id"),
    [
        (b"MSH|^~\\&|HIPFUSE||A||20240301||ACK^R01^ACK|9|P|2.5.1\rMSA|AA|N1\r", "AA", "N1"),
        (b"MSH#^~\\&#HIPFUSE\rMSA#AR#N2#bad\rERR#\r", "AR", "N2"),
    ],
    ids=["accepted", "other-separator"],
)
def test_read_acknowledgement(reply: bytes, code: str, control_id: str) -> None:
    acknowledgement = read_acknowledgement(reply)
    assert acknowledgement.code == code
    assert acknowledgement.control_id == control_id
    assert acknowledgement.accepted is (code == "AA")


@pytest.mark.parametrize(
    ("reply", "match"),
    [(b"hello", "does not start with MSH"), (b"MSH|^~\\&|X\r", "no MSA segment")],
    ids=["not-hl7", "no-msa"],
)
def test_read_acknowledgement_invalid(reply: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_acknowledgement(reply)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[int, HL7Store]]:
    settings = HL7Settings(enabled=True)
    store = HL7Store.in_data_dir(tmp_path / "data")
    thread = MLLPListenerThread(settings, HL7Intake(store, settings), port=0)
    thread.start()
    yield thread.port, store
    thread.stop()
    store.close()


def _send(port: int, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hipfuse.integrations.hl7.send",
            "--port",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sender_process_delivers_notes(tmp_path: Path, listener: tuple[int, HL7Store]) -> None:
    port, store = listener
    files = []
    for control_id, note in (("OA1", OA_NOTE), ("DL1", DELIMITER_NOTE), ("ZH1", CHINESE_NOTE)):
        path = tmp_path / f"{control_id}.hl7"
        path.write_bytes(_message(note, control_id, patient_id="PAT77").encode("utf-8"))
        files.append(path)

    sent = _send(port, *files)

    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines() == ["OA1 AA", "DL1 AA", "ZH1 AA"]
    stored = {text.control_id: text.item.text for text in store.find_texts("PAT77")}
    assert stored["OA1"] == OA_NOTE.rstrip("\n")
    assert stored["DL1"] == DELIMITER_NOTE.replace("\r\n", "\n")
    assert stored["ZH1"] == CHINESE_NOTE


def test_sender_reports_rejection(tmp_path: Path, listener: tuple[int, HL7Store]) -> None:
    port, _ = listener
    path = tmp_path / "training.hl7"
    # Processing ID T (training) is not in the default [hl7] processing_ids.
    path.write_text(_message("Note.", "TR1").replace("|P|2.5.1|", "|T|2.5.1|"), encoding="utf-8")

    sent = _send(port, path)

    assert sent.returncode == 1
    assert sent.stdout.splitlines() == ["TR1 AR"]


def test_sender_without_listener(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "note.hl7"
    path.write_text(_message("Note."), encoding="utf-8")

    sent = _send(port, path)

    assert sent.returncode == 2
    assert "failed" in sent.stderr
