"""Write a CT volume as a DICOM CT Image Storage series, one file per axial slice.

Used to turn research volumes (NIfTI) into DICOM series for the DICOM path,
for tests, the demo and benchmarks. The objects are marked DERIVED and
SECONDARY, because their pixels do not come straight from a scanner.
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path

import numpy as np
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from hipfuse.inference.readers.codes import ErrorCode
from hipfuse.inference.types import CTVolume, InputError, SourceIdentity

log = structlog.get_logger(__name__)

# Transfer syntaxes that keep int16 CT values exactly.
_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
_LOSSLESS_COMPRESSED_SYNTAXES = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
_INT16_MIN, _INT16_MAX = -32768, 32767


def write_ct_series(
    volume: CTVolume,
    out_dir: Path,
    identity: SourceIdentity,
    *,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    series_description: str = "hipfuse converted CT",
    series_number: int = 9001,
    manufacturer: str = "hipfuse",
    body_part_examined: str = "PELVIS",
) -> list[Path]:
    """Write one CT Image Storage file per index along axis 0 of the volume.

    Parameters
    ----------
    volume
        HU voxels ``[k, j, i]``. Axis 0 must be the axis closest to the
        patient's superior-inferior direction (call ``reorient_to_canonical``
        first for a NIfTI volume). Axes 1 and 2 must be perpendicular; axis 0
        may be oblique to them, which writes a gantry-tilted series.
    out_dir
        Folder to write into (created if missing). Files are named
        ``CT_0000.dcm`` and up, in axis-0 order.
    identity
        Patient and study attributes to write. The Study Instance UID and the
        Frame of Reference UID are reused when set, and generated otherwise.
        A new Series Instance UID is always generated.
    transfer_syntax_uid
        Explicit or Implicit VR Little Endian, Deflated, RLE Lossless,
        JPEG-LS Lossless or JPEG 2000 Lossless.
    series_description, series_number, manufacturer, body_part_examined
        Values for Series Description, Series Number, Manufacturer and Body
        Part Examined (a defined term of PS3.16 Annex L).

    Returns
    -------
    list[Path]
        The written files, in axis-0 order.

    Notes
    -----
    Voxels are stored as signed 16-bit integers. Integer HU within the int16
    range are stored exactly with Rescale Slope 1 and Intercept 0; otherwise
    one slope and intercept for the whole series span the value range, and
    values are rounded to the nearest step.

    Raises
    ------
    InputError
        ``ct_not_axial`` when axis 0 is not the superior-inferior axis or axes
        1 and 2 are not perpendicular; ``pixel_data_invalid`` for non-finite voxels.
    ValueError
        When the transfer syntax is not one of the above or its encoder is missing.
    """
    transfer_syntax = UID(transfer_syntax_uid)
    _check_transfer_syntax(transfer_syntax)
    geometry = _slice_geometry(volume)
    slope, intercept = _rescale_for(volume.voxels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    template = _series_template(
        volume,
        identity,
        geometry,
        slope,
        intercept,
        series_description,
        series_number,
        manufacturer,
        body_part_examined,
    )
    paths = []
    for index in range(volume.voxels.shape[0]):
        ds = copy.deepcopy(template)
        position = volume.affine[:3, :3] @ np.array([index, 0.0, 0.0]) + volume.affine[:3, 3]
        _fill_slice(ds, index, position, geometry["normal"], transfer_syntax)
        stored = _to_stored(volume.voxels[index], slope, intercept)
        if transfer_syntax in _NATIVE_SYNTAXES:
            ds.PixelData = stored.tobytes()
        else:
            ds.compress(transfer_syntax, stored, generate_instance_uid=False)
        path = out_dir / f"CT_{index:04d}.dcm"
        temporary = path.with_suffix(".dcm.tmp")
        ds.save_as(temporary, enforce_file_format=True)
        os.replace(temporary, path)
        paths.append(path)
    log.info(
        "ct_series_written",
        series_instance_uid=template.SeriesInstanceUID,
        slices=len(paths),
        transfer_syntax_uid=str(transfer_syntax),
    )
    return paths


def _check_transfer_syntax(transfer_syntax: UID) -> None:
    if transfer_syntax in _NATIVE_SYNTAXES:
        return
    if transfer_syntax not in _LOSSLESS_COMPRESSED_SYNTAXES:
        raise ValueError(
            f"Transfer Syntax UID {transfer_syntax} ({transfer_syntax.name}) is not supported "
            "for writing CT: use Explicit VR Little Endian or a lossless compressed syntax"
        )
    if not get_encoder(transfer_syntax).is_available:
        raise ValueError(
            f"no encoder installed for {transfer_syntax.name}; install pylibjpeg-openjpeg "
            "(JPEG 2000) or pyjpegls (JPEG-LS)"
        )


def _slice_geometry(volume: CTVolume) -> dict[str, np.ndarray | float]:
    affine = np.asarray(volume.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / spacing
    superior_share = np.abs(directions[2])
    if int(np.argmax(superior_share)) != 0:
        raise InputError(
            ErrorCode.CT_NOT_AXIAL,
            "axis 0 of the volume is not its superior-inferior axis (affine columns "
            f"{np.round(directions, 3).tolist()}); call reorient_to_canonical first",
        )
    row_cosine = directions[:, 2]
    column_cosine = directions[:, 1]
    if abs(float(row_cosine @ column_cosine)) > 1e-4:
        raise InputError(
            ErrorCode.CT_NOT_AXIAL,
            "axes 1 and 2 of the volume are not perpendicular, so its slices cannot be "
            "described by Image Orientation (Patient); resample it first",
        )
    normal = np.cross(row_cosine, column_cosine)
    return {
        "row_cosine": row_cosine,
        "column_cosine": column_cosine,
        "normal": normal,
        "row_spacing": float(spacing[1]),
        "column_spacing": float(spacing[2]),
        "slice_thickness": abs(float(affine[:3, 0] @ normal)),
    }


def _rescale_for(voxels: np.ndarray) -> tuple[float, float]:
    low, high = float(voxels.min()), float(voxels.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(ErrorCode.PIXEL_DATA_INVALID, "the volume contains NaN or infinite voxels")
    integral = all(np.array_equal(image, np.rint(image)) for image in voxels)
    if integral and low >= _INT16_MIN and high <= _INT16_MAX:
        return 1.0, 0.0
    span = max(high - low, 1e-6)
    # Slope and intercept are written as DS (at most 16 characters); the stored
    # values are computed from the written strings so that they round-trip.
    slope = float(format_number_as_ds(span / (_INT16_MAX - _INT16_MIN)))
    intercept = float(format_number_as_ds(low - _INT16_MIN * slope))
    return slope, intercept


def _to_stored(image: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1.0 and intercept == 0.0:
        return np.rint(image).astype(np.int16)
    stored = np.rint((image.astype(np.float64) - intercept) / slope)
    return np.clip(stored, _INT16_MIN, _INT16_MAX).astype(np.int16)


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _series_template(
    volume: CTVolume,
    identity: SourceIdentity,
    geometry: dict[str, np.ndarray | float],
    slope: float,
    intercept: float,
    series_description: str,
    series_number: int,
    manufacturer: str,
    body_part_examined: str,
) -> Dataset:
    ds = Dataset()
    now = datetime.datetime.now()
    texts = [getattr(identity, name) for name in identity.__dataclass_fields__]
    if any(not text.isascii() for text in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"

    # SOP Common module
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")

    # Patient module
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    if identity.issuer_of_patient_id:
        ds.IssuerOfPatientID = identity.issuer_of_patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex

    # General Study module
    if identity.study_instance_uid:
        ds.StudyInstanceUID = identity.study_instance_uid
        ds.StudyDate = identity.study_date
        ds.StudyTime = ""
    else:
        # A new study is created now, so its date and time are now.
        ds.StudyInstanceUID = generate_uid()
        ds.StudyDate = identity.study_date or now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = identity.accession_number

    # General Series module
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    # With Body Part Examined set to an unpaired region such as the pelvis,
    # validators do not require Laterality (Type 2C).
    ds.BodyPartExamined = body_part_examined
    # Type 2C for CT: the position of the patient on the table is not known here.
    ds.PatientPosition = ""

    # Frame of Reference module
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""

    # General Equipment module
    ds.Manufacturer = manufacturer

    # General Image module
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")

    # Image Plane module (per-slice Image Position and Slice Location in _fill_slice)
    ds.PixelSpacing = [_ds(geometry["row_spacing"]), _ds(geometry["column_spacing"])]
    orientation = np.concatenate([geometry["row_cosine"], geometry["column_cosine"]])
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.SliceThickness = _ds(geometry["slice_thickness"])

    # Image Pixel module
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in volume.voxels.shape[1:])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1

    # CT Image module
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.AcquisitionNumber = ""
    return ds


def _fill_slice(
    ds: Dataset, index: int, position: np.ndarray, normal: np.ndarray, transfer_syntax: UID
) -> None:
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ normal))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
