"""Stable codes of the warnings and errors that the readers produce, and their defined terms.

``InputWarning.code`` and ``InputError.code`` take these values. The node's SR
and the tests key on them, so a value never changes once released.
"""

from __future__ import annotations

from enum import StrEnum


class WarningCode(StrEnum):
    """Codes of problems that a reader handled and reports as ``InputWarning``."""

    PIXEL_SPACING_MISSING = "pixel_spacing_missing"
    PIXEL_SPACING_PLACEHOLDER = "pixel_spacing_placeholder"
    PIXEL_SPACING_INVALID = "pixel_spacing_invalid"
    PIXEL_SPACING_AT_DETECTOR = "pixel_spacing_at_detector"
    PATIENT_ORIENTATION_ASSUMED = "patient_orientation_assumed"
    PATIENT_ORIENTATION_OBLIQUE = "patient_orientation_oblique"
    MULTIFRAME_FIRST_FRAME = "multiframe_first_frame"
    VOI_INVALID = "voi_invalid"
    SERIES_UID_MISSING = "series_uid_missing"
    SOP_INSTANCE_UID_MISSING = "sop_instance_uid_missing"
    CT_LOCALIZER_DROPPED = "ct_localizer_dropped"
    CT_ORIENTATION_MINORITY_DROPPED = "ct_orientation_minority_dropped"
    CT_DUPLICATE_SLICES_DROPPED = "ct_duplicate_slices_dropped"
    CT_UNEVEN_SPACING_RESAMPLED = "ct_uneven_spacing_resampled"
    CT_GANTRY_TILT_RESAMPLED = "ct_gantry_tilt_resampled"
    CT_OBLIQUE_RESAMPLED = "ct_oblique_resampled"
    CT_HU_RANGE_IMPLAUSIBLE = "ct_hu_range_implausible"
    NIFTI_ORIENTATION_MISSING = "nifti_orientation_missing"
    PATIENT_IDENTITY_UNCHECKED = "patient_identity_unchecked"
    DIFFERENT_STUDIES = "different_studies"


class ErrorCode(StrEnum):
    """Codes of inputs that a reader rejects with ``InputError``."""

    FILE_NOT_FOUND = "file_not_found"
    UNSUPPORTED_FILE = "unsupported_file"
    CODEC_MISSING = "codec_missing"
    PIXEL_DATA_INVALID = "pixel_data_invalid"
    PHOTOMETRIC_INTERPRETATION_UNSUPPORTED = "photometric_interpretation_unsupported"
    PATIENT_ORIENTATION_INVALID = "patient_orientation_invalid"
    CT_NO_IMAGES = "ct_no_images"
    CT_SEVERAL_SERIES = "ct_several_series"
    CT_SERIES_NOT_FOUND = "ct_series_not_found"
    CT_MULTIFRAME_UNSUPPORTED = "ct_multiframe_unsupported"
    CT_GEOMETRY_INVALID = "ct_geometry_invalid"
    CT_INCONSISTENT_SLICES = "ct_inconsistent_slices"
    CT_MIXED_ORIENTATION = "ct_mixed_orientation"
    CT_TOO_FEW_SLICES = "ct_too_few_slices"
    CT_DUPLICATE_POSITIONS = "ct_duplicate_positions"
    CT_MISSING_SLICES = "ct_missing_slices"
    CT_NOT_AXIAL = "ct_not_axial"
    NIFTI_INVALID = "nifti_invalid"
    TEXT_ENCODING_UNKNOWN = "text_encoding_unknown"
    TEXT_TOO_LARGE = "text_too_large"
    PATIENT_MISMATCH = "patient_mismatch"


class SpacingSource(StrEnum):
    """Attribute that ``Radiograph.pixel_spacing_mm`` came from."""

    PIXEL_SPACING = "PixelSpacing"
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"
    NONE = "none"


class OrientationSource(StrEnum):
    """Origin of ``Radiograph.row_direction`` and ``column_direction``.

    ``ASSUMED_AP`` and ``ASSUMED_PA`` mean that the file has no Patient
    Orientation and the pixels are taken to be in the X-ray source's view of
    an AP or a PA projection.
    """

    PATIENT_ORIENTATION = "PatientOrientation"
    ASSUMED_AP = "assumed_ap"
    ASSUMED_PA = "assumed_pa"
