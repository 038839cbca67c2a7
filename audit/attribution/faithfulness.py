"""Does removing the top-attributed sentences actually hurt the answer?

The check every attribution should pass before a citation is shown as "the answer rests on
these sentences": dropping the top-k sentences must lower log p(answer) more than dropping k
random ones. It also measures how much the answer relies on the context at all; an answer the
model would give just as readily with no context came from its weights (memory), and
attribution to context sentences is then meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .scorer import Scorer, evaluate
from .types import Attribution, json_float

__all__ = [
    "DEFAULT_DRAWS",
    "DEFAULT_MIN_RELIANCE_FRACTION",
    "DEFAULT_MIN_RELIANCE_NATS",
    "DEFAULT_SEED",
    "Faithfulness",
    "faithfulness",
    "random_check_masks",
    "random_drop",
    "removal_drop",
]

# An answer is flagged as coming from memory when the context raises its log-probability by
# less than max(1 nat, 5% of |log p(answer | full)|). 1 nat is a factor e in probability --
# below that the context barely matters for a short answer; the relative part keeps long
# answers (hundreds of nats, where a few nats are noise) from passing on size alone.
DEFAULT_MIN_RELIANCE_NATS = 1.0
DEFAULT_MIN_RELIANCE_FRACTION = 0.05


def _top_k_mask(scores: np.ndarray, k: int, n_sources: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if scores.shape != (n_sources,):
        raise ValueError(f"scores must have shape ({n_sources},); got {scores.shape}")
    mask = np.ones(n_sources, dtype=bool)
    # Stable sort so ties resolve by position, matching Attribution.top.
    mask[np.argsort(-scores, kind="stable")[:k]] = False
    return mask


# The check's random draws: how many, and the seed. A method that reads the same rows
# (``random_check_masks``) before the check runs gets them from the scorer's cache.
DEFAULT_DRAWS = 5
DEFAULT_SEED = 0


def random_check_masks(
    k: int, n_sources: int, n_draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """The keep-masks of the check's random removals (each drops ``min(k, n_sources)``
    sentences): the same rows :func:`faithfulness` scores with the same arguments."""
    _check_k(k, n_draws)
    return _random_masks(min(k, n_sources), n_sources, n_draws, seed)


def _random_masks(k: int, n_sources: int, n_draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.ones((n_draws, n_sources), dtype=bool)
    for d in range(n_draws):
        masks[d, rng.choice(n_sources, size=k, replace=False)] = False
    return masks


def _check_k(k: int, n_draws: int = 1) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1; got {n_draws}")


def removal_drop(
    scorer: Scorer,
    scores: np.ndarray,
    k: int,
    n_sources: int,
    *,
    batch_size: int | None = None,
) -> float:
    """log p(full) - log p(full minus the top-k sentences by ``scores``), summed over targets."""
    _check_k(k)
    masks = np.vstack([np.ones(n_sources, bool), _top_k_mask(scores, min(k, n_sources), n_sources)])
    out = evaluate(scorer, masks, batch_size=batch_size).sum(axis=1)
    return float(out[0] - out[1])


def random_drop(
    scorer: Scorer,
    k: int,
    n_sources: int,
    n_draws: int = 5,
    seed: int = 0,
    *,
    batch_size: int | None = None,
) -> float:
    """Mean drop from removing k random sentences, over ``n_draws`` seeded draws."""
    _check_k(k, n_draws)
    masks = np.vstack(
        [np.ones(n_sources, bool), _random_masks(min(k, n_sources), n_sources, n_draws, seed)]
    )
    out = evaluate(scorer, masks, batch_size=batch_size).sum(axis=1)
    return float(out[0] - out[1:].mean())


@dataclass
class Faithfulness:
    """Log-probabilities are summed over answer sentences; drops are in nats."""

    k: int
    top_k_drop: float
    random_drop: float
    difference: float
    ratio: float | None
    context_reliance: float
    full_logprob: float
    empty_logprob: float
    flag_memory: bool
    min_reliance_nats: float
    min_reliance_fraction: float
    n_evaluations: int

    @property
    def faithful(self) -> bool:
        """Top-k removal hurts more than random removal."""
        return self.difference > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "top_k_drop": json_float(self.top_k_drop),
            "random_drop": json_float(self.random_drop),
            "difference": json_float(self.difference),
            "ratio": None if self.ratio is None else json_float(self.ratio),
            "context_reliance": json_float(self.context_reliance),
            "full_logprob": json_float(self.full_logprob),
            "empty_logprob": json_float(self.empty_logprob),
            "flag_memory": bool(self.flag_memory),
            "min_reliance_nats": self.min_reliance_nats,
            "min_reliance_fraction": self.min_reliance_fraction,
            "n_evaluations": self.n_evaluations,
        }


def faithfulness(
    scorer: Scorer,
    attribution: Attribution,
    k: int = 3,
    *,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    min_reliance_nats: float = DEFAULT_MIN_RELIANCE_NATS,
    min_reliance_fraction: float = DEFAULT_MIN_RELIANCE_FRACTION,
    batch_size: int | None = None,
) -> Faithfulness:
    """Top-k vs random removal, and context reliance, in one batch of ``3 + n_draws`` rows.

    ``flag_memory`` is True when context_reliance = log p(full) - log p(empty) is below
    ``max(min_reliance_nats, min_reliance_fraction * |log p(full)|)``; a negative reliance
    (the context makes the answer *less* likely) is flagged too. ``ratio`` is
    top_k_drop / random_drop, or None when the random drop is too small to divide by.
    """
    _check_k(k, n_draws)
    n_sources = attribution.n_sources
    k_eff = min(k, n_sources)
    full = np.ones((1, n_sources), bool)
    masks = [full, ~full]
    if k_eff > 0:
        masks.append(_top_k_mask(attribution.scores, k_eff, n_sources)[None, :])
        masks.append(random_check_masks(k_eff, n_sources, n_draws, seed))
    stacked = np.vstack(masks)
    out = evaluate(scorer, stacked, attribution.n_targets, batch_size).sum(axis=1)
    full_lp, empty_lp = float(out[0]), float(out[1])
    if k_eff > 0:
        top = full_lp - float(out[2])
        rand = full_lp - float(out[3:].mean())
    else:
        top = rand = 0.0
    reliance = full_lp - empty_lp
    threshold = max(min_reliance_nats, min_reliance_fraction * abs(full_lp))
    return Faithfulness(
        k=k_eff,
        top_k_drop=top,
        random_drop=rand,
        difference=top - rand,
        ratio=top / rand if abs(rand) > 1e-9 else None,
        context_reliance=reliance,
        full_logprob=full_lp,
        empty_logprob=empty_lp,
        flag_memory=bool(reliance < threshold),
        min_reliance_nats=min_reliance_nats,
        min_reliance_fraction=min_reliance_fraction,
        n_evaluations=len(stacked),
    )
