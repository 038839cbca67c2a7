"""Attention attribution (AT2-style per-head weights): fitting, the method, selection, and one
check with the real packaged model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.attribute import (
    REMOVAL_SETS,
    AnswerScorer,
    attention_features,
    choose_method,
    fallback_method,
    source_spans,
)
from assistant.cite import source_sentences
from assistant.generate import build_messages
from assistant.prompts import load_template
from audit.attribution import CachedScorer, faithfulness, make_attributor
from audit.attribution.attention import (
    PACKAGED_WEIGHTS_DIR,
    AttentionAttributor,
    HeadWeights,
    calibrate,
    candidate_sets,
    find_weights,
    lift,
)
from audit.attribution.attention_fit import FitExample, fit_head_weights, group_correlation
from audit.attribution.faithfulness import DEFAULT_DRAWS
from core.backends.base import LLM, AttentionReader
from core.config import Settings, load_settings
from core.types import Chunk, Hit, ModelInfo
from tests.conftest import SHARED_EVAL


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


def test_fit_on_whole_answers_recovers_known_head_weights() -> None:
    w_true = np.array([0.8, -0.3, 0.0, 1.5, 0.2, -0.7])
    examples = _synthetic(w_true, 40, seed=5)
    result = fit_head_weights(examples, target="answer")
    assert np.allclose(result.w, w_true, atol=0.05), result.w
    assert result.stats["target"] == "answer"
    # one group per answer, where the sentence target has one per answer sentence
    assert result.stats["groups"] == len(examples)
    assert fit_head_weights(examples).stats["groups"] == sum(
        ex.features.shape[0] for ex in examples
    )
    with pytest.raises(ValueError, match="target must be one of"):
        fit_head_weights(examples, target="token")


def test_nonnegative_fit_keeps_weights_at_zero_or_above() -> None:
    # a head that only subtracts: the free fit gives it a negative weight, the non-negative
    # fit zero, and keeps the order of the positive heads
    w_true = np.array([1.0, 0.5, -0.8])
    examples = _synthetic(w_true, 40, seed=6)
    free = fit_head_weights(examples, ridges=(1e-3,))
    assert free.w[2] < -0.5
    fit = fit_head_weights(examples, ridges=(1e-3,), nonneg=True)
    assert (fit.w >= 0).all() and fit.w[2] == 0.0 and fit.stats["nonneg"] is True
    assert fit.w[0] > fit.w[1] > 0
    assert 0.5 < group_correlation(examples, fit.w) < group_correlation(examples, free.w)
    # where the truth is non-negative, the constraint changes nothing
    w_pos = np.array([0.8, 0.0, 1.5, 0.2])
    pos = fit_head_weights(_synthetic(w_pos, 40, seed=7), nonneg=True)
    assert np.allclose(pos.w, w_pos, atol=0.05), pos.w


def test_fit_shrinks_towards_prior_weights() -> None:
    # a strong ridge pulls towards zero, or towards weights fitted before on other answers
    w_true = np.array([0.8, -0.3, 1.5, 0.2])
    examples = _synthetic(w_true, 3, seed=8, noise=0.5)
    plain = fit_head_weights(examples, ridges=(100.0,))
    prior = w_true + 0.1
    shrunk = fit_head_weights(examples, ridges=(100.0,), prior=prior)
    assert np.abs(plain.w).max() < 0.2  # all but zero
    assert np.allclose(shrunk.w, prior, atol=0.1) and shrunk.stats["prior"] is True
    with pytest.raises(ValueError, match="prior must have 4 weights"):
        fit_head_weights(examples, prior=np.ones(3))


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


# --- the fit's data: which questions, which cached examples ------------------------------


@pytest.mark.skipif(not (SHARED_EVAL / "medquad").is_dir(), reason="no ../shared/eval")
def test_fit_questions_leave_out_every_benchmark_sample() -> None:
    from benchmarks.attribution import medquad_questions
    from benchmarks.common import dataset
    from evaluation.data import sample_questions
    from services.attribution_fit import load_questions

    # MedQuAD: a library of the first 300 passages, the benchmark's sample drawn over 2,000
    med = load_questions(SHARED_EVAL / "medquad", corpus_docs=300)
    ids = {qid for qid, _ in med}
    assert len(ids) == len(med) > 100
    gold = {q.qid: q.gold for q in dataset("medquad").questions}
    first = {str(r["doc_id"]) for r in dataset("medquad").corpus[:300]}
    assert all(set(gold[q]) <= first for q in ids)  # answerable from that library
    for n in (20, 50, 100):
        sample = {q.qid for q in medquad_questions(n, 2000, 0, set())}
        assert len(sample) == n and not ids & sample
    pub = {qid for qid, _ in load_questions(SHARED_EVAL / "pubmedqa")}
    for n in (20, 50, 100):
        sample = {q.qid for q in sample_questions(dataset("pubmedqa").questions, n, seed=0)}
        assert not pub & sample
    # the benchmark's MedQuAD sample stays the same whatever the weights were fitted on
    drawn = medquad_questions(50, 2000, 0, set())
    fitted = {drawn[0].qid, "not-a-question"}
    assert medquad_questions(50, 2000, 0, fitted) == drawn[1:]


def test_pooled_cache_keeps_only_complete_examples_of_this_model(tmp_path: Path) -> None:
    from services.attribution_fit import CACHE_FORMAT, read_cache

    config = {"k": 3, "n_ablations": 16}
    good = {
        "format": CACHE_FORMAT,
        "weights_hash": "m1",
        "config": config,
        "qid": "q1",
        "corpus": "medquad",
        "features": [[[1.0]]],
        "masks": [[1]],
        "logprobs": [[-1.0]],
    }
    variants = {
        "good": good,
        "other_model": {**good, "weights_hash": "m2"},
        "other_settings": {**good, "config": {**config, "k": 5}},
        "old_format": {**good, "format": CACHE_FORMAT - 1},
        "no_answer": {k: v for k, v in good.items() if k not in ("masks", "features")},
    }
    for name, record in variants.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "half.json").write_text("{")
    assert read_cache(tmp_path, "m1", config) == [good]


def test_cached_example_is_checked_against_the_manifest_without_retrieval(
    tmp_path: Path,
) -> None:
    # a fit from cached examples reads their passages back by chunk id: no embedder, so it
    # still works after an embedder change that makes retrieval refuse the index
    from types import SimpleNamespace

    from core.library.manifest import Manifest
    from services.attribution_fit import _chunks, cached_hits

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    tmp_path.mkdir(exist_ok=True)
    hits = [_hit(1, "Aspirin lowers fever. It is cheap."), _hit(2, "Fever is common.")]
    manifest = Manifest(settings.manifest_path)
    for h in hits:
        doc = SimpleNamespace(
            doc_id=h.chunk.doc_id, source_path="x.md", sha256="s", title="t", metadata={},
            warnings=[],
        )  # fmt: skip
        manifest.mark_pending(doc, "now")
        manifest.complete(doc, [h.chunk], "now")
    manifest.close()
    record = {"chunks": _chunks(list(reversed(hits)))}
    got = cached_hits(settings, record)
    assert got is not None
    assert [h.chunk.text for h in got] == ["Fever is common.", "Aspirin lowers fever. It is cheap."]
    changed = {"chunks": [[hits[0].chunk.chunk_id, "0" * 16]]}
    assert cached_hits(settings, changed) is None  # its text is not what was answered from
    assert cached_hits(settings, {"chunks": [["gone:c", "0" * 16]]}) is None


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


def test_candidate_sets_are_the_most_promising_subsets_of_the_top_five() -> None:
    scores = np.array([0.1, 5.0, 4.0, 0.0, 3.9, 3.0, 2.0])
    sets = candidate_sets(scores, 3, 4)
    assert sets[0] == (1, 2, 4)  # the plain top 3 first
    assert sets[1:] == [(1, 2, 5), (1, 4, 5), (1, 2, 6)]  # by predicted sum, from the top 5
    assert all(set(c) <= {1, 2, 4, 5, 6} for c in candidate_sets(scores, 3, 10))
    assert len(candidate_sets(scores, 3, 10)) == 10  # C(5, 3)
    assert candidate_sets(scores, 3, 1) == [] and candidate_sets(scores[:3], 3, 4) == []


def test_lift_puts_the_chosen_set_first_and_keeps_its_order() -> None:
    scores = np.array([0.5, 3.0, 2.0, 1.0, 1.9])
    lifted = lift(scores, [1, 3, 4])
    assert np.argsort(-lifted, kind="stable")[:3].tolist() == [1, 4, 3]
    assert lifted[0] == 0.5 and lifted[2] == 2.0  # the others keep their scores
    assert np.array_equal(lift(scores, [1, 2, 4]), scores)  # already the top 3
    ties = np.array([1.0, 1.0, 1.0, 1.0])
    assert np.array_equal(lift(ties, [0, 1]), ties)  # the top 2 by position already
    assert np.argsort(-lift(ties, [2, 3]), kind="stable")[:2].tolist() == [2, 3]


def test_refinement_shows_the_set_whose_removal_was_measured_to_hurt_most() -> None:
    """The per-head prediction ranks a decoy third, just above the sentence the answer needs
    with sentences 0 and 1; measuring the two most promising sets finds the right one."""
    needed = {0, 1, 3}
    rows: list[np.ndarray] = []

    def scorer(masks: np.ndarray) -> np.ndarray:
        rows.extend(masks)
        lost = [len(needed - set(np.flatnonzero(m).tolist())) for m in masks]
        return np.array([[-1.0 - 4.0 * n, -2.0 - 1.0 * n] for n in lost])

    per_head = np.array([3.0, 2.5, 2.0, 1.9, 0.2, 0.1])  # decoy: sentence 2
    features = np.zeros((2, 6, 1))
    features[0, :, 0] = per_head / 2
    features[1, :, 0] = per_head / 2
    plain = AttentionAttributor(features=features, weights=np.ones(1)).attribute(scorer, 6, 2)
    assert plain.top(3) == [0, 1, 2] and rows == [] and plain.n_evaluations == 0
    refined = AttentionAttributor(features=features, weights=np.ones(1), refine_sets=2).attribute(
        scorer, 6, 2
    )
    assert refined.top(3) == [0, 1, 3]
    assert refined.n_evaluations == 2 and len(rows) == 2
    assert refined.info["refined"]["sets"] == [[0, 1, 2], [0, 1, 3]]
    assert refined.info["refined"]["chosen"] == 1
    assert refined.info["attention_scores"] == pytest.approx(per_head.tolist())
    assert np.allclose(refined.per_target, plain.per_target)  # the prediction is kept as is
    capped = AttentionAttributor(
        features=features, weights=np.ones(1), refine_sets=2, max_evaluations=1
    ).attribute(scorer, 6, 2)
    assert capped.n_evaluations == 0 and capped.top(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="refine_sets"):
        AttentionAttributor(features=features, weights=np.ones(1), refine_sets=-1).attribute(
            scorer, 6, 2
        )


def test_calibrate_is_the_posterior_mean_given_measured_removals() -> None:
    prior = np.array([[1.0, 1.0, 0.0, 0.0]])
    removed = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=float)
    # the first row hurt as predicted; the second by 4 more: sentences 1 and 3 share it
    drops = np.array([[1.0], [5.0]])
    post = calibrate(prior, removed, drops, ridge=1e-9)
    assert post @ removed.T == pytest.approx(drops.T, abs=1e-6)  # trusts the rows
    assert post[0] == pytest.approx([1.0, 3.0, 0.0, 2.0], abs=1e-6)  # minimal change
    assert calibrate(prior, removed, drops, ridge=1e9) == pytest.approx(prior, abs=1e-6)
    halfway = calibrate(prior, removed, drops, ridge=2.0)  # R R' = 2 I: half of each residual
    assert halfway[0] == pytest.approx([1.0, 2.0, 0.0, 1.0])
    per_target = calibrate(np.vstack([prior, prior]), removed, np.hstack([drops, drops]), 2.0)
    assert per_target.sum(axis=0) == pytest.approx(2 * halfway[0])  # sums as the whole answer
    with pytest.raises(ValueError, match="ridge"):
        calibrate(prior, removed, drops, ridge=0)
    with pytest.raises(ValueError, match="removed must be"):
        calibrate(prior, removed[:, :3], drops, ridge=1.0)


def test_calibration_reads_the_checks_rows_and_corrects_a_wrong_prediction() -> None:
    """The per-head prediction ranks a decoy (sentence 2) among the top 3 and misses sentence
    5, which the answer needs; the check's random removals show it, and the check then finds
    every row it needs but its own two in the cache: calibration costs no extra pass."""
    needed = {0, 1, 5}
    calls: list[int] = []

    def model(masks: np.ndarray) -> np.ndarray:
        calls.append(len(masks))
        lost = [len(needed - set(np.flatnonzero(m).tolist())) for m in masks]
        return np.array([[-1.0 - 3.0 * n, -2.0 - 2.0 * n] for n in lost])

    per_head = np.array([3.0, 2.5, 2.0, 0.1, 0.1, 0.0])
    features = np.zeros((2, 6, 1))
    features[0, :, 0] = features[1, :, 0] = per_head / 2

    def attribute(**options: Any) -> tuple[Any, Any, int]:
        calls.clear()
        scorer = CachedScorer(model)
        result = AttentionAttributor(features=features, weights=np.ones(1), **options).attribute(
            scorer, 6, 2
        )
        check = faithfulness(scorer, result, k=3)
        return result, check, sum(calls)

    plain, plain_check, plain_rows = attribute()
    assert plain.top(3) == [0, 1, 2]
    calibrated, check, rows = attribute(calibrate_draws=DEFAULT_DRAWS, calibrate_ridge=1.0)
    assert calibrated.top(3) == [0, 1, 5]
    assert calibrated.n_evaluations == 1 + DEFAULT_DRAWS  # the full context and the draws
    assert rows == plain_rows == check.n_evaluations  # the same model rows as the check alone
    assert check.top_k_drop == pytest.approx(15.0)  # all three needed sentences removed
    assert plain_check.top_k_drop == pytest.approx(10.0)  # two of them
    assert check.random_drop == plain_check.random_drop
    info = calibrated.info["calibrated"]
    assert info["draws"] == DEFAULT_DRAWS and info["ridge"] == 1.0
    assert len(info["drops"]) == DEFAULT_DRAWS
    assert calibrated.info["attention_scores"] == pytest.approx(per_head.tolist())
    assert calibrated.scores == pytest.approx(calibrated.per_target.sum(axis=0))


def test_refinement_by_an_estimate_spends_no_scorer_row() -> None:
    """With an estimate (masking), the candidate sets are measured by it, not by removal:
    the scorer runs nothing, and the set the estimate says hurts most is shown."""
    needed = {0, 1, 3}
    scorer_rows: list[np.ndarray] = []
    estimated: list[np.ndarray] = []

    def scorer(masks: np.ndarray) -> np.ndarray:
        scorer_rows.extend(masks)
        return np.zeros((len(masks), 1))

    def estimate(masks: np.ndarray) -> np.ndarray:
        estimated.extend(masks)
        return np.array([[-1.0 - len(needed - set(np.flatnonzero(m).tolist()))] for m in masks])

    features = np.array([3.0, 2.5, 2.0, 1.9, 0.2, 0.1])[None, :, None]
    result = AttentionAttributor(
        features=features, weights=np.ones(1), refine_sets=2, estimate=estimate
    ).attribute(scorer, 6, 1)
    assert result.top(3) == [0, 1, 3]
    assert scorer_rows == [] and len(estimated) == 2 and result.n_evaluations == 0
    assert result.info["refined"]["by"] == "estimate"


def test_refinement_by_removal_adds_one_model_row_to_the_check(tmp_path: Path) -> None:
    """Refined by removal (2 sets), the plain top 3 is the check's own top-3 removal, so method
    and check together score one row more than the check alone after the per-head
    prediction. By default refinement masks instead (5 sets) and adds no removal row."""
    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    assert settings.attribution_refine_by == "masking" and settings.attribution_refine_sets == 5
    calls: list[int] = []

    def model(masks: np.ndarray) -> np.ndarray:
        calls.append(len(masks))
        return masks.astype(float) @ np.arange(1.0, 7.0)[:, None] - 30.0

    features = np.arange(6.0)[None, :, None][:, ::-1]  # predicts sentence 0 matters least

    def rows(refine_sets: int, **options: Any) -> int:
        calls.clear()
        scorer = CachedScorer(model)
        result = AttentionAttributor(
            features=features, weights=np.ones(1), refine_sets=refine_sets, **options
        ).attribute(scorer, 6, 1)
        faithfulness(scorer, result, k=3)
        return sum(calls)

    assert rows(2) == rows(0) + 1

    def masking(masks: np.ndarray) -> np.ndarray:
        return masks.astype(float) @ np.arange(1.0, 7.0)[:, None] - 30.0

    assert rows(5, estimate=masking) == rows(0)  # the check removes the set masking chose


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
    from audit.attribution import METHODS

    assert fallback_method() == "hierarchical" and "hierarchical" in METHODS
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


def _dose_answer(llm: _FakeReader) -> Any:
    from assistant.cite import align
    from core.types import Answer, Generation

    hits = [
        _hit(1, "The clinic opens at 8. Parking is free."),
        _hit(2, "The dose of zorbamycin is 40 mg daily. The cafeteria serves soup."),
        _hit(3, "Visitors sign in at the desk. The pharmacy closes at 6. Lifts are on the left."),
    ]
    text = "The dose of zorbamycin is 40 mg daily [2]."
    aligned = align(text, hits, _bag_of_words)
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
    return answer


class _MasksToo(_LeansOnTheDose):
    """Can also estimate removal by masking: the dose sentence hidden, the answer unlikely."""

    def __init__(self, weights_hash: str) -> None:
        super().__init__(weights_hash)
        self.masked_rows = 0

    def masked_logprobs(self, messages: Any, spans: Any, targets: Any, keep: Any) -> np.ndarray:
        content = messages[-1]["content"]
        dose = [s for s, (_, a, b) in enumerate(spans) if "40 mg" in content[a:b]]
        self.masked_rows += len(keep)
        return np.array([[-9.0 + 7.0 * bool(row[dose].all())] * len(targets) for row in keep])


def test_refinement_by_masking_measures_no_removal_and_the_check_still_does(
    tmp_path: Path,
) -> None:
    from assistant.attribute import attribute_answer

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)}).model_copy(
        update={"attribution_refine_by": "masking"}
    )
    HeadWeights("fake", "e" * 64, 1, 2, np.array([2.0, 0.1])).save(
        tmp_path / "attribution" / "fake.json"
    )
    llm = _MasksToo("e" * 64)
    answer = attribute_answer(_dose_answer(llm), llm, settings, _bag_of_words)
    record = answer.attribution
    assert record is not None and record["method"] == "attention"
    assert record["n_evaluations"] == 0
    assert llm.masked_rows == settings.attribution_refine_sets == 5
    refinement = record["refinement"]
    assert refinement["by"] == "masking"
    dose = next(s.index for s in answer.source_sentences if "40 mg" in s.text)
    assert dose in refinement["sets"][refinement["chosen"]]
    assert int(np.argmax(record["scores"])) == dose
    assert record["faithfulness"]["top_k_drop"] == pytest.approx(8.0)  # measured by removal
    # a model that cannot mask is refined by removal, of at most 2 sets (5 would cost 1.2x)
    unmasking = _LeansOnTheDose("e" * 64)
    plain = attribute_answer(_dose_answer(unmasking), unmasking, settings, _bag_of_words)
    assert plain.attribution is not None
    assert plain.attribution["refinement"]["by"] == "removal"
    assert plain.attribution["n_evaluations"] == REMOVAL_SETS == 2


def test_the_fallback_measures_its_rows_by_masking_and_the_check_still_removes(
    tmp_path: Path,
) -> None:
    """Hierarchical ablation (no fitted weights) removed for every row: 2.0x the generation on
    the benchmark's 100 answers; masked rows cost 0.54x, for a top-3 drop 0.33 nats lower."""
    from assistant.attribute import attribute_answer

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    assert settings.attribution_fallback_by == "masking"
    llm = _MasksToo("e" * 64)  # no weights saved: auto is the fallback
    answer = attribute_answer(_dose_answer(llm), llm, settings, _bag_of_words)
    record = answer.attribution
    assert record is not None and record["method"] == "hierarchical"
    assert record["measured_by"] == "masking"
    assert llm.masked_rows == record["n_evaluations"] > 0  # every row the method ran was masked
    dose = next(s.index for s in answer.source_sentences if "40 mg" in s.text)
    assert int(np.argmax(record["scores"])) == dose
    assert record["faithfulness"]["top_k_drop"] == pytest.approx(8.0)  # measured by removal
    # asked to remove, or a model that cannot mask: every row is a removal, as before
    removing = settings.model_copy(update={"attribution_fallback_by": "removal"})
    for model, config in ((_MasksToo("e" * 64), removing), (_LeansOnTheDose("e" * 64), settings)):
        plain = attribute_answer(_dose_answer(model), model, config, _bag_of_words)
        assert plain.attribution is not None
        assert plain.attribution["measured_by"] == "removal"
        assert getattr(model, "masked_rows", 0) == 0
        assert int(np.argmax(plain.attribution["scores"])) == dose


def test_the_method_is_described_as_it_will_run(tmp_path: Path) -> None:
    """Defect: the CLI said "attributing (auto, 32 ablations)..." before an attention
    attribution that runs no ablation of that kind."""
    from assistant.attribute import describe_method

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)})
    assert (
        describe_method(settings, _MasksToo("e" * 64)) == "auto: hierarchical ablation, by masking"
    )
    assert (
        describe_method(settings, _LeansOnTheDose("e" * 64))
        == "auto: hierarchical ablation, by removal"
    )
    HeadWeights("fake", "e" * 64, 1, 2, np.array([2.0, 0.1])).save(
        tmp_path / "attribution" / "fake.json"
    )
    assert describe_method(settings, _MasksToo("e" * 64)) == "auto: attention, 5 sets by masking"
    assert describe_method(settings, _FakeReader("e" * 64)) == "auto: attention, 2 sets by removal"
    assert (
        describe_method(settings, _FakeReader("e" * 64), "surrogate") == "surrogate, 32 ablations"
    )
    plain = settings.model_copy(update={"attribution_refine_sets": 0})
    assert describe_method(plain, _MasksToo("e" * 64), "attention") == "attention"


def test_auto_attributes_an_answer_with_attention_and_keeps_the_check(tmp_path: Path) -> None:
    from assistant.attribute import attribute_answer

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path)}).model_copy(
        update={
            "attribution_refine_sets": 2,
            "attribution_refine_by": "removal",
            "attribution_calibrate": False,
        }
    )
    llm = _LeansOnTheDose("e" * 64)
    answer = _dose_answer(llm)
    HeadWeights("fake", "e" * 64, 1, 2, np.array([2.0, 0.1])).save(
        tmp_path / "attribution" / "fake.json"
    )
    from audit.attribution import attention

    lookups: list[str] = []
    real_find = attention.find_weights

    def counting_find(weights_hash: str, dirs: Any = ()) -> Any:
        lookups.append(weights_hash)
        return real_find(weights_hash, dirs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "find_weights", counting_find)
        attribute_answer(answer, llm, settings, _bag_of_words)
    assert lookups == ["e" * 64]  # the weights are looked up once per answer
    record = answer.attribution
    assert record is not None
    assert record["method"] == "attention" and record["requested"] == "auto"
    # the scores cost no ablation; refinement measures the two most promising top-3 sets
    assert record["n_evaluations"] == settings.attribution_refine_sets == 2
    refinement = record["refinement"]  # what was measured, kept in the record
    assert len(refinement["sets"]) == len(refinement["logprob_without"]) == 2
    assert len(refinement["attention_scores"]) == len(record["scores"])
    dose = next(s.index for s in answer.source_sentences if "40 mg" in s.text)
    assert dose in refinement["sets"][refinement["chosen"]]
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
        "(2) It is cheap.",  # at a line start in the passage, as the generation showed it
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
