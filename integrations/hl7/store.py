"""Durable store of accepted and rejected HL7 v2 messages (SQLite, WAL).

A message is committed with ``synchronous=FULL`` before its ACK is sent, so
an acknowledged message survives a crash or power loss. Accepted messages
are indexed by every PID-3 identifier with its assigning authority and by
every order or accession number. Their raw bytes are kept beside the text
items read from them. Rejected messages keep their raw bytes and the reason
in ``rejected`` for inspection. One connection is shared by all threads
behind a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from hipfuse.integrations.hl7.clinical import HL7TextItem, MessageContent
from hipfuse.integrations.hl7.header import MessageHeader
from hipfuse.integrations.items import Section
from hipfuse.integrations.sqlite_store import open_store_database

HL7_STORE_FILE_NAME = "hl7.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    sending_application TEXT NOT NULL,
    sending_facility TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    trigger_event TEXT NOT NULL,
    version TEXT NOT NULL,
    charset TEXT NOT NULL,
    codec TEXT NOT NULL,
    message_time TEXT,
    content_sha256 TEXT NOT NULL,
    raw BLOB NOT NULL,
    UNIQUE (sending_application, sending_facility, control_id)
);
-- Retention deletes by age.
CREATE INDEX IF NOT EXISTS messages_by_received_at ON messages (received_at);
CREATE TABLE IF NOT EXISTS message_patients (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    patient_id TEXT NOT NULL,
    authority TEXT NOT NULL,
    authority_uid TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS message_patients_by_id ON message_patients (patient_id);
CREATE TABLE IF NOT EXISTS message_orders (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    source_field TEXT NOT NULL,
    number TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS message_orders_by_number ON message_orders (number);
CREATE TABLE IF NOT EXISTS message_texts (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    sequence INTEGER NOT NULL,
    section TEXT NOT NULL,
    title TEXT NOT NULL,
    segment TEXT NOT NULL,
    effective_at TEXT,
    text TEXT NOT NULL,
    order_numbers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS message_texts_by_message ON message_texts (message_id);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    ack_code TEXT NOT NULL,
    error_code TEXT NOT NULL,
    reason TEXT NOT NULL,
    control_id TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_by_received_at ON rejected (received_at);
"""


class RecordOutcome(StrEnum):
    """Result of :meth:`HL7Store.record_message`."""

    STORED = "stored"
    # Same sender and control ID, same content: a resend, acknowledged again.
    DUPLICATE = "duplicate"
    # Same sender and control ID, different content: not stored.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class StoredText:
    """A text item of a stored message with the identifiers it was filed under."""

    message_id: int
    control_id: str
    type_label: str
    authorities: tuple[tuple[str, str], ...]
    item: HL7TextItem


@dataclass(frozen=True)
class RejectedMessage:
    """A message acknowledged with AE or AR, kept for inspection."""

    id: int
    received_at: float
    source: str
    ack_code: str
    error_code: str
    reason: str
    control_id: str
    truncated: bool
    raw: bytes


class HL7Store:
    """SQLite store of HL7 messages; safe to share between threads.

    Parameters
    ----------
    path
        Database file, created with owner-only permissions when missing.
    clock
        Seconds since the epoch for ``received_at``.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        # Durable commits, so an acknowledged message survives power loss.
        self._db = open_store_database(self.path, durable_commits=True)
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has HL7 store schema {version}, newer than "
                    f"{SCHEMA_VERSION}; use the hipfuse version that wrote it"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def in_data_dir(cls, data_dir: Path, clock: Callable[[], float] = time.time) -> HL7Store:
        """Open the store at ``data_dir/hl7.sqlite3``, creating the folder (mode 0700)."""
        Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(Path(data_dir) / HL7_STORE_FILE_NAME, clock=clock)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------- #

    def record_message(
        self,
        header: MessageHeader,
        content: MessageContent,
        *,
        raw: bytes,
        source: str,
        charset: str,
        codec: str,
        content_sha256: str,
    ) -> tuple[RecordOutcome, int]:
        """Store an accepted message unless its sender and control ID are already stored.

        Returns
        -------
        tuple
            The outcome and the ``messages`` row id (of the stored message, or
            of the earlier one for a duplicate or conflict).
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, content_sha256 FROM messages WHERE sending_application = ? "
                "AND sending_facility = ? AND control_id = ?",
                (header.sending_application, header.sending_facility, header.control_id),
            ).fetchone()
            if row is not None:
                outcome = (
                    RecordOutcome.DUPLICATE if row[1] == content_sha256 else RecordOutcome.CONFLICT
                )
                return outcome, int(row[0])
            cursor = db.execute(
                "INSERT INTO messages (received_at, source, sending_application, "
                "sending_facility, control_id, message_type, trigger_event, version, charset, "
                "codec, message_time, content_sha256, raw) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._clock(),
                    source,
                    header.sending_application,
                    header.sending_facility,
                    header.control_id,
                    header.message_type,
                    header.trigger_event,
                    header.version,
                    charset,
                    codec,
                    _iso(header.message_time),
                    content_sha256,
                    raw,
                ),
            )
            message_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO message_patients (message_id, patient_id, authority, authority_uid) "
                "VALUES (?, ?, ?, ?)",
                [
                    (message_id, pid.value, pid.authority, pid.authority_uid)
                    for pid in content.patient_ids
                ],
            )
            db.executemany(
                "INSERT INTO message_orders (message_id, source_field, number) VALUES (?, ?, ?)",
                [(message_id, order.source_field, order.number) for order in content.orders],
            )
            db.executemany(
                "INSERT INTO message_texts (message_id, sequence, section, title, segment, "
                "effective_at, text, order_numbers) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        message_id,
                        sequence,
                        item.section.value,
                        item.title,
                        item.segment,
                        _iso(item.effective_at),
                        item.text,
                        json.dumps(sorted(item.order_numbers)),
                    )
                    for sequence, item in enumerate(content.items)
                ],
            )
            return RecordOutcome.STORED, message_id

    def record_rejected(
        self,
        *,
        raw: bytes,
        source: str,
        ack_code: str,
        error_code: str,
        reason: str,
        control_id: str,
        truncated: bool = False,
    ) -> int:
        """Keep a rejected message with the reason it was rejected; return its row id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO rejected (received_at, source, ack_code, error_code, reason, "
                "control_id, truncated, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._clock(),
                    source,
                    ack_code,
                    error_code,
                    reason,
                    control_id,
                    int(truncated),
                    raw,
                ),
            )
            return int(cursor.lastrowid or 0)

    # -- reading ---------------------------------------------------------- #

    def find_texts(self, patient_id: str) -> list[StoredText]:
        """Return the text items of every message filed under ``patient_id`` (any authority)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT m.id, m.control_id, m.message_type, m.trigger_event, t.section, "
                "t.title, t.segment, t.effective_at, t.text, t.order_numbers "
                "FROM message_texts t JOIN messages m ON m.id = t.message_id "
                "WHERE m.id IN (SELECT message_id FROM message_patients WHERE patient_id = ?) "
                "ORDER BY m.id, t.sequence",
                (patient_id,),
            ).fetchall()
            authority_rows = self._db.execute(
                "SELECT message_id, authority, authority_uid FROM message_patients "
                "WHERE patient_id = ?",
                (patient_id,),
            ).fetchall()
        authorities: dict[int, list[tuple[str, str]]] = {}
        for message_id, authority, authority_uid in authority_rows:
            authorities.setdefault(message_id, []).append((authority, authority_uid))
        texts = []
        for row in rows:
            message_id, control_id, message_type, event = row[:4]
            section, title, segment, effective_at, text, order_numbers = row[4:]
            item = HL7TextItem(
                Section(section),
                title,
                segment,
                text,
                datetime.fromisoformat(effective_at) if effective_at else None,
                frozenset(json.loads(order_numbers)),
            )
            texts.append(
                StoredText(
                    message_id,
                    control_id,
                    f"{message_type}^{event}",
                    tuple(authorities.get(message_id, [])),
                    item,
                )
            )
        return texts

    def find_messages_by_order(self, number: str) -> list[int]:
        """Return the ids of messages that carry ``number`` as an order or accession number."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT message_id FROM message_orders WHERE number = ? "
                "ORDER BY message_id",
                (number,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def raw_message(self, message_id: int) -> bytes:
        """Return the bytes of a stored message as received (MLLP framing removed).

        Raises
        ------
        KeyError
            No message has this id.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT raw FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no HL7 message with id {message_id}")
        return bytes(row[0])

    def purge(self, *, messages_before: float, rejected_before: float) -> tuple[int, int]:
        """Delete accepted messages and rejected ones received before the given times.

        The texts, patient IDs and order numbers of a deleted message go with
        it. Returns the numbers of accepted and rejected messages deleted.
        """
        with self._transaction() as db:
            accepted = db.execute(
                "DELETE FROM messages WHERE received_at < ?", (messages_before,)
            ).rowcount
            rejected = db.execute(
                "DELETE FROM rejected WHERE received_at < ?", (rejected_before,)
            ).rowcount
        if accepted or rejected:
            # The write-ahead log still contains the pages as they were before the
            # delete; copy the new pages into the database and empty the log.
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(accepted), int(rejected)

    def message_count(self) -> int:
        """Return the number of accepted messages."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def rejected_messages(self, limit: int = 100) -> list[RejectedMessage]:
        """Return the most recent rejected messages, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, received_at, source, ack_code, error_code, reason, control_id, "
                "truncated, raw FROM rejected ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            RejectedMessage(
                int(row[0]),
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                bool(row[7]),
                bytes(row[8]),
            )
            for row in rows
        ]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
