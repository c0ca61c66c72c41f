"""Read a clinical note from a text file, in whatever language and script it is written."""

from __future__ import annotations

import codecs
from pathlib import Path

import structlog

from hipfuse.inference.readers.codes import ErrorCode
from hipfuse.inference.types import ClinicalText, InputError

log = structlog.get_logger(__name__)

# A clinical note is a few kilobytes; a file this large is not one.
MAX_TEXT_BYTES = 10 * 1024 * 1024

# Byte order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOM_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Tried in order when the file has no byte order mark. GB18030 covers GBK and
# GB2312, the usual encodings of Chinese notes that are not UTF-8.
_FALLBACK_ENCODINGS = ("utf-8", "gb18030")


def read_clinical_text(path: Path, *, max_bytes: int = MAX_TEXT_BYTES) -> ClinicalText:
    """Read a note and decode it without changing its content.

    A byte order mark selects UTF-8, UTF-16 or UTF-32 and is removed.
    Without one, the bytes are decoded as UTF-8 and, only if that fails, as
    GB18030. Nothing else is changed: no Unicode normalisation, no stripping,
    line endings kept.

    Returns
    -------
    ClinicalText
        The text, an empty identity and the file name as its source.

    Raises
    ------
    InputError
        ``file_not_found``, ``text_too_large`` (over ``max_bytes``) or
        ``text_encoding_unknown`` (names the encodings tried), also when the
        decoded text contains NUL characters, the mark of UTF-16 without a
        byte order mark.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(ErrorCode.FILE_NOT_FOUND, f"clinical text {path} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            ErrorCode.TEXT_TOO_LARGE,
            f"{path} has {size} bytes, more than the {max_bytes} allowed for a clinical "
            "note; pass the note itself",
        )
    data = path.read_bytes()
    text, encoding = _decode(data, path)
    if "\x00" in text:
        raise InputError(
            ErrorCode.TEXT_ENCODING_UNKNOWN,
            f"{path} decoded as {encoding} contains NUL characters, which suggests UTF-16 "
            "or UTF-32 without a byte order mark; save it as UTF-8",
        )
    if not text.strip():
        log.warning("clinical_text_empty", characters=len(text))
    log.info("clinical_text_read", encoding=encoding, characters=len(text))
    return ClinicalText(text=text, sources=[path.name])


def _looks_like_misread_latin(text: str) -> bool:
    """Tell whether GB18030-decoded text is more likely Latin-1 read wrongly.

    In Latin-1, "u" with umlaut followed by "f" (as in the German word for hip)
    is a valid GB18030 pair, so it decodes to one Chinese character wedged
    between ASCII letters ("H" + CJK + "te"). Chinese
    notes have runs of several characters, so a note where most non-ASCII runs
    are single characters inside Latin words is rejected rather than guessed.
    """
    runs = 0
    wedged = 0
    index = 0
    while index < len(text):
        if ord(text[index]) < 128:
            index += 1
            continue
        start = index
        while index < len(text) and ord(text[index]) >= 128:
            index += 1
        runs += 1
        before = text[start - 1] if start > 0 else ""
        after = text[index] if index < len(text) else ""
        if (
            index - start == 1
            and before.isascii()
            and before.isalpha()
            and after.isascii()
            and after.isalpha()
        ):
            wedged += 1
    return runs > 0 and wedged * 2 > runs


def _decode(data: bytes, path: Path) -> tuple[str, str]:
    for bom, encoding in _BOM_ENCODINGS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as error:
                raise InputError(
                    ErrorCode.TEXT_ENCODING_UNKNOWN,
                    f"{path} starts with a {encoding} byte order mark but is not valid "
                    f"{encoding} ({error.reason} at byte {error.start}); save it as UTF-8",
                ) from error
    for encoding in _FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "gb18030" and _looks_like_misread_latin(text):
            raise InputError(
                ErrorCode.TEXT_ENCODING_UNKNOWN,
                f"{path} is not UTF-8, and read as GB18030 its non-ASCII characters stand "
                "alone inside Latin words, the mark of ISO 8859-1 or Windows-1252 text; "
                "save it as UTF-8",
            )
        return text, encoding
    raise InputError(
        ErrorCode.TEXT_ENCODING_UNKNOWN,
        f"{path} is not valid UTF-8, UTF-16 or UTF-32 with a byte order mark, or "
        "GB18030; save it as UTF-8",
    )
