"""One piece of clinical text from HL7 or FHIR, and the sections the assembled text has."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Section(StrEnum):
    """Section of the assembled text an item belongs to."""

    HISTORY = "history"
    REPORT = "report"
    CONDITION = "condition"
    MEDICATION = "medication"
    SOCIAL_HISTORY = "social_history"


# Order of the sections in the assembled text: what the patient reports and
# the clinicians note first, then reports, diagnoses, drugs and habits.
SECTION_ORDER: tuple[Section, ...] = (
    Section.HISTORY,
    Section.REPORT,
    Section.CONDITION,
    Section.MEDICATION,
    Section.SOCIAL_HISTORY,
)

SECTION_TITLES: dict[Section, str] = {
    Section.HISTORY: "Complaints, history and clinical notes",
    Section.REPORT: "Reports",
    Section.CONDITION: "Conditions",
    Section.MEDICATION: "Medications",
    Section.SOCIAL_HISTORY: "Social history",
}


@dataclass(frozen=True)
class ClinicalItem:
    """One piece of clinical text with where and when it comes from.

    Attributes
    ----------
    section
        Where it goes in the assembled text.
    text
        The text as the source wrote it, escape sequences decoded, in its
        original language.
    source_id
        ``hl7:<MSH-10 control id>`` or ``fhir:<resource type>/<id>``, for the job record.
    source_type
        Short label for the header line: ``HL7 ORU^R01 OBX``, ``FHIR Condition``.
    title
        What the item is (OBX-3 text, document type); '' when unknown.
    effective_at
        When it was observed or written, wall-clock time as the source wrote it
        (any UTC offset dropped); ``None`` when unknown.
    order_numbers
        Accession, placer and filler order numbers the source links it to;
        empty for patient-level items (history, diagnoses without an order).
    """

    section: Section
    text: str
    source_id: str
    source_type: str
    title: str = ""
    effective_at: datetime | None = None
    order_numbers: frozenset[str] = field(default_factory=frozenset)


class WarningCode(StrEnum):
    """Kind of problem met while gathering text: text left out or possibly incomplete."""

    AMBIGUOUS_PATIENT = "ambiguous_patient"
    AMBIGUOUS_ORDER = "ambiguous_order"
    FHIR_FAILED = "fhir_failed"
    FHIR_PAGE_LIMIT = "fhir_page_limit"
    ATTACHMENT_SKIPPED = "attachment_skipped"


@dataclass(frozen=True)
class MatchWarning:
    """A problem met while gathering text, for the job record; no patient data in ``message``."""

    code: WarningCode
    message: str
