"""Opening the audit database: for appending, read-only for copies, and pausing its writers.

A log is read in more places than it is written: verified from a backup on write-protected
media, listed by the audit page while clinicians' answers are appended. The connection settings
that make both safe (WAL, full fsync on commit, migrations, the immutable fallback) live here
so the log and its verifier open the file the same way.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

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
