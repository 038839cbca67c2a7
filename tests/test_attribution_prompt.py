"""The attribution prompt renders the context exactly as the generation prompt did.

Attention attribution reuses the generation's prompt KV cache up to the first token that
differs, and ablations reuse the full-context prompt up to their first removed sentence; both
cover the whole prompt only if the full-context attribution prompt is the generation prompt,
character for character (passages keep their own line breaks and spacing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from assistant.attribute import AnswerScorer, answer_targets, attention_features
from assistant.cite import source_sentences
from assistant.generate import build_messages, source_header
from assistant.prompts import load_template
from core.backends.base import LLM
from core.config import Settings
from core.text import sentence_spans
from core.types import SourceSentence
from tests.test_attribution_model import _hit

# a realistic multi-paragraph chunk: a heading, paragraphs, a numbered heading, a list
AAA = (
    "Abdominal Aortic Aneurysm Screening (USPSTF 2019)\n\n"
    "This summary covers the December 2019 USPSTF recommendation on screening for abdominal "
    "aortic aneurysm (AAA). An AAA is usually defined as an infrarenal aortic diameter of "
    "3.0 cm or more.  Most are silent until they rupture.\n\n"
    "2. Recommendation\n\n"
    "- Men aged 65 to 75 who have ever smoked: one-time screening with ultrasonography "
    "(grade B).\n"
    "- Women who have never smoked and have no family history of AAA: do not screen "
    "(grade D).\n"
)
SECOND = (
    "Screening is done once.\n[2] Repeat screening after a normal result adds little.\n\n"
    "Aorta under 3.0 cm: no further screening."
)
QUESTION = "Who should be screened for AAA?"


def _scorer(llm: Any = None, hits: Any = None, cap: int | None = None) -> AnswerScorer:
    hits = hits or [_hit(1, AAA), _hit(2, SECOND)]
    sources = source_sentences(hits)[:cap]
    answer = answer_targets("Men aged 65 to 75 who ever smoked get one ultrasound [1].")
    return AnswerScorer(llm, load_template("answer_v1"), QUESTION, hits, sources, answer)


def _full(scorer: AnswerScorer) -> np.ndarray:
    return np.ones(len(scorer.sources), dtype=bool)


def _full_messages(scorer: AnswerScorer) -> list[Any]:
    return build_messages(scorer.template, QUESTION, scorer.hits, scorer.texts(_full(scorer)))


def test_the_full_context_prompt_is_the_generation_prompt() -> None:
    scorer = _scorer()
    assert len(scorer.sources) >= 8  # the passages really are split into many sentences
    generation = build_messages(scorer.template, QUESTION, scorer.hits)
    attribution = build_messages(
        scorer.template, QUESTION, scorer.hits, scorer.texts(_full(scorer))
    )
    assert attribution == generation


def test_removing_a_sentence_removes_its_text_and_keeps_the_prompt_before_it() -> None:
    scorer = _scorer()
    full = build_messages(scorer.template, QUESTION, scorer.hits)[-1]["content"]
    for column, source in enumerate(scorer.sources):
        mask = _full(scorer)
        mask[column] = False
        texts = scorer.texts(mask)
        passage = scorer.hits[source.n - 1].chunk.text
        spans = sentence_spans(passage)
        at = next(i for i, (a, b) in enumerate(spans) if passage[a:b] == source.text)
        a, b = spans[at]
        if at + 1 < len(spans):  # the sentence and the whitespace after it
            expected = passage[:a] + passage[spans[at + 1][0] :]
        else:  # a passage's last sentence: the whitespace before it
            expected = passage[: spans[at - 1][1]] + passage[b:]
        assert texts[source.n - 1] == expected, source.text
        other = 2 - source.n  # the other passage is untouched
        assert texts[other] == scorer.hits[other].chunk.text
        ablated = build_messages(scorer.template, QUESTION, scorer.hits, texts)[-1]["content"]
        # the ablated prompt is the full prompt up to where the removed sentence started
        header = source_header(scorer.hits[source.n - 1], source.n)
        start = full.index(header) + len(header) + 1 + a
        assert ablated[:start] == full[:start] and ablated != full


def test_every_sentence_removed_leaves_a_placeholder_and_uncapped_sentences_stay() -> None:
    scorer = _scorer()
    assert scorer.texts(np.zeros(len(scorer.sources), bool)) == ["(removed)", "(removed)"]
    # attribution looks at the first sentences only (attribution_max_sentences); the rest of
    # the context is still there, as in the generation prompt
    capped = _scorer(cap=3)
    texts = capped.texts(np.zeros(3, bool))
    assert texts[1] == SECOND
    assert texts[0].endswith(AAA[AAA.index("Most are silent") :])
    assert capped.texts(np.ones(3, bool)) == [AAA, SECOND]


def test_single_line_passages_render_as_before() -> None:
    """Where the old rendering (kept sentences joined by single spaces) was already the
    passage's own text, prompts and so scores are unchanged."""
    hits = [
        _hit(1, "The clinic opens at 8. Parking is free. Visitors sign in."),
        _hit(2, "The dose is 40 mg once daily. The cafeteria serves soup."),
    ]
    scorer = _scorer(hits=hits)
    rng = np.random.default_rng(0)
    for mask in rng.random((20, len(scorer.sources))) < 0.6:
        legacy = [
            " ".join(s.text for s, k in zip(scorer.sources, mask, strict=True) if k and s.n == n)
            or "(removed)"
            for n in (1, 2)
        ]
        assert scorer.texts(mask) == legacy


def test_sources_that_are_not_the_passage_sentences_are_joined() -> None:
    hits = [_hit(1, "Line one.\n\nLine two.")]
    sources = [SourceSentence(0, 1, "doc1:c", "Something else."), SourceSentence(1, 1, "x", "B.")]
    scorer = AnswerScorer(None, load_template("answer_v1"), "q?", hits, sources, ["a."])  # type: ignore[arg-type]
    assert scorer.texts(np.array([True, True])) == ["Something else. B."]
    assert scorer.texts(np.array([False, False])) == ["(removed)"]
    with pytest.raises(ValueError):
        scorer.texts(np.ones(3, bool))


# --- the real packaged model ----------------------------------------------------------------


@pytest.mark.slow
def test_attention_reuses_the_whole_generation_prompt(library: Settings, packaged_llm: LLM) -> None:
    llm: Any = packaged_llm  # the transformers backend: its private helpers are used below
    scorer = _scorer(llm)
    generation = build_messages(scorer.template, QUESTION, scorer.hits)
    attribution = build_messages(
        scorer.template, QUESTION, scorer.hits, scorer.texts(_full(scorer))
    )
    # token for token: what the attention pass tokenizes is what the generation ran
    text, _ = llm._rendered_prompt(attribution)
    tokens = llm._tokenizer(text, add_special_tokens=False)["input_ids"]
    assert list(tokens) == llm._prompt_ids(generation)

    without = attention_features(llm, scorer)  # whatever an earlier test generated
    reused: list[int] = []
    find = llm._generation_cache

    def spy(ids: list[int], limit: int) -> tuple[Any, int]:
        cache, start = find(ids, limit)
        reused.append(start)
        return cache, start

    list(llm.stream(generation, max_new_tokens=2, temperature=0.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm, "_generation_cache", spy)
        features = attention_features(llm, scorer)
    # the whole prompt but the token that predicts the answer's first token
    assert reused == [len(tokens) - 1]
    np.testing.assert_allclose(features, without, atol=1e-4)


@pytest.mark.slow
def test_ablations_start_from_the_generation_kv_cache(
    library: Settings, packaged_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generation already ran the full prompt: teacher forcing takes its keys and values
    as the reference prefix instead of running the prompt again; same log-probabilities."""
    import threading

    from core.backends import transformers_llm

    llm: Any = packaged_llm
    scorer = _scorer(llm)
    monkeypatch.setattr(llm, "_scoring", threading.local())  # no reference from earlier tests
    list(llm.stream(_full_messages(scorer), max_new_tokens=2, temperature=0.0))
    passes: list[int] = []
    real = llm._prefix_cache
    monkeypatch.setattr(llm, "_prefix_cache", lambda ids: passes.append(len(ids)) or real(ids))
    masks = np.ones((4, len(scorer.sources)), dtype=bool)
    masks[1, 0] = masks[2, 4] = masks[3, -1] = False
    reused = scorer(masks)
    assert passes == []  # no prompt pass of its own
    monkeypatch.setattr(transformers_llm, "MIN_PREFIX", 10**9)
    np.testing.assert_allclose(reused, scorer(masks), atol=1e-4)
