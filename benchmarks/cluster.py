"""Two app replicas, one deployment: PostgreSQL, a Chroma server, a model server, N users.

    .venv/bin/python -m benchmarks.cluster [--users 20] [--seconds 120] [--think 0]
        [--questions 0] [--drain 600] [--prefix-cache 8] [--json]

Starts on loopback, as ``deploy/compose.yaml`` lays out for a hospital (tests/pg.py,
tests/cluster_parts.py, tests/openai_server.py):

- PostgreSQL (initdb into a temp dir, pg_ctl on a free port): audit log, manifest, accounts;
- a Chroma server (``chroma run``): the vectors;
- the model server: the real packaged model behind the OpenAI-compatible vLLM contract
  (chat completions, ``/tokenize``, ``/v1/completions`` with ``prompt_logprobs``), so
  attribution runs through the server's teacher-forced log-probabilities. ``--prefix-cache N``
  (default 8, 0 = off) lets it reuse the KV cache of the last N scored prompts for a shared
  token prefix: a speed-up of this CPU stand-in (an attribution's ablated prompts share most
  of the full one), standing in for a GPU's capacity; vLLM itself recomputes the whole prompt
  for a request that asks for prompt_logprobs, prefix caching on or not;
- two clinrag app replicas, each its own process with its own CLINRAG_HOME but the same
  ``database_url``, ``chroma_url``, model server, audit key and shared audit checkpoint
  (the settings of :func:`replica_environment`, the ones deploy/compose.yaml names). Each
  runs the Ask page's path: ``services.accounts.sign_in``, ``services.ask.ask`` (sessions
  call the model server at once, as ``ui/session.py`` lets them for a backend with
  ``concurrent_calls``), then the answer on an ``AttributionQueue``.

data_samples is ingested once (into the database and the Chroma server), accounts are
created once, then ``--users`` clinicians, split over both replicas, sign in and ask questions
for ``--seconds``: back to back, or with ``--think`` S a clinician's pause (seeded, exponential
with mean S: before the first question too, so users do not all arrive at once) between
receiving an answer and asking again; at most ``--questions`` each (0: no bound); everyone
asks at least once. Questions in flight then finish, and each replica waits at most
``--drain`` seconds for its queued attributions. Before that, a lock-out: five wrong
passwords on replica A, then the right password on replica B, which must be refused (one
accounts table, not two).

Pass (``report["passed"]``): 0 errors; audit records expected vs found, 0 lost and 0
duplicated (every answer, sign-in and failed sign-in a replica reported is in the log exactly
once, with its user and question); one valid chain (``AuditLog.verify`` on the PostgreSQL log,
what ``clinrag audit verify`` runs); every answer attributed or its failure recorded with a
reason (no answer pending); the lock-out seen by both replicas. Figures: answers per minute,
p50/p95 latency per stage (sign-in, waiting for the replica's model lock, retrieval,
generation, citation checks, the whole answer, attribution: the queue job's run, and from the
answer to its attribution recorded), the model server's prefix-cache use, and the load
average.

The per-user rate limit (``questions_per_minute``) is raised for the run: simulated users ask
back to back, faster than the 20 a minute a clinician is allowed. The model server's models
folder is ``benchmarks/.cache/cluster/model-home`` (git-ignored; the GGUF is converted there
once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE_DIR, REPO, log, table
from evaluation.metrics import percentile

SAMPLES = REPO / "data_samples"
TESTS = REPO / "tests"
MODEL_NAME = "smollm2-135m"  # what the replicas ask the model server for
COLLECTION = "clinrag"
PASSWORD = "cluster-pass-1234"  # the simulated users' (a fresh database per run)
LOCKED_USER = "locked.user"
PREFIX_CACHE = 8  # tests/openai_server.PREFIX_CACHE_ENTRIES (not imported: tests/ is no package)
STAGES = (
    "sign_in",
    "lock_wait",
    "retrieval",
    "generation",
    "citation",
    "answer",
    "attribution",
    "attribution_delay",
)
DRAIN_S = 600.0


def _tests_on_path() -> None:
    # the servers' start/stop code lives with the tests (tests/pg.py ...), which are not a
    # package: put their folder on the path when the cluster is started, not at import
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def replica_environment(
    home: Path,
    shared: Path,
    *,
    database_url: str,
    chroma_url: str,
    llm_base_url: str,
    attribution: str,
    collection: str = COLLECTION,
    chroma_token: str = "",
) -> dict[str, str]:
    """Every clinrag setting a replica is given (deploy/compose.yaml names the same ones).

    ``shared`` stands for the private mount all replicas share: the audit signing key and the
    audit log's signed head checkpoint (docs/design.md: with database_url and several app
    servers, one checkpoint file they all share, like the key).
    """
    return {
        "CLINRAG_HOME": str(home),
        "CLINRAG_CONFIG": str(home / "clinrag.toml"),  # none: settings come from here only
        "CLINRAG_DATABASE_URL": database_url,
        "CLINRAG_CHROMA_URL": chroma_url,
        # sent as a bearer token to the proxy in front of the server; this loopback server
        # has no proxy and checks none (docs/design.md), so any value reaches it
        "CLINRAG_CHROMA_TOKEN": chroma_token or secrets.token_urlsafe(16),
        "CLINRAG_COLLECTION": collection,
        "CLINRAG_LLM": "openai",
        "CLINRAG_LLM_BASE_URL": llm_base_url,
        "CLINRAG_LLM_MODEL": MODEL_NAME,
        "CLINRAG_ATTRIBUTION": attribution,
        "CLINRAG_AUDIT_KEY_FILE": str(shared / "audit.key"),
        "CLINRAG_AUDIT_CHECKPOINT_FILE": str(shared / "audit.checkpoint.json"),
        "CLINRAG_QUESTIONS_PER_MINUTE": "100000",
    }


def _settings(env: dict[str, str]) -> Any:
    from core.config import load_settings

    return load_settings(env=env)


def questions() -> list[str]:
    rows = json.loads((SAMPLES / "example_questions.json").read_text(encoding="utf-8"))
    return [r["question"] for r in rows]


# ------------------------------------------------------------------ a replica (its own process)


class Replica:
    """One app server: the Ask page's objects for its settings, driven by simulated users."""

    def __init__(self, settings: Any) -> None:
        from services.ask import open_assistant
        from services.attribution_queue import AttributionQueue

        self.settings = settings
        self.assistant = open_assistant(settings)
        self.assistant.warm_up()
        # as ui/session.py: a backend that takes concurrent calls (the model server) is asked
        # by every session at once; any other one question or attribution at a time
        concurrent = getattr(self.assistant.llm, "concurrent_calls", False) is True
        self.lock: Any = contextlib.nullcontext() if concurrent else threading.Lock()
        self.queue = AttributionQueue(settings, lambda: self.assistant, self.lock)

    def sign_in(self, user: str, password: str) -> bool:
        from services.accounts import sign_in

        return sign_in(self.settings, user, password) is not None

    def run(
        self,
        users: list[str],
        seconds: float,
        seed: int,
        *,
        think: float = 0.0,
        per_user: int = 0,
        drain: float = DRAIN_S,
    ) -> dict[str, Any]:
        from core.types import Actor
        from services import ask as asking

        pool = questions()
        answers: list[dict[str, Any]] = []
        errors: list[str] = []
        sign_ins: list[dict[str, Any]] = []
        mutex = threading.Lock()
        deadline = time.monotonic() + seconds

        def user(name: str, n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            try:
                t = time.perf_counter()
                ok = self.sign_in(name, PASSWORD)
                with mutex:
                    sign_ins.append({"user": name, "ok": ok, "s": time.perf_counter() - t})
                if not ok:
                    with mutex:
                        errors.append(f"{name}: sign-in refused")
                    return
                actor = Actor(name, "clinician")
                asked = 0
                if think > 0:  # arrivals spread over the window, not all at its start
                    time.sleep(min(rng.expovariate(1 / think), seconds))
                # every user who signed in asks at least once, however short the run
                while not asked or (
                    time.monotonic() < deadline and (not per_user or asked < per_user)
                ):
                    if asked and think > 0:
                        time.sleep(rng.expovariate(1 / think))  # reading, seeing a patient
                        if time.monotonic() >= deadline:
                            break
                    asked += 1
                    question = rng.choice(pool)
                    t0 = time.perf_counter()
                    with self.lock:
                        t1 = time.perf_counter()
                        answer = asking.ask(self.assistant, actor, question)
                    t2 = time.perf_counter()
                    self.queue.submit(actor, answer)
                    with mutex:
                        answers.append(
                            {
                                "user": name,
                                "question": question,
                                "audit_id": answer.audit_id,
                                "abstained": bool(answer.abstained),
                                "lock_wait": t1 - t0,
                                "answer": t2 - t1,
                                **{
                                    k: float(v)
                                    for k, v in answer.timings.items()
                                    if k in ("retrieval", "generation", "citation")
                                },
                            }
                        )
            except Exception as exc:  # every failure is a finding, counted and reported
                with mutex:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")

        threads = [
            threading.Thread(target=user, args=(name, n), daemon=True)
            for n, name in enumerate(users)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        asked = time.monotonic()
        # a bound, not a target: attributions queued behind the run finish here
        drained = self.queue.wait(timeout=drain)
        jobs = [
            {
                "answer_id": j.answer_id,
                "state": str(j.state),
                "reason": j.reason,
                "s": j.seconds(),
                # what a clinician waits for the attribution: queued, then run
                "delay": (j.finished or time.monotonic()) - j.submitted,
            }
            for j in self.queue.jobs()
        ]
        return {
            "answers": answers,
            "errors": errors,
            "sign_ins": sign_ins,
            "jobs": jobs,
            "drained": drained,
            "drain_s": time.monotonic() - asked,
        }


def serve_replica() -> int:
    """``--app``: a replica reading one JSON command a line on stdin, answering on stdout."""
    from core.config import apply_offline_environment

    apply_offline_environment()
    replica = Replica(_settings(dict(os.environ)))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "sign_in":
            reply: dict[str, Any] = {"ok": replica.sign_in(command["user"], command["password"])}
        elif command["cmd"] == "run":
            reply = replica.run(
                command["users"],
                command["seconds"],
                command["seed"],
                think=command.get("think", 0.0),
                per_user=command.get("questions", 0),
                drain=command.get("drain", DRAIN_S),
            )
        else:
            replica.queue.close()
            return 0
        print(json.dumps(reply), flush=True)
    return 0


class ReplicaProcess:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cluster", "--app"],
            env={k: v for k, v in os.environ.items() if not k.startswith("CLINRAG_")} | env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"replica {self.name} exited ({self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"cmd": "quit"})
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------ the deployment


@dataclass
class Cluster:
    """A started deployment: the replicas' environments by name, and the model server's
    engine (its prefix-cache counts go into the report)."""

    envs: dict[str, dict[str, str]]
    server: Any


@contextlib.contextmanager
def model_server(llm: Any, prefix_cache: int) -> Iterator[tuple[str, Any]]:
    """The real packaged model behind the vLLM contract (tests/openai_server.py): the URL and
    the engine."""
    _tests_on_path()
    from openai_server import ModelEngine, serve_chat

    engine = ModelEngine(llm, prefix_cache)

    def reply(messages: list[dict[str, str]], max_tokens: int) -> str:
        with engine.lock:
            return "".join(llm.stream(messages, max_new_tokens=max_tokens, temperature=0.0))

    with serve_chat(reply, MODEL_NAME, engine=engine) as server:
        yield server.base_url, engine


@contextlib.contextmanager
def deployment(
    root: Path,
    llm: Any,
    *,
    attribution: str,
    database_url: str | None = None,
    chroma_url: str | None = None,
    collection: str = COLLECTION,
    prefix_cache: int = PREFIX_CACHE,
) -> Iterator[Cluster]:
    """PostgreSQL, a Chroma server and the model server (each started here unless given),
    data_samples ingested: the replicas' environments, by name, and the model server."""
    _tests_on_path()
    from cluster_parts import start_chroma_server, stop
    from pg import postgres_server

    with contextlib.ExitStack() as stack:
        if database_url is None:
            database_url = stack.enter_context(postgres_server()).url
        if chroma_url is None:
            (root / "chroma").mkdir(parents=True, exist_ok=True)
            chroma_url, process = start_chroma_server(root / "chroma" / "data")
            stack.callback(stop, process)
        base_url, engine = stack.enter_context(model_server(llm, prefix_cache))
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        envs = {
            name: replica_environment(
                root / name,
                shared,
                database_url=database_url,
                chroma_url=chroma_url,
                llm_base_url=base_url,
                attribution=attribution,
                collection=collection,
            )
            for name in ("ingest", "a", "b")
        }
        prepare(envs["ingest"])
        yield Cluster(envs, engine)


def prepare(env: dict[str, str]) -> None:
    """data_samples into the database and the Chroma server, once; the simulated accounts."""
    from ingest.index import ingest

    settings = _settings(env)
    summary = ingest([SAMPLES], settings, progress=False)
    if summary.failed:
        raise RuntimeError(f"ingest failed: {summary.failed[:3]}")


def create_accounts(env: dict[str, str], names: list[str]) -> None:
    from services.accounts import add_user

    settings = _settings(env)
    for name in names:
        add_user(settings, name, PASSWORD, "clinician")


def drive(
    cluster: Cluster,
    users: int,
    seconds: float,
    seed: int,
    *,
    think: float = 0.0,
    per_user: int = 0,
    drain: float = DRAIN_S,
) -> dict[str, Any]:
    """Both replicas started, the lock-out checked across them, the users run; the report."""
    envs = cluster.envs
    names = [f"user{n:02d}" for n in range(users)]
    create_accounts(envs["ingest"], [*names, LOCKED_USER])
    replicas = [ReplicaProcess(name, envs[name]) for name in ("a", "b")]
    try:
        for replica in replicas:
            if not replica.read().get("ready"):
                raise RuntimeError(f"replica {replica.name} did not start")
        a, b = replicas
        wrong = [a.call({"cmd": "sign_in", "user": LOCKED_USER, "password": "wrong-password-0"})]
        wrong += [
            a.call({"cmd": "sign_in", "user": LOCKED_USER, "password": f"wrong-password-{i}"})
            for i in range(1, 5)
        ]
        refused_on_b = not b.call({"cmd": "sign_in", "user": LOCKED_USER, "password": PASSWORD})[
            "ok"
        ]
        lockout = {
            "wrong_on_a_refused": all(not w["ok"] for w in wrong),
            "right_password_refused_on_b": refused_on_b,
        }
        started = time.monotonic()
        for i, replica in enumerate(replicas):
            replica.send(
                {
                    "cmd": "run",
                    "users": names[i::2],
                    "seconds": seconds,
                    "seed": seed,
                    "think": think,
                    "questions": per_user,
                    "drain": drain,
                }
            )
        parts = {r.name: r.read() for r in replicas}
        wall = time.monotonic() - started
    finally:
        for replica in replicas:
            replica.close()
    result = report(envs["ingest"], parts, lockout, wall, seconds, users)
    result["user_model"] = {"think_s": think, "questions_per_user": per_user, "drain_s": drain}
    result["model_server"] = dict(cluster.server.stats) | {
        "prefix_cache_entries": cluster.server.prefix_cache,
        "scoring_s": cluster.server.scoring_s,
    }
    return result


def report(
    env: dict[str, str],
    parts: dict[str, dict[str, Any]],
    lockout: dict[str, bool],
    wall: float,
    seconds: float,
    users: int,
) -> dict[str, Any]:
    """The pass criteria, checked against the PostgreSQL log, and the figures."""
    from audit.record import Event, answer_link, open_log

    settings = _settings(env)
    answers = [a for p in parts.values() for a in p["answers"]]
    errors = [e for p in parts.values() for e in p["errors"]]
    jobs = [j for p in parts.values() for j in p["jobs"]]
    sign_ins = [s for p in parts.values() for s in p["sign_ins"]]
    with open_log(settings) as audit:
        records = audit.list()
        verified = audit.verify()
    by_event = Counter(str(r.event) for r in records)
    answer_records = {r.seq: r for r in records if str(r.event) == str(Event.ANSWER)}
    reported = [a["audit_id"] for a in answers]
    lost = [i for i in reported if i is None or i not in answer_records]
    duplicated = [i for i, n in Counter(reported).items() if n > 1]
    mismatched = [
        a["audit_id"]
        for a in answers
        if a["audit_id"] in answer_records
        and (
            answer_records[a["audit_id"]].user != a["user"]
            or answer_records[a["audit_id"]].payload.get("question") != a["question"]
        )
    ]
    # answers in the log that no replica reported: recorded twice, or by someone else
    unreported = sorted(set(answer_records) - set(reported))
    links: dict[str, Counter[int]] = {
        event: Counter(
            link
            for r in records
            if str(r.event) == event and (link := answer_link(r.payload)) is not None
        )
        for event in (str(Event.ATTRIBUTION), str(Event.ATTRIBUTION_FAILED))
    }
    attributed = failed = pending = 0
    failed_reasons: Counter[str] = Counter()
    failure_payloads = {
        answer_link(r.payload): r.payload
        for r in records
        if str(r.event) == str(Event.ATTRIBUTION_FAILED)
    }
    for seq, record in answer_records.items():
        if record.payload.get("abstained"):
            continue
        if links[str(Event.ATTRIBUTION)][seq] or record.payload.get("attribution"):
            attributed += 1
        elif links[str(Event.ATTRIBUTION_FAILED)][seq]:
            failed += 1
            reason = str((failure_payloads.get(seq) or {}).get("reason") or "")
            failed_reasons[reason[:80] or "(no reason)"] += 1
        else:
            pending += 1
    twice_attributed = [s for s, n in links[str(Event.ATTRIBUTION)].items() if n > 1]
    expected = {
        "answer": len(answers),
        "login": sum(1 for s in sign_ins if s["ok"]),
        "login_failed": 6,  # five wrong passwords on A, the right one on B while locked
    }
    found = {
        "answer": len(answer_records),
        "login": by_event.get("login", 0),
        "login_failed": by_event.get("login_failed", 0),
    }
    stage_values: dict[str, list[float]] = {
        "sign_in": [s["s"] for s in sign_ins],
        "attribution": [j["s"] for j in jobs if j["state"] == "attributed"],
        "attribution_delay": [j["delay"] for j in jobs if j["state"] == "attributed"],
    }
    for stage in ("lock_wait", "retrieval", "generation", "citation", "answer"):
        stage_values[stage] = [a[stage] for a in answers if stage in a]
    stages = {
        stage: {
            "n": len(stage_values.get(stage, [])),
            "p50_s": percentile(stage_values.get(stage, []), 50),
            "p95_s": percentile(stage_values.get(stage, []), 95),
        }
        for stage in STAGES
    }
    checks = {
        "no_errors": not errors,
        "audit_expected_equals_found": expected == found,
        "no_lost_answers": not lost and not mismatched,
        "no_duplicated_answers": not duplicated and not unreported and not twice_attributed,
        "one_valid_chain": bool(verified.ok),
        "every_answer_attributed_or_failed_with_reason": pending == 0
        and "(no reason)" not in failed_reasons,
        "attribution_queues_drained": all(p["drained"] for p in parts.values()),
        "lockout_consistent_across_replicas": all(lockout.values()),
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "users": users,
        "seconds": seconds,
        "wall_s": wall,
        "answers": len(answers),
        "answers_per_replica": {n: len(p["answers"]) for n, p in parts.items()},
        "abstained": sum(1 for a in answers if a["abstained"]),
        "answers_per_minute": len(answers) / (seconds / 60),
        # attributions recorded per minute of the whole run (asking window and drain)
        "attributions_per_minute": sum(1 for j in jobs if j["state"] == "attributed") / (wall / 60),
        "errors": errors[:20],
        "n_errors": len(errors),
        "audit_expected": expected,
        "audit_found": found,
        "audit_records": len(records),
        "audit_events": dict(by_event),
        "lost": lost[:20],
        "duplicated": duplicated[:20],
        "unreported": unreported[:20],
        "chain": {"ok": bool(verified.ok), "count": verified.count},
        "attribution": {
            "attributed": attributed,
            "failed": failed,
            "pending": pending,
            "failed_reasons": dict(failed_reasons),
            "drain_s": {n: p["drain_s"] for n, p in parts.items()},
        },
        "lockout": lockout,
        "stages": stages,
        "loadavg": os.getloadavg(),
    }


def packaged_llm() -> Any:
    """The packaged model, converted once into benchmarks/.cache/cluster/model-home."""
    from core import backends
    from core.config import load_settings

    home = CACHE_DIR / "cluster" / "model-home"
    home.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        env={"CLINRAG_HOME": str(home), "CLINRAG_CONFIG": str(home / "none.toml")}
    )
    llm = backends.create("llm", "transformers", settings)
    llm.warm_up()
    return llm


def run(
    users: int,
    seconds: float,
    seed: int,
    attribution: str,
    *,
    think: float = 0.0,
    per_user: int = 0,
    drain: float = DRAIN_S,
    prefix_cache: int = PREFIX_CACHE,
) -> dict[str, Any]:
    from core.config import apply_offline_environment

    apply_offline_environment()
    log("loading the packaged model for the model server ...")
    llm = packaged_llm()
    root = Path(tempfile.mkdtemp(prefix="clinrag-cluster-"))
    try:
        log("starting PostgreSQL, the Chroma server and the model server; ingesting ...")
        with deployment(root, llm, attribution=attribution, prefix_cache=prefix_cache) as cluster:
            log(f"{users} users on two replicas for {seconds:.0f} s ...")
            return drive(cluster, users, seconds, seed, think=think, per_user=per_user, drain=drain)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--think", type=float, default=0.0, help="mean pause between questions, s (0: none)"
    )
    parser.add_argument(
        "--questions", type=int, default=0, help="at most this many per user (0: no bound)"
    )
    parser.add_argument(
        "--drain", type=float, default=DRAIN_S, help="bound on the attribution backlog wait, s"
    )
    parser.add_argument(
        "--prefix-cache",
        type=int,
        default=PREFIX_CACHE,
        help="prompts the model server keeps for prefix reuse (0: off)",
    )
    parser.add_argument("--attribution", default="hierarchical")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--app", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.app:
        return serve_replica()
    result = run(
        args.users,
        args.seconds,
        args.seed,
        args.attribution,
        think=args.think,
        per_user=args.questions,
        drain=args.drain,
        prefix_cache=args.prefix_cache,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        rows = [(k, "PASS" if v else "FAIL") for k, v in result["checks"].items()]
        print(table(["check", "result"], rows))
        print()
        print(
            f"answers {result['answers']} ({result['answers_per_minute']:.1f}/min; "
            f"{result['abstained']} abstained), errors {result['n_errors']}, audit "
            f"expected {result['audit_expected']} found {result['audit_found']}, chain "
            f"{result['chain']}, attribution {result['attribution']}, lockout "
            f"{result['lockout']}, load average {result['loadavg']}"
        )
        print()
        print(
            table(
                ["stage", "n", "p50 s", "p95 s"],
                [
                    (s, v["n"], _fmt(v["p50_s"]), _fmt(v["p95_s"]))
                    for s, v in result["stages"].items()
                ],
            )
        )
    return 0 if result["passed"] else 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
