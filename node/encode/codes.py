"""Coded concepts used in the hipfuse SR and Secondary Capture images.

Every standard code below was checked against the code dictionary of pydicom
3.0 (``pydicom.sr.codedict.codes``), which is generated from DICOM PS3.16,
unless its comment names another source. The comment after each constant gives
the scheme keyword that finds it there.

Private coding scheme ``99HIPFUSE``
-----------------------------------
Concepts with no standard code that we could verify use the private scheme
``99HIPFUSE`` (a ``99`` prefix marks a private designator, DICOM PS3.3 section
8.2). Every SR that uses it describes it in the Coding Scheme Identification
Sequence (0008,0110), see :data:`PRIVATE_SCHEME_ITEM`. Its codes are:

=============  ==================================  =====================================
Code value     Code meaning                        Use
=============  ==================================  =====================================
``OA``         Osteoarthritis of hip               hip class (finding value)
``ONFH``       Osteonecrosis of femoral head       hip class (finding value)
``FAI``        Femoroacetabular impingement        hip class (finding value)
``ATTN-XR``    Radiograph attention weight         NUM, fusion weight of the radiograph
``ATTN-CT``    CT attention weight                 NUM, fusion weight of the CT
``ATTN-TEXT``  Clinical text attention weight      NUM, fusion weight of the clinical text
``TEXT-AVAIL`` Clinical text available             CODE, value Yes or No
=============  ==================================  =====================================

Code values and meanings never change once released, because stored SRs and
downstream queries key on them.
"""

from __future__ import annotations

from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from hipfuse.inference.types import HipClass, InputModality, Laterality

PRIVATE_SCHEME = "99HIPFUSE"

PRIVATE_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="hipfuse private codes for hip classification results",
    version="1",
    responsible_organization="hipfuse",
)
"""Coding Scheme Identification Sequence item that documents ``99HIPFUSE``."""

# Document title and containers (TID 1500).
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")  # DCM, CID 7021
IMAGING_MEASUREMENTS = Code("126010", "DCM", "Imaging Measurements")  # DCM
# Not in the pydicom or highdicom dictionaries. TID 1500 names its container of
# document-level qualitative evaluations with this code, as the table of TID 1500
# children in the HL7 "DICOM SR to FHIR Resource Mapping" guide (github.com/HL7/dicom-sr)
# shows. dcmjs writes the same code for TID 1500.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# Content of a measurement group (TID 1501, TID 300).
FINDING = Code("121071", "DCM", "Finding")  # DCM
PROBABILITY = Code("122157", "DCM", "Probability")  # DCM
COMMENT = Code("121106", "DCM", "Comment")  # DCM, CID 12101
UNIT_ONE = Code("1", "UCUM", "no units")  # UCUM, the UCUM unit of a dimensionless ratio

# Anatomy and laterality.
HIP_JOINT = Code("24136001", "SCT", "Hip joint")  # SCT
FEMORAL_HEAD = Code("2812003", "SCT", "Femoral head")  # SCT
RIGHT = Code("24028007", "SCT", "Right")  # SCT, CID 244
LEFT = Code("7771000", "SCT", "Left")  # SCT, CID 244
RIGHT_AND_LEFT = Code("51440002", "SCT", "Right and left")  # SCT, CID 244 ("Bilateral")

# Procedures reported (TID 1500 row "Procedure reported").
PLAIN_RADIOGRAPHY = Code("168537006", "SCT", "Plain radiography")  # SCT, CID 10005
COMPUTED_TOMOGRAPHY = Code("77477000", "SCT", "Computed tomography")  # SCT, CID 10005

# Purpose of Reference of a Secondary Capture's source images.
SOURCE_FOR_IMAGE_PROCESSING = Code(
    "121322", "DCM", "Source image for image processing operation"
)  # DCM, CID 7202

# Boolean values.
YES = Code("373066001", "SCT", "Yes")  # SCT
NO = Code("373067005", "SCT", "No")  # SCT

# Hip classes. Normal has a standard code. For the three diseases we found no
# SNOMED CT concept id that we could cite from SNOMED International or from DICOM,
# so they are private.
# NOTE: SNOMED CT 239872002 "Osteoarthritis of hip" appears in third-party FHIR
# examples but was not checked against a SNOMED CT release, so it is not used.
NORMAL = Code("17621005", "SCT", "Normal")  # SCT, CID 222 "Normality Codes"
OSTEOARTHRITIS_OF_HIP = Code("OA", PRIVATE_SCHEME, HipClass.OSTEOARTHRITIS.display_name)
OSTEONECROSIS_OF_FEMORAL_HEAD = Code("ONFH", PRIVATE_SCHEME, HipClass.OSTEONECROSIS.display_name)
FEMOROACETABULAR_IMPINGEMENT = Code("FAI", PRIVATE_SCHEME, HipClass.FAI.display_name)

# Model inputs. DICOM has no concept for the weight a fusion network gives an input.
RADIOGRAPH_ATTENTION = Code("ATTN-XR", PRIVATE_SCHEME, "Radiograph attention weight")
CT_ATTENTION = Code("ATTN-CT", PRIVATE_SCHEME, "CT attention weight")
TEXT_ATTENTION = Code("ATTN-TEXT", PRIVATE_SCHEME, "Clinical text attention weight")
CLINICAL_TEXT_AVAILABLE = Code("TEXT-AVAIL", PRIVATE_SCHEME, "Clinical text available")

HIP_CLASS_CODES: MappingProxyType[HipClass, Code] = MappingProxyType(
    {
        HipClass.NORMAL: NORMAL,
        HipClass.OSTEOARTHRITIS: OSTEOARTHRITIS_OF_HIP,
        HipClass.OSTEONECROSIS: OSTEONECROSIS_OF_FEMORAL_HEAD,
        HipClass.FAI: FEMOROACETABULAR_IMPINGEMENT,
    }
)
"""Code of each hip class, used as the Finding value and as the probability modifier."""

ATTENTION_CODES: MappingProxyType[InputModality, Code] = MappingProxyType(
    {
        InputModality.RADIOGRAPH: RADIOGRAPH_ATTENTION,
        InputModality.CT: CT_ATTENTION,
        InputModality.TEXT: TEXT_ATTENTION,
    }
)
"""Concept name of the attention weight NUM item of each model input."""

LATERALITY_CODES: MappingProxyType[Laterality, Code] = MappingProxyType(
    {Laterality.RIGHT: RIGHT, Laterality.LEFT: LEFT}
)
"""Laterality modifier of the Finding Site of each hip."""

PRIVATE_CODES: tuple[Code, ...] = (
    OSTEOARTHRITIS_OF_HIP,
    OSTEONECROSIS_OF_FEMORAL_HEAD,
    FEMOROACETABULAR_IMPINGEMENT,
    RADIOGRAPH_ATTENTION,
    CT_ATTENTION,
    TEXT_ATTENTION,
    CLINICAL_TEXT_AVAILABLE,
)
"""Every ``99HIPFUSE`` code, so tests can check the table in the module docstring."""
