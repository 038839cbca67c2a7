"""How many measured sets the attention method's refinement needs (issue 15): every
top-3 set from the per-head prediction's top 6 measured by removal, beside leave-one-out.

For each answer (questions outside the attribution benchmark's seeded samples and outside the
attention weights' training questions, so the rule is chosen on other data than the
benchmark reports on): the per-head prediction, the drop in log p(answer) when each of the 20
three-sentence subsets of its top 6 is removed, each sentence's own leave-one-out drop, and
the drops of leave-one-out's and retrieval similarity's top 3. ``--report`` then replays
refinement rules on those measured drops: "the best of the n sets with the largest predicted
sum" is exactly what ``attribution_refine_sets = n`` shows, so its top-3 drop is the best
measured drop among them.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.refine_sets collect pubmedqa 40 OUT1
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.refine_sets collect medquad 40 OUT2
    .venv/bin/python -m benchmarks.refine_sets report OUT1 OUT2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.attribution import (
    attention_excluded,
    attention_options,
    bootstrap_ci,
    medquad_questions,
)
from core.config import apply_offline_environment
from evaluation.data import sample_questions

POOL = 6  # the prediction's top sentences whose 3-subsets are measured
K = 3
DEV_SEED = 7  # the benchmark samples with seed 0


def _key(cols: Any) -> str:
    return ",".join(str(int(c)) for c in sorted(cols))


def collect(name: str, n: int, out_path: Path) -> None:
    from assistant.attribute import AnswerScorer, answer_targets
    from assistant.cite import source_sentences
    from assistant.generate import generate
    from assistant.pipeline import Assistant
    from assistant.prompts import load_template
    from audit.attribution import CachedScorer, make_attributor
    from core import backends
    from core.backends.base import LogProbScorer

    built = common.build_corpus(name, 2000 if name == "medquad" else None, recipe=False)
    settings = built.settings.model_copy(update={"max_new_tokens": 48, "attribution": "off"})
    llm = backends.create("llm", settings.llm, settings)
    if not isinstance(llm, LogProbScorer):
        raise SystemExit(f"{settings.llm}: attribution needs a model that scores log-probabilities")
    llm.warm_up()
    attention = attention_options(llm, settings, 0, None)
    if isinstance(attention, str):
        raise SystemExit(attention)
    fitted, _ = attention_excluded()
    if name == "pubmedqa":
        qs = common.dataset("pubmedqa").questions
        bench = {q.qid for q in sample_questions(qs, 50, seed=0)}
        pool = sample_questions(qs, 200, seed=DEV_SEED)
    else:
        bench = {q.qid for q in medquad_questions(50, 2000, 0, set())}
        pool = medquad_questions(400, 2000, DEV_SEED, set())
    pool = [q for q in pool if q.qid not in bench and q.qid not in fitted]
    assistant = Assistant(settings, llm=llm)
    assistant.warm_up()
    template = load_template(settings.prompt_template)
    records: list[dict[str, Any]] = []
    for q in pool:
        if len(records) >= n:
            break
        hits = assistant.retriever.retrieve(q.question, k=K)
        t0 = time.perf_counter()
        generation = generate(llm, settings, q.question, hits)
        generation_seconds = time.perf_counter() - t0
        targets = answer_targets(generation.text)
        sources = source_sentences(hits)[: settings.attribution_max_sentences]
        if not targets or len(sources) < POOL:
            continue
        s = len(sources)
        base = AnswerScorer(llm, template, q.question, hits, sources, targets)
        vectors = assistant.embed(list(targets) + [x.text for x in sources])
        similarity = (vectors[: len(targets)] @ vectors[len(targets) :].T).sum(axis=0)
        t0 = time.perf_counter()
        result = make_attributor("attention", **attention(base, "attention-unrefined")).attribute(
            CachedScorer(base), s, len(targets)
        )
        predict_seconds = time.perf_counter() - t0
        predicted = np.asarray(result.scores, dtype=float)
        full = float(np.asarray(base(np.ones((1, s), bool))).sum())

        def drop(cols: Any, base: Any = base, s: int = s, full: float = full) -> list[float]:
            mask = np.ones((1, s), bool)
            mask[0, list(cols)] = False
            t = time.perf_counter()
            value = float(np.asarray(base(mask)).sum())
            return [full - value, time.perf_counter() - t]

        top = np.argsort(-predicted, kind="stable")[:POOL].tolist()
        sets = {_key(c): drop(c) for c in itertools.combinations(top, K)}
        loo = [drop([i])[0] for i in range(s)]
        loo3 = _key(np.argsort(-np.asarray(loo), kind="stable")[:K])
        sim3 = _key(np.argsort(-similarity, kind="stable")[:K])
        for key in (loo3, sim3):
            if key not in sets:
                sets[key] = drop([int(c) for c in key.split(",")])
        records.append(
            {
                "set": name,
                "qid": q.qid,
                "sources": s,
                "targets": len(targets),
                "generation_seconds": generation_seconds,
                "predict_seconds": predict_seconds,
                "predicted": predicted.tolist(),
                "loo": loo,
                "loo3": loo3,
                "similarity3": sim3,
                "sets": sets,  # subset -> [drop, seconds of its pass]
            }
        )
        out_path.write_text(json.dumps(records))
        common.log(f"[{name} {len(records)}/{n}] S={s} generation {generation_seconds:.1f} s")


def best_predicted(predicted: np.ndarray, n_sets: int, pool: int) -> list[str]:
    """The ``n_sets`` top-3 sets with the largest predicted sum among the top ``pool``
    (``attention.candidate_sets`` with its pool of k + 2 when ``pool`` is 5)."""
    top = np.argsort(-predicted, kind="stable")[:pool].tolist()
    ranked = sorted(itertools.combinations(top, K), key=lambda c: -float(predicted[list(c)].sum()))
    return [_key(c) for c in ranked[:n_sets]]


def report(paths: list[Path]) -> None:
    records = [r for p in paths for r in json.loads(p.read_text())]
    loo = np.array([r["sets"][r["loo3"]][0] for r in records])
    print(f"{len(records)} answers; top-3 drop (nats), mean, and against leave-one-out paired")
    rows = [["leave-one-out's top 3", f"{loo.mean():.2f}", "", ""]]
    rows.append(
        [
            "retrieval similarity's top 3",
            f"{np.mean([r['sets'][r['similarity3']][0] for r in records]):.2f}",
            "",
            "",
        ]
    )
    for n_sets in (1, 2, 3, 4, 5, 20):
        label = (
            "the prediction's top 3 (refine_sets 0)"
            if n_sets == 1
            else f"best of {n_sets} measured (refine_sets {n_sets})"
            if n_sets < 20
            else "best of all 20 (an oracle over the top 6)"
        )
        pool = 5 if n_sets < 20 else POOL
        drops = np.array(
            [
                max(
                    r["sets"][k][0]
                    for k in best_predicted(np.asarray(r["predicted"]), n_sets, pool)
                )
                for r in records
            ]
        )
        diff = drops - loo
        low, high = bootstrap_ci(diff) or (float("nan"), float("nan"))
        rows.append(
            [
                label,
                f"{drops.mean():.2f}",
                f"{diff.mean():+.2f} [{low:+.2f}, {high:+.2f}]",
                f"{int((diff > 1e-9).sum())} / {int((np.abs(diff) <= 1e-9).sum())}",
            ]
        )
    print(common.table(["rule", "top-3 drop", "minus leave-one-out", "higher / equal"], rows))
    per_pass = [
        np.median([v[1] for v in r["sets"].values()]) / r["generation_seconds"] for r in records
    ]
    predict = [r["predict_seconds"] / r["generation_seconds"] for r in records]
    print(
        f"median time / generation: one measured set {np.median(per_pass):.3f}, "
        f"the prediction {np.median(predict):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("set", choices=("pubmedqa", "medquad"))
    c.add_argument("limit", type=int)
    c.add_argument("output", type=Path)
    r = sub.add_parser("report")
    r.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.set, args.limit, args.output)
    else:
        report(args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
