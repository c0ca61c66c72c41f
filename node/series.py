"""Classify a study's series as hip radiograph, hip CT or not an input, and pick the inputs.

Rules, from the header attributes that :mod:`hipfuse.node.header` keeps:

* **Radiograph**: Modality CR or DX, or a CR/DX SOP class. It is a hip view
  when Body Part Examined (0018,0015) is a hip or pelvis term, or when a
  Series, Protocol or Study Description names the hip or pelvis
  (:data:`HIP_KEYWORDS`). A radiograph without Body Part Examined is accepted
  with the warning ``no_body_part``, because many real radiographs lack it.
  Any other body part is ``not_hip``.
* **CT**: Modality CT. Localizer images (Image Type containing LOCALIZER,
  SCOUT or TOPOGRAM) are dropped; a series left with fewer than 3 slices
  (frames for enhanced CT) is not an input. Body part terms that cannot
  contain the hips (:data:`NON_HIP_BODY_PARTS`) make it ``not_hip``; an
  absent body part is accepted with a warning, because routed pelvis CT is
  often labelled with a vendor term.
* **The node's own outputs** (SR and Secondary Capture whose Manufacturer or
  Manufacturer's Model Name is ``hipfuse``) and every other modality are
  never inputs.

:func:`select_inputs` takes one radiograph series (explicit body part first,
then a description match, then none; lowest Series Number) and one CT
series (bone or standard kernel first, see :data:`KERNEL_RULES`, then the
thinnest slices, then bone over standard, then the most slices).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any


class SeriesClass(StrEnum):
    """Classification of one series."""

    HIP_RADIOGRAPH = "hip_radiograph"
    HIP_CT = "hip_ct"
    NOT_HIP = "not_hip"
    LOCALIZER = "localizer"
    TOO_FEW_SLICES = "too_few_slices"
    NODE_OUTPUT = "node_output"
    OTHER_MODALITY = "other_modality"


class InputRole(StrEnum):
    """The model input a selected series provides."""

    RADIOGRAPH = "radiograph"
    CT = "ct"


class KernelGroup(StrEnum):
    """Sharpness group of a CT reconstruction kernel (Convolution Kernel, 0018,1210)."""

    BONE = "bone"
    STANDARD = "standard"
    SOFT_TISSUE = "soft_tissue"
    LUNG = "lung"
    UNKNOWN = "unknown"


class BodyPartMatch(IntEnum):
    """Evidence that a series shows the hips; a lower value is stronger evidence."""

    BODY_PART = 0
    DESCRIPTION = 1
    ABSENT = 2


MIN_CT_SLICES = 3
# Manufacturer (0008,0070) that hipfuse.node.encode writes into its SR and SC objects.
NODE_MANUFACTURER = "hipfuse"

# Body Part Examined defined terms (PS3.16 Annex L) of views that show the hips.
HIP_BODY_PARTS = frozenset({"HIP", "PELVIS", "ABDOMENPELVIS", "SIJOINT", "SACRUM"})
# Body parts whose images cannot contain the hip joints.
NON_HIP_BODY_PARTS = frozenset(
    {
        "HEAD", "BRAIN", "SKULL", "FACE", "ORBIT", "SINUS", "IAC", "JAW", "TMJ", "NECK",
        "CSPINE", "TSPINE", "CHEST", "THORAX", "BREAST", "HEART", "LUNG", "CLAVICLE",
        "SHOULDER", "ARM", "HUMERUS", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER",
        "KNEE", "PATELLA", "TIBIA", "FIBULA", "ANKLE", "FOOT", "TOE", "HEEL",
    }
)  # fmt: skip
# Words for hip or pelvis in descriptions, matched case-insensitively. Latin
# words must stand alone ("AP_HIP" matches, "whipple" does not).
HIP_KEYWORDS: tuple[str, ...] = (
    "hip", "hips", "pelvis", "pelvic", "coxa", "acetabulum", "acetabular",
    "hüfte", "huefte", "becken", "hanche", "cadera", "anca", "quadril",
    "髋", "骨盆", "股骨头",
)  # fmt: skip
_LATIN_KEYWORDS = [word for word in HIP_KEYWORDS if word.isascii() or "ü" in word]
_OTHER_KEYWORDS = [word for word in HIP_KEYWORDS if word not in _LATIN_KEYWORDS]
_HIP_WORD = re.compile(
    r"(?<![a-zäöü])(" + "|".join(map(re.escape, _LATIN_KEYWORDS)) + r")(?![a-zäöü])"
    + "|" + "|".join(map(re.escape, _OTHER_KEYWORDS))
)  # fmt: skip
_LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})

_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_SC_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    }
)
_CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    }
)


@dataclass(frozen=True)
class KernelRule:
    """One row of the reconstruction kernel table."""

    vendor: str
    pattern: re.Pattern[str]
    group: KernelGroup | None  # None: decided from the sharpness index in the name
    note: str


def _rule(vendor: str, pattern: str, group: KernelGroup | None, note: str) -> KernelRule:
    return KernelRule(vendor, re.compile(pattern, re.IGNORECASE), group, note)


# Reconstruction kernels by vendor naming, first match wins. A Siemens name is
# a family letter (B body, H head, Q quantitative, U ultra-high resolution),
# an optional variant letter (r regular, f fine noise, l lung, v vascular,
# c crisp, p paediatric) and a sharpness index. Siemens recommends 30-40 for
# standard body imaging, 10-20 for softer images and 50-80 for bone and
# extremities (SOMATOM Sensation operator manual, body kernels).
KERNEL_RULES: tuple[KernelRule, ...] = (
    _rule("Siemens", r"^[BHQ]l\d\d", KernelGroup.LUNG, "lung-optimised variant (Bl57)"),
    _rule("Siemens", r"^[BHQ]v\d\d", KernelGroup.SOFT_TISSUE, "vascular variant (Bv40)"),
    _rule("Siemens", r"^U[a-z]?\d\d", KernelGroup.BONE, "ultra-high resolution (U70u, Ur77)"),
    _rule("Siemens", r"^[BHQ][rfcp]?\d\d", None, "index <30 soft, 30-49 standard, >=50 bone"),
    _rule("GE", r"^(BONE|BONEPLUS|EDGE)$", KernelGroup.BONE, "sharp bone algorithms"),
    _rule("GE", r"^(STANDARD|STND|DETAIL)$", KernelGroup.STANDARD, "standard body algorithms"),
    _rule("GE", r"^SOFT$", KernelGroup.SOFT_TISSUE, "soft tissue algorithm"),
    _rule("GE", r"^LUNG$", KernelGroup.LUNG, "lung algorithm"),
    _rule("Philips", r"^[BC]$", KernelGroup.STANDARD, "B standard, C sharper standard"),
    _rule("Philips", r"^[DE]$", KernelGroup.BONE, "D and E sharp (bone)"),
    # NOTE: the Philips Y-series (YA-YD) are taken as high-resolution bone
    # kernels from their use in musculoskeletal protocols; not checked against
    # a Philips reference.
    _rule("Philips", r"^Y[A-D]$", KernelGroup.BONE, "high-resolution Y-series"),
    _rule("Philips", r"^A$", KernelGroup.SOFT_TISSUE, "A smooth"),
    _rule("Philips", r"^L[A-C]?$", KernelGroup.LUNG, "L lung"),
    _rule("Canon", r"^FC3\d$", KernelGroup.BONE, "FC30-FC39 bone"),
    _rule("Canon", r"^FC5\d$", KernelGroup.LUNG, "FC50-FC59 lung"),
    _rule("Canon", r"^FC[0-2]\d$", KernelGroup.STANDARD, "FC01-FC29 body and head"),
)

# Ranking of kernel groups for the CT input: bone and standard are equally
# preferred, then anything not clearly lung, then lung.
_KERNEL_PREFERENCE = {
    KernelGroup.BONE: 0,
    KernelGroup.STANDARD: 0,
    KernelGroup.SOFT_TISSUE: 1,
    KernelGroup.UNKNOWN: 1,
    KernelGroup.LUNG: 2,
}


def classify_kernel(kernel: object) -> KernelGroup:
    """Return the kernel group of a Convolution Kernel value (first value if multi-valued)."""
    if isinstance(kernel, list | tuple):
        kernel = kernel[0] if kernel else ""
    name = str(kernel or "").strip()
    for rule in KERNEL_RULES:
        if not rule.pattern.match(name):
            continue
        if rule.group is not None:
            return rule.group
        index = int(re.search(r"\d\d", name).group())  # type: ignore[union-attr]
        if index < 30:
            return KernelGroup.SOFT_TISSUE
        return KernelGroup.STANDARD if index < 50 else KernelGroup.BONE
    return KernelGroup.UNKNOWN


@dataclass(frozen=True)
class SeriesClassification:
    """Outcome of :func:`classify_series` with what :func:`select_inputs` ranks by."""

    series_instance_uid: str
    series_class: SeriesClass
    reason: str
    warnings: tuple[str, ...] = ()
    body_part_match: BodyPartMatch | None = None
    kernel_group: KernelGroup | None = None
    slice_thickness_mm: float | None = None
    slice_count: int = 0
    series_number: int | None = None
    images_in_acquisition: int | None = None
    sop_instance_uids: tuple[str, ...] = ()

    @property
    def is_candidate(self) -> bool:
        """Whether the series can be a model input."""
        return self.series_class in (SeriesClass.HIP_RADIOGRAPH, SeriesClass.HIP_CT)


def classify_series(
    series_instance_uid: str, headers: Sequence[Mapping[str, Any]]
) -> SeriesClassification:
    """Classify one series from its instances' header attributes (see module doc)."""
    if not headers:
        return SeriesClassification(series_instance_uid, SeriesClass.OTHER_MODALITY, "empty")
    first = headers[0]
    modality = str(first.get("Modality", "")).upper()
    sop_class = str(first.get("SOPClassUID", ""))
    series_number = _as_int(first.get("SeriesNumber"))
    uids = tuple(str(header.get("SOPInstanceUID", "")) for header in headers)

    if is_node_output(first):
        return SeriesClassification(
            series_instance_uid, SeriesClass.NODE_OUTPUT, f"{NODE_MANUFACTURER} output"
        )
    if modality in ("CR", "DX") or sop_class in _RADIOGRAPH_SOP_CLASSES:
        return _classify_radiograph(series_instance_uid, headers, series_number, uids)
    if modality == "CT" or sop_class in _CT_SOP_CLASSES:
        return _classify_ct(series_instance_uid, headers, series_number)
    return SeriesClassification(
        series_instance_uid,
        SeriesClass.OTHER_MODALITY,
        f"modality {modality or 'missing'} is not an input",
        series_number=series_number,
    )


def _classify_radiograph(
    series_uid: str,
    headers: Sequence[Mapping[str, Any]],
    series_number: int | None,
    uids: tuple[str, ...],
) -> SeriesClassification:
    match, body_part = _body_part_match(headers[0])
    if match is None:
        return SeriesClassification(
            series_uid,
            SeriesClass.NOT_HIP,
            f"Body Part Examined {body_part} and no hip or pelvis in the descriptions",
            series_number=series_number,
        )
    warnings = ("no_body_part",) if match is BodyPartMatch.ABSENT else ()
    return SeriesClassification(
        series_uid,
        SeriesClass.HIP_RADIOGRAPH,
        _match_reason(match, body_part),
        warnings=warnings,
        body_part_match=match,
        slice_count=len(headers),
        series_number=series_number,
        sop_instance_uids=uids,
    )


def _classify_ct(
    series_uid: str, headers: Sequence[Mapping[str, Any]], series_number: int | None
) -> SeriesClassification:
    slices = [header for header in headers if not _is_localizer(header)]

    if not slices:
        return SeriesClassification(
            series_uid, SeriesClass.LOCALIZER, "only localizer images",
            series_number=series_number,
        )  # fmt: skip
    slice_count = sum(max(_as_int(header.get("NumberOfFrames")) or 1, 1) for header in slices)
    if slice_count < MIN_CT_SLICES:
        return SeriesClassification(
            series_uid,
            SeriesClass.TOO_FEW_SLICES,
            f"{slice_count} slices, fewer than {MIN_CT_SLICES}",
            series_number=series_number,
        )

    match, body_part = _body_part_match(slices[0])
    if match is None and body_part in NON_HIP_BODY_PARTS:
        return SeriesClassification(
            series_uid,
            SeriesClass.NOT_HIP,
            f"Body Part Examined {body_part} does not contain the hips",
            series_number=series_number,
        )

    warnings: list[str] = []
    if match is BodyPartMatch.ABSENT:
        warnings.append("no_body_part")
    kernel_group = classify_kernel(slices[0].get("ConvolutionKernel"))
    if kernel_group is KernelGroup.UNKNOWN:
        warnings.append("kernel_unknown")
    thicknesses = [value for value in (_as_float(h.get("SliceThickness")) for h in slices) if value]
    if not thicknesses:
        warnings.append("no_slice_thickness")
    if match is None:
        reason = f"Body Part Examined {body_part} may contain the hips"
    else:
        reason = _match_reason(match, body_part)
    return SeriesClassification(
        series_uid,
        SeriesClass.HIP_CT,
        f"{reason}; {slice_count} slices, kernel {kernel_group.value}",
        warnings=tuple(warnings),
        body_part_match=match or BodyPartMatch.ABSENT,
        kernel_group=kernel_group,
        slice_thickness_mm=min(thicknesses) if thicknesses else None,
        slice_count=slice_count,
        series_number=series_number,
        images_in_acquisition=_as_int(slices[0].get("ImagesInAcquisition")),
        sop_instance_uids=tuple(str(header.get("SOPInstanceUID", "")) for header in slices),
    )


def select_inputs(
    classifications: Sequence[SeriesClassification],
) -> dict[InputRole, SeriesClassification]:
    """Pick at most one radiograph and one CT series among the candidates (see module doc)."""
    selected: dict[InputRole, SeriesClassification] = {}
    radiographs = [c for c in classifications if c.series_class is SeriesClass.HIP_RADIOGRAPH]
    if radiographs:
        selected[InputRole.RADIOGRAPH] = min(
            radiographs,
            key=lambda c: (
                c.body_part_match if c.body_part_match is not None else BodyPartMatch.ABSENT,
                _number_key(c.series_number),
                c.series_instance_uid,
            ),
        )
    cts = [c for c in classifications if c.series_class is SeriesClass.HIP_CT]
    if cts:
        selected[InputRole.CT] = min(
            cts,
            key=lambda c: (
                _KERNEL_PREFERENCE[c.kernel_group or KernelGroup.UNKNOWN],
                c.slice_thickness_mm if c.slice_thickness_mm is not None else float("inf"),
                0 if c.kernel_group is KernelGroup.BONE else 1,
                -c.slice_count,
                _number_key(c.series_number),
                c.series_instance_uid,
            ),
        )
    return selected


def is_node_output(header: Mapping[str, Any]) -> bool:
    """Return whether an instance is an SR or Secondary Capture written by this node."""
    sop_class = str(header.get("SOPClassUID", ""))
    if not (
        sop_class.startswith(_SR_SOP_CLASS_PREFIX) or sop_class.startswith(_SC_SOP_CLASS_PREFIX)
    ):
        return False
    makers = (str(header.get("Manufacturer", "")), str(header.get("ManufacturerModelName", "")))
    return any(NODE_MANUFACTURER in maker.lower() for maker in makers)


def _is_localizer(header: Mapping[str, Any]) -> bool:
    image_type = header.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(value).upper() in _LOCALIZER_IMAGE_TYPES for value in image_type)


def _body_part_match(header: Mapping[str, Any]) -> tuple[BodyPartMatch | None, str]:
    body_part = str(header.get("BodyPartExamined", "")).strip().upper()
    if body_part in HIP_BODY_PARTS:
        return BodyPartMatch.BODY_PART, body_part
    descriptions = " ".join(
        str(header.get(keyword, ""))
        for keyword in ("SeriesDescription", "ProtocolName", "StudyDescription")
    )
    if _HIP_WORD.search(descriptions.lower()):
        return BodyPartMatch.DESCRIPTION, body_part
    if not body_part:
        return BodyPartMatch.ABSENT, body_part
    return None, body_part


def _match_reason(match: BodyPartMatch, body_part: str) -> str:
    if match is BodyPartMatch.BODY_PART:
        return f"Body Part Examined {body_part}"
    if match is BodyPartMatch.DESCRIPTION:
        return "hip or pelvis named in the description"
    return "no Body Part Examined"


def _as_int(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _as_float(value: object) -> float | None:
    try:
        return float(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _number_key(series_number: int | None) -> int:
    return series_number if series_number is not None else 2**31
