"""`clinrag audit ...`: verify, list, show, export and replay the audit log."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Any

from assistant.replay import audit_log, replay
from core.config import Settings


def run_audit_command(args: argparse.Namespace, settings: Settings) -> int:
    log = audit_log(settings)
    command = args.audit_command
    if command == "verify":
        result = log.verify()
        log.append(
            "verify",
            settings.user,
            settings.role,
            {
                "ok": result.ok,
                "count": result.count,
                "first_bad_seq": result.first_bad_seq,
                "reason": result.reason,
            },
        )
        if result.ok:
            print(f"OK: {result.count} records, chain and checkpoints intact.")
            return 0
        print(f"TAMPERED: first bad record {result.first_bad_seq}: {result.reason}")
        return 1
    if command == "list":
        records = log.list(since=args.since, user=args.user, event=args.event, limit=args.limit)
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2))
            return 0
        for r in records:
            print(f"{r.seq:6}  {r.ts}  {r.event:12} {r.user:12} {_summary(r.payload)}")
        return 0
    if command == "show":
        record = log.get(args.id)
        if record is None:
            print(f"No audit record {args.id}.", file=sys.stderr)
            return 1
        print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if command == "export":
        from audit.log import export

        records = log.list(since=args.since)
        buffer = io.StringIO()
        if args.format == "fhir":
            json.dump(export.to_fhir(records), buffer, indent=2)
        elif args.format == "csv":
            export.to_csv(records, buffer)
        else:
            export.to_jsonl(records, buffer)
        if args.output:
            args.output.write_text(buffer.getvalue(), encoding="utf-8")
            args.output.chmod(0o600)
        else:
            sys.stdout.write(buffer.getvalue())
        log.append(
            "export",
            settings.user,
            settings.role,
            {
                "format": args.format,
                "records": len(records),
                "destination": str(args.output) if args.output else "stdout",
            },
        )
        return 0
    if command == "replay":
        report = replay(settings, args.id)
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
