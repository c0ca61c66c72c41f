"""C-STORE statuses of the SCP handler, driven with a stand-in pynetdicom event."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from ingest_helpers import ct_dataset, dataset_bytes, free_port, write_dataset, write_settings
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from hipfuse.node.jobstore import JobStore
from hipfuse.node.scp import StorageSCP, StoreStatus
from hipfuse.node.spool import Spool


class FakeAssociation:
    def __init__(self) -> None:
        self.requestor = SimpleNamespace(ae_title="PACS", address="127.0.0.1")


class FakeEvent:
    """The attributes of a pynetdicom EVT_C_STORE event that the handler reads."""

    def __init__(self, data: bytes, sop_instance_uid: str, sop_class_uid: str) -> None:
        self.assoc = FakeAssociation()
        self.request = SimpleNamespace(
            AffectedSOPInstanceUID=sop_instance_uid, AffectedSOPClassUID=sop_class_uid
        )
        self.context = SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian)
        self._data = data

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        assert not include_meta
        return self._data


@pytest.fixture
def scp(tmp_path: Path):
    settings = write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())
    spool = Spool(settings.storage.data_dir)
    spool.prepare()
    with JobStore.in_data_dir(settings.storage.data_dir) as jobstore:
        yield StorageSCP(settings, jobstore, spool)


def _event(tmp_path: Path, **overrides: str) -> FakeEvent:
    study = overrides.pop("study", generate_uid())
    dataset = ct_dataset(study, generate_uid(), 0, sop_instance_uid=overrides.pop("sop", None))
    path = write_dataset(dataset, tmp_path / "in.dcm")
    return FakeEvent(
        overrides.get("data", dataset_bytes(path)),  # type: ignore[arg-type]
        overrides.get("request_sop", dataset.SOPInstanceUID),
        overrides.get("request_class", CTImageStorage),
    )


def test_valid_instance_succeeds(scp: StorageSCP, tmp_path: Path) -> None:
    event = _event(tmp_path)
    response = scp.handle_store(event)
    assert response.Status == StoreStatus.SUCCESS
    [study] = scp.jobstore.list_studies()
    assert study.instance_count == 1


@pytest.mark.parametrize(
    ("overrides", "status", "comment"),
    [
        ({"request_sop": "1.2.3.4"}, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance"),
        (
            {"request_class": MRImageStorage},
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class",
        ),
        ({"request_sop": "1.2.03"}, StoreStatus.CANNOT_UNDERSTAND, "AffectedSOPInstanceUID"),
        ({"study": "1.2.3.04"}, StoreStatus.CANNOT_UNDERSTAND, "invalid StudyInstanceUID"),
        ({"data": b"\x08\x00\x16\x00UI"}, StoreStatus.CANNOT_UNDERSTAND, "invalid"),
    ],
    ids=["other-instance", "other-class", "bad-request-uid", "bad-study-uid", "truncated"],
)
def test_rejected_instance_statuses(
    scp: StorageSCP, tmp_path: Path, overrides: dict, status: StoreStatus, comment: str
) -> None:
    response = scp.handle_store(_event(tmp_path, **overrides))
    assert response.Status == status
    assert comment in response.ErrorComment
    assert scp.jobstore.list_studies() == []


def test_disk_write_failure_is_out_of_resources(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scp.spool, "store_instance", full_disk)
    response = scp.handle_store(_event(tmp_path))
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    assert response.ErrorComment == "spool write failed"
    assert scp.jobstore.list_studies() == []


def test_low_free_space_is_out_of_resources(tmp_path: Path) -> None:
    settings = write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())
    settings = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"min_free_bytes": 2**62})}
    )
    with JobStore.in_data_dir(settings.storage.data_dir) as jobstore:
        spool = Spool(settings.storage.data_dir)
        spool.prepare()
        response = StorageSCP(settings, jobstore, spool).handle_store(_event(tmp_path))
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    assert "min_free_bytes" in response.ErrorComment
