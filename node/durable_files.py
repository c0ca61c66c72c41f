"""Durable file writes shared by the spool and the outbox.

A file is written to a hidden temporary file in its final folder, flushed and
fsynced, renamed over the final name, and the folder is fsynced, so after a
crash either the whole new file or the old state is on disk. Temporary files
left by a crash are removed when the folder is prepared.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(final: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``final`` through ``write(handle)`` atomically and durably.

    The folder of ``final`` must exist. Its entry is fsynced after the rename.

    Raises
    ------
    OSError
        The file could not be written; no temporary file is left behind.
    """
    fd, temp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, final)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def remove_temp_files(root: Path, folder_pattern: str) -> int:
    """Delete temporary files left by a crash in folders matching ``folder_pattern``.

    ``folder_pattern`` is a glob relative to ``root`` (``*`` for the study
    folders of the outbox, ``*/*`` for the series folders of the spool).
    Returns the number of files deleted.
    """
    removed = 0
    for temp in root.glob(f"{folder_pattern}/.*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed
