"""Decode and split one HL7 v2 message (ER7, the pipe-delimited encoding).

The raw bytes are decoded only after MSH-18 has been read from the header,
and the message is split at its own delimiters (MSH-1 and MSH-2). Field
values stay escaped until a caller asks for text, because escape sequences
stand for delimiters and must survive the split.

Segment terminators may be CR (the standard), CRLF or LF. When the message
contains a CR, CR ends segments and an LF right after it is dropped, so a
bare LF inside a note stays part of the note. A message without any CR is
split at LF. A line that does not start with a segment ID continues the
segment before it (a note with literal line breaks), joined with an LF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hipfuse.config.hl7_charsets import UnknownCharsetError, codec_for_charset
from hipfuse.integrations.hl7.errors import AckCode, HL7ErrorCode, MessageError
from hipfuse.integrations.hl7.escapes import EncodingCharacters, EscapeError, unescape

UTF8_BOM = b"\xef\xbb\xbf"
# UTF-32 LE starts like UTF-16 LE, so both are caught by the first two bytes.
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
# The bytes allowed as MSH-1: printable ASCII that is neither a letter, a digit nor a space.
_FIELD_SEPARATORS = {bytes([b]) for b in range(0x21, 0x7F) if not chr(b).isalnum()}


@dataclass(frozen=True)
class Segment:
    """One segment; ``fields[n]`` is the raw, still escaped value of field n.

    For MSH, ``fields[1]`` is the field separator and ``fields[2]`` the
    encoding characters, so the numbering matches the standard's MSH-1, MSH-2.
    """

    id: str
    fields: tuple[str, ...]

    def raw(self, position: int) -> str:
        """Return field ``position`` as sent (escaped), or '' when absent."""
        return self.fields[position] if position < len(self.fields) else ""


@dataclass(frozen=True)
class RawHeader:
    """MSH fields read from the raw bytes before decoding; '' where a field is not ASCII."""

    encoding: EncodingCharacters
    fields: tuple[str, ...]

    def raw(self, position: int) -> str:
        """Return MSH field ``position`` as sent, or ''."""
        return self.fields[position] if position < len(self.fields) else ""

    def component(self, position: int, component: int = 1) -> str:
        """Return one component of an MSH field as sent."""
        parts = self.raw(position).split(self.encoding.component)
        return parts[component - 1] if component <= len(parts) else ""


@dataclass(frozen=True)
class ParsedMessage:
    """A decoded message split into segments.

    Attributes
    ----------
    segments
        In message order; the first is MSH.
    encoding
        The message's delimiters.
    codec
        The Python codec its bytes were decoded with.
    charset
        MSH-18 as sent (first repetition), '' when empty.
    joined_lines
        Lines without a segment ID that were joined to the segment before.
    """

    segments: tuple[Segment, ...]
    encoding: EncodingCharacters
    codec: str
    charset: str
    joined_lines: int = 0

    @property
    def msh(self) -> Segment:
        """The MSH segment."""
        return self.segments[0]

    def first(self, segment_id: str) -> Segment | None:
        """Return the first segment with this ID, or ``None``."""
        for segment in self.segments:
            if segment.id == segment_id:
                return segment
        return None

    def text(self, raw: str) -> str:
        """Decode the escape sequences of a raw value with this message's delimiters.

        Raises
        ------
        EscapeError
            See :func:`~hipfuse.integrations.hl7.escapes.unescape`.
        """
        return unescape(raw, self.encoding, self.codec)

    def repetitions(self, raw_field: str) -> list[str]:
        """Split a raw field at the repetition separator."""
        return raw_field.split(self.encoding.repetition) if raw_field else []

    def components(self, raw_value: str) -> list[str]:
        """Split a raw repetition at the component separator."""
        return raw_value.split(self.encoding.component)

    def subcomponents(self, raw_component: str) -> list[str]:
        """Split a raw component at the subcomponent separator."""
        return raw_component.split(self.encoding.subcomponent)

    def value(
        self,
        segment: Segment,
        position: int,
        component: int = 1,
        subcomponent: int = 1,
        repetition: int = 1,
    ) -> str:
        """Return one unescaped subcomponent of a field (positions count from 1)."""
        repetitions = self.repetitions(segment.raw(position))
        if repetition > len(repetitions):
            return ""
        components = self.components(repetitions[repetition - 1])
        if component > len(components):
            return ""
        parts = self.subcomponents(components[component - 1])
        if subcomponent > len(parts):
            return ""
        return self.text(parts[subcomponent - 1])

    def header(self, position: int, component: int = 1) -> str:
        """Return an unescaped component of an MSH field, stripped of spaces."""
        return self.value(self.msh, position, component).strip()


def strip_bom(raw: bytes) -> tuple[bytes, bool]:
    """Remove a UTF-8 byte order mark; return the rest and whether there was one.

    Raises
    ------
    MessageError
        AR for a UTF-16 or UTF-32 byte order mark.
    """
    if raw.startswith(UTF8_BOM):
        return raw[len(UTF8_BOM) :], True
    if raw.startswith(_WIDE_BOMS):
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.DATA_TYPE_ERROR,
            "message starts with a UTF-16 or UTF-32 byte order mark; MLLP cannot carry "
            "UTF-16 or UTF-32, send UNICODE UTF-8",
        )
    return raw, False


def read_raw_header(body: bytes) -> RawHeader:
    """Read the MSH fields of a message from its bytes, before decoding.

    Raises
    ------
    MessageError
        AR when the message does not start with ``MSH`` and a valid field separator.
    """
    if not body.startswith(b"MSH") or len(body) < 8:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.SEGMENT_SEQUENCE_ERROR,
            "message does not start with an MSH segment",
            ("MSH", 1, 0),
        )
    separator = body[3:4]
    if separator not in _FIELD_SEPARATORS:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.DATA_TYPE_ERROR,
            f"MSH-1 field separator {separator!r} is not a printable ASCII delimiter",
            ("MSH", 1, 1),
        )
    line = re.split(rb"[\r\n]", body, maxsplit=1)[0]
    raw_fields = line.split(separator)
    fields = ["MSH", separator.decode("ascii")]
    for raw_field in raw_fields[1:]:
        try:
            fields.append(raw_field.decode("ascii"))
        except UnicodeDecodeError:
            fields.append("")
    encoding = EncodingCharacters.from_msh(fields[1], fields[2] if len(fields) > 2 else "")
    return RawHeader(encoding, tuple(fields))


def parse_message(raw: bytes, default_charset: str) -> ParsedMessage:
    """Decode a message with the character set its MSH-18 names and split it.

    Parameters
    ----------
    raw
        The message bytes, MLLP framing removed.
    default_charset
        Used when MSH-18 is empty (HL7 Table 0211 value or codec name).

    Raises
    ------
    MessageError
        AR for an unreadable header or an unsupported character set, AE for
        bytes that are not valid in the message's character set.
    """
    body, had_bom = strip_bom(raw)
    body = body.lstrip(b"\r\n\t ")
    header = read_raw_header(body)
    charset = header.raw(18).split(header.encoding.repetition)[0].strip()
    if not charset and header.raw(18):
        # MSH-18 is present but not ASCII: the header cannot be trusted.
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.TABLE_VALUE_NOT_FOUND,
            "MSH-18 character set is not ASCII; write it as an HL7 Table 0211 value",
            ("MSH", 1, 18),
        )
    codec = _codec(charset, default_charset, had_bom)
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        name = charset or f"{default_charset} (the default; MSH-18 is empty)"
        raise MessageError(
            AckCode.ERROR,
            HL7ErrorCode.DATA_TYPE_ERROR,
            f"bytes at offset {exc.start} are not valid {name}; "
            "set MSH-18 to the character set the message is written in",
        ) from None

    lines, joined = _split_segments(text, header.encoding.field)
    segments = tuple(_split_fields(line, header.encoding) for line in lines)
    message = ParsedMessage(segments, header.encoding, codec, charset, joined)
    decoded_charset = message.msh.raw(18).split(header.encoding.repetition)[0].strip()
    if decoded_charset != charset:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.DATA_TYPE_ERROR,
            "MSH-18 read from the raw header differs from MSH-18 after decoding; "
            "write MSH-3 to MSH-17 in ASCII",
            ("MSH", 1, 18),
        )
    try:
        # Header values are codes: an invalid escape there is an error at once.
        for position in (9, 10, 11, 12):
            message.header(position)
    except EscapeError as exc:
        raise MessageError(AckCode.REJECT, HL7ErrorCode.DATA_TYPE_ERROR, str(exc)) from None
    return message


def _codec(charset: str, default_charset: str, had_bom: bool) -> str:
    try:
        codec = codec_for_charset(charset) if charset else codec_for_charset(default_charset)
    except UnknownCharsetError as exc:
        raise MessageError(
            AckCode.REJECT,
            HL7ErrorCode.TABLE_VALUE_NOT_FOUND,
            f"MSH-18 {exc}",
            ("MSH", 1, 18),
        ) from None
    if had_bom:
        if not charset:
            return "utf-8"
        if codec != "utf-8":
            raise MessageError(
                AckCode.REJECT,
                HL7ErrorCode.DATA_TYPE_ERROR,
                f"message starts with a UTF-8 byte order mark but MSH-18 is {charset!r}; "
                "remove the mark or set MSH-18 to UNICODE UTF-8",
                ("MSH", 1, 18),
            )
    return codec


def _split_segments(text: str, field_separator: str) -> tuple[list[str], int]:
    if "\r" in text:
        pieces = [piece.removeprefix("\n") for piece in text.split("\r")]
    else:
        pieces = text.split("\n")
    lines: list[str] = []
    joined = 0
    for piece in pieces:
        if not piece.strip():
            continue
        segment_id = piece[:3]
        starts_segment = _SEGMENT_ID.match(segment_id) and piece[3:4] in ("", field_separator)
        if starts_segment or not lines:
            lines.append(piece)
        else:
            lines[-1] += "\n" + piece
            joined += 1
    return lines, joined


def _split_fields(line: str, encoding: EncodingCharacters) -> Segment:
    segment_id = line[:3]
    if segment_id == "MSH":
        rest = line[4:].split(encoding.field)
        return Segment("MSH", ("MSH", encoding.field, *rest))
    return Segment(segment_id, tuple(line.split(encoding.field)))
