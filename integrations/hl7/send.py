"""Send HL7 v2 messages over MLLP and build a text-result message: a small sending system.

``hipfuse-node demo`` runs this module as a separate process to deliver a
note to the node's listener, as a hospital system would::

    python -m hipfuse.integrations.hl7.send --port 2575 message.hl7 [more.hl7 ...]

Each file contains one message with segments ended by CR. All messages go over
one connection, each after the ACK of the one before it. One line per
message is printed: its MSH-10 control ID and the MSA-1 acknowledgement code.
The exit status is 0 when every message got AA or CA, 1 when one got another
code, and 2 when the listener could not be reached or sent no ACK in time.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hipfuse.integrations.hl7.escapes import EncodingCharacters, escape
from hipfuse.integrations.hl7.mllp import FrameDecoder, frame_message

# Largest ACK read; ACKs are a few hundred bytes.
_MAX_ACK_BYTES = 1024 * 1024
_ACCEPTED_CODES = frozenset({"AA", "CA"})
# LOINC 11329-0 "History general", which the intake files under history.
HISTORY_OBSERVATION = "11329-0^History general^LN"


@dataclass(frozen=True)
class Acknowledgement:
    """MSA-1 and MSA-2 of an ACK, with the ACK's bytes (MLLP framing removed)."""

    code: str
    control_id: str
    raw: bytes

    @property
    def accepted(self) -> bool:
        """Whether the receiver accepted the message (AA or CA)."""
        return self.code in _ACCEPTED_CODES


def note_message(
    *,
    control_id: str,
    patient_id: str,
    note: str,
    observed_at: datetime,
    issuer: str = "",
    accession_number: str = "",
    observation: str = HISTORY_OBSERVATION,
    sending_application: str = "HIPFUSE-SEND",
    sending_facility: str = "",
) -> str:
    r"""Build an ORU^R01 (v2.5.1, UNICODE UTF-8) that carries ``note`` in one OBX of type FT.

    The note is escaped for the default delimiters (``\F\ \S\ \T\ \R\ \E\``)
    and each line break becomes the FT formatting command ``\.br\``. The
    accession number goes into OBR-18, where IHE radiology workflows carry it.

    Parameters
    ----------
    control_id
        MSH-10, unique per sending application.
    patient_id, issuer
        PID-3 identifier and its assigning authority (CX.4); ``issuer`` '' for none.
    note
        The text, in any language; line breaks at its very end are dropped.
    observed_at
        OBR-7 and OBX-14, local wall-clock time.
    accession_number
        OBR-18; '' leaves the note without an order link.
    observation
        OBX-3 as written (already escaped), by default LOINC 11329-0.
    """
    encoding = EncodingCharacters()
    when = observed_at.strftime("%Y%m%d%H%M%S")
    identifier = escape(patient_id, encoding)
    if issuer:
        identifier += f"^^^{escape(issuer, encoding)}^MR"
    text = escape(note.rstrip("\r\n"), encoding)
    accession = escape(accession_number, encoding)
    order = f"PL{escape(control_id, encoding)}"
    segments = [
        "|".join(
            [
                "MSH",
                encoding.msh_2,
                escape(sending_application, encoding),
                escape(sending_facility, encoding),
                "HIPFUSE",
                "",
                when,
                "",
                "ORU^R01^ORU_R01",
                escape(control_id, encoding),
                "P",
                "2.5.1",
                "",
                "",
                "",
                "",
                "",
                "UNICODE UTF-8",
            ]
        ),
        f"PID|1||{identifier}",
        f"ORC|RE|{order}",
        f"OBR|1|{order}||{observation}|||{when}|||||||||||{accession}",
        f"OBX|1|FT|{observation}||{text}||||||F|||{when}",
    ]
    return "".join(segment + "\r" for segment in segments)


def read_acknowledgement(payload: bytes) -> Acknowledgement:
    """Read MSA-1 and MSA-2 from an ACK payload.

    Raises
    ------
    ValueError
        The payload has no MSH or MSA segment.
    """
    text = payload.decode("utf-8", errors="replace")
    if not text.startswith("MSH") or len(text) < 4:
        raise ValueError("the reply is not an HL7 message: it does not start with MSH")
    separator = text[3]
    for segment in text.replace("\n", "\r").split("\r"):
        fields = segment.split(separator)
        if fields[0] == "MSA" and len(fields) > 1:
            control_id = fields[2] if len(fields) > 2 else ""
            return Acknowledgement(fields[1], control_id, payload)
    raise ValueError("the reply has no MSA segment")


def send_messages(
    host: str, port: int, messages: Sequence[bytes], timeout_s: float = 30.0
) -> list[Acknowledgement]:
    """Send each message over one MLLP connection and wait for its ACK before the next.

    Raises
    ------
    OSError
        The connection failed or the listener closed it early.
    TimeoutError
        No ACK arrived within ``timeout_s`` seconds of a message.
    ValueError
        A reply is not an ACK.
    """
    acknowledgements = []
    decoder = FrameDecoder(_MAX_ACK_BYTES)
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        for message in messages:
            connection.sendall(frame_message(message))
            frames = []
            while not frames:
                chunk = connection.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{host}:{port} closed the connection before its ACK")
                frames = decoder.feed(chunk)
            acknowledgements.append(read_acknowledgement(frames[0].payload))
    return acknowledgements


def _control_id(message: bytes) -> str:
    header = message.split(b"\r", 1)[0].decode("utf-8", errors="replace")
    fields = header.split(header[3:4] or "|")
    return fields[9] if len(fields) > 9 else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m hipfuse.integrations.hl7.send",
        description="Send HL7 v2 message files over MLLP and print each ACK code.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="files of one message each")
    parser.add_argument("--host", default="127.0.0.1", help="listener address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listener TCP port")
    parser.add_argument(
        "--timeout-s", type=float, default=30.0, help="seconds to wait for each ACK (default 30)"
    )
    options = parser.parse_args(argv)

    messages = []
    for path in options.files:
        # Segments end with CR; a file edited on another system may use LF or CRLF.
        data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        messages.append(data)
    try:
        acknowledgements = send_messages(options.host, options.port, messages, options.timeout_s)
    except (OSError, ValueError) as error:
        print(f"sending to {options.host}:{options.port} failed: {error}", file=sys.stderr)
        return 2
    for message, acknowledgement in zip(messages, acknowledgements, strict=True):
        print(f"{_control_id(message)} {acknowledgement.code}")
    return 0 if all(ack.accepted for ack in acknowledgements) else 1


if __name__ == "__main__":
    sys.exit(main())
