"""Safe rendering helpers (no Streamlit): every document or model text is escaped here.

Guideline files and model output are untrusted: a document could carry Markdown links, images,
LaTeX or HTML meant to mislead a reader. Text goes to Streamlit through :func:`md_escape`
(Markdown) or :func:`html_text` (the one HTML block: a chunk with its evidence marked).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assistant.policy import explain
from assistant.replay import SentenceChange
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


# A drop smaller than this (in nats, a factor of about 1.02) is read as "no change": log-probs
# are recorded to 6 digits but batched scoring wobbles in the third decimal.
_NO_CHANGE_NATS = 0.02
# exp() of the largest recorded drops overflows and a 40-digit factor tells a reader nothing:
# above this the factor is shown as a power of ten
_MAX_FACTOR = 1e6
_FAITHFULNESS_KEYS = ("top_k_drop", "random_drop", "context_reliance", "flag_memory")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def likelihood_factor(nats: float) -> str:
    """A log-probability change as a factor in words: 3.0 nats -> "20x", 100 -> "10^43x".

    Quoted answers lose tens of nats when a quoted sentence goes; a cap ("more than a
    million") would read the same for the credited sentences and for random ones, and the
    comparison the check is for would be lost, so large factors keep their order of magnitude.
    """
    if abs(nats) >= math.log(_MAX_FACTOR):
        return f"10^{math.floor(abs(nats) / math.log(10))}x"
    factor = math.exp(abs(nats))
    if factor < 10:
        return f"{factor:.1f}x"
    return f"{factor:,.0f}x"


def likelihood_change(drop: float) -> str:
    """What removing text does to the answer, from the drop log p(full) - log p(without)."""
    if abs(drop) < _NO_CHANGE_NATS:
        return "about as likely"
    return f"{likelihood_factor(drop)} {'less' if drop > 0 else 'more'} likely"


def _sentences(k: int | None, what: str) -> str:
    if k is None:
        return f"the {what} sentences"
    return f"the {what} sentence" if k == 1 else f"the {k} {what} sentences"


def faithfulness_text(faithfulness: Mapping[str, Any] | None) -> str:
    """The stored faithfulness check (``audit.attribution.faithfulness``) in plain words.

    Drops are in nats (natural log-probability), so a drop d means the answer became e**d
    times less likely. Old or partial records (a bare number, missing fields) still read.
    """
    if faithfulness is None:
        return "Faithfulness was not measured for this answer."
    if not isinstance(faithfulness, Mapping):
        value = _number(faithfulness)
        shown = f"{value:g}" if value is not None else str(faithfulness)
        return f"Faithfulness was recorded in an older format: {shown}."
    if not any(faithfulness.get(key) is not None for key in _FAITHFULNESS_KEYS):
        return "Faithfulness was not recorded in a form this version can read."
    raw_k = _number(faithfulness.get("k"))
    k = int(raw_k) if raw_k is not None and raw_k >= 1 else None
    top = _number(faithfulness.get("top_k_drop"))
    rand = _number(faithfulness.get("random_drop"))
    parts: list[str] = []
    if top is None:
        parts.append("The effect of removing the sentences credited most was not recorded.")
    else:
        effect = likelihood_change(top)
        sentence = f"Removing {_sentences(k, 'most-credited')} " + (
            f"makes this answer {effect}"
            if abs(top) >= _NO_CHANGE_NATS
            else "leaves this answer about as likely"
        )
        if rand is not None:
            n = f"{k} random sentence{'s' if k != 1 else ''}" if k else "as many random sentences"
            sentence += f"; removing {n}: {likelihood_change(rand)}"
        parts.append(sentence + ".")
        if rand is not None:
            if top - rand > _NO_CHANGE_NATS:
                parts.append(
                    "The credited sentences matter more than random ones, which supports the "
                    "attribution."
                )
            else:
                parts.append(
                    "The credited sentences matter no more than random ones: the attribution "
                    "is not confirmed for this answer."
                )
    reliance = _number(faithfulness.get("context_reliance"))
    if faithfulness.get("flag_memory"):
        with_none = (
            f" (with no sources it is {likelihood_change(reliance)})"
            if reliance is not None
            else ""
        )
        parts.append(
            "The model gives this answer almost as readily without the sources"
            f"{with_none}: it may come from the model's memory, so the attribution says little."
        )
    elif reliance is not None:
        parts.append(f"With no sources at all the answer is {likelihood_change(reliance)}.")
    return " ".join(parts)


def faithfulness_rows(faithfulness: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The faithfulness check as a small table: each removal, its drop and its factor."""
    if not isinstance(faithfulness, Mapping):
        return []
    raw_k = _number(faithfulness.get("k"))
    k = f"{int(raw_k)} " if raw_k is not None else ""
    rows = []
    for key, what in (
        ("top_k_drop", f"remove the {k}most-credited sentences"),
        ("random_drop", f"remove {k}random sentences (mean of draws)"),
        ("context_reliance", "remove all sources"),
    ):
        drop = _number(faithfulness.get(key))
        if drop is not None:
            rows.append(
                {
                    "removal": what,
                    "answer becomes": likelihood_change(drop),
                    "log-probability drop (nats)": round(drop, 3),
                }
            )
    return rows


def decision_method_text(method: str) -> str:
    """How a yes/no decision was made, for the reader: a guideline's statement in words; a
    fitted model by its name (the auditor's detail)."""
    from assistant.decide import DISAGREE, STATED_METHOD

    if not method.startswith(STATED_METHOD):
        return f"Method: {method}"
    detail = method[len(STATED_METHOD) :].lstrip(":").strip()
    if detail == DISAGREE:
        return "The quoted recommendations point opposite ways: which applies depends on the case"
    return "Stated by the quoted recommendation" + (f" ({detail})" if detail else "")


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


# ------------------------------------------------------------------ what drove each sentence

# A source sentence is shown as driving an answer sentence when it has at least this share of
# that sentence's largest score (and a positive one); at most DRIVERS_PER_SENTENCE of them.
DRIVER_SHARE = 0.1
DRIVERS_PER_SENTENCE = 3


@dataclass(frozen=True)
class Driver:
    """A source sentence that drove an answer sentence: its score and rank (1 = most)."""

    index: int  # SourceSentence index
    n: int  # source number
    text: str
    score: float
    rank: int
    strength: float  # score / the sentence's largest score, in (0, 1]


@dataclass(frozen=True)
class SentenceDrivers:
    sentence: str
    drivers: list[Driver]
    whole_answer: bool = False  # the scores are the answer's, not this sentence's own

    def by_source(self) -> dict[int, list[Driver]]:
        """The drivers grouped by source number, sources in order of their best driver."""
        out: dict[int, list[Driver]] = {}
        for d in self.drivers:
            out.setdefault(d.n, []).append(d)
        return out


def _sentence_rows(answer: Answer, n_sources: int) -> list[list[float] | None]:
    """Each shown sentence's row of the attribution's per-sentence matrix, None where the
    record has none for it. Rows follow the attributed targets (the shown sentences, split
    again): by position when the split agrees, else by text."""
    from assistant.attribute import answer_targets

    attribution = answer.attribution or {}
    matrix = attribution.get("per_sentence", attribution.get("per_target"))
    shown = [s.text for s in answer.sentences]
    if not isinstance(matrix, list) or not matrix:
        return [None] * len(shown)
    rows = [
        [float(x) for x in row[:n_sources]] if isinstance(row, list) else None for row in matrix
    ]
    if len(rows) == len(shown):
        return rows
    targets = [t.strip() for t in answer_targets(" ".join(shown))]
    by_text = {t: rows[i] for i, t in enumerate(targets) if i < len(rows)}
    return [by_text.get(text.strip()) for text in shown]


def sentence_drivers(answer: Answer) -> list[SentenceDrivers]:
    """Under each shown answer sentence, the source sentences that drove it, strongest first.

    From the attribution's per-sentence scores; an answer whose record has only whole-answer
    scores gets those under every sentence (marked ``whole_answer``). Empty without scores.
    """
    scores = attribution_scores(answer)
    if not scores:
        return []
    attribution = answer.attribution or {}
    sources = attribution.get("sources")
    indices = _source_indices(attribution, len(attribution.get("scores") or []))
    if indices is None:
        indices = [s.index for s in answer.source_sentences]
    by_index = {s.index: s for s in answer.source_sentences}
    rows = _sentence_rows(answer, len(indices)) if isinstance(sources, list) else []
    out: list[SentenceDrivers] = []
    for k, sentence in enumerate(answer.sentences):
        row = rows[k] if k < len(rows) else None
        whole = row is None
        pairs = (
            list(scores.items())
            if row is None
            else [(indices[j], v) for j, v in enumerate(row) if j < len(indices)]
        )
        ranked = sorted(((v, idx) for idx, v in pairs if idx in by_index and v > 0), reverse=True)
        top = ranked[0][0] if ranked else 0.0
        drivers = [
            Driver(idx, by_index[idx].n, by_index[idx].text, v, rank, v / top)
            for rank, (v, idx) in enumerate(
                [(v, idx) for v, idx in ranked if v >= DRIVER_SHARE * top][:DRIVERS_PER_SENTENCE],
                start=1,
            )
        ]
        out.append(SentenceDrivers(sentence.text, drivers, whole))
    return out


def score_text(score: float) -> str:
    return f"{score:.2f}" if abs(score) >= 0.01 else f"{score:.1e}"


def driver_html(text: str, drivers: Sequence[Driver]) -> str:
    """A passage as one escaped HTML block with the sentences that drove an answer sentence
    marked, darker for a higher score, each followed by its score (and its rank and score
    on hover). Safe for ``st.markdown(..., unsafe_allow_html=True)`` like
    :func:`highlighted_html`: every character of ``text`` is escaped, and the only other
    text is numbers this function formats."""
    marks: dict[int, Driver] = {}
    for d in sorted(drivers, key=lambda d: d.score):  # the stronger wins where two overlap
        for start, end in _spans(text, [d.text]):
            for i in range(start, end):
                marks[i] = d
    parts: list[str] = []
    current: Driver | None = None

    def close(d: Driver) -> None:
        parts.append(
            f'</mark><sup class="clinrag-score" style="color: #0b4f8a; font-weight: 600;">'
            f"&#160;{html.escape(score_text(d.score))}</sup>"
        )

    for i, ch in enumerate(text):
        mark = marks.get(i)
        if mark is not current:
            if current is not None:
                close(current)
            if mark is not None:
                alpha = 0.12 + 0.5 * max(0.0, min(1.0, mark.strength))
                title = html.escape(
                    f"attribution score {score_text(mark.score)}: rank {mark.rank} for this answer "
                    "sentence",
                    quote=True,
                )
                parts.append(
                    f'<mark class="clinrag-driver clinrag-rank-{mark.rank}" title="{title}" '
                    f'style="background: rgba(28, 131, 225, {alpha:.2f}); color: inherit; '
                    'padding: 0 0.1em; border-radius: 0.2em;">'
                )
            current = mark
        parts.append(html_text(ch))
    if current is not None:
        close(current)
    body = "".join(parts)
    return (
        '<div class="clinrag-chunk clinrag-drivers" style="white-space: normal; '
        'line-height: 1.6; padding: 0.5rem; max-width: 72rem; border-left: 3px solid #1c83e1;">'
        f"{body}</div>"
    )


# Vega-Lite cuts axis labels at 180 px by default, which made every bar of one document read
# "[1] Colorectal Ca..."; a short sentence start and a wider limit keep labels apart.
LABEL_CHARS = 36
LABEL_LIMIT_PX = 320

NEGATIVE_SCORE_NOTE = (
    "A bar below zero means the model found the answer less likely with this sentence than "
    "without it: the sentence pulls against the answer's wording. It is not evidence that the "
    "answer is false, and a cited sentence can score below zero when other sentences already "
    "carry the answer."
)


def sentence_start(text: str, width: int = LABEL_CHARS) -> str:
    """The first words of ``text``, at most ``width`` characters, cut at a word with an ellipsis."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    if " " in cut[width // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "\u2026"


def source_label(n: Any, text: str, width: int = LABEL_CHARS) -> str:
    """A chart label naming the source number and the sentence: ``[1] "Adults aged 45\u2026"``."""
    return f'[{n}] "{sentence_start(text, width)}"'


def _unique(labels: list[str]) -> list[str]:
    """Equal labels would merge into one bar; number the repeats."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def attribution_by_source(answer: Answer) -> list[dict[str, Any]]:
    """One bar per scored source sentence, labelled with its source number and first words.

    Rows come in source order (source number, then position in the source); ``sentence``
    holds the whole sentence for a tooltip. Empty when the answer carries no usable scores.
    """
    scores = attribution_scores(answer)
    if not scores:
        return []
    by_index = {s.index: s for s in answer.source_sentences}
    scored = [
        (by_index[idx].n, idx, by_index[idx].text, score)
        for idx, score in scores.items()
        if idx in by_index
    ]
    scored.sort(key=lambda row: (row[0], row[1]))
    labels = _unique([source_label(n, text) for n, _, text, _ in scored])
    return [
        {
            "source": label,
            "n": n,
            "sentence": text,
            "attribution": round(score, 6),
            "order": i,
        }
        for i, (label, (n, _, text, score)) in enumerate(zip(labels, scored, strict=True))
    ]


def has_negative(rows: Iterable[Mapping[str, Any]], key: str = "attribution") -> bool:
    """Whether any row scores below zero (then :data:`NEGATIVE_SCORE_NOTE` belongs beside it)."""
    return any(isinstance(r.get(key), int | float) and r[key] < 0 for r in rows)


def attribution_chart(rows: list[dict[str, Any]]) -> Any:
    """A horizontal Altair bar chart of :func:`attribution_by_source` rows, in source order,
    with labels wide enough to tell apart and the whole sentence in the tooltip."""
    import altair as alt

    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            y=alt.Y(
                "source:N",
                title="source sentence",
                sort=alt.EncodingSortField(field="order", order="ascending"),
                axis=alt.Axis(labelLimit=LABEL_LIMIT_PX),
            ),
            x=alt.X("attribution:Q", title="attribution (credit for the answer)"),
            color=alt.condition(
                alt.datum.attribution < 0, alt.value("#d95f02"), alt.value("#1c83e1")
            ),
            tooltip=["source:N", "sentence:N", "attribution:Q"],
        )
    )


def heatmap_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-form (answer sentence, source sentence, score) rows from a record's attribution.

    Source labels name the source number and the sentence's first words (repeats numbered);
    ``source_order`` keeps the context order for the chart's axis.
    """
    attribution = payload.get("attribution") or {}
    matrix = attribution.get("per_sentence", attribution.get("per_target"))
    if not isinstance(matrix, list) or not matrix:
        return []
    sentences = payload.get("sentences") or []
    raw_sources = attribution.get("sources")
    sources: list[Any] = raw_sources if isinstance(raw_sources, list) else []
    width = max((len(row) for row in matrix if isinstance(row, list)), default=0)
    source_labels = _unique(
        [
            source_label(sources[s].get("n", "?"), str(sources[s].get("text", "")))
            if s < len(sources) and isinstance(sources[s], dict)
            else f"source sentence {s + 1}"
            for s in range(width)
        ]
    )
    answer_labels = _unique(
        [
            f"{t + 1}. "
            + sentence_start(
                sentences[t].get("text", "")
                if t < len(sentences) and isinstance(sentences[t], dict)
                else "",
                50,
            )
            for t in range(len(matrix))
        ]
    )
    rows = []
    for t, row in enumerate(matrix):
        if not isinstance(row, list):
            return []
        for s, score in enumerate(row):
            rows.append(
                {
                    "answer_sentence": answer_labels[t],
                    "source_sentence": source_labels[s],
                    "source_order": s,
                    "score": score,
                }
            )
    return rows


_DIFF_STYLE = {
    "-": "background: #fde2e1; text-decoration: line-through;",
    "+": "background: #d8f5dd; text-decoration: none;",
}


def _diff_span(op: str, text: str) -> str:
    if op == "=":
        return html_text(text)
    tag = "del" if op == "-" else "ins"
    return f'<{tag} style="{_DIFF_STYLE[op]}">{html_text(text)}</{tag}>'


def sentence_diff_html(changes: Sequence[SentenceChange]) -> str:
    """A replay's sentence diff as one escaped HTML block: gone text struck through on red,
    new text on green, words marked inside a changed sentence.

    Safe for ``st.markdown(..., unsafe_allow_html=True)`` like :func:`highlighted_html`.
    """
    marks = {"same": "&#160;", "removed": "&#8722;", "added": "+", "changed": "~"}
    lines = []
    for change in changes:
        if change.kind == "same":
            body = html_text(change.recorded)
        elif change.kind == "removed":
            body = _diff_span("-", change.recorded)
        elif change.kind == "added":
            body = _diff_span("+", change.replayed)
        else:
            body = " ".join(_diff_span(op, text) for op, text in change.words())
        lines.append(
            f'<div class="clinrag-diff-{change.kind}"><code>{marks[change.kind]}</code> '
            f"{body}</div>"
        )
    return (
        '<div class="clinrag-diff" style="line-height: 1.6; padding: 0.5rem; '
        f'border-left: 3px solid #999;">{"".join(lines)}</div>'
    )
