"""KernelSHAP over sentence masks, via the ``shap`` library.

Each sentence is a binary feature; the instance explained is the full context (all ones) and
the background is the empty context (all zeros), so SHAP values split
log p(answer | full) - log p(answer | empty) among the sentences with Shapley weighting.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .scorer import Scorer, evaluate
from .types import Attribution

__all__ = ["ShapAttributor"]


@dataclass
class ShapAttributor(Method):
    """KernelSHAP with ``n_samples`` scorer rows in all (capped by ``max_evaluations``).

    The budget counts the full and empty contexts too, so shap's own ``nsamples`` is
    ``n_samples - 2``; shap stops early once it has enumerated all 2**S - 2 coalitions.
    ``l1_reg`` goes to shap unchanged; None picks ``num_features(r)`` with
    r = min(S, nsamples // 2) so the weighted least squares stays well posed when the budget
    is small relative to S (shap's own default keeps only 10 sentences).
    """

    n_samples: int = 32
    seed: int = 0
    l1_reg: str | float | bool | None = None

    name: ClassVar[str] = "shap"

    def _attribute(
        self, scorer: Scorer, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        budget = self._budget(
            self.n_samples,
            "n_samples",
            2 if n_sources == 1 else 4,
            f"KernelSHAP over {n_sources} sentences (full, empty and some coalitions)",
        )

        # Full and empty go in one batch up front; shap asks for each separately, one row at a
        # time, and answering from this memo saves two single-row forward passes.
        ends = np.vstack([np.ones((1, n_sources), bool), np.zeros((1, n_sources), bool)])
        end_out = evaluate(scorer, ends, n_targets, self.batch_size)
        memo = {ends[0].tobytes(): end_out[0], ends[1].tobytes(): end_out[1]}
        rows_used = [2]

        def model(x: np.ndarray) -> np.ndarray:
            masks = np.asarray(x) > 0.5
            out = np.empty((len(masks), n_targets))
            todo = []
            for i, row in enumerate(masks):
                hit = memo.get(row.tobytes())
                if hit is None:
                    todo.append(i)
                else:
                    out[i] = hit
            if todo:
                out[todo] = evaluate(scorer, masks[todo], n_targets, self.batch_size)
                rows_used[0] += len(todo)
            # The whole answer is an extra output, so shap fits it on the same coalitions at no
            # extra scorer cost (its feature selection makes per-target sums differ slightly).
            return np.hstack([out, out.sum(axis=1, keepdims=True)])

        import shap  # lazy: shap pulls in numba/pandas, too slow for ``import audit``

        nsamples = budget - 2
        l1_reg = self.l1_reg
        if l1_reg is None:
            l1_reg = f"num_features({max(2, min(n_sources, nsamples // 2))})"
        # shap samples coalitions from numpy's global RNG; seed it for determinism and put the
        # caller's state back so attribution has no side effect on anyone else's randomness.
        state = np.random.get_state()
        shap_logger = logging.getLogger("shap")
        old_level = shap_logger.level
        try:
            np.random.seed(self.seed)
            shap_logger.setLevel(logging.WARNING)
            with warnings.catch_warnings():
                # A singular system falls back to least squares inside shap; the result is
                # still usable and the warning would only reach a clinician's console.
                warnings.simplefilter("ignore")
                explainer = shap.KernelExplainer(model, np.zeros((1, n_sources)), link="identity")
                values = explainer.shap_values(
                    np.ones((1, n_sources)), nsamples=nsamples, l1_reg=l1_reg, silent=True
                )
        finally:
            np.random.set_state(state)
            shap_logger.setLevel(old_level)

        # shap >= 0.45 returns (1, S, T + 1) for a vector-valued model.
        phi = np.asarray(values, dtype=float).reshape(n_sources, n_targets + 1).T
        per_target = phi[:n_targets]
        return Attribution(
            method=self.name,
            scores=phi[n_targets],
            per_target=per_target,
            n_evaluations=rows_used[0],
            seconds=0.0,
            full_logprob=end_out[0],
            empty_logprob=end_out[1],
            info={"nsamples": nsamples, "l1_reg": str(l1_reg), "seed": self.seed},
        )
