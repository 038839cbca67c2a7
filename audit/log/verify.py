"""Verifying a log: recompute every hash and link and hold them against the signed checkpoints.

Kept apart from appending because it is the part an auditor runs: it only reads (it creates no
file, not even the signing key), and it never raises for a damaged log. Every problem comes back
as a :class:`VerifyResult` naming the first record that can no longer be trusted and why, in
words an administrator can act on.

What this cannot catch: an attacker holding the key, or one who rolls the database, the
checkpoint and the history back together to an older genuine copy. Ship the history file to
write-once or remote storage when that matters.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audit.log.chain import GENESIS_HASH, canonical_json, record_hash
from audit.log.checkpoint import (
    Checkpoint,
    checkpoint_from,
    checkpoint_mac,
    history_path_for,
    pending_from,
)
from audit.log.database import open_read_only, writers_paused
from audit.log.files import read_optional


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


def verify_log(
    db_path: Path,
    checkpoint_path: Path,
    key_path: Path,
    lock_path: Path,
    signing_key: Callable[[], bytes | None],
) -> VerifyResult:
    """Verify the log in ``db_path`` against its checkpoint files; never raises for damage.

    ``signing_key`` returns the key, or None when it does not exist; it is called only when
    there are checkpoints to check. ``lock_path`` is the appenders' lock, held briefly so the
    records and checkpoints are read as one snapshot.
    """
    verifier = _Verifier(db_path, checkpoint_path, key_path, lock_path, signing_key)
    try:
        return verifier.run()
    except (sqlite3.Error, OSError) as exc:
        return VerifyResult(
            False,
            0,
            None,
            f"the audit log at {db_path} cannot be read ({exc}); "
            "check the path and permissions, or restore it from backup",
        )


class _Failure(Exception):
    """Stops verification at the first problem with its seq and reason."""

    def __init__(self, first_bad_seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.first_bad_seq = first_bad_seq
        self.reason = reason


class _Verifier:
    """One verification run; holds the paths so each step can name the file that failed."""

    def __init__(
        self,
        db_path: Path,
        checkpoint_path: Path,
        key_path: Path,
        lock_path: Path,
        signing_key: Callable[[], bytes | None],
    ) -> None:
        self.db_path = db_path
        self.checkpoint_path = checkpoint_path
        self.history_path = history_path_for(checkpoint_path)
        self.key_path = key_path
        self.lock_path = lock_path
        self.signing_key = signing_key

    def run(self) -> VerifyResult:
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

        reader = open_read_only(self.db_path)
        try:
            # Read the checkpoint files and fix the database snapshot while no append is in
            # flight, so a record committed mid-verify cannot look like a stale checkpoint.
            reader.execute("BEGIN")
            with writers_paused(self.db_path, self.lock_path):
                has_table = reader.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
                ).fetchone()
                total = (
                    int(reader.execute("SELECT COUNT(*) FROM records").fetchone()[0])
                    if has_table
                    else 0
                )
                head_bytes = read_optional(self.checkpoint_path)
                history_bytes = read_optional(self.history_path)
            try:
                checked = self._verify_snapshot(reader, bool(has_table), head_bytes, history_bytes)
            except _Failure as failure:
                return VerifyResult(False, total, failure.first_bad_seq, failure.reason)
            return VerifyResult(True, total, None, checked)
        finally:
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            reader.close()

    def _verify_snapshot(
        self,
        reader: sqlite3.Connection,
        has_table: bool,
        head_bytes: bytes | None,
        history_bytes: bytes | None,
    ) -> str:
        key = self.signing_key() if (head_bytes or history_bytes) else None
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
        pending = pending_from(head)
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
        self, reader: sqlite3.Connection, has_table: bool, by_seq: dict[int, Checkpoint]
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
                    "" if value is None else bytes(value).decode("utf-8") for value in row[1:]
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

    def _parse_head(self, key: bytes | None, data: bytes) -> Checkpoint:
        try:
            fields = json.loads(data)
            checkpoint = checkpoint_from(
                fields, allow_zero=isinstance(fields, dict) and "pending" in fields
            )
            pending = pending_from(checkpoint)
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

    def _parse_history(self, key: bytes | None, data: bytes) -> list[Checkpoint]:
        assert key is not None
        entries: list[Checkpoint] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
                checkpoint = checkpoint_from(fields)
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
