"""Build HL7 v2 test messages and read ACKs, independently of the code under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SB, EB, CR = b"\x0b", b"\x1c", b"\r"
REPO = Path(__file__).resolve().parents[2]
SAMPLES_TEXT = REPO / "samples" / "text"


def hl7_escape(text: str) -> str:
    """Escape text for a TX field with the default delimiters."""
    out = []
    for character in text.replace("\r\n", "\n"):
        out.append(
            {
                "\\": "\\E\\",
                "|": "\\F\\",
                "^": "\\S\\",
                "&": "\\T\\",
                "~": "\\R\\",
                "\n": "\\.br\\",
            }.get(character, character)
        )
    return "".join(out)


def msh(
    control_id: str,
    message_type: str = "ORU^R01^ORU_R01",
    *,
    version: str = "2.5.1",
    charset: str = "",
    processing_id: str = "P",
    sending_application: str = "RIS",
    sending_facility: str = "HOSP",
    timestamp: str = "20240301101500",
) -> str:
    """Return an MSH segment; MSH-18 is written only when ``charset`` is set."""
    fields = [
        "MSH",
        "^~\\&",
        sending_application,
        sending_facility,
        "HIPFUSE",
        "HOSP",
        timestamp,
        "",
        message_type,
        control_id,
        processing_id,
        version,
    ]
    if charset:
        fields += ["", "", "", "", "", charset]
    return "|".join(fields)


def pid(patient_id: str = "HIP001", authority: str = "HOSP&1.2.840.99.1&ISO") -> str:
    """Return a PID segment with one PID-3 identifier."""
    return f"PID|1||{patient_id}^^^{authority}^MR||DOE^JANE||19600101|F"


def message(*segments: str, terminator: str = "\r") -> str:
    """Join segments with ``terminator`` after each one."""
    return "".join(segment + terminator for segment in segments)


def oru(
    control_id: str,
    note: str,
    *,
    charset: str = "",
    accession: str = "ACC1001",
    patient_id: str = "HIP001",
    observed: str = "20240301100000",
    value_type: str = "TX",
    version: str = "2.5.1",
) -> str:
    """An ORU^R01 radiology result with ``note`` (already escaped) in one OBX."""
    return message(
        msh(control_id, charset=charset, version=version),
        pid(patient_id),
        f"ORC|RE|PL{control_id}|FL{control_id}",
        f"OBR|1|PL{control_id}|FL{control_id}|XRPELVIS^XR pelvis AP|||{observed}"
        f"|||||||||||{accession}",
        f"OBX|1|{value_type}|18782-3^Radiology study observation^LN||{note}||||||F|||{observed}",
    )


def framed(*messages: bytes) -> bytes:
    """Wrap messages in MLLP frames, back to back."""
    return b"".join(SB + m + EB + CR for m in messages)


def split_acks(output: bytes) -> list[bytes]:
    """Return the ACK payloads in the output of ``mllp_send`` (framed, one per line)."""
    acks = []
    position = 0
    while (start := output.find(SB, position)) >= 0:
        end = output.find(EB, start)
        assert end > start, f"unterminated ACK frame in {output!r}"
        acks.append(output[start + 1 : end])
        position = end + 1
    return acks


def ack_segments(ack: bytes, codec: str = "ascii") -> dict[str, list[str]]:
    """Split an ACK into ``{segment id: fields}`` (MSH fields numbered as in the standard)."""
    segments = {}
    for line in ack.decode(codec).split("\r"):
        if not line:
            continue
        fields = line.split("|")
        if fields[0] == "MSH":
            fields = ["MSH", "|", *fields[1:]]
        segments[fields[0]] = fields
    return segments


def mllp_send(port: int, path: Path, timeout_s: float = 60.0) -> list[bytes]:
    """Send the framed messages of ``path`` with python-hl7's ``mllp_send`` command.

    Runs in a separate process over a real TCP connection, all messages on one
    connection, each waiting for its ACK; returns the ACK payloads.
    """
    command = Path(sys.executable).with_name("mllp_send")
    completed = subprocess.run(
        [str(command), "--port", str(port), "--file", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=timeout_s,
        check=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return split_acks(completed.stdout)


# A GB 18030 ORU^R01 as a hospital system exports it to a file.
CHINESE_NOTE_GB = oru("GBF1", "左髋关节疼痛三年，加重两月。", charset="GB 18030-2000").encode(
    "gb18030"
)
