"""Fitting the per-head weights of attention attribution from ablation data (numpy only).

For each training answer we have its attention features F (T, S, P: P = layers x heads), K
random keep/drop masks M (K, S) and the answer's log-probability under each, Y (K, T). The
attribution's linear surrogate predicts, for mask k and answer sentence t,

    y[k, t] ~ c_t + sum_s M[k, s] * (F[t, s] @ w)  =  c_t + (M[k] @ F[t]) @ w,

which is linear in w. Centering within each (answer, sentence) group removes c_t, and w
solves one ridge regression over all groups. Each group is weighted by 1 / var(y) so that a
long sentence (whose log-probability swings by tens of nats) does not outweigh a short one:
AT2 gets the same effect by maximising the Pearson correlation per group; least squares
keeps the fit closed-form and deterministic, and w keeps nats as its unit.

The ridge strength is chosen by k-fold cross-validation over answers (never splitting one
answer's masks), on the mean per-group correlation between prediction and truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitExample", "FitResult", "fit_head_weights", "group_correlation"]

DEFAULT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
TARGETS = ("sentence", "answer")


@dataclass
class FitExample:
    """One attributed answer: features (T, S, P), masks (K, S), log-probabilities (K, T)."""

    features: np.ndarray
    masks: np.ndarray
    logprobs: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=float)
        self.masks = np.asarray(self.masks, dtype=float)
        self.logprobs = np.asarray(self.logprobs, dtype=float)
        if self.features.ndim != 3:
            raise ValueError(f"features must have shape (T, S, P); got {self.features.shape}")
        t, s, _ = self.features.shape
        if self.masks.ndim != 2 or self.masks.shape[1] != s:
            raise ValueError(f"masks must have shape (K, {s}); got {self.masks.shape}")
        if self.logprobs.shape != (self.masks.shape[0], t):
            raise ValueError(
                f"logprobs must have shape ({self.masks.shape[0]}, {t}); got {self.logprobs.shape}"
            )

    def groups(self, target: str = "sentence") -> list[tuple[np.ndarray, np.ndarray]]:
        """Centered design (K, P) and centered log-probabilities (K,): per answer sentence
        (``target="sentence"``), or one for the whole answer (``"answer"``: log p of all its
        sentences together, which is what top-k removal measures and what the method's
        whole-answer score, the sum over sentences, predicts)."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
        designs = [self.masks @ self.features[t] for t in range(self.features.shape[0])]
        ys = [self.logprobs[:, t] for t in range(self.features.shape[0])]
        if target == "answer":
            designs, ys = [np.sum(designs, axis=0)], [self.logprobs.sum(axis=1)]
        return [(x - x.mean(axis=0), y - y.mean()) for x, y in zip(designs, ys, strict=True)]


@dataclass
class FitResult:
    w: np.ndarray
    ridge: float
    stats: dict[str, Any] = field(default_factory=dict)


def _normal_equations(
    examples: Sequence[FitExample], n_features: int, target: str = "sentence"
) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.zeros((n_features, n_features))
    b = np.zeros(n_features)
    used = 0
    for ex in examples:
        for x, y in ex.groups(target):
            var = float(y @ y) / len(y)
            # a sentence whose log-probability no ablation moved carries no signal
            if var <= 1e-12:
                continue
            a += x.T @ x / var
            b += x.T @ y / var
            used += 1
    return a, b, used


def _solve(
    a: np.ndarray,
    b: np.ndarray,
    ridge: float,
    nonneg: bool = False,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    # ridge relative to the mean diagonal, so one grid fits any feature scale
    scale = float(np.trace(a)) / max(len(b), 1) or 1.0
    a = a + ridge * scale * np.eye(len(b))
    if prior is not None:
        # shrink towards the prior weights instead of towards zero
        b = b + ridge * scale * prior
    if not nonneg:
        return np.linalg.solve(a, b)
    # min w'Aw/2 - b'w subject to w >= 0, by cyclic coordinate descent: A is positive
    # definite (the ridge), so each step is exact and the sweeps converge
    w = np.zeros(len(b))
    grad = -b.copy()  # A w - b
    diag = np.diag(a)
    for _ in range(500):
        moved = 0.0
        for j in range(len(b)):
            new = max(0.0, w[j] - grad[j] / diag[j])
            step = new - w[j]
            if step:
                grad += step * a[:, j]
                w[j] = new
                moved = max(moved, abs(step))
        if moved <= 1e-10 * max(1.0, float(np.abs(w).max())):
            break
    return w


def group_correlation(
    examples: Sequence[FitExample], w: np.ndarray, target: str = "sentence"
) -> float:
    """Mean Pearson correlation, over (answer, sentence) groups (or answers, with
    ``target="answer"``), of prediction and truth."""
    values = []
    for ex in examples:
        for x, y in ex.groups(target):
            pred = x @ w
            denom = float(np.linalg.norm(pred) * np.linalg.norm(y))
            if denom > 1e-12:
                values.append(float(pred @ y) / denom)
    return float(np.mean(values)) if values else float("nan")


def fit_head_weights(
    examples: Sequence[FitExample],
    ridges: Sequence[float] = DEFAULT_RIDGES,
    folds: int = 4,
    target: str = "sentence",
    nonneg: bool = False,
    prior: np.ndarray | None = None,
) -> FitResult:
    """Weights w (P,) from ablation data; the ridge strength by cross-validation over answers.

    ``target``: fit each answer sentence's log-probability (``"sentence"``) or the whole
    answer's (``"answer"``); cross-validation scores the same one. ``nonneg`` keeps every
    head's weight at zero or above (attention to a sentence can then only add to its score).
    ``prior``: weights fitted before (on other answers) that the ridge shrinks towards.
    """
    if not examples:
        raise ValueError("no training examples")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    n_features = examples[0].features.shape[2]
    if any(ex.features.shape[2] != n_features for ex in examples):
        raise ValueError("every example must have the same number of features (layers x heads)")
    if not ridges or any(r <= 0 for r in ridges):
        raise ValueError("ridges must be positive")
    if prior is not None:
        prior = np.asarray(prior, dtype=float).reshape(-1)
        if prior.shape != (n_features,):
            raise ValueError(f"prior must have {n_features} weights; got {prior.shape[0]}")
    folds = max(1, min(folds, len(examples)))
    cv: dict[float, float] = {}
    if folds > 1 and len(ridges) > 1:
        parts = [list(range(i, len(examples), folds)) for i in range(folds)]
        stacked = [
            _normal_equations([examples[i] for i in p], n_features, target)[:2] for p in parts
        ]
        for ridge in ridges:
            scores = []
            for f, held in enumerate(parts):
                a = sum(
                    (stacked[g][0] for g in range(folds) if g != f), np.zeros_like(stacked[0][0])
                )
                b = sum((stacked[g][1] for g in range(folds) if g != f), np.zeros(n_features))
                w = _solve(a, b, ridge, nonneg, prior)
                scores.append(group_correlation([examples[i] for i in held], w, target))
            cv[ridge] = float(np.nanmean(scores))
        best = max(ridges, key=lambda r: (np.nan_to_num(cv[r], nan=-np.inf), -r))
    else:
        best = float(ridges[0])
    a, b, used = _normal_equations(examples, n_features, target)
    if used == 0:
        raise ValueError("no ablation moved any answer's log-probability: nothing to fit")
    w = _solve(a, b, best, nonneg, prior)
    return FitResult(
        w=w,
        ridge=float(best),
        stats={
            "examples": len(examples),
            "groups": used,
            "target": target,
            "nonneg": nonneg,
            "prior": prior is not None,
            "cv_correlation": {str(r): round(v, 4) for r, v in cv.items()},
            "train_correlation": round(group_correlation(examples, w, target), 4),
            # every head weighted alike (plain attention): what the fit must beat
            "uniform_correlation": round(
                group_correlation(examples, np.ones(n_features), target), 4
            ),
        },
    )
