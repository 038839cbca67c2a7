"""Named, append-only schema migrations for every SQLite store (in the manner of simonw/llm).

One runner for the audit log, the library manifest and the users store. Each store keeps its own
list of ``(name, sql)`` pairs; every pending migration is applied in order and its name recorded
in a ``migrations`` table in the same transaction as its statements, so a crash (or a failing
statement) never leaves a half-applied schema: the database stays at the last version that was
fully applied.

Editing, renaming, reordering or removing a shipped migration is forbidden. Databases in the
field have already recorded its name as applied and will never run it again, so an edit would
silently leave them on the old schema while new databases get the new one, and the two could
no longer be told apart. Change a schema by appending a new migration at the end.

One runner for both engines too: the engine's :class:`core.database.Database` says how to open
the write transaction, split a script and find a table. A store whose SQL differs between
engines keeps one list per engine (``{"sqlite": [...], "postgresql": [...]}``, see
:func:`for_engine`), each named and append-only under the same rules.

Standard library only and free of other ``core`` imports: the audit log, which must import with
nothing but Python installed, uses it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.database import Database

Migration = tuple[str, str]
"""``(name, sql)``: the name is recorded once applied; ``sql`` may hold several statements."""

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CREATE_TABLE_RE = re.compile(
    r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[\"`\[]?(\w+)", re.IGNORECASE
)


class MigrationError(sqlite3.DatabaseError):
    """The database's schema is neither one this code created nor one it can upgrade.

    A ``sqlite3.DatabaseError`` so that the stores' existing handling of an unusable database
    (for the audit log: refuse to answer) applies unchanged.
    """


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


class SqliteDialect:
    """SQLite's side of the runner (the default). ``core.database.SqliteDatabase`` inherits it;
    it lives here so the audit log can run migrations without importing that module."""

    engine = "sqlite"

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def table_exists(self, conn: Any, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def split_statements(self, sql: str) -> list[str]:
        return split_statements(sql)

    def migrations_table_sql(self, table: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )

    def migration_order(self) -> str:
        return "rowid"


_SQLITE: Any = SqliteDialect()


def for_engine(
    by_engine: Mapping[str, Sequence[Migration]], database: Database
) -> Sequence[Migration]:
    """The store's migrations for ``database``'s engine."""
    try:
        return by_engine[database.engine]
    except KeyError:
        raise ValueError(f"this store has no migrations for {database.engine}") from None


def applied_migrations(
    conn: Any, *, table: str = "migrations", database: Database | None = None
) -> list[str]:
    """Names already applied, oldest first (empty for a new database)."""
    _check_identifier(table)
    db = _SQLITE if database is None else database
    if not db.table_exists(conn, table):
        return []
    order = db.migration_order()
    return [str(row[0]) for row in conn.execute(f"SELECT name FROM {table} ORDER BY {order}")]


def pending_migrations(
    conn: Any,
    migrations: Sequence[Migration],
    *,
    table: str = "migrations",
    database: Database | None = None,
) -> list[str]:
    """Names in ``migrations`` not yet applied to ``conn``, in the order they will run."""
    done = set(applied_migrations(conn, table=table, database=database))
    return [name for name, _ in migrations if name not in done]


def apply_migrations(
    conn: Any,
    migrations: Sequence[Migration],
    *,
    table: str = "migrations",
    baseline: str | None = None,
    database: Database | None = None,
) -> list[str]:
    """Apply every pending migration in one transaction; return the names applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no transaction open:
    the runner owns the transaction. An up-to-date database is only read, so a read-only copy
    (a backup on write-protected media) still opens.

    ``baseline`` names the first migration of a store whose earlier code created its tables
    without recording anything. A database that has no migration recorded but already holds
    every table the baseline creates was made by that code: the baseline is recorded as
    applied without being run (running it would fail on the existing tables, and dropping
    them would lose the data), and later migrations run as usual. A database holding only
    some of those tables is refused rather than guessed at.

    Migrations must not contain statements SQLite refuses inside a transaction (``VACUUM``,
    ``PRAGMA journal_mode``); ``PRAGMA foreign_keys`` is silently ignored there.
    ``database`` is the engine ``conn`` belongs to (default: SQLite).
    """
    db = _SQLITE if database is None else database
    _check_identifier(table)
    names = [name for name, _ in migrations]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate migration names in {names}")
    if baseline is not None and (not names or names[0] != baseline):
        raise ValueError(f"baseline {baseline!r} must be the first migration, not {names[:1]}")
    if getattr(conn, "isolation_level", None) is not None or conn.in_transaction:
        raise ValueError("apply_migrations needs an autocommit connection outside a transaction")
    if not pending_migrations(conn, migrations, table=table, database=db):
        return []
    # The write lock is taken before re-reading (SQLite's BEGIN IMMEDIATE, PostgreSQL's
    # advisory lock), so two processes opening a new database at once cannot both apply the
    # same migration.
    db.begin(conn)
    try:
        conn.execute(db.migrations_table_sql(table))
        done = set(applied_migrations(conn, table=table, database=db))
        if not done and baseline is not None and _baseline_present(conn, migrations[0][1], db):
            _record(conn, table, baseline)
            done.add(baseline)
        applied: list[str] = []
        for name, sql in migrations:
            if name in done:
                continue
            for statement in db.split_statements(sql):
                conn.execute(statement)
            _record(conn, table, name)
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied


def _record(conn: Any, table: str, name: str) -> None:
    applied_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    conn.execute(f"INSERT INTO {table} (name, applied_at) VALUES (?, ?)", (name, applied_at))


def _baseline_present(conn: Any, sql: str, db: Database) -> bool:
    """True when every table the baseline creates exists; False when none does."""
    tables = _CREATE_TABLE_RE.findall(sql)
    if not tables:
        raise ValueError("a baseline migration must create at least one table")
    present = [name for name in tables if db.table_exists(conn, name)]
    if present and len(present) < len(tables):
        missing = sorted(set(tables) - set(present))
        raise MigrationError(
            f"the database has tables {sorted(present)} but not {missing} and records no "
            "migrations: it was not made by this program; restore it from a backup"
        )
    return bool(present)


def _check_identifier(name: str) -> None:
    # The table name is put into SQL text (placeholders cannot name a table).
    if not _IDENTIFIER_RE.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
