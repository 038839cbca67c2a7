"""The anchor: every signed head, witnessed by a sink the service cannot rewrite.

The checkpoints prove the records were not changed by someone without the signing key. But
the key sits on the same machine, readable by the service, so whoever has the service's file
access can rewrite records and re-sign them, roll the database, checkpoint and history back
together to an earlier genuine copy, or swap in another home's log with its key. None of that
leaves a trace inside the box. The anchor is the trace outside it (the idea of RFC 6962's
signed tree heads and QLDB's digests): after each append the new head, ``(seq, hash, ts)``
with the history count and a fingerprint of the key (never the key), is appended to the
``audit_anchor`` sinks. Since the witness only grows, verifying the log against it catches
deletion, truncation, a rollback to any head older than the latest witnessed one, a rewrite of
any witnessed record, a key swap and a home swap.

Entries are one flat JSON object per line, so they can be found in a syslog export too (the
object starts at the line's last ``{``). An attacker who can append to the witness may add
entries, but cannot remove the genuine ones, and every entry must agree with the log.

What the anchor does not cover: an attacker who also controls the witness, and records
appended after the last witnessed head (they are as safe as the checkpoints alone make them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.log.chain import canonical_json, utc_timestamp
from audit.log.files import read_optional
from audit.log.sinks import Sink, append_line, check_appendable, file_sinks, send_syslog

ANCHOR_TYPE = "clinrag.audit.head"
ANCHOR_VERSION = 1
# The key's fingerprint: an HMAC of a fixed text, so it names the key without revealing it.
_KEY_ID_MESSAGE = b"clinrag audit signing key id v1"


def key_id(key: bytes) -> str:
    """128-bit fingerprint of the signing key (the key cannot be derived from it)."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class AnchorEntry:
    """One witnessed head; ``where`` names the file and line for messages."""

    log: str  # hash of record 1: which log this head belongs to
    seq: int
    hash: str
    ts: str
    history: int
    key_id: str
    at: str  # when it was witnessed
    where: str


def entry_line(
    *, log: str, seq: int, digest: str, ts: str, history: int, key_fingerprint: str
) -> str:
    """The text written for one head (flat: no nested objects, see :func:`read_anchor`)."""
    return canonical_json(
        {
            "type": ANCHOR_TYPE,
            "v": ANCHOR_VERSION,
            "log": log,
            "seq": seq,
            "hash": digest,
            "ts": ts,
            "history": history,
            "key_id": key_fingerprint,
            "at": utc_timestamp(),
            "host": socket.gethostname(),
        }
    )


def write_anchor(sinks: Sequence[Sink], line: str) -> None:
    """Append ``line`` to every sink; an ``OSError`` from a file sink propagates.

    The caller treats that as a failed append (fail closed): a witness that silently stops
    witnessing is exactly what an attacker who means to roll the log back would arrange.
    """
    for sink in sinks:
        if sink.kind == "file":
            assert sink.path is not None
            append_line(sink.path, line, durable=True)
        else:
            send_syslog(sink.facility, line)


def check_anchor_writable(sinks: Sequence[Sink]) -> None:
    for path in file_sinks(sinks):
        check_appendable(path)


class AnchorReadError(Exception):
    """An anchor file exists but cannot be read."""


def read_anchor(path: Path) -> list[AnchorEntry]:
    """The witnessed heads in ``path`` (missing file: none); other lines are skipped.

    A line that names the anchor type but does not parse (a torn write, or garbage someone
    appended) vouches for nothing and is skipped: it cannot hide the genuine entries around it.
    """
    try:
        data = read_optional(path)
    except OSError as exc:
        raise AnchorReadError(f"anchor file {path} cannot be read ({exc})") from exc
    if not data:
        return []
    entries: list[AnchorEntry] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.decode("utf-8", "replace")
        if ANCHOR_TYPE not in line:
            continue
        entry = _parse(line[line.rfind("{") :], f"{path} line {number}")
        if entry is not None:
            entries.append(entry)
    return entries


def _parse(text: str, where: str) -> AnchorEntry | None:
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("type") != ANCHOR_TYPE:
        return None
    try:
        seq, history = fields["seq"], fields["history"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, history)):
            return None
        strings = [fields[k] for k in ("log", "hash", "ts", "key_id", "at")]
    except KeyError:
        return None
    if not all(isinstance(v, str) for v in strings) or seq < 1:
        return None
    log, digest, ts, fingerprint, at = (str(v) for v in strings)
    return AnchorEntry(log, seq, digest, ts, history, fingerprint, at, where)


def read_anchors(paths: Iterable[Path]) -> list[AnchorEntry]:
    entries: list[AnchorEntry] = []
    for path in paths:
        entries.extend(read_anchor(path))
    return entries


def has_entries(paths: Iterable[Path]) -> bool:
    """True when any anchor file holds a witnessed head (unreadable counts as yes)."""
    try:
        return bool(read_anchors(paths))
    except AnchorReadError:
        return True
