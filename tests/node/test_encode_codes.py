import inspect

import pydicom.sr._concepts_dict as concepts_dict
import pytest
from pydicom.sr.coding import Code

from hipfuse.inference.types import HipClass, InputModality, Laterality
from hipfuse.node.encode import codes

# Standard codes that are not in pydicom's dictionary, with where they come from.
NOT_IN_PYDICOM = {("C0034375", "UMLS")}


def _module_codes() -> dict[str, Code]:
    return {
        name: value
        for name, value in vars(codes).items()
        if isinstance(value, Code) and name.isupper()
    }


def _pydicom_meanings(code: Code) -> set[str]:
    meanings = set()
    for entries in concepts_dict.concepts.get(code.scheme_designator, {}).values():
        if code.value in entries:
            meanings.add(entries[code.value][0].lower())
    return meanings


STANDARD = [
    pytest.param(code, id=name)
    for name, code in _module_codes().items()
    if code.scheme_designator != codes.PRIVATE_SCHEME
    and (code.value, code.scheme_designator) not in NOT_IN_PYDICOM
]


@pytest.mark.parametrize("code", STANDARD)
def test_standard_code_in_pydicom_dictionary(code):
    meanings = _pydicom_meanings(code)
    assert meanings, f"{code} is not in pydicom's code dictionary"
    assert code.meaning.lower() in meanings or any(
        m.startswith(code.meaning.lower()) for m in meanings
    ), f"{code.meaning!r} is none of {meanings}"


@pytest.mark.parametrize("code", codes.PRIVATE_CODES, ids=lambda c: c.value)
def test_private_code_documented_in_docstring(code):
    assert code.scheme_designator == "99HIPFUSE"
    assert len(code.value) <= 16  # Code Value is SH
    assert len(code.meaning) <= 64  # Code Meaning is LO
    doc = inspect.getdoc(codes)
    assert f"``{code.value}``" in doc
    assert code.meaning in doc


def test_private_codes_listed_once():
    private = [c for c in _module_codes().values() if c.scheme_designator == "99HIPFUSE"]
    assert sorted(c.value for c in private) == sorted(c.value for c in codes.PRIVATE_CODES)
    assert len({c.value for c in codes.PRIVATE_CODES}) == len(codes.PRIVATE_CODES)


def test_scheme_item_names_private_scheme():
    assert codes.PRIVATE_SCHEME_ITEM.CodingSchemeDesignator == "99HIPFUSE"
    assert codes.PRIVATE_SCHEME_ITEM.CodingSchemeName


def test_mappings_cover_every_enum_member():
    assert set(codes.HIP_CLASS_CODES) == set(HipClass)
    assert set(codes.ATTENTION_CODES) == set(InputModality)
    assert set(codes.LATERALITY_CODES) == set(Laterality)
    assert len({c.value for c in codes.HIP_CLASS_CODES.values()}) == len(HipClass)


def test_laterality_codes_are_snomed_right_left():
    assert codes.LATERALITY_CODES[Laterality.RIGHT] == Code("24028007", "SCT", "Right")
    assert codes.LATERALITY_CODES[Laterality.LEFT] == Code("7771000", "SCT", "Left")
