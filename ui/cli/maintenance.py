"""``clinrag backup DEST``, ``restore SRC``, ``reindex``: printing over ``services``."""

from __future__ import annotations

import argparse
import json
import sys

from core.config import Settings
from core.errors import ClinragError
from services import backup
from services.access import operator
from services.reindex import rebuild_index


def maintenance_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``clinrag backup|restore|reindex``; print a summary (or JSON); return the exit code."""
    as_json = bool(getattr(args, "json", False))
    actor = operator(settings.user)
    if args.command == "backup":
        summary = backup.backup(
            settings, actor, args.dest, include_keys=bool(getattr(args, "include_keys", False))
        )
        audit = summary.get("audit") or {}
        ok = not audit or audit["verify"]["ok"]
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            man = summary.get("manifest") or {}
            print(f"Backup written to {summary['backup_dir']}")
            if audit:
                state = "verified" if ok else f"DOES NOT VERIFY: {audit['verify']['reason']}"
                print(f"  audit log: {audit['records']} records, {state}")
            if man:
                print(f"  manifest: {man['documents']} documents, {man['chunks']} chunks")
            print(
                f"  users: {'yes' if summary['users'] else 'none'}; uploads: {summary['uploads']}"
            )
            print(f"  {summary['keys']['note']}")
            print("  The vector store is not copied: restore rebuilds it from the manifest.")
        if not ok:
            print(
                "clinrag: the live audit log fails verification; the backup was kept as "
                "evidence. Run `clinrag audit verify` and investigate.",
                file=sys.stderr,
            )
        return 0 if ok else 1
    if args.command == "restore":
        summary = backup.restore(settings, actor, args.src, key=getattr(args, "key", None))
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"Restored {summary['backup_dir']} into {summary['home']}")
            if summary.get("audit"):
                print(f"  audit log: {summary['audit']['records']} records, verified")
            if summary.get("index"):
                idx = summary["index"]
                print(
                    f"  index rebuilt from the manifest: {idx['documents']} documents, "
                    f"{idx['chunks']} chunks ({idx['seconds']:.0f} s)"
                )
        return 0
    if args.command == "reindex":
        summary = rebuild_index(settings, actor, fresh=bool(getattr(args, "fresh", False)))
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"Rebuilt the vector index from the manifest: {summary['documents']} documents, "
                f"{summary['chunks']} chunks ({summary['seconds']:.0f} s)."
            )
            if summary["pending_rolled_back"]:
                print(
                    f"  {summary['pending_rolled_back']} half-written documents were rolled back;"
                    " ingest their folder again."
                )
            if summary["old_store_moved_to"]:
                print(
                    f"  The old store is in {summary['old_store_moved_to']}; delete it when done."
                )
        return 0
    raise ClinragError(f"Unknown maintenance command {args.command!r}.")
