"""The audit log's records in PostgreSQL (``database_url``), behind ``database.LogDatabase``.

The records table, its columns and the chain are exactly the SQLite log's, in the
``clinrag_audit`` schema; the signing key and the signed checkpoint files stay files, as with
SQLite (several hosts share them the way they share the key). Verifying needs no server: a
backup (:meth:`AuditLog.backup`) writes the records into a self-contained SQLite file that the
standard-library verifier checks against the copied checkpoints.

Why appends are serialised with an advisory lock and not a SERIALIZABLE transaction: an append
is more than its INSERT. The signed head checkpoint is written in two phases around the COMMIT
and the anchor is witnessed after it, all in commit order (see ``AuditLog._append_locked``).
A serializable transaction would stop two appends committing the same sequence number, but
it ends at COMMIT and its losers must retry; the session-scoped ``pg_advisory_lock`` spans
the whole append, makes the others wait instead of fail, and is released by the server when
a holder's connection dies, so a killed process cannot wedge the log. The insert-in-order
trigger and the primary key remain the last line: a writer that bypassed the lock would be
refused, never fork the chain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from audit.log.chain import GENESIS_HASH
from audit.log.database import COLUMNS, open_read_write

SCHEMA = "clinrag_audit"
_BATCH = 5000

# (name, sql), append only, under the same names as the SQLite log's migrations so the two
# schemas can be compared step by step.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_records",
        """
        CREATE TABLE records (
            seq BIGINT PRIMARY KEY,
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
        "m003_records_append_only",
        """
        CREATE FUNCTION records_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit records are append-only: % is refused', TG_OP;
        END
        $$;
        CREATE TRIGGER records_no_update BEFORE UPDATE OR DELETE ON records
            FOR EACH ROW EXECUTE FUNCTION records_refuse_change();
        CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
            FOR EACH STATEMENT EXECUTE FUNCTION records_refuse_change();
        """,
    ),
    (
        "m004_records_insert_in_order",
        f"""
        CREATE FUNCTION records_extend_chain() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            last_seq BIGINT;
            last_hash TEXT;
        BEGIN
            SELECT seq, hash INTO last_seq, last_hash FROM records ORDER BY seq DESC LIMIT 1;
            IF NEW.seq IS DISTINCT FROM COALESCE(last_seq, 0) + 1
               OR NEW.prev_hash IS DISTINCT FROM COALESCE(last_hash, '{GENESIS_HASH}') THEN
                RAISE EXCEPTION 'audit records must extend the chain: wrong seq or prev_hash';
            END IF;
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER records_insert_in_order BEFORE INSERT ON records
            FOR EACH ROW EXECUTE FUNCTION records_extend_chain();
        """,
    ),
)


class PostgresLog:
    """The records in the ``clinrag_audit`` schema of the server at ``url``."""

    local_folder: Path | None = None

    def __init__(self, url: str) -> None:
        from core.postgres import PostgresDatabase

        self.db = PostgresDatabase(url, SCHEMA)
        self.label = self.db.label
        self.errors = self.db.errors

    def exists(self) -> bool:
        # A server is always there to ask; an empty schema reads as a log with no records.
        return True

    def open_write(self) -> Any:
        from core.migrations import apply_migrations

        conn = self.db.connect()
        try:
            apply_migrations(conn, MIGRATIONS, database=self.db)
        except BaseException:
            conn.close()
            raise
        return conn

    def open_read(self) -> Any:
        return self.db.connect()

    def is_read_only_error(self, exc: BaseException) -> bool:
        return False

    def begin(self, conn: Any) -> None:
        self.db.begin(conn)

    def begin_snapshot(self, conn: Any) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def append_lock(self, conn: Any) -> AbstractContextManager[None]:
        return self.db.session_lock(conn, "append")

    def writers_paused(self) -> AbstractContextManager[None]:
        return self.db.lock("append")

    def has_records_table(self, conn: Any) -> bool:
        return self.db.table_exists(conn, "records")

    def scan(self, conn: Any) -> Iterator[tuple[Any, ...]]:
        return self.db.stream(conn, f"SELECT {COLUMNS} FROM records ORDER BY seq")

    def copy_to(self, conn: Any, dest: Path) -> None:
        target = open_read_write(dest)
        started = not conn.in_transaction
        try:
            if started:
                self.begin_snapshot(conn)
            target.execute("BEGIN IMMEDIATE")
            rows = self.scan(conn)
            insert = f"INSERT INTO records ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            while batch := [row for _, row in zip(range(_BATCH), rows, strict=False)]:
                target.executemany(insert, batch)
            target.execute("COMMIT")
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            if target.in_transaction:
                target.execute("ROLLBACK")
            target.close()
            if started and conn.in_transaction:
                with contextlib.suppress(*self.errors):
                    conn.execute("ROLLBACK")

    def load_from(self, src: Path) -> int:
        """Copy every record of the SQLite log ``src`` into this (empty) log; return how many.

        For a restore: the records go in unchanged, in seq order, under the append lock, so the
        chain and the restored checkpoint files describe the same log.
        """
        from audit.log.database import open_read_only

        source = open_read_only(src)
        conn = self.open_write()
        try:
            with self.append_lock(conn):
                self.begin(conn)
                if conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None:
                    conn.execute("ROLLBACK")
                    raise ValueError(f"the audit log at {self.label} already holds records")
                rows = source.execute(f"SELECT {COLUMNS} FROM records ORDER BY seq")
                count = self.db.copy_rows(conn, "records", _COLUMN_NAMES, rows)
                conn.execute("COMMIT")
            return count
        finally:
            conn.close()
            source.close()


_COLUMN_NAMES = ("seq", "ts", "event", '"user"', "role", "payload", "prev_hash", "hash")


def open_log_database(url: str) -> PostgresLog:
    return PostgresLog(url)
