"""Export audit records as JSONL (faithful), CSV (for people) or a FHIR R4 Bundle (for systems).

JSONL keeps every field, so an exported slice can be re-hashed record by record. CSV flattens the
answer fields a reviewer reads in a spreadsheet. FHIR gives each record an ``AuditEvent`` and,
for answers, an AI Provenance (HL7 AI Transparency on FHIR) with the model, the inputs, the
answer and its attribution per sentence (:mod:`audit.log.fhir`).

Payloads are written elsewhere and change over time, so every payload field is optional here.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from audit.log.chain import Record, canonical_json, utc_timestamp
from audit.log.fhir import AnswerAttribution, answer_entries, resource_id

CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "ts",
    "event",
    "user",
    "role",
    "question",
    "question_hash",
    "answer",
    "abstained",
    "model_id",
    "cited_doc_ids",
    "details",
    "prev_hash",
    "hash",
)


_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ID_SYSTEM = "urn:clinrag"

# event -> (DICOM audit event code, display, FHIR action C/R/U/D/E)
_EVENT_TYPES: dict[str, tuple[str, str, str]] = {
    "answer": ("110112", "Query", "E"),
    "replay": ("110112", "Query", "E"),
    "ingest": ("110107", "Import", "C"),
    "remove": ("110100", "Application Activity", "D"),
    "export": ("110106", "Export", "R"),
    "verify": ("110101", "Audit Log Used", "E"),
    "login": ("110114", "User Authentication", "E"),
    "login_failed": ("110114", "User Authentication", "E"),
    "feedback": ("110100", "Application Activity", "C"),
}
_DEFAULT_EVENT_TYPE = ("110100", "Application Activity", "E")


# --------------------------------------------------------------------------- JSONL


def to_jsonl(records: Iterable[Record], fh: TextIO) -> int:
    """Write one canonical JSON object per line; return the number written."""
    n = 0
    for record in records:
        fh.write(canonical_json(record.to_dict()) + "\n")
        n += 1
    return n


def read_jsonl(fh: TextIO) -> Iterator[Record]:
    """Records back from :func:`to_jsonl` output (blank lines skipped)."""
    for line in fh:
        if line.strip():
            yield Record.from_dict(json.loads(line))


# --------------------------------------------------------------------------- CSV


def to_csv(records: Iterable[Record], fh: TextIO) -> int:
    """Write a header and one flat row per record; return the number of rows.

    Every text cell is quoted, and a formula start (``= + - @``, tab, CR) at the start of a
    cell or after any delimiter a spreadsheet might split on (``,`` ``;`` tab, a line break)
    gets an apostrophe: a question typed as ``=HYPERLINK(...)``, or ``x;=HYPERLINK(...)``
    opened where ``;`` is the list separator, must not execute on the reviewer's machine. Use
    JSONL when the exact text matters.
    """
    writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(CSV_COLUMNS)
    n = 0
    for record in records:
        writer.writerow([_csv_cell(value) for value in _csv_row(record)])
        n += 1
    return n


def _csv_row(record: Record) -> list[Any]:
    p = record.payload
    model = _object(p.get("model"))
    is_answer = record.event in {"answer", "replay"}
    details = "" if is_answer else canonical_json(p)
    abstained = p.get("abstained")
    return [
        record.seq,
        record.ts,
        record.event,
        record.user,
        record.role,
        p.get("question", ""),
        p.get("question_hash", ""),
        p.get("answer", ""),
        "" if abstained is None else str(bool(abstained)).lower(),
        model.get("model_id", ""),
        ";".join(_cited_doc_ids(p)),
        details,
        record.prev_hash,
        record.hash,
    ]


# A cell start a spreadsheet may see: the cell's own start, or the text after a delimiter
# (a locale whose list separator is ";" splits an unquoting import there). Spaces are skipped:
# some imports trim them.
_FORMULA_AFTER = re.compile(r"(^|[,;\t\r\n])([ ]*)(?=[=+\-@])")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if value[:1] in ("\t", "\r"):
        value = "'" + value
    return _FORMULA_AFTER.sub(r"\1\2'", value)


# --------------------------------------------------------------------------- FHIR


def to_fhir(
    records: Iterable[Record],
    timestamp: str | None = None,
    attributions: Mapping[int, AnswerAttribution] | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``Bundle`` (type ``collection``): an AuditEvent per record and, per answer,
    the answer, its models and its AI Provenance with the attribution per answer sentence
    (:mod:`audit.log.fhir`).

    ``attributions`` (answer seq -> state) carries what records linked to an answer say
    about its attribution, wherever they are in the log; an answer it does not name is
    attributed only if its own record carries the attribution, else pending.
    """
    entries: list[dict[str, Any]] = []
    devices: dict[str, str] = {}
    for record in records:
        event_id = _resource_id(record, "AuditEvent")
        event_url = f"urn:uuid:{event_id}"
        entries.append({"fullUrl": event_url, "resource": _prune(_audit_event(record, event_id))})
        if record.event == "answer":
            state = (attributions or {}).get(record.seq) or AnswerAttribution.of(record)
            entries.extend(
                {"fullUrl": e["fullUrl"], "resource": _prune(e["resource"])}
                for e in answer_entries(record, event_url, state, devices)
            )
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timestamp or utc_timestamp(),
        "entry": entries,
    }


def audit_event(record: Record) -> dict[str, Any]:
    """One record's FHIR ``AuditEvent`` on its own (what ``audit_stream`` sends per record)."""
    event: dict[str, Any] = _prune(_audit_event(record, _resource_id(record, "AuditEvent")))
    return event


def _resource_id(record: Record, kind: str) -> str:
    # the same record always exports with the same ids: two exports of one log can be
    # diffed, and a resource traced back to its record
    return resource_id(record, kind)


def _audit_event(record: Record, event_id: str) -> dict[str, Any]:
    code, display, action = _EVENT_TYPES.get(record.event, _DEFAULT_EVENT_TYPE)
    p = record.payload
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {"system": _DCM, "code": code, "display": display},
        "action": action,
        "recorded": record.ts,
        # 4 = minor failure: the login was refused, the system worked as intended.
        "outcome": "4" if record.event == "login_failed" else "0",
        "agent": [
            {
                "who": {
                    "identifier": {"system": f"{_ID_SYSTEM}:user", "value": record.user},
                    "display": record.user,
                },
                "role": [{"text": record.role}],
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": "clinrag"},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": [_record_entity(record)],
    }
    if record.event == "login":
        event["subtype"] = [{"system": _DCM, "code": "110122", "display": "Login"}]
    elif record.event == "login_failed":
        event["subtype"] = [{"system": _DCM, "code": "110122", "display": "Login"}]
        event["outcomeDesc"] = "login failed"
    if record.event in {"answer", "replay"}:
        event["entity"].extend(_answer_entities(p))
    else:
        event["entity"][0]["detail"].extend(_payload_details(p))
    return event


def _record_entity(record: Record) -> dict[str, Any]:
    """The audit record itself, with its hashes, so the FHIR copy can be tied to the chain."""
    return {
        "what": {"identifier": {"system": f"{_ID_SYSTEM}:audit-record", "value": str(record.seq)}},
        "type": _entity_type("2", "System Object"),
        "role": _object_role("13", "Security Resource"),
        "name": record.event,
        "detail": [
            {"type": "hash", "valueString": record.hash},
            {"type": "prev_hash", "valueString": record.prev_hash},
        ],
    }


def _answer_entities(p: dict[str, Any]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    question_hash = p.get("question_hash")
    question = p.get("question")
    if question_hash or question:
        entity: dict[str, Any] = {
            "what": {
                "identifier": {
                    "system": f"{_ID_SYSTEM}:question-sha256",
                    "value": str(question_hash or ""),
                }
            },
            "type": _entity_type("2", "System Object"),
            "role": _object_role("24", "Query"),
            "name": "question",
        }
        if isinstance(question, str):
            entity["query"] = base64.b64encode(question.encode("utf-8")).decode("ascii")
        entities.append(entity)

    details: list[dict[str, Any]] = []
    for key in ("answer", "abstained", "abstain_reason", "index_version", "faithfulness"):
        if p.get(key) is not None:
            details.append(_detail(key, p[key]))
    model = _object(p.get("model"))
    for key in ("backend", "model_id", "weights_hash"):
        if model.get(key) is not None:
            details.append(_detail(f"model_{key}", model[key]))
    prompt = _object(p.get("prompt"))
    for key in ("template", "hash"):
        if prompt.get(key) is not None:
            details.append(_detail(f"prompt_{key}", prompt[key]))
    entities.append(
        {
            "what": {"display": "answer"},
            "type": _entity_type("2", "System Object"),
            "role": _object_role("3", "Report"),
            "name": "answer",
            "detail": details,
        }
    )

    cited = {c.get("chunk_id") for c in _dicts(p.get("citations")) if c.get("chunk_id")}
    chunks = _dicts(p.get("retrieved")) or _dicts(p.get("citations"))
    for chunk in chunks:
        chunk_id = chunk.get("chunk_id")
        if not chunk_id:
            continue
        chunk_details = [
            _detail(key, chunk[key])
            for key in ("doc_id", "content_hash", "score", "title", "section", "page")
            if chunk.get(key) is not None
        ]
        chunk_details.append(_detail("cited", chunk_id in cited))
        entities.append(
            {
                "what": {
                    "identifier": {"system": f"{_ID_SYSTEM}:chunk", "value": str(chunk_id)},
                    "display": str(chunk.get("title") or chunk.get("doc_id") or chunk_id),
                },
                "type": _entity_type("2", "System Object"),
                "role": _object_role("4", "Domain Resource"),
                "name": "retrieved chunk",
                "detail": chunk_details,
            }
        )
    return entities


# --------------------------------------------------------------------------- helpers


def _prune(value: Any) -> Any:
    """Drop empty strings, nulls, empty lists and empty objects: FHIR JSON forbids them."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_prune(item) for item in value) if v not in (None, "", [], {})]
    return value


def _cited_doc_ids(p: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for citation in _dicts(p.get("citations")):
        if citation.get("doc_id"):
            seen.setdefault(str(citation["doc_id"]), None)
    return list(seen)


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (payload fields are optional)."""
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _detail(name: str, value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else canonical_json(value)
    return {"type": name, "valueString": text}


def _payload_details(p: dict[str, Any]) -> list[dict[str, Any]]:
    return [_detail(key, value) for key, value in sorted(p.items()) if value is not None]


def _entity_type(code: str, display: str) -> dict[str, str]:
    return {"system": _ENTITY_TYPE, "code": code, "display": display}


def _object_role(code: str, display: str) -> dict[str, str]:
    return {"system": _OBJECT_ROLE, "code": code, "display": display}
