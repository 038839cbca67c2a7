"""Attribution coverage (issue 15): every answer ends attributed, or failed with a reason.

Asks questions through the app's code path (Streamlit ``AppTest`` over ``ui/app.py``) and
through ``clinrag ask``, kills one ``clinrag ask`` process with SIGKILL while it attributes,
then restarts (a new app start, which recovers what was left pending) and counts the answers
attributed / pending / failed, with every failure's reason.

    .venv/bin/python -m benchmarks.attribution_coverage                  # 20 + 20 questions
    .venv/bin/python -m benchmarks.attribution_coverage --app 2 --cli 2  # what make test runs

The questions are the clinician set's (``evaluation/sets/clinician``) over the sample library
(``data_samples``). The packaged model answers; ``--attribution`` picks the method (the
queue does not depend on it: the cheapest real one keeps the run short). The killed process
uses the surrogate with many ablations, so the kill lands mid-attribution, not after it.
The model cache is kept in ``benchmarks/.cache/models`` across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "evaluation" / "sets" / "clinician" / "clinician_questions.jsonl"
MODELS_CACHE = Path(__file__).resolve().parent / ".cache" / "models"
APP = str(REPO / "ui" / "app.py")
CLINICIAN = ("carol", "clinician-password-1")
KILL_ABLATIONS = 256  # the killed process's attribution: far longer than the kill takes
KILL_TIMEOUT_S = 900


@dataclass
class Report:
    app_answers: int = 0
    cli_answers: int = 0
    killed_answer: int | None = None
    killed_pending_after_kill: bool = False
    attributed: int = 0
    pending: int = 0
    failed: int = 0
    reasons: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"answers attributed {self.attributed}, pending {self.pending}, failed "
            f"{self.failed} (app {self.app_answers}, CLI {self.cli_answers}, killed answer "
            f"{self.killed_answer}: pending after the kill {self.killed_pending_after_kill})"
        )


def questions(n: int, skip: int = 0) -> list[str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [str(r["question"]) for r in rows[skip : skip + n]]


def build_home(home: Path, models: Path) -> Path:
    """The sample library in ``home`` (models linked to ``models``), with the accounts."""
    from core.config import load_settings
    from ingest.index import ingest

    home.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models, target_is_directory=True)
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    summary = ingest([REPO / "data_samples"], settings, progress=False)
    if summary.failed:
        raise SystemExit(f"ingest failed: {summary.to_dict()}")
    return add_accounts(home)


def add_accounts(home: Path) -> Path:
    """The administrator and the clinician who asks through the app."""
    from core.config import load_settings
    from services.accounts import add_user, ensure_admin

    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    ensure_admin(settings, "admin-password-1")
    add_user(settings, CLINICIAN[0], CLINICIAN[1], "clinician")
    return home


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _coverage(home: Path) -> Any:
    from core.config import load_settings
    from core.types import Actor
    from services import audit

    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    return audit.attribution_coverage(settings, Actor("bench", "auditor"))


def kill_mid_attribution(
    home: Path, questions: Sequence[str], env: dict[str, str]
) -> tuple[int, int]:
    """``clinrag ask`` in its own process, killed (SIGKILL) once it starts attributing.

    Questions are tried in turn until one is attributed (an abstention has nothing to
    attribute: that process ends by itself, its answer counted like any other). Returns the
    answer record the killed process left and how many questions were asked."""
    from audit.record import open_log
    from core.config import load_settings

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CLINRAG_")} | env
    child_env |= {"CLINRAG_ATTRIBUTION": "surrogate"}
    child_env |= {"CLINRAG_ATTRIBUTION_ABLATIONS": str(KILL_ABLATIONS)}
    for asked, question in enumerate(questions, start=1):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ui.cli.main", "ask", question, "--user", "dave"]
            + ["--role", "clinician", "--no-service"],
            cwd=REPO,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            for line in proc.stderr:
                seen.append(line)
                if line.startswith("attributing ("):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            try:
                proc.wait(KILL_TIMEOUT_S)
            finally:
                proc.kill()
        if proc.returncode == -signal.SIGKILL:
            with open_log(load_settings(env={"CLINRAG_HOME": str(home)})) as log:
                answers = log.list(event="answer", user="dave")
            return answers[-1].seq, asked
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"clinrag ask failed:\n{''.join(seen)[-3000:]}")
    raise RuntimeError("no question was answered with something to attribute")


def ask_cli(questions: Sequence[str], assistant: Any) -> int:
    """``clinrag ask`` (its real ``main``) in this process, on one warm assistant (a process
    per question would load the model each time). The CLI attributes before it exits."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from services import ask as asking
    from ui.cli.main import main

    original = asking.open_assistant
    asking.open_assistant = lambda settings: assistant
    try:
        done = 0
        for q in questions:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(["ask", q, "--user", "dave", "--role", "clinician", "--no-service"])
            if code not in (0, 1):  # 1: answered, attribution failed (recorded)
                raise RuntimeError(f"clinrag ask exited {code}: {err.getvalue()[-2000:]}")
            done += 1
        return done
    finally:
        asking.open_assistant = original


def ask_app(
    questions: Sequence[str], assistant_factory: Callable[[Any], Any], timeout: float
) -> int:
    """A new app process's first page (it recovers the pending answers), then each question
    asked on the Ask page; returns once every answer shown has its attribution or failure."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import ui.session

    ui.session.assistant_factory = assistant_factory
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.text_input(key="signin_username").input(CLINICIAN[0])
    at.text_input(key="signin_password").input(CLINICIAN[1])
    at.button[0].click().run()
    for q in questions:
        at.chat_input(key="question").set_value(q).run()
        if at.exception:
            raise RuntimeError(str(at.exception))
    return len([m for m in at.chat_message if m.name == "assistant"])


def wait_settled(home: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    coverage = _coverage(home)
    while coverage.pending and time.monotonic() < deadline:
        time.sleep(1.0)
        coverage = _coverage(home)
    return coverage


def run(
    home: Path,
    app_questions: Sequence[str],
    cli_questions: Sequence[str],
    llm: Any,
    *,
    attribution: str = "similarity",
    ablations: int = 32,
    max_new_tokens: int = 64,
    timeout: float = 1800,
) -> Report:
    """The whole measurement over a built ``home``; ``llm`` is the loaded packaged model the
    app and the in-process CLI share (the killed CLI process loads its own)."""
    from assistant.pipeline import Assistant
    from audit.record import open_log
    from core.config import load_settings
    from services.attribution_queue import pending_answers

    env = {
        "CLINRAG_HOME": str(home),
        "CLINRAG_ATTRIBUTION": attribution,
        "CLINRAG_ATTRIBUTION_ABLATIONS": str(ablations),
        "CLINRAG_MAX_NEW_TOKENS": str(max_new_tokens),
        "CLINRAG_QUESTIONS_PER_MINUTE": "1000",
    }
    report = Report()
    with environment(env):
        settings = load_settings(env=env)
        t = time.perf_counter()
        killed, asked = kill_mid_attribution(home, cli_questions, env)
        report.seconds["killed_cli"] = time.perf_counter() - t
        report.killed_answer = killed
        report.killed_pending_after_kill = killed in {r.seq for r in pending_answers(settings)}
        t = time.perf_counter()
        assistant = Assistant(settings, llm=llm)
        assistant.warm_up()
        report.cli_answers = asked + ask_cli(cli_questions[asked:], assistant)
        report.seconds["cli"] = time.perf_counter() - t
        t = time.perf_counter()
        report.app_answers = ask_app(app_questions, lambda s: Assistant(s, llm=llm), timeout)
        coverage = wait_settled(home, timeout)
        report.seconds["app_and_recovery"] = time.perf_counter() - t
    report.attributed, report.pending, report.failed = (
        coverage.attributed,
        coverage.pending,
        coverage.failed,
    )
    with open_log(settings) as log:
        for record in log.list(event="attribution_failed"):
            report.reasons[int(record.payload["answer_id"])] = str(record.payload["reason"])
    return report


def main(argv: list[str] | None = None) -> int:
    from core.config import apply_offline_environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--app", type=int, default=20, help="questions asked through the app")
    p.add_argument("--cli", type=int, default=20, help="questions asked with clinrag ask")
    p.add_argument("--attribution", default="similarity", help="the method (setting)")
    p.add_argument("--ablations", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    apply_offline_environment()
    if args.app + args.cli > 40 or args.cli < 1:
        p.error("at most 40 questions in all (the clinician set), at least 1 via the CLI")
    from core import backends
    from core.config import load_settings

    root = Path(tempfile.mkdtemp(prefix="clinrag-coverage-"))
    try:
        home = build_home(root / "home", MODELS_CACHE)
        llm = backends.create("llm", "transformers", load_settings(env={"CLINRAG_HOME": str(home)}))
        llm.warm_up()
        start = time.perf_counter()
        report = run(
            home,
            questions(args.app),
            questions(args.cli, skip=args.app),
            llm,
            attribution=args.attribution,
            ablations=args.ablations,
            max_new_tokens=args.max_new_tokens,
        )
        report.seconds["total"] = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.line())
        for seq, reason in sorted(report.reasons.items()):
            print(f"  answer {seq} failed: {reason}")
        print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.seconds.items()))
    ok = report.pending == 0 and report.killed_pending_after_kill
    ok = ok and all(report.reasons.get(s) for s in report.reasons)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
