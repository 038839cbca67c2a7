"""Where a store's database lives: one connection protocol, one adapter module per engine.

clinrag's three databases (the audit log, the library manifest, the user accounts) are SQLite
files under CLINRAG_HOME by default. With ``database_url`` set to a PostgreSQL URL they live
there instead, each store in its own schema. The stores talk to either through the same small
protocol: :class:`Connection` (``execute`` with ``?`` placeholders, ``in_transaction``,
``close``; :class:`sqlite3.Connection` already is one) and :class:`Database` (how to open a
connection, start a write transaction, hold a lock across processes and hosts, and what its
errors are). :func:`open_database` picks the adapter by the URL's scheme from
:data:`ADAPTERS`; adding an engine is one module and one line there, not a branch in every
store.

Standard library only and free of other ``core`` imports, like ``core.migrations``: the audit
log uses it, and a SQLite log must stay verifiable with nothing but Python installed. Only the
PostgreSQL adapter (``core.postgres``) imports psycopg, and only when a URL names it.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.migrations import SqliteDialect

# Scheme -> adapter module; each module has ``open_database(url, schema) -> Database``.
ADAPTERS: dict[str, str] = {
    "postgresql": "core.postgres",
    "postgres": "core.postgres",
}


class DatabaseLockBusy(Exception):
    """A non-waiting :meth:`Database.lock` found the lock held by another process."""


class Cursor(Protocol):
    """What the stores read from ``Connection.execute``."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """An autocommit connection: the store says BEGIN/COMMIT itself (``Database.begin``).

    SQL uses ``?`` placeholders; the PostgreSQL adapter translates them.
    """

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class Database(Protocol):
    """One store's database on one engine.

    ``engine`` names the dialect (the key of a store's per-engine migrations); ``label`` says
    where the data is, for messages, without any password; ``errors`` are the exceptions that
    mean the database failed (caught where ``sqlite3.Error`` was); ``integrity_errors`` those
    of a violated constraint.
    """

    engine: str
    label: str
    errors: tuple[type[BaseException], ...]
    integrity_errors: tuple[type[BaseException], ...]

    def connect(self) -> Connection: ...

    def begin(self, conn: Connection) -> None:
        """Start a transaction that takes the write lock before its first read."""
        ...

    def table_exists(self, conn: Connection, name: str) -> bool: ...

    def split_statements(self, sql: str) -> list[str]: ...

    def migrations_table_sql(self, table: str) -> str: ...

    def migration_order(self) -> str:
        """The ORDER BY expression that lists applied migrations oldest first."""
        ...

    def lock(self, name: str, *, wait: bool = True) -> AbstractContextManager[None]:
        """Held by one process at a time on every host that shares this database.

        With ``wait=False`` a held lock raises :class:`DatabaseLockBusy` at once.
        """
        ...


def is_url(target: str | Path | None) -> bool:
    """True for ``scheme://...`` (a database server), False for a file path."""
    return isinstance(target, str) and "://" in target


def open_database(url: str, schema: str) -> Database:
    """The adapter for ``url``'s scheme, holding ``schema`` (one per store) on that server."""
    scheme = urlsplit(url).scheme.split("+", 1)[0].lower()
    module_name = ADAPTERS.get(scheme)
    if module_name is None:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"database_url scheme {scheme!r} is not supported (use one of: {known})")
    module = importlib.import_module(module_name)
    database: Database = module.open_database(url, schema)
    return database


def database_lock(url: str, name: str, *, wait: bool = True) -> AbstractContextManager[None]:
    """A lock named ``name`` held in the database at ``url``: one holder across all hosts.

    For work that spans transactions and must not run twice at once anywhere (the ingest
    writer when the stores are shared). Released when the context exits or the holder dies.
    With ``wait=False`` a held lock raises :class:`DatabaseLockBusy` at once.
    """
    return open_database(url, "clinrag_locks").lock(name, wait=wait)


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class SqliteDatabase(SqliteDialect):
    """A SQLite file: the embedded default. Connections are autocommit with a busy timeout."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    def __init__(
        self, path: Path, *, timeout: float = 30.0, rows: bool = True, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.timeout = timeout
        self.rows = rows
        # Read-only: a backup is read without changing a byte (its sha256 is recorded).
        self.read_only = read_only

    def connect(self) -> sqlite3.Connection:
        target = f"{self.path.resolve().as_uri()}?mode=ro" if self.read_only else str(self.path)
        conn = sqlite3.connect(
            target, timeout=self.timeout, isolation_level=None, uri=self.read_only
        )
        if self.rows:
            conn.row_factory = sqlite3.Row
        return conn

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = True) -> Iterator[None]:
        # A SQLite file serves one host, whose stores keep their own lock files (the ingest
        # writer's, the audit log's); a transaction needs only SQLite's own write lock.
        yield


def copy_tables(
    source: Connection, target: Connection, target_db: Database, tables: Sequence[str]
) -> dict[str, int]:
    """Make ``tables`` in ``target`` hold exactly ``source``'s rows; return rows per table.

    For backup and restore between engines: both sides already have the store's schema (its
    migrations ran), and columns are matched by name. One transaction under the target's
    write lock, so a failure leaves the target as it was. List parents before children.
    """
    counts: dict[str, int] = {}
    target_db.begin(target)
    try:
        for table in reversed(tables):
            target.execute(f"DELETE FROM {table}")
        for table in tables:
            cursor = source.execute(f"SELECT * FROM {table}")
            names = [str(column[0]) for column in cursor.description]
            columns = ", ".join(f'"{name}"' for name in names)
            marks = ", ".join("?" for _ in names)
            insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
            counts[table] = 0
            while rows := cursor.fetchmany(1000):
                target.executemany(insert, [tuple(row) for row in rows])  # type: ignore[attr-defined]
                counts[table] += len(rows)
        target.execute("COMMIT")
    except BaseException:
        if target.in_transaction:
            target.execute("ROLLBACK")
        raise
    return counts
