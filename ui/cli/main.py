"""The `clinrag` command. Settings are loaded here, once, and passed down.

Each sub-command parses its arguments, calls one ``services`` function and prints the result.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from textwrap import shorten
from typing import TYPE_CHECKING, Any

from core.config import Settings, apply_offline_environment, ensure_home, load_settings
from core.errors import ClinragError, NotFoundError
from core.types import Actor, Answer
from services.access import operator

if TYPE_CHECKING:
    from assistant.pipeline import Assistant


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clinrag", description=__doc__)
    p.add_argument("--config", type=Path, help="settings file (default ./clinrag.toml if present)")
    p.add_argument("--home", type=Path, help="data folder (default $CLINRAG_HOME or ./.clinrag)")
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="add or update documents in the library")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument("--prune", action="store_true", help="remove documents whose files are gone")
    ing.add_argument(
        "--if-empty", action="store_true", help="do nothing if the library has documents"
    )
    ing.add_argument("--json", action="store_true")

    src = sub.add_parser("sources", help="list the documents in the library")
    src.add_argument("--json", action="store_true")

    rem = sub.add_parser("remove", help="remove one document from the library")
    rem.add_argument("doc_id")

    ask = sub.add_parser("ask", help="ask a question")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true")
    ask.add_argument("--k", type=int, help="number of passages to retrieve")
    ask.add_argument(
        "--no-attribution",
        action="store_true",
        help="print and record the answer without attributing it (it stays pending)",
    )
    ask.add_argument(
        "--no-service",
        action="store_true",
        help="answer in this process even when clinrag serve is running",
    )
    # Self-asserted, like everything on this command line (whoever runs it can read
    # CLINRAG_HOME): the answer record also carries the operating-system account that ran it.
    ask.add_argument(
        "--user",
        help="asker recorded in the audit log, as stated (the record also names the "
        "operating-system account that ran the command)",
    )
    ask.add_argument(
        "--role",
        help="asker's role (clinician, auditor, admin): decides which restricted documents "
        "are searched; stated, not checked",
    )

    att = sub.add_parser("attribution", help="attribution of recorded answers")
    attsub = att.add_subparsers(dest="attribution_command", required=True)
    resume = attsub.add_parser(
        "resume",
        help="attribute every answer recorded without its attribution (after a restart, or "
        "asked with --no-attribution), or record why it cannot be",
    )
    resume.add_argument("--json", action="store_true")
    from ui.cli.attribution import add_fit_parser

    add_fit_parser(attsub)

    aud = sub.add_parser("audit", help="verify, list, show, export or replay audit records")
    asub = aud.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser("verify", help="check the hash chain, checkpoints and anchor")
    ver.add_argument(
        "--anchor",
        type=Path,
        action="append",
        help="a file of witnessed heads to check against (repeatable; syslog exports work)",
    )
    lst = asub.add_parser("list", help="list records (filters: --since, --user, --event)")
    lst.add_argument("--since", help="ISO date or time, e.g. 2026-11-01")
    lst.add_argument("--user")
    lst.add_argument("--event")
    lst.add_argument("--limit", type=int)
    lst.add_argument("--json", action="store_true")
    show = asub.add_parser(
        "show", help="one record in full, as JSON; an answer's attribution (or why none) follows"
    )
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    exp = asub.add_parser(
        "export", help="export records as FHIR, CSV or JSONL (recorded before it is written)"
    )
    exp.add_argument("--format", choices=["fhir", "csv", "jsonl"], default="jsonl")
    exp.add_argument("--output", type=Path, help="file to write (default stdout)")
    exp.add_argument("--since")
    rep = asub.add_parser("replay", help="re-run a recorded answer and compare")
    rep.add_argument("id", type=int)
    rep.add_argument("--json", action="store_true")
    bak = sub.add_parser("backup", help="back up the audit log, manifest and users to a folder")
    bak.add_argument("dest", type=Path, help="a new or empty folder outside CLINRAG_HOME")
    bak.add_argument(
        "--include-keys",
        action="store_true",
        help="also copy the audit signing key (then protect the backup like the key)",
    )
    bak.add_argument("--json", action="store_true")
    res = sub.add_parser("restore", help="restore a backup into an empty home, rebuild the index")
    res.add_argument("src", type=Path, help="a folder written by clinrag backup")
    res.add_argument("--key", type=Path, help="the audit signing key (not in backups by default)")
    res.add_argument("--json", action="store_true")
    rei = sub.add_parser("reindex", help="rebuild the vector index from the manifest")
    rei.add_argument(
        "--fresh",
        action="store_true",
        help="move store/ aside first (when it cannot be opened; stop the app)",
    )
    rei.add_argument("--json", action="store_true")

    from ui.cli.eval import add_eval_parser
    from ui.cli.serve import add_serve_parser
    from ui.cli.users import add_parser as add_users_parser

    add_serve_parser(sub)

    add_eval_parser(sub)
    add_users_parser(sub)
    return p


# Commands after which the process may leave without the interpreter's teardown: they write
# nothing but audit records, each committed when appended. Once torch and the model
# libraries are loaded, that teardown (module clean-up, native destructors, no Python frame)
# takes seconds: 6.3 s against 0.3 s for one `clinrag ask` at load 3 (docs/benchmarks.md,
# CLI start-up).
QUICK_EXIT_COMMANDS = frozenset({"ask"})


def run() -> None:
    """The ``clinrag`` console entry point."""
    sys.exit(main(exit_quickly=True))


def main(argv: list[str] | None = None, *, exit_quickly: bool = False) -> int:
    """Run one command and return its exit code. ``exit_quickly`` (the console entry only:
    it ends the process) leaves right after a command of :data:`QUICK_EXIT_COMMANDS`."""
    apply_offline_environment()
    os.umask(0o077)  # everything clinrag writes (store, audit log, keys) is owner-only
    args = _parser().parse_args(argv)
    code = _dispatch(args)
    if exit_quickly and args.command in QUICK_EXIT_COMMANDS:
        # Python-level clean-up (logging, progress bars, ...) still runs; only the
        # interpreter's own teardown is skipped
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, overrides={"home": args.home})
        ensure_home(settings)
        handler = {
            "ingest": cmd_ingest,
            "sources": cmd_sources,
            "remove": cmd_remove,
            "ask": cmd_ask,
            "audit": cmd_audit,
            "attribution": cmd_attribution,
            "eval": cmd_eval,
            "backup": cmd_maintenance,
            "restore": cmd_maintenance,
            "reindex": cmd_maintenance,
            "users": cmd_users,
            "serve": cmd_serve,
        }[args.command]
        return handler(args, settings)
    except ClinragError as exc:
        print(f"clinrag: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clinrag: interrupted", file=sys.stderr)
        return 130


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from services import library

    if args.if_empty and not library.is_empty(settings):
        print(
            f"Library in {settings.home} already has documents; skipping ingest.", file=sys.stderr
        )
        return 0
    summary = library.add(
        settings, operator(settings.user), args.paths, source="cli", prune=args.prune
    )
    data = summary.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(
            f"added {data['added']}, updated {data['updated']}, unchanged {data['unchanged']}, "
            f"removed {data['removed']}, failed {data['failed']}; {data['chunks']} chunks written "
            f"(index version {data['index_version']})"
        )
        for r in summary.results:
            if r.status == "failed":
                print(f"  FAILED {r.path}: {r.reason} ({r.detail})")
            for w in r.warnings:
                print(f"  warning {r.path}: {w}")
    return 1 if summary.failed else 0


def cmd_sources(args: argparse.Namespace, settings: Settings) -> int:
    from services import library

    docs = library.documents(settings, operator(settings.user))
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    if not docs:
        print("The library is empty. Add documents with: clinrag ingest PATH")
    for d in docs:
        meta = d["metadata"]
        extra = ", ".join(x for x in (meta.get("issuing_body"), meta.get("publication_date")) if x)
        print(
            f"{d['doc_id']:45} {d['n_chunks']:4} chunks  {shorten(d['title'], 60)}"
            + (f"  ({extra})" if extra else "")
        )
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    from services import library

    try:
        library.remove(settings, operator(settings.user), args.doc_id)
    except NotFoundError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    print(f"Removed {args.doc_id}.")
    return 0


def answer_json(answer: Answer) -> dict[str, Any]:
    from assistant.policy import display_labels, removed_note

    gen = answer.generation
    labels = display_labels(answer)
    return {
        "question": answer.question,
        "answer": answer.answer,
        "abstained": answer.abstained,
        "abstain_reason": answer.abstain_reason,
        "mode": str(answer.mode),
        "decision": asdict(answer.decision) if answer.decision else None,
        "unverified_sentences": [s.text for s in answer.unverified],
        "removed_note": removed_note(answer),
        "sentences": [
            {
                "text": s.text,
                "citations": s.citations,  # source numbers (retrieved[n - 1])
                "labels": [labels[n] for n in s.citations if n in labels],  # as displayed
                "supported": s.supported,
                "support": s.support,
                "origin": str(s.origin),
            }
            for s in answer.sentences
        ],
        "citations": [asdict(c) for c in answer.citations],
        "evidence": [asdict(e) for e in answer.evidence],
        "nearest_documents": answer.nearest_documents,
        "model": asdict(gen.model) if gen else None,
        "prompt_hash": gen.prompt_hash if gen else None,
        "prompt_template": gen.template if gen else None,
        "generated_text": gen.text if gen else None,
        "attribution": answer.attribution,
        "timings": {k: round(v, 4) for k, v in answer.timings.items()},
        "audit_id": answer.audit_id,
    }


def cmd_ask(
    args: argparse.Namespace, settings: Settings, assistant: Assistant | None = None
) -> int:
    """``assistant``: a warm one (``clinrag serve`` passes its own); without it the question
    goes to the running service if there is one, else an assistant is loaded here."""
    from services import ask

    if assistant is None:
        if not getattr(args, "no_service", False):
            from ui.cli.serve import ask_via_service

            code = ask_via_service(args, settings)
            if code is not None:
                return code
        assistant = ask.open_assistant(settings)
        # one question: the model loads only if this answer needs it (a quoted one does not)
        assistant.warm_up(model=False)
    # The draft is unchecked: it streams to stderr, so stdout carries only the checked answer
    # (what a script or a pipe takes as clinrag's answer).
    stream = None if args.json else (lambda t: print(t, end="", file=sys.stderr, flush=True))
    if stream:
        print("Generating (unverified until checked against the sources)...", file=sys.stderr)
    actor = Actor(args.user or settings.user, args.role or settings.role)
    # The answer is recorded (and only then shown); attribution follows as its own record.
    answer = ask.ask(assistant, actor, args.question, k=args.k, on_token=stream)
    if not args.json:
        print("\n", file=sys.stderr)
        print_answer(answer)
        # on stdout (a pipe too) before attribution starts: nobody waits for it to read
        sys.stdout.flush()
    if settings.attribution != "off" and not args.no_attribution and not answer.abstained:
        if not args.json:
            print(f"\nattributing ({ask.attribution_plan(assistant)})...", file=sys.stderr)
        try:
            # the same path as the app: recorded as its own record linked by answer_id,
            # or as a failure with its reason
            ask.attribute(assistant, actor, answer)
        except ClinragError:
            raise
        except Exception as exc:
            # the answer stands (shown and recorded); only its attribution is missing
            print(f"attribution failed (recorded): {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps(answer_json(answer), indent=2))
            return 1
        if answer.attribution is not None and not args.json:
            print_attribution(answer)
        elif answer.attribution is None and not args.json:
            print("no attribution for this answer (why is in the audit log).", file=sys.stderr)
    if args.json:
        print(json.dumps(answer_json(answer), indent=2))
    return 0


def print_attribution(answer: Answer) -> None:
    from assistant.policy import display_labels
    from ui.render import faithfulness_text

    att = answer.attribution
    if att is None:
        return
    labels = display_labels(answer)
    order = sorted(range(len(att["scores"])), key=lambda i: -att["scores"][i])[:3]
    print("ATTRIBUTION (source sentences that drove the answer):")
    for i in order:
        src = att["sources"][i]
        # the labels the answer shows; a source it does not cite has none
        label = f"[{labels[src['n']]}]" if src["n"] in labels else "[not cited]"
        print(f"  {att['scores'][i]:+.2f}  {label} {src['text'][:100]}")
    print("faithfulness: " + faithfulness_text(att.get("faithfulness")))


def print_answer(answer: Answer) -> None:
    if answer.decision is not None:
        from assistant.decide import STATED_METHOD, describe
        from ui.render import decision_method_text

        print(describe(answer.decision, answer))
        if answer.decision.method.startswith(STATED_METHOD):
            # how a guideline's statement decided it, in words (a fitted model's method name
            # is in --json)
            print(f"  {decision_method_text(answer.decision.method)}")
    from assistant.policy import display_labels, removed_note

    # the numbers a reader sees run 1, 2, 3 in reading order; sentences keep source numbers
    labels = display_labels(answer)

    def mark(n: int) -> str:
        return f"[{labels[n]}]" if n in labels else ""

    if answer.abstained:
        print(f"ANSWER: {answer.answer}  [{answer.abstain_reason}]")
    else:
        label = {
            "quoted": "quoted from the guideline",
            "combined": "checked against the sources, with the guideline's own words",
        }.get(str(answer.mode), "checked against the sources")
        print(f"ANSWER ({label}):")
        for s in answer.sentences:  # every one verified or quoted: nothing else is shown
            print(f"  {s.text} {''.join(mark(n) for n in dict.fromkeys(s.citations))}")
    note = removed_note(answer)
    if note:
        print(f"  ({note})")
    if answer.citations:
        print("\nSOURCES:")
        for c in answer.citations:
            where = ", ".join(x for x in (c.section, f"p. {c.page}" if c.page else "") if x)
            print(f"  {mark(c.n)} {c.title} ({where}) doc={c.doc_id}")
    if answer.evidence:
        print("\nKEY EVIDENCE (the guideline's own words):")
        for e in answer.evidence:
            page = f", p. {e.page}" if e.page else ""
            print(f'  {mark(e.n)} "{e.text}" ({e.title}{page})')
    if answer.abstained and answer.nearest_documents:
        print("\nNEAREST DOCUMENTS:")
        for d in answer.nearest_documents:
            print(f"  {d['doc_id']}: {d['title']} (relevance {d['relevance']:.2f})")
    if answer.audit_id is not None:
        print(f"\naudit record: {answer.audit_id}")


def cmd_attribution(args: argparse.Namespace, settings: Settings) -> int:
    if args.attribution_command == "fit":
        from ui.cli.attribution import fit_command

        return fit_command(args, settings)
    if args.attribution_command != "resume":  # other sub-commands are dispatched elsewhere
        return 2
    from services import ask
    from services.attribution_queue import State, pending_answers, resume

    pending = pending_answers(settings)
    print(f"{len(pending)} answers await attribution.", file=sys.stderr)
    counts = {str(s): 0 for s in (State.ATTRIBUTED, State.FAILED, State.SKIPPED)}
    reasons: dict[int, str] = {}
    if pending:
        assistant = ask.open_assistant(settings)
        assistant.warm_up()
        for i, (record, outcome) in enumerate(resume(assistant, pending), start=1):
            counts[str(outcome.state)] += 1
            if outcome.reason:
                reasons[record.seq] = outcome.reason
            why = f": {outcome.reason}" if outcome.reason else ""
            print(f"[{i}/{len(pending)}] answer {record.seq} {outcome.state}{why}", file=sys.stderr)
    if args.json:
        print(json.dumps(counts | {"reasons": reasons}, indent=2))
    else:
        print(
            f"attributed {counts['attributed']}, failed {counts['failed']}, "
            f"skipped {counts['skipped']} (being attributed elsewhere, or settled meanwhile)"
        )
    return 0


def cmd_maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from ui.cli.maintenance import maintenance_command

    return maintenance_command(args, settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ui.cli.serve import serve_command

    return serve_command(args, settings)


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from ui.cli.users import users_command

    return users_command(args, settings)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ui.cli.eval import eval_command

    return eval_command(args, settings)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from ui.cli.audit import run_audit_command

    return run_audit_command(args, settings)


if __name__ == "__main__":
    run()
