"""Audit log at scale, SQLite against PostgreSQL: append latency and full verification time.

For each engine: a log of N genuine records is built (hash-chained with the shipped chain
code, bulk-loaded through the same triggers an append meets, signed head and history written
with the shipped checkpoint code), then ``--appends`` real :meth:`AuditLog.append` calls are
timed one by one on top of it (p50/p99: each commits durably and rewrites the signed head),
then :meth:`AuditLog.verify` walks all N + appends records. The verification is the real one:
it recomputes every hash and holds the chain against the signed checkpoints.

PostgreSQL: ``--database-url`` names a server (its ``clinrag_audit`` schema is dropped first),
else a throwaway durable server (fsync on, like SQLite's synchronous=FULL) is started on a
loopback port from Debian's ``postgresql`` package, as the tests do.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.audit_scale --records 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.log import AuditLog
from audit.log.chain import GENESIS_HASH, canonical_json, record_hash
from audit.log.checkpoint import append_history, create_key, history_path_for, write_head

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 100
BATCH = 10_000


def _records(count: int) -> Iterator[tuple[Any, ...]]:
    """``count`` genuine chained records in column order, with answer-sized payloads."""
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        ts = f"2026-12-01T{seq // 3_600_000 % 24:02d}:00:00.{seq % 1000:03d}Z"
        payload = {
            "question": f"What is the recommended dose of drug {seq % 997} in renal failure?",
            "answer": "Reduce the dose by half when creatinine clearance is below 30 mL/min [1].",
            "cited_doc_ids": [f"doc-{seq % 5003}"],
            "model_id": "smollm2",
            "n": seq,
        }
        digest = record_hash(seq, ts, "answer", f"user{seq % 50}", "clinician", payload, prev)
        yield (
            seq,
            ts,
            "answer",
            f"user{seq % 50}",
            "clinician",
            canonical_json(payload),
            prev,
            digest,
        )
        prev = digest


def _sign(folder: Path, marks: list[tuple[int, str, str]]) -> None:
    """Write the signed history (every CHECKPOINT_EVERY records) and head of the loaded log."""
    key = create_key(folder / "keys" / "audit.key")
    checkpoint = folder / "audit.checkpoint.json"
    history = history_path_for(checkpoint)
    for seq, digest, ts in marks:
        size = history.stat().st_size if history.exists() else 0
        append_history(history, key, seq, digest, ts, size)
    seq, digest, ts = LAST[0]
    write_head(checkpoint, key, {"seq": seq, "hash": digest, "ts": ts, "history": len(marks)})


# The last record generated: the head the signed checkpoint names.
LAST: list[tuple[int, str, str]] = [(0, GENESIS_HASH, "")]


def _tracked(count: int, marks: list[tuple[int, str, str]]) -> Iterator[tuple[Any, ...]]:
    for row in _records(count):
        if row[0] % CHECKPOINT_EVERY == 0:
            marks.append((row[0], row[7], row[1]))
        LAST[0] = (row[0], row[7], row[1])
        yield row


def _log(folder: Path, url: str | None) -> AuditLog:
    return AuditLog(
        folder / "audit.sqlite",
        folder / "audit.checkpoint.json",
        folder / "keys" / "audit.key",
        checkpoint_every=CHECKPOINT_EVERY,
        database_url=url,
    )


def _bulk_sqlite(folder: Path, count: int) -> None:
    from audit.log.database import COLUMNS, open_read_write

    conn = open_read_write(folder / "audit.sqlite")
    marks: list[tuple[int, str, str]] = []
    rows = _tracked(count, marks)
    insert = f"INSERT INTO records ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    conn.execute("BEGIN IMMEDIATE")
    while batch := [row for _, row in zip(range(BATCH), rows, strict=False)]:
        conn.executemany(insert, batch)
    conn.execute("COMMIT")
    conn.close()
    _sign(folder, marks)


def _bulk_postgres(folder: Path, url: str, count: int) -> None:
    from audit.log.postgres import _COLUMN_NAMES, PostgresLog

    log = PostgresLog(url)
    conn = log.open_write()
    marks: list[tuple[int, str, str]] = []
    log.begin(conn)
    log.db.copy_rows(conn, "records", _COLUMN_NAMES, _tracked(count, marks))
    conn.execute("COMMIT")
    conn.close()
    _sign(folder, marks)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_engine(
    name: str, folder: Path, url: str | None, count: int, appends: int
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if url is None:
        _bulk_sqlite(folder, count)
    else:
        _bulk_postgres(folder, url, count)
    load_s = time.perf_counter() - t0
    latencies: list[float] = []
    with _log(folder, url) as log:
        log.append("startup", "system", "system", {})  # opens the connection, not timed
        for i in range(appends):
            started = time.perf_counter()
            log.append("answer", "bench", "clinician", {"question": f"q{i}", "n": i})
            latencies.append(time.perf_counter() - started)
        t1, c1 = time.perf_counter(), time.process_time()
        result = log.verify()
        verify_s, verify_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    if not result.ok:
        raise SystemExit(f"{name}: verification failed: {result.reason}")
    return {
        "engine": name,
        "records_verified": result.count,
        "bulk_load_s": round(load_s, 1),
        "append_p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "append_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        "verify_s": round(verify_s, 1),
        # This process's CPU only (the server's own work is not in it): on a shared machine
        # the wall time above depends on what else runs, this much less.
        "verify_cpu_s": round(verify_cpu_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "verify_records_per_s": round(result.count / verify_s),
    }


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url is not None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS clinrag_audit CASCADE")
        yield url
        return
    sys.path.insert(0, str(REPO / "tests"))
    from pg import postgres_server

    with postgres_server(durable=True) as server:
        yield server.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    root = Path(tempfile.mkdtemp(prefix="clinrag-audit-scale-"))
    results = []
    try:
        for engine in engines:
            LAST[0] = (0, GENESIS_HASH, "")
            if engine == "postgresql":
                with _server(args.database_url) as url:
                    results.append(
                        run_engine(engine, root / engine, url, args.records, args.appends)
                    )
            else:
                results.append(run_engine(engine, root / engine, None, args.records, args.appends))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        "records": args.records,
        "appends": args.appends,
        "load_average": os.getloadavg(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
