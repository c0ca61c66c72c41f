"""Schema of the job store and its migrations.

Each migration is a SQL script that takes the database from the previous
version to its own; ``migrate`` applies the missing ones in order, each in one
transaction, when the store opens. To change the schema, append a migration;
never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

_SCHEMA_V1 = """
CREATE TABLE studies (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    state_reason TEXT,
    state_changed_at REAL NOT NULL,
    first_instance_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    -- 1 when an instance arrived while a worker held the study.
    reopen_pending INTEGER NOT NULL DEFAULT 0,
    -- sha256 of the sorted SOP Instance UIDs selected as inputs at assembly.
    input_fingerprint TEXT,
    -- input_fingerprint of the last successful analysis.
    analysed_fingerprint TEXT
);
CREATE INDEX studies_state ON studies (state, last_instance_at);
CREATE INDEX studies_analysed_fingerprint ON studies (analysed_fingerprint);

CREATE TABLE series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL
        REFERENCES studies (study_instance_uid) ON DELETE CASCADE,
    modality TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT '',
    instance_count INTEGER NOT NULL DEFAULT 0,
    classification TEXT,
    classification_reason TEXT,
    -- Input role chosen at assembly ('radiograph', 'ct'), NULL when not an input.
    input_role TEXT,
    warnings_json TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX series_study ON series (study_instance_uid);

CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL
        REFERENCES studies (study_instance_uid) ON DELETE CASCADE,
    series_instance_uid TEXT NOT NULL
        REFERENCES series (series_instance_uid) ON DELETE CASCADE,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_ae_title TEXT NOT NULL,
    peer_address TEXT NOT NULL,
    is_node_output INTEGER NOT NULL DEFAULT 0,
    -- Header attributes that series classification reads (no patient data).
    header_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX instances_study ON instances (study_instance_uid);
CREATE INDEX instances_series ON instances (series_instance_uid);

-- Audit trail: one row per thing that happened, never updated.
CREATE TABLE events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    study_instance_uid TEXT,
    details_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_study ON events (study_instance_uid, event_id);

-- Retried units of work, such as sending one study to one destination.
CREATE TABLE jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT
        REFERENCES studies (study_instance_uid) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    details_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_due ON jobs (kind, state, next_attempt_at);
CREATE INDEX jobs_study ON jobs (study_instance_uid);

CREATE TABLE job_attempts (
    job_id INTEGER NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    succeeded INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
);
"""

# Version 2: the outbox, one row per result object and destination. Its
# sending state lives in the ``send`` job it points to.
_SCHEMA_V2 = """
CREATE TABLE outbox (
    item_id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT NOT NULL
        REFERENCES studies (study_instance_uid) ON DELETE CASCADE,
    -- input_fingerprint of the analysis that produced the object.
    input_fingerprint TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs (job_id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    -- One object goes to one destination once.
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX outbox_study ON outbox (study_instance_uid);
CREATE INDEX outbox_destination ON outbox (destination);
"""

# Version 3: the audit trail that ``hipfuse-node audit export`` writes, and the
# retention marks of studies whose files were deleted.
_SCHEMA_V3 = """
-- One row per audited action, never updated or deleted; rows outlive retention.
-- No patient attributes: UIDs, AE titles, addresses, destinations and reasons only.
CREATE TABLE audit_events (
    audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Seconds since the epoch (UTC).
    at REAL NOT NULL,
    -- An AuditEventType value.
    event_type TEXT NOT NULL,
    calling_ae_title TEXT,
    called_ae_title TEXT,
    peer_address TEXT,
    study_instance_uid TEXT,
    series_instance_uids_json TEXT NOT NULL DEFAULT '[]',
    sop_instance_uids_json TEXT NOT NULL DEFAULT '[]',
    destination TEXT,
    job_id INTEGER,
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_study ON audit_events (study_instance_uid, event_type, at);

-- Studies whose spool and outbox files retention deleted ('purged') or is
-- deleting ('purging'). The studies, series and instances rows stay.
CREATE TABLE study_purges (
    study_instance_uid TEXT PRIMARY KEY
        REFERENCES studies (study_instance_uid) ON DELETE CASCADE,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    purged_at REAL,
    spool_files INTEGER NOT NULL DEFAULT 0,
    spool_bytes INTEGER NOT NULL DEFAULT 0,
    outbox_files INTEGER NOT NULL DEFAULT 0
);

-- While retention deletes a study's files, an instance of that study cannot be
-- recorded: the SCP answers A700 and the sender sends it again later, so no
-- acknowledged instance is deleted with the rest.
CREATE TRIGGER instances_insert_while_purging BEFORE INSERT ON instances
WHEN EXISTS (
    SELECT 1 FROM study_purges
    WHERE study_instance_uid = NEW.study_instance_uid AND state = 'purging'
)
BEGIN
    SELECT RAISE(ABORT, 'study is being deleted by retention; send the instance again later');
END;
CREATE TRIGGER instances_update_while_purging BEFORE UPDATE ON instances
WHEN EXISTS (
    SELECT 1 FROM study_purges
    WHERE study_instance_uid = NEW.study_instance_uid AND state = 'purging'
)
BEGIN
    SELECT RAISE(ABORT, 'study is being deleted by retention; send the instance again later');
END;
"""

# (version, script) in ascending order.
MIGRATIONS: list[tuple[int, str]] = [(1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of hipfuse."""


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the database to ``SCHEMA_VERSION``; return the version it had before.

    The connection must be in autocommit mode (``isolation_level=None``).
    """
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = row[0] or 0
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"job store schema version {found} is newer than this hipfuse supports "
            f"({SCHEMA_VERSION}); upgrade hipfuse or point storage.data_dir elsewhere"
        )
    for version, script in MIGRATIONS:
        if version <= found:
            continue
        # executescript() commits first, so the statements are wrapped explicitly
        # to apply the whole migration or none of it.
        try:
            connection.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"INSERT INTO schema_version (version) VALUES ({version});\nCOMMIT;"
            )
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    return found
