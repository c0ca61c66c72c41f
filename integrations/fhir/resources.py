"""Read clinical text out of FHIR R4 resources given as JSON.

The readers take the JSON as servers send it and look only at the elements
they need, with a type check at each step, so extensions, vendor additions
to ``meta`` and unknown elements never make a resource unreadable. Resources
marked entered-in-error (and superseded documents, cancelled reports,
refuted conditions) contribute nothing.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Callable
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

from hipfuse.integrations.items import ClinicalItem, MatchWarning, Section, WarningCode

_PLAIN_TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# FHIR date, dateTime and instant: YYYY, YYYY-MM, YYYY-MM-DD or a full time.
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")
# Identifier.type codes of HL7 Table 0203 that name order and accession numbers.
_ORDER_IDENTIFIER_TYPES = frozenset({"ACSN", "PLAC", "FILL"})

Json = dict[str, Any]
# Fetches an attachment URL; returns the bytes and their content type.
FetchAttachment = Callable[[str], tuple[bytes, str]]


class AttachmentSkippedError(Exception):
    """An attachment without readable text (a PDF, an unknown charset, too large)."""


def parse_fhir_datetime(value: object) -> datetime | None:
    """Parse a FHIR date, dateTime or instant to wall-clock time (offset dropped)."""
    if not isinstance(value, str) or not value:
        return None
    match = _PARTIAL_DATE.match(value)
    try:
        if match:
            year, month, day = match.groups()
            return datetime(int(year), int(month or 1), int(day or 1))
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except ValueError:
        return None


def _dict(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def codeable_text(concept: object) -> str:
    """Return the text of a CodeableConcept: ``text``, else a coding's display, else its code."""
    concept = _dict(concept)
    if text := _str(concept.get("text")):
        return text
    codings = [_dict(coding) for coding in _list(concept.get("coding"))]
    for key in ("display", "code"):
        for coding in codings:
            if value := _str(coding.get(key)):
                return value
    return ""


def _codings(concept: object) -> list[Json]:
    return [_dict(coding) for coding in _list(_dict(concept).get("coding"))]


def _status_code(concept: object) -> str:
    codes = [_str(coding.get("code")) for coding in _codings(concept)]
    return next((code for code in codes if code), "")


def _notes(resource: Json) -> list[str]:
    return [text for note in _list(resource.get("note")) if (text := _str(_dict(note).get("text")))]


def _quantity_text(quantity: object) -> str:
    quantity = _dict(quantity)
    value = quantity.get("value")
    if value is None or isinstance(value, bool):
        return ""
    unit = _str(quantity.get("unit")) or _str(quantity.get("code"))
    comparator = _str(quantity.get("comparator"))
    return f"{comparator}{value} {unit}".strip()


def value_text(element: Json, prefix: str = "value") -> str:
    """Return the text of an Observation ``value[x]`` (or a component's)."""
    if (quantity := element.get(f"{prefix}Quantity")) is not None:
        return _quantity_text(quantity)
    if (concept := element.get(f"{prefix}CodeableConcept")) is not None:
        return codeable_text(concept)
    for kind in ("String", "DateTime", "Time"):
        if text := _str(element.get(f"{prefix}{kind}")):
            return text
    for kind in ("Boolean", "Integer"):
        value = element.get(f"{prefix}{kind}")
        if value is not None:
            return str(value).lower() if isinstance(value, bool) else str(value)
    if (range_ := element.get(f"{prefix}Range")) is not None:
        low = _quantity_text(_dict(range_).get("low"))
        high = _quantity_text(_dict(range_).get("high"))
        return f"{low} to {high}".strip(" to")
    if (ratio := element.get(f"{prefix}Ratio")) is not None:
        numerator = _quantity_text(_dict(ratio).get("numerator"))
        denominator = _quantity_text(_dict(ratio).get("denominator"))
        return f"{numerator} / {denominator}"
    if (period := element.get(f"{prefix}Period")) is not None:
        return f"{_str(_dict(period).get('start'))} to {_str(_dict(period).get('end'))}"
    return ""


class _HTMLText(HTMLParser):
    """Text content of HTML, with line breaks at block elements."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(self._skip - 1, 0)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        return "\n".join(line for line in lines if line)


def _media_type(content_type: str) -> tuple[str, str]:
    """Split ``text/plain; charset=GB18030`` into its type and charset ('' if none)."""
    parts = [part.strip() for part in content_type.split(";")]
    charset = ""
    for parameter in parts[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
    return parts[0].lower(), charset


def decode_attachment(data: bytes, content_type: str) -> str:
    """Decode attachment bytes of a text content type with their charset (UTF-8 if none).

    Raises
    ------
    AttachmentSkippedError
        The type is not text or HTML, the charset is unknown, or the bytes are
        not valid in it.
    """
    media_type, charset = _media_type(content_type)
    if media_type not in _PLAIN_TEXT_TYPES | _HTML_TYPES:
        raise AttachmentSkippedError(f"content type {media_type or '(none)'} is not text")
    # FHIR attachments without a charset are UTF-8 in practice; a UTF-8 byte
    # order mark is removed either way.
    codec = charset or "utf-8"
    try:
        codec = codecs.lookup(codec).name
    except LookupError:
        raise AttachmentSkippedError(f"charset {charset!r} is unknown") from None
    if codec == "utf-8":
        codec = "utf-8-sig"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        raise AttachmentSkippedError(f"bytes at offset {exc.start} are not valid {codec}") from None
    if media_type in _HTML_TYPES:
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return parser.text()
    return text


class ResourceReader:
    """Turn resources into :class:`ClinicalItem` objects, collecting warnings.

    Parameters
    ----------
    fetch_attachment
        Reads an attachment ``url``; the FHIR client's, limited to its server.
    max_attachment_bytes
        Attachments larger than this are skipped with a warning.
    """

    def __init__(self, fetch_attachment: FetchAttachment, max_attachment_bytes: int) -> None:
        self.fetch_attachment = fetch_attachment
        self.max_attachment_bytes = max_attachment_bytes
        self.warnings: list[MatchWarning] = []

    def _item(
        self,
        resource: Json,
        section: Section,
        text: str,
        title: str,
        when: datetime | None,
        order_numbers: frozenset[str] = frozenset(),
    ) -> list[ClinicalItem]:
        if not text.strip():
            return []
        kind = _str(resource.get("resourceType"))
        return [
            ClinicalItem(
                section=section,
                text=text,
                source_id=f"fhir:{kind}/{_str(resource.get('id'))}",
                source_type=f"FHIR {kind}",
                title=title,
                effective_at=when,
                order_numbers=order_numbers,
            )
        ]

    def attachment_text(self, resource: Json, attachment: Json) -> str:
        """Return an attachment's text, or '' with a warning when it has none readable."""
        label = f"{_str(resource.get('resourceType'))}/{_str(resource.get('id'))}"
        content_type = _str(attachment.get("contentType"))
        try:
            if (data := attachment.get("data")) is not None:
                if not isinstance(data, str) or len(data) * 3 // 4 > self.max_attachment_bytes:
                    raise AttachmentSkippedError("inline data is not a string or too large")
                try:
                    raw = base64.b64decode(data, validate=False)
                except (binascii.Error, ValueError):
                    raise AttachmentSkippedError("inline data is not base64") from None
                return decode_attachment(raw, content_type)
            if url := _str(attachment.get("url")):
                media_type, _ = _media_type(content_type)
                if content_type and media_type not in _PLAIN_TEXT_TYPES | _HTML_TYPES:
                    raise AttachmentSkippedError(f"content type {media_type} is not text")
                raw, fetched_type = self.fetch_attachment(url)
                if len(raw) > self.max_attachment_bytes:
                    raise AttachmentSkippedError(f"{len(raw)} bytes is more than allowed")
                return decode_attachment(raw, fetched_type or content_type)
            return ""
        except AttachmentSkippedError as exc:
            self.warnings.append(
                MatchWarning(WarningCode.ATTACHMENT_SKIPPED, f"{label} attachment skipped: {exc}")
            )
            return ""

    # -- resource types ---------------------------------------------------- #

    def document_reference(self, resource: Json) -> list[ClinicalItem]:
        """Read a DocumentReference's text attachments (or its description)."""
        if _str(resource.get("status")) in ("entered-in-error", "superseded"):
            return []
        if _str(resource.get("docStatus")) == "entered-in-error":
            return []
        texts: list[str] = []
        for content in _list(resource.get("content")):
            text = self.attachment_text(resource, _dict(_dict(content).get("attachment")))
            if text.strip() and text not in texts:
                texts.append(text)
        description = _str(resource.get("description"))
        if not texts and description:
            texts.append(description)
        context = _dict(resource.get("context"))
        when = parse_fhir_datetime(resource.get("date")) or parse_fhir_datetime(
            _dict(context.get("period")).get("start")
        )
        related = frozenset(
            value
            for reference in _list(context.get("related"))
            if (value := _str(_dict(_dict(reference).get("identifier")).get("value")))
        )
        title = codeable_text(resource.get("type")) or description
        return self._item(resource, Section.HISTORY, "\n".join(texts), title, when, related)

    def diagnostic_report(self, resource: Json) -> list[ClinicalItem]:
        """Read a DiagnosticReport's presented form and conclusion."""
        if _str(resource.get("status")) in ("entered-in-error", "cancelled"):
            return []
        parts: list[str] = []
        for attachment in _list(resource.get("presentedForm")):
            text = self.attachment_text(resource, _dict(attachment))
            if text.strip() and text not in parts:
                parts.append(text)
        conclusion = _str(resource.get("conclusion"))
        if not conclusion:
            codes = [codeable_text(code) for code in _list(resource.get("conclusionCode"))]
            conclusion = "; ".join(code for code in codes if code)
        if conclusion and not any(conclusion in part for part in parts):
            parts.append(conclusion)

        when = (
            parse_fhir_datetime(resource.get("effectiveDateTime"))
            or parse_fhir_datetime(_dict(resource.get("effectivePeriod")).get("start"))
            or parse_fhir_datetime(resource.get("issued"))
        )

        numbers = set()
        for identifier in _list(resource.get("identifier")):
            identifier = _dict(identifier)
            types = {_str(c.get("code")) for c in _codings(identifier.get("type"))}
            if types & _ORDER_IDENTIFIER_TYPES and (value := _str(identifier.get("value"))):
                numbers.add(value)
        for reference in _list(resource.get("basedOn")):
            if value := _str(_dict(_dict(reference).get("identifier")).get("value")):
                numbers.add(value)

        title = codeable_text(resource.get("code"))
        text = "\n".join(parts)
        return self._item(resource, Section.REPORT, text, title, when, frozenset(numbers))

    def condition(self, resource: Json) -> list[ClinicalItem]:
        """Read a Condition: its code text, clinical status, onset when not a date, notes."""
        if _status_code(resource.get("verificationStatus")) in ("entered-in-error", "refuted"):
            return []
        name = codeable_text(resource.get("code"))
        if not name:
            return []
        details = [name]
        if status := _status_code(resource.get("clinicalStatus")):
            details.append(f"clinical status: {status}")
        if onset := _str(resource.get("onsetString")):
            details.append(f"onset: {onset}")
        elif (age := resource.get("onsetAge")) is not None:
            details.append(f"onset at age: {_quantity_text(age)}")
        lines = ["; ".join(details), *_notes(resource)]
        when = (
            parse_fhir_datetime(resource.get("onsetDateTime"))
            or parse_fhir_datetime(_dict(resource.get("onsetPeriod")).get("start"))
            or parse_fhir_datetime(resource.get("recordedDate"))
        )
        return self._item(resource, Section.CONDITION, "\n".join(lines), "", when)

    def medication(self, resource: Json, medications: dict[str, Json]) -> list[ClinicalItem]:
        """Read a MedicationRequest or MedicationStatement: drug, dosage, status, reasons.

        ``medications`` maps ``Medication/<id>`` to included Medication resources.
        """
        if _str(resource.get("status")) == "entered-in-error":
            return []
        name = self._medication_name(resource, medications)
        if not name:
            return []
        kind = _str(resource.get("resourceType"))
        dosages = resource.get("dosageInstruction" if kind == "MedicationRequest" else "dosage")
        dosage_texts = []
        for dosage in _list(dosages):
            dosage = _dict(dosage)
            text = _str(dosage.get("text"))
            if not text:
                doses = [_dict(d).get("doseQuantity") for d in _list(dosage.get("doseAndRate"))]
                text = ", ".join(q for dose in doses if (q := _quantity_text(dose)))
            if text:
                dosage_texts.append(text)
        details = [name, *dosage_texts]
        reasons = [codeable_text(code) for code in _list(resource.get("reasonCode"))]
        if reasons := [reason for reason in reasons if reason]:
            details.append(f"reason: {', '.join(reasons)}")
        if status := _str(resource.get("status")):
            details.append(f"status: {status}")
        lines = ["; ".join(details), *_notes(resource)]
        if kind == "MedicationRequest":
            when = parse_fhir_datetime(resource.get("authoredOn"))
        else:
            when = (
                parse_fhir_datetime(resource.get("effectiveDateTime"))
                or parse_fhir_datetime(_dict(resource.get("effectivePeriod")).get("start"))
                or parse_fhir_datetime(resource.get("dateAsserted"))
            )
        return self._item(resource, Section.MEDICATION, "\n".join(lines), "", when)

    def _medication_name(self, resource: Json, medications: dict[str, Json]) -> str:
        if name := codeable_text(resource.get("medicationCodeableConcept")):
            return name
        reference = _dict(resource.get("medicationReference"))
        target = _str(reference.get("reference"))
        if target.startswith("#"):
            for contained in _list(resource.get("contained")):
                contained = _dict(contained)
                if _str(contained.get("id")) == target[1:]:
                    return codeable_text(contained.get("code"))
        if target in medications:
            return codeable_text(medications[target].get("code"))
        return _str(reference.get("display"))

    def social_history(self, resource: Json) -> list[ClinicalItem]:
        """Read a social-history Observation: value, component values, notes."""
        if _str(resource.get("status")) in ("entered-in-error", "cancelled"):
            return []
        lines = []
        if value := value_text(resource):
            lines.append(value)
        for component in _list(resource.get("component")):
            component = _dict(component)
            if component_value := value_text(component):
                label = codeable_text(component.get("code"))
                lines.append(f"{label}: {component_value}" if label else component_value)
        lines += _notes(resource)
        when = (
            parse_fhir_datetime(resource.get("effectiveDateTime"))
            or parse_fhir_datetime(_dict(resource.get("effectivePeriod")).get("start"))
            or parse_fhir_datetime(resource.get("effectiveInstant"))
            or parse_fhir_datetime(resource.get("issued"))
        )
        title = codeable_text(resource.get("code"))
        return self._item(resource, Section.SOCIAL_HISTORY, "\n".join(lines), title, when)


def binary_content(body: bytes, content_type: str) -> tuple[bytes, str]:
    """Unwrap a Binary resource returned as FHIR JSON; other bodies pass through.

    Raises
    ------
    AttachmentSkippedError
        The Binary resource has no base64 ``data``.
    """
    media_type, _ = _media_type(content_type)
    if media_type not in ("application/fhir+json", "application/json"):
        return body, content_type
    try:
        resource = json.loads(body)
    except ValueError:
        raise AttachmentSkippedError("attachment URL returned invalid JSON") from None
    resource = _dict(resource)
    if resource.get("resourceType") != "Binary":
        raise AttachmentSkippedError("attachment URL returned JSON that is no Binary resource")
    data = resource.get("data")
    if not isinstance(data, str):
        raise AttachmentSkippedError("Binary resource has no data")
    try:
        return base64.b64decode(data), _str(resource.get("contentType"))
    except (binascii.Error, ValueError):
        raise AttachmentSkippedError("Binary data is not base64") from None
