"""Read the few header attributes the node needs from an encoded instance.

The SCP calls :func:`read_header` on every received instance. It parses the
header only (``stop_before_pixels``, only :data:`HEADER_KEYWORDS`), so pixel
data is never decoded, and returns plain JSON-ready values that the job store
keeps for series classification. No patient attribute is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pydicom
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.tag import Tag

# Attributes kept for every instance. UIDs place the file; the rest classify
# the series (see hipfuse.node.series).
HEADER_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "BodyPartExamined",
    "ImageType",
    "SliceThickness",
    "ConvolutionKernel",
    "NumberOfFrames",
    "ImagesInAcquisition",
    "Manufacturer",
    "ManufacturerModelName",
)
_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]


class HeaderError(ValueError):
    """The data set could not be parsed."""


@dataclass(frozen=True)
class InstanceHeader:
    """Header attributes of one instance as JSON-ready values (absent when not present)."""

    attributes: dict[str, Any] = field(default_factory=dict)
    # Attributes present but unreadable (for example a malformed DS value).
    unreadable: tuple[str, ...] = ()

    def get(self, keyword: str, default: Any = None) -> Any:
        """Return one attribute's value, or ``default`` when absent."""
        return self.attributes.get(keyword, default)


def read_header(part10: bytes | bytearray | memoryview) -> InstanceHeader:
    """Parse :data:`HEADER_KEYWORDS` from a Part 10 byte stream without the pixel data.

    Raises
    ------
    HeaderError
        The bytes are not a readable DICOM data set.
    """
    try:
        dataset = pydicom.dcmread(
            BytesIO(part10), stop_before_pixels=True, specific_tags=_TAGS, force=False
        )
    # pydicom raises many unrelated types (struct.error, EOFError, ValueError,
    # InvalidDicomError, zlib.error and more) for malformed input. Each of them
    # means the same to the sender, so all become one HeaderError.
    except Exception as exc:
        raise HeaderError(f"data set cannot be parsed: {type(exc).__name__}: {exc}") from exc

    attributes: dict[str, Any] = {}
    unreadable: list[str] = []
    for keyword in HEADER_KEYWORDS:
        if keyword not in dataset:
            continue
        try:
            value = dataset[keyword].value
        except Exception:  # a malformed value of one attribute; the others still count
            unreadable.append(keyword)
            continue
        converted = _json_value(value)
        if converted is not None and converted != "" and converted != []:
            attributes[keyword] = converted
    return InstanceHeader(attributes=attributes, unreadable=tuple(unreadable))


def _json_value(value: Any) -> Any:
    """Turn a pydicom value into str, int, float or a list of them."""
    if isinstance(value, MultiValue | list | tuple):
        items: Sequence[Any] = value
        return [_json_value(item) for item in items]
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \x00")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value).strip(" \x00")


# Sequence Delimitation Item (FFFE,E0DD) with length 0, little and big endian
# (PS3.5 section 7.5): the last bytes of a data set whose last element has
# undefined length, such as encapsulated Pixel Data.
_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
_UNDEFINED_LENGTH = 0xFFFFFFFF


def find_truncation(part10: bytes | bytearray | memoryview) -> str | None:
    """Return why a Part 10 byte stream ends before its data set does, or ``None``.

    pydicom reads a file cut short without an error: a value that runs past
    the end comes back shorter, and the elements after it are missing. So the
    last element is checked against the end of the bytes: a defined length
    must fit, and an undefined length must end with its delimiter. A deflated
    data set, or File Meta Information without its group length, is not
    checked.

    Raises
    ------
    HeaderError
        The bytes are not a readable DICOM data set.
    """
    data = bytes(part10)
    try:
        meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=[]).file_meta
    except Exception as exc:  # as in read_header: every parse failure is one error
        raise HeaderError(f"data set cannot be parsed: {type(exc).__name__}: {exc}") from exc
    transfer_syntax = meta.get("TransferSyntaxUID")
    group_length = meta.get("FileMetaInformationGroupLength")
    if transfer_syntax is None or group_length is None or transfer_syntax.is_deflated:
        return None
    # Preamble (128), "DICM" (4), then the group length element (12 bytes) and its group.
    fp = BytesIO(data)
    fp.seek(128 + 4 + 12 + int(group_length))
    last = None
    try:
        # Values over 1 KiB are skipped, not read: only offsets and lengths count.
        elements = data_element_generator(
            fp, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian, defer_size=1024
        )
        for element in elements:
            last = element
    except EOFError as exc:  # a value of undefined length whose delimiter is missing
        return f"the file ends inside the data set ({exc})"
    except Exception as exc:
        raise HeaderError(f"data set cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if last is None:
        return "the data set is empty after the File Meta Information"
    length = getattr(last, "length", None)
    value_tell = getattr(last, "value_tell", None)
    if length is None or value_tell is None:
        return None
    if length == _UNDEFINED_LENGTH:
        if data[-8:] in _SEQUENCE_DELIMITERS:
            return None
        return f"{last.tag} of undefined length has no closing delimiter at the end of the file"
    if value_tell + length > len(data):
        missing = value_tell + length - len(data)
        return f"{last.tag} needs {length} bytes but the file ends {missing} bytes short"
    return None
