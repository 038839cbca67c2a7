"""`clinrag audit ...`: verify, list, show, export and replay the audit log (over ``services``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.config import Settings
from core.errors import NotFoundError
from services import audit
from services.access import operator


def run_audit_command(args: argparse.Namespace, settings: Settings) -> int:
    actor = operator(settings.user)
    command = args.audit_command
    if command == "verify":
        result = audit.verify(settings, actor)
        if result.ok:
            print(f"OK: {result.count} records, chain and checkpoints intact.")
            return 0
        print(f"TAMPERED: first bad record {result.first_bad_seq}: {result.reason}")
        return 1
    if command == "list":
        query = audit.Query(since=args.since, user=args.user, event=args.event, limit=args.limit)
        records = audit.find(settings, actor, query)
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2))
            return 0
        for r in records:
            print(f"{r.seq:6}  {r.ts}  {r.event:12} {r.user:12} {_summary(r.payload)}")
        return 0
    if command == "show":
        try:
            record = audit.get(settings, actor, args.id)
        except NotFoundError as exc:
            print(exc, file=sys.stderr)
            return exc.exit_code
        print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if command == "export":
        destination = str(args.output) if args.output else "stdout"
        exported = audit.export(
            settings, actor, args.format, audit.Query(since=args.since), destination=destination
        )
        if args.output:
            args.output.write_bytes(exported.data)
            args.output.chmod(0o600)
        else:
            sys.stdout.write(exported.data.decode("utf-8"))
        return 0
    if command == "replay":
        report = audit.replay(settings, actor, args.id)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        elif report.unchanged:
            print(f"UNCHANGED: record {args.id} replays to the same answer from the same sources.")
        else:
            print(f"CHANGED: record {args.id}:")
            for d in report.differences:
                print(f"  - {d}")
        return 0 if report.unchanged else 3
    raise AssertionError(command)


def _summary(payload: dict[str, Any]) -> str:
    if "answer" in payload:
        q = payload.get("question") or f"#{str(payload.get('question_hash', ''))[:10]}"
        flag = " [abstained]" if payload.get("abstained") else ""
        return f"{q[:60]!r}{flag}"
    return json.dumps(payload)[:80]
