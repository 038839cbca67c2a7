"""Whole-process `clinrag ask` time against the pipeline time, with and without `clinrag serve`.

Issue 17 (item 5): a `clinrag ask` on a warm home spent most of its life starting up. This
runs the real command as separate processes, timed end to end, and reads the pipeline's own
time (``timings.total`` of ``--json``) from each answer:

1. in-process (``--no-service``): imports, assistant load and warm-up, then the pipeline;
2. through a running ``clinrag serve`` (started here, timed until it answers ``/health``).

Then, in this process, where an in-process start-up goes (imports, assistant, retriever,
model, rare-term table) with the same timers. Attribution is off for every ask
(``--no-attribution``): it is the same work either way and would only add noise.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.cli_startup [--home DIR]
        [--baseline OTHER_CHECKOUT]

The pipeline time excludes ``timings.model_load``: `clinrag ask` loads the language model
only when an answer needs it (a quoted answer or a decline never does), and that load is
start-up work, counted in the overhead.

Without ``--home`` (or ``CLINRAG_HOME``) a home is built in a temporary folder from
``data_samples`` (the first ask there also converts the packaged model: reported apart).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUESTION = "When should colorectal cancer screening start?"


def _cli(
    home: Path, *args: str, tree: Path = REPO
) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = os.environ | {"CLINRAG_HOME": str(home)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli.main", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"clinrag {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done


def _ask(home: Path, question: str, *extra: str, tree: Path = REPO) -> dict[str, float]:
    seconds, done = _cli(home, "ask", question, "--json", "--no-attribution", *extra, tree=tree)
    answer = json.loads(done.stdout)
    # a model loaded on demand inside the ask is start-up work, not the pipeline's
    model_load = float(answer["timings"].get("model_load", 0.0))
    pipeline = float(answer["timings"]["total"]) - model_load
    return {
        "whole": seconds,
        "pipeline": pipeline,
        "model load": model_load,
        "overhead": seconds - pipeline,
    }


def _start_service(home: Path) -> tuple[subprocess.Popen[str], float]:
    from core.config import load_settings
    from services.serve import ServiceUnavailable, read_service

    settings = load_settings(None, env=os.environ | {"CLINRAG_HOME": str(home)})
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.cli.main", "serve"],
        cwd=REPO,
        env=os.environ | {"CLINRAG_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"clinrag serve exited:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            info = read_service(settings)
            conn = http.client.HTTPConnection(info.host, info.port, timeout=5)
            conn.request("GET", "/health", headers={"Authorization": f"Bearer {info.token}"})
            if conn.getresponse().status == 200 and info.pid == proc.pid:
                return proc, time.perf_counter() - start
        except (ServiceUnavailable, OSError):
            pass
        time.sleep(0.2)


def _breakdown(home: Path, question: str) -> dict[str, float]:
    """Where an in-process start-up goes, timed in this (so far model-free) process."""
    os.environ["CLINRAG_HOME"] = str(home)
    out: dict[str, float] = {}
    t = time.perf_counter()
    from core.config import apply_offline_environment, load_settings

    apply_offline_environment()
    settings = load_settings()
    out["load settings"] = time.perf_counter() - t
    t = time.perf_counter()
    from assistant import coverage
    from assistant.pipeline import Assistant

    out["import the assistant pipeline"] = time.perf_counter() - t
    t = time.perf_counter()
    assistant = Assistant(settings)
    out["build assistant"] = time.perf_counter() - t
    t = time.perf_counter()
    assistant.retriever.warm_up()
    out["warm up retriever (embedder, index, BM25)"] = time.perf_counter() - t
    # `clinrag ask` loads the model only when an answer needs it; timed apart here
    t = time.perf_counter()
    assistant.llm.warm_up()
    out["warm up language model (when an answer needs it)"] = time.perf_counter() - t
    if settings.abstain_rare_term_zipf > 0:
        t = time.perf_counter()
        coverage.warm_up()
        out["warm up rare-term table"] = time.perf_counter() - t
    answer = assistant.ask(question, record=False, attribute=False)
    out["pipeline (one ask, not recorded)"] = float(answer.timings["total"])
    return out


def _build_home(root: Path) -> Path:
    home = root / "home"
    _cli(home, "ingest", str(REPO / "data_samples"))
    return home


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=os.environ.get("CLINRAG_HOME") or None)
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-breakdown", action="store_true")
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of an earlier commit): its in-process "
        "asks alternate with this one's, for a before/after from one run",
    )
    args = p.parse_args(argv)
    from core.config import apply_offline_environment

    apply_offline_environment()
    print(f"load average at start: {os.getloadavg()}, CPUs: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="clinrag-cli-startup-") as tmp:
        home = Path(args.home) if args.home else _build_home(Path(tmp))
        first = _ask(home, args.question, "--no-service")  # converts the model on a new home
        print(f"first ask (discarded): whole {first['whole']:.1f} s")
        rows: dict[str, list[dict[str, float]]] = {"in-process": []}
        if args.baseline:
            rows["in-process, baseline"] = []
        rows["via clinrag serve"] = []
        for _ in range(args.repeats):
            rows["in-process"].append(_ask(home, args.question, "--no-service"))
            if args.baseline:
                rows["in-process, baseline"].append(
                    _ask(home, args.question, "--no-service", tree=args.baseline)
                )
        proc, ready = _start_service(home)
        try:
            print(f"clinrag serve ready in {ready:.1f} s (once, not per question)")
            for _ in range(args.repeats):
                rows["via clinrag serve"].append(_ask(home, args.question))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(
            f"\n{'mode':22} {'whole s':>8} {'pipeline s':>11} {'model load s':>13} "
            f"{'overhead s':>11}  (medians)"
        )
        summary: dict[str, Any] = {"service_ready_s": round(ready, 2)}
        for mode, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary[mode] = {k: round(v, 2) for k, v in med.items()} | {
                "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs]
            }
            print(
                f"{mode:22} {med['whole']:8.2f} {med['pipeline']:11.2f} "
                f"{med['model load']:13.2f} {med['overhead']:11.2f}"
            )
        if not args.no_breakdown:
            parts = _breakdown(home, args.question)
            summary["in-process breakdown"] = {k: round(v, 2) for k, v in parts.items()}
            print("\nin-process start-up, timed in one process:")
            for name, seconds in parts.items():
                print(f"  {name:55} {seconds:7.2f} s")
    print(f"\nload average at end: {os.getloadavg()}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
