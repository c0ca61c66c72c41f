"""Realistic R4 resources of a hip patient, loaded into the FHIR test server."""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_peer import FHIRTestServer, b64

SYSTEM_HOSP = "urn:oid:1.2.840.99.1"
SYSTEM_OTHER = "urn:oid:1.2.840.99.2"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SOCIAL_HISTORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "social-history",
        }
    ]
}

ADMISSION_NOTE_ZH = (
    "主诉：左髋疼痛三年，加重两月。\n"
    "现病史：患者因系统性红斑狼疮长期口服泼尼松，近两月行走时左髋疼痛加重，夜间痛明显。\n"
    "查体：左髋屈曲受限，4字试验阳性。"
)
CONSULT_NOTE_GB = "会诊意见：考虑左侧股骨头坏死（ARCO II期），建议MRI检查。"
REPORT_TEXT = (
    "AP pelvis: joint space narrowing of the left hip with subchondral sclerosis and "
    "osteophytes. Right hip normal."
)
CONCLUSION = "Left hip osteoarthritis, Kellgren-Lawrence grade 3."


@dataclass
class Dataset:
    """Ids of what was loaded, by role."""

    patient: str = ""
    other_system_patient: str = ""
    paged_patient: str = ""
    ids: dict[str, str] = field(default_factory=dict)


def _patient(server: FHIRTestServer, system: str, value: str) -> str:
    resource = server.create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": system, "value": value}],
            "name": [{"family": "Test", "given": ["Hip"]}],
            "gender": "female",
            "birthDate": "1968-04-02",
        }
    )
    return resource["id"]


def load_dataset(server: FHIRTestServer) -> Dataset:
    """Load the patient with notes, reports, conditions, drugs and habits, plus decoys."""
    data = Dataset()
    data.patient = _patient(server, SYSTEM_HOSP, "HIP001")
    data.other_system_patient = _patient(server, SYSTEM_OTHER, "HIP001")
    decoy = _patient(server, SYSTEM_HOSP, "OTHER9")
    data.paged_patient = _patient(server, SYSTEM_HOSP, "PAGED1")
    subject = {"reference": f"Patient/{data.patient}"}

    def create(role: str, resource: dict) -> None:
        data.ids[role] = server.create(resource)["id"]

    create(
        "note_zh",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": LOINC, "code": "34117-2"}], "text": "入院记录"},
            "subject": subject,
            "date": "2024-02-20T09:00:00+08:00",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "language": "zh-CN",
                        "data": b64(ADMISSION_NOTE_ZH.encode("utf-8")),
                    }
                }
            ],
        },
    )
    create(
        "binary_gb",
        {
            "resourceType": "Binary",
            "contentType": "text/plain; charset=GB18030",
            "data": b64(CONSULT_NOTE_GB.encode("gb18030")),
        },
    )
    create(
        "note_url",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"text": "Consultation note"},
            "subject": subject,
            "date": "2024-02-25T15:30:00+08:00",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=GB18030",
                        "url": f"Binary/{data.ids['binary_gb']}",
                    }
                }
            ],
        },
    )
    create(
        "note_pdf",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"text": "Scanned referral"},
            "subject": subject,
            "date": "2024-02-26",
            "content": [{"attachment": {"contentType": "application/pdf", "data": b64(b"%PDF")}}],
        },
    )
    create(
        "note_old",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": subject,
            "date": "2019-05-01",
            "content": [
                {"attachment": {"contentType": "text/plain", "data": b64(b"Old ankle note.")}}
            ],
        },
    )
    create(
        "note_error",
        {
            "resourceType": "DocumentReference",
            "status": "entered-in-error",
            "subject": subject,
            "date": "2024-02-27",
            "content": [
                {"attachment": {"contentType": "text/plain", "data": b64(b"Wrong patient note.")}}
            ],
        },
    )
    create(
        "report",
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "identifier": [
                {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                    "system": "urn:oid:1.2.840.99.5",
                    "value": "ACC1001",
                }
            ],
            "code": {"text": "XR pelvis AP"},
            "subject": subject,
            "effectiveDateTime": "2024-03-01T10:00:00+08:00",
            "conclusion": CONCLUSION,
            "presentedForm": [
                {"contentType": "text/plain; charset=utf-8", "data": b64(REPORT_TEXT.encode())}
            ],
        },
    )
    create(
        "report_other",
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "identifier": [
                {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                    "value": "ACC0999",
                }
            ],
            "code": {"text": "XR knee"},
            "subject": subject,
            "effectiveDateTime": "2024-02-02",
            "conclusion": "No knee effusion.",
        },
    )
    create(
        "condition_oa",
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "code": {
                "coding": [
                    {"system": SNOMED, "code": "239872002", "display": "Osteoarthritis of hip"}
                ],
                "text": "Osteoarthritis of left hip",
            },
            "subject": subject,
            "onsetDateTime": "2022-05-10",
        },
    )
    create(
        "condition_sle",
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"text": "系统性红斑狼疮"},
            "subject": subject,
            "onsetDateTime": "2015-06-01",
        },
    )
    create(
        "condition_ancient",
        {
            "resourceType": "Condition",
            "code": {"text": "Childhood fracture of radius"},
            "subject": subject,
            "onsetDateTime": "1979-01-01",
        },
    )
    create(
        "condition_refuted",
        {
            "resourceType": "Condition",
            "verificationStatus": {"coding": [{"code": "refuted"}]},
            "code": {"text": "Septic arthritis"},
            "subject": subject,
            "recordedDate": "2024-02-01",
        },
    )
    create(
        "medication",
        {
            "resourceType": "Medication",
            "code": {"text": "Prednisone 5 mg oral tablet"},
        },
    )
    create(
        "prescription",
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": f"Medication/{data.ids['medication']}"},
            "subject": subject,
            "authoredOn": "2023-06-01",
            "reasonCode": [{"text": "系统性红斑狼疮"}],
            "dosageInstruction": [{"text": "10 mg once daily"}],
        },
    )
    create(
        "statement",
        {
            "resourceType": "MedicationStatement",
            "status": "completed",
            "medicationCodeableConcept": {"text": "Methylprednisolone pulse therapy"},
            "subject": subject,
            "effectivePeriod": {"start": "2016-02-01", "end": "2016-02-03"},
            "dosage": [{"text": "500 mg IV daily for 3 days"}],
        },
    )
    create(
        "alcohol",
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [SOCIAL_HISTORY],
            "code": {
                "coding": [
                    {"system": LOINC, "code": "74013-4", "display": "Alcoholic drinks per day"}
                ]
            },
            "subject": subject,
            "effectiveDateTime": "2024-02-20",
            "valueQuantity": {"value": 4, "unit": "drinks/day", "code": "{drinks}/d"},
        },
    )
    create(
        "smoking",
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [SOCIAL_HISTORY],
            "code": {
                "coding": [{"system": LOINC, "code": "72166-2"}],
                "text": "Tobacco smoking status",
            },
            "subject": subject,
            "effectiveDateTime": "2024-02-20",
            "valueCodeableConcept": {
                "coding": [{"system": SNOMED, "code": "8517006", "display": "Former smoker"}]
            },
        },
    )
    create(
        "lab",
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"code": "laboratory"}]}],
            "code": {"text": "C-reactive protein"},
            "subject": subject,
            "effectiveDateTime": "2024-02-20",
            "valueQuantity": {"value": 3, "unit": "mg/L"},
        },
    )
    server.create(
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": f"Patient/{decoy}"},
            "date": "2024-02-20",
            "content": [
                {"attachment": {"contentType": "text/plain", "data": b64(b"Decoy patient note.")}}
            ],
        }
    )
    for number in range(23):
        server.create(
            {
                "resourceType": "Condition",
                "code": {"text": f"Paged condition {number:02d}"},
                "subject": {"reference": f"Patient/{data.paged_patient}"},
                "recordedDate": f"2023-01-{number + 1:02d}",
            }
        )
    return data
