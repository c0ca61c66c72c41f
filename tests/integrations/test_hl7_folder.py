"""The watched folder: complete files only, done/ and failed/ with reasons."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hl7_builders import CHINESE_NOTE_GB, framed, message, msh, oru, pid

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.integrations.hl7.folder import HL7FolderWatcher, split_file_messages
from hipfuse.integrations.hl7.intake import HL7Intake, IntakeOutcome
from hipfuse.integrations.hl7.store import HL7Store


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HL7Store]:
    store = HL7Store.in_data_dir(tmp_path / "data")
    yield store
    store.close()


def _watcher(tmp_path: Path, store: HL7Store, **kwargs: object) -> HL7FolderWatcher:
    watch_dir = tmp_path / "inbox"
    watch_dir.mkdir(exist_ok=True)
    for name in ("done", "failed"):
        (watch_dir / name).mkdir(exist_ok=True)
    intake = HL7Intake(store, HL7Settings(enabled=True))
    return HL7FolderWatcher(watch_dir, intake, **kwargs)  # type: ignore[arg-type]


BATCH = message(
    "FHS|^~\\&|RIS|HOSP",
    "BHS|^~\\&|RIS|HOSP",
    msh("F1"),
    pid(),
    "OBR|1|PL1|FL1|XR^XR",
    "OBX|1|TX|X^Note||first message",
    msh("F2"),
    pid(),
    "OBR|1|PL2|FL2|XR^XR",
    "OBX|1|TX|X^Note||BTS is the start of this line, not a segment",
    "BTS|2",
    "FTS|1",
).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (BATCH, 2),
        (framed(oru("M1", "a").encode(), oru("M2", "b").encode()), 2),
        (b"\xef\xbb\xbf" + oru("M3", "bom").encode(), 1),
        (oru("M4", "lf").replace("\r", "\n").encode(), 1),
        (b"\r\n\r\n", 0),
    ],
    ids=["batch", "framed", "bom", "lf", "empty"],
)
def test_split_file_messages(data: bytes, expected: int) -> None:
    messages = split_file_messages(data, 1 << 20)
    assert len(messages) == expected
    assert all(m.lstrip(b"\xef\xbb\xbf").startswith(b"MSH|") for m in messages)


def test_split_batch_keeps_message_bytes() -> None:
    first, second = split_file_messages(BATCH, 1 << 20)
    assert b"BHS" not in first
    assert b"BTS|2" not in second
    assert second.endswith(b"BTS is the start of this line, not a segment\r")


def test_folder_waits_until_size_is_stable(tmp_path: Path, store: HL7Store) -> None:
    clock = FakeClock()
    watcher = _watcher(tmp_path, store, stable_s=2.0, clock=clock)
    path = watcher.watch_dir / "lab.hl7"
    data = oru("S1", "stable file").encode()
    path.write_bytes(data[:40])
    watcher.note(path)

    assert watcher.process_ready() == []  # first look records size and time
    path.write_bytes(data)
    clock.now += 5.0
    assert watcher.process_ready() == []  # changed since the last look
    clock.now += 1.0
    assert watcher.process_ready() == []  # unchanged for 1 s of 2
    clock.now += 1.5
    (result,) = watcher.process_ready()

    assert result.moved_to == watcher.done_dir / "lab.hl7"
    assert [r.outcome for r in result.results] == [IntakeOutcome.ACCEPTED]
    assert not path.exists()


def test_folder_renamed_file_is_ready_at_once(tmp_path: Path, store: HL7Store) -> None:
    watcher = _watcher(tmp_path, store, stable_s=3600.0, clock=FakeClock())
    path = watcher.watch_dir / "renamed.hl7"
    path.write_bytes(oru("R1", "renamed in").encode())
    watcher.note(path, renamed_in=True)
    (result,) = watcher.process_ready()
    assert not result.failed


@pytest.mark.parametrize("name", [".hidden.hl7", "lab.hl7.part", "lab.tmp", "x.filepart"])
def test_folder_ignores_files_being_written(tmp_path: Path, store: HL7Store, name: str) -> None:
    watcher = _watcher(tmp_path, store, stable_s=0.0, clock=FakeClock())
    path = watcher.watch_dir / name
    path.write_bytes(oru("I1", "in progress").encode())
    watcher.rescan()
    assert watcher.process_ready() == []
    assert path.exists()


def test_folder_failed_file_gets_reason(tmp_path: Path, store: HL7Store) -> None:
    watcher = _watcher(tmp_path, store, stable_s=0.0, clock=FakeClock())
    path = watcher.watch_dir / "mixed.hl7"
    good = oru("OK1", "accepted").encode()
    bad = message(msh("BAD1", version="2.1"), pid()).encode()
    path.write_bytes(good + bad)
    result = watcher.process_file(path)

    assert result is not None and result.failed
    assert result.moved_to == watcher.failed_dir / "mixed.hl7"
    reason = (watcher.failed_dir / "mixed.hl7.reason.txt").read_text(encoding="utf-8")
    assert "message 1, control ID OK1: AA accepted" in reason
    assert "message 2, control ID BAD1: AR rejected: MSH-12 version '2.1'" in reason
    assert store.message_count() == 1
    assert [r.control_id for r in store.rejected_messages()] == ["BAD1"]


def test_folder_logs_no_file_name(tmp_path: Path, store: HL7Store) -> None:
    """Export file names often carry the patient's name and ID; logs use a file id."""
    watcher = _watcher(tmp_path, store, stable_s=0.0, clock=FakeClock())
    path = watcher.watch_dir / "DOE_JANE_MRN4711.hl7"
    bad = message(msh("BAD2", version="2.1"), pid()).encode()
    path.write_bytes(oru("OK2", "accepted").encode() + bad)

    with structlog.testing.capture_logs() as logs:
        result = watcher.process_file(path)

    assert result is not None and result.failed
    assert len(result.file_id) == 12
    assert logs, "processing a file logs at least one event"
    for entry in logs:
        assert "DOE_JANE" not in repr(entry)
        assert "MRN4711" not in repr(entry)
    processed = [entry for entry in logs if entry["event"] == "hl7_file_processed"]
    assert [entry["file_id"] for entry in processed] == [result.file_id]
    assert processed[0]["moved_to"] == "failed"
    reason = (watcher.failed_dir / "DOE_JANE_MRN4711.hl7.reason.txt").read_text()
    assert f"file id: {result.file_id}" in reason
    assert [r.source for r in store.rejected_messages()] == [f"file:{result.file_id}"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"just a note, no HL7\n", "message does not start with an MSH segment"),
        (b"\r\n", "the file holds no HL7 message"),
    ],
    ids=["text", "blank"],
)
def test_folder_file_without_message(
    tmp_path: Path, store: HL7Store, content: bytes, reason: str
) -> None:
    watcher = _watcher(tmp_path, store, stable_s=0.0, clock=FakeClock())
    path = watcher.watch_dir / "notes.txt"
    path.write_bytes(content)
    result = watcher.process_file(path)
    assert result is not None and result.failed
    assert reason in (watcher.failed_dir / "notes.txt.reason.txt").read_text()


def test_folder_same_name_twice(tmp_path: Path, store: HL7Store) -> None:
    watcher = _watcher(tmp_path, store, stable_s=0.0, clock=FakeClock())
    path = watcher.watch_dir / "daily.hl7"
    path.write_bytes(oru("D1", "day one").encode())
    first = watcher.process_file(path)
    path.write_bytes(oru("D2", "day two").encode())
    second = watcher.process_file(path)
    assert first is not None and second is not None
    assert first.moved_to != second.moved_to
    assert second.moved_to.name.startswith("daily.hl7.")


def _wait_for(predicate, attempts: int = 200) -> bool:
    for _ in range(attempts):
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_folder_watch_with_events(tmp_path: Path, store: HL7Store) -> None:
    watch_dir = tmp_path / "inbox"
    intake = HL7Intake(store, HL7Settings(enabled=True))
    watcher = HL7FolderWatcher(watch_dir, intake, stable_s=0.2, poll_interval_s=0.05)
    watch_dir.mkdir()
    (watch_dir / "before.hl7").write_bytes(oru("W0", "there before the start").encode())
    watcher.start()
    try:
        # Published the usual way: written under a temporary name, then renamed in.
        temporary = watch_dir / ".incoming.tmp"
        temporary.write_bytes(CHINESE_NOTE_GB)
        os.replace(temporary, watch_dir / "chinese.hl7")
        (watch_dir / "batch.hl7").write_bytes(BATCH)

        done = watcher.done_dir
        names = {"before.hl7", "chinese.hl7", "batch.hl7"}
        assert _wait_for(lambda: {p.name for p in done.iterdir()} == names), sorted(
            p.name for p in done.iterdir()
        )
    finally:
        watcher.stop()
    texts = {t.control_id: t.item.text for t in store.find_texts("HIP001")}
    assert texts["GBF1"] == "左髋关节疼痛三年，加重两月。"
    assert set(texts) == {"W0", "GBF1", "F1", "F2"}
    assert [p.name for p in watch_dir.iterdir() if p.is_file()] == []
