"""Durable spool of received instances: ``data_dir/spool/<study>/<series>/<sop>.dcm``.

Each instance is written as a DICOM Part 10 file into a temporary file in its
series folder, flushed and fsynced, then renamed over the final name, and the
folder is fsynced. After :meth:`Spool.store_instance` returns, the file
survives a crash, and a reader never sees half a file. File names come only from UIDs that
pass :func:`validate_uid`, so no received value can reach outside the spool.
Folders are created with mode 0700 and files with 0600.
"""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from hipfuse.node.durable_files import fsync_dir, remove_temp_files, write_file_durably

log = structlog.get_logger(__name__)

SPOOL_DIR_NAME = "spool"
# UID syntax of PS3.5 section 9.1: components of digits separated by dots, no
# leading zero in a component of more than one digit, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX_LENGTH = 64


class InvalidUIDError(ValueError):
    """A UID that breaks the syntax of PS3.5 section 9.1."""

    def __init__(self, keyword: str, value: str) -> None:
        self.keyword = keyword
        self.value = value
        super().__init__(
            f"{keyword} {value!r} is not a valid UID: use digits and dots, at most 64 "
            "characters, no empty component and no leading zero in a component"
        )


def validate_uid(keyword: str, value: object) -> str:
    """Return ``value`` as a string if it is a valid UID, else raise :class:`InvalidUIDError`.

    A trailing NUL, which UI values use as padding to an even length, is removed first.
    """
    text = str(value if value is not None else "").rstrip("\x00")
    if len(text) > _UID_MAX_LENGTH or not _UID.match(text):
        raise InvalidUIDError(keyword, text)
    return text


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str = "",
) -> bytes:
    """Encode the Part 10 preamble, ``DICM`` prefix and File Meta Information (PS3.10 7.1).

    Written directly (Explicit VR Little Endian, group 0002) because it runs
    for every received instance and pydicom's general writer costs about ten
    times as much. The UIDs must already be valid (:func:`validate_uid`).
    Implementation Class UID and Version Name are pynetdicom's, the network
    implementation that received the data set.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _pad_uid(sop_class_uid)),  # Media Storage SOP Class UID
        _element(0x0003, b"UI", _pad_uid(sop_instance_uid)),  # Media Storage SOP Instance UID
        _element(0x0010, b"UI", _pad_uid(transfer_syntax_uid)),  # Transfer Syntax UID
        _element(0x0012, b"UI", _pad_uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _element(0x0013, b"SH", _pad_text(PYNETDICOM_IMPLEMENTATION_VERSION)),
    ]
    if source_ae_title:
        elements.append(_element(0x0016, b"AE", _pad_text(source_ae_title)))
    body = b"".join(elements)
    group_length = _element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        # OB has two reserved bytes and a 32-bit length (PS3.5 Table 7.1-1).
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _pad_uid(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def _pad_text(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) % 2 else value


@dataclass(frozen=True)
class InstanceUIDs:
    """The three UIDs that place an instance in the spool, each validated."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    @classmethod
    def validated(cls, study: object, series: object, sop: object) -> InstanceUIDs:
        """Validate the UIDs and build the record; raise :class:`InvalidUIDError` otherwise."""
        return cls(
            validate_uid("StudyInstanceUID", study),
            validate_uid("SeriesInstanceUID", series),
            validate_uid("SOPInstanceUID", sop),
        )


@dataclass(frozen=True)
class SpooledFile:
    """A file written by :meth:`Spool.store_instance`."""

    path: Path
    size_bytes: int
    replaced_existing: bool


class Spool:
    """The spool folder under ``data_dir``.

    Parameters
    ----------
    data_dir
        The node's data folder (``[storage] data_dir``); the spool is its
        ``spool`` subfolder.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / SPOOL_DIR_NAME

    def prepare(self) -> int:
        """Create the spool folder and delete temporary files left by a crash.

        Returns the number of temporary files deleted. Their instances were
        never acknowledged, so the sender still has them.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        removed = remove_temp_files(self.root, "*/*")
        if removed:
            log.warning("spool_temp_files_removed", count=removed, spool=str(self.root))
        return removed

    def path_for(self, uids: InstanceUIDs) -> Path:
        """Return the final path of an instance."""
        return (
            self.root
            / uids.study_instance_uid
            / uids.series_instance_uid
            / f"{uids.sop_instance_uid}.dcm"
        )

    def store_instance(
        self, uids: InstanceUIDs, parts: Sequence[bytes | bytearray | memoryview]
    ) -> SpooledFile:
        """Write an encoded Part 10 file durably and return where it is.

        Parameters
        ----------
        uids
            Validated UIDs that name the file.
        parts
            The file's bytes in order, for example the preamble with the File
            Meta Information and then the data set exactly as received. They
            are written as they are, so the data set keeps its transfer syntax.

        Raises
        ------
        OSError
            The file could not be written (for example the disk is full); no
            partial file is left behind.
        """
        final = self.path_for(uids)
        series_dir = final.parent
        self._make_dir(series_dir.parent)
        self._make_dir(series_dir)

        replaced = final.exists()
        size = 0

        def write(handle: BinaryIO) -> None:
            nonlocal size
            for part in parts:
                handle.write(part)
                size += len(part)

        write_file_durably(final, write)
        return SpooledFile(path=final, size_bytes=size, replaced_existing=replaced)

    def remove(self, path: Path) -> None:
        """Delete one spooled file if it lies inside the spool; a missing file is fine."""
        resolved = Path(path).resolve()
        if self.root.resolve() not in resolved.parents:
            raise ValueError(f"{path} is not inside the spool {self.root}")
        resolved.unlink(missing_ok=True)

    def remove_study(self, study_instance_uid: str) -> None:
        """Delete a study's folder (retention); the UID is validated first."""
        study_dir = self.root / validate_uid("StudyInstanceUID", study_instance_uid)
        shutil.rmtree(study_dir, ignore_errors=True)
        fsync_dir(self.root)

    def _make_dir(self, path: Path) -> None:
        """Create ``path`` (mode 0700) and make its new directory entry durable."""
        if path.is_dir():
            return
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            return
        except FileNotFoundError:
            self._make_dir(path.parent)
            path.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(path.parent)
