"""HL7 v2 escape sequences: decoding field text, escaping text written into ACKs and messages.

The sequences and formatting commands are those of HL7 v2.9 chapter 2
(sections "Escape sequences supporting multiple character sets" and
"Formatted text"), which v2.3 to v2.8 define the same way. Escape sequences
are decoded after the message is split at its separators, with the message's
own encoding characters from MSH-1 and MSH-2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Formatting commands of the FT data type that end a line; ".sp n" ends it
# and skips n - 1 further lines.
_SPACE_LINES = re.compile(r"^\.sp\s*([+]?\d*)$")
_SKIP_SPACES = re.compile(r"^\.sk\s*([+]?\d*)$")
# Fill mode and indentation change only the layout of a rendered report.
_LAYOUT_ONLY = re.compile(r"^\.(fi|nf|in\s*[+-]?\d+|ti\s*[+-]?\d+)$")
_HEX = re.compile(r"^[0-9A-Fa-f]+$")


class EscapeError(ValueError):
    """An escape sequence whose content cannot be decoded without guessing."""


@dataclass(frozen=True)
class EncodingCharacters:
    """Delimiters of one message: MSH-1 and the characters of MSH-2.

    ``escape`` and ``truncation`` are empty when MSH-2 does not define them
    (a message without an escape character has no escape sequences).
    """

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @classmethod
    def from_msh(cls, field_separator: str, msh_2: str) -> EncodingCharacters:
        """Build from MSH-1 and MSH-2 (component, repetition, escape, subcomponent, truncation)."""
        return cls(
            field=field_separator,
            component=msh_2[0:1] or "^",
            repetition=msh_2[1:2] or "~",
            escape=msh_2[2:3],
            subcomponent=msh_2[3:4] or "&",
            truncation=msh_2[4:5],
        )

    @property
    def msh_2(self) -> str:
        """The MSH-2 Encoding Characters field as written."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


def unescape(value: str, encoding: EncodingCharacters, codec: str) -> str:
    r"""Decode the escape sequences of one field, component or subcomponent value.

    ``\F\ \S\ \T\ \R\ \E\ \P\`` become the delimiters they stand for.
    ``\Xhh..\`` becomes the bytes it spells, decoded with the message's
    ``codec``. ``\.br\`` and ``\.ce\`` end a line, ``\.sp n\`` ends it and adds
    blank lines, and ``\.sk n\`` adds n spaces. ``\H\``, ``\N\``, ``\.fi\``,
    ``\.nf\``, ``\.in n\`` and ``\.ti n\`` only change highlighting or layout,
    so they are removed. Anything else between two escape characters, and an
    escape character without a partner, stays as it was: text with stray
    backslashes (a Windows path) passes through unchanged.

    Raises
    ------
    EscapeError
        A ``\X..\`` sequence whose bytes are not valid in ``codec``, or a
        character set switch (``\C..\``, ``\M..\``), which this decoder does
        not support.
    """
    escape = encoding.escape
    if not escape or escape not in value:
        return value
    parts: list[str] = []
    position = 0
    while True:
        start = value.find(escape, position)
        if start < 0:
            parts.append(value[position:])
            break
        end = value.find(escape, start + 1)
        if end < 0:
            parts.append(value[position:])
            break
        parts.append(value[position:start])
        sequence = value[start + 1 : end]
        decoded = _decode_sequence(sequence, encoding, codec)
        parts.append(value[start : end + 1] if decoded is None else decoded)
        position = end + 1
    return "".join(parts)


def _decode_sequence(sequence: str, encoding: EncodingCharacters, codec: str) -> str | None:
    """Return the text for one escape sequence, or ``None`` to keep it verbatim."""
    delimiters = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
        # v2.7 added the truncation character; "#" is its conventional value.
        "P": encoding.truncation or "#",
    }
    if sequence in delimiters:
        return delimiters[sequence]
    if sequence in ("H", "N"):
        return ""
    if sequence.startswith("X") and len(sequence) > 1:
        digits = sequence[1:]
        if len(digits) % 2 or not _HEX.match(digits):
            return None
        try:
            return bytes.fromhex(digits).decode(codec)
        except UnicodeDecodeError:
            raise EscapeError(f"escape sequence \\{sequence}\\ is not valid {codec} text") from None
    if sequence[:1] in ("C", "M") and len(sequence) in (5, 7) and _HEX.match(sequence[1:]):
        raise EscapeError(
            f"character set switch \\{sequence}\\ is not supported; send the text in the "
            "message character set (MSH-18), for example UNICODE UTF-8"
        )
    if sequence in (".br", ".ce"):
        return "\n"
    if match := _SPACE_LINES.match(sequence):
        return "\n" * max(int(match.group(1) or 1), 1)
    if match := _SKIP_SPACES.match(sequence):
        return " " * int(match.group(1) or 1)
    if _LAYOUT_ONLY.match(sequence):
        return ""
    return None


def escape(value: str, encoding: EncodingCharacters) -> str:
    r"""Escape delimiters in text written into a field, and line breaks as ``\.br\``."""
    if not encoding.escape:
        # Without an escape character the delimiters cannot be written at all.
        for delimiter in (
            encoding.field,
            encoding.component,
            encoding.repetition,
            encoding.subcomponent,
        ):
            value = value.replace(delimiter, " ")
        return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    esc = encoding.escape
    replacements = {
        esc: f"{esc}E{esc}",
        encoding.field: f"{esc}F{esc}",
        encoding.component: f"{esc}S{esc}",
        encoding.subcomponent: f"{esc}T{esc}",
        encoding.repetition: f"{esc}R{esc}",
    }
    if encoding.truncation:
        replacements[encoding.truncation] = f"{esc}P{esc}"
    out = []
    for character in value.replace("\r\n", "\n").replace("\r", "\n"):
        if character == "\n":
            out.append(f"{esc}.br{esc}")
        else:
            out.append(replacements.get(character, character))
    return "".join(out)
