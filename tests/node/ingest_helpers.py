"""Helpers for the receiving-side node tests: datasets, settings files and a running SCP."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from hipfuse.config.settings import Settings, load_settings
from hipfuse.node.jobstore import InstanceRecord, JobStore
from hipfuse.node.scp import ScpServer, start_scp
from hipfuse.node.spool import Spool

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
XRAY_SAMPLES = sorted((SAMPLES / "xray").glob("*.dcm"))
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_settings(
    path: Path,
    data_dir: Path,
    port: int,
    *,
    callers: str = '{ ae_title = "STORESCU" }, { ae_title = "ECHOSCU" }',
    extra_node: str = "",
    quiet_period_s: float = 30.0,
) -> Settings:
    """Write a node settings file for a test SCP and load it."""
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            ae_title = "HIPFUSE"
            port = {port}
            allowed_callers = [{callers}]
            {extra_node}

            [study]
            quiet_period_s = {quiet_period_s}

            [storage]
            data_dir = "{data_dir}"
            min_free_bytes = 1
            """
        )
    )
    return load_settings(path)


@contextlib.contextmanager
def running_scp(settings: Settings, clock: Any = None) -> Iterator[tuple[ScpServer, JobStore]]:
    """Start the SCP with a fresh job store and spool; stop it afterwards."""
    jobstore = JobStore.in_data_dir(settings.storage.data_dir)
    spool = Spool(settings.storage.data_dir)
    kwargs = {"clock": clock} if clock is not None else {}
    server = start_scp(settings, jobstore, spool, **kwargs)
    try:
        yield server, jobstore
    finally:
        server.stop()
        jobstore.close()


def storescu(
    port: int, *files: Path, calling: str = "STORESCU", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu (JPEG and JPEG 2000 contexts proposed as well)."""
    command = [
        STORESCU,
        "-aet",
        calling,
        "-aec",
        "HIPFUSE",
        "-R",  # propose only the contexts the files need
        "-xw",  # JPEG 2000 (lossy or lossless) besides the uncompressed syntaxes
        *options,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"}
    )


def ct_dataset(
    study_uid: str,
    series_uid: str,
    index: int,
    *,
    thickness_mm: float = 1.0,
    kernel: str | None = "BONE",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    body_part: str | None = "PELVIS",
    rows: int = 16,
    sop_instance_uid: str | None = None,
    manufacturer: str = "ACME",
) -> Dataset:
    """Build one small CT Image Storage instance with file meta."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.Manufacturer = manufacturer
    ds.PatientID = "TEST"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = list(image_type)
    ds.SliceThickness = thickness_mm
    if kernel is not None:
        ds.ConvolutionKernel = kernel
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ImagePositionPatient = [0.0, 0.0, -float(index) * thickness_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (np.arange(rows * rows, dtype=np.int16) + index).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Save a dataset built by the helpers as a Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """Return the data set bytes of a Part 10 file, after its File Meta Information."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def instance_record(
    sop: str,
    *,
    study: str = "1.2.3",
    series: str = "1.2.3.1",
    size_bytes: int = 100,
    received_at: float = 1000.0,
    header: dict[str, Any] | None = None,
    path: Path | None = None,
    is_node_output: bool = False,
) -> InstanceRecord:
    """Build an InstanceRecord for job store tests."""
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid=CTImageStorage,
        study_instance_uid=study,
        series_instance_uid=series,
        path=path or Path(f"/spool/{study}/{series}/{sop}.dcm"),
        size_bytes=size_bytes,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        received_at=received_at,
        calling_ae_title="PACS",
        peer_address="127.0.0.1",
        header=header or {"Modality": "CT", "SOPInstanceUID": sop},
        is_node_output=is_node_output,
    )
