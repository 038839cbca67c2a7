"""Hierarchical attribution (passages first, then sentences inside the ones that matter), and
the prefix-KV reuse of the transformers scorer that makes its sentence stage cheap."""

from __future__ import annotations

import numpy as np
import pytest

from audit.attribution import CachedScorer, CountingScorer, make_attributor
from audit.attribution.hierarchical import HierarchicalAttributor, block_groups
from audit.attribution.scorer import source_groups

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
    assert result.info["refined"][0] == 1  # the passage holding the planted sentence
    assert 9 in result.top(2)  # the second planted sentence, in passage 2
    surrogate = CountingScorer(PlantedScorer(WEIGHTS, GROUPS))
    make_attributor("surrogate", n_ablations=32).attribute(surrogate, 12, 2)
    assert counting.rows == result.n_evaluations < surrogate.rows
    # 1 full + 3 passage ablations + 4 sentences of each of the refined passages
    assert result.n_evaluations == 4 + 4 * len(result.info["refined"])


def test_refined_scores_are_exact_leave_one_out_for_an_additive_answer() -> None:
    result = HierarchicalAttributor(groups=GROUPS).attribute(PlantedScorer(WEIGHTS), 12, 2)
    for g in result.info["refined"]:
        cols = [s for s, label in enumerate(GROUPS) if label == g]
        np.testing.assert_allclose(result.per_target[:, cols], WEIGHTS[:, cols], atol=1e-9)


def test_unrefined_passages_get_their_effect_spread_and_every_passage_sums_to_its_effect() -> None:
    scorer = PlantedScorer(WEIGHTS)
    result = HierarchicalAttributor(groups=GROUPS, max_passages=1).attribute(scorer, 12, 2)
    assert result.info["refined"] == [1]
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
    assert result.info["refined"][0] == 1
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
    assert result.n_evaluations == 4 and result.info["refined"] == []
    with pytest.raises(ValueError, match="one passage per source sentence"):
        HierarchicalAttributor(groups=[0, 1]).attribute(scorer, 12, 2)
    with pytest.raises(ValueError, match="max_passages"):
        HierarchicalAttributor(max_passages=0)
    assert source_groups(CountingScorer(CachedScorer(scorer))) is not None
    assert source_groups(PlantedScorer(WEIGHTS)) is None
