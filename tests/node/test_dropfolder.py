"""DICOM drop folder: settling, storing like C-STORE, failed/ with reasons, study folders."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ingest_helpers import XRAY_SAMPLES, ct_dataset, write_dataset, write_settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from worker_helpers import FakeClock

from hipfuse.config.dropfolder import DropFolderSettings
from hipfuse.config.settings import SettingsError, load_settings
from hipfuse.node.dropfolder import (
    DROPFOLDER_PEER,
    DropFolderWatcher,
    DropOutcome,
    dropfolder_problems,
)
from hipfuse.node.jobstore import JobStore
from hipfuse.node.scp import StorageSCP
from hipfuse.node.spool import Spool

SETTLE_S = 5.0


@dataclass
class Drop:
    folder: Path
    watcher: DropFolderWatcher
    jobstore: JobStore
    spool: Spool
    clock: FakeClock

    def settle(self) -> list:
        """Observe every file, let settle_s pass, and process what is ready."""
        self.watcher.rescan()
        first = self.watcher.process_ready()
        self.clock.advance(SETTLE_S)
        return first + self.watcher.process_ready()


def make_drop(tmp_path: Path, *, min_free_bytes: int = 1) -> Drop:
    data_dir = tmp_path / "data"
    settings = write_settings(tmp_path / "node.toml", data_dir, port=11112)
    if min_free_bytes != 1:
        settings = settings.model_copy(
            update={
                "storage": settings.storage.model_copy(update={"min_free_bytes": min_free_bytes})
            }
        )
    clock = FakeClock()
    jobstore = JobStore.in_data_dir(data_dir, clock=clock)
    spool = Spool(data_dir)
    spool.prepare()
    storage_scp = StorageSCP(settings, jobstore, spool, clock=clock)
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "failed").mkdir()
    dropfolder = DropFolderSettings(enabled=True, dir=folder, settle_s=SETTLE_S)
    watcher = DropFolderWatcher(dropfolder, storage_scp, clock=clock)
    return Drop(folder, watcher, jobstore, spool, clock)


@pytest.fixture
def drop(tmp_path: Path) -> Iterator[Drop]:
    node = make_drop(tmp_path)
    yield node
    node.jobstore.close()


def ct_file(path: Path, study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    ds = ct_dataset(study_uid or generate_uid(), series_uid or generate_uid(), 0)
    write_dataset(ds, path)
    return ds


def test_dropfolder_waits_for_second_half(drop: Drop) -> None:
    source = drop.folder / "export.dcm"
    ct_file(source)
    data = source.read_bytes()
    half = len(data) // 2
    source.write_bytes(data[:half])

    drop.watcher.rescan()
    assert drop.watcher.process_ready() == []
    drop.clock.advance(SETTLE_S - 1.0)
    assert drop.watcher.process_ready() == []
    with source.open("ab") as handle:
        handle.write(data[half:])
    # settle_s has passed since the first half was seen, but the file changed since.
    drop.clock.advance(2.0)
    assert drop.watcher.process_ready() == []
    assert source.exists()
    assert drop.jobstore.count_studies_by_state() == {}

    drop.clock.advance(SETTLE_S)
    results = drop.watcher.process_ready()

    assert [result.outcome for result in results] == [DropOutcome.STORED]
    assert not source.exists()


def test_dropfolder_stores_like_c_store(drop: Drop) -> None:
    source = drop.folder / "export.dcm"
    ds = ct_file(source)
    original = source.read_bytes()

    results = drop.settle()

    assert [result.outcome for result in results] == [DropOutcome.STORED]
    assert results[0].sop_instance_uid == ds.SOPInstanceUID
    assert not source.exists()
    instances = drop.jobstore.list_instances(ds.StudyInstanceUID)
    assert [instance.sop_instance_uid for instance in instances] == [ds.SOPInstanceUID]
    assert instances[0].peer_address == DROPFOLDER_PEER
    assert instances[0].transfer_syntax_uid == ExplicitVRLittleEndian
    assert instances[0].is_node_output is False
    assert instances[0].path.parent.parent.parent == drop.spool.root
    assert instances[0].path.read_bytes() == original


def test_dropfolder_same_instance_twice_replaces(drop: Drop) -> None:
    ds = ct_file(drop.folder / "first.dcm")
    drop.settle()
    write_dataset(ds, drop.folder / "again.dcm")

    results = drop.settle()

    assert [result.outcome for result in results] == [DropOutcome.STORED]
    assert len(drop.jobstore.list_instances(ds.StudyInstanceUID)) == 1
    study = drop.jobstore.get_study(ds.StudyInstanceUID)
    assert study.instance_count == 1


def test_dropfolder_recognises_node_output(drop: Drop) -> None:
    ds = ct_file(drop.folder / "sr.dcm")
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = ds.StudyInstanceUID
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.Manufacturer = "hipfuse"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_dataset(sr, drop.folder / "sr.dcm")

    drop.settle()

    instances = drop.jobstore.list_instances(ds.StudyInstanceUID)
    assert [instance.is_node_output for instance in instances] == [True]


def _not_dicom(path: Path) -> None:
    path.write_text("Radiology report exported by mistake.\n")


def _invalid_study_uid(path: Path) -> None:
    ds = ct_dataset("1.2.03", generate_uid(), 0)
    write_dataset(ds, path)


def _meta_names_other_instance(path: Path) -> None:
    ds = ct_dataset(generate_uid(), generate_uid(), 0)
    write_dataset(ds, path)
    # Change the last digit of Media Storage SOP Instance UID, which comes first in the file.
    uid = ds.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    path.write_bytes(path.read_bytes().replace(uid, other, 1))


def _dicomdir(path: Path) -> None:
    ds = Dataset()
    ds.FileSetID = "EXPORT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_dataset(ds, path)


def _mpeg2_transfer_syntax(path: Path) -> None:
    ds = ct_dataset(generate_uid(), generate_uid(), 0)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
    write_dataset(ds, path)


def _truncated_ct(path: Path) -> None:
    write_dataset(ct_dataset(generate_uid(), generate_uid(), 0), path)
    path.write_bytes(path.read_bytes()[:-100])


def _truncated_radiograph(path: Path) -> None:
    # A real JPEG-compressed radiograph: encapsulated Pixel Data of undefined length.
    path.write_bytes(XRAY_SAMPLES[0].read_bytes()[:5000])


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_truncated_ct, r"incomplete: \(7FE0,0010\) needs \d+ bytes but the file ends 100 bytes"),
        (_truncated_radiograph, "incomplete: the file ends inside the data set"),
        (_not_dicom, "not a DICOM Part 10 file"),
        (
            _invalid_study_uid,
            r"C000 Cannot understand: invalid StudyInstanceUID \(StudyInstanceUID '1.2.03' "
            "is not a valid UID",
        ),
        (_meta_names_other_instance, "A900 .*SOP Instance UID differs from the request"),
        (_dicomdir, "a DICOMDIR"),
        (_mpeg2_transfer_syntax, "Transfer Syntax UID 1.2.840.10008.1.2.4.100 is not accepted"),
    ],
    ids=[
        "truncated-ct",
        "truncated-radiograph",
        "not-dicom",
        "invalid-study-uid",
        "meta-mismatch",
        "dicomdir",
        "mpeg2",
    ],
)
def test_dropfolder_moves_rejected_to_failed(drop: Drop, write, reason: str) -> None:
    source = drop.folder / "STUDY1" / "file0001"
    source.parent.mkdir()
    write(source)
    original = source.read_bytes()

    results = drop.settle()

    assert [result.outcome for result in results] == [DropOutcome.FAILED]
    moved = drop.folder / "failed" / "STUDY1" / "file0001"
    assert results[0].moved_to == moved
    assert not source.exists()
    assert moved.read_bytes() == original
    reason_text = (moved.parent / "file0001.reason.txt").read_text()
    assert reason_text.startswith("reason: ")
    assert re.search(reason, reason_text.splitlines()[0])
    assert f"file id: {results[0].file_id}" in reason_text
    assert "original path: STUDY1/file0001" in reason_text
    assert drop.jobstore.count_studies_by_state() == {}


@pytest.mark.parametrize(
    "name",
    [".hidden.dcm", "export.dcm.part", "export.tmp", "export.filepart", ".incoming/export.dcm"],
    ids=["dot-name", "part", "tmp", "filepart", "dot-folder"],
)
def test_dropfolder_leaves_temporary_names(drop: Drop, name: str) -> None:
    source = drop.folder / name
    ct_file(source)

    results = drop.settle()
    drop.clock.advance(SETTLE_S)
    results += drop.watcher.process_ready()

    assert results == []
    assert source.exists()


def test_dropfolder_folder_per_study(drop: Drop) -> None:
    study_uid = generate_uid()
    series = [generate_uid(), generate_uid()]
    for series_index, series_uid in enumerate(series):
        for index in range(3):
            ds = ct_dataset(study_uid, series_uid, index)
            write_dataset(ds, drop.folder / "PAT_STUDY" / f"SER{series_index}" / f"IM{index}")
    ct_file(drop.folder / "OTHER_STUDY" / "IM0")

    results = drop.settle()

    assert [result.outcome for result in results] == [DropOutcome.STORED] * 7
    study = drop.jobstore.get_study(study_uid)
    assert study.instance_count == 6
    assert {s.series_instance_uid for s in drop.jobstore.list_series(study_uid)} == set(series)
    assert sum(drop.jobstore.count_studies_by_state().values()) == 2

    # The emptied folders go once they are older than settle_s.
    past = time.time() - 2 * SETTLE_S
    for folder in drop.folder.glob("*/**"):
        os.utime(folder, (past, past))
    drop.watcher.rescan()
    assert sorted(path.name for path in drop.folder.iterdir()) == ["failed"]


def test_dropfolder_defers_when_disk_low(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, min_free_bytes=2**60)
    source = drop.folder / "export.dcm"
    ct_file(source)

    results = drop.settle()

    assert [result.outcome for result in results] == [DropOutcome.DEFERRED]
    assert "free disk space below min_free_bytes" in results[0].reason
    assert source.exists()
    assert list((drop.folder / "failed").iterdir()) == []
    drop.jobstore.close()


def test_dropfolder_thread_takes_files(tmp_path: Path) -> None:
    """The running watcher takes a file there at start and a file written later."""
    drop = make_drop(tmp_path)
    drop.watcher.clock = time.monotonic
    drop.watcher.settings = DropFolderSettings(
        enabled=True, dir=drop.folder, settle_s=0.2, poll_interval_s=1.0
    )
    drop.watcher.check_interval_s = 0.05
    before = ct_file(drop.folder / "before.dcm")
    drop.watcher.start()
    try:
        later = ct_file(drop.folder / "STUDY" / "later.dcm")
        deadline = time.monotonic() + 20
        while any(drop.folder.rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        drop.watcher.stop()

    assert list(drop.folder.rglob("*.dcm")) == []
    for ds in (before, later):
        stored = drop.jobstore.list_instances(ds.StudyInstanceUID)
        assert [instance.sop_instance_uid for instance in stored] == [ds.SOPInstanceUID]
    drop.jobstore.close()


@pytest.mark.parametrize(
    ("folder", "problem"),
    [
        ("data", "is storage.data_dir or contains it"),
        (".", "is storage.data_dir or contains it"),
        ("data/spool/in", "inside the spool or outbox"),
        ("data/outbox", "inside the spool or outbox"),
        ("data/dropfolder", None),
        ("exports", None),
    ],
    ids=["data-dir", "parent", "spool", "outbox", "inside-data-dir", "elsewhere"],
)
def test_dropfolder_problems(tmp_path: Path, folder: str, problem: str | None) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n\n'
        f'[dropfolder]\nenabled = true\ndir = "{tmp_path / folder}"\n'
    )

    problems = dropfolder_problems(load_settings(config))

    if problem is None:
        assert problems == []
    else:
        assert [path for path, _ in problems] == ["dropfolder.dir"]
        assert problem in problems[0][1]


def test_dropfolder_enabled_needs_dir(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dropfolder]\nenabled = true\n")

    with pytest.raises(SettingsError, match=r"dropfolder\.dir: is required with enabled = true"):
        load_settings(config)
