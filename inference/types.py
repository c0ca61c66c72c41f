"""Data types shared by the readers, the region finder, the model and the pipeline.

Geometry conventions
--------------------
Radiographs are 2D arrays indexed ``[row, column]``. ``row_direction`` is the
patient direction in which the column index increases and ``column_direction``
the one in which the row index increases, exactly as Patient Orientation
(0020,0020) defines them. A standard AP pelvis displayed as radiologists read it
has ``row_direction == "L"`` (patient's left on image right) and
``column_direction == "F"``.

CT volumes are 3D arrays indexed ``[k, j, i]`` with an ``affine`` that maps the
homogeneous index ``(k, j, i, 1)`` to patient coordinates in millimetres in the
DICOM patient coordinate system (LPS: +x to the patient's left, +y posterior,
+z superior). The canonical orientation used for cropping is axis 0 toward
superior, axis 1 toward posterior and axis 2 toward the patient's left, which is
how an axial slice is displayed in radiological convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np


class Laterality(StrEnum):
    """Laterality of a paired body part, spelled as Laterality (0020,0060) defines it."""

    RIGHT = "R"
    LEFT = "L"


class HipClass(StrEnum):
    """The four diagnostic classes, in the order of the model's outputs."""

    NORMAL = "normal"
    OSTEOARTHRITIS = "osteoarthritis"
    OSTEONECROSIS = "osteonecrosis_of_femoral_head"
    FAI = "femoroacetabular_impingement"

    @property
    def display_name(self) -> str:
        """Return the display name, the same as the code meaning in the SR."""
        return HIP_CLASS_DISPLAY_NAMES[self]


HIP_CLASSES: tuple[HipClass, ...] = tuple(HipClass)

HIP_CLASS_DISPLAY_NAMES: dict[HipClass, str] = {
    HipClass.NORMAL: "Normal",
    HipClass.OSTEOARTHRITIS: "Osteoarthritis of hip",
    HipClass.OSTEONECROSIS: "Osteonecrosis of femoral head",
    HipClass.FAI: "Femoroacetabular impingement",
}


class InputModality(StrEnum):
    """Model inputs, in the order the fusion network stacks them."""

    RADIOGRAPH = "radiograph"
    CT = "ct"
    TEXT = "text"


INPUT_MODALITIES: tuple[InputModality, ...] = tuple(InputModality)


@dataclass(frozen=True)
class InputWarning:
    """A problem with an input that was handled and must stay visible to the user.

    Attributes
    ----------
    code
        Stable identifier such as ``pixel_spacing_placeholder``; tests and the
        node's SR key on it.
    message
        Sentence for humans that names the value and what was done about it.
    """

    code: str
    message: str


class InputError(ValueError):
    """An input that cannot be analysed; the message names the value and the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SourceIdentity:
    """Patient and study attributes of one input, used for consistency checks and outputs.

    Values are kept verbatim from the source (empty string when absent). They
    must never be logged.
    """

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""
    series_instance_uid: str = ""
    modality: str = ""
    frame_of_reference_uid: str = ""


@dataclass(frozen=True)
class SourceInstance:
    """Reference to one source SOP instance, for SR evidence and overlay provenance."""

    sop_class_uid: str
    sop_instance_uid: str
    path: Path | None = None


@dataclass
class Radiograph:
    """A decoded projection radiograph ready for region finding.

    Attributes
    ----------
    pixels
        ``float32`` array ``[row, column]`` scaled to ``[0, 1]`` with bone bright
        (after Modality LUT, VOI LUT or window, and MONOCHROME1 inversion).
    pixel_spacing_mm
        Physical size of one pixel as ``(row spacing, column spacing)`` in
        millimetres, or ``None`` when the file carries no trustworthy value.
    spacing_source
        Attribute the spacing came from (``PixelSpacing``,
        ``ImagerPixelSpacing``, ``none``).
    row_direction, column_direction
        Patient directions of increasing column and row index (see module doc).
    orientation_source
        ``PatientOrientation`` when read from the file, ``assumed_ap`` otherwise.
    identity
        Patient and study attributes of the source.
    instance
        The source SOP instance (``None`` for PNG or JPEG research input).
    warnings
        Problems that were handled.
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    spacing_source: str
    row_direction: str
    column_direction: str
    orientation_source: str
    identity: SourceIdentity = field(default_factory=SourceIdentity)
    instance: SourceInstance | None = None
    warnings: list[InputWarning] = field(default_factory=list)


@dataclass
class CTVolume:
    """A CT series as a volume in Hounsfield units.

    Attributes
    ----------
    voxels
        ``float32`` array ``[k, j, i]`` in HU.
    affine
        ``4 x 4`` matrix from ``(k, j, i, 1)`` to LPS patient coordinates in mm.
    identity
        Patient, study and series attributes of the source.
    instances
        Source SOP instances, one per index along axis 0 (empty for NIfTI).
    warnings
        Problems that were handled (resampled tilt, dropped localizers).
    """

    voxels: np.ndarray
    affine: np.ndarray
    identity: SourceIdentity = field(default_factory=SourceIdentity)
    instances: list[SourceInstance] = field(default_factory=list)
    warnings: list[InputWarning] = field(default_factory=list)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three array axes in millimetres."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclass
class ClinicalText:
    """Clinical text for one study, passed through in its original language.

    Attributes
    ----------
    text
        The assembled note, untouched (any language, any script).
    identity
        Patient attributes when the source carries them (HL7, FHIR); empty for
        a plain text file.
    sources
        Identifiers of what contributed (file names, HL7 control ids, FHIR ids).
    """

    text: str
    identity: SourceIdentity = field(default_factory=SourceIdentity)
    sources: list[str] = field(default_factory=list)


@dataclass
class RadiographRegion:
    """One hip cropped from a radiograph and brought to the canonical side.

    Attributes
    ----------
    laterality
        The patient's hip this region shows.
    crop
        ``float32`` array ``[row, column]`` of the bundle's crop size, in the
        radiograph's ``[0, 1]`` scale, mirrored so that every hip looks like a
        right hip displayed in radiological convention.
    box
        ``(row_start, column_start, row_stop, column_stop)`` of the cropped
        square in source pixel coordinates (may extend past the image edges,
        which are padded with zeros).
    mirrored
        Whether the crop was flipped left-right relative to the source pixels.
    centre
        ``(row, column)`` of the located joint centre in source pixels.
    """

    laterality: Laterality
    crop: np.ndarray
    box: tuple[float, float, float, float]
    mirrored: bool
    centre: tuple[float, float]


@dataclass
class CTRegion:
    """One hip cropped from a CT volume and brought to the canonical side.

    Attributes
    ----------
    laterality
        The patient's hip this region shows.
    crop
        ``float32`` array ``[k, j, i]`` in HU, of the bundle's crop shape and
        spacing, axes in canonical order (superior, posterior, patient left)
        and mirrored along axis 2 for left hips so both sides look alike.
    affine
        ``4 x 4`` matrix from crop index ``(k, j, i, 1)`` to LPS mm, mirroring
        included, so a heat map on the crop maps back to patient space.
    centre_mm
        Located femoral head centre in LPS mm.
    mirrored
        Whether axis 2 was flipped.
    """

    laterality: Laterality
    crop: np.ndarray
    affine: np.ndarray
    centre_mm: tuple[float, float, float]
    mirrored: bool
