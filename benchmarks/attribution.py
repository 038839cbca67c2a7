"""Attribution benchmark: which method finds the source sentences the answer depends on?

    .venv/bin/python -m benchmarks.attribution --limit 50 [--k 3] [--json]

For a fixed seeded sample of PubMedQA questions (over its full corpus, through clinrag's real
retrieval and the packaged model), generate an answer, then attribute it with the ablation
surrogate (32 ablations), KernelSHAP (32 evaluations), leave-one-out, retrieval similarity and
random scores. Each method's quality is the drop in log p(answer | context) when its top-1 and
top-3 source sentences are removed (higher = it found what the answer relied on). Cost is the
surrogate's wall time divided by the generation's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common
from core.config import apply_offline_environment
from evaluation.data import sample_questions

METHODS = ("surrogate", "shap", "loo", "similarity", "random")


def main() -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--k", type=int, default=3, help="retrieved chunks per question")
    parser.add_argument("--ablations", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from assistant.attribute import AnswerScorer, answer_targets
    from assistant.cite import source_sentences
    from assistant.generate import generate
    from assistant.pipeline import Assistant
    from assistant.prompts import load_template
    from audit.attribution import CachedScorer, make_attributor, removal_drop
    from core.backends.base import LogProbScorer

    built = common.build_corpus("pubmedqa", recipe=False)
    settings = built.settings.model_copy(
        update={"max_new_tokens": args.max_new_tokens, "attribution": "off"}
    )
    assistant = Assistant(settings)
    assistant.warm_up()
    scorer_llm = assistant.llm
    if not isinstance(scorer_llm, LogProbScorer):
        raise SystemExit(f"{settings.llm}: attribution needs a model that scores log-probabilities")
    template = load_template(settings.prompt_template)
    questions = sample_questions(common.dataset("pubmedqa").questions, args.limit, seed=0)

    drops: dict[str, dict[int, list[float]]] = {m: {1: [], 3: []} for m in METHODS}
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    evaluations: dict[str, list[int]] = {m: [] for m in METHODS}
    gen_seconds: list[float] = []
    for i, q in enumerate(questions, start=1):
        hits = assistant.retriever.retrieve(q.question, k=args.k)
        generation = generate(assistant.llm, settings, q.question, hits)
        targets = answer_targets(generation.text)
        sources = source_sentences(hits)[: settings.attribution_max_sentences]
        if not targets or len(sources) < 4:
            continue
        gen_seconds.append(generation.seconds)
        base = AnswerScorer(scorer_llm, template, q.question, hits, sources, targets)
        vectors = assistant.embed(list(targets) + [s.text for s in sources])
        similarity = vectors[: len(targets)] @ vectors[len(targets) :].T
        shared = CachedScorer(base)  # for the drop measurements, shared by every method
        # each method's own budget or input: ablations for the sampling ones, the retrieval
        # similarity, a seed per question for random scores
        options: dict[str, dict[str, Any]] = {
            "surrogate": {"n_ablations": args.ablations},
            "shap": {"n_samples": args.ablations},
            "similarity": {"similarity": similarity},
            "random": {"seed": i},
        }
        for method in METHODS:
            scorer = CachedScorer(base)  # a fresh cache: each method pays its own evaluations
            start = time.perf_counter()
            attributor = make_attributor(method, **options.get(method, {}))
            result = attributor.attribute(scorer, len(sources), len(targets))
            seconds[method].append(time.perf_counter() - start)
            evaluations[method].append(result.n_evaluations)
            for k in (1, 3):
                drops[method][k].append(removal_drop(shared, result.scores, k, len(sources)))
        common.log(
            f"[{i}/{len(questions)}] S={len(sources)} T={len(targets)} "
            f"gen {generation.seconds:.1f}s surrogate {seconds['surrogate'][-1]:.1f}s"
        )

    if not gen_seconds:
        raise SystemExit("No sampled question gave an answer with 4 or more source sentences.")
    gen_total = sum(gen_seconds)
    rows = []
    summary: dict[str, Any] = {
        "questions": len(gen_seconds),
        "k": args.k,
        "machine": common.machine(),
        "generation_seconds_mean": round(statistics.mean(gen_seconds), 3),
        "methods": {},
    }
    for m in METHODS:
        ratio = sum(seconds[m]) / gen_total if gen_total else float("nan")
        entry = {
            "top1_drop": round(float(np.mean(drops[m][1])), 4),
            "top3_drop": round(float(np.mean(drops[m][3])), 4),
            "seconds_mean": round(statistics.mean(seconds[m]), 3),
            "evaluations_mean": round(statistics.mean(evaluations[m]), 1),
            "time_over_generation": round(ratio, 3),
        }
        summary["methods"][m] = entry
        rows.append(
            [
                m,
                entry["top1_drop"],
                entry["top3_drop"],
                entry["evaluations_mean"],
                entry["seconds_mean"],
                entry["time_over_generation"],
            ]
        )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"PubMedQA attribution, {len(gen_seconds)} questions, k={args.k} chunks, "
        f"mean generation {summary['generation_seconds_mean']} s"
    )
    headers = ["method", "top-1 drop", "top-3 drop", "evals", "seconds", "time / generation"]
    print(common.table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
