"""`clinrag audit ...`: verify, list, show, export and replay the audit log (over ``services``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from textwrap import shorten
from typing import Any

from core.config import Settings
from core.errors import ClinragError, NotFoundError
from services import audit
from services.access import operator


def run_audit_command(args: argparse.Namespace, settings: Settings) -> int:
    actor = operator(settings.user)
    command = args.audit_command
    if command == "verify":
        anchors = tuple(str(path) for path in args.anchor or ())
        result = audit.verify(settings, actor, anchors)
        if result.ok:
            anchored = " and anchor" if anchors or settings.audit_anchor else ""
            print(f"OK: {result.count} records, chain, checkpoints{anchored} intact.")
            print(f"  {result.reason}")
            if any(spec.startswith("syslog") for spec in settings.audit_anchor) and not anchors:
                print(
                    "  Heads are also witnessed in syslog, which verify cannot read: check "
                    "against the SIEM's copy with --anchor FILE."
                )
            return 0
        first = "-" if result.first_bad_seq is None else result.first_bad_seq
        print(f"TAMPERED: first bad record {first}: {result.reason}")
        return 1
    if command == "list":
        query = audit.Query(since=args.since, user=args.user, event=args.event, limit=args.limit)
        records = audit.find(settings, actor, query)
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2))
            return 0
        for r in records:
            print(f"{r.seq:6}  {r.ts}  {r.event:12} {r.user:12} {_summary(r.payload)}")
        print(audit.attribution_coverage(settings, actor, query).line())
        return 0
    if command == "show":
        try:
            record = audit.get(settings, actor, args.id)
        except NotFoundError as exc:
            print(exc, file=sys.stderr)
            return exc.exit_code
        # an answer's attribution is its own record, linked to it: show it with the answer,
        # whoever asked and from wherever
        state = (
            audit.answer_attribution(settings, actor, record.seq)
            if record.event == "answer"
            else None
        )
        data = record.to_dict()
        if args.json:
            if state is not None:
                data["attribution_status"] = state.to_dict()
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return 0
        print(json.dumps(data, indent=2, ensure_ascii=False))
        if state is not None:
            print()
            print("\n".join(attribution_lines(state)))
        return 0
    if command == "export":
        destination = str(args.output) if args.output else "stdout"
        if args.output:
            # Refused before the export is recorded; _write_new refuses again at the open.
            _refuse_existing(args.output)
        exported = audit.export(
            settings, actor, args.format, audit.Query(since=args.since), destination=destination
        )
        if args.output:
            _write_new(args.output, exported.data)
        else:
            sys.stdout.write(exported.data.decode("utf-8"))
        return 0
    if command == "replay":
        report = audit.replay(settings, actor, args.id)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print("\n".join(report.readable()))
        return 0 if report.unchanged else 3
    raise AssertionError(command)


def attribution_lines(state: audit.AnswerAttribution, top: int = 3) -> list[str]:
    """An answer's attribution for people: per answer sentence the source sentences that
    drove it, with their scores, and the faithfulness check in words; or why there is none."""
    if state.status != "attributed":
        return [f"ATTRIBUTION: {state.line()}"]
    from ui.render import faithfulness_text

    lines = [f"ATTRIBUTION: {state.line()}"]
    for row in state.per_sentence(top=top):
        text = shorten(row["text"], 90) if row["text"] else "(text not recorded)"
        lines.append(f"  answer sentence {row['index']}: {text}")
        for src in row["sources"]:
            label = f"[source {src['n']}]" if src["n"] is not None else "[source ?]"
            lines.append(f"    {src['score']:+.3f}  {label} {shorten(str(src['text'] or ''), 90)}")
    faithfulness = (state.attribution or {}).get("faithfulness")
    lines.append("  faithfulness: " + faithfulness_text(faithfulness))
    return lines


class ExportTargetError(ClinragError):
    """The export's output path exists (or is a link): exports never overwrite."""


def _refuse_existing(path: Path) -> None:
    if path.is_symlink() or path.exists():
        raise ExportTargetError(
            f"{path} already exists (or is a link); exports never overwrite a file or follow "
            "a link. Choose a new file name."
        )


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` and write ``data``, never through a link and never over a file.

    O_EXCL makes the open fail on any existing name, a dangling link included, so a link
    planted at the path between the check and the open cannot redirect the audit data (onto
    a file the attacker reads, or over the log itself). O_NOFOLLOW says the same for systems
    whose O_EXCL does not cover links.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise ExportTargetError(
            f"{path} appeared while exporting (a file or a link); nothing was written to it. "
            "The export is recorded; export again to a new file name."
        ) from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _summary(payload: dict[str, Any]) -> str:
    if "answer" in payload:
        q = payload.get("question") or f"#{str(payload.get('question_hash', ''))[:10]}"
        flag = " [abstained]" if payload.get("abstained") else ""
        return f"{q[:60]!r}{flag}"
    return json.dumps(payload)[:80]
