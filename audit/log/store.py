"""The audit log itself: appending records, reading them back, and backing the log up.

An append inserts the next hash-chained record (``chain``) and updates the signed checkpoints
(``checkpoint``) under one cross-process lock, so the records and their checkpoints always
describe the same log; ``verify`` checks both. Standard library only (plus the stdlib-only
``core.migrations`` runner when a database is opened for writing), so a log can be read and
verified on any machine with Python.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.log.anchor import check_anchor_writable, entry_line, has_entries, key_id, write_anchor
from audit.log.chain import GENESIS_HASH, Record, canonical_json, record_hash, utc_timestamp
from audit.log.checkpoint import (
    append_history,
    checked_key,
    create_key,
    default_checkpoint_path,
    genesis_head,
    history_count,
    history_path_for,
    is_genesis,
    load_key,
    restore_checkpoint_files,
    write_head,
)
from audit.log.database import COLUMNS, LogDatabase, log_database
from audit.log.errors import (
    AuditKeyError,
    AuditLogError,
    AuditPayloadError,
    AuditReadError,
    AuditWriteError,
)
from audit.log.files import atomic_write, ensure_private_dir, read_optional
from audit.log.sinks import Sink, file_sinks, parse_sinks
from audit.log.stream import stream_record
from audit.log.verify import VerifyResult, verify_log

# Refuse to start an answer when less than this is free: SQLite needs room for the WAL frame,
# and failing before the model runs is kinder than withholding a finished answer.
MIN_FREE_BYTES = 1 << 20
MAX_NAME_CHARS = 256
EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

_COLUMNS = COLUMNS


class AuditLog:
    """Append-only audit log in SQLite with a hash chain and HMAC-signed checkpoints.

    Construction is cheap and touches nothing; the database, the signing key and the
    checkpoint files are created on first use. Safe to share between threads (one lock) and
    between processes (SQLite's write lock serialises appends and their checkpoint writes).

    ``anchor`` and ``stream`` name sinks (``"syslog"``, ``"file:/path"``, see ``sinks``): every
    signed head is witnessed by the anchor (a failure fails the append), every committed record
    is copied to the stream (a failure is only reported). ``key_provisioned``: the key was put
    in place by an administrator (``audit_key_file``), so finding it before the first record is
    expected; otherwise clinrag creates the key with the log, and a key without a log means the
    log was deleted.
    """

    def __init__(
        self,
        db_path: Path,
        checkpoint_path: Path,
        key_path: Path,
        checkpoint_every: int = 100,
        *,
        anchor: str | Iterable[str | Sink] | None = None,
        stream: str | Iterable[str | Sink] | None = None,
        key_provisioned: bool = False,
        database_url: str | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.anchor = parse_sinks(anchor)
        self.stream = parse_sinks(stream)
        self.key_provisioned = bool(key_provisioned)
        self.db_path = Path(db_path)
        self.checkpoint_path = Path(checkpoint_path)
        self.history_path = history_path_for(self.checkpoint_path)
        self.key_path = Path(key_path)
        # Serialises appends across processes past their COMMIT: the head checkpoint is
        # finalised after the record commits, in commit order.
        self.lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        # Where the records are: the SQLite file db_path, or the server at database_url
        # (then db_path only names the log's place among the local files).
        self.database: LogDatabase = log_database(self.db_path, self.lock_path, database_url)
        self._failures: tuple[type[BaseException], ...] = (*self.database.errors, OSError)
        self.checkpoint_every = int(checkpoint_every)
        self._conn: Any = None
        self._conn_pid: int | None = None
        self._conn_read_only = False
        self._key: bytes | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"AuditLog({self.database.label!r})"

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

    def _connection(self, *, write: bool = False) -> Any:
        if self._conn is not None and self._conn_pid == os.getpid():
            if not (write and self._conn_read_only):
                return self._conn
            # Permissions may have been fixed since a read fell back to a read-only handle;
            # an append must retry the real thing rather than fail on a stale handle.
            self._conn.close()
            self._conn = None
        if self._conn is not None:
            # Inherited through fork: connections must not cross a fork. Keep the
            # object alive (closing it here could disturb the parent's locks) and open anew.
            _FORKED_CONNECTIONS.append(self._conn)
            self._conn = None
        try:
            conn, read_only = self._open_read_write(), False
        except self.database.errors as exc:
            if write or not self.database.is_read_only_error(exc):
                raise
            conn, read_only = self.database.open_read(), True
        self._conn = conn
        self._conn_pid = os.getpid()
        self._conn_read_only = read_only
        return conn

    def _open_read_write(self) -> Any:
        return self.database.open_write()

    def _signing_key(self, *, create: bool) -> bytes | None:
        if self._key is None:
            self._key = load_key(self.key_path, create=create)
        return self._key

    def _write_error(self, exc: BaseException) -> AuditWriteError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return AuditWriteError(
            f"The audit log at {self.database.label} cannot be written ({reason}). "
            "Answers are withheld until it can: free disk space or fix permissions."
        )

    def _read_error(self, exc: BaseException) -> AuditReadError:
        return AuditReadError(
            f"The audit log at {self.database.label} cannot be read ({exc}). "
            "Check the file exists and is readable, then run `clinrag audit verify`."
        )

    # ------------------------------------------------------------------ writing

    def check_writable(self) -> None:
        """Raise :class:`AuditWriteError` unless an append would currently succeed.

        Called before an answer is generated, so a full disk is found before the model runs.
        """
        with self._lock:
            try:
                # The key is not created here: a key without a log is evidence of a deleted
                # log (see _key_for_append), so only the first append may create it.
                probed = [self.checkpoint_path.parent]
                if self._signing_key(create=False) is None:
                    probed.append(self.key_path.parent)
                conn = self._connection(write=True)
                self.database.begin(conn)
                try:
                    if conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None:
                        self._refuse_restart(conn)
                finally:
                    conn.execute("ROLLBACK")
                check_anchor_writable(self.anchor)
                local = [self.database.local_folder] if self.database.local_folder else []
                for folder in {*local, *probed}:
                    ensure_private_dir(folder)
                    if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
                        raise OSError(errno.ENOSPC, "less than 1 MiB free", str(folder))
                for folder in probed:
                    probe = folder / f".{self.checkpoint_path.name}.{os.getpid()}.probe"
                    probe = probe.with_name(f"{probe.name}.{secrets.token_hex(4)}")
                    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
                    probe.unlink()
            except (AuditKeyError, AuditWriteError):
                raise
            except self._failures as exc:
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
                conn = self._connection(write=True)
                record, anchor_error = self._append_locked(
                    conn, event, user, role, stored_payload, payload_text
                )
            except (AuditKeyError, AuditPayloadError, AuditWriteError):
                raise
            except self._failures as exc:
                raise self._write_error(exc) from exc
        # Outside the lock and after the commit: the stream is a copy, it must neither delay
        # other appends nor, failing, undo this one (stream_record reports and never raises).
        stream_record(self.stream, record)
        if anchor_error is not None:
            reason = anchor_error.strerror or str(anchor_error)
            raise AuditWriteError(
                f"Audit record {record.seq} was committed, but its head could not be written to "
                f"the anchor ({reason}). Answers are withheld until the anchor can be written "
                "again: check the anchor file's mount, space and permissions."
            ) from anchor_error
        return record

    def _append_locked(
        self,
        conn: Any,
        event: str,
        user: str,
        role: str,
        payload: dict[str, Any],
        payload_text: str,
    ) -> tuple[Record, OSError | None]:
        # Two-phase head checkpoint. Before COMMIT the head names the last committed record
        # and, as "pending", the one being written; after COMMIT (and its history line) the
        # head names the new record alone, and only then is the append acknowledged. A crash
        # at any point leaves a state verify accepts (a pending record either committed or
        # not), while deleting an acknowledged record still fails verification.
        with self.database.append_lock(conn):
            key = self._key_for_append(conn)
            self.database.begin(conn)
            old_head: bytes | None = None
            head_touched = False
            try:
                row = conn.execute(
                    "SELECT seq, hash, ts FROM records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    self._refuse_restart(conn)
                seq = int(row[0]) + 1 if row else 1
                prev_hash = str(row[1]) if row else GENESIS_HASH
                ts = utc_timestamp()
                prev_ts = str(row[2]) if row else ts
                digest = record_hash(seq, ts, event, user, role, payload, prev_hash)
                conn.execute(
                    f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, ts, event, user, role, payload_text, prev_hash, digest),
                )
                old_head = read_optional(self.checkpoint_path)
                history_entries = history_count(self.history_path, key, old_head, seq)
                head_touched = True
                write_head(
                    self.checkpoint_path,
                    key,
                    {
                        "seq": seq - 1,
                        "hash": prev_hash,
                        "ts": prev_ts,
                        "history": history_entries,
                        "pending": {"seq": seq, "hash": digest, "ts": ts},
                    },
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(*self.database.errors):
                        conn.execute("ROLLBACK")
                if head_touched:
                    restore_checkpoint_files(
                        self.checkpoint_path, self.history_path, old_head, None
                    )
                raise
            # Committed. If what follows fails, the pending head still verifies, but the
            # caller is told (AuditWriteError) and withholds the answer: acknowledged records
            # are exactly those a finalised head vouches for.
            if seq % self.checkpoint_every == 0:
                size = self.history_path.stat().st_size if self.history_path.exists() else 0
                append_history(self.history_path, key, seq, digest, ts, size)
                history_entries += 1
            write_head(
                self.checkpoint_path,
                key,
                {"seq": seq, "hash": digest, "ts": ts, "history": history_entries},
            )
            # Witnessed under the lock, so the anchor lists heads in commit order.
            anchor_error: OSError | None = None
            if self.anchor:
                first = digest if seq == 1 else self._first_hash(conn)
                line = entry_line(
                    log=first,
                    seq=seq,
                    digest=digest,
                    ts=ts,
                    history=history_entries,
                    key_fingerprint=key_id(key),
                )
                try:
                    write_anchor(self.anchor, line)
                except OSError as exc:
                    anchor_error = exc
        return Record(seq, ts, event, user, role, payload, prev_hash, digest), anchor_error

    def _first_hash(self, conn: Any) -> str:
        row = conn.execute("SELECT hash FROM records WHERE seq = 1").fetchone()
        return str(row[0]) if row else GENESIS_HASH

    def _key_for_append(self, conn: Any) -> bytes:
        """The signing key; created (with the genesis head) only for a log that never existed.

        Called under the append lock, so processes starting together on an empty home create
        one key and one genesis head, and the losers find both.
        """
        key = self._signing_key(create=False)
        if key is not None:
            return key
        evidence = self._evidence(conn)
        if evidence is not None:
            if conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None:
                raise self._deleted_error(f"its key is gone too, and {evidence}")
            raise AuditKeyError(
                f"The audit signing key {self.key_path} is missing, but {evidence}. Restore "
                "the key from backup (clinrag restore --key); a new key would make every "
                "checkpoint fail verification."
            )

        signed_with: list[bytes] = []

        def sign_genesis(new_key: bytes) -> None:
            write_head(self.checkpoint_path, new_key, genesis_head(utc_timestamp()))
            signed_with.append(new_key)

        key = checked_key(self.key_path, create_key(self.key_path, sign_genesis))
        if signed_with != [key]:
            # A writer outside this lock linked its key first: sign with the one in place.
            sign_genesis(key)
        self._key = key
        return key

    def _refuse_restart(self, conn: Any) -> None:
        """Raise rather than start a new chain over the traces of a deleted one.

        Record 1 of a new log would make the deletion invisible to every later verify; the
        administrator restores the log, or moves its traces aside on purpose.
        """
        evidence = self._evidence(conn)
        if (
            evidence is None
            and not self.key_provisioned
            and self.key_path.exists()
            and not self.checkpoint_path.exists()
        ):
            # clinrag creates its key together with a genesis head, so a key alone is what is
            # left when the log and its checkpoint files were removed.
            evidence = f"its signing key {self.key_path} exists without a checkpoint"
        if evidence is not None:
            raise self._deleted_error(evidence)

    def _deleted_error(self, evidence: str) -> AuditWriteError:
        return AuditWriteError(
            f"The audit log at {self.database.label} has no records, but {evidence}: the log was "
            "deleted. Answers are withheld. Restore it (clinrag restore), or, if it was "
            "removed on purpose, move the key, the checkpoint files and the anchor aside "
            "(keep them as evidence) to start a new log."
        )

    def _evidence(self, conn: Any) -> str | None:
        """What shows that a log with records existed here, or None.

        A genesis head, or a pending head at 0 (the first append was interrupted before its
        commit), shows only that a log was started.
        """
        if conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None:
            return "the database holds records"
        head = read_optional(self.checkpoint_path)
        if head is not None:
            try:
                fields = json.loads(head)
                started = not isinstance(fields, dict) or not (
                    is_genesis(fields) or (fields.get("seq") == 0 and "pending" in fields)
                )
            except ValueError:
                started = True
            if started:
                return f"its checkpoint {self.checkpoint_path} names records"
        history = read_optional(self.history_path)
        if history and history.strip():
            return f"its signed history {self.history_path} lists checkpoints"
        if has_entries(file_sinks(self.anchor)):
            return "the anchor witnessed records of it"
        return None

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
            except self._failures as exc:
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
        params: list[str | int] = []
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

    # ``builtins.list``: inside this class, after ``def list``, plain ``list`` names that method.
    def _query(self, sql: str, params: tuple[str | int, ...]) -> builtins.list[Record]:
        with self._lock:
            try:
                rows = self._connection().execute(sql, params).fetchall()
            except self._failures as exc:
                raise self._read_error(exc) from exc
        return [self._to_record(row) for row in rows]

    def _to_record(self, row: tuple[Any, ...]) -> Record:
        seq, ts, event, user, role, payload_text, prev_hash, digest = row
        try:
            payload = json.loads(payload_text)
        except (TypeError, ValueError) as exc:
            raise AuditReadError(
                f"Audit record {seq} in {self.database.label} has a damaged payload ({exc}). "
                "Run `clinrag audit verify` and restore the log from its last good backup."
            ) from exc
        return Record(int(seq), ts, event, user, role, payload, prev_hash, digest)

    # ------------------------------------------------------------------ verification

    def verify(self, anchor_files: Sequence[Path | str] = ()) -> VerifyResult:
        """Recompute every hash and link, and check them against the signed checkpoints.

        Also against the witnessed heads in ``anchor_files`` and in this log's file anchors
        (a copy of the anchor the auditor trusts, e.g. from the SIEM, is the stronger check:
        whoever edits the log may also edit the settings that name the anchor). Never raises
        for a damaged log: problems come back as ``ok=False`` with the first untrustworthy seq
        and a specific reason. Reads only; creates no file.
        """
        files: dict[Path, None] = {}
        for path in [*file_sinks(self.anchor), *map(Path, anchor_files)]:
            files.setdefault(path.expanduser().absolute(), None)
        with self._lock:
            return verify_log(
                self.database,
                self.checkpoint_path,
                self.key_path,
                lambda: self._signing_key(create=False),
                anchor_files=list(files),
            )

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
                ensure_private_dir(dest.parent)
                os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                created = True
                with self.database.writers_paused():
                    # A self-contained SQLite file whatever the engine: readable and
                    # verifiable anywhere with the standard library alone.
                    self.database.copy_to(source, dest)
                    head = read_optional(self.checkpoint_path)
                    history = read_optional(self.history_path)
                if head is not None:
                    atomic_write(checkpoint_dest, head)
                if history is not None:
                    atomic_write(history_dest, history)
            except self._failures as exc:
                if created:
                    for path in (dest, checkpoint_dest, history_dest):
                        with contextlib.suppress(OSError):
                            path.unlink(missing_ok=True)
                raise AuditWriteError(
                    f"The audit backup to {dest} failed ({exc}). Check free space and "
                    "permissions at the destination, then try again."
                ) from exc
        return dest


_FORKED_CONNECTIONS: list[Any] = []


def _check_name(what: str, value: object) -> None:
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
