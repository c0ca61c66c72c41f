"""MSH checks: supported message types, events, versions and processing IDs."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from hipfuse.integrations.hl7.errors import AckCode, HL7ErrorCode, MessageError
from hipfuse.integrations.hl7.parser import ParsedMessage

# Message types with clinical text and the trigger events accepted for each;
# ``None`` accepts every event (ADT messages differ only in what they update).
# MDM T02, T04, T06, T08 and T10 carry document content; T01, T03, T05, T07,
# T09 and T11 are notifications without it.
SUPPORTED_EVENTS: dict[str, frozenset[str] | None] = {
    "ORU": frozenset({"R01"}),
    "MDM": frozenset({"T02", "T04", "T06", "T08", "T10"}),
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
    "ADT": None,
}
# MSH-12 versions 2.3 to 2.9 with any point release (2.3.1, 2.5.1, 2.8.2).
_SUPPORTED_VERSION = re.compile(r"^2\.[3-9](\.\d+)?$")
# HL7 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:[+-]\d{4})?$"
)


@dataclass(frozen=True)
class MessageHeader:
    """The MSH values this receiver uses, unescaped."""

    message_type: str
    trigger_event: str
    control_id: str
    version: str
    processing_id: str
    sending_application: str
    sending_facility: str
    message_time: datetime | None

    @property
    def type_label(self) -> str:
        """Message type and event as HL7 writes them, for example ``ORU^R01``."""
        return f"{self.message_type}^{self.trigger_event}"


def parse_hl7_datetime(value: str) -> datetime | None:
    """Parse an HL7 DTM/TS value to a wall-clock datetime, or ``None`` if it is not one.

    The UTC offset, when present, is dropped: items are compared by the local
    time the source wrote.
    """
    match = _DTM.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None


def check_header(message: ParsedMessage, processing_ids: Collection[str]) -> MessageHeader:
    """Read MSH and check that this receiver supports the message.

    Raises
    ------
    MessageError
        AR with code 101 (MSH-9 or MSH-10 empty), 200 (message type), 201
        (trigger event), 202 (processing ID) or 203 (version).
    """
    header = MessageHeader(
        message_type=message.header(9, 1),
        trigger_event=message.header(9, 2),
        control_id=message.header(10),
        version=message.header(12),
        processing_id=message.header(11),
        sending_application=message.header(3),
        sending_facility=message.header(4),
        message_time=parse_hl7_datetime(message.header(7)),
    )
    if not header.control_id:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-10 Message Control ID is empty",
            ("MSH", 1, 10),
        )
    if not header.message_type:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.REQUIRED_FIELD_MISSING,
            "MSH-9 Message Type is empty",
            ("MSH", 1, 9),
        )
    if header.message_type not in SUPPORTED_EVENTS:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            f"message type {header.message_type} is not accepted here; "
            f"send {', '.join(SUPPORTED_EVENTS)}",
            ("MSH", 1, 9),
        )
    events = SUPPORTED_EVENTS[header.message_type]
    if events is not None and header.trigger_event not in events:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.UNSUPPORTED_EVENT_CODE,
            f"trigger event {header.type_label} is not accepted here; "
            f"send {header.message_type} with {', '.join(sorted(events))}",
            ("MSH", 1, 9),
        )
    if not _SUPPORTED_VERSION.match(header.version):
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.UNSUPPORTED_VERSION_ID,
            f"MSH-12 version {header.version!r} is not supported; send version 2.3 to 2.9",
            ("MSH", 1, 12),
        )
    if header.processing_id not in processing_ids:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.UNSUPPORTED_PROCESSING_ID,
            f"MSH-11 processing ID {header.processing_id!r} is not accepted here "
            f"(accepted: {', '.join(sorted(processing_ids))})",
            ("MSH", 1, 11),
        )
    return header


def version_tuple(version: str) -> tuple[int, ...]:
    """Return ``(2, 5, 1)`` for ``"2.5.1"``; ``(0,)`` when not a version number."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)
