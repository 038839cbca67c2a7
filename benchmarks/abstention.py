"""Abstention: does clinrag decline questions its library cannot answer, and only those?

    .venv/bin/python -m benchmarks.abstention

Data: MedQuAD (../shared/eval/medquad), 200 questions drawn with a fixed seed (0). The first
100 drawn are made unanswerable by removing documents from the index; the next 100 drawn
whose documents are all still indexed are the answerable ones. Two ways of removing, both
run on the same 200 questions:

  topic  every passage whose title (the MedQuAD focus, e.g. "Adult Acute Lymphoblastic
         Leukemia") equals the title of an unanswerable question's gold passage: the library
         then says nothing about that disease. This is the honest "not in the library" case.
  gold   only the gold passages. MedQuAD has several passages per disease ("What is X",
         "symptoms of X", "treatment of X" ...), so sibling passages on the same disease
         remain and retrieval still finds closely related text; not abstaining is then often
         defensible, so read this row as an upper bound on the difficulty.

Removal uses the real ``Index.remove`` on a private copy of the cached full MedQuAD index
(the benchmarks' shared store, also used by retrieval.py), so the library is the full 8,254
passages minus the removed ones (``--limit-docs N``: the first N passages, for quick tries).

Retrieval-stage abstention is exactly the pipeline's first check (assistant/pipeline.py,
``Assistant._answer``): with hits = ``Retriever.retrieve(question)`` at the default top_k,
relevance = max(hit.dense_score), and the assistant abstains when relevance <
``Settings.abstain_min_relevance``. The calibration table shows both rates for other
thresholds, so the default can be chosen; "best" maximises (abstain on unanswerable) -
(false abstain on answerable).

The second retrieval-stage check, question words rarer than ``abstain_rare_term_zipf`` in
general English of which no retrieved passage mentions any (assistant/coverage.py), is measured from
the same retrievals at several thresholds; ``--elsewhere`` adds its false abstention on two
libraries that hold every answer (PubMedQA's 500 questions, data_samples' own list).

Options:
  --questions N    total questions, half of each kind (default 200)
  --limit-docs N   index only the first N MedQuAD passages and draw questions on them (quick
                   tries; the figures are not comparable)
  --seed S         (default 0)
  --generate N     also run the full Assistant.ask(record=False, attribute=False) on N
                   questions of each kind (topic removal; packaged LLM; about 5-10 s per
                   question on 2 CPU cores; attribution, which does not affect abstention and
                   takes ~90 s per answer there, is off)
  --elsewhere      also measure false abstention on PubMedQA and data_samples
  --quote-stage    also, on the questions that pass the retrieval-stage checks (topic
                   removal), how many have evidence strong enough to quote
                   (``policy.strong_evidence``) with the sentence read alone only
                   (``quote_min_evidence``) and with the title-read bar as well
                   (``quote_min_titled_evidence``, shipped). Strong evidence is quoted without
                   a draft; the rest go to the model, whose unverified draft is declined. No
                   model is loaded.
  --json           one JSON object instead of tables
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log
from core.config import Settings, apply_offline_environment
from core.types import Hit
from evaluation.data import Question, norm_title, shared_doc_ids
from evaluation.metrics import percentile

THRESHOLDS = [round(0.20 + 0.025 * i, 3) for i in range(27)]  # 0.20 .. 0.85
# Settings.abstain_rare_term_zipf values to compare; 0 turns the rare-term check off.
ZIPFS = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
SAMPLES = common.REPO / "data_samples"

Observation = dict[str, Any]  # what the retrieval-stage checks saw for one question (observe)


def split_questions(
    n: int, seed: int, limit_docs: int | None = None
) -> tuple[list[Question], list[Question], dict[str, set[str]]]:
    """(unanswerable, answerable, {mode: corpus doc ids to remove})."""
    data = common.dataset("medquad")
    corpus = data.corpus[:limit_docs] if limit_docs else data.corpus
    title_of = {str(r["doc_id"]): norm_title(r["title"]) for r in corpus}
    by_title: dict[str, set[str]] = {}
    for r in corpus:
        by_title.setdefault(norm_title(r["title"]), set()).add(str(r["doc_id"]))
    # (a duplicated id maps to several titles; questions on those ids are never drawn)
    pool = [q for q in data.questions if q.gold]
    shared = shared_doc_ids(data.corpus)  # ids of several passages: no clear gold
    pool = [q for q in pool if all(g in title_of and g not in shared for g in q.gold)]
    random.Random(seed).shuffle(pool)
    half = n // 2
    unanswerable = pool[:half]
    gold = {g for q in unanswerable for g in q.gold}
    topic = {d for g in gold for d in by_title[title_of[g]]}
    answerable = [q for q in pool[half:] if not set(q.gold) & topic][: n - half]
    return unanswerable, answerable, {"topic": topic, "gold": gold}


def relevance(hits: list[Hit]) -> float:
    """The pipeline's retrieval-stage relevance (Assistant._answer)."""
    return max((h.dense_score or 0.0) for h in hits) if hits else 0.0


def observe(retriever: Any, question: str) -> Observation:
    """What the two retrieval-stage checks see for one question, at every threshold at once.

    ``words``: the question's words as ``coverage.specific_terms`` reads them, each with its
    general-English Zipf frequency; ``absent``: those no retrieved passage mentions. The
    rare-term check at threshold z abstains when the question has words with zipf < z and no
    retrieved passage mentions any of them (assistant/coverage.py).
    """
    from assistant import coverage

    hits = retriever.retrieve(question)
    cov = coverage.check(question, hits, retriever.lexical.stem, max_zipf=99.0)
    # as policy.before_generation reads abstain_other_subtype: a subtype, else the young
    other = coverage.other_subtype(question, hits, retriever.lexical.stem)
    other = other or coverage.other_population(question, hits)
    return {
        "relevance": relevance(hits),
        "other_subtype": None if other is None else str(other),
        "words": [[w, coverage.zipf(w)] for w in cov.specific],
        "absent": [[w, coverage.zipf(w)] for w in cov.missing],
        "subjects": list(cov.subjects),
    }


# How subject words ("prostate" in "prostate cancer") count: "required" (shipped): at any
# threshold above 0 as specific words, and none of them named in the passages is a decline;
# "specific": only as specific words (stop 31); "off": only by their frequency (before).
SUBJECT_RULES = ("required", "specific", "off")


def abstains(
    obs: Observation,
    threshold: float,
    max_zipf: float,
    subjects: str = "required",
    other_subtype: bool = True,
) -> bool:
    """The pipeline's decision at these thresholds (``coverage.Coverage.covered``), with
    subject words counted as ``subjects`` says (:data:`SUBJECT_RULES`), and the subtype check
    (``coverage.other_subtype``) when ``other_subtype`` and the word check is on."""
    if other_subtype and max_zipf > 0 and obs.get("other_subtype"):
        return True
    if subjects not in SUBJECT_RULES:
        raise ValueError(f"subjects must be one of {SUBJECT_RULES}; got {subjects!r}")
    named = set(obs.get("subjects", ())) if subjects != "off" and max_zipf > 0 else set()

    def counted(words: list[list[Any]]) -> list[str]:
        return [w for w, z in words if z < max_zipf or w in named]

    specific, missing = counted(obs["words"]), counted(obs["absent"])
    if subjects == "required" and named and named <= set(missing):
        return True  # no passage names the subject (coverage.Coverage.covered)
    return obs["relevance"] < threshold or (bool(specific) and len(missing) == len(specific))


def share(
    observed: list[Observation],
    threshold: float,
    max_zipf: float,
    subjects: str = "required",
    other_subtype: bool = True,
) -> float:
    hits = sum(abstains(o, threshold, max_zipf, subjects, other_subtype) for o in observed)
    return hits / max(len(observed), 1)


def run_mode(
    built: common.BuiltCorpus,
    remove: set[str],
    unanswerable: list[Question],
    answerable: list[Question],
    workdir: Path,
) -> tuple[dict[str, Any], Settings]:
    from assistant.retrieve import Retriever
    from core.library.index import Index, writer_lock

    settings = common.copy_home(built, workdir)
    to_clinrag: dict[str, list[str]] = {}
    for clinrag_id, corpus_id in built.doc_map.items():
        to_clinrag.setdefault(corpus_id, []).append(clinrag_id)
    index = Index(settings)
    t0 = time.perf_counter()
    with writer_lock(settings):
        index.warm_up()
        removed = sum(
            index.remove(clinrag_id) for d in sorted(remove) for clinrag_id in to_clinrag.get(d, [])
        )
    remove_seconds = time.perf_counter() - t0
    retriever = Retriever(settings, index=index)
    retriever.warm_up()
    observed: dict[str, list[Observation]] = {"unanswerable": [], "answerable": []}
    for kind, qs in (("unanswerable", unanswerable), ("answerable", answerable)):
        for q in qs:
            observed[kind].append(observe(retriever, q.question))
    return (
        {
            "removed_docs": removed,
            "remove_seconds": round(remove_seconds, 1),
            "chunks_left": index.store.count(),
            "observed": observed,
        },
        settings,
    )


def rates(
    observed: dict[str, list[Observation]],
    threshold: float,
    max_zipf: float = 0.0,
    subjects: str = "required",
    other_subtype: bool = True,
) -> tuple[float, float]:
    return (
        share(observed["unanswerable"], threshold, max_zipf, subjects, other_subtype),
        share(observed["answerable"], threshold, max_zipf, subjects, other_subtype),
    )


def answerable_elsewhere(threshold: float) -> dict[str, Any]:
    """False abstention of the retrieval-stage checks on libraries that hold every answer.

    PubMedQA: all 500 questions over the full cached index (each question's abstract is in the
    library). data_samples: the project's own library and question list, whose questions with
    no expected file are the ones it does not cover.
    """
    from assistant.retrieve import Retriever

    out: dict[str, Any] = {}
    built = common.build_corpus("pubmedqa", None, recipe=False)
    retriever = Retriever(built.settings)
    retriever.warm_up()
    observed = [observe(retriever, q.question) for q in common.dataset("pubmedqa").questions]
    out["pubmedqa"] = {
        "answerable": len(observed),
        "false_abstain": {str(z): share(observed, threshold, z) for z in ZIPFS},
        "false_abstain_without_subjects": share(
            observed, threshold, built.settings.abstain_rare_term_zipf, subjects="off"
        ),
        "false_abstain_subject_not_required": share(
            observed, threshold, built.settings.abstain_rare_term_zipf, subjects="specific"
        ),
        "flagged_at_3": [
            [w for w, _ in o["absent"]] for o in observed if abstains(o, threshold, 3.0)
        ],
        "false_abstain_without_subtype_check": share(
            observed, threshold, built.settings.abstain_rare_term_zipf, other_subtype=False
        ),
        "other_subtype": [o["other_subtype"] for o in observed if o.get("other_subtype")],
    }
    with tempfile.TemporaryDirectory(prefix="clinrag-abstention-samples-") as tmp:
        from ingest.index import ingest

        settings = common.clinrag_settings(Path(tmp))
        ingest([SAMPLES], settings, progress=False)
        retriever = Retriever(settings)
        retriever.warm_up()
        rows = json.loads((SAMPLES / "example_questions.json").read_text(encoding="utf-8"))
        obs = {
            kind: [observe(retriever, r["question"]) for r in rows if bool(r["expected_file"]) is a]
            for kind, a in (("unanswerable", False), ("answerable", True))
        }
    out["data_samples"] = {
        "unanswerable": len(obs["unanswerable"]),
        "answerable": len(obs["answerable"]),
        "by_zipf": {str(z): rates(obs, threshold, z) for z in ZIPFS},
        "without_subjects": rates(obs, threshold, settings.abstain_rare_term_zipf, "off"),
        "subject_not_required": rates(obs, threshold, settings.abstain_rare_term_zipf, "specific"),
        "flagged_at_3": {
            kind: [[w for w, _ in o["absent"]] for o in obs[kind] if abstains(o, threshold, 3.0)]
            for kind in obs
        },
    }
    return out


def quote_stage(
    settings: Settings, unanswerable: list[Question], answerable: list[Question]
) -> dict[str, Any]:
    """Strong evidence at the quote stage, on the questions the retrieval checks let through."""
    from assistant import policy
    from assistant.cite import quotes_for, source_sentences
    from assistant.pipeline import Assistant
    from assistant.retrieve import Filters

    assistant = Assistant(settings)
    assistant.warm_up(model=False)
    alone = settings.model_copy(update={"quote_min_titled_evidence": 1.0})
    out: dict[str, Any] = {}
    for kind, qs in (("unanswerable", unanswerable), ("answerable", answerable)):
        passed = strong_alone = strong = 0
        weak_alone: list[dict[str, Any]] = []
        for q in qs:
            # the pipeline's own retrieval (with the leading document's extra passages)
            hits = assistant._retrieve(q.question, settings.top_k, Filters(roles=(settings.role,)))
            stem = assistant.retriever.lexical.stem
            if policy.before_generation(q.question, hits, settings, stem) is not None:
                continue
            passed += 1
            quotes = quotes_for(
                q.question, hits, assistant.embed, source_sentences(hits),
                limit=policy.QUOTE_LIMIT * 2,
            )  # fmt: skip
            by_alone = policy.strong_evidence(quotes, alone)
            strong_alone += by_alone
            strong += policy.strong_evidence(quotes, settings)
            if not by_alone:
                weak_alone.append(
                    {
                        "question": q.question,
                        "best_alone": round(max(x.evidence.score for x in quotes), 3),
                        "best_titled": round(max(x.titled for x in quotes), 3),
                    }
                )
        out[kind] = {
            "questions": len(qs),
            "passed_retrieval_checks": passed,
            "strong_alone": strong_alone,
            "strong": strong,
            "weak_alone": weak_alone,
        }
    return out


def generate(
    settings: Settings, unanswerable: list[Question], answerable: list[Question], n: int
) -> dict[str, Any]:
    from assistant.pipeline import Assistant

    assistant = Assistant(settings)
    log("[generate] loading the packaged LLM ...")
    assistant.warm_up()
    out: dict[str, Any] = {}
    for kind, qs in (("unanswerable", unanswerable[:n]), ("answerable", answerable[:n])):
        reasons: dict[str, int] = {}
        abstained = 0
        seconds: list[float] = []
        for q in qs:
            t = time.perf_counter()
            # attribution explains an answer; it does not decide abstention, and on 2 CPU cores
            # it costs ~90 s per answer, so it is left out here
            answer = assistant.ask(q.question, record=False, attribute=False)
            seconds.append(time.perf_counter() - t)
            abstained += answer.abstained
            key = (answer.abstain_reason or "answered").split(" (")[0]
            log(f"[generate] {kind} {len(seconds)}/{len(qs)}: {key} ({seconds[-1]:.1f} s)")
            reasons[key] = reasons.get(key, 0) + 1
        out[kind] = {
            "questions": len(qs),
            "abstained": abstained / max(len(qs), 1),
            "reasons": reasons,
            "seconds_p50": percentile(seconds, 50),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--limit-docs", type=int, default=None, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate", type=int, default=0, metavar="N")
    parser.add_argument(
        "--elsewhere",
        action="store_true",
        help="also measure false abstention on PubMedQA (500) and on data_samples",
    )
    parser.add_argument(
        "--quote-stage",
        action="store_true",
        help="also count strong evidence at the quote stage, with and without the title bar",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    built = common.build_corpus("medquad", args.limit_docs, recipe=False)
    unanswerable, answerable, removals = split_questions(args.questions, args.seed, args.limit_docs)
    threshold = built.settings.abstain_min_relevance
    max_zipf = built.settings.abstain_rare_term_zipf
    log(f"{len(unanswerable)} unanswerable, {len(answerable)} answerable questions")
    work = Path(tempfile.mkdtemp(prefix="clinrag-abstention-"))
    modes: dict[str, Any] = {}
    generated = quoted = None
    try:
        for mode in ("topic", "gold"):
            log(f"[{mode}] removing {len(removals[mode])} documents and retrieving ...")
            modes[mode], settings = run_mode(
                built, removals[mode], unanswerable, answerable, work / mode
            )
            if mode == "topic" and args.generate:
                generated = generate(settings, unanswerable, answerable, args.generate)
            if mode == "topic" and args.quote_stage:
                quoted = quote_stage(settings, unanswerable, answerable)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "corpus": "medquad",
        "seed": args.seed,
        "unanswerable": len(unanswerable),
        "answerable": len(answerable),
        "threshold": threshold,
        "rare_term_zipf": max_zipf,
        "modes": {},
        "machine": common.machine(),
    }
    for mode, m in modes.items():
        observed = m.pop("observed")
        abst, false_abst = rates(observed, threshold, max_zipf)
        without = rates(observed, threshold, max_zipf, subjects="off")
        not_required = rates(observed, threshold, max_zipf, subjects="specific")
        no_subtype = rates(observed, threshold, max_zipf, other_subtype=False)
        relevance_only = rates(observed, threshold)
        table = [[t, *rates(observed, t)] for t in THRESHOLDS]
        best = max(table, key=lambda r: (r[1] - r[2], -abs(r[0] - threshold)))
        un = sorted(o["relevance"] for o in observed["unanswerable"])
        an = sorted(o["relevance"] for o in observed["answerable"])
        result["modes"][mode] = {
            **m,
            "abstain_on_unanswerable": abst,
            "false_abstain_on_answerable": false_abst,
            "without_subject_words": {
                "abstain_on_unanswerable": without[0],
                "false_abstain_on_answerable": without[1],
            },
            "subject_not_required": {
                "abstain_on_unanswerable": not_required[0],
                "false_abstain_on_answerable": not_required[1],
            },
            "without_subtype_check": {
                "abstain_on_unanswerable": no_subtype[0],
                "false_abstain_on_answerable": no_subtype[1],
            },
            "other_subtype": {
                kind: [o["other_subtype"] for o in obs if o.get("other_subtype")]
                for kind, obs in observed.items()
            },
            "relevance_check_only": {
                "abstain_on_unanswerable": relevance_only[0],
                "false_abstain_on_answerable": relevance_only[1],
            },
            "rare_term_calibration": [
                {
                    "zipf": z,
                    "abstain_on_unanswerable": a,
                    "false_abstain_on_answerable": f,
                }
                for z in ZIPFS
                for a, f in [rates(observed, threshold, z)]
            ],
            "relevance_median": {
                "unanswerable": percentile(un, 50),
                "answerable": percentile(an, 50),
            },
            "calibration": [
                {"threshold": t, "abstain_on_unanswerable": a, "false_abstain_on_answerable": f}
                for t, a, f in table
            ],
            "best_threshold": best[0],
        }
    if generated is not None:
        result["generate"] = generated
    if quoted is not None:
        result["quote_stage"] = quoted
    if args.elsewhere:
        result["elsewhere"] = answerable_elsewhere(threshold)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0

    print(
        f"MedQuAD abstention, {len(unanswerable)} unanswerable + {len(answerable)} answerable "
        f"questions (seed {args.seed}), retrieval-stage checks: relevance < {threshold}, "
        f"or no retrieved passage mentions any question word rarer than Zipf {max_zipf}"
    )
    print(
        common.table(
            [
                "removal",
                "docs removed",
                "abstain | unanswerable",
                "false abstain | answerable",
                "relevance only: abstain | false",
                "median rel. unans.",
                "median rel. ans.",
                "best threshold",
            ],
            [
                [
                    mode,
                    m["removed_docs"],
                    m["abstain_on_unanswerable"],
                    m["false_abstain_on_answerable"],
                    "{:.3f} | {:.3f}".format(*m["relevance_check_only"].values()),
                    m["relevance_median"]["unanswerable"],
                    m["relevance_median"]["answerable"],
                    m["best_threshold"],
                ]
                for mode, m in result["modes"].items()
            ],
        )
    )
    for mode, m in result["modes"].items():
        for key, label in (
            ("without_subject_words", "without subject words"),
            ("subject_not_required", "subject words not required"),
            ("without_subtype_check", "without the subtype check"),
        ):
            w = m[key]
            print(
                f"{mode}, {label}: abstain {w['abstain_on_unanswerable']:.3f}, "
                f"false {w['false_abstain_on_answerable']:.3f}"
            )
        for kind, found in m["other_subtype"].items():
            for text in found:
                print(f"{mode}, {kind}, subtype check: {text}")
    print("\ncalibration (share with best relevance < threshold, i.e. abstaining)")
    rows = []
    for i, t in enumerate(THRESHOLDS):
        row: list[Any] = [f"{t:.3f}" + (" *" if abs(t - threshold) < 1e-9 else "")]
        for mode in result["modes"]:
            c = result["modes"][mode]["calibration"][i]
            row += [c["abstain_on_unanswerable"], c["false_abstain_on_answerable"]]
        rows.append(row)
    headers = ["threshold"]
    for mode in result["modes"]:
        headers += [f"{mode}: abstain|unans", f"{mode}: false|ans"]
    print(common.table(headers, rows))
    print("* = the configured abstain_min_relevance")
    print(f"\nrare-term check (relevance threshold {threshold}; zipf 0 = check off)")
    rows = []
    for i, z in enumerate(ZIPFS):
        row = [f"{z:.1f}" + (" *" if abs(z - max_zipf) < 1e-9 else "")]
        for mode in result["modes"]:
            c = result["modes"][mode]["rare_term_calibration"][i]
            row += [c["abstain_on_unanswerable"], c["false_abstain_on_answerable"]]
        rows.append(row)
    print(common.table(["zipf", *headers[1:]], rows))
    if args.elsewhere:
        e = result["elsewhere"]
        d = e["data_samples"]
        print(
            f"\nfalse abstention elsewhere: PubMedQA ({e['pubmedqa']['answerable']} answerable), "
            f"data_samples ({d['answerable']} answerable, {d['unanswerable']} not covered)"
        )
        print(
            common.table(
                ["zipf", "pubmedqa: false|ans", "samples: abstain|unans", "samples: false|ans"],
                [[z, e["pubmedqa"]["false_abstain"][str(z)], *d["by_zipf"][str(z)]] for z in ZIPFS],
            )
        )
        print(
            "without subject words at the configured zipf: PubMedQA false "
            f"{e['pubmedqa']['false_abstain_without_subjects']:.3f}, samples abstain | false "
            "{:.3f} | {:.3f}".format(*d["without_subjects"])
        )
        print(
            "subject words not required: PubMedQA false "
            f"{e['pubmedqa']['false_abstain_subject_not_required']:.3f}, samples abstain | "
            "false {:.3f} | {:.3f}".format(*d["subject_not_required"])
        )
        print(
            "without the subtype check: PubMedQA false "
            f"{e['pubmedqa']['false_abstain_without_subtype_check']:.3f}; subtype check on "
            f"PubMedQA: {e['pubmedqa']['other_subtype']}"
        )
        print("PubMedQA abstentions at zipf 3.0, words absent:", e["pubmedqa"]["flagged_at_3"])
        print("data_samples abstentions at zipf 3.0, words absent:", d["flagged_at_3"])
    if generated is not None:
        print("\nfull Assistant.ask (topic removal, packaged LLM, record=False)")
        print(
            common.table(
                ["questions", "n", "abstained", "p50 s", "outcomes"],
                [
                    [
                        kind,
                        g["questions"],
                        g["abstained"],
                        g["seconds_p50"],
                        json.dumps(g["reasons"]),
                    ]
                    for kind, g in generated.items()
                ],
            )
        )
    if quoted is not None:
        print(
            "\nquote stage (topic removal): of the questions past the retrieval checks, how many "
            "are quoted on strong evidence (the rest: the model drafts, unverified = declined)"
        )
        print(
            common.table(
                ["questions", "n", "passed checks", "strong: sentence alone", "strong: shipped"],
                [
                    [
                        kind,
                        q["questions"],
                        q["passed_retrieval_checks"],
                        q["strong_alone"],
                        q["strong"],
                    ]
                    for kind, q in quoted.items()
                ],  # fmt: skip
            )
        )
        for kind, q in quoted.items():
            for w in q["weak_alone"]:
                print(f"  {kind}: alone {w['best_alone']}, titled {w['best_titled']}: "
                      f"{w['question']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
