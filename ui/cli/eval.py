"""``clinrag eval FOLDER``: the sub-command's arguments and handler.

Wired into ``ui.cli.main`` with::

    from ui.cli.eval import add_eval_parser, eval_command
    add_eval_parser(sub)                       # sub = parser.add_subparsers(...)
    handler = {..., "eval": eval_command}[args.command]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import Settings
from evaluation.runner import BASELINES, DEFAULT_METRICS, METRICS, EvalOptions


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return n


def _shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("write K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError("K must be between 1 and N, e.g. 1/2")
    return k, n


def add_eval_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``eval`` to a ``parser.add_subparsers()`` object; returns the new parser."""
    p = subparsers.add_parser(
        "eval",
        help="measure retrieval, answers, citations and attribution on a question set",
        description=(
            "Evaluate clinrag on FOLDER/corpus.jsonl and FOLDER/questions.jsonl, or on a "
            "question set: FOLDER/manifest.json naming a library folder of real files (relative "
            "to FOLDER) and its questions file, whose questions may carry a type (guideline, "
            "yes_no, off_library) and a key_fact, as in evaluation/sets/clinician. The corpus "
            "or library is ingested once into an isolated store under HOME/eval/<its hash>; "
            "per-question results are cached there, so an interrupted run resumes. The cache "
            "is keyed by the answer settings, not the code: after a pipeline change, --fresh."
        ),
    )
    p.add_argument(
        "folder",
        type=Path,
        help="folder with corpus.jsonl and questions.jsonl, or with a question set's manifest.json",
    )
    p.add_argument("--limit", type=_positive, help="evaluate a fixed seeded sample of N questions")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument(
        "--metrics",
        type=_csv,
        default=DEFAULT_METRICS,
        help=f"comma-separated, from {','.join(METRICS)} (default {','.join(DEFAULT_METRICS)}); "
        "attribution is slow",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--report", type=Path, metavar="DIR", help="write report.md and PNG plots")
    p.add_argument(
        "--baseline", choices=BASELINES, help="also evaluate the LangChain tutorial recipe"
    )
    p.add_argument(
        "--attribution-methods",
        type=_csv,
        default=(),
        help="with --metrics attribution: comma-separated methods (surrogate, shap, loo, "
        "similarity, random); default the configured attribution method",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="evaluate only every N-th question of the sample, from the K-th: run K=1..N in "
        "parallel processes sharing HOME, then once without --shard for the whole report",
    )
    p.add_argument(
        "--unanswerable",
        type=_positive,
        default=0,
        metavar="N",
        help="leave the topics of N sampled questions out of the library (their gold "
        "documents and every document with the same title), to measure abstention",
    )
    p.add_argument("--fresh", action="store_true", help="recompute results even if they are cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def eval_command(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.runner import run_evaluation

    try:
        options = EvalOptions(
            folder=args.folder,
            limit=args.limit,
            seed=args.seed,
            metrics=tuple(args.metrics),
            baseline=args.baseline,
            report=args.report,
            attribution_methods=tuple(args.attribution_methods),
            progress=not args.no_progress,
            fresh=args.fresh,
            shard=args.shard,
            unanswerable=args.unanswerable,
        )
    except ValueError as exc:
        print(f"clinrag eval: {exc}", file=sys.stderr)
        return 2
    try:
        summary, records = run_evaluation(options, settings)
    except KeyboardInterrupt:
        print(
            "clinrag eval: interrupted; results so far are cached, run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        return 130
    except ValueError as exc:
        print(f"clinrag eval: {exc}", file=sys.stderr)
        return 2
    if options.report is not None:
        from evaluation.report import write_report

        files = write_report(summary, records, options.report)
        summary["report"] = [str(f) for f in files]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from evaluation.report import render_markdown

        print(render_markdown(summary))
        if options.report is not None:
            print(f"Report written to {options.report / 'report.md'}")
    return 0
