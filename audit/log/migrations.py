"""The audit database's schema, as named, append-only migrations run by ``core.migrations``.

Databases in the field have already recorded these names as applied: editing, renaming or
reordering a shipped migration would silently leave them on the old schema. Add a new migration
at the end instead (see ``core.migrations`` for the rules).
"""

from __future__ import annotations

import sqlite3

from audit.log.chain import GENESIS_HASH

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


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    """Bring the audit database up to date; return the names applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``). An up-to-date database is
    only read, so a read-only copy (a backup on write-protected media) still opens.
    """
    # Imported here, not at the top: only opening a database for writing needs the runner, so
    # an auditor who copies just audit/log to another machine can still import it and verify.
    from core.migrations import apply_migrations as run

    return run(conn, MIGRATIONS)
