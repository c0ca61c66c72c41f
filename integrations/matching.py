"""Decide which clinical text items belong to a study.

Rules, the same for HL7 and FHIR items:

- An item linked to orders (accession, placer or filler numbers) belongs to
  the study when the study's accession number is one of them. When the study
  has an accession number, items of other orders are left out whatever
  their date.
- When the study has no accession number, order-linked items dated in the
  window count only if they all belong to one order (items that share a
  number are one order). Two orders or more in the window are ambiguous,
  so they are left out and a warning reports them. Nothing is guessed.
- Items without orders are patient-level (history, notes, diagnoses): they
  count when dated in the window, or in the longer history window for
  conditions, medications and social history. Undated items count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.items import ClinicalItem, MatchWarning, Section, WarningCode

HISTORY_SECTIONS = frozenset({Section.CONDITION, Section.MEDICATION, Section.SOCIAL_HISTORY})


@dataclass(frozen=True)
class DateWindow:
    """Calendar days from ``start`` to ``end``, both included."""

    start: date
    end: date

    def contains(self, moment: datetime | None) -> bool:
        """Return whether ``moment`` falls in the window; an unknown date counts as inside."""
        return moment is None or self.start <= moment.date() <= self.end


@dataclass(frozen=True)
class StudyWindows:
    """The windows around one study date: for notes and reports, and for history."""

    recent: DateWindow
    history: DateWindow

    @classmethod
    def around(
        cls, study_date: date, before_days: float, after_days: float, history_before_days: float
    ) -> StudyWindows:
        """Build the windows from day counts before and after ``study_date``."""
        end = study_date + timedelta(days=after_days)
        return cls(
            DateWindow(study_date - timedelta(days=before_days), end),
            DateWindow(study_date - timedelta(days=history_before_days), end),
        )

    def for_section(self, section: Section) -> DateWindow:
        """Return the window that applies to items of ``section``."""
        return self.history if section in HISTORY_SECTIONS else self.recent


def select_items(
    items: Iterable[ClinicalItem],
    *,
    accession_number: str,
    windows: StudyWindows | None,
    source: str,
) -> tuple[list[ClinicalItem], list[MatchWarning]]:
    """Keep the items that belong to the study, by the rules of this module.

    Parameters
    ----------
    items
        Items of the study's patient.
    accession_number
        The study's Accession Number; '' when it has none.
    windows
        Date windows around the study date; ``None`` when the date is unknown
        (every date counts).
    source
        ``HL7`` or ``FHIR``, for the warning message.
    """
    accession_number = accession_number.strip()
    kept: list[ClinicalItem] = []
    order_linked: list[ClinicalItem] = []
    for item in items:
        in_window = windows is None or windows.for_section(item.section).contains(item.effective_at)
        if item.order_numbers:
            if accession_number:
                if accession_number in item.order_numbers:
                    kept.append(item)
            elif in_window:
                order_linked.append(item)
        elif in_window:
            kept.append(item)

    warnings: list[MatchWarning] = []
    orders = _count_orders(item.order_numbers for item in order_linked)
    if orders > 1:
        warnings.append(
            MatchWarning(
                WarningCode.AMBIGUOUS_ORDER,
                f"{source}: {orders} different orders of the patient lie in the date window "
                "and the study has no accession number; their text was left out",
            )
        )
    else:
        kept += order_linked
    return kept, warnings


def _count_orders(number_sets: Iterable[frozenset[str]]) -> int:
    """Count groups of number sets connected by shared numbers (union-find)."""
    parent: dict[str, str] = {}

    def find(number: str) -> str:
        while parent[number] != number:
            parent[number] = parent[parent[number]]
            number = parent[number]
        return number

    for numbers in number_sets:
        ordered = sorted(numbers)
        for number in ordered:
            parent.setdefault(number, number)
        for number in ordered[1:]:
            parent[find(number)] = find(ordered[0])
    return len({find(number) for number in parent})


def hl7_items(
    store: HL7Store, patient_id: str, issuer: str
) -> tuple[list[ClinicalItem], list[MatchWarning]]:
    """Read the stored HL7 text items of a patient, matched on ID and assigning authority.

    With an issuer, a message counts when its PID-3 entry for this ID has the
    issuer as namespace ID or universal ID, or has no assigning authority.
    Without one, the ID must not appear under two different authorities:
    then it may name two patients, and the HL7 text is left out with a warning.
    """
    issuer = issuer.strip()
    texts = store.find_texts(patient_id.strip())
    if issuer:
        texts = [
            text
            for text in texts
            if any(
                (not authority and not uid) or issuer in (authority, uid)
                for authority, uid in text.authorities
            )
        ]
    else:
        authorities = {
            authority or uid for text in texts for authority, uid in text.authorities
        } - {""}
        if len(authorities) > 1:
            return [], [
                MatchWarning(
                    WarningCode.AMBIGUOUS_PATIENT,
                    f"HL7: the patient ID appears under {len(authorities)} assigning "
                    "authorities and the study has no Issuer of Patient ID; HL7 text left out",
                )
            ]
    items = [
        ClinicalItem(
            section=text.item.section,
            text=text.item.text,
            source_id=f"hl7:{text.control_id}",
            source_type=f"HL7 {text.type_label} {text.item.segment}",
            title=text.item.title,
            effective_at=text.item.effective_at,
            order_numbers=text.item.order_numbers,
        )
        for text in texts
    ]
    return items, []
