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

    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per answer sentence: centered design (K, P) and centered log-probabilities (K,)."""
        out = []
        for t in range(self.features.shape[0]):
            x = self.masks @ self.features[t]
            y = self.logprobs[:, t]
            out.append((x - x.mean(axis=0), y - y.mean()))
        return out


@dataclass
class FitResult:
    w: np.ndarray
    ridge: float
    stats: dict[str, Any] = field(default_factory=dict)


def _normal_equations(
    examples: Sequence[FitExample], n_features: int
) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.zeros((n_features, n_features))
    b = np.zeros(n_features)
    used = 0
    for ex in examples:
        for x, y in ex.groups():
            var = float(y @ y) / len(y)
            # a sentence whose log-probability no ablation moved carries no signal
            if var <= 1e-12:
                continue
            a += x.T @ x / var
            b += x.T @ y / var
            used += 1
    return a, b, used


def _solve(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    # ridge relative to the mean diagonal, so one grid fits any feature scale
    scale = float(np.trace(a)) / max(len(b), 1) or 1.0
    return np.linalg.solve(a + ridge * scale * np.eye(len(b)), b)


def group_correlation(examples: Sequence[FitExample], w: np.ndarray) -> float:
    """Mean Pearson correlation, over (answer, sentence) groups, of prediction and truth."""
    values = []
    for ex in examples:
        for x, y in ex.groups():
            pred = x @ w
            denom = float(np.linalg.norm(pred) * np.linalg.norm(y))
            if denom > 1e-12:
                values.append(float(pred @ y) / denom)
    return float(np.mean(values)) if values else float("nan")


def fit_head_weights(
    examples: Sequence[FitExample],
    ridges: Sequence[float] = DEFAULT_RIDGES,
    folds: int = 4,
) -> FitResult:
    """Weights w (P,) from ablation data; the ridge strength by cross-validation over answers."""
    if not examples:
        raise ValueError("no training examples")
    n_features = examples[0].features.shape[2]
    if any(ex.features.shape[2] != n_features for ex in examples):
        raise ValueError("every example must have the same number of features (layers x heads)")
    if not ridges or any(r <= 0 for r in ridges):
        raise ValueError("ridges must be positive")
    folds = max(1, min(folds, len(examples)))
    cv: dict[float, float] = {}
    if folds > 1 and len(ridges) > 1:
        parts = [list(range(i, len(examples), folds)) for i in range(folds)]
        stacked = [_normal_equations([examples[i] for i in p], n_features)[:2] for p in parts]
        for ridge in ridges:
            scores = []
            for f, held in enumerate(parts):
                a = sum(
                    (stacked[g][0] for g in range(folds) if g != f), np.zeros_like(stacked[0][0])
                )
                b = sum((stacked[g][1] for g in range(folds) if g != f), np.zeros(n_features))
                w = _solve(a, b, ridge)
                scores.append(group_correlation([examples[i] for i in held], w))
            cv[ridge] = float(np.nanmean(scores))
        best = max(ridges, key=lambda r: (np.nan_to_num(cv[r], nan=-np.inf), -r))
    else:
        best = float(ridges[0])
    a, b, used = _normal_equations(examples, n_features)
    if used == 0:
        raise ValueError("no ablation moved any answer's log-probability: nothing to fit")
    w = _solve(a, b, best)
    return FitResult(
        w=w,
        ridge=float(best),
        stats={
            "examples": len(examples),
            "groups": used,
            "cv_correlation": {str(r): round(v, 4) for r, v in cv.items()},
            "train_correlation": round(group_correlation(examples, w), 4),
            # every head weighted alike (plain attention): what the fit must beat
            "uniform_correlation": round(group_correlation(examples, np.ones(n_features)), 4),
        },
    )
