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
