"""kill -9 during audit appends: no acknowledged record may be lost, the log must verify.

    .venv/bin/python -m benchmarks.kill_audit

Each round starts fresh writer processes on one audit log (``audit.log.AuditLog``, the real
SQLite database, checkpoint and history files). A writer appends ``answer`` records in a loop
and prints ``seq nonce latency_us`` after each ``append()`` returns: that line is the
acknowledgement an answer would be shown on. At a random moment (uniform in ``[0,
--max-delay]`` seconds after the writers are ready) every writer gets SIGKILL. Then the log
is opened afresh and checked: ``verify()`` must pass (chain, head checkpoint, signed history)
and every acknowledged seq must be there with its nonce. Records that committed but were not
acknowledged yet are allowed (their answer was never shown).

A signed history line is written every ``--checkpoint-every`` records (default 5, not the
production 100) so that kills also land in those writes. Append latency (p50/p99) is measured
inside the writers, around ``append()`` alone, over every acknowledged record.

Options: --kills N (default 200; about 2 minutes on 2 cores), --writers W concurrent writer
processes per round (default 1), --max-delay S, --checkpoint-every N, --seed, --keep DIR (keep
the log there instead of a temporary folder), --json. Exit status 1 if any acknowledged record
was lost or any verification failed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from audit.log import AuditLog
from benchmarks.common import REPO, log, table
from core.config import apply_offline_environment
from evaluation.metrics import percentile

WRITER = r"""
import os, sys, time
from pathlib import Path
from audit.log import AuditLog

home, every, tag = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
audit = AuditLog(home / "audit.sqlite", home / "audit.checkpoint.json",
                 home / "keys" / "audit.key", checkpoint_every=every)
print("ready", flush=True)
i = 0
while True:
    i += 1
    nonce = f"{tag}-{os.getpid()}-{i}"
    payload = {"nonce": nonce, "question": "kill test", "pad": "x" * (i * 37 % 1500)}
    t = time.perf_counter()
    record = audit.append("answer", f"writer{tag}", "clinician", payload)
    elapsed = int((time.perf_counter() - t) * 1e6)
    print(record.seq, nonce, elapsed, flush=True)
"""


def open_log(home: Path) -> AuditLog:
    return AuditLog(
        home / "audit.sqlite", home / "audit.checkpoint.json", home / "keys" / "audit.key"
    )


def one_round(
    home: Path, round_no: int, writers: int, delay: float, every: int
) -> list[tuple[int, str, int]]:
    """Start the writers, kill them all after ``delay`` s; return their acknowledgements."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), str(every), f"{round_no}.{w}"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for w in range(writers)
    ]
    acks: list[tuple[int, str, int]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"a writer failed to start (said {line!r}); see its stderr")
        time.sleep(delay)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            assert proc.stdout is not None
            output = proc.stdout.read()
            proc.wait()
            for line in output.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
                    acks.append((int(parts[0]), parts[1], int(parts[2])))
    return acks


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill-audit-"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    acknowledged: dict[int, str] = {}
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    failed_rounds: list[int] = []
    lost: set[int] = set()
    t0 = time.perf_counter()
    try:
        for k in range(1, args.kills + 1):
            acks = one_round(work, k, args.writers, rng.uniform(0, args.max_delay), args.every)
            for seq, nonce, micros in acks:
                if seq in acknowledged and acknowledged[seq] != nonce:
                    lost.add(seq)  # two acknowledgements for one seq: an earlier one was lost
                acknowledged[seq] = nonce
                latencies.append(micros / 1000)
            audit = open_log(work)
            try:
                result = audit.verify()
                if not result.ok:
                    # Keep only the kind of failure: seq numbers differ from round to round.
                    failures[re.sub(r"\d+", "N", result.reason)] += 1
                    failed_rounds.append(k)
                for seq, nonce in acknowledged.items():
                    record = audit.get(seq)
                    if record is None or record.payload.get("nonce") != nonce:
                        lost.add(seq)
            finally:
                audit.close()
            if k % 20 == 0 or k == args.kills:
                log(
                    f"{k}/{args.kills} kills: {len(acknowledged)} acknowledged, {len(lost)} "
                    f"lost, {len(failed_rounds)} failed verifications"
                )
        audit = open_log(work)
        final = audit.verify()
        records = audit.count()
        audit.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "kills": args.kills,
        "writers_per_round": args.writers,
        "checkpoint_every": args.every,
        "records": records,
        "acknowledged": len(acknowledged),
        "lost_acknowledged": len(lost),
        "lost_seqs": sorted(lost)[:20],
        "verify_failures_after_kill": len(failed_rounds),
        "failed_rounds": failed_rounds[:20],
        "failure_kinds": dict(failures),
        "final_verify": {"ok": final.ok, "reason": final.reason},
        "append_ms_p50": percentile(latencies, 50),
        "append_ms_p99": percentile(latencies, 99),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--writers", type=int, default=1, help="concurrent writer processes")
    p.add_argument("--max-delay", type=float, default=0.25, help="seconds; kill moment range")
    p.add_argument("--checkpoint-every", dest="every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="write the log into this folder and keep it")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    ok = result["lost_acknowledged"] == 0 and result["verify_failures_after_kill"] == 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if ok else 1
    rows = [
        ("kill -9 points", result["kills"]),
        ("writer processes per round", result["writers_per_round"]),
        ("records in the log", result["records"]),
        ("acknowledged records", result["acknowledged"]),
        ("lost acknowledged records (must be 0)", result["lost_acknowledged"]),
        ("failed verifications after a kill (must be 0)", result["verify_failures_after_kill"]),
        ("final verify", "ok" if result["final_verify"]["ok"] else "FAILED"),
        ("append p50 (ms)", result["append_ms_p50"]),
        ("append p99 (ms)", result["append_ms_p99"]),
        ("wall time (s)", result["seconds"]),
    ]
    print(table(["metric", "value"], rows))
    print(f"\nfinal verify: {result['final_verify']['reason']}")
    for kind, n in sorted(result["failure_kinds"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:4} x {kind}")
    if result["lost_seqs"]:
        print(f"lost seqs (first 20): {result['lost_seqs']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
