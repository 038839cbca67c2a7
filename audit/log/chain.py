"""The chain format: how a record is serialised and hashed, and how records link.

Every record carries ``hash = sha256(canonical JSON of {seq, ts, event, user, role, payload,
prev_hash})`` and the first links to :data:`GENESIS_HASH`, so changing, removing or reordering a
row breaks the chain. Everything here is frozen by the logs already written: a different
serialisation, field set or timestamp format would make every existing record fail to verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_json(obj: object) -> str:
    """The one serialisation that is hashed and stored; changing it would break every log."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(
    seq: int, ts: str, event: str, user: str, role: str, payload: object, prev_hash: str
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


def utc_timestamp(moment: datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-28T03:12:45.123Z.

    Fixed width, so timestamps sort and compare correctly as text in SQL.
    """
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
