"""DICOM writers for the simulated CT (CT Image Storage) and radiograph (DX For Presentation).

Datasets are filled module by module after PS3.3: the CT Image IOD (A.3) and
the Digital X-Ray Image IOD (A.26). Every UID is derived from the cohort seed
and the object's role, so a seed reproduces the same files byte for byte.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from hipfuse.training.simulate.ct import CtAcquisition
from hipfuse.training.simulate.radiograph import RadiographAcquisition, RenderedRadiograph

MANUFACTURER = "hipfuse"
MODEL_NAME = "hipfuse cohort simulator"


# Namespace of the name-based UUIDs behind every simulated UID.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "hipfuse:simulated-cohort")


def derived_uid(*parts: object) -> str:
    """Return a ``2.25.`` UID derived from ``parts``: the same parts always give the same UID.

    The UID is a name-based (SHA-1, version 5) UUID written as an integer under
    the ``2.25`` arc, as PS3.5 B.2 and ISO/IEC 9834-8 allow. pydicom's
    ``generate_uid(prefix=None, entropy_srcs=...)`` cannot be used here: with
    no prefix, pydicom 3.0 ignores the entropy sources and returns a random UUID.
    """
    name = "\x1f".join(str(part) for part in parts)
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}")


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes shared by every object of one simulated study.

    Attributes
    ----------
    patient_id, patient_name
        Patient ID (0010,0020) and Patient's Name (0010,0010).
    birth_date
        Patient's Birth Date, ``YYYYMMDD``.
    sex
        Patient's Sex, ``M`` or ``F``.
    age_years
        Patient's Age in years.
    study_instance_uid
        Study Instance UID.
    study_date, study_time
        ``YYYYMMDD`` and ``HHMMSS``.
    accession_number
        Accession Number.
    institution_name
        Institution Name: the simulated centre.
    software_version
        Software Versions (0018,1020): the generator version.
    """

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    age_years: int
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    institution_name: str
    software_version: str


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HIPFUSE_SIM"
    return meta


def _patient_and_study(ds: Dataset, study: StudyInfo) -> None:
    # Patient module
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex

    # General Study module
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = "PELVIS AND HIPS"

    # Patient Study module
    ds.PatientAge = f"{study.age_years:03d}Y"

    # General Equipment module
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = study.institution_name
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = study.software_version


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_ct_series(
    folder: Path,
    stored: np.ndarray,
    acquisition: CtAcquisition,
    study: StudyInfo,
    series_instance_uid: str,
    frame_of_reference_uid: str,
) -> list[Path]:
    """Write one CT Image Storage file per slice into ``folder``.

    Parameters
    ----------
    folder
        Series folder, created if missing.
    stored
        ``int16`` stored values ``[slice, row, column]`` for Rescale Intercept
        -1024 and Rescale Slope 1 (see :func:`hipfuse.training.simulate.ct.hu_to_stored`).
    acquisition
        Geometry and kernel of the series.
    study
        Patient and study attributes.
    series_instance_uid, frame_of_reference_uid
        UIDs of the series and its patient coordinate system.

    Returns
    -------
    list of Path
        The files, in slice order (superior first).
    """
    if stored.dtype != np.int16 or stored.ndim != 3:
        raise ValueError(f"CT pixels must be a 3D int16 array, got {stored.dtype} {stored.shape}")
    if stored.shape != (acquisition.slice_count, acquisition.rows, acquisition.columns):
        raise ValueError(
            f"CT pixel array shape {stored.shape} does not match the acquisition "
            f"({acquisition.slice_count}, {acquisition.rows}, {acquisition.columns})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    positions = acquisition.slice_positions_mm()
    paths = []
    for index in range(acquisition.slice_count):
        sop_uid = derived_uid(series_instance_uid, "slice", index)
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, sop_uid)

        # SOP Common module
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        _patient_and_study(ds, study)

        # General Series module
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_instance_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = (
            f"PELVIS {acquisition.slice_spacing_mm:g}mm {acquisition.kernel.name}"
        )
        ds.BodyPartExamined = "PELVIS"
        ds.PatientPosition = "HFS"
        ds.SeriesDate = study.study_date
        ds.SeriesTime = study.study_time

        # Frame of Reference module
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""

        # General Acquisition and General Image modules
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.ContentDate = study.study_date
        ds.ContentTime = study.study_time
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]

        # Image Plane module
        ds.PixelSpacing = [f"{acquisition.pixel_spacing_mm:g}", f"{acquisition.pixel_spacing_mm:g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{v:.3f}" for v in positions[index]]
        ds.SliceThickness = f"{acquisition.slice_spacing_mm:g}"
        ds.SpacingBetweenSlices = f"{acquisition.slice_spacing_mm:g}"
        ds.SliceLocation = f"{positions[index][2]:.3f}"

        # Image Pixel and CT Image modules
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = acquisition.rows
        ds.Columns = acquisition.columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = f"{acquisition.kvp:g}"
        ds.XRayTubeCurrent = acquisition.tube_current_ma
        ds.ConvolutionKernel = acquisition.kernel.name
        ds.ReconstructionDiameter = f"{acquisition.pixel_spacing_mm * acquisition.rows:.1f}"

        # VOI LUT module: a bone window and a soft-tissue window.
        ds.WindowCenter = ["400", "40"]
        ds.WindowWidth = ["1800", "400"]
        ds.PixelData = np.ascontiguousarray(stored[index]).astype("<i2").tobytes()
        path = folder / f"CT{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dx(
    path: Path,
    image: RenderedRadiograph,
    acquisition: RadiographAcquisition,
    study: StudyInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> Path:
    """Write one Digital X-Ray Image Storage - For Presentation file (AP pelvis)."""
    expected_shape = (acquisition.rows, acquisition.columns)
    if image.pixels.dtype != np.uint16 or image.pixels.shape != expected_shape:
        raise ValueError(
            f"radiograph pixels must be uint16 of shape {expected_shape}, "
            f"got {image.pixels.dtype} {image.pixels.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = _file_meta(DigitalXRayImageStorageForPresentation, sop_instance_uid)

    # SOP Common module
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_instance_uid
    _patient_and_study(ds, study)

    # General Series and DX Series modules
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "PELVIS AP"
    ds.BodyPartExamined = "PELVIS"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time

    # General Acquisition and General Image modules
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.PatientOrientation = list(acquisition.patient_orientation)
    ds.BurnedInAnnotation = "NO"

    # DX Anatomy Imaged module: both hips on one image, so laterality is B.
    ds.ImageLaterality = "B"
    ds.AnatomicRegionSequence = Sequence([_code_item("12921003", "SCT", "Pelvis")])

    # DX Image and Image Pixel modules
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if acquisition.monochrome1 else "MONOCHROME2"
    ds.Rows = acquisition.rows
    ds.Columns = acquisition.columns
    ds.BitsAllocated = 16
    ds.BitsStored = acquisition.bits_stored
    ds.HighBit = acquisition.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # Sign -1: higher values mean less beam reached the detector (bone); MONOCHROME1
    # stores bone low, so its sign is +1.
    ds.PixelIntensityRelationshipSign = 1 if acquisition.monochrome1 else -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if acquisition.monochrome1 else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDeviceProcessingDescription = "LOG, EQUALISATION, UNSHARP MASK"

    # DX Detector module. The simulated beam is parallel, so the spacing at the
    # detector is also the spacing in the patient.
    spacing = f"{acquisition.pixel_spacing_mm:g}"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "parallel projection, no magnification"

    # DX Positioning module
    ds.PositionerType = ""
    ds.ViewPosition = "AP"
    ds.ViewCodeSequence = Sequence([_code_item("399348003", "SCT", "antero-posterior")])
    ds.EstimatedRadiographicMagnificationFactor = "1"

    # X-Ray Generation module
    ds.KVP = f"{acquisition.kvp:g}"
    ds.Exposure = round(acquisition.exposure_mas)
    ds.ExposureInuAs = round(acquisition.exposure_mas * 1000)

    # VOI LUT module (required for presentation)
    ds.WindowCenter = f"{image.window_centre:g}"
    ds.WindowWidth = f"{image.window_width:g}"

    # Acquisition Context module: nothing to report, but the sequence is Type 2.
    ds.AcquisitionContextSequence = Sequence([])
    ds.PixelData = np.ascontiguousarray(image.pixels).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
