"""Reading the audit log: find, show, verify, export and replay records.

Verifying, exporting and replaying are themselves recorded. An export is recorded before its
data is handed out (the record carries the data's sha256), so no export leaves unrecorded.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

# The record types callers of this module handle, re-exported so front ends never import the
# log's storage modules.
from audit.log import Record as Record
from audit.log import VerifyResult as VerifyResult
from audit.record import Event, Recorder, answer_link, open_log
from core.config import Settings
from core.errors import ClinragError, NotFoundError
from core.types import Actor
from services.access import Operation, require

if TYPE_CHECKING:
    from assistant.pipeline import Assistant
    from assistant.replay import ReplayReport


class ExportFormat(StrEnum):
    FHIR = "fhir"
    CSV = "csv"
    JSONL = "jsonl"


EVENTS: tuple[str, ...] = tuple(str(e) for e in Event)


@dataclass(frozen=True)
class Query:
    """Which records to list or export: every given filter must match."""

    since: str | None = None  # ISO date or time, inclusive
    until: str | None = None  # exclusive
    user: str | None = None
    event: str | None = None
    answers: str = "all"  # all | answered | abstained (answer records only)
    limit: int | None = None
    newest_first: bool = False

    def filters(self) -> dict[str, Any]:
        """The query as recorded with an export."""
        out: dict[str, Any] = {
            "since": self.since,
            "until": self.until,
            "user": self.user,
            "event": self.event,
            "limit": self.limit,
        }
        if self.answers != "all":
            out["answers"] = self.answers
        return out


@dataclass(frozen=True)
class Export:
    data: bytes
    fmt: ExportFormat
    count: int
    first_seq: int | None
    last_seq: int | None
    sha256: str
    record_seq: int  # the export's own audit record


def find(settings: Settings, actor: Actor, query: Query) -> list[Record]:
    require(actor, Operation.READ_AUDIT)
    with open_log(settings) as log:
        records = log.list(
            since=query.since,
            until=query.until,
            user=query.user,
            event=query.event,
            limit=query.limit,
            newest_first=query.newest_first,
        )
    if query.answers != "all":
        want = query.answers == "abstained"
        records = [
            r
            for r in records
            if r.event == Event.ANSWER and bool(r.payload.get("abstained")) == want
        ]
    return records


def get(settings: Settings, actor: Actor, seq: int) -> Record:
    require(actor, Operation.READ_AUDIT)
    with open_log(settings) as log:
        record = log.get(seq)
    if record is None:
        raise NotFoundError(f"No audit record {seq}. List records with: clinrag audit list")
    return record


def attribution_of(settings: Settings, actor: Actor, answer_id: int) -> Record | None:
    """The attribution recorded for the answer record ``answer_id`` (from any caller)."""
    require(actor, Operation.READ_AUDIT)
    with Recorder.open(settings) as recorder:
        return recorder.attribution_of(answer_id)


def verify(settings: Settings, actor: Actor, anchors: tuple[str, ...] = ()) -> VerifyResult:
    """Check the chain and checkpoints, then record that it was checked and the outcome.

    The heads witnessed in the configured file anchors (``audit_anchor``) and in ``anchors``
    (copies the auditor trusts, e.g. exported from the SIEM) must all agree with the log. A
    failed check of a log with no records is not recorded: that record would be the first of
    a new log, written over the evidence of the deleted one.
    """
    require(actor, Operation.READ_AUDIT)
    with Recorder.open(settings) as recorder:
        result = recorder.log.verify(anchors)
        if result.ok or result.count > 0:
            recorder.verify(actor, result)
    return result


def render(fmt: ExportFormat, records: list[Record]) -> bytes:
    from audit.log.export import to_csv, to_fhir, to_jsonl

    if fmt is ExportFormat.FHIR:
        return json.dumps(to_fhir(records), indent=2, ensure_ascii=False).encode("utf-8")
    buffer = io.StringIO(newline="")
    if fmt is ExportFormat.CSV:
        to_csv(records, buffer)
    else:
        to_jsonl(records, buffer)
    return buffer.getvalue().encode("utf-8")


def export(
    settings: Settings,
    actor: Actor,
    fmt: ExportFormat | str,
    query: Query,
    *,
    destination: str,
) -> Export:
    """The matching records in ``fmt``, in sequence order, after the export is recorded.

    ``destination`` says where the caller will put the data (a file, stdout, a download).
    """
    fmt = ExportFormat(fmt)
    records = sorted(find(settings, actor, query), key=lambda r: r.seq)
    data = render(fmt, records)
    digest = hashlib.sha256(data).hexdigest()
    seqs = [r.seq for r in records]
    with Recorder.open(settings) as recorder:
        seq = recorder.export(
            actor,
            fmt=str(fmt),
            seqs=seqs,
            filters=query.filters(),
            destination=destination,
            sha256=digest,
        )
    return Export(
        data=data,
        fmt=fmt,
        count=len(records),
        first_seq=seqs[0] if seqs else None,
        last_seq=seqs[-1] if seqs else None,
        sha256=digest,
        record_seq=seq,
    )


def replay(
    settings: Settings, actor: Actor, seq: int, *, assistant: Assistant | None = None
) -> ReplayReport:
    """Re-run a recorded answer with its recorded settings, say what changed, record that."""
    from assistant.replay import replay_answer

    require(actor, Operation.READ_AUDIT)
    record = get(settings, actor, seq)
    if record.event != Event.ANSWER:
        raise ClinragError(
            f"Record {seq} is a '{record.event}' event; only answers can be replayed."
        )
    report = replay_answer(
        settings, seq, record.payload, user=record.user, role=record.role, assistant=assistant
    )
    with Recorder.open(settings) as recorder:
        recorder.replay(
            actor,
            seq,
            unchanged=report.unchanged,
            differences=report.differences,
            original_answer=report.original_answer,
            replayed_answer=report.replayed_answer,
        )
    return report


def linked_answer(record: Record) -> int | None:
    """The answer record an attribution, feedback or replay record points at."""
    return answer_link(record.payload)
