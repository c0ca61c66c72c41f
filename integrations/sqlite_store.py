"""SQLite files of the node's stores: owner-only, write-ahead log, foreign keys, secure delete.

The job store and the HL7 message store both hold patient data, are shared
by several threads and must keep every commit through a crash.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_store_database(path: Path, *, durable_commits: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a SQLite database file for a store.

    Parameters
    ----------
    path
        The database file. A new file is created readable by its owner only.
    durable_commits
        ``True`` syncs the write-ahead log at every commit (``synchronous=FULL``),
        so a commit survives power loss. ``False`` syncs only at checkpoints
        (``NORMAL``): a process crash still loses no commit.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (transactions are explicit) and usable from any
        thread, so callers must serialise access with their own lock.
    """
    path = Path(path)
    if not path.exists():
        # Created here so that the file, and the -wal and -shm files SQLite
        # derives from its mode, are readable by the owner only.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
    db.execute("PRAGMA foreign_keys=ON")
    # Deleted rows hold patient data: overwrite them with zeros instead of
    # leaving them in free pages of the file.
    db.execute("PRAGMA secure_delete=ON")
    return db
