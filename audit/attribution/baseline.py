"""Random baseline: the floor any attribution method must clear on faithfulness."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import check_sizes
from .scorer import Scorer
from .types import Attribution

__all__ = ["RandomAttributor"]


@dataclass
class RandomAttributor:
    """Uniform random per-target scores from a seeded Generator; the whole answer is their sum.

    Makes no scorer calls. Same seed and sizes, same scores.
    """

    seed: int = 0
    # Accepted so every method can be built from the same settings; no scorer rows are used.
    max_evaluations: int | None = None
    batch_size: int | None = None

    name: ClassVar[str] = "random"

    def attribute(
        self,
        scorer: Scorer | None,
        n_sources: int,
        n_targets: int,
        *,
        prior: np.ndarray | None = None,
    ) -> Attribution:
        check_sizes(n_sources, n_targets, prior)
        start = time.perf_counter()
        per_target = np.random.default_rng(self.seed).random((n_targets, n_sources))
        return Attribution(
            method=self.name,
            scores=per_target.sum(axis=0),
            per_target=per_target,
            n_evaluations=0,
            seconds=time.perf_counter() - start,
            info={"seed": self.seed},
        )
