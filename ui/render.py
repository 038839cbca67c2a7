"""Safe rendering helpers (no Streamlit): every document or model text is escaped here.

Guideline files and model output are untrusted: a document could carry Markdown links, images,
LaTeX or HTML meant to mislead a reader. Text goes to Streamlit through :func:`md_escape`
(Markdown) or :func:`html_text` (the one HTML block: a chunk with its evidence marked).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from assistant.policy import explain
from core.types import Answer

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=\"'&^%])")


# GFM turns bare URLs and e-mail addresses into links *after* parsing, so escaping cannot stop
# it: a word joiner (invisible) inside "http:", "www." and before "@" does.
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|www|mailto|xmpp)(?=[:.])|(?=@)")
WORD_JOINER = "\u2060"


def md_escape(text: str) -> str:
    """Escape text for ``st.markdown`` so it shows literally (no links, HTML, math, emoji)."""
    text = _AUTOLINK.sub(lambda m: (m.group(1) or "") + WORD_JOINER, str(text))
    text = _MD_SPECIAL.sub(r"\\\1", text)
    # A line break in the source would start a Markdown block; keep it as a hard break.
    return re.sub(r"\r?\n", "  \n", text)


def html_text(text: str) -> str:
    """HTML-escape everything, and every ASCII punctuation, so no Markdown can form either."""
    out = []
    for ch in str(text):
        if ch == "\n":
            out.append("<br>")
        elif ch.isascii() and not ch.isalnum() and ch != " ":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(html.escape(ch))
    return "".join(out)


def _spans(text: str, needles: Iterable[str]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for needle in needles:
        needle = needle.strip()
        if not needle:
            continue
        start = text.find(needle)
        if start < 0:
            # sentence splitting may trim list markers or whitespace; try a looser match
            pattern = r"\s+".join(re.escape(w) for w in needle.split())
            match = re.search(pattern, text)
            if not match:
                continue
            spans.append((match.start(), match.end()))
        else:
            spans.append((start, start + len(needle)))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def highlighted_html(text: str, evidence: Sequence[str], attributed: Sequence[str] = ()) -> str:
    """The chunk as one escaped HTML block: evidence in <mark>, attributed sentences underlined.

    Safe for ``st.markdown(..., unsafe_allow_html=True)``: every character of ``text`` is
    escaped and the block has no blank line, so Markdown never parses inside it.
    """
    marks: dict[int, str] = {}
    for mark, needles in (("attributed", attributed), ("evidence", evidence)):
        for start, end in _spans(text, needles):
            for i in range(start, end):
                marks[i] = mark  # evidence wins where both apply
    parts: list[str] = []
    current: str | None = None
    for i, ch in enumerate(text):
        kind = marks.get(i)
        if kind != current:
            if current is not None:
                parts.append("</mark>" if current == "evidence" else "</span>")
            if kind == "evidence":
                parts.append('<mark class="clinrag-evidence">')
            elif kind == "attributed":
                parts.append(
                    '<span class="clinrag-attributed" style="text-decoration: underline '
                    '2px #1c83e1;">'
                )
            current = kind
        parts.append(html_text(ch))
    if current is not None:
        parts.append("</mark>" if current == "evidence" else "</span>")
    body = "".join(parts)
    return (
        '<div class="clinrag-chunk" style="white-space: normal; line-height: 1.5; '
        f'padding: 0.5rem; border-left: 3px solid #999;">{body}</div>'
    )


def abstain_reason_text(reason: str | None) -> str:
    """Why an answer was withheld, in a clinician's words (the policy owns the wording)."""
    return explain(reason)


def source_highlights(answer: Answer, n: int) -> tuple[list[str], list[str]]:
    """(evidence sentences, attributed sentences) of source ``n`` for highlighting."""
    sources = list(answer.source_sentences or [])
    by_index = {s.index: s for s in sources}
    evidence: list[str] = []
    for sentence in answer.sentences or []:
        for idx in sentence.evidence or []:
            src = by_index.get(idx)
            if src is not None and src.n == n and src.text not in evidence:
                evidence.append(src.text)
    for ev in answer.evidence or []:
        if ev.n == n and ev.text not in evidence:
            evidence.append(ev.text)
    attributed: list[str] = []
    scores = attribution_scores(answer)
    if scores:
        ranked = sorted(((score, idx) for idx, score in scores.items() if score > 0), reverse=True)[
            :3
        ]
        for _, idx in ranked:
            src = by_index.get(idx)
            if src is not None and src.n == n:
                attributed.append(src.text)
    return evidence, attributed


def _source_indices(attribution: dict[str, Any], n_scores: int) -> list[int] | None:
    """Which source sentence each score belongs to (``attribution["sources"][i]["index"]``)."""
    sources = attribution.get("sources")
    if isinstance(sources, list) and len(sources) == n_scores:
        try:
            return [int(s["index"]) for s in sources]
        except (KeyError, TypeError, ValueError):
            return None
    return None


def attribution_scores(answer: Answer) -> dict[int, float]:
    """Source-sentence index -> attribution score, when the answer carries usable scores.

    ``assistant.attribute`` stores ``scores[i]`` for ``sources[i]`` (a prefix of the
    answer's source sentences); a bare list aligned with all source sentences works too.
    """
    attribution = answer.attribution or {}
    scores = attribution.get("scores")
    if not isinstance(scores, list) or not scores:
        return {}
    indices = _source_indices(attribution, len(scores))
    if indices is None:
        if len(scores) != len(answer.source_sentences or []):
            return {}
        indices = [s.index for s in answer.source_sentences]
    return {i: float(s) for i, s in zip(indices, scores, strict=True) if s is not None}


def attribution_by_source(answer: Answer) -> list[dict[str, Any]]:
    """Total attribution per numbered source, for a bar chart (empty when there is none)."""
    scores = attribution_scores(answer)
    if not scores:
        return []
    n_of = {s.index: s.n for s in answer.source_sentences}
    totals: dict[int, float] = {}
    for idx, score in scores.items():
        n = n_of.get(idx)
        if n is not None:
            totals[n] = totals.get(n, 0.0) + score
    rows = []
    for n in sorted(totals):
        title = answer.hits[n - 1].chunk.title if 0 < n <= len(answer.hits) else ""
        label = f"[{n}] {title}"
        rows.append({"source": label[:60], "n": n, "attribution": round(totals[n], 6)})
    return rows


def heatmap_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-form (answer sentence, source sentence, score) rows from a record's attribution."""
    attribution = payload.get("attribution") or {}
    matrix = attribution.get("per_sentence", attribution.get("per_target"))
    if not isinstance(matrix, list) or not matrix:
        return []
    sentences = payload.get("sentences") or []
    raw_sources = attribution.get("sources")
    sources: list[Any] = raw_sources if isinstance(raw_sources, list) else []
    rows = []
    for t, row in enumerate(matrix):
        if not isinstance(row, list):
            return []
        text = sentences[t].get("text", "") if t < len(sentences) else ""
        label = f"{t + 1}. {text[:50]}"
        for s, score in enumerate(row):
            src = sources[s] if s < len(sources) and isinstance(sources[s], dict) else {}
            source = f"[{src.get('n', '?')}] {str(src.get('text', ''))[:40]}" if src else str(s)
            rows.append(
                {"answer_sentence": label, "source_sentence": f"{s:03d} {source}", "score": score}
            )
    return rows
