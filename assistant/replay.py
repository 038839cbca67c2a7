"""Replay a recorded answer with its recorded settings and say what, if anything, changed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from audit.record import answer_payload
from core.config import Settings, with_answer_settings
from core.errors import ClinragError

if TYPE_CHECKING:
    from assistant.pipeline import Assistant


@dataclass
class ReplayReport:
    seq: int
    unchanged: bool
    differences: list[str] = field(default_factory=list)
    original_answer: str = ""
    replayed_answer: str = ""
    # the documents the replayed answer drew on, each with its restricted_roles ("" = every
    # role): the replay runs as the original asker, so the caller decides what its reader
    # may be shown (services.audit.replay)
    documents: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "unchanged": self.unchanged,
            "differences": self.differences,
            "original_answer": self.original_answer,
            "replayed_answer": self.replayed_answer,
        }


def replay_answer(
    settings: Settings,
    seq: int,
    payload: Mapping[str, Any],
    *,
    user: str,
    role: str,
    assistant: Assistant | None = None,
) -> ReplayReport:
    """Ask the recorded question again with the record's answer-deciding settings; compare.

    ``payload`` is the answer record's. The replay itself is not recorded here: the caller
    (``services.audit.replay``) records it.
    """
    from assistant.pipeline import Assistant

    question = payload.get("question")
    if not question or payload.get("question_mode", "verbatim") != "verbatim":
        raise ClinragError(
            f"Record {seq} stores the question hashed or redacted (audit_questions setting), "
            "so it cannot be replayed."
        )
    recorded = payload.get("settings") or {}
    replay_settings = with_answer_settings(settings, recorded)
    assistant = assistant or Assistant(replay_settings)
    answer = assistant.ask(
        question,
        k=recorded.get("top_k"),
        record=False,
        attribute=False,
        user=user,
        role=role,
    )
    index = assistant.retriever.index
    new = answer_payload(answer, replay_settings, index.version, index.embedder.info)
    diffs = compare(payload, new)
    documents = {r["doc_id"]: r["restricted_roles"] for r in new["retrieved"]}
    return ReplayReport(
        seq, not diffs, diffs, payload.get("answer", ""), answer.answer, documents=documents
    )


def _retrieved(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(r["chunk_id"], r.get("content_hash", "")) for r in payload.get("retrieved") or []]


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diffs: list[str] = []
    if old.get("answer") != new.get("answer"):
        diffs.append("answer text changed")
    old_r, new_r = _retrieved(old), _retrieved(new)
    if old_r != new_r:
        gone = sorted({c for c, _ in old_r} - {c for c, _ in new_r})
        added = sorted({c for c, _ in new_r} - {c for c, _ in old_r})
        changed = sorted(c for c, h in old_r if any(c == c2 and h != h2 for c2, h2 in new_r))
        detail = (
            "; ".join(
                part
                for part in (
                    f"no longer retrieved: {', '.join(gone)}" if gone else "",
                    f"newly retrieved: {', '.join(added)}" if added else "",
                    f"content changed: {', '.join(changed)}" if changed else "",
                )
                if part
            )
            or "order changed"
        )
        diffs.append(f"sources changed ({detail})")
    for key, label in (("model", "model"), ("embedder", "embedder"), ("prompt", "prompt")):
        if (old.get(key) or {}) != (new.get(key) or {}):
            diffs.append(f"{label} changed: {old.get(key)} -> {new.get(key)}")
    if old.get("index_version") != new.get("index_version"):
        diffs.append(f"index version {old.get('index_version')} -> {new.get('index_version')}")
    return diffs
