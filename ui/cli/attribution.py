"""``clinrag attribution fit``: fit attention-attribution weights for this home's model.

``ui.cli.main`` owns the ``attribution`` command; it adds ``fit`` with
``add_fit_parser(attribution_subparsers)`` and hands ``fit`` to :func:`fit_command`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from core.config import Settings


def add_fit_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    fit = sub.add_parser(
        "fit",
        help="fit per-head attention weights for the configured model on this library",
        description=(
            "Answer each question from the library with the configured model, ablate its "
            "source sentences (--ablations random masks), and fit one weight per attention "
            "head so that attention predicts the ablation effects. Offline; slow (one forward "
            "pass per mask and question), cached under HOME/cache/attribution_fit so a rerun "
            "only pays for new questions. Writes HOME/attribution/<model hash>.json (or "
            "--out), which attribution = 'auto' then uses for this model."
        ),
    )
    fit.add_argument(
        "--questions",
        type=Path,
        required=True,
        help="a text file (one question per line), a .jsonl file (field 'question'), or an "
        "evaluation folder with questions.jsonl (the attribution benchmark's sample is left out)",
    )
    fit.add_argument("--limit", type=int, help="use at most this many questions")
    fit.add_argument(
        "--corpus-docs",
        type=int,
        help="with an evaluation folder: the library holds only its first N corpus rows, so "
        "use only questions whose gold passages are among them (as the benchmark's MedQuAD)",
    )
    fit.add_argument(
        "--corpus", default="", help="name of this library's questions in the weights file"
    )
    fit.add_argument(
        "--cache",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also fit on the examples cached in DIR (another home's cache/attribution_fit, "
        "collected on another library with the same settings); repeatable",
    )
    fit.add_argument("--ablations", type=int, default=32, help="random masks per answer")
    fit.add_argument("--k", type=int, help="passages retrieved per question (default top_k)")
    fit.add_argument("--max-new-tokens", type=int, help="answer length (default the setting)")
    fit.add_argument("--out", type=Path, help="weights file or folder to write")
    fit.add_argument(
        "--cached-only",
        action="store_true",
        help="fit on the questions already collected (cached) and skip the others",
    )
    fit.add_argument(
        "--target",
        choices=("sentence", "answer"),
        default="answer",
        help="fit the whole answer's log-probability (the shipped weights; better held-out "
        "top-3 drops, docs/benchmarks.md) or each answer sentence's",
    )
    fit.add_argument(
        "--nonneg", action="store_true", help="keep every head's weight at zero or above"
    )
    fit.add_argument(
        "--prior",
        type=Path,
        help="a weights file fitted before, on other answers, to shrink towards",
    )
    fit.add_argument("--json", action="store_true")
    return fit


def fit_command(args: argparse.Namespace, settings: Settings) -> int:
    from services.attribution_fit import fit_weights, load_questions

    if args.max_new_tokens:
        settings = settings.model_copy(update={"max_new_tokens": args.max_new_tokens})
    questions = load_questions(args.questions, limit=args.limit, corpus_docs=args.corpus_docs)
    report = fit_weights(
        settings,
        questions,
        out=args.out,
        n_ablations=args.ablations,
        k=args.k,
        cached_only=args.cached_only,
        corpus=args.corpus or args.questions.stem,
        extra_caches=args.cache,
        fit_options={"target": args.target, "nonneg": args.nonneg},
        prior=args.prior,
        command="clinrag " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        progress=None if args.json else lambda m: print(m, file=sys.stderr, flush=True),
    )
    summary = {
        "weights": str(report.path),
        "examples": report.examples,
        "skipped": report.skipped,
        "data_hash": report.data_hash,
        "fit": report.stats,
        "seconds": report.seconds,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"Wrote {report.path}: {report.examples} answers ({report.skipped} skipped)")
        print(f"cross-validated correlation by ridge: {report.stats.get('cv_correlation')}")
    return 0
