"""The answer policy: when to abstain, quote or generate, and why. Decided here and only here.

Two decisions, around generation:

1. **Before generation** (:func:`before_generation`), abstain when the library cannot hold
   the answer: no passage is close enough to the question (``abstain_min_relevance``,
   cosine), or the passages never mention the question's rare words
   (``abstain_rare_term_zipf``, see ``assistant.coverage``), or they name only other
   subtypes of the one asked about, or only adults for a question about children
   (``abstain_other_subtype``: type 2 diabetes for a type 1 question). Cost: one pass over
   the hits.
2. **After generation and citation checks** (:func:`compose`), build what the reader sees
   from the model's verified sentences and the guideline's own words (``cite.quotes_for``:
   recommendation statements first), as ``answer_style`` says (:func:`answer_style`; auto
   follows what ``clinrag eval`` measured for the model, :data:`MEASURED_STYLES`):

   - ``quoted``: the guideline's words, the recommendation that matches the question first
     (:attr:`Mode.QUOTED`);
   - ``combined``: that recommendation, then the model's verified sentences that add to it,
     then quotes for what they leave out (:attr:`Mode.COMBINED`);
   - ``generated``: the model's verified sentences (:attr:`Mode.GENERATED`), unless more than
     ``abstain_max_unsupported`` of them failed.

   Quotes need strong evidence (a sentence matches at least ``quote_min_evidence`` alone or
   ``quote_min_titled_evidence`` read under its passage's title: :func:`strong_evidence`);
   without it the model's verified sentences are the answer. When the model declined or
   nothing it wrote verified, :func:`fallback` quotes (``unsupported_fallback`` ``quote``)
   or abstains (:attr:`Mode.ABSTAINED`), saying the library lacks guidance only when the
   model said the sources do not answer (else: the closest passages, to read directly).

A sentence that failed verification is never shown: it goes to ``Answer.unverified`` (kept for
auditors) and :func:`removed_note` tells the reader how many were removed. The numbers a reader
sees are labels 1, 2, 3 in order of first appearance (``Citation.label``,
:func:`display_labels`); ``AnswerSentence.citations`` keep the prompt's source numbers.

Blind spot: verification (``assistant.verify``) is a rule set, not a reader. It catches the
contradictions its rules name (negation, quantifiers, numbers, units, ages, intervals, drugs,
populations, added content words) and no others: a sentence that reverses its evidence
through words the rules do not know ("required" said as "must ... after fasting" is known,
many other turns of phrase are not) can still pass, and a faithful paraphrase in other words
can be refused.

Every :class:`~core.types.Answer` is built here, by keyword, so its ``mode`` always says how
it was produced; the reason is kept as ``"code (detail)"`` text, the form audit records have
always carried, and :func:`explain` turns it into words for a clinician.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from assistant import coverage
from assistant.cite import Quote, numbered_citations, quote_answer
from core.backends.transformers_llm import PACKAGED_GGUF_SHA256
from core.config import Settings
from core.types import (
    Answer,
    AnswerSentence,
    Evidence,
    Generation,
    Hit,
    Mode,
    ModelInfo,
    Origin,
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
    if settings.abstain_other_subtype:
        other = coverage.other_subtype(question, hits, stem) or coverage.other_population(
            question, hits
        )
        if other is not None:
            return Reason(ReasonCode.NOT_IN_LIBRARY, _MENTIONS + str(other))
    return None


class Style(StrEnum):
    """What an answer is made of (the ``answer_style`` setting, ``auto`` resolved)."""

    QUOTED = "quoted"
    COMBINED = "combined"
    GENERATED = "generated"


# What `clinrag eval` measured as the more accurate answer for a model, by its weights hash.
# The packaged SmolLM2-135M: on clinician questions over US guideline summaries, quoted answers
# held the key fact 81% of the time and generated ones 50% (issue 19), so its answers lead
# with the guideline's words. To measure another model, run `clinrag eval` on your questions
# with CLINRAG_ANSWER_STYLE=quoted and again with =generated (add --fresh), compare "key fact"
# in the reports, and set answer_style (or add the model here). Unmeasured models: combined.
MEASURED_STYLES: dict[str, Style] = {PACKAGED_GGUF_SHA256: Style.QUOTED}
QUOTE_LIMIT = 3  # guideline passages in a quoted answer: the lead and two supporting
COMBINED_LIMIT = 4  # sentences in a combined answer


def answer_style(settings: Settings, model: ModelInfo | None) -> Style:
    if settings.answer_style != "auto":
        return Style(settings.answer_style)
    measured = MEASURED_STYLES.get(model.weights_hash) if model is not None else None
    return measured or Style.COMBINED


def after_generation(
    text: str, sentences: Sequence[AnswerSentence], settings: Settings
) -> Reason | None:
    """The reason not to show the model's wording as the answer, or None to show its
    verified sentences: it declined, nothing verified, or too much failed."""
    if any(p in text.lower() for p in _MODEL_DECLINES):
        return Reason(ReasonCode.MODEL_DECLINED)
    n = len(sentences)
    unsupported = sum(not s.supported for s in sentences) / n if n else 1.0
    if unsupported > settings.abstain_max_unsupported or unsupported == 1.0:
        return Reason(ReasonCode.UNSUPPORTED, f"{unsupported:.0%} of sentences")
    return None


def strong_evidence(quotes: Sequence[Quote], settings: Settings) -> bool:
    """Whether the library clearly holds an answer: a sentence matches the question on its
    own (``quote_min_evidence``), or read under its passage's title
    (``quote_min_titled_evidence``).

    A guideline sentence seldom repeats its subject: "Metformin is the usual first drug when
    there is no contraindication" matches "What is the first-line drug for type 2 diabetes?"
    at 0.50 alone and 0.67 under its title, and without the second bar the question fell to
    the model's draft, whose failure was a decline. The title alone does not make evidence
    strong on an uncovered question: a neighbouring disease's title names another subject.
    """
    return bool(quotes) and (
        max(q.evidence.score for q in quotes) >= settings.quote_min_evidence
        or max(q.titled for q in quotes) >= settings.quote_min_titled_evidence
    )


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
    text: str | None,
    *,
    generation: Generation | None,
    sentences: Sequence[AnswerSentence] = (),
    evidence: Sequence[Evidence] = (),
    reason: Reason | None = None,
    unverified: Sequence[AnswerSentence] = (),
) -> Answer:
    shown = _distinct(sentences)
    # only what the reader is shown is cited, numbered in the order it is read
    citations = numbered_citations(shown, ctx.hits)
    labels = {c.n: c.label for c in citations}
    if text is None:
        text = " ".join(f"{s.text} {_marks(s.citations, labels)}".strip() for s in shown)
    return Answer(
        question=ctx.question,
        answer=text,
        abstained=mode is Mode.ABSTAINED,
        mode=mode,
        abstain_reason=None if reason is None else str(reason),
        sentences=shown,
        citations=citations,
        evidence=list(evidence),
        hits=ctx.hits,
        source_sentences=ctx.sources,
        generation=generation,
        timings=ctx.timings,
        nearest_documents=ctx.nearest,
        unverified=list(unverified),
    )


def _distinct(sentences: Sequence[AnswerSentence]) -> list[AnswerSentence]:
    """Each sentence once: the packaged model repeats itself ("High Blood Pressure in Adults
    - Diagnosis and Treatment" five times), and a repeat tells the reader nothing new."""
    seen: set[str] = set()
    out = []
    for s in sentences:
        key = " ".join(re.findall(r"[a-z0-9]+", s.text.lower()))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _marks(numbers: Sequence[int], labels: dict[int, int]) -> str:
    return "".join(f"[{labels[n]}]" for n in dict.fromkeys(numbers) if n in labels)


def abstained(
    ctx: Context,
    reason: Reason,
    *,
    generation: Generation | None = None,
    drafted: Sequence[AnswerSentence] = (),
    evidence: Sequence[Evidence] = (),
    text: str = ABSTAIN_TEXT,
) -> Answer:
    """No answer: the reason says why; the draft's failed sentences and the closest evidence
    are kept for auditors, nothing of the draft is shown."""
    return _answer(
        ctx,
        Mode.ABSTAINED,
        text,
        generation=generation,
        evidence=evidence,
        reason=reason,
        unverified=[s for s in drafted if not s.supported],
    )


def generated(
    ctx: Context,
    generation: Generation,
    *,
    sentences: Sequence[AnswerSentence],
    evidence: Sequence[Evidence],
    unverified: Sequence[AnswerSentence] = (),
) -> Answer:
    """The model's own verified sentences; the ones that failed are removed."""
    return _answer(
        ctx,
        Mode.GENERATED,
        None,
        generation=generation,
        sentences=[s for s in sentences if s.supported],
        evidence=evidence,
        unverified=[*unverified, *(s for s in sentences if not s.supported)],
    )


def quoted(
    ctx: Context,
    generation: Generation,
    *,
    sentences: Sequence[AnswerSentence],
    evidence: Sequence[Evidence],
    unverified: Sequence[AnswerSentence],
) -> Answer:
    """Guideline sentences quoted with their citations (numbered from the sentences)."""
    return _answer(
        ctx,
        Mode.QUOTED,
        None,
        generation=generation,
        sentences=sentences,
        evidence=evidence,
        unverified=unverified,
    )


def combined(
    ctx: Context,
    generation: Generation,
    *,
    sentences: Sequence[AnswerSentence],
    evidence: Sequence[Evidence],
    unverified: Sequence[AnswerSentence],
) -> Answer:
    """The model's verified sentences with guideline quotes: the mode says which it holds."""
    has_model = any(s.origin is Origin.MODEL for s in sentences)
    has_quote = any(s.origin is Origin.QUOTE for s in sentences)
    mode = (
        Mode.COMBINED if has_model and has_quote else Mode.QUOTED if has_quote else Mode.GENERATED
    )
    return _answer(
        ctx,
        mode,
        None,
        generation=generation,
        sentences=sentences,
        evidence=evidence,
        unverified=unverified,
    )


def compose(
    ctx: Context,
    generation: Generation,
    *,
    drafted: Sequence[AnswerSentence],
    drafted_evidence: Sequence[Evidence],
    quotes: Sequence[Quote],
    settings: Settings,
) -> Answer:
    """The answer after the citation check, as ``answer_style`` says (module docstring)."""
    style = answer_style(settings, generation.model)
    declined = any(p in generation.text.lower() for p in _MODEL_DECLINES)
    verified = [s for s in drafted if s.supported]
    failed = [s for s in drafted if not s.supported]
    strong = strong_evidence(quotes, settings)
    if not declined and strong and style is Style.QUOTED:
        quote = quote_answer(quotes, ctx.hits, limit=QUOTE_LIMIT)
        return quoted(
            ctx, generation, sentences=quote.sentences, evidence=quote.evidence, unverified=failed
        )
    if not declined and strong and style is Style.COMBINED:
        sentences, evidence = _combine(verified, quotes, ctx, drafted_evidence)
        return combined(ctx, generation, sentences=sentences, evidence=evidence, unverified=failed)
    reason = after_generation(generation.text, drafted, settings)
    if reason is not None:
        return fallback(ctx, generation, reason, drafted=drafted, quotes=quotes, settings=settings)
    return generated(
        ctx,
        generation,
        sentences=verified,
        evidence=_evidence_of(verified, ctx, drafted_evidence),
        unverified=failed,
    )


# The template named in the record of an answer made without a draft.
NO_DRAFT_TEMPLATE = "none:no draft (quoted style)"


def draft_needed(quotes: Sequence[Quote], model: ModelInfo | None, settings: Settings) -> bool:
    """Whether the model's free-text draft can change what the reader is shown.

    With a quoted style on strong evidence it cannot: :func:`compose` quotes whether the draft
    is verified or not, and a declined draft falls back to the same quotes
    (``unsupported_fallback`` quote). The draft was then only kept for auditors (its refused
    sentences) at about 6 s of CPU per answer, so it is skipped unless ``quoted_draft``.
    """
    if settings.quoted_draft or settings.unsupported_fallback != "quote":
        return True
    strong = strong_evidence(quotes, settings)
    return not (strong and answer_style(settings, model) is Style.QUOTED)


def undrafted(ctx: Context, model: ModelInfo, quotes: Sequence[Quote]) -> Answer:
    """The quoted answer when no draft was made (:func:`draft_needed`). The record names the
    model but no prompt or decoding of a draft: nothing was generated."""
    none = Generation(
        text="",
        model=model,
        prompt_hash="",
        template=NO_DRAFT_TEMPLATE,
        decoding={"draft": "none (quoted style)", "max_new_tokens": 0},
        seconds=0.0,
    )
    quote = quote_answer(quotes, ctx.hits, limit=QUOTE_LIMIT)
    return quoted(ctx, none, sentences=quote.sentences, evidence=quote.evidence, unverified=[])


def _combine(
    verified: Sequence[AnswerSentence],
    quotes: Sequence[Quote],
    ctx: Context,
    drafted_evidence: Sequence[Evidence],
) -> tuple[list[AnswerSentence], list[Evidence]]:
    """The matching recommendation first, in the guideline's words; then the model's verified
    sentences that say something it does not; then quotes for what none of them covers."""
    shown: list[AnswerSentence] = []
    evidence: list[Evidence] = []
    covered: set[int] = set()
    quote_sentences = quote_answer(quotes, ctx.hits, limit=len(quotes)).sentences
    by_quote = list(zip(quotes, quote_sentences, strict=True))
    if by_quote and by_quote[0][0].recommendation:
        lead, lead_sentence = by_quote.pop(0)
        shown.append(lead_sentence)
        evidence.append(lead.evidence)
        covered |= set(lead.indices)
    for s in verified:
        if covered & set(s.evidence):
            continue  # it says what a quote already says, in the guideline's words
        shown.append(s)
        covered |= set(s.evidence)
    evidence += _evidence_of([s for s in shown if s.origin is Origin.MODEL], ctx, drafted_evidence)
    quotes_shown = sum(s.origin is Origin.QUOTE for s in shown)
    # beside the model's sentences, the lead and one more; alone, as many as a quoted answer
    cap = QUOTE_LIMIT - 1 if any(s.origin is Origin.MODEL for s in shown) else QUOTE_LIMIT
    for q, sentence in by_quote:
        if len(shown) >= COMBINED_LIMIT or quotes_shown >= cap:
            break
        if covered & set(q.indices):
            continue
        shown.append(sentence)
        evidence.append(q.evidence)
        covered |= set(q.indices)
        quotes_shown += 1
    return shown, evidence


def _evidence_of(
    sentences: Sequence[AnswerSentence], ctx: Context, drafted: Sequence[Evidence]
) -> list[Evidence]:
    """The draft's key evidence that supports the sentences shown (not the removed ones)."""
    keep = {(ctx.sources[i].n, ctx.sources[i].text) for s in sentences for i in s.evidence}
    return [e for e in drafted if (e.n, e.text) in keep]


def fallback(
    ctx: Context,
    generation: Generation,
    reason: Reason,
    *,
    drafted: Sequence[AnswerSentence],
    quotes: Sequence[Quote],
    settings: Settings,
) -> Answer:
    """The answer when none of the model's wording is shown: quoted, or an abstention."""
    evidence = [q.evidence for q in quotes]
    strong = strong_evidence(quotes, settings)
    failed = [s for s in drafted if not s.supported]
    if strong and settings.unsupported_fallback == "quote":
        # The library holds the answer but the model did not say it verifiably: give the
        # clinician the guideline's own sentences rather than nothing.
        quote = quote_answer(quotes, ctx.hits, limit=QUOTE_LIMIT)
        return quoted(
            ctx, generation, sentences=quote.sentences, evidence=quote.evidence, unverified=failed
        )
    # The retrieval checks found the library on the subject; only the model's wording failed.
    # "The library does not contain guidance" was then often false: "How is hypertension
    # diagnosed?" said so above "confirm a high office reading with measurements taken outside
    # the clinic". Only the model saying the sources do not answer is read as such.
    declined = reason.code is ReasonCode.MODEL_DECLINED
    return abstained(
        ctx,
        reason,
        generation=generation,
        drafted=drafted,
        evidence=evidence,
        text=ABSTAIN_TEXT if declined else UNVERIFIED_TEXT,
    )


# ------------------------------------------------------------------------ what readers see


def display_labels(answer: Answer) -> dict[int, int]:
    """Source number (``Hit`` position, ``AnswerSentence.citations``) -> the number a reader
    sees: 1, 2, 3 in order of first appearance in the shown answer. For an abstention (no
    citations), the closest passages in the order they are listed. Records written before
    labels existed are numbered the same way."""
    labelled = {c.n: c.label for c in answer.citations if c.label}
    if labelled:
        return labelled
    order = [n for s in answer.sentences for n in s.citations]
    order += [c.n for c in answer.citations] + [e.n for e in answer.evidence]
    return {n: i for i, n in enumerate(dict.fromkeys(order), start=1)}


def removed_note(answer: Answer) -> str | None:
    """What the reader is told about the sentences removed as unsupported (or None)."""
    n = len(answer.unverified)
    if not n:
        return None
    if n == 1:
        return "1 sentence of the model's draft was removed: the sources do not support it."
    return f"{n} sentences of the model's draft were removed: the sources do not support them."
