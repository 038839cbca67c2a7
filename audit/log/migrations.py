"""Named, append-only schema migrations for the audit database (in the manner of simonw/llm).

Each migration is applied once, in order, and its name recorded in the ``migrations`` table in
the same transaction, so a crash can never leave a half-applied schema. Databases in the field
have already recorded the shipped names as applied: editing or reordering a shipped migration
would silently leave them on the old schema. Add a new migration at the end instead.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64

# (name, sql). Append only.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_records",
        """
        CREATE TABLE records (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            event TEXT NOT NULL,
            "user" TEXT NOT NULL,
            role TEXT NOT NULL,
            payload TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        """,
    ),
    (
        "m002_records_indexes",
        """
        CREATE INDEX records_ts ON records (ts);
        CREATE INDEX records_user_ts ON records ("user", ts);
        CREATE INDEX records_event_ts ON records (event, ts);
        """,
    ),
    (
        # Rows are never changed in place. The triggers do not stop someone with write access to
        # the file (they can drop them); they stop honest code and ad-hoc SQL from rewriting
        # history by accident. Deliberate tampering is what verify() and the signed checkpoints
        # are for.
        "m003_records_append_only",
        """
        CREATE TRIGGER records_no_update BEFORE UPDATE ON records
        BEGIN
            SELECT RAISE(ABORT, 'audit records are append-only: UPDATE is refused');
        END;
        CREATE TRIGGER records_no_delete BEFORE DELETE ON records
        BEGIN
            SELECT RAISE(ABORT, 'audit records are append-only: DELETE is refused');
        END;
        """,
    ),
    (
        # A buggy writer that skipped a number or linked to the wrong hash would break the chain
        # for good; refusing the insert keeps the damage to one failed append.
        "m004_records_insert_in_order",
        f"""
        CREATE TRIGGER records_insert_in_order BEFORE INSERT ON records
        WHEN NEW.seq IS NOT COALESCE((SELECT MAX(seq) FROM records), 0) + 1
          OR NEW.prev_hash IS NOT COALESCE(
                 (SELECT hash FROM records ORDER BY seq DESC LIMIT 1), '{GENESIS_HASH}')
        BEGIN
            SELECT RAISE(ABORT, 'audit records must extend the chain: wrong seq or prev_hash');
        END;
        """,
    ),
)


def split_statements(sql: str) -> list[str]:
    """Split a script into statements without breaking trigger bodies (which contain ';').

    ``Connection.executescript`` would do this, but it commits any open transaction first,
    which would split a migration from the row recording it.
    """
    statements: list[str] = []
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names already applied, oldest first (empty for a new database)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY rowid")]


def pending_migrations(conn: sqlite3.Connection) -> list[str]:
    done = set(applied_migrations(conn))
    return [name for name, _ in MIGRATIONS if name not in done]


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    """Apply every pending migration; return the names applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``). An up-to-date database is
    only read, so a read-only copy (a backup on write-protected media) still opens.
    """
    if not pending_migrations(conn):
        return []
    # IMMEDIATE takes the write lock before re-reading, so two processes opening a new
    # database at once cannot both apply the same migration.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = set(applied_migrations(conn))
        applied: list[str] = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            for statement in split_statements(sql):
                conn.execute(statement)
            applied_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, applied_at)
            )
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied
