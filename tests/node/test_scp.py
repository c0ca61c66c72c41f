"""The storage SCP against DCMTK's storescu and echoscu on 127.0.0.1."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import structlog
from ingest_helpers import (
    ECHOSCU,
    STORESCU,
    XRAY_SAMPLES,
    ct_dataset,
    dataset_bytes,
    free_port,
    running_scp,
    storescu,
    write_dataset,
    write_settings,
)
from pydicom.uid import JPEG2000, generate_uid

from hipfuse.config.settings import StudySettings
from hipfuse.inference.readers.dicom_series_writer import write_ct_series
from hipfuse.inference.types import CTVolume, SourceIdentity
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.states import StudyState

pytestmark = pytest.mark.skipif(
    not Path(STORESCU).exists(), reason="DCMTK storescu (Debian package dcmtk) is not installed"
)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path):
    return write_settings(tmp_path / "node.toml", tmp_path / "data", free_port())


def _ct_series(tmp_path: Path, count: int = 3, **kwargs) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [
        write_dataset(ct_dataset(study, series, index, **kwargs), tmp_path / f"ct{index}.dcm")
        for index in range(count)
    ]


def test_echo(settings) -> None:
    with running_scp(settings) as (server, _):
        result = subprocess.run(
            [ECHOSCU, "-aet", "ECHOSCU", "127.0.0.1", str(server.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr


def test_real_jpeg2000_radiographs_stored_byte_identical(settings) -> None:
    with running_scp(settings) as (server, jobstore):
        result = storescu(server.port, *XRAY_SAMPLES)
        assert result.returncode == 0, result.stderr
        for sample in XRAY_SAMPLES:
            sent = pydicom.dcmread(sample, stop_before_pixels=True)
            [instance] = jobstore.list_instances(sent.StudyInstanceUID)
            assert instance.transfer_syntax_uid == JPEG2000
            assert instance.calling_ae_title == "STORESCU"
            assert instance.peer_address == "127.0.0.1"
            assert dataset_bytes(instance.path) == dataset_bytes(sample)
            stored = pydicom.dcmread(instance.path, stop_before_pixels=True)
            assert stored.file_meta.TransferSyntaxUID == JPEG2000
            assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
            assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
            assert stat.S_IMODE(instance.path.stat().st_mode) == 0o600
            assert jobstore.get_study(sent.StudyInstanceUID).state is StudyState.RECEIVING


def test_ct_series_from_hipfuse_writer_stored(settings, tmp_path: Path) -> None:
    volume = CTVolume(
        voxels=np.linspace(-1000, 1500, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32),
        affine=np.array(
            [[0.0, 0.0, 0.8, 0.0], [0.0, 0.8, 0.0, 0.0], [1.5, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]]
        ),
    )
    files = write_ct_series(volume, tmp_path / "ct", SourceIdentity(patient_id="TEST"))
    with running_scp(settings) as (server, jobstore):
        result = storescu(server.port, *files)
        assert result.returncode == 0, result.stderr
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        instances = jobstore.list_instances(study)
        assert len(instances) == 4
        by_sop = {instance.sop_instance_uid: instance for instance in instances}
        for path in files:
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(by_sop[sop].path) == dataset_bytes(path)
        [series] = jobstore.list_series(study)
        assert series.modality == "CT"
        assert series.instance_count == 4


def test_unknown_calling_ae_rejected(settings) -> None:
    with structlog.testing.capture_logs() as logs, running_scp(settings) as (server, jobstore):
        result = storescu(server.port, XRAY_SAMPLES[0], calling="INTRUDER")
        events = jobstore.list_events()
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    rejected = [entry for entry in logs if entry["event"] == "association_rejected"]
    assert rejected[0]["calling_ae_title"] == "INTRUDER"
    assert rejected[0]["reason"] == "calling_ae_title_not_recognised"
    assert [event.event for event in events] == ["association_rejected"]
    assert events[0].details["reason"] == "calling_ae_title_not_recognised"


def test_known_ae_from_other_address_rejected(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path / "node.toml",
        tmp_path / "data",
        free_port(),
        callers='{ ae_title = "STORESCU", addresses = ["192.0.2.0/24"] }',
    )
    with structlog.testing.capture_logs() as logs, running_scp(settings) as (server, jobstore):
        result = storescu(server.port, XRAY_SAMPLES[0])
        studies = jobstore.list_studies()
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    reasons = [entry.get("reason") for entry in logs if entry["event"] == "association_rejected"]
    assert reasons == ["peer_address_not_allowed"]
    assert studies == []


def test_invalid_uid_fails_and_association_carries_on(settings, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    bad = write_dataset(
        ct_dataset(study, series, 0, sop_instance_uid="1.2.03.4"), tmp_path / "bad.dcm"
    )
    good = write_dataset(ct_dataset(study, series, 1), tmp_path / "good.dcm")
    with running_scp(settings) as (server, jobstore):
        result = storescu(server.port, bad, good, options=("-nh", "-v"))
        instances = jobstore.list_instances(study)
    assert "Error: CannotUnderstand" in result.stderr
    assert result.stderr.count("Releasing Association") == 1
    assert [instance.sop_instance_uid for instance in instances] == [
        pydicom.dcmread(good).SOPInstanceUID
    ]


def test_resent_instance_counted_once(settings, tmp_path: Path) -> None:
    files = _ct_series(tmp_path, count=2)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    with running_scp(settings) as (server, jobstore):
        assert storescu(server.port, *files).returncode == 0
        first_bytes = jobstore.get_study(study_uid).bytes
        assert storescu(server.port, files[0]).returncode == 0
        study = jobstore.get_study(study_uid)
        series_dir = jobstore.list_instances(study_uid)[0].path.parent
        events = [event.event for event in jobstore.list_events(study_uid)]
    assert study.instance_count == 2
    assert study.bytes == first_bytes
    assert len(list(series_dir.iterdir())) == 2
    assert events.count("instance_replaced") == 1


def test_study_size_limit_refuses_with_out_of_resources(tmp_path: Path) -> None:
    files = _ct_series(tmp_path, count=3)
    one_file = pydicom.dcmread(files[0])
    # Room for two stored instances, not three (file meta sizes differ a little).
    limit = int(files[0].stat().st_size * 2.5)
    settings = write_settings(
        tmp_path / "node.toml",
        tmp_path / "data",
        free_port(),
        extra_node=f"max_study_bytes = {limit}",
    )
    with running_scp(settings) as (server, jobstore):
        result = storescu(server.port, *files, options=("-nh", "-v"))
        study = jobstore.get_study(one_file.StudyInstanceUID)
    assert "Refused: OutOfResources" in result.stderr
    assert study.instance_count == 2
    assert study.bytes <= limit


def test_study_completes_after_quiet_period(settings, tmp_path: Path) -> None:
    clock = FakeClock(5000.0)
    files = _ct_series(tmp_path, count=3)
    with running_scp(settings, clock=clock) as (server, jobstore):
        assert storescu(server.port, *files).returncode == 0
        study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
        assembler = StudyAssembler(jobstore, StudySettings(quiet_period_s=30.0))
        assert assembler.run_once(now=5029.0) == []
        [outcome] = assembler.run_once(now=5030.0)
        assert outcome.study_instance_uid == study_uid
        assert jobstore.get_study(study_uid).state is StudyState.COMPLETE
