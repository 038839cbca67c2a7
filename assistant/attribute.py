"""Causal attribution of an answer: glue between the answering model and audit.attribution.

Builds a Scorer that re-renders the prompt with only some source sentences kept and asks the
same model for log p(answer sentence | that prompt) by teacher forcing. audit.attribution
never imports the model; this module never implements a method.

Attribution adds information and changes no decision: which sentences are supported, why the
others were refused, which sources each sentence cites and which sources the answer cites stay
exactly as the answer record holds them (the screen, the CLI and the audit record must agree,
and reliance on a source is not support: a model can lean on a source and still misstate it).
Causal scores only re-order each sentence's evidence and the answer's key evidence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from assistant.cite import Embed, parse_markers
from assistant.generate import build_messages, render_sources, source_header
from assistant.prompts import PromptTemplate, load_template
from core.backends.base import LLM, AttentionReader, LogProbScorer, Message, Span, SpanMasker
from core.config import Settings
from core.text import sentence_spans
from core.types import Answer, Evidence, Hit, SourceSentence

if TYPE_CHECKING:
    from audit.attribution import CachedScorer
    from audit.attribution.attention import HeadWeights


def answer_targets(text: str) -> list[str]:
    """Consecutive pieces of ``text``, one per sentence, whose concatenation is ``text``."""
    spans = sentence_spans(text)
    if not spans:
        return [text] if text else []
    pieces = []
    for i, (_, end) in enumerate(spans):
        start = 0 if i == 0 else spans[i - 1][1]
        stop = len(text) if i == len(spans) - 1 else end
        pieces.append(text[start:stop])
    return pieces


class AnswerScorer:
    """log p(answer sentences | prompt with the kept source sentences), batched."""

    def __init__(
        self,
        llm: LogProbScorer,
        template: PromptTemplate,
        question: str,
        hits: Sequence[Hit],
        sources: Sequence[SourceSentence],
        targets: Sequence[str],
    ) -> None:
        self.llm, self.template, self.question = llm, template, question
        self.hits, self.sources, self.targets = list(hits), list(sources), list(targets)

    @property
    def groups(self) -> list[int]:
        """The retrieved passage (1-based) of each source sentence: what hierarchical
        attribution ablates first (audit.attribution.source_groups reads it)."""
        return [s.n for s in self.sources]

    def texts(self, mask: np.ndarray) -> list[str]:
        """Each passage as the prompt shows it with only the kept source sentences.

        The full mask gives each passage's own text, exactly as the generation prompt showed
        it, so the generation's prompt KV cache (attention attribution) and the full-context
        reference (ablations) cover the whole prompt. Removing a sentence removes its text and
        the whitespace after it (before it, for a passage's last kept sentence); everything
        else keeps its spacing, so an ablated prompt equals the full one up to the removed
        sentence. A passage with nothing left reads "(removed)".
        """
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != (len(self.sources),):
            raise ValueError(f"mask must have shape ({len(self.sources)},); got {keep.shape}")
        out = []
        for n, (hit, layout) in enumerate(zip(self.hits, self._layout, strict=True), start=1):
            if layout is not None:
                out.append(_passage_text(hit.chunk.text, layout, keep))
                continue
            parts = [s.text for s, k in zip(self.sources, keep, strict=True) if k and s.n == n]
            out.append(" ".join(parts) if parts else "(removed)")
        return out

    @cached_property
    def _layout(self) -> list[Layout | None]:
        """Per passage, its sentences as (start, end, mask column or None)."""
        by_hit: dict[int, list[tuple[int, SourceSentence]]] = {}
        for column, s in enumerate(self.sources):
            by_hit.setdefault(s.n, []).append((column, s))
        return [
            _sentence_layout(hit.chunk.text, by_hit.get(n, []))
            for n, hit in enumerate(self.hits, start=1)
        ]

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        prompts = [
            build_messages(self.template, self.question, self.hits, self.texts(m)) for m in masks
        ]
        return self.llm.logprobs(prompts, self.targets)


Layout = list[tuple[int, int, int | None]]


def _sentence_layout(text: str, sources: Sequence[tuple[int, SourceSentence]]) -> Layout | None:
    """Where each sentence of ``text`` lies, and which mask column (source) it is.

    The passage's own sentence split (``cite.source_sentences`` made the sources from it)
    gives the pieces; sentences past the attribution cap have no column and are always kept,
    as the generation prompt kept them. None when the sources are not the passage's own
    sentences in order (a caller that built its own): the kept ones are then joined.
    """
    pieces: Layout = []
    queue = list(sources)
    for start, end in sentence_spans(text):
        column = None
        if queue and text[start:end] == queue[0][1].text:
            column = queue.pop(0)[0]
        pieces.append((start, end, column))
    return None if queue else pieces


def _passage_text(text: str, layout: Layout, keep: np.ndarray) -> str:
    """``text`` without the sentences whose column ``keep`` drops (see AnswerScorer.texts)."""
    kept = [i for i, (_, _, column) in enumerate(layout) if column is None or keep[column]]
    if len(kept) == len(layout):
        return text
    if not kept:
        return "(removed)"
    parts = [text[: layout[0][0]]]
    for j, i in enumerate(kept):
        parts.append(text[layout[i][0] : layout[i][1]])
        if j + 1 < len(kept):
            # the whitespace that followed this sentence in the passage
            parts.append(text[layout[i][1] : layout[i + 1][0]])
    parts.append(text[layout[-1][1] :])
    return "".join(parts)


def source_spans(
    messages: Sequence[Message], hits: Sequence[Hit], sources: Sequence[SourceSentence]
) -> list[Span]:
    """Where each source sentence lies in the prompt: (message index, start, end) of its text.

    Found by searching the user message in order (each source's header, then its sentences as
    the prompt shows them), so the spans follow :func:`render_sources` whatever it changes. A
    sentence that cannot be found gets an empty span (no attention, score 0).
    """
    m = len(messages) - 1
    content = messages[m]["content"]
    spans: list[Span] = []
    cursor = 0
    by_hit: dict[int, list[SourceSentence]] = {}
    for s in sources:
        by_hit.setdefault(s.n, []).append(s)
    found: dict[int, Span] = {}
    for n, hit in enumerate(hits, start=1):
        header = source_header(hit, n)
        at = content.find(header, cursor)
        if at >= 0:
            cursor = at + len(header)
        for s in by_hit.get(n, []):
            # the prompt defangs the passage as a whole: a sentence's marker at a line start
            # may be rewritten or not, depending on its neighbours; take the first that appears
            defanged = render_sources([s.text], [hit])[len(source_header(hit, 1)) + 1 :]
            places = [(content.find(t, cursor), t) for t in (defanged, s.text)]
            places = [(at, t) for at, t in places if at >= 0]
            if not places:
                found[s.index] = (m, 0, 0)
                continue
            at, shown = min(places)
            found[s.index] = (m, at, at + len(shown))
            cursor = at + len(shown)
    for s in sources:
        spans.append(found.get(s.index, (m, 0, 0)))
    return spans


def attention_features(llm: AttentionReader, scorer: AnswerScorer) -> np.ndarray:
    """(T, S, layers * heads) attention mass over the full prompt, as ``scorer`` renders it."""
    full = np.ones(len(scorer.sources), dtype=bool)
    messages = build_messages(scorer.template, scorer.question, scorer.hits, scorer.texts(full))
    spans = source_spans(messages, scorer.hits, scorer.sources)
    return llm.attention(messages, spans, scorer.targets)


class MaskedEstimate:
    """Removal estimated by masking: log p(answer sentences) with each row's dropped source
    sentences hidden from the question and the answer, over the full prompt (what
    attention refinement measures its candidate sets with under ``refine_by = "masking"``)."""

    name = "masking"

    def __init__(self, llm: SpanMasker, scorer: AnswerScorer) -> None:
        self.llm, self.scorer = llm, scorer

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        s = self.scorer
        full = np.ones(len(s.sources), dtype=bool)
        messages = build_messages(s.template, s.question, s.hits, s.texts(full))
        spans = source_spans(messages, s.hits, s.sources)
        return self.llm.masked_logprobs(messages, spans, s.targets, np.asarray(masks, bool))


def weights_dirs(settings: Settings) -> list[Path]:
    """Where a site's own fitted attention weights live (before the shipped ones)."""
    return [settings.home / "attribution"]


# the ablation method used when the model has no fitted attention weights (hierarchical is
# registered in audit.attribution; tests/test_attribution_attention.py checks it stays so)
FALLBACK_METHOD = "hierarchical"


def fallback_method() -> str:
    """The ablation method used when the model has no fitted attention weights."""
    return FALLBACK_METHOD


def fallback_rows(settings: Settings, llm: object, scorer: AnswerScorer) -> CachedScorer | None:
    """The rows hierarchical ablation measures with, when not the removal scorer: estimated by
    masking (``attribution_fallback_by``) where the model can mask. Cached on their own: a
    masked row is not a removal row, so the check's cache must never serve one as the other."""
    from audit.attribution import CachedScorer

    if _fallback_masks(settings, llm):
        return CachedScorer(MaskedEstimate(llm, scorer))  # type: ignore[arg-type]
    return None


def _fallback_masks(settings: Settings, llm: object) -> bool:
    """Whether hierarchical ablation's rows are estimated by masking for this model."""
    return settings.attribution_fallback_by == "masking" and isinstance(llm, SpanMasker)


def resolve_method(
    settings: Settings, llm: LLM, method: str | None = None
) -> tuple[str, HeadWeights | None]:
    """The one place the method is picked, with the attention weights it will use: "auto"
    (and "attention") means attention when weights were fitted for this model's weights,
    else the ablation fallback. The weights are looked up once per answer (a directory scan
    and JSON parse), here."""
    from audit.attribution.attention import find_weights

    method = method or settings.attribution
    if method not in ("auto", "attention"):
        return method, None
    if isinstance(llm, AttentionReader):
        weights = find_weights(llm.info.weights_hash, weights_dirs(settings))
        if weights is not None:
            return "attention", weights
    return fallback_method(), None


def choose_method(settings: Settings, llm: LLM, method: str | None = None) -> str:
    """The method :func:`resolve_method` picks."""
    return resolve_method(settings, llm, method)[0]


# what refinement by removal measures at most when masking was asked for but the model
# cannot mask (docs/benchmarks.md: two removals cost about what five masked rows do)
REMOVAL_SETS = 2


def describe_method(settings: Settings, llm: LLM, method: str | None = None) -> str:
    """What attribution will run, in a few words ("attention, 5 sets by masking"), as
    :func:`resolve_method` and :func:`attention_options` will run it: the CLI says it before
    the wait."""
    chosen, _ = resolve_method(settings, llm, method)
    if chosen == "attention":
        sets = settings.attribution_refine_sets
        by = settings.attribution_refine_by
        if by == "masking" and not isinstance(llm, SpanMasker):
            sets, by = min(sets, REMOVAL_SETS), "removal"
        what = f"attention, {sets} sets by {by}" if sets > 1 else "attention"
    elif chosen in ("surrogate", "shap"):
        what = f"{chosen}, {settings.attribution_ablations} ablations"
    else:
        what = {"loo": "leave-one-out", "hierarchical": "hierarchical ablation"}.get(chosen, chosen)
        if chosen == FALLBACK_METHOD:
            what += ", by masking" if _fallback_masks(settings, llm) else ", by removal"
    requested = method or settings.attribution
    return f"{requested}: {what}" if requested != chosen else what


def attention_options(
    settings: Settings, llm: object = None, scorer: AnswerScorer | None = None
) -> dict[str, Any]:
    """The attention method's settings: refinement (by removal, or estimated by masking where
    the model can mask), and calibration by the faithfulness check's random rows (the same
    rows :func:`attribute_answer`'s check scores next)."""
    from audit.attribution.faithfulness import DEFAULT_DRAWS

    options: dict[str, Any] = {"refine_sets": settings.attribution_refine_sets}
    if settings.attribution_refine_by == "masking":
        if isinstance(llm, SpanMasker) and scorer is not None:
            options["estimate"] = MaskedEstimate(llm, scorer)
        else:
            # a removal costs about four masked rows: a model that cannot mask measures at
            # most the two sets the removal default measured
            options["refine_sets"] = min(settings.attribution_refine_sets, REMOVAL_SETS)
    return options | {
        "calibrate_draws": DEFAULT_DRAWS if settings.attribution_calibrate else 0,
        "calibrate_ridge": settings.attribution_calibrate_ridge,
    }


def attribute_answer(
    answer: Answer, llm: LLM, settings: Settings, embed: Embed, method: str | None = None
) -> Answer:
    """Add causal attribution and faithfulness to ``answer``; only evidence order changes."""
    from audit.attribution import CachedScorer, faithfulness, make_attributor

    requested = method or settings.attribution
    method, weights = (
        resolve_method(settings, llm, requested) if requested != "off" else ("off", None)
    )
    gen = answer.generation
    # what is attributed is the shown sentences, so an answer the model did not write freely
    # (quoted, or a yes/no decision with its evidence) is attributed too
    if method == "off" or gen is None or not isinstance(llm, LogProbScorer):
        return answer
    sources = answer.source_sentences[: settings.attribution_max_sentences]
    # attribute what the clinician is shown: the checked sentences, never the removed ones
    shown = " ".join(s.text for s in answer.sentences)
    targets = answer_targets(shown)
    if not sources or not targets:
        return answer
    start = time.perf_counter()
    base = AnswerScorer(
        llm,
        load_template(settings.prompt_template),
        # the prompt the model answered: a follow-up was asked as rewritten
        answer.resolved_question or answer.question,
        answer.hits,
        sources,
        targets,
    )
    scorer = CachedScorer(base)
    kwargs: dict[str, Any] = {}
    if method == "surrogate":
        kwargs["n_ablations"] = settings.attribution_ablations
    elif method == "shap":
        kwargs["n_samples"] = settings.attribution_ablations
    elif method == "attention":
        kwargs["weights"] = weights
        kwargs.update(attention_options(settings, llm, base))
        # resolve_method picked attention only for an AttentionReader with weights
        kwargs["features"] = lambda: attention_features(llm, base)  # type: ignore[arg-type]
    elif method == "similarity":
        vectors = embed(list(targets) + [s.text for s in sources])
        kwargs["similarity"] = vectors[: len(targets)] @ vectors[len(targets) :].T
    rows = fallback_rows(settings, llm, base) if method == FALLBACK_METHOD else None
    result = make_attributor(method, **kwargs).attribute(
        scorer if rows is None else rows, len(sources), len(targets)
    )
    # the check removes for real whatever the method measured with
    check = faithfulness(scorer, result, k=min(3, len(sources)))
    seconds = time.perf_counter() - start
    answer.attribution = {
        "method": method,
        # "auto" resolved to a method; shown so an auditor knows it was not asked for by name
        **({"requested": requested} if requested != method else {}),
        "n_ablations": settings.attribution_ablations,
        "scores": [round(float(x), 6) for x in result.scores],
        "per_sentence": [[round(float(x), 6) for x in row] for row in result.per_target],
        "sources": [
            {"index": s.index, "n": s.n, "chunk_id": s.chunk_id, "text": s.text} for s in sources
        ],
        "faithfulness": check.to_dict(),
        "n_evaluations": result.n_evaluations,
        # how hierarchical ablation measured its rows (attention's are under "refinement")
        **(
            {"measured_by": "removal" if rows is None else "masking"}
            if method == FALLBACK_METHOD
            else {}
        ),
        "seconds": round(seconds, 3),
    }
    # what refinement measured or calibration read, beside the prediction they changed: an
    # auditor sees both
    predicted = [round(float(x), 6) for x in result.info.get("attention_scores", [])]
    for step, key in (("refined", "refinement"), ("calibrated", "calibration")):
        if step in result.info and predicted:
            answer.attribution[key] = {**result.info[step], "attention_scores": predicted}
    answer.timings["attribution"] = seconds
    _rerank(answer, targets, result.per_target)
    return answer


def _rerank(answer: Answer, targets: Sequence[str], per_target: np.ndarray) -> None:
    """Order each sentence's evidence, and the key evidence, by causal score; nothing else."""
    n_hits = len(answer.hits)
    rows = {parse_markers(t, n_hits)[0]: per_target[i] for i, t in enumerate(targets)}
    causal = np.zeros(len(answer.source_sentences))
    for sentence in answer.sentences:
        row = rows.get(sentence.text)
        if row is None:
            continue
        scores = np.zeros(len(answer.source_sentences))
        scores[: len(row)] = row
        causal = np.maximum(causal, scores)
        # stable: sentences the attribution says nothing about keep their order
        sentence.evidence = sorted(sentence.evidence, key=lambda j: -float(scores[j]))
    by_text = {(s.n, s.text): s.index for s in answer.source_sentences}

    def weight(e: Evidence) -> float:
        j = by_text.get((e.n, e.text))
        return float(causal[j]) if j is not None else 0.0

    answer.evidence = sorted(answer.evidence, key=lambda e: -weight(e))
