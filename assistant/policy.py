"""The answer policy: when to abstain, quote or generate, and why. Decided here and only here.

Two decisions, around generation:

1. **Before generation** (:func:`before_generation`), abstain when the library cannot hold
   the answer: no passage is close enough to the question (``abstain_min_relevance``,
   cosine), or the passages never mention the question's rare words
   (``abstain_rare_term_zipf``, see ``assistant.coverage``). Cost: one pass over the hits.
2. **After generation and citation checks** (:func:`after_generation`), keep the model's
   answer (:attr:`Mode.GENERATED`) unless the model declined or more than
   ``abstain_max_unsupported`` of its sentences failed verification. Then
   (:func:`fallback`) quote the guideline sentences that best answer the question
   (:attr:`Mode.QUOTED`) when the best of them matches at least ``quote_min_evidence`` and
   ``unsupported_fallback`` is ``quote``; otherwise abstain (:attr:`Mode.ABSTAINED`).

Blind spot: both checks measure closeness and word presence, not meaning; a sentence that
contradicts its evidence with the same words can pass verification.

Every :class:`~core.types.Answer` is built here, by keyword, so its ``mode`` always says how
it was produced; the reason is kept as ``"code (detail)"`` text, the form audit records have
always carried, and :func:`explain` turns it into words for a clinician.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from assistant import coverage
from assistant.cite import quote_answer
from core.config import Settings
from core.types import (
    Answer,
    AnswerSentence,
    Citation,
    Evidence,
    Generation,
    Hit,
    Mode,
    SourceSentence,
)

ABSTAIN_TEXT = "The library does not contain guidance on this question."
UNVERIFIED_TEXT = (
    "The assistant could not write an answer that the library supports. "
    "The closest guideline passages are listed below; read them directly."
)
_MODEL_DECLINES = (
    "sources do not answer",
    "do not contain",
    "does not contain",
    "not enough information",
    "cannot answer",
    "can't answer",
    "no information",
)


class ReasonCode(StrEnum):
    WEAK_RETRIEVAL = "weak_retrieval"
    NOT_IN_LIBRARY = "not_in_library"
    MODEL_DECLINED = "model_declined"
    UNSUPPORTED = "unsupported"


_EXPLANATIONS = {
    ReasonCode.WEAK_RETRIEVAL: "no passage in the library is close enough to the question",
    ReasonCode.MODEL_DECLINED: "the model found no answer in the retrieved passages",
    ReasonCode.UNSUPPORTED: "the draft answer was not supported by the retrieved passages",
    ReasonCode.NOT_IN_LIBRARY: "the closest passages in the library never mention {detail}, "
    "so it may not cover this subject",
}
_MENTIONS = "no retrieved passage mentions "


@dataclass(frozen=True)
class Reason:
    """Why an answer is not the model's own verified wording."""

    code: ReasonCode
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code} ({self.detail})" if self.detail else str(self.code)

    @classmethod
    def parse(cls, text: str | None) -> Reason | None:
        """The reason of a recorded answer, or None for text this policy never wrote."""
        code, _, detail = (text or "").partition(" ")
        try:
            return cls(ReasonCode(code), detail.strip().removeprefix("(").removesuffix(")"))
        except ValueError:
            return None


def explain(reason: str | None) -> str:
    """A recorded reason in a clinician's words."""
    if not reason:
        return "the answer could not be checked against the library"
    parsed = Reason.parse(reason)
    if parsed is None:
        return reason
    # "not_in_library (no retrieved passage mentions a, b)": the words are the useful part
    words = parsed.detail.rpartition(_MENTIONS.strip() + " ")[2]
    return _EXPLANATIONS[parsed.code].format(detail=words)


# ------------------------------------------------------------------------ the two decisions


def relevance(hits: Sequence[Hit]) -> float:
    return max((h.dense_score or 0.0) for h in hits) if hits else 0.0


def before_generation(
    question: str,
    hits: Sequence[Hit],
    settings: Settings,
    stem: Callable[[Sequence[str]], list[str]],
) -> Reason | None:
    """The reason to abstain without asking the model, or None to go on."""
    best = relevance(hits)
    if best < settings.abstain_min_relevance:
        return Reason(ReasonCode.WEAK_RETRIEVAL, f"best relevance {best:.2f}")
    found = coverage.check(question, hits, stem, settings.abstain_rare_term_zipf)
    if not found.covered:
        return Reason(ReasonCode.NOT_IN_LIBRARY, _MENTIONS + ", ".join(found.missing))
    return None


def after_generation(
    text: str, sentences: Sequence[AnswerSentence], settings: Settings
) -> Reason | None:
    """The reason not to show the model's answer as written, or None to show it."""
    if any(p in text.lower() for p in _MODEL_DECLINES):
        return Reason(ReasonCode.MODEL_DECLINED)
    n = len(sentences)
    unsupported = sum(not s.supported for s in sentences) / n if n else 1.0
    if unsupported > settings.abstain_max_unsupported:
        return Reason(ReasonCode.UNSUPPORTED, f"{unsupported:.0%} of sentences")
    return None


def strong_evidence(evidence: Sequence[Evidence], settings: Settings) -> bool:
    """Whether the library clearly holds an answer: its best sentence matches the question.

    Scores are the sentences' own match to the question; their ranking also weighs the title.
    """
    return bool(evidence) and max(e.score for e in evidence) >= settings.quote_min_evidence


# ------------------------------------------------------------------------ the answers


@dataclass(frozen=True)
class Context:
    """What every answer to one question carries, whatever its mode."""

    question: str
    hits: list[Hit]
    sources: list[SourceSentence]
    timings: dict[str, float]
    nearest: list[dict[str, Any]]


def _answer(
    ctx: Context,
    mode: Mode,
    text: str,
    *,
    generation: Generation | None,
    sentences: Sequence[AnswerSentence] = (),
    citations: Sequence[Citation] = (),
    evidence: Sequence[Evidence] = (),
    reason: Reason | None = None,
    unverified: Sequence[AnswerSentence] = (),
) -> Answer:
    return Answer(
        question=ctx.question,
        answer=text,
        abstained=mode is Mode.ABSTAINED,
        mode=mode,
        abstain_reason=None if reason is None else str(reason),
        sentences=list(sentences),
        citations=list(citations),
        evidence=list(evidence),
        hits=ctx.hits,
        source_sentences=ctx.sources,
        generation=generation,
        timings=ctx.timings,
        nearest_documents=ctx.nearest,
        unverified=list(unverified),
    )


def abstained(
    ctx: Context,
    reason: Reason,
    *,
    generation: Generation | None = None,
    sentences: Sequence[AnswerSentence] = (),
    evidence: Sequence[Evidence] = (),
    text: str = ABSTAIN_TEXT,
) -> Answer:
    """No answer: the reason says why; a withheld draft and the closest evidence are kept."""
    return _answer(
        ctx,
        Mode.ABSTAINED,
        text,
        generation=generation,
        sentences=sentences,
        evidence=evidence,
        reason=reason,
    )


def generated(
    ctx: Context,
    generation: Generation,
    *,
    sentences: Sequence[AnswerSentence],
    citations: Sequence[Citation],
    evidence: Sequence[Evidence],
) -> Answer:
    """The model's own wording, verified against the sources."""
    return _answer(
        ctx,
        Mode.GENERATED,
        generation.text,
        generation=generation,
        sentences=sentences,
        citations=citations,
        evidence=evidence,
    )


def quoted(
    ctx: Context,
    generation: Generation,
    *,
    sentences: Sequence[AnswerSentence],
    citations: Sequence[Citation],
    evidence: Sequence[Evidence],
    unverified: Sequence[AnswerSentence],
) -> Answer:
    """Guideline sentences quoted with their citations, in place of unverifiable wording."""
    return _answer(
        ctx,
        Mode.QUOTED,
        " ".join(f"{s.text} [{s.citations[0]}]" for s in sentences),
        generation=generation,
        sentences=sentences,
        citations=citations,
        evidence=evidence,
        unverified=unverified,
    )


def fallback(
    ctx: Context,
    generation: Generation,
    reason: Reason,
    *,
    drafted: Sequence[AnswerSentence],
    evidence: Sequence[Evidence],
    settings: Settings,
) -> Answer:
    """The answer when the model's own wording is not shown: quoted, or an abstention."""
    strong = strong_evidence(evidence, settings)
    if strong and settings.unsupported_fallback == "quote":
        # The library holds the answer but the model did not say it verifiably: give the
        # clinician the guideline's own sentences rather than nothing.
        quote = quote_answer(evidence, ctx.hits)
        return quoted(
            ctx,
            generation,
            sentences=quote.sentences,
            citations=quote.citations,
            evidence=quote.evidence,
            unverified=[s for s in drafted if not s.supported],
        )
    declined = reason.code is ReasonCode.MODEL_DECLINED
    return abstained(
        ctx,
        reason,
        generation=generation,
        sentences=drafted,
        evidence=evidence,
        text=ABSTAIN_TEXT if declined or not strong else UNVERIFIED_TEXT,
    )
