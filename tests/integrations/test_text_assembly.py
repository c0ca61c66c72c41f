from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hl7_builders import message, msh, oru

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake, IntakeOutcome
from hipfuse.integrations.hl7.store import HL7Store
from hipfuse.integrations.items import ClinicalItem, Section, WarningCode
from hipfuse.integrations.matching import StudyWindows, hl7_items, select_items
from hipfuse.integrations.text_assembly import assemble_text, gather_clinical_text


def _item(
    text: str,
    section: Section = Section.HISTORY,
    when: str | None = "2024-02-01",
    orders: tuple[str, ...] = (),
    source: str = "",
    title: str = "",
) -> ClinicalItem:
    return ClinicalItem(
        section=section,
        text=text,
        source_id=source or f"test:{text[:12]}",
        source_type="TEST",
        title=title,
        effective_at=datetime.fromisoformat(when) if when else None,
        order_numbers=frozenset(orders),
    )


def test_assemble_sections_in_fixed_order() -> None:
    items = [
        _item("smoker", Section.SOCIAL_HISTORY),
        _item("prednisone", Section.MEDICATION),
        _item("lupus", Section.CONDITION),
        _item("XR report", Section.REPORT),
        _item("hip pain", Section.HISTORY),
    ]
    text, _, _ = assemble_text(items)
    titles = [
        "Complaints, history and clinical notes:",
        "Reports:",
        "Conditions:",
        "Medications:",
        "Social history:",
    ]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    assert text.startswith(titles[0] + "\n[2024-02-01 | TEST]\nhip pain")


def test_assemble_newest_first_undated_last() -> None:
    items = [
        _item("older", when="2023-01-05", source="a"),
        _item("undated", when=None, source="b"),
        _item("newest", when="2024-02-28T08:00:00", source="c", title="Progress note"),
    ]
    text, sources, _ = assemble_text(items)
    assert sources == ["c", "a", "b"]
    assert text == (
        "Complaints, history and clinical notes:\n"
        "[2024-02-28 | TEST | Progress note]\nnewest\n\n"
        "[2023-01-05 | TEST]\nolder\n\n"
        "[date unknown | TEST]\nundated"
    )


def test_assemble_removes_duplicates() -> None:
    items = [
        _item("Left hip  pain,\nsince 2019.", when="2024-02-01", source="hl7:A"),
        _item("Left hip pain, since 2019.", when="2024-01-01", source="fhir:B"),
        _item("  ", source="hl7:C"),
    ]
    text, sources, duplicates = assemble_text(items)
    assert sources == ["hl7:A"]
    assert duplicates == 1
    assert text.count("Left hip") == 1


def test_assemble_keeps_text_untouched() -> None:
    decomposed = unicodedata.normalize("NFD", "Café crème")
    chinese = "左髋疼痛，４字试验阳性　(full-width digit and ideographic space)"
    text, _, _ = assemble_text([_item(decomposed, source="a"), _item(chinese, source="b")])
    assert decomposed in text
    assert chinese in text
    assert unicodedata.normalize("NFC", decomposed) not in text


def test_assemble_is_deterministic() -> None:
    items = [
        _item(f"note {n}", section, when, source=f"s{n}")
        for n, (section, when) in enumerate(
            [(s, w) for s in Section for w in ("2024-01-01", "2024-01-01", None, "2023-06-30")]
        )
    ]
    expected = assemble_text(items)
    shuffled = items[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert assemble_text(shuffled) == expected


WINDOWS = StudyWindows.around(date(2024, 3, 1), 365, 7, 3650)


@pytest.mark.parametrize(
    ("items", "accession", "kept", "warning"),
    [
        (
            [_item("this order", orders=("ACC1", "PL1")), _item("other order", orders=("ACC2",))],
            "ACC1",
            ["this order"],
            None,
        ),
        (
            [_item("old but linked", when="2010-01-01", orders=("ACC1",))],
            "ACC1",
            ["old but linked"],
            None,
        ),
        (
            [_item("in window"), _item("too old", when="2022-01-01")],
            "ACC1",
            ["in window"],
            None,
        ),
        (
            [
                _item("old diagnosis", Section.CONDITION, when="2016-01-01"),
                _item("ancient diagnosis", Section.CONDITION, when="2001-01-01"),
                _item("after the study", when="2024-03-09"),
            ],
            "",
            ["old diagnosis"],
            None,
        ),
        (
            [_item("order a1", orders=("PL1", "FL1")), _item("order a2", orders=("FL1", "ACC7"))],
            "",
            ["order a1", "order a2"],
            None,
        ),
        (
            [
                _item("order a", orders=("ACC1",)),
                _item("order b", orders=("ACC2",)),
                _item("patient level"),
            ],
            "",
            ["patient level"],
            WarningCode.AMBIGUOUS_ORDER,
        ),
        (
            [
                _item("order b, outside window", when="2020-01-01", orders=("ACC2",)),
                _item("a", orders=("ACC1",)),
            ],
            "",
            ["a"],
            None,
        ),
    ],
    ids=[
        "accession-match",
        "accession-beats-window",
        "patient-level-window",
        "history-window",
        "one-order-shared-numbers",
        "two-orders-ambiguous",
        "other-order-outside-window",
    ],
)
def test_select_items(
    items: list[ClinicalItem], accession: str, kept: list[str], warning: WarningCode | None
) -> None:
    chosen, warnings = select_items(items, accession_number=accession, windows=WINDOWS, source="X")
    assert [item.text for item in chosen] == kept
    assert [w.code for w in warnings] == ([warning] if warning else [])


def test_select_items_without_study_date() -> None:
    items = [_item("ancient", when="1990-01-01"), _item("future", when="2030-01-01")]
    chosen, _ = select_items(items, accession_number="", windows=None, source="X")
    assert len(chosen) == 2


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HL7Store]:
    store = HL7Store.in_data_dir(tmp_path)
    yield store
    store.close()


def _receive(store: HL7Store, *messages: str) -> None:
    intake = HL7Intake(store, HL7Settings(enabled=True))
    for text in messages:
        assert intake.process(text.encode(), "test").outcome is IntakeOutcome.ACCEPTED


def _adt(control_id: str, pid_3: str, note: str) -> str:
    return message(msh(control_id, "ADT^A08^ADT_A01"), f"PID|1||{pid_3}||DOE^J", f"NTE|1||{note}")


@pytest.mark.parametrize(
    ("issuer", "expected", "warning"),
    [
        ("HOSP", ["hosp note", "no authority note"], None),
        ("1.2.840.99.1", ["hosp note", "no authority note"], None),
        ("CLINIC", ["clinic note", "no authority note"], None),
        ("ELSEWHERE", ["no authority note"], None),
        ("", [], WarningCode.AMBIGUOUS_PATIENT),
    ],
    ids=["namespace", "universal-id", "other-authority", "unknown", "no-issuer"],
)
def test_hl7_items_match_authority(
    store: HL7Store, issuer: str, expected: list[str], warning: WarningCode | None
) -> None:
    _receive(
        store,
        _adt("A1", "P77^^^HOSP&1.2.840.99.1&ISO^MR", "hosp note"),
        _adt("A2", "P77^^^CLINIC^MR", "clinic note"),
        _adt("A3", "P77", "no authority note"),
    )
    items, warnings = hl7_items(store, "P77", issuer)
    assert sorted(item.text for item in items) == sorted(expected)
    assert [w.code for w in warnings] == ([warning] if warning else [])


def test_hl7_items_single_authority_without_issuer(store: HL7Store) -> None:
    _receive(store, _adt("B1", "P88^^^HOSP^MR", "only one authority"))
    items, warnings = hl7_items(store, "P88", "")
    assert [item.source_id for item in items] == ["hl7:B1"]
    assert items[0].source_type == "HL7 ADT^A08 NTE"
    assert warnings == []


def _settings(**fhir: object) -> SimpleNamespace:
    return SimpleNamespace(hl7=HL7Settings(enabled=True), fhir=FHIRSettings(**fhir))  # type: ignore[arg-type]


def test_gather_nothing_found(store: HL7Store) -> None:
    assert gather_clinical_text(_settings(), store, "NOBODY", "", "", "20240301") is None
    assert gather_clinical_text(_settings(), None, "NOBODY", "", "", None) is None


def test_gather_ambiguous_orders_reported(store: HL7Store) -> None:
    _receive(
        store, oru("O1", "first order", accession="ACC1"), oru("O2", "second", accession="ACC2")
    )
    gathered = gather_clinical_text(_settings(), store, "HIP001", "HOSP", "", "20240301")
    assert gathered is not None
    assert gathered.text == ""
    assert [w.code for w in gathered.warnings] == [WarningCode.AMBIGUOUS_ORDER]


def test_gather_picks_order_by_accession(store: HL7Store) -> None:
    _receive(
        store, oru("O1", "first order", accession="ACC1"), oru("O2", "second", accession="ACC2")
    )
    gathered = gather_clinical_text(_settings(), store, "HIP001", "HOSP", "ACC2", date(2024, 3, 1))
    assert gathered is not None
    assert gathered.sources == ["hl7:O2"]
    assert gathered.text.endswith("]\nsecond")


def test_gather_fhir_failure_becomes_warning(store: HL7Store) -> None:
    _receive(store, oru("O3", "hl7 text still used", accession="ACC3"))
    settings = _settings(enabled=True, base_url="http://127.0.0.1:9/fhir", max_attempts=1)
    gathered = gather_clinical_text(settings, store, "HIP001", "HOSP", "ACC3", "20240301")
    assert gathered is not None
    assert "hl7 text still used" in gathered.text
    assert [w.code for w in gathered.warnings] == [WarningCode.FHIR_FAILED]


def test_gather_rejects_bad_study_date(store: HL7Store) -> None:
    with pytest.raises(ValueError, match="not a DICOM date"):
        gather_clinical_text(_settings(), store, "HIP001", "", "", "2024-03-01")
