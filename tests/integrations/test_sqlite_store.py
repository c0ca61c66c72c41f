"""Store databases: owner-only file, write-ahead log, sync level, foreign keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hipfuse.integrations.sqlite_store import open_store_database

# SQLite's numeric values of PRAGMA synchronous.
SYNCHRONOUS_NORMAL = 1
SYNCHRONOUS_FULL = 2


@pytest.mark.parametrize(
    ("durable", "synchronous"),
    [(True, SYNCHRONOUS_FULL), (False, SYNCHRONOUS_NORMAL)],
    ids=["durable", "normal"],
)
def test_store_database_settings(tmp_path: Path, durable: bool, synchronous: int) -> None:
    path = tmp_path / "store.sqlite3"
    db = open_store_database(path, durable_commits=durable)
    try:
        db.execute("CREATE TABLE t (x INTEGER)")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        for file in (path, tmp_path / "store.sqlite3-wal"):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    finally:
        db.close()


def test_store_database_deleted_rows_leave_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    db = open_store_database(path)
    try:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES (?)", ("Patient ZHANG^SAN reports hip pain",))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("DELETE FROM notes")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        files = [path, tmp_path / "store.sqlite3-wal"]
        contents = b"".join(file.read_bytes() for file in files if file.exists())
    finally:
        db.close()

    assert b"ZHANG^SAN" not in contents
