"""Similarity baseline: attribution from a precomputed (T, S) similarity matrix.

This is what citation-by-embedding does; it costs no scorer calls, which is why it is the
baseline the model-based methods must beat on faithfulness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from .base import Method
from .scorer import Scorer
from .types import Attribution

__all__ = ["SimilarityAttributor"]


@dataclass
class SimilarityAttributor(Method):
    """Passes ``similarity[t, s]`` through; the whole answer takes the max or mean over t.

    ``max`` is the default because an answer sentence usually rests on one source sentence,
    and averaging would dilute that sentence by the unrelated answer sentences.
    """

    similarity: np.ndarray
    reduce: Literal["max", "mean"] = "max"

    name: ClassVar[str] = "similarity"

    def _attribute(
        self, scorer: Scorer | None, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        sim = np.asarray(self.similarity, dtype=float)
        if sim.shape != (n_targets, n_sources):
            raise ValueError(
                f"similarity must have shape (n_targets, n_sources) = ({n_targets}, "
                f"{n_sources}); got {sim.shape}"
            )
        if self.reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean'; got {self.reduce!r}")
        if n_sources == 0:
            scores = np.zeros(0)
        else:
            scores = sim.max(axis=0) if self.reduce == "max" else sim.mean(axis=0)
        return Attribution(
            method=self.name,
            scores=scores,
            per_target=sim.copy(),
            n_evaluations=0,
            seconds=0.0,
            info={"reduce": self.reduce},
        )
