"""Clinical text of a study: wait for HL7 text of its patient, then gather once with FHIR.

The analysis worker calls :meth:`TextGatherer.gather` after it has decoded a
study's images. The gatherer polls the local HL7 store (no FHIR query) until
text of the study's patient is there or the wait ends, then makes one full
call that includes FHIR when ``[fhir] enabled``. The wait counts from the
moment the study was complete, so a study that queued behind another one has
already spent part of it. With the HL7 intake off there is nothing to wait
for, and FHIR is queried at once.

Only ids and counts reach the log. The sources and warnings go into the job
store, and the text itself goes only to the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.inference.types import ClinicalText, SourceIdentity
from hipfuse.integrations.text_assembly import (
    GatheredText,
    IntegrationSettings,
    gather_clinical_text,
)

if TYPE_CHECKING:
    from hipfuse.inference.pipeline import StudyInputs
    from hipfuse.integrations.hl7.store import HL7Store

log = structlog.get_logger(__name__)

# Seconds between two looks into the HL7 store while waiting; each look is
# one indexed SQLite query.
DEFAULT_POLL_INTERVAL_S = 1.0

GatherFunction = Callable[..., "GatheredText | None"]


class TextIssue(StrEnum):
    """Problems the node itself meets while gathering text (beside the integrations' codes)."""

    NO_PATIENT_ID = "no_patient_id"
    STUDY_DATE_INVALID = "study_date_invalid"
    GATHERING_FAILED = "text_gathering_failed"


@dataclass(frozen=True)
class StudyKeys:
    """The attributes that find a study's text, from its image headers (never logged)."""

    patient_id: str = ""
    issuer: str = ""
    accession_number: str = ""
    study_date: str = ""

    @classmethod
    def from_inputs(cls, inputs: StudyInputs) -> StudyKeys:
        """Take Patient ID, Issuer of Patient ID, Accession Number and Study Date.

        The radiograph comes first, then the CT. Each attribute comes from the
        first input that has it. Inputs of two patients are rejected later by
        the pipeline's patient check, so no choice made here reaches a result.
        """
        identities = [
            source.identity for source in (inputs.radiograph, inputs.ct) if source is not None
        ]

        def first(attribute: str) -> str:
            for identity in identities:
                value = str(getattr(identity, attribute)).strip()
                if value:
                    return value
            return ""

        return cls(
            patient_id=first("patient_id"),
            issuer=first("issuer_of_patient_id"),
            accession_number=first("accession_number"),
            study_date=first("study_date"),
        )


@dataclass(frozen=True)
class TextOutcome:
    """Result of gathering the clinical text of one study.

    Attributes
    ----------
    text
        The text for the model, or ``None`` when no text matched.
    sources
        Ids of the contributing items (``hl7:<control id>``, ``fhir:<type>/<id>``).
    warnings
        ``(code, message)`` pairs; the messages carry no patient data.
    duplicates_removed
        Items left out because an earlier one had the same text.
    waited_s
        Seconds spent waiting for HL7 text.
    interrupted
        The node was stopping, so the wait ended early and nothing was gathered.
    """

    text: ClinicalText | None = None
    sources: tuple[str, ...] = ()
    warnings: tuple[tuple[str, str], ...] = ()
    duplicates_removed: int = 0
    waited_s: float = 0.0
    interrupted: bool = False

    def details(self) -> dict[str, Any]:
        """Return the job store record: availability, sources, warnings; never the text."""
        return {
            "available": self.text is not None,
            "sources": list(self.sources),
            "warnings": [{"code": code, "message": message} for code, message in self.warnings],
            "duplicates_removed": self.duplicates_removed,
            "waited_s": round(self.waited_s, 3),
        }


def _study_date(value: str) -> tuple[date | None, tuple[str, str] | None]:
    """Parse a DICOM DA value; an invalid one counts as unknown, with a warning."""
    if not value:
        return None, None
    try:
        return datetime.strptime(value, "%Y%m%d").date(), None
    except ValueError:
        return None, (
            TextIssue.STUDY_DATE_INVALID.value,
            "the Study Date is not a DICOM date (YYYYMMDD), so text of every date counted",
        )


class TextGatherer:
    """Gathers each study's clinical text from the HL7 store and FHIR.

    Parameters
    ----------
    settings
        Object with the ``[hl7]`` and ``[fhir]`` sections (the node's ``Settings``).
    store
        The HL7 store the listener fills; ``None`` when ``[hl7]`` is off.
    poll_interval_s
        Seconds between looks into the HL7 store while waiting.
    gather
        :func:`~hipfuse.integrations.text_assembly.gather_clinical_text`, or a
        stand-in with the same signature in tests.
    """

    def __init__(
        self,
        settings: IntegrationSettings,
        store: HL7Store | None,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        gather: GatherFunction = gather_clinical_text,
    ) -> None:
        self.settings = settings
        self.store = store
        self.poll_interval_s = poll_interval_s
        self._gather = gather

    @property
    def wait_s(self) -> float:
        """Seconds to wait for HL7 text after a study is complete (0 with HL7 off)."""
        return self.settings.hl7.text_wait_s if self.store is not None else 0.0

    def gather(
        self,
        keys: StudyKeys,
        *,
        wait_s: float,
        stop: threading.Event | None = None,
        study_instance_uid: str = "",
    ) -> TextOutcome:
        """Wait up to ``wait_s`` seconds for HL7 text, then gather once with FHIR.

        Parameters
        ----------
        keys
            The study's patient, accession number and date.
        wait_s
            Seconds left to wait; the caller subtracts the time since the
            study was complete.
        stop
            Set when the node stops; the wait then ends at once with
            ``interrupted`` set.
        study_instance_uid
            For the log line of a failure.

        Returns
        -------
        TextOutcome
            A failed source does not raise. It becomes a warning, and the
            study is analysed without that text.
        """
        if not keys.patient_id:
            issue = (TextIssue.NO_PATIENT_ID.value, "the images carry no Patient ID")
            return TextOutcome(warnings=(issue,))
        day, date_issue = _study_date(keys.study_date)
        issues = [date_issue] if date_issue else []

        stop = stop or threading.Event()
        started = time.monotonic()
        # NOTE: any matching text ends the wait, including older patient-level
        # text (history, diagnoses) stored before this study's report arrived.
        # NOTE: the single worker waits in its own thread, so a study complete
        # meanwhile waits as well; its own wait counts from its completion.
        if self.store is not None:
            deadline = started + max(wait_s, 0.0)
            while True:
                found, problems = self._call(keys, day, study_instance_uid, include_fhir=False)
                if (found is not None and found.text) or problems:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if stop.wait(min(self.poll_interval_s, remaining)):
                    return TextOutcome(waited_s=time.monotonic() - started, interrupted=True)
        waited_s = time.monotonic() - started

        gathered, problems = self._call(keys, day, study_instance_uid, include_fhir=True)
        issues += problems
        if gathered is None:
            return TextOutcome(warnings=tuple(issues), waited_s=waited_s)
        warnings = [(warning.code.value, warning.message) for warning in gathered.warnings]
        text = None
        if gathered.text:
            identity = SourceIdentity(patient_id=keys.patient_id, issuer_of_patient_id=keys.issuer)
            text = ClinicalText(gathered.text, identity, list(gathered.sources))
        return TextOutcome(
            text,
            tuple(gathered.sources),
            tuple(warnings + issues),
            gathered.duplicates_removed,
            waited_s,
        )

    def _call(
        self, keys: StudyKeys, day: date | None, study_instance_uid: str, *, include_fhir: bool
    ) -> tuple[GatheredText | None, list[tuple[str, str]]]:
        try:
            gathered = self._gather(
                self.settings,
                self.store,
                keys.patient_id,
                keys.issuer,
                keys.accession_number,
                day,
                include_fhir=include_fhir,
            )
        # FHIR failures already come back as warnings; anything raised here is
        # an HL7 store error or a bug, and the study goes on without text.
        except Exception as error:
            # The message could quote a value from a header or a note, so only its type is logged.
            log.error(
                "clinical_text_failed",
                study_instance_uid=study_instance_uid,
                error_type=type(error).__name__,
            )
            issue = (
                TextIssue.GATHERING_FAILED.value,
                f"gathering clinical text failed with {type(error).__name__}; the study was "
                "analysed without text (the node log has the event clinical_text_failed)",
            )
            return None, [issue]
        return gathered, []
