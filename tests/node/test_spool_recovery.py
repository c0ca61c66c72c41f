"""Start-up recovery of spooled instances whose job store records were lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_helpers import ct_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from hipfuse.node.jobstore import JobStore
from hipfuse.node.spool import InstanceUIDs, Spool, encode_file_meta
from hipfuse.node.spool_recovery import record_unrecorded_instances
from hipfuse.node.states import StudyState

STUDY, SERIES = generate_uid(), generate_uid()


def spool_instance(spool: Spool, index: int, calling_ae: str = "PACS") -> Path:
    """Write one CT instance into the spool as the SCP does, without recording it."""
    ds = ct_dataset(STUDY, SERIES, index)
    body = DicomBytesIO()
    ds.save_as(body, enforce_file_format=False, implicit_vr=False, little_endian=True)
    meta = encode_file_meta(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, calling_ae
    )
    uids = InstanceUIDs.validated(STUDY, SERIES, ds.SOPInstanceUID)
    return spool.store_instance(uids, [meta, body.getvalue()]).path


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path)
    spool.prepare()
    return spool


def test_unrecorded_files_are_recorded(spool: Spool, tmp_path: Path) -> None:
    paths = [spool_instance(spool, index) for index in range(3)]
    with JobStore.in_data_dir(tmp_path) as store:
        assert record_unrecorded_instances(spool, store) == 3

        instances = store.list_instances(STUDY)
        assert sorted(instance.path for instance in instances) == sorted(paths)
        assert {instance.calling_ae_title for instance in instances} == {"PACS"}
        assert store.get_study(STUDY).state is StudyState.RECEIVING
        # A second start finds nothing more to do.
        assert record_unrecorded_instances(spool, store) == 0


def test_only_the_lost_records_are_added(spool: Spool, tmp_path: Path) -> None:
    recorded = spool_instance(spool, 0)
    with JobStore.in_data_dir(tmp_path) as store:
        record_unrecorded_instances(spool, store)
        lost = spool_instance(spool, 1)

        assert record_unrecorded_instances(spool, store) == 1
        assert sorted(i.path for i in store.list_instances(STUDY)) == sorted([recorded, lost])


@pytest.mark.parametrize(
    "damage",
    ["truncated", "misplaced"],
)
def test_unusable_files_are_left_alone(spool: Spool, tmp_path: Path, damage: str) -> None:
    path = spool_instance(spool, 0)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        other = path.parent.parent / generate_uid()
        other.mkdir()
        path = path.rename(other / path.name)
    with JobStore.in_data_dir(tmp_path) as store:
        assert record_unrecorded_instances(spool, store) == 0
        assert store.recorded_sop_instance_uids() == set()
    assert path.exists()
