"""Pixel spacing and patient orientation of a projection radiograph."""

from __future__ import annotations

import math

from pydicom.dataset import Dataset

from hipfuse.inference.readers.codes import (
    ErrorCode,
    OrientationSource,
    SpacingSource,
    WarningCode,
)
from hipfuse.inference.types import InputError, InputWarning

# Plausible pixel pitch of a projection radiograph in mm. Published general
# radiography flat panels span 0.076-0.175 mm ("Seven general radiography X-ray
# detectors with pixel sizes ranging from 175 to 76 µm", a technical
# evaluation focused on orthopaedic imaging), and mammography panels 0.05-0.1
# mm (Agfa white paper "Is detector pixel size a determining parameter for
# perceived clinical image quality?"). The range below leaves room for exports
# binned up to 4x4 (4 x 0.175 = 0.7 mm), and rejects placeholders such as the
# 1.0 mm that converters write when they know no spacing.
MIN_PLAUSIBLE_SPACING_MM = 0.02
MAX_PLAUSIBLE_SPACING_MM = 0.8

# Opposite letters of Patient Orientation (0020,0020), PS3.3 C.7.6.1.1.1.
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
_AXIS = {"L": 0, "R": 0, "A": 1, "P": 1, "H": 2, "F": 2}


def read_pixel_spacing(
    ds: Dataset,
) -> tuple[tuple[float, float] | None, SpacingSource, list[InputWarning]]:
    """Read the pixel spacing of a radiograph and reject values that cannot be trusted.

    Pixel Spacing (0028,0030) is preferred because it is calibrated to the
    patient plane when present. Imager Pixel Spacing (0018,1164) is used
    otherwise, with a warning that it is measured at the detector and is
    therefore larger than the anatomy by the radiographic magnification
    (typically 1.1-1.2 for a table bucky).

    Returns
    -------
    spacing_mm, source, warnings
        ``(row spacing, column spacing)`` in mm or ``None``, the attribute it
        came from, and a warning for every value that was rejected.
    """
    warnings: list[InputWarning] = []
    for source in (SpacingSource.PIXEL_SPACING, SpacingSource.IMAGER_PIXEL_SPACING):
        raw = ds.get(source.value)
        if raw is None or raw == "":
            continue
        spacing, problem = _validate_spacing(source, raw)
        if problem is not None:
            warnings.append(problem)
            continue
        if source is SpacingSource.IMAGER_PIXEL_SPACING:
            warnings.append(
                InputWarning(
                    WarningCode.PIXEL_SPACING_AT_DETECTOR,
                    f"Imager Pixel Spacing {spacing[0]:g} x {spacing[1]:g} mm is measured at "
                    "the detector and not corrected for magnification, so distances in the "
                    "image overstate the anatomy by the magnification factor",
                )
            )
        return spacing, source, warnings

    if not warnings:
        warnings.append(
            InputWarning(
                WarningCode.PIXEL_SPACING_MISSING,
                "the image has neither Pixel Spacing nor Imager Pixel Spacing, so its "
                "physical scale is unknown",
            )
        )
    return None, SpacingSource.NONE, warnings


def _validate_spacing(
    source: SpacingSource, raw: object
) -> tuple[tuple[float, float], InputWarning | None]:
    try:
        values = [float(v) for v in raw]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return (0.0, 0.0), InputWarning(
            WarningCode.PIXEL_SPACING_INVALID,
            f"{source.value} {raw!s} is not two positive numbers, so it is ignored",
        )
    spacing = (values[0], values[1])
    if not all(MIN_PLAUSIBLE_SPACING_MM <= v <= MAX_PLAUSIBLE_SPACING_MM for v in spacing):
        return spacing, InputWarning(
            WarningCode.PIXEL_SPACING_PLACEHOLDER,
            f"{source.value} {spacing[0]:g} x {spacing[1]:g} mm is outside the "
            f"{MIN_PLAUSIBLE_SPACING_MM:g}-{MAX_PLAUSIBLE_SPACING_MM:g} mm of radiography "
            "detectors, so it is treated as a placeholder and ignored",
        )
    return spacing, None


def read_patient_orientation(
    ds: Dataset,
) -> tuple[str, str, OrientationSource, list[InputWarning]]:
    """Read Patient Orientation (0020,0020) as single-letter row and column directions.

    Compound values such as ``LF`` (an image rotated away from the patient
    axes) keep their first letter, which PS3.3 C.7.6.1.1.1 defines as the
    principal direction, and add a warning.

    Without Patient Orientation the pixels are assumed to be in the X-ray
    source's view of the patient: for View Position PA the patient's left is on
    the image left (``row_direction == "R"``), for AP or no View Position the
    patient's left is on the image right (``"L"``). Both add a warning.

    Raises
    ------
    InputError
        ``patient_orientation_invalid`` when the attribute is present but not
        two values whose principal letters lie on different patient axes.
    """
    raw = ds.get("PatientOrientation")
    values = _orientation_values(raw)
    if not values:
        view_position = str(ds.get("ViewPosition", "") or "").strip().upper()
        if view_position == "PA":
            # NOTE: PA images are often flipped by the modality to be read like AP;
            # such files should carry Patient Orientation, this is only a fallback.
            row_direction, source = "R", OrientationSource.ASSUMED_PA
            described = "View Position is PA, so the patient's left is assumed on the image left"
        else:
            row_direction, source = "L", OrientationSource.ASSUMED_AP
            described = "a standard AP view is assumed (patient's left on the image right)"
        warning = InputWarning(
            WarningCode.PATIENT_ORIENTATION_ASSUMED,
            f"the image has no Patient Orientation; {described} and feet toward the bottom",
        )
        return row_direction, "F", source, [warning]

    joined = "\\".join(values)
    if len(values) != 2:
        raise InputError(
            ErrorCode.PATIENT_ORIENTATION_INVALID,
            f"Patient Orientation '{joined}' must have two values (row and column "
            "direction); correct the attribute or remove it",
        )
    principal = [_principal_letter(value, values) for value in values]
    if _AXIS[principal[0]] == _AXIS[principal[1]]:
        raise InputError(
            ErrorCode.PATIENT_ORIENTATION_INVALID,
            f"Patient Orientation '{joined}' gives both image axes the same patient "
            "axis; correct the attribute or remove it",
        )
    warnings: list[InputWarning] = []
    if any(len(value) > 1 for value in values):
        warnings.append(
            InputWarning(
                WarningCode.PATIENT_ORIENTATION_OBLIQUE,
                f"Patient Orientation '{joined}' describes an image rotated away from "
                f"the patient axes; it is treated as {principal[0]} and {principal[1]}",
            )
        )
    return principal[0], principal[1], OrientationSource.PATIENT_ORIENTATION, warnings


def _orientation_values(raw: object) -> list[str]:
    if raw is None or raw == "":
        return []
    items = [raw] if isinstance(raw, str) else list(raw)  # type: ignore[call-overload]
    values = [str(item).strip().upper() for item in items]
    return [] if all(not value for value in values) else values


def _principal_letter(value: str, values: list[str]) -> str:
    joined = "\\".join(values)
    letters = list(value)
    unambiguous = (
        1 <= len(letters) <= 3
        and all(letter in _OPPOSITE for letter in letters)
        and len({_AXIS[letter] for letter in letters}) == len(letters)
    )
    if not unambiguous:
        raise InputError(
            ErrorCode.PATIENT_ORIENTATION_INVALID,
            f"Patient Orientation value {value!r} in '{joined}' is not one to three "
            "letters from A, P, L, R, H, F on different axes; correct the attribute or remove it",
        )
    return letters[0]
