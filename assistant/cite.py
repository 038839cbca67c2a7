"""Citations: parse [n] markers, align answer sentences to source sentences, pick key evidence.

Support for an answer sentence is the best match among the retrieved source sentences, by a
blend of embedding similarity and lexical overlap; numbers in the sentence (ages, doses,
intervals) must appear in its evidence, because a changed number is the most dangerous error.
When attribution scores exist (audit.attribution), they re-rank the evidence causally.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.text import content_tokens, sentence_spans, split_sentences
from core.types import AnswerSentence, Citation, Evidence, Hit, Origin, SourceSentence

_MARKER = re.compile(r"\s*\[(\d+(?:\s*[,;-]\s*\d+)*)\]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
Embed = Callable[[Sequence[str]], np.ndarray]
CAUSAL_MIN_SIMILARITY = 0.6


@dataclass
class Alignment:
    sentences: list[AnswerSentence]
    citations: list[Citation]
    evidence: list[Evidence]
    similarity: np.ndarray  # (answer sentences, source sentences)


def parse_markers(sentence: str, n_sources: int) -> tuple[str, list[int], list[int]]:
    """Strip [n] markers. Returns (clean text, valid source numbers, invalid numbers)."""
    valid: list[int] = []
    invalid: list[int] = []
    for match in _MARKER.finditer(sentence):
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                numbers = list(range(lo, hi + 1)) if 0 < hi - lo < 10 else [lo, hi]
            else:
                numbers = [int(part)]
            for n in numbers:
                target = valid if 1 <= n <= n_sources else invalid
                if n not in target:
                    target.append(n)
    clean = _MARKER.sub("", sentence).strip()
    clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)
    return clean, valid, invalid


def source_sentences(hits: Sequence[Hit]) -> list[SourceSentence]:
    out: list[SourceSentence] = []
    for n, hit in enumerate(hits, start=1):
        for text in split_sentences(hit.chunk.text):
            out.append(SourceSentence(index=len(out), n=n, chunk_id=hit.chunk.chunk_id, text=text))
    return out


def lexical_overlap(answer: str, source: str) -> float:
    """Share of the answer sentence's content words that the source sentence contains."""
    a = content_tokens(answer)
    if not a:
        return 0.0
    return len(a & content_tokens(source)) / len(a)


def numbers_in(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def align(
    answer: str,
    hits: Sequence[Hit],
    embed: Embed,
    *,
    threshold: float = 0.5,
    causal: np.ndarray | None = None,
    sources: list[SourceSentence] | None = None,
    max_evidence: int = 5,
    question: str | None = None,
) -> Alignment:
    """Tie every answer sentence to the source sentences that support it.

    ``causal`` (answer sentences x source sentences), when given, is attribution evidence:
    a source sentence with a positive causal score counts as support even when worded
    differently, and evidence is ordered by it.
    """
    sources = sources if sources is not None else source_sentences(hits)
    raw = [answer[a:b] for a, b in sentence_spans(answer)]
    parsed = [parse_markers(s, len(hits)) for s in raw]
    parsed = [p for p in parsed if re.search(r"[A-Za-z0-9]", p[0])]
    if not parsed or not sources:
        return Alignment([], [], [], np.zeros((len(parsed), len(sources))))

    texts = [p[0] for p in parsed]
    vectors = embed(texts + [s.text for s in sources])
    cos = vectors[: len(texts)] @ vectors[len(texts) :].T
    lex = np.array([[lexical_overlap(t, s.text) for s in sources] for t in texts])
    similarity = 0.5 * np.clip(cos, 0, 1) + 0.5 * lex

    by_n: dict[int, list[int]] = {}
    for s in sources:
        by_n.setdefault(s.n, []).append(s.index)

    sentences: list[AnswerSentence] = []
    for i, (text, marked, _invalid) in enumerate(parsed):
        score = similarity[i].copy()
        if causal is not None and i < causal.shape[0]:
            # A source the model causally relied on counts as support when it is also related
            # in content; reliance alone is not support (a model can lean on a source and
            # still misstate it).
            weight = causal[i] / (np.abs(causal[i]).max() or 1.0)
            lift = (weight > 0.5) & (score >= CAUSAL_MIN_SIMILARITY * threshold)
            score = np.where(lift, np.maximum(score, threshold), score)
        order = np.argsort(-score)
        best = [int(j) for j in order[:3] if score[j] >= threshold]
        support = float(score[order[0]])
        evidence_numbers = (
            set().union(*(numbers_in(sources[j].text) for j in best)) if best else set()
        )
        missing_numbers = numbers_in(text) - evidence_numbers
        # a sentence that only restates the question asserts nothing the sources could support
        restates = question is not None and content_tokens(text) <= content_tokens(question)
        supported = bool(best) and not missing_numbers and not restates
        aligned_n = [sources[j].n for j in best]
        # keep a model citation only when that source actually supports the sentence
        kept = [n for n in marked if any(score[j] >= threshold for j in by_n.get(n, []))]
        numbers = list(dict.fromkeys(kept + aligned_n[:1] if supported else kept))
        sentences.append(AnswerSentence(text, numbers, supported, round(support, 4), best))

    cited = sorted({n for s in sentences for n in s.citations})
    citations = [_citation(hits[n - 1], n) for n in cited]
    evidence = _evidence(sentences, similarity, sources, hits, max_evidence)
    return Alignment(sentences, citations, evidence, similarity)


def _citation(hit: Hit, n: int) -> Citation:
    c = hit.chunk
    return Citation(
        n,
        c.doc_id,
        c.chunk_id,
        c.title,
        c.section,
        c.page,
        c.text,
        round(hit.score, 6),
        dict(c.metadata),
    )


def _evidence(
    sentences: list[AnswerSentence],
    similarity: np.ndarray,
    sources: list[SourceSentence],
    hits: Sequence[Hit],
    limit: int,
) -> list[Evidence]:
    ranked: dict[int, float] = {}
    for i, s in enumerate(sentences):
        for j in s.evidence:
            ranked[j] = max(ranked.get(j, 0.0), float(similarity[i, j]))
    out = []
    for j, score in sorted(ranked.items(), key=lambda kv: -kv[1])[:limit]:
        src = sources[j]
        c = hits[src.n - 1].chunk
        out.append(Evidence(src.n, src.text, c.doc_id, c.title, c.section, c.page, round(score, 4)))
    return out


def question_evidence(
    question: str, hits: Sequence[Hit], embed: Embed, sources: list[SourceSentence], limit: int = 3
) -> list[Evidence]:
    """The source sentences that best match the question (embedding plus word overlap)."""
    if not sources:
        return []
    # A sentence rarely names its subject ("Signs and symptoms may include ..."), so it is
    # ranked as read under its passage's title, the way the index reads chunks: otherwise a
    # neighbouring disease's symptom list can outrank the passage the question is about.
    titled = [f"{hits[s.n - 1].chunk.title}: {s.text}" for s in sources]
    vectors = embed([question] + [s.text for s in sources] + titled)
    n = len(sources)
    scores = vectors[1 : n + 1] @ vectors[0]
    in_context = vectors[n + 1 :] @ vectors[0]
    lexical = np.array([lexical_overlap(question, t) for t in titled])
    # Bibliographic lines repeat the question's words without answering it.
    bibliographic = np.array([_is_bibliographic(hits[s.n - 1], s.text) for s in sources])
    # Read alone, a sentence says which aspect it answers; under its title, which subject.
    ranking = 0.5 * (scores + in_context) + 0.2 * lexical - bibliographic
    out = []
    for j in np.argsort(-ranking)[:limit]:
        src = sources[int(j)]
        c = hits[src.n - 1].chunk
        out.append(
            Evidence(
                src.n, src.text, c.doc_id, c.title, c.section, c.page, round(float(scores[j]), 4)
            )
        )
    return out


_BIBLIOGRAPHIC_SECTION = re.compile(r"\b(source|references?|citation|bibliography|about)\b", re.I)
_BIBLIOGRAPHIC_LINE = re.compile(r"^\s*(title|url|source|citation|doi|related)\s*:", re.I)


def _is_bibliographic(hit: Hit, sentence: str) -> bool:
    last = hit.chunk.section.split(" > ")[-1] if hit.chunk.section else ""
    return bool(_BIBLIOGRAPHIC_SECTION.search(last) or _BIBLIOGRAPHIC_LINE.match(sentence))


def quote_answer(evidence: Sequence[Evidence], hits: Sequence[Hit], limit: int = 2) -> Alignment:
    """An answer made of the guideline's own sentences, each cited: supported by construction."""
    chosen = list(evidence[:limit])
    sentences = [AnswerSentence(e.text, [e.n], True, 1.0, origin=Origin.QUOTE) for e in chosen]
    cited = sorted({e.n for e in chosen})
    citations = [_citation(hits[n - 1], n) for n in cited]
    return Alignment(sentences, citations, chosen, np.zeros((len(chosen), 0)))
