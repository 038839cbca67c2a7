"""Cross-validation of attention-attribution fits on cached ablation data (issue 15).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.attention_fit_cv \\
        --cache HOME1/cache/attribution_fit --cache HOME2/cache/attribution_fit \\
        [--folds 5] [--exact] [--weights OLD.json ...] [--json] [--output FILE]

Reads the examples ``clinrag attribution fit`` cached (each answer's attention features, its
random ablation masks and the log-probabilities under them), splits the answers into
``--folds`` folds (never one answer's masks across folds), and for each fit variant (target:
each answer sentence or the whole answer; weights free or non-negative; the ridge strength
chosen by the fit's own inner cross-validation on the training folds) reports, on the
held-out answers:

- correlation between predicted and measured log p over the masks, per answer sentence and
  per whole answer (mean over groups);
- the top-3 drop: the fall in log p(answer) when the 3 source sentences the weights rank
  highest are removed, estimated from the answer's own 33 ablations by a least-squares
  linear surrogate (cheap, approximate), and with ``--exact`` measured by teacher forcing
  with the packaged model (one pass per distinct removed set, memoised in ``--memo``).

Fixed weights files (``--weights``, e.g. the shipped ones) are scored on the same held-out
answers, as are plain attention (every head weighted alike) and a random ranking.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from core.config import apply_offline_environment

VARIANTS: dict[str, tuple[str, bool, bool]] = {  # name: (target, non-negative, --prior)
    "sentence": ("sentence", False, False),
    "sentence_nonneg": ("sentence", True, False),
    "answer": ("answer", False, False),
    "answer_nonneg": ("answer", True, False),
    "sentence_prior": ("sentence", False, True),
    "answer_prior": ("answer", False, True),
}


def load_records(caches: Sequence[Path]) -> list[dict[str, Any]]:
    """Every complete cached example (features and ablations), of any model and settings."""
    out = []
    for folder in caches:
        for path in sorted(Path(folder).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            if "features" in record and "masks" in record:
                record["_home"] = str(Path(folder).resolve().parents[1])
                out.append(record)
    return out


def surrogate_drop(record: dict[str, Any], removed: Sequence[int]) -> float:
    """Estimated fall in log p(answer) from removing ``removed``: least squares of the
    whole-answer log p on the keep-masks (the ablations' own linear surrogate)."""
    masks = np.asarray(record["masks"], dtype=float)
    y = np.asarray(record["logprobs"], dtype=float).sum(axis=1)
    x = np.hstack([np.ones((len(masks), 1)), masks])
    beta = np.linalg.lstsq(x, y, rcond=None)[0][1:]
    return float(beta[list(removed)].sum())


def top3(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[: min(3, len(scores))]]


class Exact:
    """Measured top-k drops with the packaged model, memoised per (answer, removed set)."""

    def __init__(self, memo: Path) -> None:
        self.memo_path = memo
        self.memo: dict[str, float] = json.loads(memo.read_text()) if memo.is_file() else {}
        self._llm: Any = None
        self._scorers: dict[str, Any] = {}
        self.passes = 0

    def _scorer(self, record: dict[str, Any]) -> Any:
        from assistant.attribute import AnswerScorer
        from assistant.cite import source_sentences
        from assistant.prompts import load_template
        from core import backends
        from services.attribution_fit import cached_hits

        settings = common.clinrag_settings(Path(record["_home"]))
        if self._llm is None:
            self._llm = backends.create("llm", settings.llm, settings)
            self._llm.warm_up()
        # the passages it was answered from, by chunk id (no retrieval, no embedder)
        hits = cached_hits(settings, record)
        if hits is None:
            raise RuntimeError(f"{record['qid']}: the library changed since it was collected")
        config = record["config"]
        sources = source_sentences(hits)[: config["max_sentences"]]
        template = load_template(config["prompt_template"])
        return AnswerScorer(
            self._llm, template, record["question"], hits, sources, record["targets"]
        )

    def logprob(self, record: dict[str, Any], removed: Sequence[int]) -> float:
        """log p(answer) with ``removed`` taken out of the context (memoised)."""
        key = f"{record['corpus']}|{record['qid']}|{','.join(map(str, sorted(removed)))}"
        if key not in self.memo:
            mask = np.ones((1, len(record["masks"][0])), bool)
            mask[0, list(removed)] = False
            name = f"{record['corpus']}|{record['qid']}"
            if name not in self._scorers:
                self._scorers[name] = self._scorer(record)
            self.memo[key] = float(self._scorers[name](mask).sum())
            self.passes += 1
            self.memo_path.write_text(json.dumps(self.memo))
        return self.memo[key]

    def drop(self, record: dict[str, Any], removed: Sequence[int]) -> float:
        # the full context measured now too (not the cached row): the same code, one run
        return self.logprob(record, []) - self.logprob(record, removed)


def evaluate(
    held: Sequence[dict[str, Any]],
    examples: Sequence[Any],
    score_fn: Any,
    exact: Exact | None,
) -> dict[str, list[float]]:
    from audit.attribution.attention_fit import group_correlation

    out: dict[str, list[float]] = {"sentence_corr": [], "answer_corr": [], "drop3_est": []}
    if exact is not None:
        out["drop3_exact"] = []
    for record, ex in zip(held, examples, strict=True):
        w = score_fn(ex)
        if w is None:  # a ranking without weights (random)
            scores = np.random.default_rng(len(record["qid"])).random(ex.features.shape[1])
        elif isinstance(w, str):  # the surrogate's Lasso on this answer's own cached ablations
            from audit.attribution.surrogate import fit_sparse_linear

            scores = fit_sparse_linear(ex.masks, ex.logprobs.sum(axis=1))[0]
        else:
            out["sentence_corr"].append(group_correlation([ex], w, "sentence"))
            out["answer_corr"].append(group_correlation([ex], w, "answer"))
            scores = (ex.features @ w).sum(axis=0)
        removed = top3(scores)
        out["drop3_est"].append(surrogate_drop(record, removed))
        if exact is not None:
            out["drop3_exact"].append(exact.drop(record, removed))
    return out


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cache", type=Path, action="append", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--weights", type=Path, action="append", default=[])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--prior", type=Path, help="weights file the *_prior variants shrink towards"
    )
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--memo", type=Path, default=Path("/tmp/attention_fit_cv_memo.json"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from audit.attribution.attention import HeadWeights
    from audit.attribution.attention_fit import FitExample, fit_head_weights

    records = load_records(args.cache)
    if len(records) < args.folds:
        raise SystemExit(f"{len(records)} cached examples: too few for {args.folds} folds")
    # interleave the corpora so every fold holds some of each
    records.sort(key=lambda r: (r["corpus"], r["qid"]))
    by_corpus: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_corpus.setdefault(r["corpus"], []).append(r)
    order = [r for group in by_corpus.values() for r in group]
    fold_of = {id(r): i % args.folds for i, r in enumerate(order)}
    examples = {
        id(r): FitExample(np.asarray(r["features"]), np.asarray(r["masks"]), r["logprobs"])
        for r in records
    }
    fixed = {p.stem: HeadWeights.load(p) for p in args.weights}
    prior = HeadWeights.load(args.prior).w if args.prior else None
    exact = Exact(args.memo) if args.exact else None
    n_features = next(iter(examples.values())).features.shape[2]
    names = [v for v in args.variants.split(",") if v]
    results: dict[str, dict[str, list[float]]] = {}
    per_answer: dict[str, list[str]] = {}
    ridges: dict[str, list[float]] = {n: [] for n in names}
    for f in range(args.folds):
        train = [examples[id(r)] for r in order if fold_of[id(r)] != f]
        held = [r for r in order if fold_of[id(r)] == f]
        held_ex = [examples[id(r)] for r in held]
        scorers: dict[str, Any] = {}
        for name in names:
            target, nonneg, use_prior = VARIANTS[name]
            if use_prior and prior is None:
                continue
            fit = fit_head_weights(
                train, target=target, nonneg=nonneg, prior=prior if use_prior else None
            )
            ridges[name].append(fit.ridge)
            scorers[name] = lambda _ex, w=fit.w: w
        for label, weights in fixed.items():
            trained_on = {str(q) for q in weights.fit.get("train_qids", [])}
            if any(str(r["qid"]) in trained_on for r in held):
                common.log(f"note: {label} was fitted on some held-out answers of fold {f}")
            scorers[f"file:{label}"] = lambda _ex, w=weights.w: w
        scorers["uniform"] = lambda _ex: np.ones(n_features)
        scorers["random"] = lambda _ex: None
        # a reference, not a fit: the ablation surrogate on the answer's own cached masks
        scorers["surrogate_on_cached_masks"] = lambda _ex: "ablations"
        for name, fn in scorers.items():
            got = evaluate(held, held_ex, fn, exact)
            bucket = results.setdefault(name, {})
            for key, values in got.items():
                bucket.setdefault(key, []).extend(values)
            per_answer.setdefault(name, []).extend(f"{r['corpus']}:{r['qid']}" for r in held)
        common.log(f"fold {f + 1}/{args.folds} done ({len(held)} held out)")

    def summary(values: dict[str, list[float]], keep: list[bool] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, vals in values.items():
            arr = np.asarray(vals, dtype=float)
            if keep is not None and len(arr) == len(keep):
                arr = arr[np.asarray(keep)]
            out[key] = round(float(np.nanmean(arr)), 4) if len(arr) else None
        return out

    report: dict[str, Any] = {
        "answers": len(records),
        "by_corpus": {c: len(g) for c, g in by_corpus.items()},
        "groups": sum(len(r["targets"]) for r in records),
        "folds": args.folds,
        "ridges_chosen": ridges,
        "exact_passes": exact.passes if exact else 0,
        "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        "all": {name: summary(v) for name, v in results.items()},
    }
    # the answers no fixed weights file was fitted on: where old and new compare fairly
    files = [*fixed.values(), *([HeadWeights.load(args.prior)] if args.prior else [])]
    seen = {str(q) for weights in files for q in weights.fit.get("train_qids", []) or []}
    if seen:
        report["unseen_by_files"] = {
            name: summary(v, [a.split(":", 1)[1] not in seen for a in per_answer[name]])
            for name, v in results.items()
        }
        report["unseen_answers"] = sum(
            a.split(":", 1)[1] not in seen for a in per_answer["uniform"]
        )
    for corpus in by_corpus:
        report[corpus] = {
            name: summary(v, [a.startswith(corpus + ":") for a in per_answer[name]])
            for name, v in results.items()
        }
    text = json.dumps(report, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        print(text)
        return 0
    for part in ["all", *by_corpus, *(["unseen_by_files"] if seen else [])]:
        print(f"\n{part}:")
        rows = [
            [name, v.get("sentence_corr"), v.get("answer_corr"), v.get("drop3_est"),
             v.get("drop3_exact")]
            for name, v in report[part].items()
        ]  # fmt: skip
        print(
            common.table(
                ["fit", "corr/sentence", "corr/answer", "top-3 drop (est.)", "top-3 drop (exact)"],
                rows,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
