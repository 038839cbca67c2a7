"""The one schema-migration runner (core.migrations) and the stores that use it.

Databases already in the field were made by earlier code, so each store is also opened here on
a database built with its old schema (the old CREATE statements are copied in verbatim, as the
field has them) and must come up with its data intact and its migration names recorded.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from core.config import Settings, ensure_home
from core.migrations import (
    Migration,
    MigrationError,
    applied_migrations,
    apply_migrations,
    pending_migrations,
    split_statements,
)

# --------------------------------------------------------------------------- helpers


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=30)


def schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return sorted(
        (str(row[0]), str(row[1]))
        for row in conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )
    )


def recorded(path: Path, table: str = "migrations") -> list[str]:
    conn = connect(path)
    try:
        return [str(r[0]) for r in conn.execute(f"SELECT name FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


NOTES: tuple[Migration, ...] = (
    ("001_notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"),
    (
        "002_notes_append_only",
        """
        CREATE TRIGGER notes_no_delete BEFORE DELETE ON notes
        BEGIN
            SELECT RAISE(ABORT, 'notes are append-only; DELETE is refused');
        END;
        CREATE INDEX notes_body ON notes (body);
        """,
    ),
)


# --------------------------------------------------------------------------- the runner


def test_applies_in_order_once_and_records_names(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite")
    assert pending_migrations(conn, NOTES) == ["001_notes", "002_notes_append_only"]
    assert apply_migrations(conn, NOTES) == ["001_notes", "002_notes_append_only"]
    assert apply_migrations(conn, NOTES) == []
    assert applied_migrations(conn) == ["001_notes", "002_notes_append_only"]
    assert all(r[0] for r in conn.execute("SELECT applied_at FROM migrations"))
    # The trigger body's own ';' did not split it: the trigger works.
    conn.execute("INSERT INTO notes (body) VALUES ('x')")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM notes")


def test_a_new_migration_runs_on_an_existing_database(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite")
    apply_migrations(conn, NOTES[:1])
    conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    assert apply_migrations(conn, NOTES) == ["002_notes_append_only"]
    assert [r[0] for r in conn.execute("SELECT body FROM notes")] == ["kept"]


def test_custom_table_name(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite")
    apply_migrations(conn, NOTES, table="schema_history")
    assert applied_migrations(conn, table="schema_history") == [name for name, _ in NOTES]
    assert applied_migrations(conn) == []
    with pytest.raises(ValueError, match="identifier"):
        apply_migrations(conn, NOTES, table="x; DROP TABLE notes")


def test_up_to_date_database_is_only_read(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    conn = connect(path)
    apply_migrations(conn, NOTES)
    conn.close()
    read_only = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, isolation_level=None)
    assert apply_migrations(read_only, NOTES) == []
    read_only.close()


@pytest.mark.parametrize("already", [0, 1])
def test_failing_migration_leaves_no_partial_schema(tmp_path: Path, already: int) -> None:
    path = tmp_path / "a.sqlite"
    conn = connect(path)
    apply_migrations(conn, NOTES[:already])
    before = schema(conn)
    broken: Sequence[Migration] = (
        *NOTES,
        (
            "003_broken",
            "CREATE TABLE tags (name TEXT); CREATE INDEX tags_name ON tags (name); "
            "INSERT INTO no_such_table VALUES (1);",
        ),
    )
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        apply_migrations(conn, broken)
    assert not conn.in_transaction
    conn.close()
    conn = connect(path)  # what a fresh process sees
    assert schema(conn) == before
    assert applied_migrations(conn) == [name for name, _ in NOTES[:already]]
    # Once fixed (a new migration, never an edit of a shipped one), it applies cleanly.
    fixed = (*NOTES, ("003_tags", "CREATE TABLE tags (name TEXT);"))
    assert apply_migrations(conn, fixed) == [name for name, _ in fixed[already:]]


def test_refuses_bad_input(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite")
    with pytest.raises(ValueError, match="duplicate"):
        apply_migrations(conn, (NOTES[0], NOTES[0]))
    with pytest.raises(ValueError, match="baseline"):
        apply_migrations(conn, NOTES, baseline="002_notes_append_only")
    implicit = sqlite3.connect(tmp_path / "b.sqlite")  # default: sqlite3 opens transactions
    with pytest.raises(ValueError, match="autocommit"):
        apply_migrations(implicit, NOTES)
    implicit.close()
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1;")
    assert schema(conn) == []


def test_concurrent_openers_apply_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        conn = connect(path)
        try:
            start.wait()
            results.append(apply_migrations(conn, NOTES))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(name for applied in results for name in applied) == [n for n, _ in NOTES]
    assert recorded(path) == [name for name, _ in NOTES]


# --------------------------------------------------------------------------- baseline adoption


def test_baseline_adopts_tables_made_before_migrations_were_recorded(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    conn = connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.execute("INSERT INTO notes (body) VALUES ('old')")
    assert apply_migrations(conn, NOTES, baseline="001_notes") == ["002_notes_append_only"]
    assert applied_migrations(conn) == ["001_notes", "002_notes_append_only"]
    assert [r[0] for r in conn.execute("SELECT body FROM notes")] == ["old"]


def test_baseline_runs_normally_on_a_new_database(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.sqlite")
    assert apply_migrations(conn, NOTES, baseline="001_notes") == [n for n, _ in NOTES]


def test_baseline_refuses_a_database_with_only_some_of_its_tables(tmp_path: Path) -> None:
    two_tables: tuple[Migration, ...] = (
        ("001_base", 'CREATE TABLE a (x); CREATE TABLE IF NOT EXISTS "b" (y);'),
    )
    conn = connect(tmp_path / "a.sqlite")
    conn.execute("CREATE TABLE a (x)")
    with pytest.raises(MigrationError, match=r"not \['b'\]"):
        apply_migrations(conn, two_tables, baseline="001_base")
    assert schema(conn) == [("table", "a")]


# --------------------------------------------------------------------------- the stores

# The manifest schema exactly as every earlier clinrag created it, including its own
# migrations table (core/library/manifest.py before core.migrations).
OLD_MANIFEST_SCHEMA = """
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    source_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    title TEXT NOT NULL,
    metadata TEXT NOT NULL,
    n_chunks INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'complete')),
    ingested_at TEXT NOT NULL,
    warnings TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE chunks (
    chunk_id TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    ord INTEGER NOT NULL,
    text TEXT NOT NULL,
    section TEXT NOT NULL,
    page INTEGER,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE INDEX chunks_doc ON chunks(doc_id, ord);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('index_version', '0');
"""
OLD_MANIFEST_MIGRATIONS = "CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT)"


def make_old_manifest(path: Path, *, with_migrations_table: bool) -> None:
    conn = connect(path)
    conn.executescript(OLD_MANIFEST_SCHEMA)
    if with_migrations_table:
        conn.execute(OLD_MANIFEST_MIGRATIONS)
        conn.execute("INSERT INTO migrations VALUES ('001_documents_and_chunks', datetime('now'))")
    conn.execute(
        "INSERT INTO documents VALUES ('doc1', 'guides/htn.pdf', 'abc123', 'Hypertension', "
        "'{\"year\": \"2024\"}', 1, 'complete', '2026-01-02T03:04:05Z', '[\"scanned page\"]')"
    )
    conn.execute(
        "INSERT INTO chunks VALUES ('doc1:0', 'doc1', 0, 'Start an ACE inhibitor.', 'Treatment', "
        "3, 0, 23, '2026-01-02T03:04:05Z')"
    )
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'index_version'")
    conn.close()


@pytest.mark.parametrize("with_migrations_table", [True, False])
def test_manifest_opens_a_database_made_by_the_old_code(
    tmp_path: Path, with_migrations_table: bool
) -> None:
    from core.library.manifest import MIGRATIONS, Manifest

    path = tmp_path / "manifest.sqlite"
    make_old_manifest(path, with_migrations_table=with_migrations_table)
    manifest = Manifest(path)
    try:
        assert manifest.index_version() == 7  # the baseline's INSERT did not run again
        [doc] = manifest.documents()
        assert (doc["doc_id"], doc["title"], doc["metadata"], doc["warnings"]) == (
            "doc1",
            "Hypertension",
            {"year": "2024"},
            ["scanned page"],
        )
        [chunk] = manifest.chunks()
        assert (chunk.chunk_id, chunk.text, chunk.page, chunk.title) == (
            "doc1:0",
            "Start an ACE inhibitor.",
            3,
            "Hypertension",
        )
    finally:
        manifest.close()
    assert recorded(path) == [name for name, _ in MIGRATIONS]
    assert MIGRATIONS[0][0] == "001_documents_and_chunks"
    assert chunk.metadata == {"year": "2024"}  # no chunk metadata yet: read as before


def test_manifest_new_database_records_its_migrations(tmp_path: Path) -> None:
    from core.library.manifest import MIGRATIONS, Manifest

    manifest = Manifest(tmp_path / "manifest.sqlite")
    assert manifest.index_version() == 0 and manifest.documents() == []
    manifest.close()
    assert recorded(tmp_path / "manifest.sqlite") == [name for name, _ in MIGRATIONS]


# The users table exactly as services/accounts.py created it before core.migrations: no
# migrations table, and IF NOT EXISTS run on every connection.
OLD_USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('clinician', 'auditor', 'admin')),
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_login TEXT,
    failed_count INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT
)
"""


def test_users_store_opens_a_database_made_by_the_old_code(settings: Settings) -> None:
    from argon2 import PasswordHasher

    from services.accounts import authenticate, get_user, list_users, users_path

    ensure_home(settings)
    path = users_path(settings)
    conn = connect(path)
    conn.execute(OLD_USERS_SCHEMA)
    conn.execute(
        "INSERT INTO users (username, password_hash, role, disabled, created_at, failed_count) "
        "VALUES (?, ?, 'clinician', 0, '2026-01-02T03:04:05+00:00', 2)",
        ("carol", PasswordHasher().hash("a-long-password")),
    )
    conn.execute(
        "INSERT INTO users (username, password_hash, role, disabled, created_at) "
        "VALUES ('olduser', '!sso-only', 'auditor', 1, '2025-05-05T00:00:00+00:00')"
    )
    conn.close()

    assert [(u.username, u.role, u.disabled) for u in list_users(settings)] == [
        ("carol", "clinician", False),
        ("olduser", "auditor", True),
    ]
    old = get_user(settings, "olduser")
    assert old is not None and old.created_at == "2025-05-05T00:00:00+00:00"
    user = authenticate(settings, "carol", "a-long-password")
    assert user is not None and user.role == "clinician"
    assert recorded(path) == ["001_users", "002_must_change_password"]


def test_users_store_new_database_records_its_migration(settings: Settings) -> None:
    from services.accounts import add_user, users_path

    add_user(settings, "dave", "a-long-password", "auditor")
    assert recorded(users_path(settings)) == ["001_users", "002_must_change_password"]
