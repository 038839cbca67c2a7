"""Leave-one-out: how much the answer's log-probability falls when one sentence is removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .scorer import Scorer, evaluate
from .types import Attribution

__all__ = ["LeaveOneOut"]


@dataclass
class LeaveOneOut(Method):
    """score_s = log p(answer | full) - log p(answer | full without s); S + 1 scorer rows.

    Exact for additive effects but blind to redundancy: if two sentences each suffice,
    removing either changes nothing and both score ~0 (the surrogate does not have this flaw).

    Budget fallback: when S + 1 > ``max_evaluations``, only ``max_evaluations - 1`` sentences
    are scored -- the highest by ``prior`` (e.g. retrieval score; ties by position), or the
    first ones in context order without a prior. Unscored sentences get 0 and are listed in
    ``info["unscored"]`` so a reader can tell "not tested" from "no effect".
    """

    name: ClassVar[str] = "loo"

    def _attribute(
        self, scorer: Scorer, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        budget = self._budget(
            n_sources + 1, "n_sources + 1", 2, "leave-one-out (full context + one removal)"
        )
        if prior is None:
            order = np.arange(n_sources)
        else:
            order = np.argsort(-np.asarray(prior, dtype=float), kind="stable")
        scored = np.sort(order[: budget - 1])

        masks = np.ones((len(scored) + 1, n_sources), dtype=bool)
        masks[np.arange(1, len(scored) + 1), scored] = False
        out = evaluate(scorer, masks, n_targets, self.batch_size)

        per_target = np.zeros((n_targets, n_sources))
        per_target[:, scored] = (out[0][None, :] - out[1:]).T
        unscored = sorted(set(range(n_sources)) - set(scored.tolist()))
        return Attribution(
            method=self.name,
            scores=per_target.sum(axis=0),
            per_target=per_target,
            n_evaluations=len(masks),
            seconds=0.0,
            full_logprob=out[0],
            info={"n_scored": len(scored), "unscored": unscored},
        )
