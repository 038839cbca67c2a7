"""Hierarchical ablation: passages first, then sentences only inside the passages that matter.

After AttriBoT (Liu et al., ICLR 2025): an answer usually rests on one or two of the retrieved
passages, so leave-one-out over every sentence spends most of its forward passes confirming
that sentences of irrelevant passages do nothing. Here:

1. **Passages.** One ablation per passage (the whole passage removed) plus the full context:
   ``1 + G`` scorer rows, giving each passage's exact removal effect per answer sentence.
2. **Sentences.** Leave-one-out inside the passages that matter -- the top one always; a
   further passage (in order of effect) only while its effect is at least ``close`` times the
   top one's, the refined passages hold less than ``coverage`` of the total positive passage
   effect, and at most ``max_passages`` are refined: one row per sentence of each refined
   passage. A one-sentence passage needs no row (its ablation is the sentence's) and takes no
   place among the refined. Rows cost the tokens after the removed sentence (the scorer reuses
   the prompt before it), so a second passage is refined only where it earns its rows: on the
   benchmark the answer usually rests on one passage, and refining a second near-tie costs
   as much as the first again (docs/benchmarks.md, "Attribution").

Scores. In a refined passage a sentence gets its leave-one-out drop plus an even share of the
part of the passage's effect that single removals do not explain (redundant or interacting
sentences: two that each suffice both score ~0 by leave-one-out, while removing the passage
costs a lot). Sentences of passages not refined get the passage effect *spread* evenly, not 0:
the passage ablation measured that they matter together, and 0 would claim "no effect" for
what was simply not tested sentence by sentence (``info["unrefined"]`` lists them). Either way
a passage's sentence scores sum to its measured removal effect, so scores of refined and
unrefined passages are on one scale and the top-k across passages stays meaningful.

The method only sees the :class:`~audit.attribution.scorer.Scorer` (masks over source
sentences), so it works for any model that gives log-probabilities. Which sentences form a
passage comes from ``groups`` (one label per source sentence), or from the scorer
(:func:`~audit.attribution.scorer.source_groups`); without either, contiguous blocks of about
sqrt(S) sentences stand in for passages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .scorer import Scorer, evaluate, source_groups
from .types import Attribution

__all__ = ["HierarchicalAttributor", "block_groups"]


def block_groups(n_sources: int) -> np.ndarray:
    """Contiguous blocks of about sqrt(S) sentences: stand-in passages when none are known."""
    size = max(1, math.ceil(math.sqrt(n_sources)))
    return np.arange(n_sources) // size


@dataclass
class HierarchicalAttributor(Method):
    """Passage ablations, then leave-one-out inside the passages that matter.

    Scorer rows: ``1 + G`` for the passages, plus one per sentence of each refined passage
    (none for a one-sentence passage: its ablation already is the sentence's). With
    ``max_evaluations`` the passage stage must fit (``1 + G`` rows); passages are refined only
    while all their sentences fit in what is left.
    """

    groups: Sequence[int] | np.ndarray | None = None
    max_passages: int = 2
    close: float = 0.5
    coverage: float = 0.8

    name: ClassVar[str] = "hierarchical"

    def __post_init__(self) -> None:
        if self.max_passages < 1:
            raise ValueError(f"max_passages must be >= 1; got {self.max_passages}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1]; got {self.coverage}")
        if not 0.0 <= self.close <= 1.0:
            raise ValueError(f"close must be in [0, 1]; got {self.close}")

    def _groups(self, scorer: Scorer, n_sources: int) -> tuple[np.ndarray, str]:
        for labels, origin in ((self.groups, "given"), (source_groups(scorer), "scorer")):
            if labels is not None:
                arr = np.asarray(labels)
                if arr.shape != (n_sources,):
                    raise ValueError(
                        f"groups ({origin}) must give one passage per source sentence, shape "
                        f"({n_sources},); got {arr.shape}"
                    )
                return arr, origin
        return block_groups(n_sources), "blocks"

    def _attribute(
        self, scorer: Scorer, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        labels, origin = self._groups(scorer, n_sources)
        # passages in order of first appearance, each as the indices of its sentences
        members: list[np.ndarray] = []
        index: dict[object, int] = {}
        for s, label in enumerate(labels.tolist()):
            if label not in index:
                index[label] = len(members)
                members.append(np.zeros(0, dtype=int))
            members[index[label]] = np.append(members[index[label]], s)
        n_groups = len(members)
        budget = self._budget(
            10**9 if self.max_evaluations is None else self.max_evaluations,
            "max_evaluations",
            1 + n_groups,
            f"hierarchical attribution over {n_groups} passages (full + one per passage)",
        )

        # 1. passages: the full context and one ablation per passage
        stage1 = np.ones((1 + n_groups, n_sources), dtype=bool)
        for g, sentences in enumerate(members):
            stage1[1 + g, sentences] = False
        out1 = evaluate(scorer, stage1, n_targets, self.batch_size)
        full = out1[0]
        passage_effect = full[None, :] - out1[1:]  # (G, T)
        whole = passage_effect.sum(axis=1)

        # 2. which passages to refine: the top one always (a sentence ranking is what the
        # clinician sees); further ones while they are close to it, add positive effect and
        # the budget allows. A one-sentence passage is exact already: no row, no place.
        order = np.argsort(-whole, kind="stable").tolist()
        top = float(whole[order[0]])
        positive = float(np.clip(whole, 0.0, None).sum())
        left = budget - len(stage1)
        refined: list[int] = []
        covered = 0.0
        for g in order:
            if g != order[0] and (
                len(refined) >= self.max_passages
                or whole[g] <= 0.0
                or whole[g] < self.close * top
                or covered >= self.coverage * positive
            ):
                break
            if len(members[g]) < 2:
                covered += max(float(whole[g]), 0.0)
                continue
            if len(members[g]) > left:
                continue
            refined.append(g)
            left -= len(members[g])
            covered += max(float(whole[g]), 0.0)

        # one call, so the scorer orders the rows by how much prompt each shares (late
        # sentences first costs nothing extra: every row runs from its own removed sentence)
        rows = [s for g in refined for s in members[g].tolist()]
        loo = np.zeros((n_targets, n_sources))
        if rows:
            stage2 = np.ones((len(rows), n_sources), dtype=bool)
            stage2[np.arange(len(rows)), rows] = False
            out2 = evaluate(scorer, stage2, n_targets, self.batch_size)
            loo[:, rows] = (full[None, :] - out2).T

        per_target = np.zeros((n_targets, n_sources))
        unrefined: list[int] = []
        for g, sentences in enumerate(members):
            share = passage_effect[g][:, None] / len(sentences)  # (T, 1)
            if g in refined or len(sentences) == 1:
                # leave-one-out plus an even share of what single removals leave unexplained
                inside = loo[:, sentences]
                residual = passage_effect[g][:, None] - inside.sum(axis=1, keepdims=True)
                per_target[:, sentences] = inside + residual / len(sentences)
            else:
                per_target[:, sentences] = share
                unrefined.extend(sentences.tolist())
        return Attribution(
            method=self.name,
            scores=per_target.sum(axis=0),
            per_target=per_target,
            n_evaluations=len(stage1) + len(rows),
            seconds=0.0,
            full_logprob=full,
            empty_logprob=out1[1] if n_groups == 1 else None,
            info={
                "groups_from": origin,
                "n_passages": n_groups,
                "passage_effects": whole,
                "refined_passages": [int(g) for g in refined],
                "unrefined": sorted(unrefined),
                "max_passages": self.max_passages,
                "close": self.close,
                "coverage": self.coverage,
            },
        )
