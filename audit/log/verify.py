"""Verifying a log: recompute every hash and link and hold them against the signed checkpoints.

Kept apart from appending because it is the part an auditor runs: it only reads (it creates no
file, not even the signing key), and it never raises for a damaged log. Every problem comes back
as a :class:`VerifyResult` naming the first record that can no longer be trusted and why, in
words an administrator can act on.

What the checkpoints alone cannot catch: an attacker holding the key (it is readable by the
service), or one who rolls the database, the checkpoint and the history back together to an
older genuine copy, or swaps in another home's log and key. Verifying against the anchor (the
heads witnessed outside the box, see ``anchor``) catches those too, up to the last head it
witnessed.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audit.log.anchor import AnchorEntry, AnchorReadError, key_id, read_anchors
from audit.log.chain import GENESIS_HASH, canonical_json, record_hash
from audit.log.checkpoint import (
    Checkpoint,
    checkpoint_from,
    checkpoint_mac,
    history_path_for,
    is_genesis,
    pending_from,
)
from audit.log.database import LogDatabase
from audit.log.errors import AuditKeyError
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
    database: LogDatabase,
    checkpoint_path: Path,
    key_path: Path,
    signing_key: Callable[[], bytes | None],
    anchor_files: Sequence[Path] = (),
) -> VerifyResult:
    """Verify the log in ``database`` against its checkpoint files; never raises for damage.

    ``signing_key`` returns the key, or None when it does not exist; it is called only when
    there are checkpoints to check. The appenders are paused briefly (``writers_paused``) so
    the records and checkpoints are read as one snapshot. ``anchor_files`` hold witnessed
    heads (see ``anchor``); every one must agree with the log.
    """
    verifier = _Verifier(database, checkpoint_path, key_path, signing_key, anchor_files)
    failures: tuple[type[BaseException], ...] = (*database.errors, OSError)
    try:
        return verifier.run()
    except (AuditKeyError, AnchorReadError) as exc:
        return VerifyResult(False, 0, None, str(exc))
    except failures as exc:
        return VerifyResult(
            False,
            0,
            None,
            f"the audit log at {database.label} cannot be read ({exc}); "
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
        database: LogDatabase,
        checkpoint_path: Path,
        key_path: Path,
        signing_key: Callable[[], bytes | None],
        anchor_files: Sequence[Path] = (),
    ) -> None:
        self.database = database
        self.checkpoint_path = checkpoint_path
        self.history_path = history_path_for(checkpoint_path)
        self.key_path = key_path
        self.signing_key = signing_key
        self.anchor_files = list(anchor_files)

    def run(self) -> VerifyResult:
        if not self.database.exists():
            if self.checkpoint_path.exists():
                return VerifyResult(
                    False,
                    0,
                    1,
                    f"audit database {self.database.label} is missing but its checkpoint exists "
                    "(log deleted); restore it from backup",
                )
            try:
                self._no_trace_of_records(
                    read_optional(self.history_path), read_anchors(self.anchor_files)
                )
            except _Failure as failure:
                return VerifyResult(False, 0, failure.first_bad_seq, failure.reason)
            return VerifyResult(True, 0, None, "empty log (no records yet)")

        reader = self.database.open_read()
        try:
            # Read the checkpoint files and fix the database snapshot while no append is in
            # flight, so a record committed mid-verify cannot look like a stale checkpoint.
            self.database.begin_snapshot(reader)
            with self.database.writers_paused():
                has_table = self.database.has_records_table(reader)
                total = (
                    int(reader.execute("SELECT COUNT(*) FROM records").fetchone()[0])
                    if has_table
                    else 0
                )
                head_bytes = read_optional(self.checkpoint_path)
                history_bytes = read_optional(self.history_path)
                anchors = read_anchors(self.anchor_files)
            try:
                checked = self._verify_snapshot(
                    reader, bool(has_table), head_bytes, history_bytes, anchors
                )
            except _Failure as failure:
                return VerifyResult(False, total, failure.first_bad_seq, failure.reason)
            return VerifyResult(True, total, None, checked)
        finally:
            if reader.in_transaction:
                reader.execute("ROLLBACK")
            reader.close()

    def _verify_snapshot(
        self,
        reader: Any,
        has_table: bool,
        head_bytes: bytes | None,
        history_bytes: bytes | None,
        anchors: list[AnchorEntry],
    ) -> str:
        key = self.signing_key() if (head_bytes or history_bytes or anchors) else None
        if (head_bytes or history_bytes or anchors) and key is None:
            if not history_bytes and not anchors and _genesis_only(head_bytes):
                if self._has_records(reader, has_table):
                    raise _Failure(
                        None,
                        f"signing key {self.key_path} is missing, so the records cannot be "
                        "checked; restore the key from backup",
                    )
                # The first append was killed between signing the genesis head and putting
                # its new key in place (see AuditLog._key_for_append): nothing was written.
                return "empty log (no records yet; its creation was interrupted)"
            raise _Failure(
                None,
                f"signing key {self.key_path} is missing, so the checkpoints cannot be checked; "
                "restore the key from backup",
            )
        head = self._parse_head(key, head_bytes) if head_bytes is not None else None
        history = self._parse_history(key, history_bytes) if history_bytes else []
        by_seq = {cp.seq: cp for cp in history}
        wanted = {entry.seq for entry in anchors} | {1}

        last, last_hash, last_good_cp, found = self._scan(reader, has_table, by_seq, wanted)

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
            self._no_trace_of_records(history_bytes, anchors)
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
        if self.anchor_files:
            assert key is not None or not anchors
            note += self._check_anchor(anchors, found, last, key, history)
        return (
            f"{last} records verified: chain intact, head checkpoint at {signed.seq} and "
            f"{len(history)} signed history checkpoints match{note}"
        )

    def _no_trace_of_records(self, history_bytes: bytes | None, anchors: list[AnchorEntry]) -> None:
        """Fail when anything but the records says the log had records: they were deleted.

        Called when there are no records and no checkpoint (or no database at all).
        """
        if history_bytes and history_bytes.strip():
            raise _Failure(
                1,
                f"the log has no records, but its signed history {self.history_path} lists "
                "checkpoints (log deleted); restore it from backup",
            )
        if anchors:
            newest = max(anchors, key=lambda entry: entry.seq)
            raise _Failure(
                1,
                f"the log has no records, but the anchor witnessed record {newest.seq} at "
                f"{newest.at} ({newest.where}): the log was deleted; restore it from backup",
            )
        if self.key_path.exists():
            raise _Failure(
                1,
                f"the log has no records and no checkpoint, but its signing key "
                f"{self.key_path} exists: the log and its checkpoint were deleted (clinrag "
                "creates the key together with the log's first checkpoint); restore them from "
                "backup. A key put in place by hand for a log not yet started also reads so "
                "until the first record is written.",
            )

    def _check_anchor(
        self,
        anchors: list[AnchorEntry],
        found: dict[int, str],
        last: int,
        key: bytes | None,
        history: list[Checkpoint],
    ) -> str:
        """Hold the log against every witnessed head; return a note for the summary."""
        files = ", ".join(str(path) for path in self.anchor_files)
        if not anchors:
            if last == 0:
                return f"; the anchor ({files}) has witnessed no head yet"
            raise _Failure(
                None,
                f"the anchor ({files}) has witnessed no head, but the log has {last} records: "
                "the anchor file is missing or was emptied, or was configured after the last "
                "record (the next record is witnessed)",
            )
        assert key is not None
        fingerprint = key_id(key)
        first_hash = found.get(1)
        for entry in anchors:
            if first_hash is not None and entry.log != first_hash:
                raise _Failure(
                    1,
                    f"the anchor witnessed a different log ({entry.where}: its record 1 has "
                    f"hash {entry.log[:16]}..., this log's {first_hash[:16]}...): another "
                    "home's log was swapped in, or the log was rebuilt from record 1",
                )
        for entry in anchors:
            if not hmac.compare_digest(entry.key_id, fingerprint):
                raise _Failure(
                    None,
                    f"the signing key is not the one the anchor witnessed ({entry.where}: key "
                    f"id {entry.key_id[:12]}..., this key {fingerprint[:12]}...): the key was "
                    "replaced and the checkpoints re-signed, or another home's log and key "
                    "were swapped in",
                )
        newest = max(anchors, key=lambda entry: entry.seq)
        if newest.seq > last:
            raise _Failure(
                last + 1,
                f"the anchor witnessed record {newest.seq} at {newest.at} ({newest.where}) but "
                f"the log ends at {last}: records deleted or truncated, or the log rolled back "
                "to an earlier copy",
            )
        good = 0
        for entry in sorted(anchors, key=lambda entry: entry.seq):
            if hmac.compare_digest(found.get(entry.seq, ""), entry.hash):
                good = entry.seq
                continue
            what = (
                f"record {entry.seq}: hash"
                if good + 1 == entry.seq
                else f"records {good + 1}-{entry.seq}: record {entry.seq}'s hash"
            )
            raise _Failure(
                good + 1,
                f"{what} differs from the head the anchor witnessed at {entry.at} "
                f"({entry.where}): rewritten and re-signed with the key, or rolled back and "
                "extended again",
            )
        seqs = [cp.seq for cp in history]
        for entry in anchors:
            count = bisect.bisect_right(seqs, entry.seq)
            if count != entry.history:
                raise _Failure(
                    None,
                    f"the signed history {self.history_path} has {count} checkpoint(s) up to "
                    f"record {entry.seq}, but the anchor witnessed {entry.history} "
                    f"({entry.where}): the history was edited and the head re-signed",
                )
        pending = (
            f", records {newest.seq + 1}-{last} not yet witnessed" if newest.seq < last else ""
        )
        return f"; the anchor's {len(anchors)} witnessed heads agree (latest {newest.seq}{pending})"

    @staticmethod
    def _has_records(reader: Any, has_table: bool) -> bool:
        if not has_table:
            return False
        return reader.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None

    def _scan(
        self,
        reader: Any,
        has_table: bool,
        by_seq: dict[int, Checkpoint],
        wanted: set[int],
    ) -> tuple[int, str, int, dict[int, str]]:
        """Walk the chain; return (last seq, last hash, last seq vouched for by history, and
        the hashes of the ``wanted`` records)."""
        expected = 1
        prev_hash = GENESIS_HASH
        last_good_cp = 0
        found: dict[int, str] = {}
        if not has_table:
            return 0, prev_hash, last_good_cp, found
        for row in self.database.scan(reader):
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
                    _text(value) for value in row[1:]
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
                canonical = canonical_json(payload) == payload_text
                computed = (
                    _canonical_record_hash(seq, ts, event, user, role, payload_text, stored_prev)
                    if canonical
                    else record_hash(seq, ts, event, user, role, payload, stored_prev)
                )
            except (TypeError, ValueError):
                raise _Failure(
                    seq, f"record {seq}: payload cannot be hashed (content changed)"
                ) from None
            if not hmac.compare_digest(computed, stored_hash):
                raise _Failure(seq, f"record {seq}: hash mismatch (content changed)")
            if not canonical:
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
            if seq in wanted:
                found[seq] = stored_hash
            prev_hash = stored_hash
            expected += 1
        return expected - 1, prev_hash, last_good_cp, found

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


def _canonical_record_hash(
    seq: int, ts: str, event: str, user: str, role: str, payload_text: str, prev_hash: str
) -> str:
    """:func:`record_hash` for a payload whose stored text is already its canonical JSON.

    The body is assembled around that text instead of serialising the payload again, which
    halves the JSON work of verifying a large log; the result is byte for byte what
    ``record_hash`` hashes (keys in sorted order, the same string escaping), as the tests of
    the verifier check against the appender's hashes.
    """
    text = _json_string
    body = (
        f'{{"event":{text(event)},"payload":{payload_text},"prev_hash":{text(prev_hash)},'
        f'"role":{text(role)},"seq":{int(seq)},"ts":{text(ts)},"user":{text(user)}}}'
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


# How canonical_json writes a string (ensure_ascii=False): the json module's own encoder.
_json_string = json.encoder.encode_basestring


def _text(value: object) -> str:
    """A column as text: SQLite hands back bytes (see ``SqliteLog.scan``), servers text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8")  # type: ignore[call-overload, no-any-return]


def _genesis_only(head_bytes: bytes | None) -> bool:
    """True when the head file is a genesis head (read without the key: it is missing)."""
    if head_bytes is None:
        return False
    try:
        fields = json.loads(head_bytes)
    except ValueError:
        return False
    return isinstance(fields, dict) and is_genesis(fields)
