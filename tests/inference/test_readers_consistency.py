"""Same-patient check across radiograph, CT and clinical text."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hipfuse.inference.readers.consistency import check_same_patient
from hipfuse.inference.types import (
    ClinicalText,
    CTVolume,
    InputError,
    Radiograph,
    SourceIdentity,
)

PATIENT = SourceIdentity(
    patient_id="4711",
    issuer_of_patient_id="HOSPITAL-A",
    patient_name="Doe^Jane",
    patient_birth_date="19580214",
    patient_sex="F",
    study_instance_uid="1.2.3.100",
)


def radiograph(identity: SourceIdentity) -> Radiograph:
    return Radiograph(
        pixels=np.zeros((4, 4), dtype=np.float32),
        pixel_spacing_mm=None,
        spacing_source="none",
        row_direction="L",
        column_direction="F",
        orientation_source="assumed_ap",
        identity=identity,
    )


def ct(identity: SourceIdentity) -> CTVolume:
    return CTVolume(
        voxels=np.zeros((3, 4, 4), dtype=np.float32), affine=np.eye(4), identity=identity
    )


def text(identity: SourceIdentity) -> ClinicalText:
    return ClinicalText(text="left hip pain", identity=identity)


def codes(warnings) -> list[str]:
    return [warning.code for warning in warnings]


def test_same_patient_passes():
    warnings = check_same_patient(radiograph(PATIENT), ct(PATIENT), text(PATIENT))

    assert warnings == []


@pytest.mark.parametrize(
    ("changes", "attribute"),
    [
        pytest.param({"patient_id": "4712"}, "Patient ID differs", id="patient-id"),
        pytest.param(
            {"issuer_of_patient_id": "HOSPITAL-B"}, "Issuer of Patient ID differs", id="issuer"
        ),
        pytest.param({"patient_birth_date": "19580215"}, "Birth Date differs", id="birth-date"),
        pytest.param({"patient_sex": "M"}, "Patient's Sex differs", id="sex"),
        pytest.param(
            {"patient_id": "9", "patient_sex": "M"}, "Patient ID and Patient's Sex differ", id="two"
        ),
    ],
)
def test_different_patient_is_rejected(changes, attribute):
    other = replace(PATIENT, **changes)

    with pytest.raises(InputError, match=attribute) as raised:
        check_same_patient(radiograph(PATIENT), ct(other), None)

    assert raised.value.code == "patient_mismatch"
    assert "between the radiograph and the CT" in str(raised.value)
    for value in changes.values():
        assert value not in str(raised.value)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"issuer_of_patient_id": ""}, id="one-issuer-missing"),
        pytest.param({"patient_birth_date": "1958-02-14"}, id="fhir-date"),
        pytest.param({"patient_birth_date": "195802141030"}, id="hl7-date-time"),
        pytest.param({"patient_sex": "female"}, id="fhir-gender"),
        pytest.param({"patient_sex": "O"}, id="other-sex-not-compared"),
        pytest.param({"patient_birth_date": ""}, id="birth-date-missing"),
    ],
)
def test_equivalent_values_pass(changes):
    other = replace(PATIENT, **changes)

    assert check_same_patient(None, ct(PATIENT), text(other)) == []


def test_text_mismatch_names_inputs():
    with pytest.raises(InputError, match="between the CT and the clinical text"):
        check_same_patient(None, ct(PATIENT), text(replace(PATIENT, patient_id="1")))


def test_different_studies_are_flagged():
    later = replace(PATIENT, study_instance_uid="1.2.3.200")

    warnings = check_same_patient(radiograph(PATIENT), ct(later), None)

    assert codes(warnings) == ["different_studies"]


def test_research_files_cannot_be_checked():
    warnings = check_same_patient(radiograph(SourceIdentity()), ct(PATIENT), text(SourceIdentity()))

    assert codes(warnings) == ["patient_identity_unchecked"]
    assert "radiograph and the clinical text" in warnings[0].message


def test_missing_patient_id_is_flagged():
    without_id = replace(PATIENT, patient_id="")

    warnings = check_same_patient(radiograph(PATIENT), ct(without_id), None)

    assert codes(warnings) == ["patient_identity_unchecked"]


def test_single_input_needs_no_check():
    assert check_same_patient(radiograph(SourceIdentity()), None, None) == []
