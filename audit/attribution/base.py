"""The Attributor protocol and the few helpers every method shares."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from .scorer import Scorer
from .types import Attribution

__all__ = ["Attributor", "Method", "check_sizes", "empty_attribution", "resolve_budget"]


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


@dataclass(kw_only=True)
class Method:
    """What every method shares: the evaluation cap and scorer batch size (accepted by all, so
    every method can be built from the same settings), the size checks, the timing, and
    (where ``empty_needs_no_scorer``) the answer for a context with no sentences.

    Subclasses implement ``_attribute``; ``seconds`` is filled in here.
    """

    max_evaluations: int | None = None
    batch_size: int | None = None

    name: ClassVar[str] = ""
    empty_needs_no_scorer: ClassVar[bool] = True

    def attribute(
        self,
        scorer: Scorer,
        n_sources: int,
        n_targets: int,
        *,
        prior: np.ndarray | None = None,
    ) -> Attribution:
        check_sizes(n_sources, n_targets, prior)
        start = time.perf_counter()
        if n_sources == 0 and self.empty_needs_no_scorer:
            return empty_attribution(self.name, n_targets)
        result = self._attribute(scorer, n_sources, n_targets, prior)
        result.seconds = time.perf_counter() - start
        return result

    def _attribute(
        self, scorer: Scorer, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        raise NotImplementedError

    def _budget(self, wanted: int, knob: str, minimum: int, needs: str) -> int:
        """Scorer rows to use: ``wanted`` capped by max_evaluations, and at least ``minimum``."""
        budget = resolve_budget(wanted, self.max_evaluations, knob)
        if budget < minimum:
            raise ValueError(
                f"{needs} needs at least {minimum} scorer rows; got a budget of {budget}. "
                "Raise max_evaluations."
            )
        return budget
