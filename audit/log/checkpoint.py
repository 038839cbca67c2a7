"""The signed checkpoints: the key, the head file, the history file and their format.

A hash chain alone cannot show that its tail was cut off, nor that the whole thing was rebuilt
with recomputed hashes. So after each append the head ``(seq, hash)`` is written to a checkpoint
file signed with an HMAC key that lives outside the database, and every ``checkpoint_every``
records a signed line is added to a history file. Someone who can edit the database but not
read the key can no longer produce a log that verifies.

The head is written in two phases around each append (see ``AuditLog._append_locked``): before
COMMIT it names the last committed record plus, as ``pending``, the one being written; after
COMMIT it names the new record alone. Like the chain format, the field names and the MAC input
are frozen by the checkpoints already signed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from audit.log.chain import GENESIS_HASH, canonical_json
from audit.log.errors import AuditKeyError
from audit.log.files import (
    atomic_write,
    ensure_private_dir,
    fsync_dir,
    read_optional,
    write_all,
)

KEY_BYTES = 32
MIN_KEY_BYTES = 16
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def default_checkpoint_path(db_path: Path) -> Path:
    """The checkpoint beside a database by convention: ``a.sqlite`` -> ``a.checkpoint.json``."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".checkpoint.json")


def history_path_for(checkpoint_path: Path) -> Path:
    """The signed checkpoint history next to a head checkpoint: ``<stem>.history.jsonl``."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".history.jsonl")


# --------------------------------------------------------------------------- format


def checkpoint_mac(key: bytes, kind: str, fields: Mapping[str, object]) -> str:
    """HMAC-SHA256 over the checkpoint's fields; ``kind`` stops a head line passing as history."""
    message = canonical_json({"kind": kind, **{k: v for k, v in fields.items() if k != "mac"}})
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A head or history entry as read back; ``fields`` is the whole signed object."""

    seq: int
    hash: str
    ts: str
    fields: dict[str, object]


def genesis_head(ts: str) -> dict[str, object]:
    """The head of a log that has no records yet, signed when its key is created.

    It marks the log as started: from then on a missing database, or an empty one, is
    evidence of deletion rather than a fresh install (see ``verify``).
    """
    return {"seq": 0, "hash": GENESIS_HASH, "ts": ts, "history": 0}


def is_genesis(fields: Mapping[str, object]) -> bool:
    return fields.get("seq") == 0 and fields.get("hash") == GENESIS_HASH and "pending" not in fields


def checkpoint_from(fields: object, *, allow_zero: bool = False) -> Checkpoint:
    """Parse one checkpoint object; ``ValueError``/``TypeError``/``KeyError`` when malformed.

    Seq 0 is allowed for a genesis head, and with ``allow_zero`` (a pending head).
    """
    if not isinstance(fields, dict):
        raise TypeError("checkpoint is not an object")
    allow_zero = allow_zero or is_genesis(fields)
    seq, digest, ts = fields["seq"], fields["hash"], fields["ts"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < (0 if allow_zero else 1):
        raise ValueError("bad seq")
    if not isinstance(digest, str) or not HEX64_RE.match(digest) or not isinstance(ts, str):
        raise ValueError("bad hash or ts")
    return Checkpoint(seq, digest, ts, fields)


def pending_from(head: Checkpoint) -> Checkpoint | None:
    """The in-flight record a two-phase head names, if any (already covered by its mac)."""
    if "pending" not in head.fields:
        return None
    return checkpoint_from(head.fields["pending"])


# --------------------------------------------------------------------------- signing key


def load_key(key_path: Path, *, create: bool) -> bytes | None:
    """The signing key, created first when ``create`` and missing; None when absent."""
    data = read_optional(key_path)
    if data is None:
        if not create:
            return None
        data = create_key(key_path)
    return checked_key(key_path, data)


def checked_key(key_path: Path, data: bytes) -> bytes:
    if len(data) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"The audit signing key at {key_path} is damaged ({len(data)} bytes). "
            "Restore it from backup; do not replace it, or every checkpoint will fail."
        )
    return data


def create_key(key_path: Path, before_link: Callable[[bytes], None] | None = None) -> bytes:
    """Create the key (the winner's when several processes race); return what is in place.

    ``before_link`` runs with the new key before it appears under its name: the log signs its
    genesis head there, so no crash can leave a key without a head (which verify would have to
    read as a deleted log).
    """
    ensure_private_dir(key_path.parent)
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        key = secrets.token_bytes(KEY_BYTES)
        try:
            write_all(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_link is not None:
            before_link(key)
        # link() fails if the name exists, so when several processes start on an empty
        # home exactly one key wins and nobody ever reads a half-written one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, key_path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(key_path.parent)
    return key_path.read_bytes()


# --------------------------------------------------------------------------- writing


def write_head(checkpoint_path: Path, key: bytes, head: dict[str, object]) -> None:
    """Sign ``head`` (adding its ``mac``) and replace the head checkpoint atomically."""
    head["mac"] = checkpoint_mac(key, "head", head)
    atomic_write(checkpoint_path, (canonical_json(head) + "\n").encode("utf-8"))


def history_count(history_path: Path, key: bytes, old_head: bytes | None, seq: int) -> int:
    """Entries in the history file before the append of record ``seq``.

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
    data = read_optional(history_path)
    return 0 if not data else sum(1 for line in data.splitlines() if line.strip())


def append_history(
    history_path: Path, key: bytes, seq: int, digest: str, ts: str, size: int
) -> None:
    """Add a signed line for record ``seq``; ``size`` is the file's length before it."""
    entry: dict[str, object] = {"seq": seq, "hash": digest, "count": seq, "ts": ts}
    entry["mac"] = checkpoint_mac(key, "history", entry)
    ensure_private_dir(history_path.parent)
    fd = os.open(history_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if size and not _ends_with_newline(history_path, size):
            # A torn last line from a crash must not swallow this entry.
            write_all(fd, b"\n")
        write_all(fd, (canonical_json(entry) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(history_path: Path, size: int) -> bool:
    with open(history_path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def restore_checkpoint_files(
    checkpoint_path: Path,
    history_path: Path,
    old_head: bytes | None,
    old_history_size: int | None,
) -> None:
    """Put the head (and the history length) back as they were before a failed append."""
    # Best effort: the append already failed and that error is what the caller must see.
    with contextlib.suppress(OSError):
        if old_head is None:
            checkpoint_path.unlink(missing_ok=True)
        else:
            atomic_write(checkpoint_path, old_head)
    if old_history_size is not None:
        with contextlib.suppress(OSError):
            if history_path.exists() and history_path.stat().st_size > old_history_size:
                os.truncate(history_path, old_history_size)
