"""Source datasets of an encoded result: patient checks, header copies and slice lookup.

The SR and the Secondary Capture images copy the Patient and General Study
modules from the source images and reference them as evidence. highdicom takes
those attributes from its first evidence dataset without comparing patients, so
:func:`check_same_patient` does that before anything is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# Patient attributes that must agree between source datasets, with their tags
# for error messages. Issuer of Patient ID is compared only when both carry it.
_PATIENT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("PatientID", "Patient ID (0010,0020)"),
    ("IssuerOfPatientID", "Issuer of Patient ID (0010,0021)"),
    ("PatientBirthDate", "Patient's Birth Date (0010,0030)"),
    ("PatientSex", "Patient's Sex (0010,0040)"),
    ("PatientName", "Patient's Name (0010,0010)"),
)

# Attributes that every evidence reference needs: the Current Requested Procedure
# Evidence Sequence of the SR and the Source Image Sequence of an SC image.
_REQUIRED_UIDS: tuple[tuple[str, str], ...] = (
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
    ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ("SOPClassUID", "SOP Class UID (0008,0016)"),
    ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
)

# Type 2 attributes of the Patient and General Study modules. highdicom reads
# them as attributes of its reference dataset, so a header copy gets empty values
# for the ones the source lacks.
_TYPE2_PATIENT_STUDY: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

CT_MODALITY = "CT"


@dataclass(frozen=True)
class SourceSets:
    """Header copies of the source datasets, split by role.

    Attributes
    ----------
    primary
        The dataset whose Patient and General Study modules the outputs copy:
        the first source dataset.
    radiographs
        Projection radiograph headers (every source whose Modality is not CT).
    ct_slices
        CT slice headers, in the order given.
    """

    primary: Dataset
    radiographs: tuple[Dataset, ...]
    ct_slices: tuple[Dataset, ...]

    @property
    def all(self) -> tuple[Dataset, ...]:
        """Every header: radiographs first, then CT slices."""
        return (*self.radiographs, *self.ct_slices)


def _normalised(keyword: str, value: object) -> str:
    text = str(value if value is not None else "").strip()
    if keyword == "PatientName":
        # Trailing empty name components ("DOE^JOHN^^") do not change the name.
        text = text.rstrip("^ ").upper()
    return text


def check_same_patient(datasets: Sequence[Dataset]) -> None:
    """Raise when the datasets belong to more than one patient.

    An attribute is compared only between datasets where it is not empty,
    because many sources leave birth date or sex empty.

    Raises
    ------
    ValueError
        Naming the attribute that differs and the two SOP Instance UIDs, never
        the patient values themselves.
    """
    for keyword, label in _PATIENT_ATTRIBUTES:
        first: tuple[str, str] | None = None
        for ds in datasets:
            value = _normalised(keyword, ds.get(keyword))
            if not value:
                continue
            if first is None:
                first = (value, str(ds.get("SOPInstanceUID", "")))
            elif value != first[0]:
                raise ValueError(
                    f"{label} differs between source instances {first[1]} and "
                    f"{ds.get('SOPInstanceUID', '')}: they belong to different patients, "
                    "so no SR or Secondary Capture is built; pass the instances of one patient"
                )


def _check_uids(ds: Dataset) -> None:
    for keyword, label in _REQUIRED_UIDS:
        if not str(ds.get(keyword, "")).strip():
            raise ValueError(
                f"source dataset (SOP Instance UID {ds.get('SOPInstanceUID', '')!r}) has no "
                f"{label}, so the output cannot reference it; pass instances as stored in PACS"
            )


def header_copy(ds: Dataset) -> Dataset:
    """Copy a dataset without its pixel data, with empty Type 2 Patient and Study attributes."""
    copy = Dataset()
    for element in ds:
        if element.tag.group >= 0x7FE0:
            continue
        copy.add(element)
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy


def split_sources(datasets: Sequence[Dataset]) -> SourceSets:
    """Check the source datasets and sort their header copies into radiographs and CT.

    Raises
    ------
    ValueError
        When no dataset is given, a dataset lacks a UID that a reference needs,
        or the datasets belong to different patients.
    """
    if not datasets:
        raise ValueError(
            "no source dataset given: pass the radiograph and CT instances the result came from"
        )
    for ds in datasets:
        _check_uids(ds)
    check_same_patient(datasets)
    headers = [header_copy(ds) for ds in datasets]
    radiographs = tuple(ds for ds in headers if ds.get("Modality", "") != CT_MODALITY)
    ct_slices = tuple(ds for ds in headers if ds.get("Modality", "") == CT_MODALITY)
    return SourceSets(primary=headers[0], radiographs=radiographs, ct_slices=ct_slices)


def find_radiograph(sources: SourceSets, sop_instance_uid: str | None) -> Dataset | None:
    """Return the radiograph header with that SOP Instance UID, else the first radiograph."""
    for ds in sources.radiographs:
        if sop_instance_uid and ds.SOPInstanceUID == sop_instance_uid:
            return ds
    return sources.radiographs[0] if sources.radiographs else None


def nearest_ct_slice(ct_slices: Sequence[Dataset], point_mm: Sequence[float]) -> Dataset | None:
    """Return the CT slice whose plane lies closest to a point in LPS millimetres.

    The distance is measured along the slice normal, the cross product of the two
    Image Orientation (Patient) direction cosines. Slices without Image Position
    (Patient) or Image Orientation (Patient) are skipped.
    """
    point = np.asarray(point_mm, dtype=np.float64)
    best: tuple[float, Dataset] | None = None
    for ds in ct_slices:
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        if position is None or orientation is None or len(orientation) != 6:
            continue
        cosines = np.asarray(orientation, dtype=np.float64)
        normal = np.cross(cosines[:3], cosines[3:])
        distance = abs(float(np.dot(point - np.asarray(position, dtype=np.float64), normal)))
        if best is None or distance < best[0]:
            best = (distance, ds)
    return best[1] if best is not None else None
