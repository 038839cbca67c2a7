"""Replay a recorded answer with its recorded settings and say what, if anything, changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import Settings
from core.errors import ClinragError

# Settings an answer record carries that decide the answer; replay reuses them exactly.
REPLAYED_SETTINGS = (
    "llm",
    "llm_model",
    "prompt_template",
    "max_new_tokens",
    "temperature",
    "support_threshold",
    "abstain_min_relevance",
    "abstain_max_unsupported",
    "abstain_rare_term_zipf",
    "unsupported_fallback",
    "quote_min_evidence",
)
# Checks added after the first records were written: a record without the setting was
# answered without the check, so its replay turns the check off.
ABSENT_MEANS = {"abstain_rare_term_zipf": 0.0}


@dataclass
class ReplayReport:
    seq: int
    unchanged: bool
    differences: list[str] = field(default_factory=list)
    original_answer: str = ""
    replayed_answer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "unchanged": self.unchanged,
            "differences": self.differences,
            "original_answer": self.original_answer,
            "replayed_answer": self.replayed_answer,
        }


def recorded_settings(settings: Settings, recorded: dict[str, Any]) -> Settings:
    """``settings`` with the answer-deciding values an answer record carries put back."""
    kept = {k: v for k, v in recorded.items() if k in REPLAYED_SETTINGS}
    return settings.model_copy(update=ABSENT_MEANS | kept)


def replay(settings: Settings, seq: int, assistant: Any = None) -> ReplayReport:
    from assistant.pipeline import Assistant, answer_payload

    log = audit_log(settings)
    record = log.get(seq)
    if record is None:
        raise ClinragError(f"No audit record {seq}. List records with: clinrag audit list")
    if record.event != "answer":
        raise ClinragError(
            f"Record {seq} is a '{record.event}' event; only answers can be replayed."
        )
    old = record.payload
    question = old.get("question")
    if not question or old.get("question_mode", "verbatim") != "verbatim":
        raise ClinragError(
            f"Record {seq} stores the question hashed or redacted (audit_questions setting), "
            "so it cannot be replayed."
        )
    replay_settings = recorded_settings(settings, old.get("settings") or {})
    assistant = assistant or Assistant(replay_settings)
    answer = assistant.ask(
        question,
        k=(old.get("settings") or {}).get("top_k"),
        record=False,
        attribute=False,
        user=record.user,
        role=record.role,
    )
    index = assistant.retriever.index
    new = answer_payload(answer, replay_settings, index.version, index.embedder.info)
    diffs = compare(old, new)
    report = ReplayReport(seq, not diffs, diffs, old.get("answer", ""), answer.answer)
    log.append("replay", settings.user, settings.role, report.to_dict())
    return report


def _retrieved(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["chunk_id"], r.get("content_hash", "")) for r in payload.get("retrieved") or []]


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
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


def audit_log(settings: Settings) -> Any:
    from audit.log import AuditLog

    return AuditLog(
        settings.audit_db,
        settings.audit_checkpoint,
        settings.audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
    )
