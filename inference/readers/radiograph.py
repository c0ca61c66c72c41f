"""Read a projection radiograph (DICOM CR/DX, or PNG/JPEG for research) as a ``Radiograph``.

Grey-level pipeline for DICOM, in the order of PS3.3 C.11 (Modality LUT, VOI
LUT, presentation):

1. Decode the pixel data once (frame 0 of a multi-frame image, with a
   warning). YBR colour is converted to RGB by the decoder.
2. Colour images (RGB, YBR, PALETTE COLOR) become grey with the ITU-R BT.601
   luminance weights 0.299, 0.587, 0.114.
3. Greyscale images go through the Modality LUT or Rescale Slope and Intercept.
4. If the file has a VOI LUT Sequence or Window Center and Width, the first
   one maps the values to ``[0, 1]`` (the LUT is preferred when both exist).
   Otherwise, and for every colour image, the 0.5th and 99.5th percentiles
   map to 0 and 1 and values beyond them are clipped ("percentile scaling").
5. MONOCHROME1 is inverted, so bone is bright in every output.

PNG and JPEG files carry no VOI, so they get the same percentile scaling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import structlog
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

from hipfuse.inference.readers.codes import (
    ErrorCode,
    OrientationSource,
    SpacingSource,
    WarningCode,
)
from hipfuse.inference.readers.dicom_common import (
    decode_frame,
    read_identity,
    read_source_instance,
)
from hipfuse.inference.readers.radiograph_geometry import (
    read_patient_orientation,
    read_pixel_spacing,
)
from hipfuse.inference.types import InputError, InputWarning, Radiograph

log = structlog.get_logger(__name__)

# ITU-R BT.601 luma weights, the same as JPEG's RGB to YCbCr conversion.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
PERCENTILE_RANGE = (0.5, 99.5)
# Percentiles are estimated on a strided subsample of at most about this many pixels.
_PERCENTILE_SAMPLE_PIXELS = 1_000_000

_COLOUR_PHOTOMETRIC = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
# Cross-sectional modalities: a single slice of these is not a radiograph.
_NOT_RADIOGRAPH_MODALITIES = {"CT", "MR", "PT", "NM", "US", "SR", "SEG", "RTSTRUCT", "PR"}


def read_radiograph(path: Path) -> Radiograph:
    """Read and decode a radiograph into ``float32`` ``[0, 1]`` pixels with bone bright.

    Parameters
    ----------
    path
        A DICOM Part 10 file (CR, DX or any single projection image), or a
        PNG, JPEG or TIFF file for research use (8 or 16 bits, grey or colour).

    Returns
    -------
    Radiograph
        Pixels, spacing (``None`` unless the file carries a plausible value),
        patient orientation, identity, source instance and handled problems.
        Grey levels come from the first VOI LUT or window when the file has
        one, and from 0.5-99.5 percentile scaling otherwise (module docstring).

    Raises
    ------
    InputError
        ``file_not_found``, ``unsupported_file`` (not DICOM or an image, or a
        CT/MR object), ``codec_missing`` (names the pip package and Transfer
        Syntax UID), ``pixel_data_invalid``,
        ``photometric_interpretation_unsupported`` or
        ``patient_orientation_invalid``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(ErrorCode.FILE_NOT_FOUND, f"radiograph {path} does not exist")
    if _has_dicom_preamble(path):
        radiograph = _read_dicom_radiograph(path)
    else:
        radiograph = _read_image_file(path)
    log.info(
        "radiograph_read",
        sop_instance_uid=radiograph.instance.sop_instance_uid if radiograph.instance else None,
        rows=radiograph.pixels.shape[0],
        columns=radiograph.pixels.shape[1],
        spacing_source=str(radiograph.spacing_source),
        orientation_source=str(radiograph.orientation_source),
        warnings=[str(warning.code) for warning in radiograph.warnings],
    )
    return radiograph


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as stream:
        header = stream.read(132)
    return len(header) == 132 and header[128:132] == b"DICM"


def _read_dicom_radiograph(path: Path) -> Radiograph:
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, KeyError) as error:
        raise InputError(
            ErrorCode.UNSUPPORTED_FILE, f"{path} is not a readable DICOM file ({error})"
        ) from error
    modality = str(ds.get("Modality", "") or "")
    if modality in _NOT_RADIOGRAPH_MODALITIES:
        raise InputError(
            ErrorCode.UNSUPPORTED_FILE,
            f"{path} has Modality {modality}, not a projection radiograph; pass a CR or DX "
            "image (CT series go to the CT reader)",
        )

    warnings: list[InputWarning] = []
    frame_count = int(ds.get("NumberOfFrames", 1) or 1)
    if frame_count > 1:
        warnings.append(
            InputWarning(
                WarningCode.MULTIFRAME_FIRST_FRAME,
                f"the image has {frame_count} frames; only frame 1 is used",
            )
        )
    stored = decode_frame(ds, path, 0 if frame_count > 1 else None)
    pixels, voi_warnings = _dicom_to_unit_grey(ds, stored, path)
    warnings.extend(voi_warnings)

    spacing, spacing_source, spacing_warnings = read_pixel_spacing(ds)
    row_direction, column_direction, orientation_source, orientation_warnings = (
        read_patient_orientation(ds)
    )
    return Radiograph(
        pixels=pixels,
        pixel_spacing_mm=spacing,
        spacing_source=spacing_source,
        row_direction=row_direction,
        column_direction=column_direction,
        orientation_source=orientation_source,
        identity=read_identity(ds),
        instance=read_source_instance(ds, path),
        warnings=warnings + spacing_warnings + orientation_warnings,
    )


def _dicom_to_unit_grey(
    ds: Dataset, stored: np.ndarray, path: Path
) -> tuple[np.ndarray, list[InputWarning]]:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric in _COLOUR_PHOTOMETRIC:
        return _scale_by_percentiles(_luminance(stored), path), []
    if photometric == "PALETTE COLOR":
        return _scale_by_percentiles(_luminance(apply_color_lut(stored, ds)), path), []
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            ErrorCode.PHOTOMETRIC_INTERPRETATION_UNSUPPORTED,
            f"{path}: Photometric Interpretation {photometric!r} is not supported; "
            "use MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR",
        )
    if stored.ndim != 2:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"{path}: {photometric} pixel data decoded to shape {stored.shape}, expected "
            "rows x columns; check Samples per Pixel",
        )

    values = apply_modality_lut(stored, ds)
    warnings: list[InputWarning] = []
    pixels = None
    if _has_voi(ds):
        try:
            pixels = _apply_first_voi(values, ds)
        except (ValueError, NotImplementedError) as error:
            warnings.append(
                InputWarning(
                    WarningCode.VOI_INVALID,
                    f"the first VOI LUT or window could not be applied ({error}); "
                    "percentile scaling is used instead",
                )
            )
    if pixels is None:
        pixels = _scale_by_percentiles(values, path)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 displays its minimum as white, where bone is; invert to bone bright.
        np.subtract(1.0, pixels, out=pixels)
    return pixels, warnings


def _has_voi(ds: Dataset) -> bool:
    lut_sequence = ds.get("VOILUTSequence")
    has_lut = bool(lut_sequence) and all(
        lut_sequence[0].get(keyword) is not None for keyword in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    return has_lut or has_window


def _apply_first_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first VOI LUT (preferred) or window and map its output range to [0, 1]."""
    lut_sequence = ds.get("VOILUTSequence")
    if lut_sequence and lut_sequence[0].get("LUTData") is not None:
        # A VOI LUT indexes integers; the Modality LUT output may be float after rescale.
        indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        mapped = apply_voi(indices, ds, 0).astype(np.float32)
        descriptor = lut_sequence[0].LUTDescriptor
        entry_count = int(descriptor[0]) or 65536
        table = apply_voi(np.arange(entry_count, dtype=np.int64) + int(descriptor[1]), ds, 0)
        low, high = float(table.min()), float(table.max())
    else:
        mapped = apply_windowing(values, ds, 0).astype(np.float32)
        # The window's output range follows the stored bit depth and rescale (PS3.3
        # C.11.2.1.2); the outputs for values far outside the window are its ends.
        with np.errstate(over="ignore"):
            ends = apply_windowing(np.array([-1e15, 1e15]), ds, 0)
        low, high = float(ends[0]), float(ends[1])
    if high == low:
        raise ValueError("the VOI output range is empty")
    mapped -= low
    mapped /= high - low
    return np.clip(mapped, 0.0, 1.0, out=mapped)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"colour pixel data decoded to shape {rgb.shape}, expected rows x columns x 3",
        )
    red, green, blue = LUMINANCE_WEIGHTS
    grey = rgb[..., 0].astype(np.float32) * red
    grey += rgb[..., 1].astype(np.float32) * green
    grey += rgb[..., 2].astype(np.float32) * blue
    return grey


def _scale_by_percentiles(values: np.ndarray, path: Path) -> np.ndarray:
    stride = max(1, int(np.sqrt(values.size / _PERCENTILE_SAMPLE_PIXELS)))
    sample = values[::stride, ::stride]
    low, high = (float(v) for v in np.percentile(sample, PERCENTILE_RANGE))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"{path}: every pixel has the value {low:g}; the image is blank",
        )
    pixels = values.astype(np.float32)
    pixels -= low
    pixels /= high - low
    return np.clip(pixels, 0.0, 1.0, out=pixels)


def _read_image_file(path: Path) -> Radiograph:
    """Read a PNG, JPEG or TIFF research image (no identity, spacing or orientation)."""
    warnings: list[InputWarning] = []
    try:
        with Image.open(path) as image:
            frame_count = int(getattr(image, "n_frames", 1))
            image.seek(0)
            # Viewers apply the EXIF Orientation tag, so the pixels are read as displayed.
            upright = ImageOps.exif_transpose(image)
            grey = _pil_to_grey(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
        raise InputError(
            ErrorCode.UNSUPPORTED_FILE,
            f"{path} is neither DICOM nor a readable PNG, JPEG or TIFF image ({error})",
        ) from error
    if frame_count > 1:
        warnings.append(
            InputWarning(
                WarningCode.MULTIFRAME_FIRST_FRAME,
                f"the image has {frame_count} frames; only frame 1 is used",
            )
        )
    warnings.append(
        InputWarning(
            WarningCode.PIXEL_SPACING_MISSING,
            f"{path.suffix or 'the'} file carries no physical pixel spacing",
        )
    )
    warnings.append(
        InputWarning(
            WarningCode.PATIENT_ORIENTATION_ASSUMED,
            "the image has no Patient Orientation; a standard AP view is assumed "
            "(patient's left on the image right, feet toward the bottom)",
        )
    )
    return Radiograph(
        pixels=_scale_by_percentiles(grey, path),
        pixel_spacing_mm=None,
        spacing_source=SpacingSource.NONE,
        row_direction="L",
        column_direction="F",
        orientation_source=OrientationSource.ASSUMED_AP,
        warnings=warnings,
    )


def _pil_to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("L", "I", "F") or image.mode.startswith("I;16"):
        return np.asarray(image)
    if image.mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    return _luminance(np.asarray(image.convert("RGB")))
