"""Character sets of HL7 v2 messages: MSH-18 values mapped to Python codecs.

MSH-18 names the character set of the whole message with a value of HL7
Table 0211 (v2.3 to v2.9). The fields before it are ASCII in practice, so the
header can be read from the raw bytes before anything is decoded. The parser
then checks that the decoded text carries the same MSH-18 value. This catches
a header whose non-ASCII bytes shifted the field count.

The table lives in ``hipfuse.config`` so that ``[hl7] default_charset`` is
checked when the settings load; the HL7 parser imports it from here.
"""

from __future__ import annotations

import codecs
import re

# HL7 Table 0211 values, written as the standard spells them, and the Python
# codec that decodes each one.
TABLE_0211_CODECS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    # GB 18030-2000 is a superset of GBK and GB 2312; Python's codec follows
    # GB 18030-2005, which decodes every GB 18030-2000 sequence the same way.
    "GB 18030-2000": "gb18030",
    # KS X 1001 travels in its EUC-KR form in HL7 messages.
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE UTF-8": "utf-8",
}

# Table 0211 values this receiver cannot decode, with the reason.
UNSUPPORTED_CHARSETS: dict[str, str] = {
    "UNICODE": "UCS-2 bytes can contain the MLLP block characters; send UNICODE UTF-8",
    "UNICODE UTF-16": "UTF-16 bytes can contain the MLLP block characters; send UNICODE UTF-8",
    "UNICODE UTF-32": "UTF-32 bytes can contain the MLLP block characters; send UNICODE UTF-8",
    "ISO IR14": "JIS X 0201 has no Python codec here; send UNICODE UTF-8",
    "ISO IR87": "JIS X 0208 needs ISO 2022 switching, which is not supported; send UNICODE UTF-8",
    "ISO IR159": "JIS X 0212 needs ISO 2022 switching, which is not supported; send UNICODE UTF-8",
    "CNS 11643-1992": "CNS 11643 has no Python codec; send UNICODE UTF-8 or BIG-5",
}

# Spellings seen from real senders that are not Table 0211 values, keyed by
# the value with spaces, hyphens, underscores and slashes removed.
_ALIASES: dict[str, str] = {
    "UTF8": "utf-8",
    "UNICODEUTF8": "utf-8",
    "GB18030": "gb18030",
    "GB180302000": "gb18030",
    "GB180302005": "gb18030",
    # GBK and GB 2312 bytes decode identically under GB 18030, and senders that
    # declare GB2312 often send GBK characters.
    "GBK": "gb18030",
    "GB2312": "gb18030",
    "ISO88591": "iso8859-1",
    "ISOIR100": "iso8859-1",
    "LATIN1": "iso8859-1",
    "ISOIR192": "utf-8",
}

# Python codecs whose bytes may contain the MLLP start and end block characters.
_WIDE_CODECS = {"utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"}


class UnknownCharsetError(ValueError):
    """An MSH-18 value that names no character set this receiver can decode."""


def _normalise(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip().upper())


def codec_for_charset(value: str) -> str:
    """Return the Python codec name for an MSH-18 value.

    Parameters
    ----------
    value
        A Table 0211 value such as ``"UNICODE UTF-8"``, ``"GB 18030-2000"``
        or ``"8859/1"``, a common spelling such as ``"UTF-8"`` or ``"GBK"``,
        or any name in Python's codec registry.

    Raises
    ------
    UnknownCharsetError
        The value is empty, unknown, or names a character set that cannot be
        decoded here (UTF-16, UTF-32, the Japanese ISO IR sets, CNS 11643).
    """
    normalised = _normalise(value)
    if not normalised:
        raise UnknownCharsetError("character set is empty; use a value of HL7 Table 0211")
    if normalised in TABLE_0211_CODECS:
        return TABLE_0211_CODECS[normalised]
    if normalised in UNSUPPORTED_CHARSETS:
        raise UnknownCharsetError(
            f"character set {value!r} is not supported: {UNSUPPORTED_CHARSETS[normalised]}"
        )
    compact = re.sub(r"[\s\-_/]", "", normalised)
    if compact in _ALIASES:
        return _ALIASES[compact]
    try:
        name = codecs.lookup(value.strip()).name
    except LookupError:
        raise UnknownCharsetError(
            f"character set {value!r} is not an HL7 Table 0211 value or a known encoding; "
            "use for example UNICODE UTF-8, GB 18030-2000 or 8859/1"
        ) from None
    if name in _WIDE_CODECS:
        raise UnknownCharsetError(
            f"character set {value!r} is not supported: its bytes can contain the MLLP "
            "block characters; send UNICODE UTF-8"
        )
    return name
