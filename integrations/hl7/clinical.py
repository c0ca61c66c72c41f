"""Clinical text, patient identifiers and order numbers of an accepted HL7 v2 message.

Where the text comes from:

- OBX-5 of value type TX, FT, ST (text) and CE, CWE, CNE, CF (coded text);
  NM and SN values only when OBX-3 is a social-history code (alcohol,
  smoking). Consecutive OBX segments with the same OBX-3 and OBX-4 form one
  item, one line each, as reports split into lines arrive.
- NTE-3: after an OBX it adds lines to that item, elsewhere it is an item.
- OBR-13 Relevant Clinical Information and OBR-31 Reason for Study.
- DG1-3 or DG1-4 diagnoses, PV2-3 Admit Reason.

Patients are identified by PID-3 only (PID-2 and PID-4 are not read).

Order numbers (entity identifier, component 1) come from ORC-2, ORC-3,
OBR-2, OBR-3, OBR-18 (Placer Field 1, the accession number in IHE radiology
workflows), IPC-1 (Accession Identifier) and TXA-14, TXA-15; each item gets
those of the order group it sits in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hipfuse.integrations.hl7.errors import AckCode, HL7ErrorCode, MessageError
from hipfuse.integrations.hl7.escapes import EscapeError
from hipfuse.integrations.hl7.header import MessageHeader, parse_hl7_datetime, version_tuple
from hipfuse.integrations.hl7.parser import ParsedMessage, Segment
from hipfuse.integrations.items import Section

_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_NUMERIC_TYPES = frozenset({"NM", "SN"})
# NOTE: a corrected result (OBX-11 C) or a replaced document (MDM T08, T10)
# does not hide the earlier version. Both stay unless their text is identical.

# OBX-11 Observation Result Status values whose OBX-5 is no valid result:
# D deleted, W wrong (withdrawn), X no result obtainable (HL7 Table 0085).
_INVALID_RESULT_STATUS = frozenset({"D", "W", "X"})

# LOINC codes of OBX-3 that decide the section regardless of the message type.
LOINC_SECTIONS: dict[str, Section] = {
    "10154-3": Section.HISTORY,  # Chief complaint
    "10164-2": Section.HISTORY,  # History of present illness
    "11348-0": Section.HISTORY,  # History of past illness
    "10157-6": Section.HISTORY,  # History of family member diseases
    "29545-1": Section.HISTORY,  # Physical findings
    "11329-0": Section.HISTORY,  # History general
    "18782-3": Section.REPORT,  # Radiology study observation
    "19005-8": Section.REPORT,  # Radiology imaging study impression
    "11450-4": Section.CONDITION,  # Problem list
    "29548-5": Section.CONDITION,  # Diagnosis
    "10160-0": Section.MEDICATION,  # History of medication use
    "29549-3": Section.MEDICATION,  # Medication administered
    "29762-2": Section.SOCIAL_HISTORY,  # Social history
    "11331-6": Section.SOCIAL_HISTORY,  # History of alcohol use
    "74013-4": Section.SOCIAL_HISTORY,  # Alcoholic drinks per day
    "72166-2": Section.SOCIAL_HISTORY,  # Tobacco smoking status
    "11367-0": Section.SOCIAL_HISTORY,  # History of tobacco use
}

# Section of an OBX whose OBX-3 is not in LOINC_SECTIONS, by message type.
_DEFAULT_OBX_SECTION: dict[str, Section] = {
    "ORU": Section.REPORT,
    "MDM": Section.HISTORY,
    "ORM": Section.HISTORY,
    "OMI": Section.HISTORY,
    "ADT": Section.HISTORY,
}


@dataclass(frozen=True)
class PatientIdentifier:
    """One PID-3 repetition: ID (CX.1) and assigning authority (CX.4 namespace and universal ID)."""

    value: str
    authority: str = ""
    authority_uid: str = ""


@dataclass(frozen=True)
class OrderNumber:
    """An order or accession number and the field it was read from (``OBR-3``)."""

    source_field: str
    number: str


@dataclass(frozen=True)
class HL7TextItem:
    """One piece of clinical text of a message."""

    section: Section
    title: str
    segment: str
    text: str
    effective_at: datetime | None
    order_numbers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MessageContent:
    """Contribution of an accepted message: identifiers, orders and text items."""

    patient_ids: tuple[PatientIdentifier, ...]
    orders: tuple[OrderNumber, ...]
    items: tuple[HL7TextItem, ...]
    skipped_values: int = 0


@dataclass
class _OrderGroup:
    """Order numbers and dates of the ORC/OBR group being read.

    ``opened_by`` is the segment that began the group: ORC, OBR or TXA, or ''
    for the patient-level text before any of them.
    """

    opened_by: str = ""
    orc_numbers: list[OrderNumber] = field(default_factory=list)
    obr_numbers: list[OrderNumber] = field(default_factory=list)
    obr_seen: bool = False
    observed_at: datetime | None = None
    in_report: bool = False

    @property
    def numbers(self) -> frozenset[str]:
        return frozenset(order.number for order in self.orc_numbers + self.obr_numbers)


@dataclass
class _PendingItem:
    """An item being read; an OBX item collects lines from the OBX and NTE after it.

    ``group`` is the order group it sits in (``None`` for patient-level text).
    Its numbers are read when the message is finished, because IPC and later
    repetitions can add numbers after the item's segment.
    """

    key: tuple[str, str]
    section: Section
    title: str
    segment: str
    lines: list[str]
    effective_at: datetime | None
    group: _OrderGroup | None

    def build(self) -> HL7TextItem | None:
        text = "\n".join(self.lines)
        if not text.strip():
            return None
        numbers = self.group.numbers if self.group is not None else frozenset()
        return HL7TextItem(self.section, self.title, self.segment, text, self.effective_at, numbers)


class _Extractor:
    def __init__(self, message: ParsedMessage, header: MessageHeader) -> None:
        self.message = message
        self.header = header
        self.cwe_clinical_info = version_tuple(header.version) >= (2, 7)
        self.patient_ids: list[PatientIdentifier] = []
        self.orders: list[OrderNumber] = []
        self.items: list[_PendingItem] = []
        self.group = _OrderGroup()
        self.document_time: datetime | None = None
        self.admit_time: datetime | None = None
        self.pending: _PendingItem | None = None
        self.skipped_values = 0
        self.document_type = ""

    # -- helpers ---------------------------------------------------------- #

    def value(self, segment: Segment, position: int, component: int = 1) -> str:
        return self.message.value(segment, position, component).strip()

    def free_text(self, segment: Segment, position: int) -> str:
        """Decode a TX/FT/ST field: each repetition unescaped whole, one line per repetition."""
        lines = [self.message.text(rep) for rep in self.message.repetitions(segment.raw(position))]
        return "\n".join(lines)

    def coded_texts(self, segment: Segment, position: int) -> list[str]:
        """Return the text of each repetition of a CE/CWE/CNE field."""
        texts = []
        for repetition in self.message.repetitions(segment.raw(position)):
            components = [self.message.text(c) for c in self.message.components(repetition)]
            text = _coded_text(components)
            if text:
                texts.append(text)
        return texts

    def fallback_time(self) -> datetime | None:
        return self.group.observed_at or self.document_time or self.header.message_time

    def add(
        self,
        section: Section,
        title: str,
        segment: str,
        text: str,
        when: datetime | None,
        *,
        patient_level: bool = False,
    ) -> None:
        group = None if patient_level else self.group
        self.items.append(_PendingItem(("", ""), section, title, segment, [text], when, group))

    def flush(self) -> None:
        if self.pending is not None:
            self.items.append(self.pending)
            self.pending = None

    def order_numbers(self, segment: Segment, positions: tuple[int, ...]) -> list[OrderNumber]:
        numbers = []
        for position in positions:
            for repetition in range(1, len(self.message.repetitions(segment.raw(position))) + 1):
                number = self.message.value(segment, position, 1, 1, repetition).strip()
                if number:
                    numbers.append(OrderNumber(f"{segment.id}-{position}", number))
        self.orders.extend(numbers)
        return numbers

    # -- segments --------------------------------------------------------- #

    def pid(self, segment: Segment) -> None:
        for repetition in self.message.repetitions(segment.raw(3)):
            components = self.message.components(repetition)
            value = self.message.text(components[0]).strip()
            if not value:
                continue
            authority = components[3] if len(components) > 3 else ""
            parts = [
                self.message.text(part).strip() for part in self.message.subcomponents(authority)
            ]
            self.patient_ids.append(
                PatientIdentifier(value, parts[0], parts[1] if len(parts) > 1 else "")
            )

    def orc(self, segment: Segment) -> None:
        self.group = _OrderGroup(
            opened_by="ORC",
            orc_numbers=self.order_numbers(segment, (2, 3)),
            observed_at=parse_hl7_datetime(self.value(segment, 9)),
        )

    def obr(self, segment: Segment) -> None:
        if self.group.obr_seen or self.group.opened_by != "ORC":
            # An OBR without an ORC right before it begins its own order group.
            self.group = _OrderGroup(opened_by="OBR")
        self.group.obr_numbers = self.order_numbers(segment, (2, 3, 18))
        self.group.obr_seen = True
        self.group.in_report = self.header.message_type == "ORU"
        observed = parse_hl7_datetime(self.value(segment, 7)) or parse_hl7_datetime(
            self.value(segment, 6)
        )
        self.group.observed_at = observed or self.group.observed_at
        when = self.fallback_time()
        if self.cwe_clinical_info:
            clinical_info = "; ".join(self.coded_texts(segment, 13))
        else:
            clinical_info = self.free_text(segment, 13)
        self.add(Section.HISTORY, "Relevant clinical information", "OBR-13", clinical_info, when)
        reasons = "; ".join(self.coded_texts(segment, 31))
        self.add(Section.HISTORY, "Reason for study", "OBR-31", reasons, when)

    def ipc(self, segment: Segment) -> None:
        self.group.obr_numbers += self.order_numbers(segment, (1,))

    def txa(self, segment: Segment) -> None:
        self.group = _OrderGroup(opened_by="TXA", orc_numbers=self.order_numbers(segment, (14, 15)))
        self.document_time = (
            parse_hl7_datetime(self.value(segment, 4))
            or parse_hl7_datetime(self.value(segment, 6))
            or self.document_time
        )
        self.document_type = self.value(segment, 2)

    def obx(self, segment: Segment) -> None:
        value_type = self.value(segment, 2).upper()
        status = self.value(segment, 11).upper()
        code = self.value(segment, 3, 1)
        components = [self.message.text(c) for c in self.message.components(segment.raw(3))]
        # The document type (TXA-2) names an MDM item whose OBX-3 has only a code.
        title = _coded_text(components, with_code=False) or self.document_type or code
        section = LOINC_SECTIONS.get(code) or _DEFAULT_OBX_SECTION[self.header.message_type]
        if status in _INVALID_RESULT_STATUS:
            self.flush()
            return

        if value_type in _TEXT_TYPES:
            text = self.free_text(segment, 5)
        elif value_type in _CODED_TYPES:
            text = "; ".join(self.coded_texts(segment, 5))
        elif value_type in _NUMERIC_TYPES and section is Section.SOCIAL_HISTORY:
            number = "".join(self.message.text(c) for c in self.message.components(segment.raw(5)))
            units = _coded_text(
                [self.message.text(c) for c in self.message.components(segment.raw(6))]
            )
            text = f"{number} {units}".strip()
        else:
            if segment.raw(5):
                self.skipped_values += 1
            self.flush()
            return

        key = (segment.raw(3), segment.raw(4))
        if self.pending is not None and self.pending.key == key:
            self.pending.lines.append(text)
            return
        self.flush()
        when = parse_hl7_datetime(self.value(segment, 14)) or self.fallback_time()
        self.pending = _PendingItem(key, section, title, "OBX", [text], when, self.group)

    def nte(self, segment: Segment) -> None:
        text = self.free_text(segment, 3)
        if self.pending is not None:
            self.pending.lines.append(text)
            return
        section = Section.REPORT if self.group.in_report else Section.HISTORY
        self.add(section, "Note", "NTE", text, self.fallback_time())

    def dg1(self, segment: Segment) -> None:
        coded = "; ".join(self.coded_texts(segment, 3))
        text = coded or self.free_text(segment, 4)
        when = parse_hl7_datetime(self.value(segment, 5)) or self.fallback_time()
        self.add(Section.CONDITION, "Diagnosis", "DG1", text, when)

    def pv1(self, segment: Segment) -> None:
        self.admit_time = parse_hl7_datetime(self.value(segment, 44))

    def pv2(self, segment: Segment) -> None:
        text = "; ".join(self.coded_texts(segment, 3))
        when = self.admit_time or self.header.message_time
        self.add(Section.HISTORY, "Admit reason", "PV2-3", text, when, patient_level=True)

    def run(self) -> MessageContent:
        handlers = {
            "PID": self.pid,
            "PV1": self.pv1,
            "PV2": self.pv2,
            "ORC": self.orc,
            "OBR": self.obr,
            "IPC": self.ipc,
            "TXA": self.txa,
            "OBX": self.obx,
            "NTE": self.nte,
            "DG1": self.dg1,
        }
        for sequence, segment in enumerate(self.message.segments[1:], start=2):
            if segment.id not in ("OBX", "NTE"):
                self.flush()
            handler = handlers.get(segment.id)
            if handler is None:
                # Z-segments and segments without clinical text are kept in the
                # raw message only.
                continue
            try:
                handler(segment)
            except EscapeError as exc:
                raise MessageError(
                    AckCode.ERROR,
                    HL7ErrorCode.DATA_TYPE_ERROR,
                    f"{segment.id} segment {sequence}: {exc}",
                    (segment.id, sequence, 0),
                ) from None
        self.flush()
        items = tuple(item for pending in self.items if (item := pending.build()) is not None)
        return MessageContent(
            tuple(self.patient_ids), tuple(self.orders), items, self.skipped_values
        )


def _coded_text(components: list[str], *, with_code: bool = True) -> str:
    """Return the text of a CE/CWE value: original text (CWE.9), text (.2), alternate text (.5).

    The identifier (.1) is returned when none is there and ``with_code`` is true.
    """
    for index in (8, 1, 4, 0) if with_code else (8, 1, 4):
        if index < len(components) and components[index].strip():
            return components[index].strip()
    return ""


def extract_content(message: ParsedMessage, header: MessageHeader) -> MessageContent:
    """Read the patient identifiers, order numbers and text items of a message.

    Raises
    ------
    MessageError
        AE when the PID segment or its PID-3 identifier is missing, or when a
        field contains an escape sequence that cannot be decoded.
    """
    content = _Extractor(message, header).run()
    pid = message.first("PID")
    if pid is None:
        raise MessageError(
            AckCode.ERROR,
            HL7ErrorCode.SEGMENT_SEQUENCE_ERROR,
            f"{header.type_label} message has no PID segment; clinical text needs a patient",
            ("PID", 0, 0),
        )
    if not content.patient_ids:
        raise MessageError(
            AckCode.ERROR,
            HL7ErrorCode.REQUIRED_FIELD_MISSING,
            "PID-3 Patient Identifier List is empty",
            ("PID", 1, 3),
        )
    return content
