"""Attribution benchmark: which method finds what the answer rests on, and at what cost?

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.attribution \\
        [--limit 50] [--sets pubmedqa,medquad] [--methods surrogate,hierarchical,...] \\
        [--json] [--output FILE]

For a fixed seeded sample of questions from each set (PubMedQA over its full corpus; MedQuAD
over its first ``--medquad-docs`` passages, questions whose gold passage is among them),
through clinrag's real retrieval and the packaged model: generate the answer, then attribute
it with every method, each with a fresh scorer cache (each pays its own forward passes).

- Quality: the drop in log p(answer | context), in nats, when a method's top-1 / top-3 source
  sentences are removed (higher = it found what the answer relied on); mean over answers with
  a 95% bootstrap interval (answers resampled).
- Cost: the method's wall time per answer, and that time divided by the generation time of
  the same answer (median over answers). For the fallback (``hierarchical``) and the default
  (``attention``), also the time with the faithfulness check the app runs on every answer
  (on the method's own cache, as ``assistant.attribute.attribute_answer`` does).

``attention`` runs only where its fitted weights for the packaged model are found (otherwise
it is skipped with a note), as the app runs it: calibrated by the faithfulness check's random
rows when ``attribution_calibrate`` is on (with ``attribution_calibrate_ridge``), refined
when ``attribution_refine_sets`` > 1 (``--refine-sets`` overrides), measuring its sets as
``attribution_refine_by`` says (masking by default). Its variants, each alone:
``attention-unrefined``, the per-head prediction; ``attention-calibrated``, the calibration
(ridge ``--calibrate-ridge``, else the setting's); ``attention-refined``, the refinement
(``--refine-sets``, else the setting, at least 2); ``attention-unchained``, the default with
each scored row starting from the reference prompt only, not also from the row run before it
(what that reuse saves); ``attention-removal``, refinement measuring 2 sets by removal (the
default before 2026-12-04); ``attention-masked-question``, the default with masking rerunning
the question too, not only the answer; ``attention-masked-10``, refinement measuring all 10
sets of the top 5 by masking. ``hierarchical`` runs as ``attribution_fallback_by`` says (its
rows estimated by masking by default; its check still removes); ``hierarchical-removal``
measures its rows by removal (the fallback before 2026-12-04). Each method is also compared
with the default answer by answer: the paired mean difference of the top-3 drop, with its
interval.

MedQuAD questions that the shipped attention weights were fitted on are excluded (the weights
file lists them as ``fit.train_qids``; ``clinrag attribution fit`` leaves this benchmark's
PubMedQA samples out of training in the first place).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from core.config import apply_offline_environment
from evaluation.data import Question, sample_questions, shared_doc_ids

ALL_METHODS = (
    "attention",
    "attention-unrefined",
    "attention-calibrated",
    "attention-refined",
    "attention-unchained",
    "attention-removal",
    "attention-masked-question",
    "attention-masked-10",
    "hierarchical",
    "hierarchical-removal",
    "surrogate",
    "shap",
    "loo",
    "similarity",
    "random",
)
# methods also timed with the faithfulness check
CHECKED = (
    "attention",
    "attention-unrefined",
    "attention-calibrated",
    "attention-refined",
    "attention-unchained",
    "attention-removal",
    "attention-masked-question",
    "attention-masked-10",
    "hierarchical",
    "hierarchical-removal",
)
SETS = ("pubmedqa", "medquad")


def bootstrap_ci(
    values: Sequence[float], n: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of the mean (answers resampled with replacement)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 3), round(float(hi), 3)


def cpu_report() -> dict[str, Any]:
    """What decides the speed of a float32 forward pass here: the CPU's vector flags and the
    kernel path torch dispatches to."""
    import torch

    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
                flags = [f for f in wanted if f in have]
                break
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **common.machine(),
    }


def attention_excluded() -> tuple[set[str], str]:
    """MedQuAD question ids the shipped attention weights were fitted on, and a note."""
    try:
        from audit.attribution.attention import PACKAGED_WEIGHTS_DIR
    except ImportError:
        return set(), "no attention method in this build"
    ids: set[str] = set()
    notes = []
    for path in sorted(Path(PACKAGED_WEIGHTS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        fit = data.get("fit") or {}
        for key in ("qids", "question_ids", "train_qids"):
            ids.update(str(q) for q in fit.get(key, []) or data.get(key, []) or [])
        notes.append(f"{path.name}: {data.get('command', '')} (data {data.get('data_hash', '')})")
    return ids, "; ".join(notes) or "no shipped attention weights"


def medquad_questions(n: int, docs: int, seed: int, exclude: set[str]) -> list[Question]:
    """``n`` seeded MedQuAD questions with one clear gold passage among the first ``docs``."""
    data = common.dataset("medquad")
    inside = {str(r["doc_id"]) for r in data.corpus[:docs]}
    shared = shared_doc_ids(data.corpus)
    pool = [
        q for q in data.questions if q.gold and all(g in inside and g not in shared for g in q.gold)
    ]
    # sampled before the fitted-on questions are dropped, so the seeded sample stays the same
    # whatever the weights were fitted on (as for PubMedQA)
    sampled = random.Random(seed).sample(pool, min(n, len(pool)))
    return [q for q in sampled if q.qid not in exclude]


def attention_options(
    llm: Any, settings: Any, refine_sets: int | None = None, calibrate_ridge: float | None = None
) -> Callable[..., dict[str, Any]] | str:
    """A builder of the attention method's options for one answer, or why it cannot run."""
    from audit.attribution import METHODS

    if "attention" not in METHODS:
        return "attention is not a registered method in this build"
    try:
        from assistant import attribute as glue
        from audit.attribution.attention import find_weights
    except ImportError as exc:
        return f"attention glue missing: {exc}"
    weights = find_weights(llm.info.weights_hash, [settings.home / "attribution"])
    if weights is None:
        return f"no fitted attention weights for {llm.info.model_id} ({llm.info.weights_hash[:16]})"
    features = getattr(glue, "attention_features", None)
    if features is None:
        return "assistant.attribute has no attention_features"

    sets = settings.attribution_refine_sets if refine_sets is None else refine_sets
    ridge = settings.attribution_calibrate_ridge if calibrate_ridge is None else calibrate_ridge

    variants: dict[str, dict[str, Any]] = {
        "attention": {"attribution_refine_sets": sets},
        "attention-unrefined": {"attribution_refine_sets": 0, "attribution_calibrate": False},
        "attention-calibrated": {
            "attribution_refine_sets": 0,
            "attribution_calibrate": True,
            "attribution_calibrate_ridge": ridge,
        },
        "attention-refined": {
            "attribution_refine_sets": max(sets, 2),
            "attribution_calibrate": False,
        },
        "attention-unchained": {"attribution_refine_sets": sets},
        "attention-masked-question": {},
        "attention-masked-10": {"attribution_refine_sets": 10, "attribution_refine_by": "masking"},
        "attention-removal": {"attribution_refine_sets": 2, "attribution_refine_by": "removal"},
    }

    def build(scorer: Any, method: str = "attention") -> dict[str, Any]:
        # the options the app derives from its settings (assistant.attribute), overridden
        options = glue.attention_options(settings.model_copy(update=variants[method]), llm, scorer)
        return {"features": lambda: features(llm, scorer), "weights": weights, **options}

    return build


def registered(method: str) -> str:
    """The registered attribution method a benchmark variant runs (attention-*, hierarchical-*)."""
    return method.split("-")[0]


def measure_method(
    method: str,
    attributor: Any,
    scorer: Any,
    shared: Any,
    n_sources: int,
    n_targets: int,
    *,
    check_scorer: Any = None,
) -> dict[str, Any]:
    """One method on one answer: its time, evaluations and top-1 / top-3 drops (on ``shared``),
    what its refinement measured, and the faithfulness check's time for the methods in CHECKED."""
    from audit.attribution import faithfulness, removal_drop

    start, cpu0 = time.perf_counter(), time.process_time()
    result = attributor.attribute(scorer, n_sources, n_targets)
    entry: dict[str, Any] = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "evaluations": result.n_evaluations,
        "drop1": removal_drop(shared, result.scores, 1, n_sources),
        "drop3": removal_drop(shared, result.scores, 3, n_sources),
    }
    if "refined" in result.info:
        # the sets measured, their predicted sums and log p without them: what a rule for
        # refining only near-ties would be calibrated on
        refined = dict(result.info["refined"])
        predicted = np.asarray(result.info["attention_scores"])
        refined["predicted"] = [float(predicted[s].sum()) for s in refined["sets"]]
        entry["refined"] = refined
    if method in CHECKED:
        start, cpu0 = time.perf_counter(), time.process_time()
        # a CachedScorer has a length: an empty one is falsy, so test for None, not truth
        check = scorer if check_scorer is None else check_scorer
        faithfulness(check, result, k=min(3, n_sources))
        entry["check_seconds"] = time.perf_counter() - start
        entry["check_cpu_seconds"] = time.process_time() - cpu0
    return entry


def run_set(
    name: str,
    questions: Sequence[Question],
    llm: Any,
    methods: Sequence[str],
    args: argparse.Namespace,
    attention: Callable[..., dict[str, Any]] | None,
) -> Iterator[dict[str, Any]]:
    """One record per answered question (the sets are interleaved by the caller)."""
    from assistant.attribute import AnswerScorer, answer_targets, fallback_rows
    from assistant.cite import source_sentences
    from assistant.generate import generate
    from assistant.pipeline import Assistant
    from assistant.prompts import load_template
    from audit.attribution import CachedScorer, make_attributor

    built = common.build_corpus(
        name, args.medquad_docs if name == "medquad" else None, recipe=False
    )
    settings = built.settings.model_copy(
        update={"max_new_tokens": args.max_new_tokens, "attribution": "off"}
    )
    assistant = Assistant(settings, llm=llm)
    assistant.warm_up()
    template = load_template(settings.prompt_template)
    for i, q in enumerate(questions, start=1):
        hits = assistant.retriever.retrieve(q.question, k=args.k)
        cpu0 = time.process_time()
        generation = generate(llm, settings, q.question, hits)
        gen_cpu = time.process_time() - cpu0
        targets = answer_targets(generation.text)
        sources = source_sentences(hits)[: settings.attribution_max_sentences]
        if not targets or len(sources) < 4:
            common.log(f"[{name} {i}/{len(questions)}] skipped: {len(sources)} source sentences")
            continue
        base = AnswerScorer(llm, template, q.question, hits, sources, targets)
        vectors = assistant.embed(list(targets) + [s.text for s in sources])
        similarity = vectors[: len(targets)] @ vectors[len(targets) :].T
        shared = CachedScorer(base)  # for the drop measurements, shared by every method
        record: dict[str, Any] = {
            "set": name,
            "qid": q.qid,
            "sources": len(sources),
            "passages": len({s.n for s in sources}),
            "targets": len(targets),
            "generation_seconds": generation.seconds,
            # CPU time of this process (all its threads): with OMP_NUM_THREADS=1 it measures
            # the work done, which a loaded machine stretches far less than wall time
            "generation_cpu_seconds": gen_cpu,
            "methods": {},
        }
        for method in methods:
            scorer = CachedScorer(base)  # a fresh cache: each method pays its own evaluations
            options: dict[str, Any] = {
                "surrogate": {"n_ablations": args.ablations},
                "shap": {"n_samples": args.ablations},
                "similarity": {"similarity": similarity},
                "random": {"seed": i},
            }.get(method, {})
            if method.startswith("attention") and attention is not None:
                options = attention(base, method)
            if hasattr(llm, "chain_rows"):
                llm.chain_rows = method != "attention-unchained"
            if hasattr(llm, "mask_question"):
                llm.mask_question = method == "attention-masked-question"
            check_scorer = scorer
            if method == "hierarchical":
                # as the app runs it (attribution_fallback_by): rows estimated by masking where
                # the model can mask; the check still removes for real
                rows = fallback_rows(settings, llm, base)
                scorer = scorer if rows is None else rows
            record["methods"][method] = measure_method(
                method,
                make_attributor(registered(method), **options),
                scorer,
                shared,
                len(sources),
                len(targets),
                check_scorer=check_scorer,
            )
        timing = " ".join(
            f"{m} {e['seconds'] / generation.seconds:.2f}x" for m, e in record["methods"].items()
        )
        common.log(
            f"[{name} {i}/{len(questions)}] S={len(sources)} T={len(targets)} "
            f"gen {generation.seconds:.1f}s; {timing}"
        )
        yield record


def summarize(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    gen = [r["generation_seconds"] for r in records]
    out: dict[str, Any] = {
        "answers": len(records),
        "generation_seconds_median": round(statistics.median(gen), 3) if gen else None,
        "methods": {},
    }
    for m in methods:
        rows = [r for r in records if m in r["methods"]]
        if not rows:
            continue
        e = [r["methods"][m] for r in rows]
        ratio = [x["seconds"] / r["generation_seconds"] for x, r in zip(e, rows, strict=True)]
        entry: dict[str, Any] = {
            "top1_drop": round(float(np.mean([x["drop1"] for x in e])), 3),
            "top1_ci95": bootstrap_ci([x["drop1"] for x in e]),
            "top3_drop": round(float(np.mean([x["drop3"] for x in e])), 3),
            "top3_ci95": bootstrap_ci([x["drop3"] for x in e]),
            "evaluations_mean": round(float(np.mean([x["evaluations"] for x in e])), 1),
            "seconds_median": round(statistics.median(x["seconds"] for x in e), 3),
            "time_over_generation_median": round(statistics.median(ratio), 3),
        }
        if all("check_seconds" in x for x in e):
            checked = [
                (x["seconds"] + x["check_seconds"]) / r["generation_seconds"]
                for x, r in zip(e, rows, strict=True)
            ]
            entry["with_check_over_generation_median"] = round(statistics.median(checked), 3)
        if all("cpu_seconds" in x for x in e):
            cpu_ratio = [
                x["cpu_seconds"] / max(r["generation_cpu_seconds"], 1e-9)
                for x, r in zip(e, rows, strict=True)
            ]
            entry["cpu_over_generation_median"] = round(statistics.median(cpu_ratio), 3)
            if all("check_cpu_seconds" in x for x in e):
                checked_cpu = [
                    (x["cpu_seconds"] + x["check_cpu_seconds"])
                    / max(r["generation_cpu_seconds"], 1e-9)
                    for x, r in zip(e, rows, strict=True)
                ]
                entry["with_check_cpu_over_generation_median"] = round(
                    statistics.median(checked_cpu), 3
                )
        base = "attention-unrefined"
        if (
            m != base
            and m in CHECKED
            and all("check_cpu_seconds" in r["methods"].get(base, {}) for r in rows)
        ):
            # what the method adds to the work the app does on every answer anyway (the
            # per-head pass and the check): rows it shares with the check are not counted twice
            added = [
                (
                    x["cpu_seconds"]
                    + x["check_cpu_seconds"]
                    - r["methods"][base]["cpu_seconds"]
                    - r["methods"][base]["check_cpu_seconds"]
                )
                / max(r["generation_cpu_seconds"], 1e-9)
                for x, r in zip(e, rows, strict=True)
            ]
            entry["cpu_added_over_unrefined_with_check_median"] = round(statistics.median(added), 3)
        out["methods"][m] = entry
    # answer by answer against the default: a paired difference is far tighter than two
    # overlapping intervals
    paired: dict[str, Any] = {}
    for m in methods:
        rows = [r for r in records if m in r["methods"] and "attention" in r["methods"]]
        if m == "attention" or not rows:
            continue
        diff = [r["methods"]["attention"]["drop3"] - r["methods"][m]["drop3"] for r in rows]
        paired[m] = {
            "answers": len(rows),
            "top3_drop_difference": round(float(np.mean(diff)), 3),
            "ci95": bootstrap_ci(diff),
            "attention_higher": sum(d > 1e-9 for d in diff),
            "equal": sum(abs(d) <= 1e-9 for d in diff),
        }
    if paired:
        out["attention_minus"] = paired
    return out


def merge(paths: Sequence[Path], as_json: bool) -> int:
    """One report over the answers of several runs' ``--output`` files."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    records = [r for run in runs for r in run["answers"]]
    methods = list(dict.fromkeys(m for r in records for m in r["methods"]))
    sets = list(dict.fromkeys(r["set"] for r in records))
    summary = {
        "merged": [str(p) for p in paths],
        "machines": [run.get("machine") for run in runs],
        "load_average_end": [run.get("load_average_end") for run in runs],
        "all": summarize(records, methods),
        "sets": {s: summarize([r for r in records if r["set"] == s], methods) for s in sets},
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0


def print_report(summary: dict[str, Any]) -> None:
    for label, part in [("all", summary["all"]), *summary["sets"].items()]:
        print(
            f"\n{label}: {part['answers']} answers, median generation "
            f"{part['generation_seconds_median']} s"
        )
        rows = [
            [
                m,
                f"{e['top1_drop']} {e['top1_ci95']}",
                f"{e['top3_drop']} {e['top3_ci95']}",
                e["evaluations_mean"],
                e["seconds_median"],
                e["time_over_generation_median"],
                e.get("with_check_over_generation_median", ""),
                e.get("cpu_over_generation_median", ""),
                e.get("with_check_cpu_over_generation_median", ""),
                e.get("cpu_added_over_unrefined_with_check_median", ""),
            ]
            for m, e in part["methods"].items()
        ]
        headers = [
            "method",
            "top-1 drop [95% CI]",
            "top-3 drop [95% CI]",
            "evals",
            "s/answer (median)",
            "time/gen (median)",
            "with check",
            "CPU/gen",
            "CPU with check",
            "CPU added to unrefined + check",
        ]
        print(common.table(headers, rows))
        for m, d in part.get("attention_minus", {}).items():
            print(
                f"  attention minus {m}, top-3 drop, paired over {d['answers']}: "
                f"{d['top3_drop_difference']} {d['ci95']} (higher on {d['attention_higher']}, "
                f"equal on {d['equal']})"
            )


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="questions per set")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--k", type=int, default=3, help="retrieved chunks per question")
    parser.add_argument("--ablations", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--medquad-docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--refine-sets", type=int, help="attention's measured sets (default: the setting)"
    )
    parser.add_argument(
        "--calibrate-ridge",
        type=float,
        help="ridge of attention-calibrated (default: the setting's, as attention uses)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="report on the answers of earlier --output files (e.g. one process per set) "
        "instead of running",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output", type=Path, help="also write the JSON (with every answer)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)

    from audit.attribution import METHODS
    from core import backends
    from core.backends.base import LogProbScorer

    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; choose from {', '.join(SETS)}")
    wanted = [m for m in args.methods.split(",") if m]
    bad = [m for m in wanted if m not in ALL_METHODS]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}")

    probe = common.build_corpus(
        sets[0], args.medquad_docs if sets[0] == "medquad" else None, recipe=False
    ).settings
    llm = backends.create("llm", probe.llm, probe)
    llm.warm_up()
    if not isinstance(llm, LogProbScorer):
        raise SystemExit(f"{probe.llm}: attribution needs a model that scores log-probabilities")
    notes: dict[str, str] = {}
    attention = None
    methods = []
    for m in wanted:
        if m.startswith("attention"):
            # every attention row shares one builder (one weights lookup)
            built = attention or attention_options(
                llm, probe, args.refine_sets, args.calibrate_ridge
            )
            if isinstance(built, str):
                notes["attention"] = f"skipped: {built}"
                common.log(f"attention {notes['attention']}")
                continue
            attention = built
        elif registered(m) not in METHODS:
            notes[m] = "skipped: not a registered method"
            continue
        methods.append(m)
    exclude, weights_note = attention_excluded()
    notes["attention_weights"] = weights_note
    cpu = cpu_report()
    common.log(f"CPU {cpu['cpu']}; flags {cpu['flags']}; torch {cpu['torch_cpu_capability']}")
    common.log(
        f"code path: {llm.__class__.__module__}.{llm.__class__.__name__}, "
        f"device {getattr(llm, 'device', '?')}; methods {', '.join(methods)}"
    )

    runs: list[Iterator[dict[str, Any]]] = []
    for name in sets:
        if name == "pubmedqa":
            sampled = sample_questions(
                common.dataset("pubmedqa").questions, args.limit, seed=args.seed
            )
            # the seeded sample stays the same; any question the weights saw is left out
            questions = [q for q in sampled if q.qid not in exclude]
            if len(questions) < len(sampled):
                notes["pubmedqa_left_out"] = f"{len(sampled) - len(questions)} fitted on"
        else:
            questions = medquad_questions(args.limit, args.medquad_docs, args.seed, exclude)
        runs.append(run_set(name, questions, llm, methods, args, attention))

    def report(records: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "limit_per_set": args.limit,
            "k": args.k,
            "ablations": args.ablations,
            "max_new_tokens": args.max_new_tokens,
            "medquad_docs": args.medquad_docs,
            "machine": cpu,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "code_path": f"{llm.__class__.__module__}.{llm.__class__.__name__} "
            f"({getattr(llm, 'device', '?')}, float32 on CPU)",
            "notes": notes,
            "all": summarize(records, methods),
            "sets": {s: summarize([r for r in records if r["set"] == s], methods) for s in sets},
        }

    # the sets take turns, and --output is rewritten after every answer: a run stopped early
    # still reports on both sets
    records: list[dict[str, Any]] = []
    while runs:
        for run in list(runs):
            record = next(run, None)
            if record is None:
                runs.remove(run)
                continue
            records.append(record)
            if args.output:
                partial = {**report(records), "answers": records}
                args.output.write_text(json.dumps(partial, indent=1) + "\n")
    if not records:
        raise SystemExit("No sampled question gave an answer with 4 or more source sentences.")
    summary = report(records)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print_report(summary)
    for key, note in notes.items():
        print(f"{key}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
