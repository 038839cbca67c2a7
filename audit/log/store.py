"""The tamper-evident audit log: an append-only, hash-chained SQLite table plus signed checkpoints.

Every record carries ``hash = sha256(canonical JSON of {seq, ts, event, user, role, payload,
prev_hash})``, so changing, removing or reordering a row breaks the chain. A chain alone cannot
show that its tail was cut off, nor that the whole thing was rebuilt with recomputed hashes, so
after each append the head ``(seq, hash)`` is written to a checkpoint file signed with an HMAC
key that lives outside the database, and every ``checkpoint_every`` records a signed line is
added to a history file. Someone who can edit the database but not read the key can no longer
produce a log that verifies.

What this cannot catch: an attacker holding the key, or one who rolls the database, the
checkpoint and the history back together to an older genuine copy. Ship the history file to
write-once or remote storage when that matters.

Standard library only, so a log can be verified on any machine with Python.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.log.errors import (
    AuditKeyError,
    AuditLogError,
    AuditPayloadError,
    AuditReadError,
    AuditWriteError,
)
from audit.log.migrations import GENESIS_HASH, apply_migrations

if os.name == "posix":
    import fcntl
else:  # pragma: no cover - Windows
    import msvcrt

BUSY_TIMEOUT_S = 30.0
KEY_BYTES = 32
MIN_KEY_BYTES = 16
# Refuse to start an answer when less than this is free: SQLite needs room for the WAL frame,
# and failing before the model runs is kinder than withholding a finished answer.
MIN_FREE_BYTES = 1 << 20
MAX_NAME_CHARS = 256
EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

_COLUMNS = 'seq, ts, event, "user", role, payload, prev_hash, hash'


# --------------------------------------------------------------------------- hashing helpers


def canonical_json(obj: Any) -> str:
    """The one serialisation that is hashed and stored; changing it would break every log."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(
    seq: int, ts: str, event: str, user: str, role: str, payload: Any, prev_hash: str
) -> str:
    """sha256 hex of the canonical JSON of a record's fields (``payload`` as an object)."""
    body = canonical_json(
        {
            "seq": seq,
            "ts": ts,
            "event": event,
            "user": user,
            "role": role,
            "payload": payload,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def checkpoint_mac(key: bytes, kind: str, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 over the checkpoint's fields; ``kind`` stops a head line passing as history."""
    message = canonical_json({"kind": kind, **{k: v for k, v in fields.items() if k != "mac"}})
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def utc_timestamp(moment: datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-28T03:12:45.123Z.

    Fixed width, so timestamps sort and compare correctly as text in SQL.
    """
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def default_checkpoint_path(db_path: Path) -> Path:
    """The checkpoint beside a database by convention: ``a.sqlite`` -> ``a.checkpoint.json``."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".checkpoint.json")


def history_path_for(checkpoint_path: Path) -> Path:
    """The signed checkpoint history next to a head checkpoint: ``<stem>.history.jsonl``."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".history.jsonl")


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Record:
    """One audit event as stored. ``payload`` is the parsed canonical JSON."""

    seq: int
    ts: str
    event: str
    user: str
    role: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            seq=int(data["seq"]),
            ts=str(data["ts"]),
            event=str(data["event"]),
            user=str(data["user"]),
            role=str(data["role"]),
            payload=dict(data["payload"]),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
        )

    def computed_hash(self) -> str:
        """The hash this record should carry; differs from ``hash`` if it was altered."""
        return record_hash(
            self.seq, self.ts, self.event, self.user, self.role, self.payload, self.prev_hash
        )


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`.

    ``first_bad_seq`` is the lowest record that can no longer be trusted (None when the log is
    fine, or when the problem is not tied to one record, e.g. a forged checkpoint).
    """

    ok: bool
    count: int
    first_bad_seq: int | None
    reason: str

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Checkpoint:
    seq: int
    hash: str
    ts: str
    fields: dict[str, Any]


class _Failure(Exception):
    """Internal: stops verification at the first problem with its seq and reason."""

    def __init__(self, first_bad_seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.first_bad_seq = first_bad_seq
        self.reason = reason


# --------------------------------------------------------------------------- file helpers


def _ensure_private_dir(path: Path) -> None:
    # Only folders we create get 0o700; tightening an existing folder the admin chose
    # (a shared home, a mounted volume) is not ours to do.
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    # mkdir(parents=True) would give the intermediate folders the default mode.
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring the old checkpoint back
    # (which verify would rightly report as stale). Windows cannot open a directory.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _atomic_write(path: Path, data: bytes) -> None:
    """tmp file + fsync + os.replace: readers see the old file or the new one, never half."""
    _ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _is_read_only_error(exc: sqlite3.Error) -> bool:
    """True when SQLite refused because it may not write (file, folder or media read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return True
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _open_read_only(db_path: Path) -> sqlite3.Connection:
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
        if not _is_read_only_error(exc) or (wal.exists() and wal.stat().st_size > 0):
            raise
    return sqlite3.connect(
        uri + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
    )


# --------------------------------------------------------------------------- the log


class AuditLog:
    """Append-only audit log in SQLite with a hash chain and HMAC-signed checkpoints.

    Construction is cheap and touches nothing; the database, the signing key and the
    checkpoint files are created on first use. Safe to share between threads (one lock) and
    between processes (SQLite's write lock serialises appends and their checkpoint writes).
    """

    def __init__(
        self,
        db_path: Path,
        checkpoint_path: Path,
        key_path: Path,
        checkpoint_every: int = 100,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.db_path = Path(db_path)
        self.checkpoint_path = Path(checkpoint_path)
        self.history_path = history_path_for(self.checkpoint_path)
        self.key_path = Path(key_path)
        # Serialises appends across processes past their COMMIT: the head checkpoint is
        # finalised after the record commits, in commit order.
        self.lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        self.checkpoint_every = int(checkpoint_every)
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._conn_read_only = False
        self._key: bytes | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.db_path)!r})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._conn_pid = None

    # ------------------------------------------------------------------ connections and key

    def _connection(self, *, write: bool = False) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid == os.getpid():
            if not (write and self._conn_read_only):
                return self._conn
            # Permissions may have been fixed since a read fell back to a read-only handle;
            # an append must retry the real thing rather than fail on a stale handle.
            self._conn.close()
            self._conn = None
        if self._conn is not None:
            # Inherited through fork: SQLite connections must not cross a fork. Keep the
            # object alive (closing it here could disturb the parent's locks) and open anew.
            _FORKED_CONNECTIONS.append(self._conn)
            self._conn = None
        try:
            conn, read_only = self._open_read_write(), False
        except sqlite3.OperationalError as exc:
            if write or not _is_read_only_error(exc):
                raise
            conn, read_only = _open_read_only(self.db_path), True
        self._conn = conn
        self._conn_pid = os.getpid()
        self._conn_read_only = read_only
        return conn

    def _open_read_write(self) -> sqlite3.Connection:
        _ensure_private_dir(self.db_path.parent)
        if not self.db_path.exists():
            # SQLite gives its -wal and -shm files the main file's mode, so creating the main
            # file owner-only first makes all three private regardless of the umask.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(
            str(self.db_path),
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
                if not _is_read_only_error(exc):
                    raise
            conn.execute("PRAGMA synchronous = FULL")
            apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _signing_key(self, *, create: bool) -> bytes | None:
        if self._key is not None:
            return self._key
        data = _read_optional(self.key_path)
        if data is None:
            if not create:
                return None
            data = self._create_key()
        if len(data) < MIN_KEY_BYTES:
            raise AuditKeyError(
                f"The audit signing key at {self.key_path} is damaged ({len(data)} bytes). "
                "Restore it from backup; do not replace it, or every checkpoint will fail."
            )
        self._key = data
        return data

    def _create_key(self) -> bytes:
        _ensure_private_dir(self.key_path.parent)
        tmp = self.key_path.with_name(
            f".{self.key_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            # link() fails if the name exists, so when several processes start on an empty
            # home exactly one key wins and nobody ever reads a half-written one.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.key_path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _fsync_dir(self.key_path.parent)
        return self.key_path.read_bytes()

    def _write_error(self, exc: BaseException) -> AuditWriteError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return AuditWriteError(
            f"The audit log at {self.db_path} cannot be written ({reason}). "
            "Answers are withheld until it can: free disk space or fix permissions."
        )

    def _read_error(self, exc: BaseException) -> AuditReadError:
        return AuditReadError(
            f"The audit log at {self.db_path} cannot be read ({exc}). "
            "Check the file exists and is readable, then run `clinrag audit verify`."
        )

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _append_lock(self, *, create: bool) -> Iterator[None]:
        """Exclusive across processes and AuditLog objects (flock is per open file).

        Readers pass ``create=False``: no lock file means no writer has ever run here (or the
        copy sits on read-only media), so there is nothing to wait for.
        """
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError:
            if create:
                raise
            yield
            return
        try:
            if os.name == "posix":
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:  # pragma: no cover - Windows
                while True:
                    try:
                        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                        break
                    except OSError:
                        continue
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Raise :class:`AuditWriteError` unless an append would currently succeed.

        Called before an answer is generated, so a full disk is found before the model runs.
        """
        with self._lock:
            try:
                self._signing_key(create=True)
                conn = self._connection(write=True)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                for folder in {self.db_path.parent, self.checkpoint_path.parent}:
                    _ensure_private_dir(folder)
                    if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
                        raise OSError(errno.ENOSPC, "less than 1 MiB free", str(folder))
                probe = self.checkpoint_path.with_name(
                    f".{self.checkpoint_path.name}.{os.getpid()}.{secrets.token_hex(4)}.probe"
                )
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
                probe.unlink()
            except AuditKeyError:
                raise
            except (sqlite3.Error, OSError) as exc:
                raise self._write_error(exc) from exc

    def append(self, event: str, user: str, role: str, payload: dict[str, Any]) -> Record:
        """Append one event in its own transaction and return the committed record.

        Raises :class:`AuditWriteError` when the record cannot be made durable; the caller
        must then withhold whatever the record was about.
        """
        _check_name("event", event)
        if not EVENT_RE.match(event):
            raise AuditPayloadError(
                f"Event type {event!r} is not a short lowercase name (letters, digits, _)."
            )
        _check_name("user", user)
        _check_name("role", role)
        if not isinstance(payload, Mapping):
            raise AuditPayloadError(
                f"The audit payload must be a dict, not {type(payload).__name__}."
            )
        try:
            payload_text = canonical_json(dict(payload))
            payload_text.encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise AuditPayloadError(
                f"The audit payload for {event!r} cannot be stored as canonical JSON ({exc}). "
                "Convert it to plain str/int/float/bool/None/list/dict without NaN or infinity."
            ) from exc
        # Re-parse so the returned record holds exactly what was hashed (tuples become lists).
        stored_payload: dict[str, Any] = json.loads(payload_text)

        with self._lock:
            try:
                key = self._signing_key(create=True)
                assert key is not None
                conn = self._connection(write=True)
                return self._append_locked(
                    conn, key, event, user, role, stored_payload, payload_text
                )
            except (AuditKeyError, AuditPayloadError):
                raise
            except (sqlite3.Error, OSError) as exc:
                raise self._write_error(exc) from exc

    def _append_locked(
        self,
        conn: sqlite3.Connection,
        key: bytes,
        event: str,
        user: str,
        role: str,
        payload: dict[str, Any],
        payload_text: str,
    ) -> Record:
        # Two-phase head checkpoint. Before COMMIT the head names the last committed record
        # and, as "pending", the one being written; after COMMIT (and its history line) the
        # head names the new record alone, and only then is the append acknowledged. A crash
        # at any point leaves a state verify accepts (a pending record either committed or
        # not), while deleting an acknowledged record still fails verification.
        with self._append_lock(create=True):
            conn.execute("BEGIN IMMEDIATE")
            old_head: bytes | None = None
            head_touched = False
            try:
                row = conn.execute(
                    "SELECT seq, hash, ts FROM records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq = int(row[0]) + 1 if row else 1
                prev_hash = str(row[1]) if row else GENESIS_HASH
                ts = utc_timestamp()
                prev_ts = str(row[2]) if row else ts
                digest = record_hash(seq, ts, event, user, role, payload, prev_hash)
                conn.execute(
                    f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, ts, event, user, role, payload_text, prev_hash, digest),
                )
                old_head = _read_optional(self.checkpoint_path)
                history_count = self._history_count(key, old_head, seq)
                head_touched = True
                self._write_head(
                    key,
                    {
                        "seq": seq - 1,
                        "hash": prev_hash,
                        "ts": prev_ts,
                        "history": history_count,
                        "pending": {"seq": seq, "hash": digest, "ts": ts},
                    },
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if head_touched:
                    self._restore_checkpoint_files(old_head, None)
                raise
            # Committed. If what follows fails, the pending head still verifies, but the
            # caller is told (AuditWriteError) and withholds the answer: acknowledged records
            # are exactly those a finalised head vouches for.
            if seq % self.checkpoint_every == 0:
                size = self.history_path.stat().st_size if self.history_path.exists() else 0
                self._append_history(key, seq, digest, ts, size)
                history_count += 1
            self._write_head(key, {"seq": seq, "hash": digest, "ts": ts, "history": history_count})
        return Record(seq, ts, event, user, role, payload, prev_hash, digest)

    def _write_head(self, key: bytes, head: dict[str, Any]) -> None:
        head["mac"] = checkpoint_mac(key, "head", head)
        _atomic_write(self.checkpoint_path, (canonical_json(head) + "\n").encode("utf-8"))

    def _history_count(self, key: bytes, old_head: bytes | None, seq: int) -> int:
        """Entries in the history file before this append.

        Taken from the previous head when it is genuine and current, so an append does not
        re-read a history that grows with the log; recounted otherwise.
        """
        if old_head is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                head = json.loads(old_head)
                if (
                    head["seq"] == seq - 1
                    and isinstance(head.get("history"), int)
                    and hmac.compare_digest(str(head["mac"]), checkpoint_mac(key, "head", head))
                ):
                    return int(head["history"])
        data = _read_optional(self.history_path)
        return 0 if not data else sum(1 for line in data.splitlines() if line.strip())

    def _append_history(self, key: bytes, seq: int, digest: str, ts: str, size: int) -> None:
        entry = {"seq": seq, "hash": digest, "count": seq, "ts": ts}
        entry["mac"] = checkpoint_mac(key, "history", entry)
        _ensure_private_dir(self.history_path.parent)
        fd = os.open(self.history_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if size and not self._history_ends_with_newline(size):
                # A torn last line from a crash must not swallow this entry.
                _write_all(fd, b"\n")
            _write_all(fd, (canonical_json(entry) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _history_ends_with_newline(self, size: int) -> bool:
        with open(self.history_path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) == b"\n"

    def _restore_checkpoint_files(
        self, old_head: bytes | None, old_history_size: int | None
    ) -> None:
        # Best effort: the append already failed and that error is what the caller must see.
        with contextlib.suppress(OSError):
            if old_head is None:
                self.checkpoint_path.unlink(missing_ok=True)
            else:
                _atomic_write(self.checkpoint_path, old_head)
        if old_history_size is not None:
            with contextlib.suppress(OSError):
                if (
                    self.history_path.exists()
                    and self.history_path.stat().st_size > old_history_size
                ):
                    os.truncate(self.history_path, old_history_size)

    # ------------------------------------------------------------------ reading

    def get(self, seq: int) -> Record | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE seq = ?", (int(seq),))
        return rows[0] if rows else None

    def head(self) -> Record | None:
        """The newest record, or None for an empty log."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT 1", ())
        return rows[0] if rows else None

    def count(self) -> int:
        with self._lock:
            try:
                return int(self._connection().execute("SELECT COUNT(*) FROM records").fetchone()[0])
            except (sqlite3.Error, OSError) as exc:
                raise self._read_error(exc) from exc

    def list(
        self,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        user: str | None = None,
        event: str | None = None,
        limit: int | None = None,
        *,
        newest_first: bool = False,
    ) -> list[Record]:
        """Records matching every given filter, in seq order.

        ``since`` is inclusive and ``until`` exclusive; both are ISO-8601 UTC text (a date
        such as ``2026-11-28`` works) or datetimes (naive ones are taken as UTC).
        """
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("ts >= ?")
            params.append(_bound(since))
        if until is not None:
            clauses.append("ts < ?")
            params.append(_bound(until))
        if user is not None:
            clauses.append('"user" = ?')
            params.append(user)
        if event is not None:
            clauses.append("event = ?")
            params.append(event)
        sql = f"SELECT {_COLUMNS} FROM records"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(int(limit), 0))
        return self._query(sql, tuple(params))

    def iter_records(self, batch: int = 1000) -> Iterator[Record]:
        """Every record in seq order, fetched in batches so exports of large logs stay small."""
        last = 0
        while True:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
            )
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Record]:
        with self._lock:
            try:
                rows = self._connection().execute(sql, params).fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise self._read_error(exc) from exc
        return [self._to_record(row) for row in rows]

    def _to_record(self, row: tuple[Any, ...]) -> Record:
        seq, ts, event, user, role, payload_text, prev_hash, digest = row
        try:
            payload = json.loads(payload_text)
        except (TypeError, ValueError) as exc:
            raise AuditReadError(
                f"Audit record {seq} in {self.db_path} has a damaged payload ({exc}). "
                "Run `clinrag audit verify` and restore the log from its last good backup."
            ) from exc
        return Record(int(seq), ts, event, user, role, payload, prev_hash, digest)

    # ------------------------------------------------------------------ verification

    def verify(self) -> VerifyResult:
        """Recompute every hash and link, and check them against the signed checkpoints.

        Never raises for a damaged log: problems come back as ``ok=False`` with the first
        untrustworthy seq and a specific reason. Reads only; creates no file.
        """
        with self._lock:
            try:
                return self._verify()
            except (sqlite3.Error, OSError) as exc:
                return VerifyResult(
                    False,
                    0,
                    None,
                    f"the audit log at {self.db_path} cannot be read ({exc}); "
                    "check the path and permissions, or restore it from backup",
                )

    def _verify(self) -> VerifyResult:
        if not self.db_path.exists():
            if self.checkpoint_path.exists():
                return VerifyResult(
                    False,
                    0,
                    1,
                    f"audit database {self.db_path} is missing but its checkpoint exists "
                    "(log deleted); restore it from backup",
                )
            return VerifyResult(True, 0, None, "empty log (no records yet)")

        reader = _open_read_only(self.db_path)
        try:
            # Read the checkpoint files and fix the database snapshot while no append is in
            # flight, so a record committed mid-verify cannot look like a stale checkpoint.
            reader.execute("BEGIN")
            with self._writers_paused():
                has_table = reader.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
                ).fetchone()
                total = (
                    int(reader.execute("SELECT COUNT(*) FROM records").fetchone()[0])
                    if has_table
                    else 0
                )
                head_bytes = _read_optional(self.checkpoint_path)
                history_bytes = _read_optional(self.history_path)
            try:
                checked = self._verify_snapshot(reader, bool(has_table), head_bytes, history_bytes)
            except _Failure as failure:
                return VerifyResult(False, total, failure.first_bad_seq, failure.reason)
            return VerifyResult(True, total, None, checked)
        finally:
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            reader.close()

    @contextlib.contextmanager
    def _writers_paused(self) -> Iterator[None]:
        with self._append_lock(create=False), self._sqlite_writers_paused():
            yield

    @contextlib.contextmanager
    def _sqlite_writers_paused(self) -> Iterator[None]:
        try:
            lock = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error:
            yield
            return
        try:
            try:
                lock.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                # A read-only copy (a backup on write-protected media) has no writers to pause.
                if not _is_read_only_error(exc):
                    raise
            yield
        finally:
            if lock.in_transaction:
                lock.execute("ROLLBACK")
            lock.close()

    def _verify_snapshot(
        self,
        reader: sqlite3.Connection,
        has_table: bool,
        head_bytes: bytes | None,
        history_bytes: bytes | None,
    ) -> str:
        key = self._signing_key(create=False) if (head_bytes or history_bytes) else None
        if (head_bytes or history_bytes) and key is None:
            raise _Failure(
                None,
                f"signing key {self.key_path} is missing, so the checkpoints cannot be checked; "
                "restore the key from backup",
            )
        head = self._parse_head(key, head_bytes) if head_bytes is not None else None
        history = self._parse_history(key, history_bytes) if history_bytes else []
        by_seq = {cp.seq: cp for cp in history}

        last, last_hash, last_good_cp = self._scan(reader, has_table, by_seq)

        if head is None:
            if last > 0:
                raise _Failure(
                    None,
                    f"checkpoint file {self.checkpoint_path} is missing, so a truncated tail "
                    f"cannot be ruled out ({last} records); restore it from backup",
                )
            if history:
                raise _Failure(
                    1,
                    f"the log is empty but the signed history says {history[-1].seq} records "
                    "existed (all records deleted)",
                )
            return "empty log (no records yet)"
        signed = head
        expected_history = head.fields.get("history")
        allowed_history = {expected_history}
        note = ""
        pending = _pending_from(head)
        if pending is not None and last == pending.seq:
            # Crashed after COMMIT, before the head was finalised (and maybe before the
            # history line): the record is genuine, the signed pending entry vouches for it.
            signed = pending
            if isinstance(expected_history, int):
                allowed_history = {expected_history, expected_history + 1}
            note = f"; the append of record {last} was interrupted after it committed"
        elif pending is not None and last == head.seq:
            note = (
                f"; an append (record {pending.seq}) was interrupted before it committed and "
                "was never acknowledged"
            )
        if signed.seq > last:
            raise _Failure(
                last + 1, f"records end at {last} but checkpoint says {signed.seq} (tail truncated)"
            )
        if signed.seq < last:
            raise _Failure(
                signed.seq + 1,
                f"records go to {last} but the signed checkpoint says {signed.seq} (stale "
                f"checkpoint restored, or records {signed.seq + 1}-{last} added without the key)",
            )
        if not hmac.compare_digest(signed.hash, last_hash):
            raise _Failure(
                last_good_cp + 1,
                f"record {last}: hash differs from the signed checkpoint (log rewritten with "
                f"recomputed hashes; records {last_good_cp + 1}-{last} cannot be trusted)",
            )
        if history and history[-1].seq > last:
            raise _Failure(
                last + 1,
                f"records end at {last} but the signed history says {history[-1].seq} "
                "(tail truncated)",
            )
        if isinstance(expected_history, int) and len(history) not in allowed_history:
            raise _Failure(
                None,
                f"signed checkpoint history {self.history_path} has {len(history)} entries but "
                f"the head checkpoint says {expected_history} (history file truncated or "
                "replaced); restore it from backup",
            )
        return (
            f"{last} records verified: chain intact, head checkpoint at {signed.seq} and "
            f"{len(history)} signed history checkpoints match{note}"
        )

    def _scan(
        self, reader: sqlite3.Connection, has_table: bool, by_seq: dict[int, _Checkpoint]
    ) -> tuple[int, str, int]:
        """Walk the chain; return (last seq, last hash, last seq vouched for by history)."""
        expected = 1
        prev_hash = GENESIS_HASH
        last_good_cp = 0
        if not has_table:
            return 0, prev_hash, last_good_cp
        # Text columns come back as bytes so an edit that leaves invalid UTF-8 is reported as
        # tampering rather than crashing the decoder.
        rows = reader.execute(
            'SELECT seq, CAST(ts AS BLOB), CAST(event AS BLOB), CAST("user" AS BLOB), '
            "CAST(role AS BLOB), CAST(payload AS BLOB), CAST(prev_hash AS BLOB), "
            "CAST(hash AS BLOB) FROM records ORDER BY seq"
        )
        for row in rows:
            seq = row[0]
            if not isinstance(seq, int) or seq < expected:
                raise _Failure(expected, f"record {expected}: sequence number {seq!r} is invalid")
            if seq > expected:
                missing = (
                    f"record {expected} missing"
                    if seq == expected + 1
                    else f"records {expected}-{seq - 1} missing"
                )
                raise _Failure(expected, f"{missing} (deleted)")
            try:
                ts, event, user, role, payload_text, stored_prev, stored_hash = (
                    b"" if value is None else bytes(value).decode("utf-8") for value in row[1:]
                )
            except UnicodeDecodeError:
                raise _Failure(
                    seq, f"record {seq}: not valid UTF-8 text (content changed)"
                ) from None
            try:
                payload = json.loads(payload_text)
            except ValueError:
                raise _Failure(
                    seq, f"record {seq}: payload is not valid JSON (content changed)"
                ) from None
            try:
                computed = record_hash(seq, ts, event, user, role, payload, stored_prev)
            except (TypeError, ValueError):
                raise _Failure(
                    seq, f"record {seq}: payload cannot be hashed (content changed)"
                ) from None
            if not hmac.compare_digest(computed, stored_hash):
                raise _Failure(seq, f"record {seq}: hash mismatch (content changed)")
            if canonical_json(payload) != payload_text:
                raise _Failure(
                    seq, f"record {seq}: payload text altered (not the canonical form hashed)"
                )
            if stored_prev != prev_hash:
                if seq == 1:
                    raise _Failure(
                        1,
                        "record 1: previous hash is not the genesis value (earlier records "
                        "removed or record 1 altered)",
                    )
                # Record `seq` is self-consistent, so what changed is the record it links to,
                # which was edited and given a fresh hash.
                raise _Failure(
                    seq - 1,
                    f"record {seq - 1}: changed and rehashed (record {seq} links to a "
                    "different hash)",
                )
            checkpoint = by_seq.get(seq)
            if checkpoint is not None:
                if not hmac.compare_digest(checkpoint.hash, stored_hash):
                    first = last_good_cp + 1
                    where = f"record {seq}" if first == seq else f"records {first}-{seq}"
                    raise _Failure(
                        first,
                        f"{where}: hash differs from the signed checkpoint at {seq} "
                        "(log rewritten with recomputed hashes)",
                    )
                last_good_cp = seq
            prev_hash = stored_hash
            expected += 1
        return expected - 1, prev_hash, last_good_cp

    def _parse_head(self, key: bytes | None, data: bytes) -> _Checkpoint:
        try:
            fields = json.loads(data)
            checkpoint = _checkpoint_from(
                fields, allow_zero=isinstance(fields, dict) and "pending" in fields
            )
            pending = _pending_from(checkpoint)
            if pending is not None and pending.seq != checkpoint.seq + 1:
                raise ValueError("pending record does not follow the head")
        except (ValueError, TypeError, KeyError):
            raise _Failure(
                None,
                f"checkpoint file {self.checkpoint_path} is unreadable (not a checkpoint); "
                "restore it from backup",
            ) from None
        assert key is not None
        if not hmac.compare_digest(str(fields.get("mac", "")), checkpoint_mac(key, "head", fields)):
            raise _Failure(
                None,
                "checkpoint signature invalid (checkpoint edited or forged without the key, "
                "or the key was replaced)",
            )
        return checkpoint

    def _parse_history(self, key: bytes | None, data: bytes) -> list[_Checkpoint]:
        assert key is not None
        entries: list[_Checkpoint] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
                checkpoint = _checkpoint_from(fields)
                count_ok = fields["count"] == checkpoint.seq
            except (ValueError, TypeError, KeyError):
                raise _Failure(
                    None,
                    f"signed checkpoint history line {number} is unreadable (edited or torn); "
                    "restore the history file from backup",
                ) from None
            if not hmac.compare_digest(
                str(fields.get("mac", "")), checkpoint_mac(key, "history", fields)
            ):
                raise _Failure(
                    checkpoint.seq,
                    f"signed checkpoint history line {number} (record {checkpoint.seq}): "
                    "signature invalid (edited or forged without the key)",
                )
            if not count_ok:
                raise _Failure(
                    checkpoint.seq,
                    f"signed checkpoint history line {number}: count {fields['count']} does not "
                    f"match record {checkpoint.seq}",
                )
            if entries and checkpoint.seq <= entries[-1].seq:
                raise _Failure(
                    checkpoint.seq,
                    f"signed checkpoint history line {number}: record {checkpoint.seq} is out "
                    "of order (lines reordered or duplicated)",
                )
            entries.append(checkpoint)
        return entries

    # ------------------------------------------------------------------ backup

    def backup(self, dest: Path, checkpoint_dest: Path | None = None) -> Path:
        """Copy the log to ``dest`` with SQLite's online backup, plus its checkpoint files.

        The checkpoint goes to ``checkpoint_dest`` (default: ``default_checkpoint_path(dest)``)
        and its history next to it, taken under the write lock so they match the copied
        records. The signing key is not copied: verify the backup with the original key,
        ``AuditLog(dest, checkpoint_dest, key_path).verify()``. Existing files are never
        overwritten, so an older backup cannot be clobbered by mistake.
        """
        dest = Path(dest)
        checkpoint_dest = (
            default_checkpoint_path(dest) if checkpoint_dest is None else Path(checkpoint_dest)
        )
        history_dest = history_path_for(checkpoint_dest)
        for path in (dest, checkpoint_dest, history_dest):
            if path.exists():
                raise AuditLogError(
                    f"Backup target {path} already exists; choose a new file name "
                    "(backups are never overwritten)."
                )
        if dest.resolve() == self.db_path.resolve():
            raise AuditLogError(
                "The backup target is the live audit database; choose another path."
            )
        with self._lock:
            created = False
            try:
                source = self._connection()  # reading suffices: the copy is written elsewhere
                _ensure_private_dir(dest.parent)
                os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                created = True
                with self._writers_paused():
                    target = sqlite3.connect(str(dest), isolation_level=None)
                    try:
                        source.backup(target)
                        # A backup is a single self-contained file: no -wal needed to read it,
                        # so it can be archived or put on write-protected media as it is.
                        target.execute("PRAGMA journal_mode = DELETE")
                    finally:
                        target.close()
                    head = _read_optional(self.checkpoint_path)
                    history = _read_optional(self.history_path)
                if head is not None:
                    _atomic_write(checkpoint_dest, head)
                if history is not None:
                    _atomic_write(history_dest, history)
            except (sqlite3.Error, OSError) as exc:
                if created:
                    for path in (dest, checkpoint_dest, history_dest):
                        with contextlib.suppress(OSError):
                            path.unlink(missing_ok=True)
                raise AuditWriteError(
                    f"The audit backup to {dest} failed ({exc}). Check free space and "
                    "permissions at the destination, then try again."
                ) from exc
        return dest


_FORKED_CONNECTIONS: list[sqlite3.Connection] = []


def _checkpoint_from(fields: Any, *, allow_zero: bool = False) -> _Checkpoint:
    if not isinstance(fields, dict):
        raise TypeError("checkpoint is not an object")
    seq, digest, ts = fields["seq"], fields["hash"], fields["ts"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < (0 if allow_zero else 1):
        raise ValueError("bad seq")
    if not isinstance(digest, str) or not HEX64_RE.match(digest) or not isinstance(ts, str):
        raise ValueError("bad hash or ts")
    return _Checkpoint(seq, digest, ts, fields)


def _pending_from(head: _Checkpoint) -> _Checkpoint | None:
    """The in-flight record a two-phase head names, if any (already covered by its mac)."""
    if "pending" not in head.fields:
        return None
    return _checkpoint_from(head.fields["pending"])


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise AuditPayloadError(
            f"The audit {what} must be a non-empty string of at most {MAX_NAME_CHARS} "
            f"characters, not {value!r:.80}."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditPayloadError(f"The audit {what} is not valid text ({exc}).") from exc


def _bound(value: str | datetime) -> str:
    return utc_timestamp(value) if isinstance(value, datetime) else str(value)
