"""Query a FHIR R4 server for one patient's clinical text around a study.

The patient is found by identifier (``system|value``). Then DocumentReference
and DiagnosticReport (dated within the window around the study), Condition,
MedicationRequest, MedicationStatement and social-history Observation are
searched, following ``next`` links. Date filtering is left
to :mod:`hipfuse.integrations.matching` as well, because servers treat
missing dates and partial dates differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import structlog

from hipfuse.config.clinical_text import FHIRSettings
from hipfuse.integrations.fhir.client import (
    FHIRClient,
    FHIRError,
    FHIRPageLimitError,
    QueryParams,
)
from hipfuse.integrations.fhir.resources import ResourceReader, binary_content
from hipfuse.integrations.items import ClinicalItem, MatchWarning, WarningCode

log = structlog.get_logger(__name__)

_Read = Callable[[dict[str, Any], dict[str, dict[str, Any]]], list[ClinicalItem]]
# Accept FHIR JSON (a Binary resource) first, any raw content otherwise.
_ATTACHMENT_ACCEPT = "application/fhir+json, */*;q=0.1"


@dataclass(frozen=True)
class FHIRGathered:
    """Items read from FHIR for one patient, and what went wrong on the way."""

    items: list[ClinicalItem] = field(default_factory=list)
    warnings: list[MatchWarning] = field(default_factory=list)
    patient_found: bool = False


def token_search_value(value: str) -> str:
    r"""Escape ``\``, ``|``, ``,`` and ``$`` in a token search value (FHIR R4 search, Escaping)."""
    for character in ("\\", "|", ",", "$"):
        value = value.replace(character, "\\" + character)
    return value


def gather_fhir_items(
    settings: FHIRSettings,
    patient_id: str,
    issuer: str,
    study_date: date | None,
    *,
    client: FHIRClient | None = None,
) -> FHIRGathered:
    """Find the patient and read the text of their resources.

    Parameters
    ----------
    settings
        ``[fhir]``; ``issuer_systems`` and ``default_identifier_system`` turn
        the DICOM issuer into the identifier system searched.
    patient_id, issuer
        DICOM Patient ID and Issuer of Patient ID ('' when absent).
    study_date
        Centre of the date window sent to the server; ``None`` sends none.
    client
        An open client to use (tests); one is created and closed otherwise.

    Raises
    ------
    FHIRError
        The patient search failed (server unreachable, token refused).
        Failures of the later searches become warnings instead.
    """
    own_client = client is None
    client = client or FHIRClient(settings)
    try:
        return _Gatherer(settings, client).run(patient_id, issuer, study_date)
    finally:
        if own_client:
            client.close()


class _Gatherer:
    def __init__(self, settings: FHIRSettings, client: FHIRClient) -> None:
        self.settings = settings
        self.client = client
        self.reader = ResourceReader(self._fetch_attachment, settings.max_attachment_bytes)
        self.warnings: list[MatchWarning] = []

    def _fetch_attachment(self, url: str) -> tuple[bytes, str]:
        response = self.client.get(url, accept=_ATTACHMENT_ACCEPT)
        return binary_content(response.content, response.headers.get("Content-Type", ""))

    def run(self, patient_id: str, issuer: str, study_date: date | None) -> FHIRGathered:
        system = self.settings.identifier_system(issuer)
        value = token_search_value(patient_id)
        identifier = f"{token_search_value(system)}|{value}" if system else value
        patients: dict[str, dict[str, Any]] = {}
        for entry in self.client.search("Patient", [("identifier", identifier)]):
            if entry.mode == "match" and entry.resource.get("resourceType") == "Patient":
                patients[str(entry.resource.get("id"))] = entry.resource
        if not patients:
            log.info("fhir_patient_not_found", identifier_system=system)
            return FHIRGathered()
        if len(patients) > 1:
            message = (
                f"{len(patients)} FHIR Patient resources carry the study's patient ID"
                + (f" in system {system}" if system else " (no identifier system configured)")
                + "; map the issuer in [fhir] issuer_systems"
            )
            return FHIRGathered(warnings=[MatchWarning(WarningCode.AMBIGUOUS_PATIENT, message)])

        (patient_ref,) = (f"Patient/{key}" for key in patients)
        by_patient: QueryParams = [("patient", patient_ref)]
        window: QueryParams = []
        if study_date is not None:
            start = study_date - timedelta(days=self.settings.window_before_days)
            end = study_date + timedelta(days=self.settings.window_after_days)
            window = [("date", f"ge{start.isoformat()}"), ("date", f"le{end.isoformat()}")]

        reader = self.reader
        # Each search: resource type, parameters, and a reader of one matching
        # resource given the included resources (Medication) keyed "Type/id".
        searches: list[tuple[str, QueryParams, _Read]] = [
            (
                "DocumentReference",
                [*by_patient, *window],
                lambda resource, _: reader.document_reference(resource),
            ),
            (
                "DiagnosticReport",
                [*by_patient, *window],
                lambda resource, _: reader.diagnostic_report(resource),
            ),
            ("Condition", by_patient, lambda resource, _: reader.condition(resource)),
            (
                "MedicationRequest",
                [*by_patient, ("_include", "MedicationRequest:medication")],
                reader.medication,
            ),
            (
                "MedicationStatement",
                [*by_patient, ("_include", "MedicationStatement:medication")],
                reader.medication,
            ),
            (
                "Observation",
                [*by_patient, ("category", "social-history")],
                lambda resource, _: reader.social_history(resource),
            ),
        ]
        items: list[ClinicalItem] = []
        for resource_type, params, read in searches:
            matches, included = self._search(resource_type, params)
            for resource in matches:
                items += read(resource, included)
        log.info("fhir_items_read", items=len(items), warnings=len(self.warnings))
        return FHIRGathered(items, self.warnings + self.reader.warnings, patient_found=True)

    def _search(
        self, resource_type: str, params: QueryParams
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Return the matching resources and the included ones keyed ``Type/id``."""
        matches: list[dict[str, Any]] = []
        included: dict[str, dict[str, Any]] = {}
        try:
            for entry in self.client.search(resource_type, params):
                resource = entry.resource
                if entry.mode == "include":
                    key = f"{resource.get('resourceType')}/{resource.get('id')}"
                    included[key] = resource
                elif resource.get("resourceType") == resource_type:
                    matches.append(resource)
        except FHIRPageLimitError as exc:
            self.warnings.append(MatchWarning(WarningCode.FHIR_PAGE_LIMIT, str(exc)))
        except FHIRError as exc:
            log.warning("fhir_search_failed", resource_type=resource_type, error=str(exc))
            self.warnings.append(MatchWarning(WarningCode.FHIR_FAILED, str(exc)))
        return matches, included
