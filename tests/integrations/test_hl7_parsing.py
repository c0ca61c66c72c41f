from __future__ import annotations

import pytest
from hl7_builders import message, msh, pid

from hipfuse.config.hl7_charsets import UnknownCharsetError, codec_for_charset
from hipfuse.integrations.hl7.clinical import extract_content
from hipfuse.integrations.hl7.errors import AckCode, HL7ErrorCode, MessageError
from hipfuse.integrations.hl7.escapes import EncodingCharacters, EscapeError, escape, unescape
from hipfuse.integrations.hl7.header import check_header, parse_hl7_datetime
from hipfuse.integrations.hl7.parser import parse_message
from hipfuse.integrations.items import Section

DEFAULT = EncodingCharacters()


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("GB 18030-2000", "gb18030"),
        ("8859/1", "iso8859-1"),
        ("8859/15", "iso8859-15"),
        ("ASCII", "ascii"),
        ("KS X 1001", "euc_kr"),
        ("BIG-5", "big5"),
        ("utf-8", "utf-8"),
        ("GB18030", "gb18030"),
        ("GBK", "gb18030"),
        ("ISO_IR 100", "iso8859-1"),
        ("cp1252", "cp1252"),
    ],
    ids=lambda v: v,
)
def test_charset_maps_to_codec(value: str, codec: str) -> None:
    assert codec_for_charset(value) == codec


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("UNICODE UTF-16", "MLLP block characters"),
        ("utf-16", "MLLP block characters"),
        ("ISO IR87", "not supported"),
        ("KLINGON", "not an HL7 Table 0211 value"),
        ("", "empty"),
    ],
    ids=["utf16-table", "utf16-codec", "jis", "unknown", "empty"],
)
def test_charset_rejected(value: str, match: str) -> None:
    with pytest.raises(UnknownCharsetError, match=match):
        codec_for_charset(value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"a\F\b", "a|b"),
        (r"a\S\b", "a^b"),
        (r"a\T\b", "a&b"),
        (r"a\R\b", "a~b"),
        (r"a\E\b", "a\\b"),
        (r"a\P\b", "a#b"),
        (r"\H\bold\N\ text", "bold text"),
        (r"line1\.br\line2", "line1\nline2"),
        (r"a\.sp 2\b", "a\n\nb"),
        (r"a\.sp\b", "a\nb"),
        (r"a\.sk 3\b", "a   b"),
        (r"\.ce\centred", "\ncentred"),
        (r"\.in+4\\.ti-2\\.fi\\.nf\text", "text"),
        ("\\X41\\", "A"),
        ("\\XE4B8AD\\文", "中文"),
        (r"C:\temp\notes", r"C:\temp\notes"),
        (r"trailing \ alone", r"trailing \ alone"),
        (r"\Zlocal\x", r"\Zlocal\x"),
        ("", ""),
    ],
    ids=[
        "F",
        "S",
        "T",
        "R",
        "E",
        "P",
        "highlight",
        "br",
        "sp2",
        "sp",
        "sk3",
        "ce",
        "layout",
        "hex-ascii",
        "hex-utf8",
        "windows-path",
        "lone-escape",
        "local-Z",
        "empty",
    ],
)
def test_unescape_default_delimiters(raw: str, expected: str) -> None:
    assert unescape(raw, DEFAULT, "utf-8") == expected


def test_unescape_hex_in_gb18030() -> None:
    # 中 is D6D0 in GB 18030: \X..\ spells bytes of the message character set.
    assert unescape("\\XD6D0\\文", DEFAULT, "gb18030") == "中文"


def test_unescape_own_delimiters() -> None:
    encoding = EncodingCharacters.from_msh("#", "$*!@")
    assert encoding.escape == "!"
    assert unescape("a!F!b!S!c!R!d!T!e!E!f", encoding, "utf-8") == "a#b$c*d@e!f"
    # The default escape character is plain text here.
    assert unescape(r"a\F\b", encoding, "utf-8") == r"a\F\b"


def test_unescape_without_escape_character() -> None:
    encoding = EncodingCharacters.from_msh("|", "^~")
    assert unescape(r"a\F\b", encoding, "utf-8") == r"a\F\b"


@pytest.mark.parametrize(
    ("raw", "match"),
    [("\\XFF\\", "not valid utf-8"), (r"\C2842\x", "character set switch")],
    ids=["bad-hex-bytes", "charset-switch"],
)
def test_unescape_rejects(raw: str, match: str) -> None:
    with pytest.raises(EscapeError, match=match):
        unescape(raw, DEFAULT, "utf-8")


def test_escape_round_trip() -> None:
    text = "a|b^c&d~e\\f\nline 2 中文"
    escaped = escape(text, DEFAULT)
    assert "|" not in escaped
    assert "\n" not in escaped
    assert unescape(escaped, DEFAULT, "utf-8") == text


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_parse_segment_terminators(terminator: str) -> None:
    text = message(msh("T1"), pid(), "OBX|1|TX|X^Note||hello", terminator=terminator)
    parsed = parse_message(text.encode(), "UNICODE UTF-8")
    assert [segment.id for segment in parsed.segments] == ["MSH", "PID", "OBX"]
    assert parsed.segments[2].raw(5) == "hello"
    assert parsed.joined_lines == 0


def test_parse_keeps_bare_lf_inside_cr_message() -> None:
    text = message(msh("T1"), pid(), "OBX|1|TX|X^Note||line 1\nline 2")
    parsed = parse_message(text.encode(), "UNICODE UTF-8")
    assert parsed.segments[2].raw(5) == "line 1\nline 2"


def test_parse_joins_continuation_lines() -> None:
    text = message(msh("T1"), pid(), "OBX|1|TX|X^Note||line 1", "line 2", terminator="\n")
    parsed = parse_message(text.encode(), "UNICODE UTF-8")
    assert parsed.segments[2].raw(5) == "line 1\nline 2"
    assert parsed.joined_lines == 1


def test_parse_msh_field_numbering() -> None:
    parsed = parse_message(message(msh("C42"), pid()).encode(), "UNICODE UTF-8")
    assert parsed.msh.raw(1) == "|"
    assert parsed.msh.raw(2) == "^~\\&"
    assert parsed.header(10) == "C42"
    assert parsed.header(9, 2) == "R01"


def test_parse_utf8_bom_removed() -> None:
    raw = b"\xef\xbb\xbf" + message(msh("B1"), pid(), "NTE|1||中文").encode()
    parsed = parse_message(raw, "8859/1")
    assert parsed.codec == "utf-8"
    assert parsed.segments[2].raw(3) == "中文"


def test_parse_gb18030_trail_bytes_equal_delimiters() -> None:
    # In GB 18030 these end in the bytes of "|", "^", "\\" and "~" (837C 835E 815C 837E).
    note = "億僞乗儈"
    raw = message(msh("G1", charset="GB 18030-2000"), pid(), f"NTE|1||{note}").encode("gb18030")
    assert all(byte in note.encode("gb18030") for byte in (b"|", b"^", b"\\", b"~"))
    parsed = parse_message(raw, "UNICODE UTF-8")
    assert parsed.segments[2].raw(3) == note


@pytest.mark.parametrize(
    ("raw", "ack_code", "match"),
    [
        (b"PID|1||X", AckCode.REJECT, "does not start with an MSH"),
        (b"\xff\xfeM\x00S\x00H\x00", AckCode.REJECT, "UTF-16"),
        (
            b"\xef\xbb\xbf" + message(msh("B", charset="8859/1"), pid()).encode(),
            AckCode.REJECT,
            "byte order mark but MSH-18",
        ),
        (message(msh("K", charset="KLINGON"), pid()).encode(), AckCode.REJECT, "MSH-18"),
        (
            message(msh("U", charset="UNICODE UTF-8"), pid(), "NTE|1||caf\xe9").encode("latin-1"),
            AckCode.ERROR,
            "not valid UNICODE UTF-8",
        ),
        (
            message(msh("D"), pid(), "NTE|1||caf\xe9").encode("latin-1"),
            AckCode.ERROR,
            "the default; MSH-18 is empty",
        ),
    ],
    ids=["no-msh", "utf16-bom", "bom-vs-msh18", "unknown-charset", "bad-utf8", "bad-default"],
)
def test_parse_rejects(raw: bytes, ack_code: AckCode, match: str) -> None:
    with pytest.raises(MessageError, match=match) as caught:
        parse_message(raw, "UNICODE UTF-8")
    assert caught.value.ack_code is ack_code


@pytest.mark.parametrize(
    ("header", "error_code"),
    [
        (msh("", message_type="ORU^R01"), HL7ErrorCode.REQUIRED_FIELD_MISSING),
        (msh("H1", message_type="SIU^S12"), HL7ErrorCode.UNSUPPORTED_MESSAGE_TYPE),
        (msh("H2", message_type="ORU^R30"), HL7ErrorCode.UNSUPPORTED_EVENT_CODE),
        (msh("H3", message_type="MDM^T01"), HL7ErrorCode.UNSUPPORTED_EVENT_CODE),
        (msh("H4", version="2.2"), HL7ErrorCode.UNSUPPORTED_VERSION_ID),
        (msh("H5", version="3.0"), HL7ErrorCode.UNSUPPORTED_VERSION_ID),
        (msh("H6", processing_id="T"), HL7ErrorCode.UNSUPPORTED_PROCESSING_ID),
    ],
    ids=["no-control-id", "type", "oru-event", "mdm-event", "v2.2", "v3", "training"],
)
def test_header_rejected(header: str, error_code: HL7ErrorCode) -> None:
    parsed = parse_message(message(header, pid()).encode(), "UNICODE UTF-8")
    with pytest.raises(MessageError) as caught:
        check_header(parsed, ["P"])
    assert caught.value.ack_code is AckCode.REJECT
    assert caught.value.error_code is error_code


@pytest.mark.parametrize(
    ("message_type", "version"),
    [
        ("ORU^R01^ORU_R01", "2.3"),
        ("MDM^T02^MDM_T02", "2.3.1"),
        ("ORM^O01^ORM_O01", "2.4"),
        ("OMI^O23^OMI_O23", "2.5.1"),
        ("ADT^A08^ADT_A01", "2.6"),
        ("ADT^A01^ADT_A01", "2.7.1"),
        ("ORU^R01^ORU_R01", "2.8.2"),
        ("MDM^T10^MDM_T02", "2.9"),
    ],
    ids=lambda v: v,
)
def test_header_accepted(message_type: str, version: str) -> None:
    header = msh("OK1", message_type=message_type, version=version)
    parsed = parse_message(message(header, pid()).encode(), "UNICODE UTF-8")
    checked = check_header(parsed, ["P"])
    assert checked.control_id == "OK1"
    assert checked.type_label == "^".join(message_type.split("^")[:2])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301", (2024, 3, 1, 0, 0)),
        ("202403011015", (2024, 3, 1, 10, 15)),
        ("20240301101530.1234+0800", (2024, 3, 1, 10, 15)),
        ("2024", (2024, 1, 1, 0, 0)),
    ],
    ids=["date", "minutes", "fraction-offset", "year"],
)
def test_hl7_datetime(value: str, expected: tuple[int, ...]) -> None:
    parsed = parse_hl7_datetime(value)
    assert parsed is not None
    assert (parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute) == expected


@pytest.mark.parametrize("value", ["", "2024-03-01", "20241301"], ids=["empty", "iso", "month13"])
def test_hl7_datetime_invalid(value: str) -> None:
    assert parse_hl7_datetime(value) is None


def _content(*segments: str, version: str = "2.5.1", message_type: str = "ORU^R01^ORU_R01"):
    text = message(msh("X1", message_type=message_type, version=version), *segments)
    parsed = parse_message(text.encode(), "UNICODE UTF-8")
    return extract_content(parsed, check_header(parsed, ["P"]))


def test_extract_groups_obx_lines_and_notes() -> None:
    content = _content(
        pid(),
        "OBR|1|PL1|FL1|XR^XR pelvis|||20240301100000|||||||||||ACC9",
        "OBX|1|TX|18782-3^Radiology study observation^LN|1|Line one||||||F",
        "OBX|2|TX|18782-3^Radiology study observation^LN|1|Line two||||||F",
        "NTE|1||Note on the result",
        "OBX|3|TX|19005-8^Impression^LN|1|Impression text||||||F",
    )
    texts = [(item.title, item.text) for item in content.items]
    assert texts == [
        ("Radiology study observation", "Line one\nLine two\nNote on the result"),
        ("Impression", "Impression text"),
    ]
    assert content.items[0].order_numbers == frozenset({"PL1", "FL1", "ACC9"})
    assert content.items[0].section is Section.REPORT


def test_extract_coded_and_social_values() -> None:
    content = _content(
        pid(),
        "OBX|1|CE|72166-2^Tobacco smoking status^LN||449868002^Current every day smoker^SCT",
        "OBX|2|NM|74013-4^Alcoholic drinks per day^LN||6|{drinks}/d^drinks per day",
        "OBX|3|NM|2345-7^Glucose^LN||5.4|mmol/L",
        "OBX|4|CWE|11450-4^Problem list^LN||^^^^^^^^Osteonecrosis of femoral head",
        "OBX|5|ED|PDF^Report||^application^pdf^Base64^JVBERi0=",
        "OBX|6|TX|18782-3^Obs^LN||deleted text||||||D",
    )
    found = {item.title: (item.section, item.text) for item in content.items}
    assert found == {
        "Tobacco smoking status": (Section.SOCIAL_HISTORY, "Current every day smoker"),
        "Alcoholic drinks per day": (Section.SOCIAL_HISTORY, "6 drinks per day"),
        "Problem list": (Section.CONDITION, "Osteonecrosis of femoral head"),
    }
    assert content.skipped_values == 2


@pytest.mark.parametrize(
    ("version", "obr_13", "expected"),
    [
        ("2.5.1", "Left hip pain^since 2019", "Left hip pain^since 2019"),
        ("2.7", "^Left hip pain after steroids", "Left hip pain after steroids"),
    ],
    ids=["ST-before-2.7", "CWE-from-2.7"],
)
def test_extract_relevant_clinical_information(version: str, obr_13: str, expected: str) -> None:
    content = _content(
        pid(),
        "ORC|NW|PL5",
        f"OBR|1|PL5||XR^XR hip|||||||||{obr_13}",
        version=version,
        message_type="ORM^O01^ORM_O01",
    )
    (item,) = content.items
    assert item.text == expected
    assert item.section is Section.HISTORY
    assert item.order_numbers == frozenset({"PL5"})


def test_extract_diagnosis_and_admit_reason() -> None:
    content = _content(
        pid(),
        # PV1-44 Admit Date/Time.
        "PV1|1|I" + "|" * 42 + "20240210080000",
        "PV2|||^Right hip pain",
        "DG1|1||M16.1^Unilateral primary osteoarthritis of hip^I10|||A",
        "DG1|2|||Systemic lupus erythematosus||A",
        message_type="ADT^A08^ADT_A01",
    )
    found = [(item.segment, item.text, item.order_numbers) for item in content.items]
    assert found == [
        ("PV2-3", "Right hip pain", frozenset()),
        ("DG1", "Unilateral primary osteoarthritis of hip", frozenset()),
        ("DG1", "Systemic lupus erythematosus", frozenset()),
    ]
    assert content.items[0].effective_at is not None
    assert content.items[0].effective_at.day == 10


def test_extract_pid_identifiers_with_authorities() -> None:
    content = _content("PID|1||A1^^^HOSP&1.2.3&ISO^MR~B2^^^NATION^NI~~^^^EMPTY")
    assert [(p.value, p.authority, p.authority_uid) for p in content.patient_ids] == [
        ("A1", "HOSP", "1.2.3"),
        ("B2", "NATION", ""),
    ]


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        (("OBX|1|TX|X^Y||text",), "no PID segment"),
        (("PID|1||",), "PID-3"),
        ((pid(), r"OBX|1|TX|X^Y||bad \XFF\ bytes"), "OBX segment 3"),
    ],
    ids=["no-pid", "empty-pid-3", "bad-escape"],
)
def test_extract_rejects(segments: tuple[str, ...], match: str) -> None:
    with pytest.raises(MessageError, match=match) as caught:
        _content(*segments)
    assert caught.value.ack_code is AckCode.ERROR


def test_extract_accession_after_item_applies() -> None:
    # OMI^O23: IPC-1 Accession Identifier follows the OBR whose OBR-13 is the text.
    content = _content(
        pid(),
        "NTE|1||Patient-level note",
        "ORC|NW|PL3|FL3",
        "OBR|1|PL3|FL3|CT^CT pelvis|||||||||Right hip pain",
        "IPC|ACC3|RP3|1.2.3.4|SPS3|CT",
        message_type="OMI^O23^OMI_O23",
    )
    numbers = {item.text: item.order_numbers for item in content.items}
    assert numbers == {
        "Patient-level note": frozenset(),
        "Right hip pain": frozenset({"PL3", "FL3", "ACC3"}),
    }


def test_extract_obr_without_orc_starts_group() -> None:
    content = _content(
        pid(),
        "NTE|1||About the patient",
        "OBR|1|PL1||XR^XR|||||||||first order",
        "OBR|2|PL2||XR^XR|||||||||second order",
    )
    numbers = {item.text: item.order_numbers for item in content.items}
    assert numbers == {
        "About the patient": frozenset(),
        "first order": frozenset({"PL1"}),
        "second order": frozenset({"PL2"}),
    }
