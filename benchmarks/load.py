"""Concurrent users for a bounded time: no errors, no lost audit records, answer latency.

    .venv/bin/python -m benchmarks.load

``--users`` (default 20) clinicians ask questions from ``data_samples/example_questions.json``
back to back for ``--seconds`` (default 120; questions in flight then finish) against one
CLINRAG_HOME with the real packaged model, the real embedder, Chroma and audit log. Users are
threads of one process, as in the app (``--processes P`` splits them over P processes that
share the home, each with its own copy of the model). Within a process the users share the
model weights, one audit log and one lock around generation (``LLM.stream`` and
``LLM.logprobs``): on a small CPU, concurrent generations only slow each other down, while
retrieval, citation checks and audit appends run concurrently. By default every user has
its own ``Assistant`` (built in that user's thread); ``--shared`` uses ONE Assistant for all
users, as ``ui/session.py`` does.

Checks and figures: errors (every exception from ``Assistant.ask``; rate-limit refusals are
counted apart), audit records before and after (the difference must equal the answers that
came back with an audit id, and each of those records must hold that user and question),
``verify()`` at the end, answer latency p50/p95 (from calling ``ask`` to its return,
waiting for the model included), the wait for the model, and audit append p50/p99 (timed
around ``AuditLog.append`` alone).

``--batching on`` (the app's way since issue 17) puts the model behind one
``services.generation_worker.GenerationWorker`` (concurrent drafts batched, answers first) and
makes no draft for a quoted answer on strong evidence (``quoted_draft`` off); ``--batching
off`` is the way before: one lock around the model and a draft for every answer. ``--compare``
runs off then on in one process, same home, users and duration, and prints both with their
ratios and the load average. ``--generation N`` times N drafts (prompts of the first N sample
questions) one by one, then all N at once through the worker: time to first piece and tokens/s.

Attribution is off by default (``--attribution surrogate`` turns the configured method on; on
2 shared cores it costs minutes per answer). The home defaults to
``benchmarks/.cache/load/home`` (git-ignored; data_samples is ingested into it once and the
converted model is kept there); ``--home DIR`` uses another, ``--fresh`` empties it first.
Options also: --seed, --json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import REPO, log, table
from core.config import apply_offline_environment
from evaluation.metrics import percentile

DEFAULT_HOME = common.CACHE_DIR / "load" / "home"
SAMPLES = REPO / "data_samples"


def questions() -> list[str]:
    rows = json.loads((SAMPLES / "example_questions.json").read_text(encoding="utf-8"))
    return [r["question"] for r in rows]


class SerialLLM:
    """The model behind one lock; every other attribute is the wrapped LLM's."""

    def __init__(self, inner: Any, lock: threading.Lock) -> None:
        self._inner = inner
        self._lock = lock
        self.waits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        t = time.perf_counter()
        with self._lock:
            self.waits.append(time.perf_counter() - t)
            yield from self._inner.stream(*args, **kwargs)

    def logprobs(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._inner.logprobs(*args, **kwargs)


def settings_for(home: Path, attribution: str, batching: bool = True) -> Any:
    overrides: dict[str, Any] = {} if attribution == "settings" else {"attribution": attribution}
    # before issue 17 every answer had a draft, shown or not
    overrides |= {"generation_batching": batching, "quoted_draft": not batching}
    return common.clinrag_settings(home, **overrides)


def model_for(llm: Any, settings: Any) -> Any:
    """The model as the users share it: behind one lock, or behind the generation worker."""
    from services.generation_worker import GenerationWorker

    if not settings.generation_batching:
        return SerialLLM(llm, threading.Lock())
    return GenerationWorker(
        llm,
        wait_s=settings.generation_batch_wait_ms / 1000,
        max_batch=settings.generation_batch_max,
    )


def prepare(home: Path, fresh: bool) -> None:
    """data_samples ingested and the model converted, once per home (not timed)."""
    from assistant.retrieve import Retriever
    from core import backends
    from core.library.manifest import Manifest
    from ingest.index import ingest

    if fresh:
        shutil.rmtree(home, ignore_errors=True)
    settings = settings_for(home, "off")
    if not Manifest(settings.manifest_path).documents():
        log(f"ingesting data_samples into {home} (once) ...")
        summary = ingest([SAMPLES], settings, progress=False)
        if summary.failed:
            raise SystemExit(f"ingest failed: {summary.failed[:3]}")
    # Builds the BM25 cache once, so user threads only load it.
    Retriever(settings).retrieve("warm up")
    log("loading (and, the first time, converting) the model ...")
    backends.create("llm", settings.llm, settings).warm_up()


def serve(
    home: Path,
    users: list[str],
    seconds: float,
    *,
    shared: bool,
    attribution: str,
    seed: int,
    wait_for_go: bool = False,
    batching: bool = True,
) -> dict[str, Any]:
    """Run ``users`` as threads of this process for ``seconds``; return what each ask did."""
    from assistant.pipeline import Assistant
    from audit.record import open_log as audit_log
    from core import backends
    from core.errors import InputLimitError

    settings = settings_for(home, attribution, batching)
    audit = audit_log(settings)
    append_seconds: list[float] = []
    plain_append = audit.append

    def timed_append(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return plain_append(*args, **kwargs)
        finally:
            append_seconds.append(time.perf_counter() - t)

    # An instance attribute: the assistants' appends go through it.
    audit.append = timed_append  # type: ignore[method-assign]
    llm = backends.create("llm", settings.llm, settings)
    llm.warm_up()
    tokenizer: Any = llm._tokenizer  # type: ignore[attr-defined]  # transformers backend
    model = model_for(llm, settings)
    one = Assistant(settings, llm=model, audit_log=audit) if shared else None
    if one is not None:
        one.warm_up()  # in this thread, as the app warms its shared assistant in one session

    qs = questions()
    attribute = attribution != "off"
    results: list[dict[str, Any]] = []
    results_lock = threading.Lock()
    ready = threading.Barrier(len(users) + 1)
    start = threading.Event()
    deadline = [0.0]

    def user(name: str, n: int) -> None:
        assistant: Any = None
        try:
            assistant = one or Assistant(settings, llm=model, audit_log=audit)
            if one is None:
                assistant.retriever.warm_up()  # its manifest connection belongs to this thread
        except Exception as exc:
            with results_lock:
                results.append(
                    {"user": name, "error": f"setup {type(exc).__name__}: {exc}"[:400]}
                    | {"question": "", "seconds": 0.0}
                )
            assistant = None
        finally:
            ready.wait()
        start.wait()
        if assistant is None:
            return
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < deadline[0]:
            question = rng.choice(qs)
            t = time.perf_counter()
            row: dict[str, Any] = {"user": name, "question": question}
            try:
                answer = assistant.ask(
                    question,
                    user=name,
                    role="clinician",
                    on_token=lambda _token: None,
                    attribute=attribute,
                )
                row.update(audit_id=answer.audit_id, mode=answer.mode)
                gen = answer.generation
                if gen is not None and gen.text and gen.first_token_seconds is not None:
                    row["draft"] = {
                        "seconds": gen.seconds,
                        "first": gen.first_token_seconds,
                        "tokens": len(tokenizer(gen.text)["input_ids"]),
                    }
            except InputLimitError as exc:
                row["refused"] = str(exc)
            except Exception as exc:  # every other failure is an error of the run
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            row["seconds"] = time.perf_counter() - t
            with results_lock:
                results.append(row)
            if "audit_id" not in row:
                time.sleep(1.0)  # do not spin on a failure

    threads = [
        threading.Thread(target=user, args=(name, n), daemon=True, name=name)
        for n, name in enumerate(users)
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    if wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    t0 = time.perf_counter()
    deadline[0] = time.monotonic() + seconds
    start.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if hasattr(model, "close"):
        model.close()
    return {
        "rows": results,
        "append_seconds": append_seconds,
        "model_waits": getattr(model, "waits", []),
        "batches": list(getattr(getattr(model, "stats", None), "batches", [])),
        "seconds": wall,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home)
    prepare(home, args.fresh)
    return measure(args, home, args.batching == "on")


def measure(args: argparse.Namespace, home: Path, batching: bool) -> dict[str, Any]:
    from audit.record import open_log as audit_log

    settings = settings_for(home, args.attribution, batching)
    audit = audit_log(settings)
    before = audit.count()
    users = [f"user{n:02d}" for n in range(1, args.users + 1)]
    log(
        f"{len(users)} users for {args.seconds:.0f} s ({args.processes} process(es)), "
        f"batching {'on' if batching else 'off'} ..."
    )
    if args.processes <= 1:
        parts = [
            serve(
                home,
                users,
                args.seconds,
                shared=args.shared,
                attribution=args.attribution,
                seed=args.seed,
                batching=batching,
            )
        ]
    else:
        parts = run_processes(args, home, users, batching)
    after = audit.count()
    rows = [r for p in parts for r in p["rows"]]
    answered = [r for r in rows if r.get("audit_id") is not None]
    missing = []
    for r in answered:
        record = audit.get(int(r["audit_id"]))
        if (
            record is None
            or record.event != "answer"
            or record.user != r["user"]
            or record.payload.get("question") != r["question"]
        ):
            missing.append(r["audit_id"])
    result = audit.verify()
    audit.close()
    errors = Counter(r["error"].split(":")[0] for r in rows if "error" in r)
    latencies = [r["seconds"] for r in answered]
    appends = [s for p in parts for s in p["append_seconds"]]
    waits = [s for p in parts for s in p["model_waits"]]
    wall = max(p["seconds"] for p in parts)
    drafts = [r["draft"] for r in answered if "draft" in r]
    batches = [b for p in parts for b in p.get("batches", [])]
    return {
        "batching": batching,
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "users": args.users,
        "processes": max(args.processes, 1),
        "shared_assistant": args.shared,
        "attribution": args.attribution,
        "seconds_asked": args.seconds,
        "wall_seconds": round(wall, 1),
        "questions": len(rows),
        "answers": len(answered),
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "first_errors": [r["error"] for r in rows if "error" in r][:3],
        "refused_rate_limit": sum(1 for r in rows if "refused" in r),
        "audit_before": before,
        "audit_after": after,
        "audit_added": after - before,
        "lost_records": len(missing) + max(0, len(answered) - (after - before)),
        "records_without_answer": max(0, (after - before) - len(answered)),
        "verify": {"ok": result.ok, "reason": result.reason},
        "modes": dict(Counter(r.get("mode") for r in answered)),
        "answer_s_p50": percentile(latencies, 50),
        "answer_s_p95": percentile(latencies, 95),
        "model_wait_s_p50": percentile(waits, 50),
        "append_ms_p50": percentile([s * 1000 for s in appends], 50),
        "append_ms_p99": percentile([s * 1000 for s in appends], 99),
        "answers_per_minute": round(len(answered) / wall * 60, 2) if wall else 0.0,
        "drafts": len(drafts),
        "draft_first_s_p50": percentile([d["first"] for d in drafts], 50),
        "draft_tokens_per_s_p50": percentile(
            [d["tokens"] / d["seconds"] for d in drafts if d["seconds"] > 0], 50
        ),
        "drafted_tokens_per_s": round(sum(d["tokens"] for d in drafts) / wall, 2) if wall else 0,
        "batch_sizes": dict(Counter(batches)),
        "machine": common.machine(),
    }


def run_processes(
    args: argparse.Namespace, home: Path, users: list[str], batching: bool
) -> list[dict[str, Any]]:
    groups = [users[i :: args.processes] for i in range(args.processes)]
    procs = []
    for group in groups:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--worker",
            ",".join(group),
            "--home",
            str(home),
            "--seconds",
            str(args.seconds),
            "--attribution",
            args.attribution,
            "--seed",
            str(args.seed),
            "--batching",
            "on" if batching else "off",
        ] + (["--shared"] if args.shared else [])
        procs.append(
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
            )
        )
    for proc in procs:  # every process has loaded its model before anyone starts asking
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a worker process failed to start; see its error output")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    parts = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a worker process failed (exit status {proc.returncode})")
        parts.append(json.loads(out))
    return parts


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--shared", action="store_true", help="one Assistant for all users")
    p.add_argument(
        "--attribution",
        default="off",
        choices=["off", "settings", "surrogate", "shap", "loo", "similarity"],
        help="off (default), the configured method ('settings'), or a method",
    )
    p.add_argument("--home", default=str(DEFAULT_HOME))
    p.add_argument("--fresh", action="store_true", help="empty the home first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--batching", choices=["on", "off"], default="on")
    p.add_argument("--compare", action="store_true", help="batching off, then on, one run")
    p.add_argument("--generation", type=int, default=0, metavar="N", help="time N drafts")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: comma-separated users
    args = p.parse_args(argv)
    if args.worker:
        part = serve(
            Path(args.home),
            args.worker.split(","),
            args.seconds,
            shared=args.shared,
            attribution=args.attribution,
            seed=args.seed,
            wait_for_go=True,
            batching=args.batching == "on",
        )
        print(json.dumps(part))
        return 0
    if args.generation:
        g = generation(Path(args.home), args.generation)
        print(json.dumps(g, indent=2))
        return 0
    if args.compare:
        return compare(args)
    r = run(args)
    ok = r["errors"] == 0 and r["lost_records"] == 0 and r["verify"]["ok"] and r["answers"] > 0
    if args.json:
        print(json.dumps(r | {"ok": ok}, indent=2))
        return 0 if ok else 1
    print(table(["metric", "value"], report_rows(r)))
    for kind, n in r["error_types"].items():
        print(f"  {n} x {kind}")
    for e in r["first_errors"]:
        print(f"  e.g. {e}")
    return 0 if ok else 1


def report_rows(r: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("batching (and no unshown drafts)", "on" if r["batching"] else "off"),
        ("load average (1, 5, 15 min) at the end", r["load_average"]),
        ("users / processes", f"{r['users']} / {r['processes']}"),
        ("assistants", "one shared" if r["shared_assistant"] else "one per user"),
        ("attribution", r["attribution"]),
        ("wall time (s)", r["wall_seconds"]),
        ("questions asked", r["questions"]),
        ("answers returned", r["answers"]),
        ("errors (must be 0)", r["errors"]),
        ("refused by the rate limit", r["refused_rate_limit"]),
        ("audit records before / after", f"{r['audit_before']} / {r['audit_after']}"),
        ("lost audit records (must be 0)", r["lost_records"]),
        ("audit records without an answer", r["records_without_answer"]),
        ("audit verify", "ok" if r["verify"]["ok"] else "FAILED"),
        ("answer latency p50 (s)", r["answer_s_p50"]),
        ("answer latency p95 (s)", r["answer_s_p95"]),
        ("wait for the model p50 (s)", r["model_wait_s_p50"]),
        ("audit append p50 (ms)", r["append_ms_p50"]),
        ("audit append p99 (ms)", r["append_ms_p99"]),
        ("answers per minute", r["answers_per_minute"]),
        ("modes", ", ".join(f"{k} {v}" for k, v in sorted(r["modes"].items()))),
        ("drafts made", r["drafts"]),
        ("draft: first piece p50 (s)", r["draft_first_s_p50"]),
        ("draft: tokens/s per session p50", r["draft_tokens_per_s_p50"]),
        ("drafted tokens/s, all sessions", r["drafted_tokens_per_s"]),
        ("drafts per model run", r["batch_sizes"]),
    ]


def compare(args: argparse.Namespace) -> int:
    """Batching off, then on: same home, users, duration, one process (ratios comparable)."""
    home = Path(args.home)
    prepare(home, args.fresh)
    before = measure(args, home, batching=False)
    after = measure(args, home, batching=True)
    ok = all(
        r["errors"] == 0 and r["lost_records"] == 0 and r["verify"]["ok"] and r["answers"] > 0
        for r in (before, after)
    )

    def ratio(key: str) -> float | None:
        return round(after[key] / before[key], 2) if before[key] and after[key] else None

    if args.json:
        print(json.dumps({"before": before, "after": after, "ok": ok}, indent=2))
        return 0 if ok else 1
    rows = [
        (name, b, a)
        for (name, b), (_, a) in zip(report_rows(before), report_rows(after), strict=True)
    ]
    print(table(["metric", "before (off)", "after (on)"], rows))
    print(
        f"answers per minute x{ratio('answers_per_minute')}, p50 latency x{ratio('answer_s_p50')}"
    )
    return 0 if ok else 1


def generation(home: Path, n: int) -> dict[str, Any]:
    """N drafts one by one through the model, then all N at once through the worker."""
    from assistant.generate import build_messages
    from assistant.prompts import load_template
    from assistant.retrieve import Retriever
    from core import backends
    from services.generation_worker import GenerationWorker

    prepare(home, False)
    settings = settings_for(home, "off")
    retriever = Retriever(settings)
    template = load_template(settings.prompt_template)
    prompts = [build_messages(template, q, retriever.retrieve(q)) for q in questions()[:n]]
    llm = backends.create("llm", settings.llm, settings)
    llm.warm_up()
    tokenizer = llm._tokenizer  # type: ignore[attr-defined]

    def draft(model: Any, messages: Any, t0: float) -> dict[str, float]:
        first, pieces = None, []
        for piece in model.stream(
            messages, max_new_tokens=settings.max_new_tokens, temperature=0.0
        ):
            first = time.perf_counter() - t0 if first is None else first
            pieces.append(piece)
        text = "".join(pieces)
        return {
            "first": first or 0.0,
            "seconds": time.perf_counter() - t0,
            "tokens": len(tokenizer(text)["input_ids"]),
        }

    load = [round(x, 1) for x in os.getloadavg()]
    t = time.perf_counter()
    serial = []
    for p in prompts:
        row = draft(llm, p, time.perf_counter())
        # as if all N had asked at t: the ones before it are its wait
        waited = time.perf_counter() - t - row["seconds"]
        serial.append(
            row | {"queued_first": waited + row["first"], "queued_done": waited + row["seconds"]}
        )
    serial_wall = time.perf_counter() - t
    # all N in one batch: what batching can give at its best
    worker = GenerationWorker(llm, wait_s=settings.generation_batch_wait_ms / 1000, max_batch=n)
    out: list[dict[str, float]] = [{} for _ in prompts]
    t = time.perf_counter()

    def one(i: int) -> None:
        out[i] = draft(worker, prompts[i], t)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batched_wall = time.perf_counter() - t
    worker.close()

    def summary(rows: list[dict[str, float]], wall: float) -> dict[str, Any]:
        tokens = sum(r["tokens"] for r in rows)
        return {
            "wall_s": round(wall, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 2),
            "first_piece_s_p50": percentile([r["first"] for r in rows], 50),
            "draft_done_s_p50": percentile([r["seconds"] for r in rows], 50),
            # all N asked at once: time to each one's first piece / end, waiting included
            "first_piece_from_ask_s_p50": percentile(
                [r.get("queued_first", r["first"]) for r in rows], 50
            ),
            "done_from_ask_s_p50": percentile(
                [r.get("queued_done", r["seconds"]) for r in rows], 50
            ),
        }

    return {
        "drafts": len(prompts),
        "max_new_tokens": settings.max_new_tokens,
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "one_by_one": summary(serial, serial_wall),
        "batched": summary(out, batched_wall) | {"batches": worker.stats.batches},
    }


if __name__ == "__main__":
    sys.exit(main())
