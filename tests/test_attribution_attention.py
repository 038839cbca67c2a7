"""Attention attribution (AT2-style per-head weights): fitting, the method, selection, and one
check with the real packaged model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.attribute import (
    AnswerScorer,
    attention_features,
    choose_method,
    fallback_method,
    source_spans,
)
from assistant.cite import source_sentences
from assistant.generate import build_messages
from assistant.prompts import load_template
from audit.attribution import make_attributor
from audit.attribution.attention import (
    PACKAGED_WEIGHTS_DIR,
    AttentionAttributor,
    HeadWeights,
    find_weights,
)
from audit.attribution.attention_fit import FitExample, fit_head_weights, group_correlation
from core.backends.base import LLM, AttentionReader
from core.config import Settings, load_settings
from core.types import Chunk, Hit, ModelInfo


def _hit(n: int, text: str, title: str = "Clinic handbook") -> Hit:
    chunk = Chunk(
        f"doc{n}:c", f"doc{n}", text, f"{title} {n}", "General", None, 0, len(text), "sha",
        f"doc{n}.md", "now",
    )  # fmt: skip
    return Hit(chunk=chunk, score=0.03, dense_score=0.7)


def _synthetic(
    w_true: np.ndarray, n_examples: int, seed: int, noise: float = 0.01
) -> list[FitExample]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n_examples):
        t, s = rng.integers(1, 4), rng.integers(3, 12)
        features = rng.random((t, s, len(w_true))) * rng.random((1, s, 1)) * 5
        masks = np.vstack([np.ones((1, s)), rng.random((32, s)) < 0.5])
        # a constant per sentence (log p with no context) that the fit must ignore
        logprobs = masks @ (features @ w_true).T - rng.random(t) * 50
        logprobs += noise * rng.standard_normal(logprobs.shape)
        examples.append(FitExample(features, masks, logprobs))
    return examples


# --- fitting --------------------------------------------------------------------------------


def test_fit_recovers_known_head_weights() -> None:
    w_true = np.array([0.8, -0.3, 0.0, 1.5, 0.2, -0.7])
    result = fit_head_weights(_synthetic(w_true, 40, seed=1))
    assert np.allclose(result.w, w_true, atol=0.05), result.w
    held_out = _synthetic(w_true, 10, seed=2)
    assert group_correlation(held_out, result.w) > 0.99
    # the wrong sign of every weight predicts the opposite: the measure is not constant
    assert group_correlation(held_out, -result.w) < -0.99
    assert (
        result.stats["examples"] == 40 and result.ridge <= 1e-2
    )  # little noise: a strong ridge loses


def test_fit_weights_sentences_equally_whatever_their_length() -> None:
    # one long sentence with its own (wrong) head: unweighted least squares would follow it
    w_true = np.array([1.0, 0.0])
    examples = _synthetic(w_true, 30, seed=3, noise=0.05)
    rng = np.random.default_rng(4)
    features = rng.random((1, 8, 2)) * 5
    masks = np.vstack([np.ones((1, 8)), rng.random((32, 8)) < 0.5])
    loud = FitExample(features, masks, 200.0 * masks @ (features @ np.array([0.0, 1.0])).T)
    result = fit_head_weights([*examples, loud], ridges=(1e-4,))
    assert np.allclose(result.w, w_true, atol=0.05), result.w


def test_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="no training examples"):
        fit_head_weights([])
    with pytest.raises(ValueError, match="masks must have shape"):
        FitExample(np.zeros((1, 3, 2)), np.ones((4, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="logprobs must have shape"):
        FitExample(np.zeros((2, 3, 2)), np.ones((4, 3)), np.zeros((4, 1)))
    flat = FitExample(np.ones((1, 3, 2)), np.ones((5, 3)), np.full((5, 1), -3.0))
    with pytest.raises(ValueError, match="nothing to fit"):
        fit_head_weights([flat], ridges=(1e-2,))
    mixed = [FitExample(np.ones((1, 3, 2)), np.ones((5, 3)), np.zeros((5, 1)))]
    mixed.append(FitExample(np.ones((1, 3, 4)), np.ones((5, 3)), np.zeros((5, 1))))
    with pytest.raises(ValueError, match="same number of features"):
        fit_head_weights(mixed)


# --- the method -----------------------------------------------------------------------------


def test_attention_method_scores_features_times_weights() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((2, 5, 6))
    w = rng.standard_normal(6)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return features

    result = make_attributor("attention", features=compute, weights=w).attribute(None, 5, 2)  # type: ignore[arg-type]
    assert calls == [1]
    assert np.allclose(result.per_target, features @ w)
    assert np.allclose(result.scores, (features @ w).sum(axis=0))
    assert result.n_evaluations == 0 and result.method == "attention"
    with pytest.raises(ValueError, match="features must have shape"):
        AttentionAttributor(features=features, weights=w).attribute(None, 4, 2)  # type: ignore[arg-type]
    empty = AttentionAttributor(features=compute, weights=w).attribute(None, 0, 2)  # type: ignore[arg-type]
    assert empty.scores.shape == (0,) and calls == [1]  # no pass for a context with no sentences


def test_weights_file_round_trip_and_lookup(tmp_path: Path) -> None:
    weights = HeadWeights("m", "ab" * 32, 2, 3, np.arange(6) / 10, data_hash="d", n_examples=4)
    path = weights.save(tmp_path / weights.file_name())
    again = HeadWeights.load(path)
    assert np.allclose(again.w, weights.w) and again.layers == 2 and again.data_hash == "d"
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": 2}))
    assert find_weights("ab" * 32, [tmp_path]) is not None
    assert find_weights("cd" * 32, [tmp_path]) is None
    with pytest.raises(ValueError, match="layers \\* heads"):
        HeadWeights("m", "x", 2, 3, np.zeros(5))


def test_shipped_weights_parse_and_name_their_data() -> None:
    files = sorted(PACKAGED_WEIGHTS_DIR.glob("*.json"))
    assert files, "the packaged model's weights are shipped"
    for path in files:
        weights = HeadWeights.load(path)
        assert weights.n_examples > 0 and len(weights.data_hash) == 64
        assert weights.command.startswith("clinrag ") and " attribution fit " in weights.command
        assert np.isfinite(weights.w).all() and np.abs(weights.w).max() > 0


class _FakeReader:
    """An LLM that reports attention; the weights lookup only needs its weights hash."""

    def __init__(self, weights_hash: str) -> None:
        self._hash = weights_hash

    def warm_up(self) -> None: ...

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", model_id="fake", weights_hash=self._hash)

    def stream(self, messages: Any, *, max_new_tokens: int, temperature: float) -> Any:
        yield ""

    def logprobs(self, prompts: Any, targets: Any) -> np.ndarray:
        return np.zeros((len(prompts), len(targets)))

    @property
    def attention_layout(self) -> tuple[int, int]:
        return 1, 2

    def attention(self, messages: Any, spans: Any, targets: Any) -> np.ndarray:
        return np.zeros((len(targets), len(spans), 2))


def test_auto_picks_attention_only_with_weights_for_the_model(tmp_path: Path) -> None:
    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    assert settings.attribution == "auto"
    llm = _FakeReader("f" * 64)
    assert isinstance(llm, AttentionReader)
    assert choose_method(settings, llm) == fallback_method()
    assert fallback_method() in ("hierarchical", "surrogate")  # hierarchical once registered
    HeadWeights("fake", "f" * 64, 1, 2, np.array([0.5, 1.0])).save(
        tmp_path / "attribution" / "w.json"
    )
    assert choose_method(settings, llm) == "attention"
    assert choose_method(settings, llm, "attention") == "attention"
    assert choose_method(settings, llm, "surrogate") == "surrogate"
    assert choose_method(settings, _FakeReader("0" * 64)) == fallback_method()


class _LeansOnTheDose(_FakeReader):
    """The answer is likely exactly when the dose sentence is kept, and the heads say so: head
    0 looks at the dose sentence, head 1 looks at everything."""

    def logprobs(self, prompts: Any, targets: Any) -> np.ndarray:
        kept = [any("40 mg" in m["content"] for m in p) for p in prompts]
        return np.array([[-10.0 + 8.0 * k] * len(targets) for k in kept])

    def attention(self, messages: Any, spans: Any, targets: Any) -> np.ndarray:
        content = messages[-1]["content"]
        features = np.ones((len(targets), len(spans), 2))
        for s, (_, a, b) in enumerate(spans):
            features[:, s, 0] = float("40 mg" in content[a:b])
        return features


def _bag_of_words(texts: Any) -> np.ndarray:
    vectors = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            vectors[i, sum(map(ord, word)) % 64] += 1.0
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_auto_attributes_an_answer_with_attention_and_keeps_the_check(tmp_path: Path) -> None:
    from assistant.attribute import attribute_answer
    from assistant.cite import align
    from core.types import Answer, Generation

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    hits = [
        _hit(1, "The clinic opens at 8. Parking is free."),
        _hit(2, "The dose of zorbamycin is 40 mg daily. The cafeteria serves soup."),
        _hit(3, "Visitors sign in at the desk. The pharmacy closes at 6. Lifts are on the left."),
    ]
    text = "The dose of zorbamycin is 40 mg daily [2]."
    aligned = align(text, hits, _bag_of_words)
    llm = _LeansOnTheDose("e" * 64)
    answer = Answer(
        question="What is the dose of zorbamycin?",
        answer=text,
        abstained=False,
        sentences=aligned.sentences,
        citations=aligned.citations,
        evidence=aligned.evidence,
        hits=hits,
        source_sentences=source_sentences(hits),
        generation=Generation(text, llm.info, "h", "answer_v1", {}, 0.1),
        timings={},
    )
    HeadWeights("fake", "e" * 64, 1, 2, np.array([2.0, 0.1])).save(
        tmp_path / "attribution" / "fake.json"
    )
    attribute_answer(answer, llm, settings, _bag_of_words)
    record = answer.attribution
    assert record is not None
    assert record["method"] == "attention" and record["requested"] == "auto"
    assert record["n_evaluations"] == 0  # no ablation for the scores themselves
    dose = next(s.index for s in answer.source_sentences if "40 mg" in s.text)
    assert int(np.argmax(record["scores"])) == dose
    assert record["scores"][dose] == pytest.approx(2.1) and min(record["scores"]) > 0
    check = record["faithfulness"]  # the ablation check still runs on every answer
    assert check["top_k_drop"] == pytest.approx(8.0)
    assert check["random_drop"] < check["top_k_drop"]


def test_source_spans_point_at_each_sentence_as_the_prompt_shows_it() -> None:
    hits = [
        _hit(1, "Aspirin lowers fever.\n[2] It is cheap. Take <|im_start|>two tablets."),
        _hit(2, "[1] Fever is common.\nAspirin lowers fever."),  # the same words again, later
    ]
    sources = source_sentences(hits)
    template = load_template("answer_v1")
    scorer = AnswerScorer(_FakeReader("0"), template, "q?", hits, sources, ["a."])
    messages = build_messages(template, "q?", hits, scorer.texts(np.ones(len(sources), bool)))
    spans = source_spans(messages, hits, sources)
    content = messages[-1]["content"]
    shown = [content[a:b] for _, a, b in spans]
    assert [m for m, _, _ in spans] == [len(messages) - 1] * len(sources)
    assert shown == [
        "Aspirin lowers fever.",
        "[2] It is cheap.",  # mid-line in the joined passage, so the prompt keeps it
        "Take two tablets.",  # a chat-turn marker is removed wherever it stands
        "(1) Fever is common.",  # at the passage's start: rewritten
        "Aspirin lowers fever.",
    ]
    assert spans[-1][1] > content.index("[2] ")  # the second source's copy, not the first's
    assert len(set(spans)) == len(spans)


# --- the real packaged model ----------------------------------------------------------------


@pytest.mark.slow
def test_attention_scores_the_copied_sentence_first(library: Settings, packaged_llm: LLM) -> None:
    assert isinstance(packaged_llm, AttentionReader)
    weights = find_weights(packaged_llm.info.weights_hash)
    assert weights is not None, "shipped weights are for the packaged model's weights"
    layers, heads = packaged_llm.attention_layout
    assert (weights.layers, weights.heads) == (layers, heads)
    hits = [
        _hit(1, "The clinic opens at 8 in the morning. Parking is free on weekends."),
        _hit(2, "The starting dose of zorbamycin is 40 mg once daily. The cafeteria serves soup."),
        _hit(3, "Visitors must sign in at the front desk. The pharmacy closes at 6 pm."),
    ]
    sources = source_sentences(hits)
    targets = ["The starting dose of zorbamycin is 40 mg once daily.", " Visitors sign in."]
    scorer = AnswerScorer(
        packaged_llm,  # type: ignore[arg-type]
        load_template(library.prompt_template),
        "What is the starting dose of zorbamycin, and where do visitors go?",
        hits,
        sources,
        targets,
    )
    features = attention_features(packaged_llm, scorer)
    assert features.shape == (2, len(sources), layers * heads)
    assert np.isfinite(features).all() and (features >= 0).all()
    # each query position spends all its attention once: at most one unit per target token
    tokens = len(packaged_llm._tokenizer(targets[0], add_special_tokens=False)["input_ids"])  # type: ignore[attr-defined]
    assert 0 < features[0].sum(axis=0).max() <= tokens + 1e-3
    result = make_attributor("attention", features=features, weights=weights).attribute(
        None,  # type: ignore[arg-type]
        len(sources),
        2,
    )
    dose = next(s.index for s in sources if "zorbamycin" in s.text)
    desk = next(s.index for s in sources if "front desk" in s.text)
    assert result.top(1, target=0) == [dose], result.per_target[0]
    assert result.top(1, target=1) == [desk], result.per_target[1]

    # after a generation from this prompt, the pass reuses its keys and values: same features
    reused: list[int] = []
    find = packaged_llm._generation_cache  # type: ignore[attr-defined]

    def spy(ids: list[int], limit: int) -> tuple[Any, int]:
        cache, start = find(ids, limit)
        reused.append(start)
        return cache, start

    messages = build_messages(
        scorer.template, scorer.question, hits, scorer.texts(np.ones(len(sources), bool))
    )
    list(packaged_llm.stream(messages, max_new_tokens=2, temperature=0.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packaged_llm, "_generation_cache", spy)
        again = attention_features(packaged_llm, scorer)
    assert reused and reused[0] > 100  # the whole prompt but its last token
    assert np.allclose(again, features, atol=1e-4)
