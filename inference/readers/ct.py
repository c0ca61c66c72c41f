"""Read a CT series from DICOM files into a ``CTVolume`` in Hounsfield units.

``read_ct_series`` finds the series, orders its slices along the slice normal,
converts each slice to HU with its own Rescale Slope and Intercept, and
handles duplicates, uneven spacing and gantry tilt (see ``ct_geometry``).
``reorient_to_canonical`` (from ``ct_orientation``) brings any volume to the
axis order used for cropping.

Memory: the volume is decoded slice by slice into one preallocated ``float32``
array; resampling (uneven spacing, tilt) allocates one more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.pixels import apply_modality_lut

from hipfuse.inference.readers.codes import ErrorCode, WarningCode
from hipfuse.inference.readers.ct_geometry import (
    StackGeometry,
    analyse_stack,
    nearest_source_slices,
    resample_stack,
    stack_affine,
)
from hipfuse.inference.readers.ct_orientation import reorient_to_canonical
from hipfuse.inference.readers.ct_series import (
    SliceHeader,
    collect_files,
    keep_majority_orientation,
    read_headers,
    select_series,
)
from hipfuse.inference.readers.dicom_common import (
    decode_frame,
    read_identity,
    read_source_instance,
)
from hipfuse.inference.types import CTVolume, InputError, InputWarning, SourceInstance

__all__ = ["read_ct_series", "reorient_to_canonical"]

log = structlog.get_logger(__name__)

# A CT volume with no voxel below this has no air in it, which suggests a
# missing Rescale Intercept (raw stored values instead of HU).
AIR_CHECK_HU = -500.0


def read_ct_series(
    paths_or_dir: Path | str | Sequence[Path | str],
    series_instance_uid: str | None = None,
) -> CTVolume:
    """Read one CT series from a folder or a list of files.

    Parameters
    ----------
    paths_or_dir
        A folder (searched recursively) or the files of the series. Files that
        are not DICOM images are skipped.
    series_instance_uid
        The series to read when the input contains several. Without it the input
        must hold exactly one CT series. Images without a Series Instance UID
        are grouped by Frame of Reference UID, Modality and Series Number.

    Returns
    -------
    CTVolume
        ``float32`` HU voxels ``[k, j, i]`` with axis 0 along the slice normal
        (row cosine x column cosine) in increasing position, axis 1 along the
        column cosine and axis 2 along the row cosine, and the affine from
        ``(k, j, i, 1)`` to LPS mm. ``instances`` has one entry per axis-0
        index (the nearest source slice when the spacing was resampled).

    Raises
    ------
    InputError
        ``file_not_found``, ``ct_no_images``, ``ct_several_series`` (lists
        the series), ``ct_series_not_found``, ``ct_multiframe_unsupported``,
        ``ct_geometry_invalid``, ``ct_inconsistent_slices``,
        ``ct_mixed_orientation``, ``ct_too_few_slices``,
        ``ct_duplicate_positions``, ``ct_missing_slices``, ``codec_missing``
        or ``pixel_data_invalid``.

    Notes
    -----
    Localizers (Image Type LOCALIZER) and up to 10 % of slices in another
    orientation are dropped with a warning. Duplicate positions with
    identical pixel data are dropped with a warning. Uneven spacing that is
    not a whole number of missing slices, and gantry tilt, are resampled with
    a warning (see ``ct_geometry.resample_stack``).
    """
    started = time.perf_counter()
    files = collect_files(paths_or_dir)
    headers, skipped = read_headers(files)
    if skipped:
        log.info("ct_files_skipped", count=skipped)
    if not headers:
        raise InputError(
            ErrorCode.CT_NO_IMAGES,
            f"none of the {len(files)} files in {paths_or_dir} is a DICOM image",
        )
    group, warnings = select_series(headers, series_instance_uid)
    _check_single_frame(group.headers)
    slices, orientation_warnings = keep_majority_orientation(group.headers)
    warnings.extend(orientation_warnings)
    geometry, geometry_warnings = analyse_stack(slices)
    warnings.extend(geometry_warnings)

    voxels, duplicate_warnings = _decode_stack(slices, geometry)
    warnings.extend(duplicate_warnings)
    kept_instances = [
        read_source_instance(slices[index].ds, slices[index].path) for index in geometry.order
    ]
    instances: list[SourceInstance] = kept_instances
    if geometry.needs_resampling:
        voxels = resample_stack(voxels, geometry)
        instances = [kept_instances[index] for index in nearest_source_slices(geometry)]
    if any(not instance.sop_instance_uid for instance in instances):
        warnings.append(
            InputWarning(
                WarningCode.SOP_INSTANCE_UID_MISSING,
                "some images have no SOP Instance UID, so results cannot reference them",
            )
        )
    minimum_hu = float(voxels.min())
    if minimum_hu > AIR_CHECK_HU:
        warnings.append(
            InputWarning(
                WarningCode.CT_HU_RANGE_IMPLAUSIBLE,
                f"the lowest voxel value is {minimum_hu:.0f}, but a CT with air in it goes "
                "down to about -1000 HU; check Rescale Intercept and Rescale Slope",
            )
        )

    volume = CTVolume(
        voxels=voxels,
        affine=stack_affine(geometry),
        identity=read_identity(slices[geometry.order[0]].ds),
        instances=instances,
        warnings=warnings,
    )
    log.info(
        "ct_series_read",
        series_instance_uid=group.series_uid,
        slices=int(voxels.shape[0]),
        shape=list(voxels.shape),
        spacing_mm=[round(v, 4) for v in volume.spacing_mm],
        warnings=[str(warning.code) for warning in warnings],
        duration_s=round(time.perf_counter() - started, 3),
    )
    return volume


def _check_single_frame(headers: list[SliceHeader]) -> None:
    for header in headers:
        frames = int(header.ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            # NOTE: Enhanced CT keeps each frame's geometry in functional groups,
            # which this reader does not parse.
            raise InputError(
                ErrorCode.CT_MULTIFRAME_UNSUPPORTED,
                f"{header.path} is a multi-frame (Enhanced) CT image with {frames} frames; "
                "export the series as single-frame CT Image Storage",
            )


def _decode_stack(
    slices: list[SliceHeader], geometry: StackGeometry
) -> tuple[np.ndarray, list[InputWarning]]:
    """Decode each kept slice once into one float32 HU volume and check the duplicates."""
    rows, columns = int(slices[0].ds.Rows), int(slices[0].ds.Columns)
    voxels = np.empty((len(geometry.order), rows, columns), dtype=np.float32)
    dropped = 0
    for target, index in enumerate(geometry.order):
        _decode_hu_into(slices[index], voxels[target])
        for duplicate in geometry.duplicates.get(index, []):
            other = np.empty((rows, columns), dtype=np.float32)
            _decode_hu_into(slices[duplicate], other)
            if not np.array_equal(other, voxels[target]):
                raise InputError(
                    ErrorCode.CT_DUPLICATE_POSITIONS,
                    f"{slices[index].path.name} and {slices[duplicate].path.name} lie at the "
                    f"same position ({geometry.positions_mm[target]:.2f} mm along the slice "
                    "normal) but hold different images; the folder probably mixes two "
                    "acquisitions (check Acquisition Number). Pass the images of one",
                )
            dropped += 1
    warnings: list[InputWarning] = []
    if dropped:
        warnings.append(
            InputWarning(
                WarningCode.CT_DUPLICATE_SLICES_DROPPED,
                f"{dropped} slices repeated another slice's position and pixel data and "
                "were dropped",
            )
        )
    return voxels, warnings


def _decode_hu_into(header: SliceHeader, out: np.ndarray) -> None:
    ds = pydicom.dcmread(header.path)
    stored = decode_frame(ds, header.path)
    if stored.shape != out.shape:
        raise InputError(
            ErrorCode.PIXEL_DATA_INVALID,
            f"{header.path}: pixel data decoded to shape {stored.shape}, expected "
            f"{out.shape}; CT images must be single-sample greyscale",
        )
    if ds.get("ModalityLUTSequence"):
        out[...] = apply_modality_lut(stored, ds)
        return
    # Rescale Slope and Intercept may differ per slice (CT Image module, PS3.3 C.8.2.1).
    # NOTE: Pixel Padding Value is not applied, so voxels outside the reconstruction
    # circle keep their rescaled value (often -2048 or -3024 HU); clip before use.
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out[...] = stored
    if slope != 1.0:
        out *= slope
    if intercept != 0.0:
        out += intercept
