"""The one seam between attribution and the model: a Scorer over sentence masks.

A scorer is bound to one (question, context sentences, answer) triple. Given masks of shape
(M, S) -- True keeps a source sentence -- it rebuilds the prompt from the kept sentences and
returns log p(target_t | prompt) by teacher forcing, shape (M, T). Attribution methods only
ever see this callable, so this package never imports a model library or ``assistant``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["CachedScorer", "CountingScorer", "Scorer", "as_masks", "evaluate", "source_groups"]


@runtime_checkable
class Scorer(Protocol):
    """log p(target_t | prompt from kept sentences) for each mask row; shape (M, T)."""

    def __call__(self, masks: np.ndarray) -> np.ndarray: ...


def source_groups(scorer: object) -> np.ndarray | None:
    """The passage of each source sentence (one label per mask column), if the scorer says.

    A scorer may expose ``groups`` (e.g. the retrieved passage number of each sentence);
    wrappers (:class:`CachedScorer`, :class:`CountingScorer`) expose the wrapped one as
    ``scorer`` and are looked through. Methods that do not need passages never ask, so the
    Scorer protocol itself stays one call.
    """
    for _ in range(8):  # a wrapper chain is short; the bound guards against a cycle
        groups = getattr(scorer, "groups", None)
        if groups is not None:
            return np.asarray(groups)
        scorer = getattr(scorer, "scorer", None)
        if scorer is None:
            return None
    return None


def as_masks(masks: np.ndarray, n_sources: int | None = None) -> np.ndarray:
    """Return masks as a C-contiguous 2-D bool array, checking the sentence count."""
    arr = np.ascontiguousarray(np.asarray(masks, dtype=bool))
    if arr.ndim != 2:
        raise ValueError(f"masks must have shape (M, S); got shape {arr.shape}")
    if n_sources is not None and arr.shape[1] != n_sources:
        raise ValueError(
            f"masks have {arr.shape[1]} columns but there are {n_sources} source sentences"
        )
    return arr


def evaluate(
    scorer: Scorer,
    masks: np.ndarray,
    n_targets: int | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Score all ``masks`` with as few scorer calls as ``batch_size`` allows.

    The whole point of handing the scorer many rows at once is that the model can run one
    batched forward pass; ``batch_size`` exists only to bound memory on long contexts.
    Output is validated here so every method fails the same clear way on a broken scorer.
    """
    arr = as_masks(masks)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")
    step = len(arr) if batch_size is None else batch_size
    parts: list[np.ndarray] = []
    for start in range(0, len(arr), max(step, 1)):
        chunk = arr[start : start + step]
        out = np.asarray(scorer(chunk), dtype=float)
        if out.ndim == 1:
            # A single-target scorer may return (M,); treat it as (M, 1) rather than failing.
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != len(chunk):
            raise ValueError(
                f"scorer returned shape {out.shape} for {len(chunk)} masks; expected (M, T)"
            )
        parts.append(out)
    if not parts:
        return np.zeros((0, n_targets or 0))
    result = np.concatenate(parts, axis=0)
    if n_targets is not None and result.shape[1] != n_targets:
        raise ValueError(
            f"scorer returned {result.shape[1]} targets per mask but n_targets={n_targets}; "
            "pass the number of answer sentences the scorer was built with"
        )
    if not np.all(np.isfinite(result)):
        # -inf/NaN would silently poison the regressions; a model should give finite log-probs
        # under teacher forcing, so this points at a bug in the scorer, not in attribution.
        raise ValueError(
            "scorer returned non-finite log-probabilities; check the scorer's teacher forcing "
            "(e.g. clamp probabilities or compute log-softmax in float32)"
        )
    return result


class CountingScorer:
    """Wraps a scorer and counts calls and rows, to check budgets and batching."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.calls = 0
        self.rows = 0
        self.max_batch = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        arr = as_masks(masks)
        self.calls += 1
        self.rows += len(arr)
        self.max_batch = max(self.max_batch, len(arr))
        return self.scorer(arr)

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0
        self.max_batch = 0


class CachedScorer:
    """Memoizes rows by mask bytes so repeated masks cost one forward pass.

    Masks repeat often: the full-context mask is needed by nearly every method and by the
    faithfulness check, and random ablations of a few sentences collide. The cache is only
    valid for the one (question, context, answer) the wrapped scorer is bound to, so make a new
    CachedScorer per answer. Duplicates within one call are scored once, and all misses of a
    call go to the wrapped scorer in a single batch.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._memo: dict[bytes, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        arr = as_masks(masks)
        keys = [row.tobytes() for row in arr]
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._memo and key not in missing:
                missing[key] = i
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            rows = arr[list(missing.values())]
            out = np.asarray(self.scorer(rows), dtype=float)
            if out.ndim == 1:
                out = out[:, None]
            if out.shape[0] != len(rows):
                raise ValueError(f"scorer returned {out.shape[0]} rows for {len(rows)} masks")
            for key, value in zip(missing, out, strict=True):
                self._memo[key] = value
        if not keys:
            n_targets = next(iter(self._memo.values())).shape[0] if self._memo else 0
            return np.zeros((0, n_targets))
        return np.stack([self._memo[key] for key in keys])

    def clear(self) -> None:
        self._memo.clear()
        self.hits = 0
        self.misses = 0
