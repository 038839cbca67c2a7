"""An answer as FHIR R4 resources, shaped after the HL7 "AI Transparency on FHIR" IG.

Each answer record exports as three resources (plus one ``Device`` per model, shared by every
answer that model wrote):

- the answer itself, a ``DocumentReference`` tagged ``AIAST`` (what the AI produced);
- a ``Provenance`` claiming the IG's AI Provenance profile (:data:`AI_PROVENANCE`):
  ``target`` the answer; ``reason`` AIAST; ``agent`` the language model (a ``Device`` with the
  AI Device profile: model id, backend, weights hash), the embedding model that retrieved the
  passages, and the asker (a ``Practitioner`` by user id); ``entity`` the inputs, all with role
  ``source``: the question with the prompt template and hash (a contained ``DocumentReference``
  with the IG's AI Input Prompt profile, authored by the asker) and every retrieved passage
  (document id, document and passage hashes, index version, score, whether it was cited);
- the attribution per answer sentence as an extension of the Provenance: for each answer
  sentence the source sentences with their scores, the faithfulness check as numbers and in
  words, or, when there is none, that it is pending or failed and why.

Standard library only, like the rest of ``audit.log``: an auditor's machine can produce and
check the export without the models.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit.log.chain import Record

# The IG's canonical URLs (http://hl7.org/fhir/uv/aitransparency, STU1 ballot): the profiles
# each resource claims and the code systems it draws its codes from.
_IG = "http://hl7.org/fhir/uv/aitransparency"
AI_PROVENANCE = f"{_IG}/StructureDefinition/AI-Provenance"
AI_DEVICE = f"{_IG}/StructureDefinition/AI-Device"
AI_INPUT_PROMPT = f"{_IG}/StructureDefinition/AI-InputPrompt"
_AI_KIND = f"{_IG}/StructureDefinition/aitransparency.AIKind"
_AI_DEVICE_TYPE = f"{_IG}/CodeSystem/AIdeviceTypeCS"
_AI_INPUTS = f"{_IG}/CodeSystem/AIinputsCS"
_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"

# clinrag's own extensions and identifier systems (no registered URLs: URNs say so).
_ID = "urn:clinrag"
EXT_ATTRIBUTION = "urn:clinrag:fhir:extension:answer-attribution"
EXT_PASSAGE = "urn:clinrag:fhir:extension:retrieved-passage"
EXT_AUDIT_RECORD = "urn:clinrag:fhir:extension:audit-record"

# Same namespace as the AuditEvents (audit.log.export), so ids are stable across exports.
_NAMESPACE = uuid.UUID("6f1c2d7e-6a53-4b8e-9a56-0c6f3c0a9d21")

# Attribution states of an answer (services.audit counts them as coverage).
ATTRIBUTED = "attributed"
PENDING = "pending"
FAILED = "failed"
NOT_APPLICABLE = "not-applicable"  # an abstention: nothing was said, nothing to attribute


@dataclass(frozen=True)
class AnswerAttribution:
    """What is known about one answer's attribution, from its record and the records linked
    to it (``services.audit`` finds those; this module only reads their payloads)."""

    status: str
    attribution: Mapping[str, Any] | None = None
    # the answer sentences the attribution's rows belong to, as recorded
    sentences: Sequence[Mapping[str, Any]] = ()
    reason: str | None = None
    record_seq: int | None = None  # the attribution or failure record; None: in the answer
    recorded: str | None = None
    answer_seq: int | None = field(default=None)

    @classmethod
    def of(
        cls,
        answer: Record,
        attribution: Record | None = None,
        failure: Record | None = None,
    ) -> AnswerAttribution:
        """The state of ``answer`` given its newest linked attribution and failure records.

        An attribution outweighs a failure (attributed again later), as coverage counts it.
        """
        p = answer.payload
        if p.get("abstained"):
            return cls(NOT_APPLICABLE, answer_seq=answer.seq)
        inline = p.get("attribution")
        if isinstance(inline, Mapping):
            return cls(
                ATTRIBUTED, inline, _dicts(p.get("sentences")), None, None, answer.ts, answer.seq
            )
        if attribution is not None and isinstance(attribution.payload.get("attribution"), Mapping):
            ap = attribution.payload
            sentences = _dicts(ap.get("sentences")) or _dicts(p.get("sentences"))
            return cls(
                ATTRIBUTED,
                ap["attribution"],
                sentences,
                None,
                attribution.seq,
                attribution.ts,
                answer.seq,
            )
        if failure is not None:
            reason = str(failure.payload.get("reason") or "no reason recorded")
            return cls(FAILED, None, (), reason, failure.seq, failure.ts, answer.seq)
        return cls(PENDING, answer_seq=answer.seq)

    def line(self) -> str:
        """One line for people: attributed (by which record), pending, or failed: reason."""
        if self.status == ATTRIBUTED:
            where = (
                "in the answer record"
                if self.record_seq is None
                else f"audit record {self.record_seq}"
            )
            method = (self.attribution or {}).get("method", "?")
            return f"attributed ({method}, {where})"
        if self.status == FAILED:
            return f"failed: {self.reason} (audit record {self.record_seq})"
        if self.status == PENDING:
            return "pending: no attribution or failure is recorded for this answer yet"
        return "not applicable: the assistant abstained, so there is nothing to attribute"

    def per_sentence(self, top: int | None = None) -> list[dict[str, Any]]:
        """For each answer sentence, the source sentences by score (highest first; ``top``
        keeps that many): ``[{"index", "text", "sources": [{"n", "chunk_id", "text",
        "score"}]}]``. Empty unless attributed."""
        att = self.attribution or {}
        matrix = att.get("per_sentence", att.get("per_target"))
        if not isinstance(matrix, list):
            return []
        raw_sources = att.get("sources")
        sources = raw_sources if isinstance(raw_sources, list) else []
        out: list[dict[str, Any]] = []
        for t, row in enumerate(matrix):
            if not isinstance(row, list):
                continue
            # rows follow the shown answer's sentences; older records may not line up
            text = str(self.sentences[t].get("text", "")) if t < len(self.sentences) else ""
            ranked = sorted(
                (
                    (float(score), s)
                    for s, score in enumerate(row)
                    if isinstance(score, int | float) and math.isfinite(score)
                ),
                key=lambda pair: -pair[0],
            )
            if top is not None:
                ranked = ranked[:top]
            out.append(
                {
                    "index": t + 1,
                    "text": text,
                    "sources": [_source(sources, s, score) for score, s in ranked],
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "answer_id": self.answer_seq,
            "record": self.record_seq,
            "recorded": self.recorded,
            "reason": self.reason,
            "method": (self.attribution or {}).get("method"),
            "faithfulness": (self.attribution or {}).get("faithfulness"),
            "faithfulness_text": faithfulness_words((self.attribution or {}).get("faithfulness"))
            if self.status == ATTRIBUTED
            else None,
            "sentences": self.per_sentence(),
        }


def _source(sources: list[Any], s: int, score: float) -> dict[str, Any]:
    src = sources[s] if s < len(sources) and isinstance(sources[s], Mapping) else {}
    return {
        "n": src.get("n"),
        "chunk_id": src.get("chunk_id"),
        "text": src.get("text"),
        "score": round(score, 6),
    }


def faithfulness_words(faithfulness: Any) -> str:
    """The removal check in plain words (the UI's wording lives in ``ui.render``; this one
    must work on an auditor's machine with only the standard library)."""
    if not isinstance(faithfulness, Mapping):
        return "Faithfulness was not measured for this answer."
    top = _number(faithfulness.get("top_k_drop"))
    rand = _number(faithfulness.get("random_drop"))
    k = _number(faithfulness.get("k"))
    if top is None:
        return "The effect of removing the most-credited source sentences was not recorded."
    what = f"the {int(k)} most-credited source sentences" if k else "the most-credited sentences"
    text = f"Removing {what} makes this answer {_likelihood(top)}"
    if rand is not None:
        text += f"; removing as many random sentences: {_likelihood(rand)}"
    return text + "."


def _likelihood(drop: float) -> str:
    if abs(drop) < 0.05:
        return "about as likely"
    factor = math.exp(min(abs(drop), 700.0))
    shown = f"{factor:.1f}x" if factor < 10 else f"{factor:.0f}x"
    return f"{shown} {'less' if drop > 0 else 'more'} likely"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------ resources


def resource_id(record: Record, kind: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{record.seq}:{record.hash}"))


def answer_entries(
    record: Record,
    event_url: str,
    state: AnswerAttribution,
    devices: dict[str, str],
) -> list[dict[str, Any]]:
    """The bundle entries of one answer record: its answer, the devices not yet in
    ``devices`` (key -> fullUrl, updated), and its AI Provenance."""
    p = record.payload
    entries: list[dict[str, Any]] = []
    answer_id = resource_id(record, "Answer")
    entries.append(_entry(answer_id, _answer_document(record, answer_id)))
    agents: list[dict[str, Any]] = []
    model = _object(p.get("model"))
    if model.get("model_id"):
        url = _device(model, "llm", devices, entries)
        agents.append(
            {
                "type": _codeable(_PARTICIPANT, "author", "Author"),
                "role": [_codeable(_AI_DEVICE_TYPE, "Artificial-Intelligence")],
                "who": {"reference": url, "display": str(model["model_id"])},
            }
        )
    embedder = _object(p.get("embedder"))
    if embedder.get("model") or embedder.get("name"):
        url = _device(embedder, "embedder", devices, entries)
        agents.append(
            {
                "type": _codeable(_PARTICIPANT, "assembler", "Assembler"),
                "role": [_codeable(_AI_DEVICE_TYPE, "Artificial-Intelligence")],
                "who": {
                    "reference": url,
                    "display": f"retrieval: {embedder.get('model') or embedder.get('name')}",
                },
            }
        )
    asker = _practitioner(record)
    agents.append(
        {
            "type": _codeable(_PARTICIPANT, "enterer", "Enterer"),
            "role": [{"text": record.role}],
            "who": asker,
        }
    )
    provenance_id = resource_id(record, "Provenance")
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"profile": [AI_PROVENANCE]},
        "contained": [_input_prompt(p, asker)],
        "extension": [
            {
                "url": EXT_AUDIT_RECORD,
                "valueReference": {
                    "reference": event_url,
                    "identifier": {"system": f"{_ID}:audit-record", "value": str(record.seq)},
                },
            },
            _attribution_extension(state),
        ],
        "target": [
            {"reference": f"urn:uuid:{answer_id}", "display": f"answer (audit record {record.seq})"}
        ],
        "occurredDateTime": record.ts,
        "recorded": record.ts,
        "reason": [
            _codeable(_OBSERVATION_VALUE, "AIAST", "Artificial Intelligence asserted"),
        ],
        "activity": {
            "coding": [{"system": _DATA_OPERATION, "code": "CREATE", "display": "create"}],
            "text": "answer a clinical question from the guideline library",
        },
        "agent": agents,
        "entity": [
            {
                "role": "source",
                "what": {"reference": "#input-prompt", "display": "question and prompt"},
                "agent": [{"type": _codeable(_PARTICIPANT, "author", "Author"), "who": asker}],
            },
            *_passages(p),
        ],
    }
    entries.append(_entry(provenance_id, provenance))
    return entries


def _entry(resource_id_: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource_id_}", "resource": resource}


def _answer_document(record: Record, answer_id: str) -> dict[str, Any]:
    p = record.payload
    answer = p.get("answer")
    abstained = bool(p.get("abstained"))
    description = (
        f"abstained: {p.get('abstain_reason') or 'no reason recorded'}"
        if abstained
        else f"answer ({p.get('mode') or 'generated'}), checked against the cited sources"
    )
    return {
        "resourceType": "DocumentReference",
        "id": answer_id,
        "meta": {
            "security": [
                {
                    "system": _OBSERVATION_VALUE,
                    "code": "AIAST",
                    "display": "Artificial Intelligence asserted",
                }
            ]
        },
        "identifier": [{"system": f"{_ID}:answer", "value": str(record.seq)}],
        "status": "current",
        "docStatus": "final",
        "type": {"text": "clinrag answer"},
        "date": record.ts,
        "description": description,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": _b64(answer) if isinstance(answer, str) else None,
                    "title": "answer",
                }
            }
        ],
    }


def _device(
    info: Mapping[str, Any], kind: str, devices: dict[str, str], entries: list[dict[str, Any]]
) -> str:
    """The fullUrl of the Device for a model (``ModelInfo`` or ``EmbedderInfo`` as recorded),
    adding it to ``entries`` the first time it is seen."""
    name = str(info.get("model_id") or info.get("model") or info.get("name"))
    weights = str(info.get("weights_hash") or "")
    backend = str(info.get("backend") or info.get("name") or "")
    key = f"Device:{kind}:{backend}:{name}:{weights}"
    if key in devices:
        return devices[key]
    device_id = str(uuid.uuid5(_NAMESPACE, key))
    url = f"urn:uuid:{device_id}"
    devices[key] = url
    versions: list[dict[str, Any]] = [
        {"type": {"text": "weights sha256"}, "value": weights},
        {"type": {"text": "backend"}, "value": backend},
    ]
    if info.get("dtype"):
        versions.append({"type": {"text": "dtype"}, "value": str(info["dtype"])})
    kind_code = "Large-Language-Models" if kind == "llm" else "Foundation-Models"
    entries.append(
        _entry(
            device_id,
            {
                "resourceType": "Device",
                "id": device_id,
                "meta": {"profile": [AI_DEVICE]},
                "extension": [
                    {"url": _AI_KIND, "valueCodeableConcept": _codeable(_AI_DEVICE_TYPE, kind_code)}
                ],
                "identifier": [
                    {"system": f"{_ID}:model", "value": name},
                    {"system": f"{_ID}:model-weights-sha256", "value": weights},
                ],
                "type": _codeable(_AI_DEVICE_TYPE, "Artificial-Intelligence"),
                "deviceName": [{"name": name, "type": "model-name"}],
                "version": versions,
            },
        )
    )
    return url


def _practitioner(record: Record) -> dict[str, Any]:
    # A logical reference: clinrag's user ids are not FHIR ids, and no Practitioner resource
    # is exported for them.
    return {
        "type": "Practitioner",
        "identifier": {"system": f"{_ID}:user", "value": record.user},
        "display": record.user,
    }


def _input_prompt(p: Mapping[str, Any], asker: dict[str, Any]) -> dict[str, Any]:
    """The input the model was given, as the record keeps it: the question (verbatim,
    redacted, or only its hash, by the site's policy) and the prompt template and hash."""
    question = p.get("question")
    prompt = _object(p.get("prompt"))
    identifiers = []
    if p.get("question_hash"):
        alg = str(p.get("question_hash_alg") or "sha256")
        identifiers.append({"system": f"{_ID}:question-{alg}", "value": str(p["question_hash"])})
    if prompt.get("hash"):
        identifiers.append({"system": f"{_ID}:prompt-sha256", "value": str(prompt["hash"])})
    if prompt.get("template"):
        identifiers.append({"system": f"{_ID}:prompt-template", "value": str(prompt["template"])})
    resolved = p.get("resolved_question")
    description = question if isinstance(question, str) else "question kept as its hash only"
    if isinstance(resolved, str) and resolved:
        description += f"\n\nasked as (a follow-up, rewritten to stand alone): {resolved}"
    return {
        "resourceType": "DocumentReference",
        "id": "input-prompt",
        "meta": {"profile": [AI_INPUT_PROMPT]},
        "identifier": identifiers,
        "status": "current",
        "type": _codeable(_AI_INPUTS, "AIInputPrompt", "AI Input Prompt"),
        "author": [asker],
        "description": description,
        "content": [
            {
                "attachment": {
                    "contentType": "text/markdown",
                    "data": _b64(question) if isinstance(question, str) else None,
                    "title": "question",
                }
            }
        ],
    }


def _passages(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``source`` entity per retrieved passage (or per citation, for records that kept
    no retrieval list)."""
    cited = {c.get("chunk_id") for c in _dicts(p.get("citations")) if c.get("chunk_id")}
    index_version = p.get("index_version")
    out = []
    for chunk in _dicts(p.get("retrieved")) or _dicts(p.get("citations")):
        doc_id = chunk.get("doc_id")
        if not doc_id:
            continue
        parts: list[dict[str, Any]] = [
            _value("passage", chunk.get("n")),
            _value("chunk", chunk.get("chunk_id")),
            _value("contentSha256", chunk.get("content_hash")),
            _value("documentSha256", chunk.get("doc_sha256")),
            _value("indexVersion", index_version),
            _value("section", chunk.get("section")),
            _value("page", chunk.get("page")),
            _value("score", chunk.get("score")),
            _value("cited", chunk.get("chunk_id") in cited),
        ]
        out.append(
            {
                "extension": [{"url": EXT_PASSAGE, "extension": parts}],
                "role": "source",
                "what": {
                    "type": "DocumentReference",
                    "identifier": {"system": f"{_ID}:document", "value": str(doc_id)},
                    "display": str(chunk.get("title") or doc_id),
                },
            }
        )
    return out


def _attribution_extension(state: AnswerAttribution) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "status", "valueCode": state.status}]
    if state.record_seq is not None:
        parts.append(_value("auditRecord", state.record_seq))
    if state.status == ATTRIBUTED:
        att = state.attribution or {}
        faith = _object(att.get("faithfulness"))
        parts += [
            _value("method", att.get("method")),
            _value("faithfulness", faithfulness_words(att.get("faithfulness"))),
            _value("faithfulnessK", faith.get("k")),
            _value("topKDrop", faith.get("top_k_drop")),
            _value("randomDrop", faith.get("random_drop")),
        ]
        for row in state.per_sentence():
            sources = [
                {
                    "url": "source",
                    "extension": [
                        _value("passage", src["n"]),
                        _value("chunk", src["chunk_id"]),
                        _value("text", src["text"]),
                        _value("score", src["score"]),
                    ],
                }
                for src in row["sources"]
            ]
            parts.append(
                {
                    "url": "sentence",
                    "extension": [
                        _value("index", row["index"]),
                        _value("text", row["text"]),
                        *sources,
                    ],
                }
            )
    else:
        parts.append(_value("note", state.line()))
    return {"url": EXT_ATTRIBUTION, "extension": parts}


# ------------------------------------------------------------------ helpers


def _value(url: str, value: Any) -> dict[str, Any]:
    """A simple extension with the value type FHIR wants for ``value`` (None: dropped by the
    export's pruning)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"url": url, "valueBoolean": value}
    if isinstance(value, int):
        return {"url": url, "valueInteger": value}
    if isinstance(value, float):
        return {"url": url, "valueDecimal": value} if math.isfinite(value) else {}
    return {"url": url, "valueString": str(value)}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _codeable(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}
