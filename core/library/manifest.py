"""The manifest: which documents and chunks the index holds, and their hashes.

It is the source of truth: the vector store can be rebuilt from it, and a document whose row is
still ``pending`` after a crash is rolled back and re-ingested on the next run. A SQLite file in
the home by default; with ``database_url`` the ``clinrag_manifest`` schema of that PostgreSQL
database (the same tables: the SQL below is written to run on both).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.database import Database, SqliteDatabase, copy_tables, open_database
from core.errors import ClinragError
from core.migrations import Migration, apply_migrations, for_engine
from core.types import Chunk

# Append only (see core.migrations): every manifest in the field has recorded these names.
MIGRATIONS: tuple[Migration, ...] = (
    (
        # Also the baseline: a manifest holding these tables but no record of this migration
        # is adopted as it is rather than rebuilt.
        "001_documents_and_chunks",
        """
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
        """,
    ),
    (
        # What is found per chunk at ingest (core.recommendations); the document's own
        # metadata stays on its row. Chunks written before hold '{}' and are read as before.
        "002_chunk_metadata",
        "ALTER TABLE chunks ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';",
    ),
)


# Per engine; the manifest's SQL is portable, so both run the same named migrations.
MIGRATIONS_BY_ENGINE: dict[str, tuple[Migration, ...]] = {
    "sqlite": MIGRATIONS,
    "postgresql": MIGRATIONS,
}
SCHEMA = "clinrag_manifest"
# Parents first (chunks reference documents): the order a copy inserts them in.
TABLES: tuple[str, ...] = ("documents", "chunks", "meta")


def manifest_exists(path: Path, database_url: str | None) -> bool:
    """Whether there is a manifest to read: always on a server, else when its file exists."""
    return database_url is not None or path.is_file()


class _ManifestFile(SqliteDatabase):
    """The embedded manifest: a private WAL file with foreign keys on."""

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        conn = super().connect()
        if new:
            os.chmod(self.path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn


class Manifest:
    def __init__(
        self, path: Path, *, database_url: str | None = None, read_only: bool = False
    ) -> None:
        """``path``: the SQLite file, unless ``database_url`` names a server. ``read_only``:
        a copy (a backup) to read from, never written to."""
        self.path = path
        self.database: Database = (
            open_database(database_url, SCHEMA)
            if database_url is not None
            else SqliteDatabase(path, read_only=True)
            if read_only
            else _ManifestFile(path)
        )
        # One connection per thread: sqlite3 connections refuse use from another thread, and
        # one Index (inside one Assistant) serves every session thread of the app.
        self._local = threading.local()

    @property
    def _conn(self) -> Any:
        return getattr(self._local, "conn", None)

    @_conn.setter
    def _conn(self, value: Any) -> None:
        self._local.conn = value

    @property
    def conn(self) -> Any:
        if self._conn is None:
            conn = self.database.connect()
            try:
                apply_migrations(
                    conn,
                    for_engine(MIGRATIONS_BY_ENGINE, self.database),
                    baseline="001_documents_and_chunks",
                    database=self.database,
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.conn
        self.database.begin(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # reads
    def documents(self, state: str | None = "complete") -> list[dict[str, Any]]:
        sql = "SELECT * FROM documents" + (" WHERE state = ?" if state else "") + " ORDER BY doc_id"
        rows = self.conn.execute(sql, (state,) if state else ()).fetchall()
        return [_doc_row(r) for r in rows]

    def document(self, doc_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return _doc_row(row) if row else None

    def chunks(self, doc_ids: Iterable[str] | None = None) -> list[Chunk]:
        sql = (
            "SELECT c.*, d.title, d.sha256, d.source_path, d.metadata AS doc_metadata "
            "FROM chunks c JOIN documents d USING (doc_id) WHERE d.state = 'complete'"
        )
        params: list[str] = []
        if doc_ids is not None:
            ids = list(doc_ids)
            sql += f" AND c.doc_id IN ({','.join('?' * len(ids))})"
            params = ids
        rows = self.conn.execute(sql + " ORDER BY c.doc_id, c.ord", params).fetchall()
        return [_chunk_row(r) for r in rows]

    def chunks_by_id(self, ids: Sequence[str]) -> dict[str, Chunk]:
        out: dict[str, Chunk] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            rows = self.conn.execute(
                "SELECT c.*, d.title, d.sha256, d.source_path, d.metadata AS doc_metadata "
                "FROM chunks c JOIN documents d USING (doc_id) "
                f"WHERE c.chunk_id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            out.update((r["chunk_id"], _chunk_row(r)) for r in rows)
        return out

    def chunk_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks")}

    def index_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'index_version'").fetchone()
        return int(row[0])

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # writes (callers hold the writer lock)
    def set_meta(self, conn: Any, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def bump_version(self, conn: Any) -> None:
        conn.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
            "WHERE key = 'index_version'"
        )

    def mark_pending(self, doc: Any, now: str) -> None:
        self.mark_pending_many([doc], now)

    def mark_pending_many(self, docs: Sequence[Any], now: str) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?, 0, 'pending', ?, ?) "
                "ON CONFLICT(doc_id) DO UPDATE SET state = 'pending', "
                "source_path = excluded.source_path",
                [
                    (
                        doc.doc_id,
                        doc.source_path,
                        doc.sha256,
                        doc.title,
                        json.dumps(doc.metadata, sort_keys=True),
                        now,
                        json.dumps(doc.warnings),
                    )
                    for doc in docs
                ],
            )

    def complete(self, doc: Any, chunks: Sequence[Chunk], now: str) -> None:
        self.complete_many([(doc, chunks)], now)

    def complete_many(self, items: Sequence[tuple[Any, Sequence[Chunk]]], now: str) -> None:
        with self.transaction() as conn:
            for doc, chunks in items:
                self._complete(conn, doc, chunks, now)
            self.bump_version(conn)

    def _complete(self, conn: Any, doc: Any, chunks: Sequence[Chunk], now: str) -> None:
        conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.doc_id,))
        conn.executemany(
            "INSERT INTO chunks (chunk_id, doc_id, ord, text, section, page, char_start, "
            "char_end, ingested_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.chunk_id,
                    c.doc_id,
                    i,
                    c.text,
                    c.section,
                    c.page,
                    c.char_start,
                    c.char_end,
                    c.ingested_at,
                    json.dumps(
                        {k: v for k, v in c.metadata.items() if doc.metadata.get(k) != v},
                        sort_keys=True,
                    ),
                )
                for i, c in enumerate(chunks)
            ],
        )
        conn.execute(
            "UPDATE documents SET source_path = ?, sha256 = ?, title = ?, metadata = ?, "
            "n_chunks = ?, state = 'complete', ingested_at = ?, warnings = ? WHERE doc_id = ?",
            (
                doc.source_path,
                doc.sha256,
                doc.title,
                json.dumps(doc.metadata, sort_keys=True),
                len(chunks),
                now,
                json.dumps(doc.warnings),
                doc.doc_id,
            ),
        )

    def forget(self, doc_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
            conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
            self.bump_version(conn)

    def copy_into(self, target: Manifest) -> dict[str, int]:
        """Make ``target`` (on any engine) hold exactly this manifest's rows; rows per table.

        How a manifest kept in PostgreSQL is backed up to a SQLite file, and restored."""
        counts = copy_tables(self.conn, target.conn, target.database, TABLES)
        if isinstance(target.database, _ManifestFile):
            # A copy is one self-contained file (no -wal beside it), like the home's backups.
            target.conn.execute("PRAGMA journal_mode = DELETE")
        return counts


def _doc_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["metadata"] = json.loads(out["metadata"])
    out["warnings"] = json.loads(out["warnings"])
    return out


def _chunk_row(r: Any) -> Chunk:
    return Chunk(
        chunk_id=r["chunk_id"],
        doc_id=r["doc_id"],
        text=r["text"],
        title=r["title"],
        section=r["section"],
        page=r["page"],
        char_start=r["char_start"],
        char_end=r["char_end"],
        doc_sha256=r["sha256"],
        source_path=r["source_path"],
        ingested_at=r["ingested_at"],
        # the document's metadata, then what belongs to this chunk alone
        metadata=json.loads(r["doc_metadata"]) | json.loads(r["metadata"]),
    )


def read_stats(path: Path) -> dict[str, Any]:
    """Document, chunk and version counts of a manifest file, opened read-only.

    For copies (backups): nothing is written, so the file keeps the sha256 taken of it.
    Raises :class:`ClinragError` when the file is not a readable manifest.
    """
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:

        def one(sql: str) -> Any:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

        return {
            "documents": int(one("SELECT COUNT(*) FROM documents WHERE state = 'complete'") or 0),
            "pending_documents": int(
                one("SELECT COUNT(*) FROM documents WHERE state = 'pending'") or 0
            ),
            "chunks": int(
                one(
                    "SELECT COUNT(*) FROM chunks JOIN documents USING (doc_id) "
                    "WHERE state = 'complete'"
                )
                or 0
            ),
            "index_version": int(one("SELECT value FROM meta WHERE key = 'index_version'") or 0),
            "embedder_model": one("SELECT value FROM meta WHERE key = 'embedder_model'"),
            "embedder_hash": one("SELECT value FROM meta WHERE key = 'embedder_hash'"),
        }
    except sqlite3.Error as exc:
        raise ClinragError(
            f"The manifest {path} cannot be read ({exc}). It is not a clinrag manifest or it is "
            "damaged; restore it from an older backup."
        ) from exc
    finally:
        conn.close()
