"""Read the per-hip findings back from an SR that the node wrote.

The reader walks the TID 1500 content tree by concept name codes, as a
receiving system would. Each Measurement Group (DCM 125007) gives one hip:
its Finding (DCM 121071), the Laterality (SCT 272741003) of its Finding Site
(SCT 363698007) and the Probability (DCM 122157) of each class. It also
gives the attention weight of each model input, under the private codes
``ATTN-XR``, ``ATTN-CT`` and ``ATTN-TEXT`` of scheme ``99HIPFUSE``. The
document-level item ``TEXT-AVAIL`` records whether clinical text was available.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

_MEASUREMENT_GROUP = ("125007", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_SITE = ("363698007", "SCT")
_LATERALITY = ("272741003", "SCT")
_PROBABILITY = ("122157", "DCM")
_COMMENT = ("121106", "DCM")
_PRIVATE_SCHEME = "99HIPFUSE"
_TEXT_AVAILABLE = ("TEXT-AVAIL", _PRIVATE_SCHEME)
# Attention weight items by model input, named as InputModality values.
_ATTENTION = {
    ("ATTN-XR", _PRIVATE_SCHEME): "radiograph",
    ("ATTN-CT", _PRIVATE_SCHEME): "ct",
    ("ATTN-TEXT", _PRIVATE_SCHEME): "text",
}
_YES = ("373066001", "SCT")
_NO = ("373067005", "SCT")


@dataclass(frozen=True)
class HipFinding:
    """One hip as the SR reports it, in the SR's own code meanings."""

    laterality: str
    finding: str
    probabilities: dict[str, float] = field(default_factory=dict)
    # Attention weight by model input: "radiograph", "ct", "text".
    attention: dict[str, float] = field(default_factory=dict)

    @property
    def probability(self) -> float | None:
        """Probability of the reported finding."""
        return self.probabilities.get(self.finding)


def _concept(item: Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return str(names[0].CodeValue), str(names[0].CodingSchemeDesignator)


def _children(item: Dataset) -> Iterator[Dataset]:
    yield from item.get("ContentSequence", [])


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in _children(item):
        yield child
        yield from _walk(child)


def _code_meaning(item: Dataset) -> str:
    return str(item.ConceptCodeSequence[0].CodeMeaning)


def _read_group(group: Dataset) -> HipFinding | None:
    finding = laterality = None
    probabilities: dict[str, float] = {}
    attention: dict[str, float] = {}
    for item in _children(group):
        concept = _concept(item)
        if concept == _FINDING and item.ValueType == "CODE":
            finding = _code_meaning(item)
        elif concept == _FINDING_SITE:
            for modifier in _children(item):
                if _concept(modifier) == _LATERALITY:
                    laterality = _code_meaning(modifier)
        elif concept == _PROBABILITY and item.ValueType == "NUM":
            hip_class = next(
                (_code_meaning(child) for child in _children(item) if _concept(child) == _FINDING),
                None,
            )
            if hip_class is not None:
                value = item.MeasuredValueSequence[0].NumericValue
                probabilities[hip_class] = float(value)
        elif concept in _ATTENTION and item.ValueType == "NUM":
            attention[_ATTENTION[concept]] = float(item.MeasuredValueSequence[0].NumericValue)
    if finding is None or laterality is None:
        return None
    return HipFinding(laterality, finding, probabilities, attention)


def read_hip_findings(sr: Dataset) -> list[HipFinding]:
    """Return one finding per Measurement Group, in document order (right hip first)."""
    findings = []
    for item in _walk(sr):
        if _concept(item) == _MEASUREMENT_GROUP:
            finding = _read_group(item)
            if finding is not None:
                findings.append(finding)
    return findings


def read_comments(sr: Dataset) -> list[str]:
    """Return the text of every Comment item (not-for-clinical-use statement, warnings)."""
    return [
        str(item.TextValue)
        for item in _walk(sr)
        if _concept(item) == _COMMENT and item.get("ValueType") == "TEXT"
    ]


def read_clinical_text_available(sr: Dataset) -> bool | None:
    """Return the SR's "Clinical text available" value; ``None`` when the item is absent."""
    for item in _walk(sr):
        if _concept(item) == _TEXT_AVAILABLE and item.get("ValueType") == "CODE":
            code = item.ConceptCodeSequence[0]
            value = (str(code.CodeValue), str(code.CodingSchemeDesignator))
            if value in (_YES, _NO):
                return value == _YES
    return None
