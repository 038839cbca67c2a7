"""Random baseline: the floor any attribution method must clear on faithfulness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .scorer import Scorer
from .types import Attribution

__all__ = ["RandomAttributor"]


@dataclass
class RandomAttributor(Method):
    """Uniform random per-target scores from a seeded Generator; the whole answer is their sum.

    Makes no scorer calls. Same seed and sizes, same scores.
    """

    seed: int = 0

    name: ClassVar[str] = "random"

    def _attribute(
        self, scorer: Scorer | None, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        per_target = np.random.default_rng(self.seed).random((n_targets, n_sources))
        return Attribution(
            method=self.name,
            scores=per_target.sum(axis=0),
            per_target=per_target,
            n_evaluations=0,
            seconds=0.0,
            info={"seed": self.seed},
        )
