"""Reading the audit log: find, show, verify, export and replay records.

Verifying, exporting and replaying are themselves recorded. An export is recorded before its
data is handed out (the record carries the data's sha256), so no export leaves unrecorded.

Records are stored complete, but read through the reader's role: an answer drawn from a
document the reader may not see (``restricted_roles``), and the attribution and replay
records about it, come back with the documents' content withheld (:func:`withheld_view`).
Verification reads the stored rows, so the chain stays verifiable by anyone.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

# The record types callers of this module handle, re-exported so front ends never import the
# log's storage modules.
from audit.log import Record as Record
from audit.log import VerifyResult as VerifyResult
from audit.log.fhir import AnswerAttribution as AnswerAttribution
from audit.record import Event, Recorder, answer_link, open_log
from core.config import Settings
from core.errors import AccessDeniedError, ClinragError, NotFoundError
from core.library.restrictions import restricted_roles
from core.types import Actor
from services.access import Operation, require
from services.library import manifest_documents

if TYPE_CHECKING:
    from assistant.pipeline import Assistant
    from assistant.replay import ReplayReport
    from audit.log import AuditLog


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
    """The matching records, as ``actor``'s role may read them (:func:`withheld_view`)."""
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
        return _views(settings, actor, records, log)


def get(settings: Settings, actor: Actor, seq: int) -> Record:
    """Record ``seq``, as ``actor``'s role may read it (:func:`withheld_view`)."""
    require(actor, Operation.READ_AUDIT)
    with open_log(settings) as log:
        record = log.get(seq)
        if record is None:
            raise NotFoundError(f"No audit record {seq}. List records with: clinrag audit list")
        return _views(settings, actor, [record], log)[0]


def attribution_of(settings: Settings, actor: Actor, answer_id: int) -> Record | None:
    """The attribution recorded for the answer record ``answer_id`` (from any caller), as
    ``actor``'s role may read it."""
    require(actor, Operation.READ_AUDIT)
    with Recorder.open(settings) as recorder:
        record = recorder.attribution_of(answer_id)
        if record is None:
            return None
        return _views(settings, actor, [record], recorder.log)[0]


def answer_attribution(settings: Settings, actor: Actor, answer_id: int) -> AnswerAttribution:
    """Where the attribution of answer record ``answer_id`` stands (attributed, pending,
    failed with its reason, or not applicable to an abstention), read through ``actor``'s
    role like the records it comes from."""
    require(actor, Operation.READ_AUDIT)
    with open_log(settings) as log:
        answer = log.get(answer_id)
        if answer is None or answer.event != Event.ANSWER:
            raise NotFoundError(
                f"No answer record {answer_id}. List answers with: clinrag audit list "
                "--event answer"
            )
        answer = _views(settings, actor, [answer], log)[0]
        return _attributions(settings, actor, [answer], log)[answer_id]


def _attributions(
    settings: Settings, actor: Actor, answers: list[Record], log: AuditLog
) -> dict[int, AnswerAttribution]:
    """The attribution state of each answer record, from the newest attribution and failure
    records linked to it (by :func:`audit.record.answer_link`, wherever they are in the log)."""
    wanted = {r.seq for r in answers if r.event == Event.ANSWER}
    newest: dict[tuple[Event, int], Record] = {}
    if wanted:
        for event in (Event.ATTRIBUTION, Event.ATTRIBUTION_FAILED):
            for record in log.list(event=str(event)):
                link = answer_link(record.payload)
                if link in wanted:
                    newest[(event, link)] = record  # the list is in sequence order
    # the attribution records carry the documents' words: read them as the actor may
    viewed = dict(zip(newest, _views(settings, actor, list(newest.values()), log), strict=True))
    return {
        r.seq: AnswerAttribution.of(
            r, viewed.get((Event.ATTRIBUTION, r.seq)), viewed.get((Event.ATTRIBUTION_FAILED, r.seq))
        )
        for r in answers
        if r.event == Event.ANSWER
    }


@dataclass(frozen=True)
class Coverage:
    """How many answers have their attribution: recorded (with the answer, or linked to it),
    failed (a linked failure record with its reason), or pending (neither yet)."""

    attributed: int
    pending: int
    failed: int

    @property
    def answers(self) -> int:
        return self.attributed + self.pending + self.failed

    def line(self) -> str:
        return (
            f"attribution coverage: {self.attributed} attributed, {self.pending} pending, "
            f"{self.failed} failed of {self.answers} answers"
        )


def attribution_coverage(settings: Settings, actor: Actor, query: Query | None = None) -> Coverage:
    """Attribution coverage of the answer records ``query`` selects by time and user (all of
    them without one; its event and limit are ignored: coverage is about answers).

    Abstentions are left out: they have nothing to attribute. A linked record counts whenever
    it was written, after the query's window too; an attribution outweighs an earlier failure
    (attributed again later).
    """
    require(actor, Operation.READ_AUDIT)
    query = query or Query()
    if query.answers == "abstained":
        return Coverage(0, 0, 0)
    with open_log(settings) as log:
        answers = log.list(
            since=query.since, until=query.until, user=query.user, event=str(Event.ANSWER)
        )
        attributed = _linked(log, Event.ATTRIBUTION)
        failed = _linked(log, Event.ATTRIBUTION_FAILED)
    counts = {"attributed": 0, "pending": 0, "failed": 0}
    for record in answers:
        if record.payload.get("abstained"):
            continue
        if record.payload.get("attribution") or record.seq in attributed:
            counts["attributed"] += 1
        elif record.seq in failed:
            counts["failed"] += 1
        else:
            counts["pending"] += 1
    return Coverage(**counts)


def _linked(log: AuditLog, event: Event) -> set[int]:
    """The answer records that records of ``event`` point at."""
    return {
        link
        for record in log.list(event=str(event))
        if (link := answer_link(record.payload)) is not None
    }


# ------------------------------------------------------------------ restricted content

# Who may see restricted content in the audit trail: whoever's role may see the documents
# the record draws on, by the rule retrieval applies (core.library.restrictions). Everyone
# who may read the audit log sees that the record exists, who asked, when, the question,
# scores, hashes, ids and versions; the documents' words and titles, and the answer built
# from them, only a reader who could have been given that answer.
WITHHELD = "[withheld]"
# A document gone from the library whose restriction the record does not carry (records
# written before answers recorded it) is treated as restricted to administrators.
UNKNOWN_RESTRICTION = frozenset({"admin"})
_LINKED_EVENTS = frozenset({Event.ATTRIBUTION, Event.REPLAY})
# What a withheld view keeps of each payload as it is; every other field (including any
# added later) is withheld unless a rule below keeps part of it.
_KEEP: dict[str, frozenset[str]] = {
    Event.ANSWER: frozenset(
        {
            "abstained",
            "abstain_reason",
            "mode",
            "index_version",
            "embedder",
            "model",
            "prompt",
            "decoding",
            "settings",
            "faithfulness",
            "timings",
            "question",
            "question_hash",
            "question_hash_alg",
            "question_mode",
            "os_user",
            "os_uid",
        }
    ),
    Event.ATTRIBUTION: frozenset({"answer_id", "answer_seq", "faithfulness"}),
    Event.REPLAY: frozenset({"answer_id", "unchanged", "differences"}),
}
_ATTRIBUTION_KEEP = frozenset(
    {"method", "n_ablations", "scores", "per_sentence", "per_target", "faithfulness"}
    | {"n_evaluations", "seconds"}
)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _record_documents(payload: Mapping[str, Any]) -> dict[str, frozenset[str] | None]:
    """The documents an answer payload draws on, with the restriction it recorded (None for
    records written before restrictions were recorded)."""
    out: dict[str, frozenset[str] | None] = {}
    for key in ("retrieved", "citations", "evidence"):
        for entry in _dicts(payload.get(key)):
            doc_id = entry.get("doc_id")
            if not isinstance(doc_id, str):
                continue
            if "restricted_roles" in entry:
                out[doc_id] = restricted_roles(entry)
            else:
                out.setdefault(doc_id, None)
    return out


def hidden_documents(
    payload: Mapping[str, Any], role: str, documents: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """The documents of an answer payload that ``role`` may not see, each with why.

    Both the restriction recorded with the answer and the library's current one must let the
    role see a document: a document restricted since stays hidden from then on, and a
    document since removed keeps the restriction it was used under.
    """
    hidden: dict[str, str] = {}
    for doc_id, recorded in _record_documents(payload).items():
        doc = documents.get(doc_id)
        rules = [recorded] if recorded is not None else []
        if doc is not None:
            rules.append(restricted_roles(doc.get("metadata") or {}))
        elif recorded is None:
            rules.append(UNKNOWN_RESTRICTION)
        denied = sorted({r for rule in rules if rule and role not in rule for r in rule})
        if denied:
            why = f"restricted to {', '.join(denied)}"
            if doc is None and recorded is None:
                why += " (removed from the library; its restriction was not recorded)"
            hidden[doc_id] = why
    return hidden


def withheld_view(
    record: Record,
    role: str,
    documents: Mapping[str, Mapping[str, Any]],
    answer: Record | None = None,
) -> Record:
    """``record`` as a reader with ``role`` may see it: unchanged unless it draws on a
    document that role may not see, else a copy with that content replaced by a marker.

    ``documents`` is the library (doc_id -> manifest row); ``answer`` the answer record an
    attribution or replay record points at (its documents decide). The copy keeps seq, time,
    user, role and hashes, so it still names its place in the chain, and says in
    ``payload["withheld"]`` what was withheld and why; its hash no longer matches its
    payload, which is why verification reads the stored rows.
    """
    if record.event == Event.ANSWER:
        source: Mapping[str, Any] | None = record.payload
    elif record.event in _LINKED_EVENTS:
        source = answer.payload if answer is not None else None
    else:
        return record
    if source is None:  # an attribution or replay whose answer record cannot be found
        hidden = {"?": f"its answer record {answer_link(record.payload)} was not found"}
    else:
        hidden = hidden_documents(source, role, documents)
    if not hidden:
        return record
    reasons = "; ".join(f"{doc_id}: {why}" for doc_id, why in sorted(hidden.items()))
    marker = f"{WITHHELD} role {role} may not see the documents it draws on ({reasons})"
    payload = _withhold(str(record.event), record.payload, set(hidden), marker)
    payload["withheld"] = {"role": role, "documents": hidden, "marker": marker}
    return replace(record, payload=payload)


def _masked(
    entries: Any, marker: str, fields: frozenset[str], hidden: set[str] | None = None
) -> Any:
    """A list of payload entries with ``fields`` replaced by ``marker`` (and, in entries of a
    ``hidden`` document, the title and section too)."""
    if not isinstance(entries, list):
        return marker
    out: list[Any] = []
    for entry in entries:
        if not isinstance(entry, dict):
            out.append(marker)
            continue
        drop = fields | (_DOCUMENT_NAMES if hidden and entry.get("doc_id") in hidden else set())
        out.append({k: marker if k in drop else v for k, v in entry.items()})
    return out


_TEXT = frozenset({"text"})
_DOCUMENT_NAMES = frozenset({"title", "section"})


def _withhold(
    event: str, payload: Mapping[str, Any], hidden: set[str], marker: str
) -> dict[str, Any]:
    keep = _KEEP.get(event, frozenset())
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key in keep or value is None:
            out[key] = value
        elif key in ("sentences", "unverified_sentences"):
            out[key] = _masked(value, marker, _TEXT)
        elif key in ("citations", "retrieved", "evidence"):
            # the words of every passage; the titles and sections of the hidden documents
            out[key] = _masked(value, marker, _TEXT, hidden)
        elif key == "attribution" and isinstance(value, dict):
            out[key] = {k: v if k in _ATTRIBUTION_KEEP else marker for k, v in value.items()} | (
                {"sources": _masked(value["sources"], marker, _TEXT)} if "sources" in value else {}
            )
        else:
            out[key] = marker
    return out


def _views(settings: Settings, actor: Actor, records: list[Record], log: AuditLog) -> list[Record]:
    """``records`` as ``actor``'s role may read them (looking up linked answers in ``log``)."""
    if not any(r.event == Event.ANSWER or r.event in _LINKED_EVENTS for r in records):
        return records
    documents = {d["doc_id"]: d for d in manifest_documents(settings)}
    answers = {r.seq: r for r in records if r.event == Event.ANSWER}
    out = []
    for record in records:
        answer = None
        if record.event in _LINKED_EVENTS:
            link = answer_link(record.payload)
            if link is not None:
                if link not in answers:
                    found = log.get(link)
                    if found is not None and found.event == Event.ANSWER:
                        answers[link] = found
                answer = answers.get(link)
        out.append(withheld_view(record, actor.role, documents, answer))
    return out


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


def render(
    fmt: ExportFormat,
    records: list[Record],
    attributions: Mapping[int, AnswerAttribution] | None = None,
) -> bytes:
    """``records`` in ``fmt``; FHIR also carries each answer's attribution (``attributions``,
    answer seq -> state; without it only attributions inside the answer records count)."""
    from audit.log.export import to_csv, to_fhir, to_jsonl

    if fmt is ExportFormat.FHIR:
        bundle = to_fhir(records, attributions=attributions)
        return json.dumps(bundle, indent=2, ensure_ascii=False).encode("utf-8")
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
    attributions = None
    if fmt is ExportFormat.FHIR:
        # every answer's attribution, whoever asked and wherever its record is in the log
        with open_log(settings) as log:
            attributions = _attributions(settings, actor, records, log)
    data = render(fmt, records, attributions)
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
    """Re-run a recorded answer with its recorded settings, say what changed, record that.

    The replay runs as the original asker (their role decides what is retrieved, as it did),
    so only a reader whose role may see every document the record draws on may replay it.
    The replayed answer may draw on restricted documents the record did not: its text is then
    withheld from the report and the replay record, since readers of the replay record are
    checked against the original answer's documents only.
    """
    from assistant.replay import replay_answer

    require(actor, Operation.READ_AUDIT)
    with open_log(settings) as log:
        record = log.get(seq)
    if record is None:
        raise NotFoundError(f"No audit record {seq}. List records with: clinrag audit list")
    if record.event != Event.ANSWER:
        raise ClinragError(
            f"Record {seq} is a '{record.event}' event; only answers can be replayed."
        )
    documents = {d["doc_id"]: d for d in manifest_documents(settings)}
    hidden = hidden_documents(record.payload, actor.role, documents)
    if hidden:
        reasons = "; ".join(f"{doc_id}: {why}" for doc_id, why in sorted(hidden.items()))
        raise AccessDeniedError(
            f"{actor.user} ({actor.role}) may not replay record {seq}: it draws on documents "
            f"that role may not see ({reasons}), and the replay would show them."
        )
    report = replay_answer(
        settings, seq, record.payload, user=record.user, role=record.role, assistant=assistant
    )
    original = _record_documents(record.payload)
    new_restricted = sorted(
        doc_id
        for doc_id, roles in report.documents.items()
        if doc_id not in original and restricted_roles({"restricted_roles": roles})
    )
    if new_restricted:
        report.replayed_answer = (
            f"{WITHHELD} the replay drew on restricted documents the recorded answer did not "
            f"({', '.join(new_restricted)}); compare the sources listed in the differences"
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
