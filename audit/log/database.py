"""Opening the audit database: for appending, read-only for copies, and pausing its writers.

A log is read in more places than it is written: verified from a backup on write-protected
media, listed by the audit page while clinicians' answers are appended. The connection settings
that make both safe (WAL, full fsync on commit, migrations, the immutable fallback) live here
so the log and its verifier open the file the same way.

:class:`LogDatabase` is what the log and its verifier need from where the records are kept;
:class:`SqliteLog` (here, standard library only) is the default and ``audit.log.postgres``
keeps them in PostgreSQL. :func:`log_database` picks one; nothing else looks at the engine.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from audit.log.files import ensure_private_dir, exclusive_lock
from audit.log.migrations import apply_migrations

BUSY_TIMEOUT_S = 30.0


def is_read_only_error(exc: sqlite3.Error) -> bool:
    """True when SQLite refused because it may not write (file, folder or media read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return True
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def open_read_write(db_path: Path) -> sqlite3.Connection:
    """A connection for appending, with the schema brought up to date."""
    ensure_private_dir(db_path.parent)
    if not db_path.exists():
        # SQLite gives its -wal and -shm files the main file's mode, so creating the main
        # file owner-only first makes all three private regardless of the umask.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(
        str(db_path),
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        try:
            # WAL lets readers (verify, the audit UI) run while clinicians' answers are
            # appended; FULL makes each commit durable before the answer is shown.
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            # A read-only rollback-journal file (a backup) still reads fine.
            if not is_read_only_error(exc):
                raise
        conn.execute("PRAGMA synchronous = FULL")
        apply_migrations(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def open_read_only(db_path: Path) -> sqlite3.Connection:
    """A connection that never writes, for verifying a copy on write-protected storage.

    A WAL database needs a writable folder for its -shm file even to be read. When that is
    impossible and no -wal file holds unmerged commits, the main file alone is the whole log,
    so it can be opened as immutable.
    """
    uri = db_path.resolve().as_uri()
    conn = sqlite3.connect(
        uri + "?mode=ro",
        uri=True,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        wal = Path(str(db_path) + "-wal")
        if not is_read_only_error(exc) or (wal.exists() and wal.stat().st_size > 0):
            raise
    return sqlite3.connect(
        uri + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
    )


@contextlib.contextmanager
def writers_paused(db_path: Path, lock_path: Path) -> Iterator[None]:
    """No append is in flight while inside: neither one of ours nor any other SQLite writer.

    Used to read the database and its checkpoint files as one consistent snapshot.
    """
    with exclusive_lock(lock_path, create=False), _sqlite_writers_paused(db_path):
        yield


@contextlib.contextmanager
def _sqlite_writers_paused(db_path: Path) -> Iterator[None]:
    try:
        lock = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error:
        yield
        return
    try:
        try:
            lock.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # A read-only copy (a backup on write-protected media) has no writers to pause.
            if not is_read_only_error(exc):
                raise
        yield
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()


# Every record column, in the order the chain hashes them.
COLUMNS = 'seq, ts, event, "user", role, payload, prev_hash, hash'


class LogDatabase(Protocol):
    """Where an audit log's records are kept, as the log and its verifier use it.

    Connections follow ``core.database.Connection`` (``?`` placeholders, autocommit).
    """

    label: str
    errors: tuple[type[BaseException], ...]
    local_folder: Path | None
    """The folder the records live in on this machine (checked for free space), if any."""

    def exists(self) -> bool: ...

    def open_write(self) -> Any:
        """A connection for appending, with the schema brought up to date."""
        ...

    def open_read(self) -> Any:
        """A connection that never writes (for copies on write-protected media)."""
        ...

    def is_read_only_error(self, exc: BaseException) -> bool: ...

    def begin(self, conn: Any) -> None:
        """Start a transaction holding the write lock from its first statement."""
        ...

    def begin_snapshot(self, conn: Any) -> None:
        """Start a read transaction whose reads all see one moment of the log."""
        ...

    def append_lock(self, conn: Any) -> AbstractContextManager[None]:
        """Serialises appends, checkpoint writes included, across every process and host."""
        ...

    def writers_paused(self) -> AbstractContextManager[None]:
        """No append is in flight while inside (for a consistent snapshot)."""
        ...

    def has_records_table(self, conn: Any) -> bool: ...

    def scan(self, conn: Any) -> Iterator[tuple[Any, ...]]:
        """Every record's columns (:data:`COLUMNS`) in seq order, as text or bytes, streamed."""
        ...

    def copy_to(self, conn: Any, dest: Path) -> None:
        """Write every record into a new self-contained SQLite file ``dest`` (it exists, empty)."""
        ...

    def load_from(self, src: Path) -> int:
        """Copy every record of the SQLite log ``src`` into this empty log (a restore)."""
        ...


class SqliteLog:
    """The embedded default: records in one SQLite file, appends serialised by a lock file."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, db_path: Path, lock_path: Path) -> None:
        self.db_path = Path(db_path)
        self.lock_path = Path(lock_path)
        self.label = str(self.db_path)
        self.local_folder: Path | None = self.db_path.parent

    def exists(self) -> bool:
        return self.db_path.exists()

    def open_write(self) -> sqlite3.Connection:
        return open_read_write(self.db_path)

    def open_read(self) -> sqlite3.Connection:
        return open_read_only(self.db_path)

    def is_read_only_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and is_read_only_error(exc)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def begin_snapshot(self, conn: Any) -> None:
        # Deferred: the WAL snapshot is fixed by the first read, taken with writers paused.
        conn.execute("BEGIN")

    def append_lock(self, conn: Any) -> AbstractContextManager[None]:
        return exclusive_lock(self.lock_path, create=True)

    def writers_paused(self) -> AbstractContextManager[None]:
        return writers_paused(self.db_path, self.lock_path)

    def has_records_table(self, conn: Any) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
        ).fetchone()
        return row is not None

    def scan(self, conn: Any) -> Iterator[tuple[Any, ...]]:
        # Text columns come back as bytes so an edit that leaves invalid UTF-8 is reported as
        # tampering rather than crashing the decoder.
        return iter(
            conn.execute(
                'SELECT seq, CAST(ts AS BLOB), CAST(event AS BLOB), CAST("user" AS BLOB), '
                "CAST(role AS BLOB), CAST(payload AS BLOB), CAST(prev_hash AS BLOB), "
                "CAST(hash AS BLOB) FROM records ORDER BY seq"
            )
        )

    def copy_to(self, conn: Any, dest: Path) -> None:
        target = sqlite3.connect(str(dest), isolation_level=None)
        try:
            conn.backup(target)
            # A backup is a single self-contained file: no -wal needed to read it, so it can
            # be archived or put on write-protected media as it is.
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()

    def load_from(self, src: Path) -> int:
        if self.db_path.exists():
            raise ValueError(f"the audit log {self.db_path} already exists")
        ensure_private_dir(self.db_path.parent)
        os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        source = open_read_only(src)
        try:
            target = sqlite3.connect(str(self.db_path), isolation_level=None)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode = WAL")
                check = str(target.execute("PRAGMA quick_check").fetchone()[0])
                count = int(target.execute("SELECT COUNT(*) FROM records").fetchone()[0])
            finally:
                target.close()
        finally:
            source.close()
        if check != "ok":
            raise sqlite3.DatabaseError(f"the restored log fails SQLite's integrity check: {check}")
        return count


def log_database(db_path: Path, lock_path: Path, url: str | None = None) -> LogDatabase:
    """Where the log's records are: the SQLite file ``db_path``, or the server at ``url``."""
    if url is None:
        return SqliteLog(db_path, lock_path)
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    module_name = LOG_ADAPTERS.get(scheme)
    if module_name is None:
        raise ValueError(f"database_url scheme {scheme!r} is not supported for the audit log")
    # Imported only for a URL: the adapter needs the database driver, a SQLite log does not.
    database: LogDatabase = importlib.import_module(module_name).open_log_database(url)
    return database


# URL scheme -> adapter module with ``open_log_database(url) -> LogDatabase``.
LOG_ADAPTERS: dict[str, str] = {
    "postgresql": "audit.log.postgres",
    "postgres": "audit.log.postgres",
}
