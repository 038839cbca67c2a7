"""Result type shared by every attribution method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Attribution", "json_float", "json_floats"]

_DIGITS = 6


def json_float(value: float) -> float | None:
    # JSON has no NaN/inf; None keeps the audit record parseable by strict readers.
    value = float(value)
    return round(value, _DIGITS) if math.isfinite(value) else None


def json_floats(values: np.ndarray | None) -> Any:
    """Nested lists of floats rounded to 6 digits (None for non-finite), or None."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        return json_float(float(arr))
    return [json_floats(v) if np.ndim(v) else json_float(v) for v in arr]


@dataclass
class Attribution:
    """Sentence scores for one answer.

    ``scores[s]`` is the credit source sentence ``s`` gets for the whole answer (all targets
    together); ``per_target[t, s]`` the credit for answer sentence ``t``. Larger means the
    sentence raised the answer's log-probability more. ``n_evaluations`` counts mask rows the
    method handed to the scorer (cache hits included, since the method cannot see them).
    """

    method: str
    scores: np.ndarray
    per_target: np.ndarray
    n_evaluations: int
    seconds: float
    full_logprob: np.ndarray | None = None
    empty_logprob: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=float).reshape(-1)
        self.per_target = np.asarray(self.per_target, dtype=float)
        if self.per_target.ndim != 2 or self.per_target.shape[1] != self.scores.shape[0]:
            raise ValueError(
                f"per_target must have shape (T, {self.scores.shape[0]}); "
                f"got {self.per_target.shape}"
            )
        if self.full_logprob is not None:
            self.full_logprob = np.asarray(self.full_logprob, dtype=float).reshape(-1)
        if self.empty_logprob is not None:
            self.empty_logprob = np.asarray(self.empty_logprob, dtype=float).reshape(-1)

    @property
    def n_sources(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_targets(self) -> int:
        return int(self.per_target.shape[0])

    def top(self, k: int, target: int | None = None) -> list[int]:
        """Indices of the k highest-scoring sentences, ties broken by position.

        Stable ordering matters: the audit record must show the same top-k on replay.
        """
        values = self.scores if target is None else self.per_target[target]
        order = np.argsort(-values, kind="stable")
        return [int(i) for i in order[: max(k, 0)]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_sources": self.n_sources,
            "n_targets": self.n_targets,
            "scores": json_floats(self.scores),
            "per_target": json_floats(self.per_target),
            "n_evaluations": int(self.n_evaluations),
            "seconds": json_float(self.seconds),
            "full_logprob": json_floats(self.full_logprob),
            "empty_logprob": json_floats(self.empty_logprob),
            "info": {k: _json_value(v) for k, v in self.info.items()},
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return json_float(float(value))
    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind in "biu":
            return arr.tolist()
        return json_floats(arr.astype(float))
    return str(value)
