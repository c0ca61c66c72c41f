"""One clinical text per study from HL7 and FHIR items, built deterministically.

The text has the sections of :data:`~hipfuse.integrations.items.SECTION_ORDER`,
each headed by its title and a colon. Within a section the items go newest
first (undated last; ties by source id, title, text). Each item starts with a
header line ``[YYYY-MM-DD | source type | title]`` followed by its text as the
source wrote it: no translation, no Unicode normalisation, only line breaks
at its very end removed. An item whose text equals an earlier one after
collapsing whitespace is dropped. The same items always give the same text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

import structlog

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.integrations.fhir.client import FHIRError
from hipfuse.integrations.fhir.query import gather_fhir_items
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.items import (
    SECTION_ORDER,
    SECTION_TITLES,
    ClinicalItem,
    MatchWarning,
    Section,
    WarningCode,
)
from hipfuse.integrations.matching import StudyWindows, hl7_items, select_items

log = structlog.get_logger(__name__)


class IntegrationSettings(Protocol):
    """Settings with ``[hl7]`` and ``[fhir]`` sections, such as the node's ``Settings``."""

    @property
    def hl7(self) -> HL7Settings:  # noqa: D102
        ...

    @property
    def fhir(self) -> FHIRSettings:  # noqa: D102
        ...


@dataclass(frozen=True)
class GatheredText:
    """The assembled clinical text of a study and what it was built from.

    Attributes
    ----------
    text
        The assembled text; '' only when nothing matched and ``warnings``
        explain why (an ambiguous patient or order, a FHIR failure).
    sources
        Ids of the contributing items in text order, each once:
        ``hl7:<control id>``, ``fhir:<resource type>/<id>``.
    warnings
        Problems met on the way, for the job record.
    duplicates_removed
        Items left out because an earlier item had the same text.
    """

    text: str
    sources: list[str] = field(default_factory=list)
    warnings: list[MatchWarning] = field(default_factory=list)
    duplicates_removed: int = 0


def _normalised(text: str) -> str:
    # Only for finding duplicates: whitespace runs (ideographic space included)
    # become one space. The text itself is never changed.
    return " ".join(text.split())


def _sort_key(item: ClinicalItem) -> tuple[int, float, str, str, str]:
    moment = item.effective_at
    # Newest first; undated items last.
    order = -(moment - datetime(1, 1, 1)).total_seconds() if moment is not None else 0.0
    return (moment is None, order, item.source_id, item.title, item.text)


def _header(item: ClinicalItem) -> str:
    when = item.effective_at.date().isoformat() if item.effective_at else "date unknown"
    parts = [when, item.source_type]
    if item.title:
        parts.append(" ".join(item.title.split()))
    return "[" + " | ".join(parts) + "]"


def assemble_text(
    items: Iterable[ClinicalItem],
) -> tuple[str, list[str], int]:
    """Build the study text from items.

    Returns
    -------
    tuple
        The text, the contributing source ids in text order (each once), and
        the number of duplicate items removed.
    """
    by_section: dict[Section, list[ClinicalItem]] = {section: [] for section in SECTION_ORDER}
    for item in items:
        by_section[item.section].append(item)
    seen: set[str] = set()
    sources: list[str] = []
    duplicates = 0
    blocks: list[str] = []
    for section in SECTION_ORDER:
        entries = []
        for item in sorted(by_section[section], key=_sort_key):
            key = _normalised(item.text)
            if not key:
                continue
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if item.source_id not in sources:
                sources.append(item.source_id)
            entries.append(_header(item) + "\n" + item.text.rstrip("\r\n"))
        if entries:
            blocks.append(SECTION_TITLES[section] + ":\n" + "\n\n".join(entries))
    return "\n\n".join(blocks), sources, duplicates


def _study_date(value: date | str | None) -> date | None:
    """Accept a date or a DICOM DA string (YYYYMMDD); '' or ``None`` means unknown."""
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    text = value.strip()
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"study date {value!r} is not a DICOM date (YYYYMMDD)") from None


def gather_clinical_text(
    settings: IntegrationSettings,
    store: HL7Store | None,
    patient_id: str,
    issuer: str,
    accession_number: str,
    study_date: date | str | None,
    *,
    include_fhir: bool = True,
) -> GatheredText | None:
    """Gather and assemble the clinical text of one study from HL7 and FHIR.

    Parameters
    ----------
    settings
        Object with ``hl7`` and ``fhir`` sections; FHIR is queried only when
        ``settings.fhir.enabled``.
    store
        The HL7 message store; ``None`` when the HL7 intake is off.
    patient_id
        DICOM Patient ID (0010,0020).
    issuer
        DICOM Issuer of Patient ID (0010,0021); '' when absent.
    accession_number
        DICOM Accession Number (0008,0050); '' when absent.
    study_date
        DICOM Study Date (0008,0020) as a date or ``YYYYMMDD``; ``None`` or ''
        when unknown (every date counts).
    include_fhir
        False skips the FHIR queries, so a caller waiting for HL7 messages can
        poll the local store often and query FHIR once.

    Returns
    -------
    GatheredText or None
        ``None`` when no item matched and there is no warning to report.
        The call does not wait: the node polls with ``include_fhir=False``
        until text arrives or ``[hl7] text_wait_s`` has passed, then calls
        once with FHIR.

    Raises
    ------
    ValueError
        ``study_date`` is a string that is not a DICOM date.
    """
    if not patient_id.strip():
        return None
    day = _study_date(study_date)
    items: list[ClinicalItem] = []
    warnings: list[MatchWarning] = []

    if store is not None:
        found, problems = hl7_items(store, patient_id, issuer)
        warnings += problems
        hl7 = settings.hl7
        windows = None
        if day is not None:
            windows = StudyWindows.around(
                day, hl7.window_before_days, hl7.window_after_days, hl7.history_before_days
            )
        chosen, problems = select_items(
            found, accession_number=accession_number, windows=windows, source="HL7"
        )
        items += chosen
        warnings += problems

    fhir = settings.fhir
    if fhir.enabled and include_fhir:
        try:
            gathered = gather_fhir_items(fhir, patient_id.strip(), issuer, day)
        except FHIRError as exc:
            log.warning("fhir_gather_failed", error=str(exc))
            warnings.append(MatchWarning(WarningCode.FHIR_FAILED, str(exc)))
        else:
            warnings += gathered.warnings
            windows = None
            if day is not None:
                windows = StudyWindows.around(
                    day, fhir.window_before_days, fhir.window_after_days, fhir.history_before_days
                )
            chosen, problems = select_items(
                gathered.items, accession_number=accession_number, windows=windows, source="FHIR"
            )
            items += chosen
            warnings += problems

    text, sources, duplicates = assemble_text(items)
    # Debug level: the node polls this function while it waits for HL7 text.
    log.debug(
        "clinical_text_assembled",
        items=len(items),
        sources=len(sources),
        duplicates_removed=duplicates,
        warnings=[warning.code.value for warning in warnings],
        characters=len(text),
    )
    if not text and not warnings:
        return None
    return GatheredText(text, sources, warnings, duplicates)
