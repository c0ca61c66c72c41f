"""Original-mode acknowledgements (ACK with MSA and, for AE and AR, ERR).

The ACK uses the delimiters of the message it acknowledges and is encoded in the
same character set, with MSH-18 repeated. ERR follows the message's version.
v2.5 and later fill ERR-2 Error Location, ERR-3 HL7 Error Code, ERR-4
Severity and ERR-8 User Message. v2.3 and v2.4 fill ERR-1 Error Code and
Location. MSA-3 Text Message carries the reason too, cut to its 80
characters, because many senders show only MSA.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from hipfuse.integrations.hl7.errors import ERROR_CODE_TEXT, AckCode, MessageError
from hipfuse.integrations.hl7.escapes import EncodingCharacters, escape
from hipfuse.integrations.hl7.header import version_tuple
from hipfuse.integrations.hl7.parser import ParsedMessage, RawHeader

# MSA-3 Text Message is ST of at most 80 characters in v2.3 to v2.5.
_MSA_3_MAX_CHARACTERS = 80


@dataclass(frozen=True)
class AckContext:
    """Values an ACK repeats from the message it acknowledges; ``*_raw`` values stay escaped."""

    encoding: EncodingCharacters = field(default_factory=EncodingCharacters)
    codec: str = "ascii"
    charset_raw: str = ""
    sending_application_raw: str = ""
    sending_facility_raw: str = ""
    receiving_facility_raw: str = ""
    processing_id_raw: str = "P"
    control_id: str = ""
    trigger_event: str = ""
    version: str = "2.5"

    @classmethod
    def from_message(cls, message: ParsedMessage) -> AckContext:
        """Take the context from a decoded message."""
        msh = message.msh
        return cls(
            encoding=message.encoding,
            codec=message.codec,
            charset_raw=msh.raw(18),
            sending_application_raw=msh.raw(3),
            sending_facility_raw=msh.raw(4),
            receiving_facility_raw=msh.raw(6),
            processing_id_raw=msh.raw(11) or "P",
            control_id=_plain(message, 10),
            trigger_event=_plain(message, 9, 2),
            version=_plain(message, 12) or "2.5",
        )

    @classmethod
    def from_raw_header(cls, header: RawHeader) -> AckContext:
        """Take the context from the ASCII fields of a message that could not be decoded."""
        return cls(
            encoding=header.encoding,
            codec="ascii",
            charset_raw=header.raw(18),
            sending_application_raw=header.raw(3),
            sending_facility_raw=header.raw(4),
            receiving_facility_raw=header.raw(6),
            processing_id_raw=header.raw(11) or "P",
            control_id=header.raw(10).strip(),
            trigger_event=header.component(9, 2).strip(),
            version=header.component(12).strip() or "2.5",
        )


def _plain(message: ParsedMessage, position: int, component: int = 1) -> str:
    # An undecodable escape in the acknowledged message must not stop the ACK.
    try:
        return message.header(position, component)
    except ValueError:
        return message.components(message.msh.raw(position))[component - 1].strip()


def build_ack(
    context: AckContext,
    code: AckCode,
    *,
    application_name: str,
    error: MessageError | None = None,
    now: datetime | None = None,
) -> bytes:
    """Build the ACK for a message, encoded in its character set.

    Parameters
    ----------
    context
        What the ACK repeats from the message.
    code
        MSA-1.
    application_name
        MSH-3 Sending Application of the ACK.
    error
        For AE and AR: the reason, error code and location written into MSA-3 and ERR.
    now
        MSH-7; the current local time when ``None``.
    """
    # NOTE: always an original-mode ACK (AA, AE, AR). A sender in enhanced mode
    # (MSH-15 and MSH-16 set) expecting CA/CE/CR commit ACKs is not served.
    encoding = context.encoding
    f = encoding.field
    c = encoding.component
    s = encoding.subcomponent
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    version = version_tuple(context.version)
    message_type = "ACK"
    if context.trigger_event:
        message_type += c + escape(context.trigger_event, encoding)
        if version >= (2, 3, 1):
            message_type += c + "ACK"
    msh = [
        "MSH",
        encoding.msh_2,
        escape(application_name, encoding),
        context.receiving_facility_raw,
        context.sending_application_raw,
        context.sending_facility_raw,
        stamp,
        "",
        message_type,
        uuid.uuid4().hex[:20],
        context.processing_id_raw,
        escape(context.version, encoding),
        "",
        "",
        "",
        "",
        "",
        context.charset_raw,
    ]
    while msh and not msh[-1]:
        msh.pop()
    segments = [f.join(msh)]

    msa = ["MSA", code.value, escape(context.control_id, encoding)]
    if error is not None:
        msa.append(escape(error.reason[:_MSA_3_MAX_CHARACTERS], encoding))
    segments.append(f.join(msa))

    if error is not None:
        code_text = escape(ERROR_CODE_TEXT[error.error_code], encoding)
        location = ""
        if error.location is not None:
            segment_id, sequence, position = error.location
            location = c.join(
                [segment_id, str(sequence) if sequence else "", str(position) if position else ""]
            )
        if version >= (2, 5):
            hl7_code = c.join([error.error_code.value, code_text, "HL70357"])
            reason = escape(error.reason, encoding)
            segments.append(f.join(["ERR", "", location, hl7_code, "E", "", "", "", reason]))
        else:
            hl7_code = s.join([error.error_code.value, code_text, "HL70357"])
            segments.append(f.join(["ERR", location + c + hl7_code]))

    text = "\r".join(segments) + "\r"
    try:
        return text.encode(context.codec)
    except UnicodeEncodeError:
        # Only a reason quoting a value can fail to encode, because the rest
        # comes from the message itself. "?" replaces such characters.
        return text.encode(context.codec, errors="replace")
