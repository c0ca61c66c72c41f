from __future__ import annotations

import stat
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from ingest_helpers import XRAY_SAMPLES, dataset_bytes
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from hipfuse.node.spool import (
    InstanceUIDs,
    InvalidUIDError,
    Spool,
    encode_file_meta,
    validate_uid,
)

UIDS = InstanceUIDs("1.2.3", "1.2.3.4", "1.2.3.4.5")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("0", True),
        ("1.0.2", True),
        ("1.2.3\x00", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),
        ("1.02.3", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("", False),
        ("1.2.3a", False),
        ("../../etc", False),
        ("1.2/3", False),
        (None, False),
    ],
    ids=[
        "ct-class",
        "single-zero",
        "zero-component",
        "nul-padding",
        "64-chars",
        "65-chars",
        "leading-zero",
        "empty-component",
        "leading-dot",
        "trailing-dot",
        "empty",
        "letter",
        "path-traversal",
        "slash",
        "none",
    ],
)
def test_validate_uid(value: object, valid: bool) -> None:
    if valid:
        assert validate_uid("SOPInstanceUID", value) == str(value).rstrip("\x00")
    else:
        with pytest.raises(InvalidUIDError, match=r"SOPInstanceUID .* is not a valid UID"):
            validate_uid("SOPInstanceUID", value)


def test_store_writes_part10_with_owner_only_modes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.prepare()
    spooled = spool.store_instance(UIDS, [b"abc", b"defg"])
    assert spooled.path == tmp_path / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert spooled.path.read_bytes() == b"abcdefg"
    assert spooled.size_bytes == 7
    assert not spooled.replaced_existing
    assert stat.S_IMODE(spooled.path.stat().st_mode) == 0o600
    for folder in (spool.root, spooled.path.parent, spooled.path.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(spooled.path.parent.glob(".*")) == []


def test_store_replaces_existing_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.prepare()
    spool.store_instance(UIDS, [b"old"])
    spooled = spool.store_instance(UIDS, [b"new content"])
    assert spooled.replaced_existing
    assert spooled.path.read_bytes() == b"new content"


def test_store_without_prepare_creates_folders(tmp_path: Path) -> None:
    spooled = Spool(tmp_path / "fresh").store_instance(UIDS, [b"x"])
    assert spooled.path.read_bytes() == b"x"


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    other = InstanceUIDs("1.2.3", "1.2.3.4", "1.2.3.4.6")
    spool.store_instance(other, [b"earlier"])

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hipfuse.node.durable_files.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        spool.store_instance(UIDS, [b"abc"])
    assert list(spool.path_for(UIDS).parent.iterdir()) == [spool.path_for(other)]


def test_prepare_removes_stale_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(UIDS, [b"kept"])
    stale = spool.path_for(UIDS).parent / ".1.2.3.4.6.abcd.tmp"
    stale.write_bytes(b"half")
    assert spool.prepare() == 1
    assert not stale.exists()
    assert spool.path_for(UIDS).exists()


def test_remove_rejects_paths_outside_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    spool.prepare()
    outside = tmp_path / "other.dcm"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError, match="not inside the spool"):
        spool.remove(outside)
    assert outside.exists()


def test_remove_study_validates_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store_instance(UIDS, [b"x"])
    with pytest.raises(InvalidUIDError):
        spool.remove_study("..")
    spool.remove_study("1.2.3")
    assert not (spool.root / "1.2.3").exists()


@pytest.mark.parametrize("source_ae", ["STORESCU", "PACS1", ""], ids=["even", "odd", "none"])
def test_file_meta_matches_pydicom(source_ae: str) -> None:
    import pynetdicom

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.45"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    meta.ImplementationClassUID = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    encoded = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.4.90", source_ae
    )
    assert encoded == expected.getvalue()


def test_file_meta_plus_received_bytes_reads_back() -> None:
    sample = XRAY_SAMPLES[0]
    original = pydicom.dcmread(sample)
    encoded = encode_file_meta(
        original.SOPClassUID, original.SOPInstanceUID, original.file_meta.TransferSyntaxUID
    )
    reread = pydicom.dcmread(BytesIO(encoded + dataset_bytes(sample)))
    assert reread.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert reread.SOPInstanceUID == original.SOPInstanceUID
    assert reread.PixelData == original.PixelData
