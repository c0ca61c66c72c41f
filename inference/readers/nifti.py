"""Read a CT volume from a NIfTI-1 or NIfTI-2 file (research input)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import structlog
from nibabel.filebasedimages import ImageFileError

from hipfuse.inference.readers.codes import ErrorCode, WarningCode
from hipfuse.inference.types import CTVolume, InputError, InputWarning

log = structlog.get_logger(__name__)

# NIfTI world coordinates are RAS+; DICOM patient coordinates are LPS, so x and y flip.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# xyzt_units spatial codes (nifti1.h) -> millimetres per unit. "unknown" is taken as mm,
# which is what converters such as dcm2niix mean when they leave the field at 0.
_MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
# Same air check as the DICOM reader: a CT with no voxel below this is not in HU.
AIR_CHECK_HU = -500.0


def read_nifti_ct(path: Path | str) -> CTVolume:
    """Read a NIfTI CT as ``float32`` HU with its affine converted to LPS.

    The array axes stay those of the file; the affine maps ``(k, j, i, 1)``,
    where ``k`` is the file's first axis, to LPS mm. The scaling in
    ``scl_slope`` and ``scl_inter`` is applied, and values are assumed to be
    HU after it. Trailing axes of length 1 are dropped.

    Raises
    ------
    InputError
        ``file_not_found``, ``nifti_invalid`` (unreadable, not 3D, or a
        singular affine).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(ErrorCode.FILE_NOT_FOUND, f"NIfTI file {path} does not exist")
    try:
        image = nib.load(path)
    except (ImageFileError, OSError, ValueError) as error:
        raise InputError(
            ErrorCode.NIFTI_INVALID, f"{path} is not a readable NIfTI file ({error})"
        ) from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(
            ErrorCode.NIFTI_INVALID,
            f"{path} is a {type(image).__name__}, not NIfTI; convert it to .nii or .nii.gz",
        )

    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(
            ErrorCode.NIFTI_INVALID,
            f"{path} has shape {image.shape}; a CT volume needs three spatial axes",
        )

    warnings: list[InputWarning] = []
    header = image.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        warnings.append(
            InputWarning(
                WarningCode.NIFTI_ORIENTATION_MISSING,
                "the NIfTI header has neither sform nor qform, so the orientation is "
                "unknown; only the voxel sizes were used",
            )
        )
    spatial_unit = header.get_xyzt_units()[0]
    mm_per_unit = _MM_PER_UNIT.get(spatial_unit, 1.0)
    affine = RAS_TO_LPS @ image.affine
    affine[:3, :] *= mm_per_unit
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            ErrorCode.NIFTI_INVALID,
            f"{path} has a singular affine {image.affine.tolist()}; fix the sform or qform",
        )

    # get_fdata applies scl_slope and scl_inter; float32 keeps a single full copy.
    voxels = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape)
    minimum_hu = float(voxels.min())
    if minimum_hu > AIR_CHECK_HU:
        warnings.append(
            InputWarning(
                WarningCode.CT_HU_RANGE_IMPLAUSIBLE,
                f"the lowest voxel value is {minimum_hu:.0f}, but a CT with air in it goes "
                "down to about -1000 HU; check that the file stores HU",
            )
        )
    volume = CTVolume(voxels=voxels, affine=affine, warnings=warnings)
    log.info(
        "nifti_ct_read",
        shape=list(voxels.shape),
        spacing_mm=[round(v, 4) for v in volume.spacing_mm],
        warnings=[str(warning.code) for warning in warnings],
    )
    return volume
