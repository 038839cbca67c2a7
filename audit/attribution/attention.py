"""Attention attribution in the manner of AT2 (Cohen-Wang et al. 2025, "Learning to Attribute
with Attention"): one forward pass, one learned weight per attention head.

The model reports, for each answer sentence t and source sentence s, how much attention the
positions writing t paid to the tokens of s, per (layer, head): ``features[t, s]`` (layers x
heads values). The score is ``features[t, s] @ w``, where ``w`` was fitted once per model so
that scores predict what ablating sentences does to log p(answer) (``attention_fit``). No
scorer rows are spent for the scores, so attribution costs one teacher-forced pass instead of 33;
the faithfulness check on every answer still measures, by ablation, whether the scores are causal.

Refinement (``refine_sets``; the app's ``attribution_refine_sets``, 5 by default): the
per-head model is a linear prediction (held-out correlation about 0.6 with measured ablation
effects), and a near-tie in its top few is where it errs most. So it proposes the
``refine_sets`` k-sentence sets it predicts matter most (k-subsets of its top k + 2, by
predicted sum) and measures each; the set that lowers log p(answer) most becomes the top k,
so what the screen highlights is the set that was measured to matter. Measured by the
scorer (removal: one row per set; the first set's row is the top-k removal the
faithfulness check measures anyway, and the check then reuses it) or, when given, by an
``estimate`` of removal (the app's default: the answer rerun with the set masked, about a
quarter of a removal row; ``assistant.attribute.MaskedEstimate``).

Calibration by the check's own rows (``calibrate_draws``; the app's ``attribution_calibrate``,
off by default: it lowered the benchmark's top-3 drop, since a row's surprise is spread
evenly over the sentences it removed): the faithfulness check scores the full context and
``calibrate_draws`` random k-sentence removals whatever the ranking is. Those rows are
measured ablations of this very answer, so the method reads them first (the check then finds
them in the scorer's cache) and corrects the prediction with them: with the per-head scores
as a Gaussian prior on each sentence's effect and each row's drop as a noisy sum of the
effects it removed, the posterior mean is ``s + R' (R R' + ridge I)^-1 (d - R s)`` (R: which
sentences each row removed, d: the measured drops, per answer sentence). The rows cost
nothing beyond the check the app runs on every answer.

Weights are JSON files, one per model weights hash: shipped ones in ``weights/`` beside this
module (fitted by ``clinrag attribution fit``; each says on what data and by which command),
a site's own in ``HOME/attribution/``. Without weights for the answering model, callers fall
back to an ablation method.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import Method
from .faithfulness import DEFAULT_SEED, random_check_masks
from .scorer import Scorer, evaluate
from .types import Attribution

__all__ = [
    "PACKAGED_WEIGHTS_DIR",
    "AttentionAttributor",
    "HeadWeights",
    "calibrate",
    "candidate_sets",
    "find_weights",
    "lift",
]

PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = 1


@dataclass
class HeadWeights:
    """Per-head weights for one model, and where they came from."""

    model_id: str
    weights_hash: str  # the model's weights (ModelInfo.weights_hash), not this file's
    layers: int
    heads: int
    w: np.ndarray
    data_hash: str = ""
    n_examples: int = 0
    command: str = ""
    date: str = ""
    fit: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.w = np.asarray(self.w, dtype=float).reshape(-1)
        if self.w.shape != (self.layers * self.heads,):
            raise ValueError(
                f"w must have layers * heads = {self.layers * self.heads} values; "
                f"got {self.w.shape[0]}"
            )

    def to_json(self) -> str:
        data = asdict(self)
        data["w"] = [round(float(x), 8) for x in self.w]
        return json.dumps({"format": FORMAT, **data}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HeadWeights:
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise ValueError("not a clinrag attention weights file (format 1)")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> HeadWeights:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a file
        return path

    def file_name(self) -> str:
        return f"{self.weights_hash[:16]}.json"


def find_weights(weights_hash: str, dirs: Iterable[Path] = ()) -> HeadWeights | None:
    """Weights fitted for this model: ``dirs`` first (a site's own fit), then the shipped ones.

    Files that do not parse are skipped: a broken file must not break answering, only fall
    back to the ablation method.
    """
    for folder in [*dirs, PACKAGED_WEIGHTS_DIR]:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                weights = HeadWeights.load(path)
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if weights.weights_hash == weights_hash:
                return weights
    return None


Features = np.ndarray | Callable[[], np.ndarray]


@dataclass
class AttentionAttributor(Method):
    """score[t, s] = features[t, s] @ w; the whole answer's score is the sum over t.

    ``features`` is the (T, S, layers * heads) array or a callable that computes it (so the
    forward pass counts in ``seconds``). Per-target scores are in nats of log p(answer
    sentence) when ``w`` was fitted on summed attention (as ``attention_fit`` does), so their
    sum over targets is comparable to the ablation methods' whole-answer scores.

    With ``refine_sets`` > 1 and a scorer, the whole-answer ``scores`` are refined as the
    module says: the measured set is lifted, unchanged in its own order, just above the best
    sentence outside it. ``per_target`` stays the per-head prediction, and ``info`` keeps the
    unrefined scores (``attention_scores``) and the measured drops.
    """

    features: Features
    weights: np.ndarray | HeadWeights
    refine_sets: int = 0
    refine_k: int = 3
    # the faithfulness check's random removals read first (0 = off); they must be the
    # check's (k, draws, seed) to cost nothing, so the defaults are the check's
    calibrate_draws: int = 0
    calibrate_k: int = 3
    calibrate_seed: int = DEFAULT_SEED
    calibrate_ridge: float = 3.0
    # measures the candidate sets instead of the scorer (masks -> (M, T) log p): a cheaper
    # estimate of removal, e.g. the answer rerun with the set hidden (``masked_logprobs``)
    estimate: Scorer | None = None

    name: ClassVar[str] = "attention"

    def _attribute(
        self, scorer: Scorer | None, n_sources: int, n_targets: int, prior: np.ndarray | None
    ) -> Attribution:
        w = self.weights.w if isinstance(self.weights, HeadWeights) else self.weights
        w = np.asarray(w, dtype=float).reshape(-1)
        feats = np.asarray(
            self.features() if callable(self.features) else self.features, dtype=float
        )
        if feats.shape != (n_targets, n_sources, w.shape[0]):
            raise ValueError(
                f"features must have shape (n_targets, n_sources, n_weights) = ({n_targets}, "
                f"{n_sources}, {w.shape[0]}); got {feats.shape}"
            )
        per_target = feats @ w
        scores = per_target.sum(axis=0)
        info: dict[str, Any] = {"n_features": int(w.shape[0])}
        if isinstance(self.weights, HeadWeights):
            info["weights_data_hash"] = self.weights.data_hash
        n_evaluations = 0
        if scorer is not None and self.calibrate_draws > 0 and n_sources > 1:
            removed = ~random_check_masks(
                self.calibrate_k, n_sources, self.calibrate_draws, self.calibrate_seed
            )
            rows = np.vstack([np.ones((1, n_sources), bool), ~removed])
            measured = evaluate(scorer, rows, n_targets, self.batch_size)
            n_evaluations += len(rows)
            drops = measured[0][None, :] - measured[1:]  # (draws, T)
            info["attention_scores"] = [float(x) for x in scores]
            per_target = calibrate(per_target, removed, drops, self.calibrate_ridge)
            scores = per_target.sum(axis=0)
            info["calibrated"] = {
                "draws": int(self.calibrate_draws),
                "k": int(self.calibrate_k),
                "seed": int(self.calibrate_seed),
                "ridge": float(self.calibrate_ridge),
                "drops": [float(x) for x in drops.sum(axis=1)],
            }
        candidates = candidate_sets(scores, self.refine_k, self._refine_budget())
        if scorer is not None and len(candidates) > 1:
            masks = np.ones((len(candidates), n_sources), dtype=bool)
            for row, chosen in enumerate(candidates):
                masks[row, list(chosen)] = False
            if self.estimate is not None:
                kept = evaluate(self.estimate, masks, n_targets, self.batch_size).sum(axis=1)
            else:
                kept = evaluate(scorer, masks, n_targets, self.batch_size).sum(axis=1)
                n_evaluations += len(masks)
            best = int(np.argmin(kept))  # the lowest log p left: the largest drop
            info.setdefault("attention_scores", [float(x) for x in scores])
            by = "removal" if self.estimate is None else getattr(self.estimate, "name", "estimate")
            info["refined"] = {
                "by": by,
                "k": self.refine_k,
                "sets": [list(map(int, c)) for c in candidates],
                "logprob_without": [float(x) for x in kept],
                "chosen": best,
            }
            scores = lift(scores, candidates[best])
        return Attribution(
            method=self.name,
            scores=scores,
            per_target=per_target,
            n_evaluations=n_evaluations,
            seconds=0.0,
            info=info,
        )

    def _refine_budget(self) -> int:
        if self.refine_sets < 0 or self.refine_k < 1:
            raise ValueError(
                f"refine_sets must be >= 0 and refine_k >= 1; got {self.refine_sets}, "
                f"{self.refine_k}"
            )
        if self.max_evaluations is None:
            return self.refine_sets
        return min(self.refine_sets, self.max_evaluations)


def calibrate(
    prior: np.ndarray, removed: np.ndarray, drops: np.ndarray, ridge: float
) -> np.ndarray:
    """Posterior mean of per-sentence effects (T, S) given measured removals.

    ``prior`` (T, S): the predicted effect of each source sentence on each answer sentence, in
    nats. ``removed`` (R, S): which sentences each measured row left out. ``drops`` (R, T): the
    fall in each answer sentence's log p in that row. Effects ~ N(prior, tau^2), a row's drop
    ~ N(sum of its effects, sigma^2), ``ridge`` = sigma^2 / tau^2: large trusts the prediction,
    small the rows. One ridge for every answer sentence keeps the posterior of the whole answer
    the sum of theirs.
    """
    prior = np.asarray(prior, dtype=float)
    r = np.asarray(removed, dtype=float)
    d = np.asarray(drops, dtype=float)
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0; got {ridge}")
    if r.ndim != 2 or r.shape[1] != prior.shape[1] or d.shape != (r.shape[0], prior.shape[0]):
        raise ValueError(
            f"removed must be (R, {prior.shape[1]}) and drops (R, {prior.shape[0]}); got "
            f"{r.shape} and {d.shape}"
        )
    residual = d.T - prior @ r.T  # (T, R): measured minus predicted drop of each row
    gain = np.linalg.solve(r @ r.T + ridge * np.eye(len(r)), residual.T)  # (R, T)
    posterior: np.ndarray = prior + (r.T @ gain).T
    return posterior


def candidate_sets(scores: np.ndarray, k: int, n_sets: int) -> list[tuple[int, ...]]:
    """The ``n_sets`` k-sentence sets with the largest predicted sum, from the top k + 2.

    The first is always the plain top k (ties by position, as Attribution.top); none when
    fewer than k + 1 sentences leave nothing to choose.
    """
    scores = np.asarray(scores, dtype=float)
    if n_sets < 2 or len(scores) <= k:
        return []
    pool = np.argsort(-scores, kind="stable")[: k + 2].tolist()
    # combinations of the pool in rank order come out in rank order, and the sort is
    # stable, so equal sums keep it
    subsets = sorted(itertools.combinations(pool, k), key=lambda c: -float(scores[list(c)].sum()))
    return [tuple(int(s) for s in c) for c in subsets[:n_sets]]


def lift(scores: np.ndarray, chosen: Iterable[int]) -> np.ndarray:
    """``scores`` with the ``chosen`` sentences moved, by one shift, above all others."""
    out = np.asarray(scores, dtype=float).copy()
    members = sorted(set(chosen))
    top = np.argsort(-out, kind="stable")[: len(members)]
    if not members or sorted(top.tolist()) == members:
        return out  # already the top (ties by position, as Attribution.top)
    inside = np.zeros(len(out), dtype=bool)
    inside[members] = True
    gap = float(out[~inside].max() - out[inside].min())
    # a margin relative to the scores' size, so the lifted set ranks first after rounding
    out[inside] += max(gap, 0.0) + max(1e-3, 1e-3 * float(np.abs(out).max()))
    return out
