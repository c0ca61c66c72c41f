"""DICOM helpers shared by the radiograph and CT readers: identity, codecs, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from hipfuse.inference.readers.codes import ErrorCode
from hipfuse.inference.types import InputError, SourceIdentity, SourceInstance

# Transfer Syntax UID prefix -> the pip package whose pydicom plugin decodes it.
# pylibjpeg-openjpeg covers JPEG 2000 and HTJ2K; pylibjpeg-libjpeg covers the
# ISO 10918 JPEG processes and JPEG-LS (pydicom 3.0 decoder tables).
_CODEC_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}


def text_value(ds: Dataset, keyword: str) -> str:
    """Return an attribute as a string, or ``""`` when it is absent or empty."""
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip()


def read_identity(ds: Dataset) -> SourceIdentity:
    """Collect the patient, study and series attributes of a dataset, verbatim."""
    return SourceIdentity(
        patient_id=text_value(ds, "PatientID"),
        issuer_of_patient_id=text_value(ds, "IssuerOfPatientID"),
        patient_name=text_value(ds, "PatientName"),
        patient_birth_date=text_value(ds, "PatientBirthDate"),
        patient_sex=text_value(ds, "PatientSex"),
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        accession_number=text_value(ds, "AccessionNumber"),
        study_date=text_value(ds, "StudyDate"),
        series_instance_uid=text_value(ds, "SeriesInstanceUID"),
        modality=text_value(ds, "Modality"),
        frame_of_reference_uid=text_value(ds, "FrameOfReferenceUID"),
    )


def read_source_instance(ds: Dataset, path: Path | None) -> SourceInstance:
    """Build the SOP instance reference of a dataset (empty UIDs stay empty)."""
    return SourceInstance(
        sop_class_uid=text_value(ds, "SOPClassUID"),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        path=path,
    )


def check_decoder_available(ds: Dataset, path: Path | None) -> None:
    """Raise ``InputError`` unless a pixel data decoder is installed for the Transfer Syntax.

    The message names the Transfer Syntax UID and the pip package to install.
    """
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is None:
        # Without file meta pydicom assumes Implicit VR Little Endian, which needs no codec.
        return
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as error:
        raise InputError(
            ErrorCode.CODEC_MISSING,
            f"{path}: no pixel data decoder exists for Transfer Syntax UID "
            f"{transfer_syntax} ({transfer_syntax.name}); convert the file to an "
            "uncompressed or JPEG/JPEG 2000 transfer syntax",
        ) from error
    if decoder.is_available:
        return
    package = next(
        (pkg for prefix, pkg in _CODEC_PACKAGES.items() if transfer_syntax.startswith(prefix)),
        "pylibjpeg",
    )
    raise InputError(
        ErrorCode.CODEC_MISSING,
        f"{path}: no decoder installed for Transfer Syntax UID {transfer_syntax} "
        f"({transfer_syntax.name}); install it with `pip install {package}`",
    )


def decode_frame(ds: Dataset, path: Path | None, frame_index: int | None = None) -> np.ndarray:
    """Decode the pixel data of one frame (all of a single-frame image) exactly once.

    YBR colour data are converted to RGB by the decoder. The codec is checked
    first so that a missing plugin gives a message naming the package.

    Raises
    ------
    InputError
        ``codec_missing`` when no decoder is installed, ``pixel_data_invalid``
        when the pixel data are absent or fail to decode.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"{path} has no Pixel Data (7FE0,0010): the file is cut short, or it is "
            "not an image (a report or presentation state); pass a complete image object",
        )
    check_decoder_available(ds, path)
    try:
        return pydicom.pixels.pixel_array(ds, index=frame_index)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as error:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"{path}: decoding the Pixel Data failed ({error}); check that the file is "
            "complete and its Image Pixel module matches the data",
        ) from error
