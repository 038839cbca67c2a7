"""Hierarchical attribution (passages first, then sentences inside the ones that matter), and
the prefix-KV reuse of the transformers scorer that makes its sentence stage cheap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from assistant.attribute import AnswerScorer, answer_targets
from assistant.cite import source_sentences
from assistant.generate import build_messages
from assistant.prompts import load_template
from audit.attribution import CachedScorer, CountingScorer, make_attributor
from audit.attribution.hierarchical import HierarchicalAttributor, block_groups
from audit.attribution.scorer import source_groups
from core.backends.base import LLM
from core.config import Settings
from tests.test_attribution_model import _hit

# 12 source sentences in 3 passages of 4; the answer (2 sentences) rests on sentence 6 (in
# passage 1), and a little on sentence 9; passage 0 is noise.
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
WEIGHTS = np.zeros((2, 12))
WEIGHTS[0, 6] = 5.0
WEIGHTS[1, 6] = 2.0
WEIGHTS[1, 9] = 1.5
WEIGHTS[:, :4] = 0.05


class PlantedScorer:
    """log p = base + weights . mask, optionally with two redundant sentences (either suffices)."""

    def __init__(
        self,
        weights: np.ndarray,
        groups: list[int] | None = None,
        redundant: tuple[int, int] | None = None,
    ) -> None:
        self.weights = weights
        self.redundant = redundant
        if groups is not None:
            self.groups = groups

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        m = np.asarray(masks, dtype=float)
        out = -20.0 + m @ self.weights.T
        if self.redundant is not None:
            a, b = self.redundant
            out[:, 0] += 4.0 * np.maximum(m[:, a], m[:, b])
        return out


def test_finds_the_planted_passage_and_sentence_with_fewer_rows_than_the_surrogate() -> None:
    counting = CountingScorer(PlantedScorer(WEIGHTS, GROUPS))
    result = make_attributor("hierarchical").attribute(CachedScorer(counting), 12, 2)
    assert result.top(1) == [6]
    assert result.top(1, target=1) == [6]
    assert result.info["groups_from"] == "scorer"  # read through the cache wrapper
    # the passage holding the planted sentence; passage 2 (1.5 nats against 7) is not close
    # enough to earn its 4 rows: its effect is spread over its sentences
    assert result.info["refined_passages"] == [1]
    np.testing.assert_allclose(result.scores[8:12], 1.5 / 4)
    surrogate = CountingScorer(PlantedScorer(WEIGHTS, GROUPS))
    make_attributor("surrogate", n_ablations=32).attribute(surrogate, 12, 2)
    assert counting.rows == result.n_evaluations < surrogate.rows
    # 1 full + 3 passage ablations + 4 sentences of the refined passage
    assert result.n_evaluations == 4 + 4


def test_a_close_second_passage_is_refined_too() -> None:
    weights = WEIGHTS.copy()
    weights[1, 9] = 4.0  # passage 2 now holds 4 of the 11 nats of passage 1's 7
    result = HierarchicalAttributor(groups=GROUPS).attribute(PlantedScorer(weights), 12, 2)
    assert result.info["refined_passages"] == [1, 2]
    assert result.top(2) == [6, 9] and result.n_evaluations == 4 + 8
    # close=0 restores the rule before (any positive passage, up to max_passages, coverage)
    weights[1, 9] = 1.5
    old = HierarchicalAttributor(groups=GROUPS, close=0.0).attribute(PlantedScorer(weights), 12, 2)
    assert old.info["refined_passages"] == [1, 2] and 9 in old.top(2)
    with pytest.raises(ValueError, match="close"):
        HierarchicalAttributor(close=1.5)


def test_a_one_sentence_passage_needs_no_row_and_takes_no_place() -> None:
    # passage 0 is one sentence and matters most; passage 1 (4 sentences) is close behind
    groups = [0, 1, 1, 1, 1, 2, 2, 2]
    weights = np.zeros((1, 8))
    weights[0, 0], weights[0, 3], weights[0, 6] = 5.0, 4.0, 0.5
    counting = CountingScorer(PlantedScorer(weights))
    result = HierarchicalAttributor(groups=groups, max_passages=1).attribute(counting, 8, 1)
    assert result.info["refined_passages"] == [1]  # the 1-sentence passage took no place
    assert result.n_evaluations == counting.rows == 4 + 4
    np.testing.assert_allclose(result.scores[:5], weights[0, :5], atol=1e-9)
    assert result.info["unrefined"] == [5, 6, 7]


def test_refined_scores_are_exact_leave_one_out_for_an_additive_answer() -> None:
    result = HierarchicalAttributor(groups=GROUPS).attribute(PlantedScorer(WEIGHTS), 12, 2)
    for g in result.info["refined_passages"]:
        cols = [s for s, label in enumerate(GROUPS) if label == g]
        np.testing.assert_allclose(result.per_target[:, cols], WEIGHTS[:, cols], atol=1e-9)


def test_unrefined_passages_get_their_effect_spread_and_every_passage_sums_to_its_effect() -> None:
    scorer = PlantedScorer(WEIGHTS)
    result = HierarchicalAttributor(groups=GROUPS, max_passages=1).attribute(scorer, 12, 2)
    assert result.info["refined_passages"] == [1]
    assert result.info["unrefined"] == [0, 1, 2, 3, 8, 9, 10, 11]
    # passage 2's effect (sentence 9's 1.5 nats) is spread over its 4 sentences, not dropped
    np.testing.assert_allclose(result.scores[8:12], 1.5 / 4)
    for g in range(3):
        cols = [s for s, label in enumerate(GROUPS) if label == g]
        np.testing.assert_allclose(result.scores[cols].sum(), WEIGHTS[:, cols].sum(), atol=1e-9)


def test_redundant_sentences_share_their_passage_effect_instead_of_scoring_zero() -> None:
    weights = np.zeros((2, 12))
    scorer = PlantedScorer(weights, GROUPS, redundant=(4, 5))
    result = make_attributor("hierarchical").attribute(scorer, 12, 2)
    loo = make_attributor("loo").attribute(scorer, 12, 2)
    assert np.allclose(loo.scores[[4, 5]], 0.0)  # each alone is never missed
    assert result.info["refined_passages"][0] == 1
    assert set(result.top(2)) == {4, 5}
    np.testing.assert_allclose(result.scores[4:8].sum(), 4.0)


def test_without_groups_contiguous_blocks_stand_in_for_passages() -> None:
    result = make_attributor("hierarchical").attribute(PlantedScorer(WEIGHTS), 12, 2)
    assert result.info["groups_from"] == "blocks"
    assert block_groups(12).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert result.top(1) == [6]


def test_budget_and_bad_groups() -> None:
    scorer = PlantedScorer(WEIGHTS, GROUPS)
    with pytest.raises(ValueError, match="at least 4 scorer rows"):
        HierarchicalAttributor(max_evaluations=3).attribute(scorer, 12, 2)
    # room for the passage stage only: nothing refined, every sentence gets its passage share
    result = HierarchicalAttributor(max_evaluations=6).attribute(scorer, 12, 2)
    assert result.n_evaluations == 4 and result.info["refined_passages"] == []
    with pytest.raises(ValueError, match="one passage per source sentence"):
        HierarchicalAttributor(groups=[0, 1]).attribute(scorer, 12, 2)
    with pytest.raises(ValueError, match="max_passages"):
        HierarchicalAttributor(max_passages=0)
    assert source_groups(CountingScorer(CachedScorer(scorer))) is not None
    assert source_groups(PlantedScorer(WEIGHTS)) is None


@pytest.mark.slow
def test_prefix_reuse_gives_the_same_scores_and_hierarchical_finds_the_dose(
    library: Settings, packaged_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.backends import transformers_llm

    llm: Any = packaged_llm  # the transformers backend: its private helpers are used below
    hits = [
        _hit(
            1,
            "The clinic opens at 8 in the morning. Parking is free on weekends. "
            "Visitors sign in at the desk.",
        ),
        _hit(
            2,
            "Zorbamycin treats mild infections. The starting dose of zorbamycin is 40 mg "
            "once daily. The cafeteria serves soup.",
        ),
        _hit(3, "Staff badges are renewed yearly. The library closes at noon on Fridays."),
    ]
    sources = source_sentences(hits)
    scorer = AnswerScorer(
        llm,
        load_template(library.prompt_template),
        "What is the starting dose of zorbamycin?",
        hits,
        sources,
        answer_targets("The starting dose is 40 mg. It is taken once daily."),
    )
    runs: list[int] = []  # tokens run per row after the reused prefix
    real = llm._target_logprobs

    def counting(rows: list[list[int]], *args: object, **kwargs: object) -> Any:
        runs.extend(len(r) for r in rows)
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(llm, "_target_logprobs", counting)
    counted = CountingScorer(CachedScorer(scorer))
    result = make_attributor("hierarchical").attribute(counted, len(sources), 2)
    dose = next(s.index for s in sources if "40 mg" in s.text)
    assert result.info["groups_from"] == "scorer"
    assert result.info["refined_passages"][0] == 1  # passage 2 holds the dose
    assert dose in result.top(2)
    assert counted.rows == result.n_evaluations < 33
    reused = list(runs)
    # every sentence-stage row reused the prompt up to its removed sentence: far fewer tokens
    # than whole prompts
    full = build_messages(
        scorer.template, scorer.question, hits, scorer.texts(~np.zeros(len(sources), bool))
    )
    full_len = len(llm._prompt_ids(full))
    assert sum(reused) < 0.6 * full_len * len(reused)
    masks = np.ones((5, len(sources)), dtype=bool)
    masks[1, dose] = masks[2, 0] = masks[3, -1] = False
    masks[4, [1, dose, len(sources) - 2]] = False
    with_reuse = scorer(masks)
    monkeypatch.setattr(transformers_llm, "MIN_PREFIX", 10**9)
    without = scorer(masks)
    np.testing.assert_allclose(with_reuse, without, atol=1e-4)
    assert with_reuse[0].sum() > with_reuse[1].sum() + 1  # removing the dose lowers log p
    monkeypatch.setattr(transformers_llm, "MIN_PREFIX", 16)
    # two top-3 removals sharing their first two sentences: the second row starts from the
    # first row's keys and values at the third, not from the full prompt at the first
    pair = np.ones((2, len(sources)), dtype=bool)
    pair[:, [0, 1]] = False
    pair[0, len(sources) - 2] = pair[1, len(sources) - 1] = False
    runs.clear()
    chained = scorer(pair)
    chained_runs = list(runs)
    monkeypatch.setattr(transformers_llm, "_common_prefix", lambda a, b, limit: 0)
    runs.clear()
    np.testing.assert_allclose(chained, scorer(pair), atol=1e-4)
    # without it both rows run from the first removed sentence
    assert len(chained_runs) == len(runs) == 2
    assert chained_runs[1] < 0.5 * min(runs)


@pytest.mark.parametrize("method", ["hierarchical", "loo", "surrogate", "random"])
def test_the_benchmark_measures_each_method_on_one_answer(method: str) -> None:
    # hierarchical's info once named its refined passages "refined", the key attention uses for
    # its measured sets: the benchmark read that list as attention's record and stopped
    from benchmarks.attribution import CHECKED, measure_method

    options = {"surrogate": {"n_ablations": 16}, "random": {"seed": 1}}.get(method, {})
    planted = PlantedScorer(WEIGHTS, GROUPS)
    entry = measure_method(
        method, make_attributor(method, **options), CachedScorer(planted), planted, 12, 2
    )
    assert entry["evaluations"] >= (0 if method == "random" else 4)
    assert entry["drop3"] >= entry["drop1"] >= 0
    if method != "random":
        assert entry["drop1"] == pytest.approx(7.0)  # sentence 6 found: 5 + 2 nats
    assert ("check_seconds" in entry) == (method in CHECKED)
    assert "refined" not in entry


def test_the_benchmark_checks_on_the_removal_scorer_even_when_its_cache_is_empty() -> None:
    # the check once ran on ``check_scorer or scorer``: a fresh CachedScorer has length 0, so
    # the fallback's check ran on its masked rows and its "with check" time was too low
    from benchmarks.attribution import measure_method

    rows = CountingScorer(PlantedScorer(WEIGHTS, GROUPS))
    removal = CountingScorer(PlantedScorer(WEIGHTS, GROUPS))
    check = CachedScorer(removal)
    assert len(check) == 0
    entry = measure_method(
        "hierarchical", make_attributor("hierarchical"), rows, rows, 12, 2, check_scorer=check
    )
    assert "check_seconds" in entry
    assert removal.rows > 0  # the check's rows were removals
    assert rows.rows == entry["evaluations"] + 4  # the method's rows, then 2 drops of 2 rows
