"""Check that the radiograph, the CT and the clinical text belong to the same patient.

Messages name the attribute that differs and the inputs involved, never the
values, because those identify the patient.
"""

from __future__ import annotations

import itertools
import re

from hipfuse.inference.readers.codes import ErrorCode, WarningCode
from hipfuse.inference.types import (
    ClinicalText,
    CTVolume,
    InputError,
    InputWarning,
    Radiograph,
    SourceIdentity,
)

# Sex codes compared across sources: DICOM (0010,0040) and HL7 PID-8 use M/F,
# FHIR uses male/female; other values (O, U, unknown) are never a mismatch.
_COMPARABLE_SEX = {"M", "F"}


def check_same_patient(
    radiograph: Radiograph | None, ct: CTVolume | None, text: ClinicalText | None
) -> list[InputWarning]:
    """Reject inputs of different patients and warn where sameness cannot be checked.

    Every pair of inputs that carry patient attributes is compared on Patient
    ID (and Issuer of Patient ID when both have one), Patient's Birth Date and
    Patient's Sex, each only when both inputs have a value.

    Returns
    -------
    list[InputWarning]
        ``patient_identity_unchecked`` when an input carries no patient
        attributes or a pair has no Patient ID to compare, and
        ``different_studies`` when the radiograph and the CT have different
        Study Instance UIDs (legitimate, but worth a look). Empty for a
        single input.

    Raises
    ------
    InputError
        ``patient_mismatch`` naming the attribute and the two inputs.
    """
    sources = [
        (name, source.identity)
        for name, source in (("radiograph", radiograph), ("CT", ct), ("clinical text", text))
        if source is not None
    ]
    if len(sources) < 2:
        return []

    warnings: list[InputWarning] = []
    identified = [(name, identity) for name, identity in sources if _has_patient(identity)]
    anonymous = [name for name, identity in sources if not _has_patient(identity)]
    if anonymous:
        verb = "carries" if len(anonymous) == 1 else "carry"
        warnings.append(
            InputWarning(
                WarningCode.PATIENT_IDENTITY_UNCHECKED,
                f"the {' and the '.join(anonymous)} {verb} no patient attributes, so it "
                "could not be checked that all inputs belong to the same patient",
            )
        )

    for (first_name, first), (second_name, second) in itertools.combinations(identified, 2):
        differing = _differing_attributes(first, second)
        if differing:
            verb = "differs" if len(differing) == 1 else "differ"
            raise InputError(
                ErrorCode.PATIENT_MISMATCH,
                f"{' and '.join(differing)} {verb} between the {first_name} and the "
                f"{second_name}; all inputs of one analysis must belong to one patient",
            )
        if not (first.patient_id and second.patient_id):
            warnings.append(
                InputWarning(
                    WarningCode.PATIENT_IDENTITY_UNCHECKED,
                    f"Patient ID could not be compared between the {first_name} and the "
                    f"{second_name} because one of them has none",
                )
            )

    if radiograph is not None and ct is not None:
        radiograph_study = radiograph.identity.study_instance_uid
        ct_study = ct.identity.study_instance_uid
        if radiograph_study and ct_study and radiograph_study != ct_study:
            warnings.append(
                InputWarning(
                    WarningCode.DIFFERENT_STUDIES,
                    f"the radiograph (study {radiograph_study}) and the CT (study "
                    f"{ct_study}) come from different studies of the patient",
                )
            )
    return warnings


def _has_patient(identity: SourceIdentity) -> bool:
    return bool(identity.patient_id or identity.patient_birth_date or identity.patient_sex)


def _differing_attributes(first: SourceIdentity, second: SourceIdentity) -> list[str]:
    differing = []
    if first.patient_id and second.patient_id:
        if first.patient_id.strip() != second.patient_id.strip():
            differing.append("Patient ID")
        elif (
            first.issuer_of_patient_id
            and second.issuer_of_patient_id
            and first.issuer_of_patient_id.strip() != second.issuer_of_patient_id.strip()
        ):
            differing.append("Issuer of Patient ID")
    first_birth, second_birth = _birth_date(first), _birth_date(second)
    if first_birth and second_birth and first_birth != second_birth:
        differing.append("Patient's Birth Date")
    first_sex, second_sex = _sex(first), _sex(second)
    if first_sex and second_sex and first_sex != second_sex:
        differing.append("Patient's Sex")
    return differing


def _birth_date(identity: SourceIdentity) -> str:
    # DICOM DA is YYYYMMDD, HL7 DTM YYYYMMDD[HHMM...], FHIR date YYYY-MM-DD.
    digits = re.sub(r"\D", "", identity.patient_birth_date)
    return digits[:8] if len(digits) >= 8 else ""


def _sex(identity: SourceIdentity) -> str:
    code = identity.patient_sex.strip()[:1].upper()
    return code if code in _COMPARABLE_SEX else ""
