"""Clinical text reader: real English notes, and notes in other encodings and scripts."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from hipfuse.inference.readers.text import read_clinical_text
from hipfuse.inference.types import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "text"
SAMPLE_FILES = sorted(SAMPLES.glob("*.txt"))

CHINESE_NOTE = (
    "患者男，56岁。右髋疼痛3个月，行走后加重。\r\n"
    "X线：右股骨头密度不均，可见新月征。\r\n"
    "诊断：右侧股骨头缺血性坏死（ONFH）。\n"
)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_real_note_is_unchanged(path):
    note = read_clinical_text(path)

    assert note.text == path.read_bytes().decode("utf-8")
    assert note.sources == [path.name]
    assert note.identity.patient_id == ""


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        pytest.param(CHINESE_NOTE.encode("gb18030"), CHINESE_NOTE, id="gb18030"),
        pytest.param(CHINESE_NOTE.encode("utf-8"), CHINESE_NOTE, id="utf-8"),
        pytest.param(codecs.BOM_UTF8 + CHINESE_NOTE.encode("utf-8"), CHINESE_NOTE, id="utf-8-bom"),
        pytest.param(CHINESE_NOTE.encode("utf-16"), CHINESE_NOTE, id="utf-16-bom"),
        pytest.param(
            codecs.BOM_UTF16_BE + CHINESE_NOTE.encode("utf-16-be"), CHINESE_NOTE, id="utf-16-be"
        ),
        pytest.param(CHINESE_NOTE.encode("utf-32"), CHINESE_NOTE, id="utf-32-bom"),
        pytest.param(
            "  Hüfte links:\tCoxarthrose Grad III  \n\n".encode(),
            "  Hüfte links:\tCoxarthrose Grad III  \n\n",
            id="whitespace-kept",
        ),
        pytest.param("e\u0301\ufb01".encode(), "e\u0301\ufb01", id="no-normalisation"),
    ],
)
def test_encodings_round_trip(tmp_path, encoded, expected):
    path = tmp_path / "note.txt"
    path.write_bytes(encoded)

    assert read_clinical_text(path).text == expected


def test_gb18030_is_not_utf8():
    # The case above only tests the fallback if these bytes fail as UTF-8.
    with pytest.raises(UnicodeDecodeError):
        CHINESE_NOTE.encode("gb18030").decode("utf-8")


@pytest.mark.parametrize(
    ("encoded", "match"),
    [
        pytest.param(b"caf\xe9 \xff\xff", "UTF-8, UTF-16 or UTF-32", id="undecodable"),
        pytest.param("hip pain".encode("utf-16-le"), "NUL characters", id="utf-16-without-bom"),
        pytest.param(codecs.BOM_UTF16_LE + b"\x00\xd8", "byte order mark", id="broken-utf-16"),
    ],
)
def test_unknown_encodings_are_rejected(tmp_path, encoded, match):
    path = tmp_path / "note.txt"
    path.write_bytes(encoded)

    with pytest.raises(InputError, match=match) as raised:
        read_clinical_text(path)

    assert raised.value.code == "text_encoding_unknown"


def test_large_file_is_rejected(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 2048)

    with pytest.raises(InputError, match="2048 bytes") as raised:
        read_clinical_text(path, max_bytes=1024)

    assert raised.value.code == "text_too_large"


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(InputError) as raised:
        read_clinical_text(tmp_path / "absent.txt")

    assert raised.value.code == "file_not_found"


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        pytest.param("Schmerzen in der Hüfte, Patient Müller.", "latin-1", id="de"),
        pytest.param("Douleur de la hanche, coxarthrose débutante, âgé.", "cp1252", id="fr"),
    ],
)
def test_latin_text_not_misread_as_gb18030(tmp_path, text, encoding):
    path = tmp_path / "note.txt"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(InputError, match="save it as UTF-8"):
        read_clinical_text(path)
