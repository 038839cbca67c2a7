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
from typing import Any

import numpy as np

from assistant.cite import Embed, parse_markers
from assistant.generate import build_messages
from assistant.prompts import PromptTemplate, load_template
from core.backends.base import LLM, LogProbScorer
from core.config import Settings
from core.text import sentence_spans
from core.types import Answer, Evidence, Hit, SourceSentence


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

    def texts(self, mask: np.ndarray) -> list[str]:
        kept: list[list[str]] = [[] for _ in self.hits]
        for s, keep in zip(self.sources, mask, strict=True):
            if keep:
                kept[s.n - 1].append(s.text)
        return [" ".join(parts) if parts else "(removed)" for parts in kept]

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        prompts = [
            build_messages(self.template, self.question, self.hits, self.texts(m)) for m in masks
        ]
        return self.llm.logprobs(prompts, self.targets)


def attribute_answer(
    answer: Answer, llm: LLM, settings: Settings, embed: Embed, method: str | None = None
) -> Answer:
    """Add causal attribution and faithfulness to ``answer``; only evidence order changes."""
    from audit.attribution import CachedScorer, faithfulness, make_attributor

    method = method or settings.attribution
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
    scorer = CachedScorer(
        AnswerScorer(
            llm,
            load_template(settings.prompt_template),
            # the prompt the model answered: a follow-up was asked as rewritten
            answer.resolved_question or answer.question,
            answer.hits,
            sources,
            targets,
        )
    )
    kwargs: dict[str, Any] = {}
    if method == "surrogate":
        kwargs["n_ablations"] = settings.attribution_ablations
    elif method == "shap":
        kwargs["n_samples"] = settings.attribution_ablations
    elif method == "similarity":
        vectors = embed(list(targets) + [s.text for s in sources])
        kwargs["similarity"] = vectors[: len(targets)] @ vectors[len(targets) :].T
    result = make_attributor(method, **kwargs).attribute(scorer, len(sources), len(targets))
    check = faithfulness(scorer, result, k=min(3, len(sources)))
    seconds = time.perf_counter() - start
    answer.attribution = {
        "method": method,
        "n_ablations": settings.attribution_ablations,
        "scores": [round(float(x), 6) for x in result.scores],
        "per_sentence": [[round(float(x), 6) for x in row] for row in result.per_target],
        "sources": [
            {"index": s.index, "n": s.n, "chunk_id": s.chunk_id, "text": s.text} for s in sources
        ],
        "faithfulness": check.to_dict(),
        "n_evaluations": result.n_evaluations,
        "seconds": round(seconds, 3),
    }
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
