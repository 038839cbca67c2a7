"""Attribution in the background (issue 15): the queue, recovery after a restart, claims.

Fast tests: the real library, audit log and Assistant with the extractive stand-in LLM and
the attribution stand-in of ``test_ui_fakes`` (the queue is under test, not the method). The
slow test asks through the app (AppTest) and the CLI with the packaged model scoring a real
method, kills a ``clinrag ask`` with SIGKILL mid-attribution and checks the next start
attributes what it left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from audit.record import open_log
from core.config import Settings, load_settings
from core.types import Actor, Answer
from services import ask as asking
from services import audit
from services.attribution_queue import (
    AttributionQueue,
    State,
    answer_from_record,
    pending_answers,
)
from tests.test_ui_fakes import ExtractiveLLM, attributing_assistant

REPO = Path(__file__).resolve().parent.parent
HTN = "What blood pressure defines stage 1 hypertension?"
CRC = "At what age should average-risk adults start colorectal cancer screening?"
CLINICIAN = Actor("carol", "clinician")
AUDITOR = Actor("audrey", "auditor")
FAITH = {"k": 1, "top_k_drop": 1.2, "random_drop": 0.1, "flag_memory": False}


@pytest.fixture
def home(accounts_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(accounts_library, copy)
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    return copy


def _settings(home: Path, **update: Any) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(home)}).model_copy(update=update)


def _records(home: Path, event: str) -> list[Any]:
    with open_log(_settings(home)) as log:
        return log.list(event=event)


def _coverage(home: Path) -> audit.Coverage:
    return audit.attribution_coverage(_settings(home), AUDITOR)


class Ordered:
    """An attributing stand-in that notes the order answers are attributed in, and can be
    made to fail or to block."""

    def __init__(self, settings: Settings) -> None:
        self.inner = attributing_assistant(settings, FAITH)
        self.order: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        inner_attribute = self.inner.attribute

        def attribute(answer: Answer, method: str | None = None) -> Answer:
            self.gate.wait(30)
            self.order.append(int(answer.audit_id or 0))
            return inner_attribute(answer, method)

        self.inner.attribute = attribute


def _queue(helper: Any, lock: threading.Lock | None = None) -> AttributionQueue:
    return AttributionQueue(helper.settings, lambda: helper, lock or threading.Lock())


def test_answers_are_attributed_in_the_background_and_linked(home: Path) -> None:
    helper = Ordered(_settings(home))
    queue = _queue(helper.inner)
    helper.gate.clear()  # the attribution is slow: the caller must not wait for it
    answer = asking.ask(helper.inner, CLINICIAN, HTN)
    started = time.monotonic()
    job = queue.submit(CLINICIAN, answer)
    assert job is not None and time.monotonic() - started < 1.0
    assert not job.done and _coverage(home) == audit.Coverage(0, 1, 0)
    helper.gate.set()
    assert queue.wait(30)
    assert job.state == State.ATTRIBUTED and job.result is not None
    assert job.result.attribution is not None
    assert answer.attribution is None  # the shown answer is replaced, never changed in place
    [record] = _records(home, "attribution")
    assert record.payload["answer_id"] == answer.audit_id and record.user == "carol"
    assert _coverage(home) == audit.Coverage(1, 0, 0)
    # nothing to attribute: no job
    assert queue.submit(CLINICIAN, asking.ask(helper.inner, CLINICIAN, "bike chain?")) is None


def test_new_answers_go_before_a_backlog_recovered_at_start(home: Path) -> None:
    helper = Ordered(_settings(home))
    backlog = [asking.ask(helper.inner, CLINICIAN, HTN).audit_id for _ in range(2)]
    helper.gate.clear()
    queue = _queue(helper.inner)
    queue.recover()
    deadline = time.monotonic() + 20
    while not any(j.state == State.RUNNING for j in queue.jobs()):
        assert time.monotonic() < deadline, "recovery did not start"
        time.sleep(0.02)
    new = asking.ask(helper.inner, CLINICIAN, CRC)
    queue.submit(CLINICIAN, new)
    helper.gate.set()
    assert queue.wait(30)
    assert helper.order == [backlog[0], new.audit_id, backlog[1]]
    assert _coverage(home) == audit.Coverage(3, 0, 0)


def test_the_worker_outlives_an_error_and_records_it(home: Path) -> None:
    settings = _settings(home)
    helper = attributing_assistant(settings, FAITH)
    first = asking.ask(helper, CLINICIAN, HTN)
    second = asking.ask(helper, CLINICIAN, CRC)
    calls: list[int] = []

    def broken(answer: Answer, method: str | None = None) -> Answer:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        answer.attribution = {"method": "t", "scores": [1.0], "sources": [], "faithfulness": None}
        return answer

    helper.attribute = broken
    queue = _queue(helper)
    jobs = [queue.submit(CLINICIAN, first), queue.submit(CLINICIAN, second)]
    assert queue.wait(30)
    assert [j.state for j in jobs if j] == [State.FAILED, State.ATTRIBUTED]
    assert jobs[0] is not None and jobs[0].reason == "RuntimeError: out of memory"
    [failed] = _records(home, "attribution_failed")
    assert failed.payload == {"answer_id": first.audit_id, "reason": jobs[0].reason}


def test_a_recorded_answer_is_rebuilt_as_it_was_given(home: Path) -> None:
    settings = _settings(home)
    helper = attributing_assistant(settings, FAITH)
    given = asking.ask(helper, CLINICIAN, HTN)
    [record] = [r for r in _records(home, "answer") if r.seq == given.audit_id]
    # another process: a fresh assistant over the same home
    rebuilt = answer_from_record(attributing_assistant(settings, FAITH), record)
    assert rebuilt.question == given.question and rebuilt.audit_id == given.audit_id
    assert [s.text for s in rebuilt.sentences] == [s.text for s in given.sentences]
    assert [s.evidence for s in rebuilt.sentences] == [s.evidence for s in given.sentences]
    assert [h.chunk.chunk_id for h in rebuilt.hits] == [h.chunk.chunk_id for h in given.hits]
    assert rebuilt.source_sentences == given.source_sentences
    assert given.generation is not None and rebuilt.generation is not None
    assert rebuilt.generation.text == given.generation.text
    assert rebuilt.generation.prompt_hash == given.generation.prompt_hash
    assert rebuilt.mode == given.mode and rebuilt.citations[0].text == given.citations[0].text
    # a quoted answer given without a draft (no prompt used) is rebuilt too
    from assistant.policy import NO_DRAFT_TEMPLATE

    quoted = attributing_assistant(
        _settings(home, answer_style="quoted", quoted_draft=False), FAITH
    )
    undrafted = asking.ask(quoted, CLINICIAN, HTN)
    assert undrafted.generation is not None
    assert undrafted.generation.template == NO_DRAFT_TEMPLATE
    [record] = [r for r in _records(home, "answer") if r.seq == undrafted.audit_id]
    assert answer_from_record(quoted, record).sentences == undrafted.sentences


def test_recovery_marks_what_cannot_be_attributed_with_the_reason(home: Path) -> None:
    hashed = attributing_assistant(_settings(home, audit_questions="hashed"), FAITH)
    secret = asking.ask(hashed, CLINICIAN, HTN)
    plain = attributing_assistant(_settings(home), FAITH)
    kept = asking.ask(plain, CLINICIAN, HTN)
    other = attributing_assistant(_settings(home), FAITH)

    class OtherModel(ExtractiveLLM):
        @property
        def info(self) -> Any:
            from core.types import ModelInfo

            return ModelInfo(backend="fake", model_id="another-model", weights_hash="1" * 64)

    assert len(pending_answers(_settings(home))) == 2
    other.llm = OtherModel()
    queue = _queue(other)
    queue.recover()
    assert queue.wait(30)
    reasons = {
        r.payload["answer_id"]: r.payload["reason"] for r in _records(home, "attribution_failed")
    }
    assert len(reasons) == 2 and not _records(home, "attribution")
    assert "keeps the question hashed" in reasons[int(secret.audit_id or 0)]
    assert "another-model" in reasons[int(kept.audit_id or 0)]
    assert _coverage(home) == audit.Coverage(0, 0, 2)
    assert pending_answers(_settings(home)) == []


_HOLDER = """
import sys, time
from core.config import load_settings
from services.ask import claim
with claim(load_settings(env={"CLINRAG_HOME": sys.argv[1]}), 7) as mine:
    print("held" if mine else "refused", flush=True)
    time.sleep(60)
"""


def test_a_claim_keeps_other_processes_out_until_its_holder_dies(home: Path) -> None:
    settings = _settings(home)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(home)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with asking.claim(settings, 7) as mine:
            assert not mine
        with asking.claim(settings, 8) as mine:
            assert mine  # another answer is free
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with asking.claim(settings, 7) as mine, asking.claim(settings, 7) as again:
            assert mine and again  # free once its holder died; re-entrant in one thread
        held: list[bool] = []

        def other_thread() -> None:
            with asking.claim(settings, 7) as theirs:
                held.append(theirs)

        with asking.claim(settings, 7):
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert held == [False]
    finally:
        proc.kill()
        proc.wait()


def test_cli_resume_attributes_every_pending_answer(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ui.cli.main import main

    helper = attributing_assistant(_settings(home), FAITH)
    monkeypatch.setattr(asking, "open_assistant", lambda s: helper)
    assert main(["ask", HTN, "--no-attribution", "--no-service"]) == 0
    assert main(["ask", CRC, "--no-attribution", "--no-service"]) == 0
    capsys.readouterr()
    assert _coverage(home) == audit.Coverage(0, 2, 0)
    assert main(["attribution", "resume"]) == 0
    out, err = capsys.readouterr()
    assert "2 answers await attribution" in err and "[2/2] answer" in err
    assert out.strip().startswith("attributed 2, failed 0, skipped 0")
    assert _coverage(home) == audit.Coverage(2, 0, 0)
    assert main(["attribution", "resume"]) == 0
    assert capsys.readouterr().out.startswith("attributed 0, failed 0")


@pytest.mark.slow
def test_every_answer_ends_attributed_after_a_kill_mid_attribution(
    tmp_path: Path, library: Settings, packaged_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coverage benchmark, small: 2 questions through the app, 2 through ``clinrag ask``
    (the first killed with SIGKILL as it starts attributing), the packaged model scoring the
    similarity method. The app's start recovers the killed process's answer."""
    import streamlit as st

    import ui.session
    from benchmarks.attribution_coverage import add_accounts, questions, run

    monkeypatch.setattr(ui.session, "assistant_factory", None)  # run() sets it
    home = tmp_path / "home"
    # the ingested samples, models linked; a log of its own (the library's holds other
    # tests' answers, which this test's app would attribute too)
    shutil.copytree(
        library.home,
        home,
        symlinks=True,
        ignore=shutil.ignore_patterns("audit.sqlite*", "audit.checkpoint*", "keys"),
    )
    add_accounts(home)
    try:
        report = run(home, questions(2), questions(2, skip=2), packaged_llm, max_new_tokens=32)
    finally:
        st.cache_resource.clear()
    print(report.line(), report.reasons, report.seconds)
    assert report.killed_answer is not None and report.killed_pending_after_kill, report
    assert report.app_answers == 2 and report.cli_answers == 2
    assert report.pending == 0 and report.attributed + report.failed == 4, report
    assert all(report.reasons.values()), report.reasons
    linked = {r.payload["answer_id"] for r in _records(home, "attribution")}
    assert report.killed_answer in linked  # recovered: attributed by the restarted app


def test_a_busy_model_server_is_tried_again_then_recorded_failed(home: Path) -> None:
    """A timeout or HTTP 5xx from the model server is not the answer's fault: the queue
    records nothing and tries again after a growing wait; only after its last try does it
    record the failure."""
    from core.errors import ModelServerBusyError

    settings = _settings(home, attribution_retries=2, attribution_retry_seconds=0.05)
    helper = attributing_assistant(settings, FAITH)
    first = asking.ask(helper, CLINICIAN, HTN)
    second = asking.ask(helper, CLINICIAN, CRC)
    calls: dict[int, int] = {}
    busy_until = {int(first.audit_id or 0): 1, int(second.audit_id or 0): 99}
    inner = helper.attribute

    def busy(answer: Answer, method: str | None = None) -> Answer:
        n = int(answer.audit_id or 0)
        calls[n] = calls.get(n, 0) + 1
        if calls[n] <= busy_until[n]:
            raise ModelServerBusyError("the model server did not answer (ReadTimeout)")
        return inner(answer, method)

    helper.attribute = busy
    queue = _queue(helper)
    jobs = [queue.submit(CLINICIAN, first), queue.submit(CLINICIAN, second)]
    assert queue.wait(30)
    ok, failed = jobs
    assert ok is not None and failed is not None
    # the first: busy once, then attributed; one attribution record, no failure for it
    assert ok.state == State.ATTRIBUTED and calls[int(first.audit_id or 0)] == 2
    # the second: the first try and its two retries busy, then recorded failed
    assert failed.state == State.FAILED and calls[int(second.audit_id or 0)] == 3
    assert "ModelServerBusyError" in failed.reason
    [attributed] = _records(home, "attribution")
    assert attributed.payload["answer_id"] == first.audit_id
    [recorded] = _records(home, "attribution_failed")
    assert recorded.payload["answer_id"] == second.audit_id
