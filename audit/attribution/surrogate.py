"""ContextCite-style ablation surrogate: random sentence ablations + a sparse linear fit.

Following Cohen-Wang et al. (2024), we score random subsets of the context, then fit a LASSO
from the keep/drop mask to the answer's log-probability; the weights are the attributions.
Differences from MadryLab/context-cite, and why:

* ContextCite regresses on the per-token mean logit-probability of the whole response. Our
  Scorer returns summed log-probs per answer sentence, so we fit one surrogate per target and
  one on their sum (the whole answer); log-probs are already unbounded, so no logit is needed.
* X is standardized (as ContextCite does) *and* y is divided by its standard deviation before
  the fit, then weights are scaled back. That makes ``alpha`` a fraction of the target's
  spread, so one default works whether an answer sentence costs 2 nats or 200.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .scorer import Scorer, evaluate
from .types import Attribution

__all__ = ["AblationSurrogate", "fit_sparse_linear"]

DEFAULT_ALPHA = 0.01


def fit_sparse_linear(
    masks: np.ndarray, y: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> tuple[np.ndarray, float, float]:
    """LASSO of y on the 0/1 masks; returns (weights per sentence, intercept, R^2).

    Weights are in y's units per kept sentence. A constant y (the answer ignores the context,
    or every sampled mask was identical) has nothing to explain and gets zero weights rather
    than a division by zero.
    """
    from sklearn.linear_model import Lasso  # lazy: keep ``import audit`` cheap

    X = np.asarray(masks, dtype=float)
    y = np.asarray(y, dtype=float)
    x_mean = X.mean(axis=0)
    x_scale = X.std(axis=0)
    varying = x_scale > 0
    y_mean = float(y.mean())
    y_scale = float(y.std())
    weights = np.zeros(X.shape[1])
    if y_scale <= 1e-12 * max(1.0, abs(y_mean)) or not varying.any():
        return weights, y_mean, 0.0
    # Sentences that were kept (or dropped) in every sample are unidentifiable: weight 0.
    Xs = (X[:, varying] - x_mean[varying]) / x_scale[varying]
    ys = (y - y_mean) / y_scale
    model = Lasso(alpha=alpha, fit_intercept=True, max_iter=10_000, random_state=0)
    model.fit(Xs, ys)
    weights[varying] = model.coef_ / x_scale[varying] * y_scale
    intercept = y_mean + y_scale * float(model.intercept_) - float(weights @ x_mean)
    residual = y - (X @ weights + intercept)
    r2 = 1.0 - float(residual @ residual) / float(((y - y_mean) ** 2).sum())
    return weights, intercept, r2


@dataclass
class AblationSurrogate(Method):
    """Random ablations (each sentence kept with ``keep_prob``) plus the full context.

    Scorer rows used: ``n_ablations + 1`` (the full mask), capped by ``max_evaluations``.
    Masks come from a seeded ``numpy.random.Generator``, so the same seed gives the same
    masks and, with a deterministic scorer, the same scores. With one source sentence the
    regression is replaced by the exact difference log p(full) - log p(empty) (2 rows).
    """

    n_ablations: int = 32
    keep_prob: float = 0.5
    alpha: float | None = None
    seed: int = 0

    name: ClassVar[str] = "surrogate"

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_prob < 1.0:
            raise ValueError(f"keep_prob must be in (0, 1); got {self.keep_prob}")

    def _attribute(
        self, scorer: Scorer, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        budget = self._budget(
            self.n_ablations + 1, "n_ablations", 2, "the ablation surrogate (full + one ablation)"
        )
        alpha = DEFAULT_ALPHA if self.alpha is None else float(self.alpha)
        full = np.ones((1, n_sources), dtype=bool)

        if n_sources == 1:
            out = evaluate(scorer, np.vstack([full, ~full]), n_targets, self.batch_size)
            per_target = (out[0] - out[1])[:, None]
            return Attribution(
                method=self.name,
                scores=per_target.sum(axis=0),
                per_target=per_target,
                n_evaluations=2,
                seconds=0.0,
                full_logprob=out[0],
                empty_logprob=out[1],
                info={"alpha": alpha, "exact": True},
            )

        rng = np.random.default_rng(self.seed)
        ablations = rng.random((budget - 1, n_sources)) < self.keep_prob
        masks = np.vstack([full, ablations])
        out = evaluate(scorer, masks, n_targets, self.batch_size)

        per_target = np.zeros((n_targets, n_sources))
        for t in range(n_targets):
            per_target[t], _, _ = fit_sparse_linear(masks, out[:, t], alpha)
        # The whole answer gets its own fit rather than the sum of per-target weights: LASSO
        # is not additive, and the sum is what the clinician-facing citation shows.
        scores, intercept, r2 = fit_sparse_linear(masks, out.sum(axis=1), alpha)
        return Attribution(
            method=self.name,
            scores=scores,
            per_target=per_target,
            n_evaluations=len(masks),
            seconds=0.0,
            full_logprob=out[0],
            info={
                "alpha": alpha,
                "keep_prob": self.keep_prob,
                "n_ablations": len(masks) - 1,
                "seed": self.seed,
                "intercept": intercept,
                # Low R^2 means the answer depends on sentences non-additively; the auditor
                # should then trust the ranking less.
                "r2": r2,
            },
        )
