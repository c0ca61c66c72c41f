"""Shared pieces of the watched folders: settling files and free names."""

from __future__ import annotations

from pathlib import Path

from hipfuse.integrations.watched_folder import SettlingFiles, free_name


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_settling_file_ready_after_settle(tmp_path: Path) -> None:
    clock = FakeClock()
    files = SettlingFiles(clock)
    path = tmp_path / "a.dcm"
    path.write_bytes(b"part")
    files.note(path)

    assert files.take_ready(2.0) == []  # the first look records the signature
    path.write_bytes(b"partial content")
    clock.now += 3.0
    assert files.take_ready(2.0) == []  # changed since the last look
    clock.now += 2.0
    assert files.take_ready(2.0) == [path]
    assert len(files) == 0


def test_settling_renamed_in_ready_at_once(tmp_path: Path) -> None:
    files = SettlingFiles(FakeClock())
    path = tmp_path / "b.hl7"
    path.write_bytes(b"MSH|")
    files.note(path, renamed_in=True)

    assert files.take_ready(3600.0) == [path]


def test_settling_vanished_file_dropped(tmp_path: Path) -> None:
    files = SettlingFiles(FakeClock())
    files.note(tmp_path / "gone.dcm")

    assert files.take_ready(0.0) == []
    assert len(files) == 0


def test_settling_held_file_waits_for_change(tmp_path: Path) -> None:
    clock = FakeClock()
    files = SettlingFiles(clock)
    path = tmp_path / "kept.dcm"
    path.write_bytes(b"stored but not deleted")
    files.hold(path)
    files.note(path)

    assert files.take_ready(0.0) == []  # unchanged since it was held
    path.write_bytes(b"a new export under the same name")
    files.note(path)
    files.take_ready(0.0)  # records the new signature
    clock.now += 1.0
    assert files.take_ready(0.5) == [path]


def test_free_name_skips_taken_reason_file(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    (tmp_path / "x.dcm.reason.txt").write_text("left from an earlier file")

    chosen = free_name(target, (".reason.txt",))

    assert chosen != target
    assert chosen.name.startswith("x.dcm.")
    assert not chosen.exists()
    assert free_name(target) == target
