"""The PostgreSQL adapter for ``core.database``: the one module that imports psycopg.

Each store keeps its tables in its own schema (``clinrag_audit``, ``clinrag_manifest``,
``clinrag_accounts``), so their ``migrations`` tables and names never meet. Connections are
autocommit, like the SQLite ones, and the stores' ``?`` placeholders are translated here.

Writes are serialised the way SQLite serialises them: :meth:`PostgresDatabase.begin` takes a
transaction-scoped advisory lock on the store's schema right after BEGIN, so a transaction
that reads and then writes (a lockout counter, the audit chain's head) sees no concurrent
writer, on any host. :meth:`PostgresDatabase.lock` is a session-scoped advisory lock for work
that spans more than one transaction (an audit append with its checkpoint, an ingest); the
server drops it when the holder's connection ends, so a killed process never leaves it held.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from core.database import DatabaseLockBusy, redact_url

CONNECT_TIMEOUT_S = 10


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, derived from names."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int(struct.unpack(">q", digest[:8])[0])


class Row(tuple[Any, ...]):
    """A result row readable by position and by column name, like ``sqlite3.Row``."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    names = tuple(column.name for column in cursor.description or ())
    row_type = type("Row", (Row,), {"_names": names, "__slots__": ()})

    def make(values: Sequence[Any]) -> Row:
        return row_type(values)

    return make


def _translate(sql: str) -> str:
    # The stores write sqlite's qmark style; psycopg wants %s and a literal % doubled.
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresConnection:
    """An autocommit psycopg connection behind the ``core.database.Connection`` protocol.

    ``BEGIN IMMEDIATE`` keeps its SQLite meaning, "take the write lock now": BEGIN, then the
    store's transaction-scoped advisory lock, so code written for SQLite's locking reads
    nothing another writer can change before it writes.
    """

    def __init__(self, conn: psycopg.Connection[Any], write_key: int) -> None:
        self.raw = conn
        self.write_key = write_key

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            self.raw.execute("BEGIN")
            return self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (self.write_key,))
        if parameters:
            return self.raw.execute(_translate(sql), tuple(parameters))
        # Without parameters psycopg sends the text as is, several statements included (the
        # migrations' function bodies hold ';').
        return self.raw.execute(sql)

    def executemany(self, sql: str, rows: Any, /) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_translate(sql), rows)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase:
    """One store's schema on a PostgreSQL server."""

    engine = "postgresql"
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)

    def __init__(self, url: str, schema: str) -> None:
        if not schema.replace("_", "").isalnum():
            raise ValueError(f"not a plain schema name: {schema!r}")
        self.url = url
        self.schema = schema
        self.label = f"{redact_url(url)} (schema {schema})"
        self._schema_ready = False

    def connect(self) -> PostgresConnection:
        raw = psycopg.connect(
            self.url,
            autocommit=True,
            row_factory=_row_factory,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="clinrag",
        )
        try:
            if not self._schema_ready:
                with contextlib.suppress(psycopg.errors.UniqueViolation):
                    # Two processes creating it at once: one wins, the other finds it.
                    raw.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                self._schema_ready = True
            raw.execute(f"SET search_path TO {self.schema}")
        except BaseException:
            raw.close()
            raise
        return PostgresConnection(raw, advisory_key(self.schema, "write"))

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def table_exists(self, conn: Any, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            (self.schema, name),
        ).fetchone()
        return row is not None

    def split_statements(self, sql: str) -> list[str]:
        return [sql]

    def migrations_table_sql(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, "
            "applied_at TEXT NOT NULL, position BIGSERIAL NOT NULL)"
        )

    def migration_order(self) -> str:
        return "position"

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = True) -> Iterator[None]:
        key = advisory_key(self.schema, "lock", name)
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="clinrag"
        )
        try:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if not row or not row[0]:
                    raise DatabaseLockBusy(f"{name} is held by another process ({self.label})")
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.close()

    @contextlib.contextmanager
    def session_lock(self, conn: PostgresConnection, name: str) -> Iterator[None]:
        """:meth:`lock` taken on ``conn`` itself (no second connection): for a lock taken
        often, around work done on that connection. Excludes holders of ``lock(name)``."""
        key = advisory_key(self.schema, "lock", name)
        conn.raw.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            if not conn.raw.closed:
                if conn.in_transaction:
                    conn.raw.execute("ROLLBACK")
                conn.raw.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def stream(
        self, conn: PostgresConnection, sql: str, batch: int = 10_000
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` through a server-side cursor, ``batch`` at a time: a million-row
        table is never held in memory at once. ``conn`` must be inside a transaction."""
        with conn.raw.cursor(name="clinrag_stream", row_factory=tuple_row) as cursor:
            cursor.itersize = batch
            cursor.execute(sql)
            yield from cursor

    def copy_rows(
        self, conn: PostgresConnection, table: str, columns: Sequence[str], rows: Any
    ) -> int:
        """Insert ``rows`` (tuples in ``columns`` order) with COPY; return how many."""
        count = 0
        names = ", ".join(columns)
        with (
            conn.raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
                count += 1
        return count


def open_database(url: str, schema: str) -> PostgresDatabase:
    return PostgresDatabase(url, schema)
