"""Replay a recorded answer with its recorded settings and say what, if anything, changed.

Besides the list of differences, a report reads as a diff: the answers sentence by sentence
(:func:`sentence_diff`, words marked within a changed sentence) and the sources that changed
(:class:`SourceChange`), so an auditor never has to compare two JSON blobs by eye.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from audit.record import answer_payload
from core.config import Settings, with_answer_settings
from core.errors import ClinragError
from core.text import split_sentences

if TYPE_CHECKING:
    from assistant.pipeline import Assistant


WordOp = Literal["=", "-", "+"]
SentenceKind = Literal["same", "removed", "added", "changed"]

# Two sentences at the same place are shown as one changed sentence (words marked) when at
# least this share of their words match; below it, as one removed and one added: marking
# nearly every word of an unrelated sentence reads worse than the two sentences whole.
SAME_SENTENCE_RATIO = 0.5

_WORDS = re.compile(r"\S+")


def word_diff(recorded: str, replayed: str) -> list[tuple[WordOp, str]]:
    """(op, words) runs turning ``recorded`` into ``replayed``: "=" kept, "-" gone, "+" new."""
    a, b = _WORDS.findall(recorded), _WORDS.findall(replayed)
    ops: list[tuple[WordOp, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            ops.append(("=", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            ops.append(("-", " ".join(a[i1:i2])))
        if j2 > j1:
            ops.append(("+", " ".join(b[j1:j2])))
    return ops


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(
        None, _WORDS.findall(a.lower()), _WORDS.findall(b.lower()), autojunk=False
    ).ratio()


@dataclass(frozen=True)
class SentenceChange:
    """One sentence of the recorded answer against the replayed one."""

    kind: SentenceKind
    recorded: str = ""
    replayed: str = ""

    def words(self) -> list[tuple[WordOp, str]]:
        return word_diff(self.recorded, self.replayed)

    def marked(self) -> str:
        """The change as one line of text, words marked as ``[-gone-]{+new+}``."""
        if self.kind == "same":
            return self.recorded
        if self.kind == "removed":
            return f"[-{self.recorded}-]"
        if self.kind == "added":
            return f"{{+{self.replayed}+}}"
        return " ".join(
            text if op == "=" else (f"[-{text}-]" if op == "-" else f"{{+{text}+}}")
            for op, text in self.words()
        )


def sentence_diff(recorded: str, replayed: str) -> list[SentenceChange]:
    """The two answers aligned sentence by sentence (all "same" when they are equal)."""
    a, b = split_sentences(recorded or ""), split_sentences(replayed or "")
    changes: list[SentenceChange] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            changes.extend(SentenceChange("same", s, s) for s in a[i1:i2])
            continue
        old, new = a[i1:i2], b[j1:j2]
        for k in range(max(len(old), len(new))):
            o = old[k] if k < len(old) else None
            n = new[k] if k < len(new) else None
            if o is not None and n is not None and _similarity(o, n) >= SAME_SENTENCE_RATIO:
                changes.append(SentenceChange("changed", o, n))
                continue
            if o is not None:
                changes.append(SentenceChange("removed", o, ""))
            if n is not None:
                changes.append(SentenceChange("added", "", n))
    return changes


def _edits(ops: Sequence[tuple[WordOp, str]]) -> str:
    """Word edits in words: "'45' became '50'", "'not' removed", "'daily' added"."""
    parts: list[str] = []
    i = 0
    while i < len(ops):
        op, text = ops[i]
        if op == "-" and i + 1 < len(ops) and ops[i + 1][0] == "+":
            parts.append(f"'{text}' became '{ops[i + 1][1]}'")
            i += 2
            continue
        if op != "=":
            parts.append(f"'{text}' {'removed' if op == '-' else 'added'}")
        i += 1
    return "; ".join(parts)


def describe_changes(changes: Sequence[SentenceChange]) -> list[str]:
    """Each changed sentence in words, numbered as in the recorded (or replayed) answer."""
    lines: list[str] = []
    old_no = new_no = 0
    for change in changes:
        if change.kind != "added":
            old_no += 1
        if change.kind != "removed":
            new_no += 1
        if change.kind == "removed":
            lines.append(f"Sentence {old_no} of the recorded answer is gone: {change.recorded}")
        elif change.kind == "added":
            lines.append(f"The replay adds a sentence (its sentence {new_no}): {change.replayed}")
        elif change.kind == "changed":
            lines.append(f"Sentence {old_no} changed ({_edits(change.words())}): {change.marked()}")
    return lines


SourceStatus = Literal["no longer retrieved", "newly retrieved", "content changed", "moved"]


@dataclass(frozen=True)
class SourceChange:
    """A retrieved passage that differs between the record and the replay.

    ``title`` comes from the recorded answer only (its reader was checked against those
    documents); a newly retrieved passage is named by its ids, as in the differences.
    """

    status: SourceStatus
    chunk_id: str
    doc_id: str = ""
    title: str = ""
    recorded_n: int | None = None
    replayed_n: int | None = None

    def text(self) -> str:
        name = f"{self.title} ({self.chunk_id})" if self.title else self.chunk_id
        if self.status == "moved":
            return f"{name}: was source [{self.recorded_n}], now [{self.replayed_n}]"
        if self.status == "content changed":
            return f"{name}: its text changed since the answer (source [{self.recorded_n}])"
        if self.status == "no longer retrieved":
            return f"{name}: was source [{self.recorded_n}], no longer retrieved"
        return f"{name}: newly retrieved as source [{self.replayed_n}]"


def source_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[SourceChange]:
    """Passages gone, added, edited or moved between the recorded and replayed payloads."""
    before = {r["chunk_id"]: (n, r) for n, r in enumerate(old.get("retrieved") or [], start=1)}
    after = {r["chunk_id"]: (n, r) for n, r in enumerate(new.get("retrieved") or [], start=1)}
    changes: list[SourceChange] = []
    for chunk_id, (n, r) in before.items():
        doc, title = str(r.get("doc_id", "")), str(r.get("title", ""))
        if chunk_id not in after:
            changes.append(SourceChange("no longer retrieved", chunk_id, doc, title, n))
            continue
        m, r2 = after[chunk_id]
        if r.get("content_hash", "") != r2.get("content_hash", ""):
            changes.append(SourceChange("content changed", chunk_id, doc, title, n, m))
        elif n != m:
            changes.append(SourceChange("moved", chunk_id, doc, title, n, m))
    for chunk_id, (m, r2) in after.items():
        if chunk_id not in before:
            doc = str(r2.get("doc_id", ""))
            changes.append(SourceChange("newly retrieved", chunk_id, doc, replayed_n=m))
    return changes


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
    sources: list[SourceChange] = field(default_factory=list)

    def sentences(self) -> list[SentenceChange]:
        # computed from the texts as they stand, so a replayed answer the caller withheld
        # (services.audit.replay) is diffed as withheld, never as the text it replaced
        return sentence_diff(self.original_answer, self.replayed_answer)

    def readable(self) -> list[str]:
        """The report as plain-text lines: verdict, differences, sources, a sentence diff."""
        return readable_replay(
            self.seq,
            self.unchanged,
            self.differences,
            self.original_answer,
            self.replayed_answer,
            [s.text() for s in self.sources],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "unchanged": self.unchanged,
            "differences": self.differences,
            "original_answer": self.original_answer,
            "replayed_answer": self.replayed_answer,
            "sources": [asdict(s) for s in self.sources],
            "sentences": [asdict(s) for s in self.sentences()],
        }


def readable_replay(
    seq: int,
    unchanged: bool,
    differences: Sequence[str],
    original_answer: str,
    replayed_answer: str,
    sources: Sequence[str] = (),
) -> list[str]:
    """Plain-text lines for a replay (a report, or a stored replay record's fields)."""
    if unchanged:
        return [f"UNCHANGED: record {seq} replays to the same answer from the same sources."]
    lines = [f"CHANGED: record {seq} replays differently.", "", "What changed:"]
    lines += [f"  - {d}" for d in differences]
    if sources:
        lines += ["", "Sources that changed:"] + [f"  - {s}" for s in sources]
    changes = sentence_diff(original_answer, replayed_answer)
    if any(c.kind != "same" for c in changes):
        lines += ["", "The answer, sentence by sentence ([-recorded-] {+replayed+}):"]
        marks = {"same": " ", "removed": "-", "added": "+", "changed": "~"}
        lines += [f"  {marks[c.kind]} {c.marked()}" for c in changes]
    return lines


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
        # a follow-up is replayed as it was answered: read in its conversation's context
        resolved_question=payload.get("resolved_question"),
        parent_id=payload.get("parent_id"),
    )
    index = assistant.retriever.index
    new = answer_payload(answer, replay_settings, index.version, index.embedder.info)
    diffs = compare(payload, new)
    documents = {r["doc_id"]: r["restricted_roles"] for r in new["retrieved"]}
    return ReplayReport(
        seq,
        not diffs,
        diffs,
        payload.get("answer", ""),
        answer.answer,
        documents=documents,
        sources=source_changes(payload, new),
    )


def _retrieved(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(r["chunk_id"], r.get("content_hash", "")) for r in payload.get("retrieved") or []]


def _short(value: Any) -> str:
    text = str(value)
    # a 64-hex digest reads as its first 12 characters, like a git commit
    return text[:12] + "\u2026" if re.fullmatch(r"[0-9a-f]{40,}", text) else text


def _version_change(label: str, old: Any, new: Any) -> str:
    """Which fields of a recorded version (model, embedder, prompt) differ, in words."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):

        def whole(value: Any) -> str:
            if isinstance(value, Mapping):
                return ", ".join(f"{k} {_short(v)}" for k, v in sorted(value.items()))
            return "none" if value is None else _short(value)

        return f"{label} changed: {whole(old)} -> {whole(new)}"
    fields = [
        f"{key} {_short(old.get(key))} -> {_short(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    note = (
        " (its hash covers the question and the retrieved passages: changed sources change it)"
        if label == "prompt"
        and [k for k in set(old) | set(new) if old.get(k) != new.get(k)] == ["hash"]
        else ""
    )
    return f"{label} changed: {'; '.join(fields)}{note}"


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
    for key in ("model", "embedder", "prompt"):
        if (old.get(key) or {}) != (new.get(key) or {}):
            diffs.append(_version_change(key, old.get(key), new.get(key)))
    if old.get("index_version") != new.get("index_version"):
        diffs.append(f"index version {old.get('index_version')} -> {new.get('index_version')}")
    # the label is what the reader sees; its probabilities may move in the last digits
    # between machines without the decision changing
    was, now = ((d.get("decision") or {}).get("label") for d in (old, new))
    if was != now:
        diffs.append(f"decision changed: {was or 'none'} -> {now or 'none'}")
    return diffs
