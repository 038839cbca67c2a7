"""The Attributor protocol and the few helpers every method shares."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .scorer import Scorer
from .types import Attribution

__all__ = ["Attributor", "check_sizes", "empty_attribution", "resolve_budget"]


@runtime_checkable
class Attributor(Protocol):
    """Scores S source sentences for T answer sentences using a Scorer.

    ``prior`` is an optional (S,) ranking hint (e.g. retrieval or similarity scores); only
    methods that must choose a subset under a tight budget use it.
    """

    def attribute(
        self,
        scorer: Scorer,
        n_sources: int,
        n_targets: int,
        *,
        prior: np.ndarray | None = None,
    ) -> Attribution: ...


def check_sizes(n_sources: int, n_targets: int, prior: np.ndarray | None = None) -> None:
    if n_sources < 0:
        raise ValueError(f"n_sources must be >= 0; got {n_sources}")
    if n_targets < 1:
        raise ValueError(f"n_targets must be >= 1 (the answer has no sentences); got {n_targets}")
    if prior is not None and np.asarray(prior).shape != (n_sources,):
        raise ValueError(f"prior must have shape ({n_sources},); got {np.asarray(prior).shape}")


def resolve_budget(knob: int, max_evaluations: int | None, name: str) -> int:
    """The number of scorer rows a method may use: its own knob, capped by max_evaluations."""
    if knob < 1:
        raise ValueError(f"{name} must be >= 1; got {knob}")
    if max_evaluations is not None and max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1 or None; got {max_evaluations}")
    return knob if max_evaluations is None else min(knob, max_evaluations)


def empty_attribution(method: str, n_targets: int, seconds: float = 0.0) -> Attribution:
    """An answer with no context sentences: nothing to attribute, and no scorer call spent."""
    return Attribution(
        method=method,
        scores=np.zeros(0),
        per_target=np.zeros((n_targets, 0)),
        n_evaluations=0,
        seconds=seconds,
    )
