"""The generation worker (services/generation_worker.py) and drafts skipped when not shown.

Fast tests drive the worker with a small fake model (what is batched with what, the bounded
wait, per-session results, answers before background work); the slow ones use the packaged
model: a batch of three drafts equals the three drafts made one by one, and a quoted answer
on strong evidence is the same answer with or without the draft it no longer makes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from core.backends.base import Message
from core.config import Settings
from services.generation_worker import GenerationWorker, low_priority, queue_updates


class FakeModel:
    """Drafts echo the question word by word; ``gate`` holds a model run until set."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self.log: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    def generate_batch(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        on_piece: Callable[[int, str | None], None],
    ) -> None:
        questions = [p[-1]["content"] for p in prompts]
        self.batches.append(questions)
        self.log.append("draft:" + ",".join(questions))
        self.running.set()
        self.gate.wait(10)
        time.sleep(self.seconds)
        for row, q in enumerate(questions):
            for word in f"answer to {q}".split()[:max_new_tokens]:
                on_piece(row, word + " ")
            on_piece(row, None)

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        # a draft alone goes through the model's own stream: here a batch of one
        pieces: list[str | None] = []
        self.generate_batch(
            [messages], max_new_tokens=max_new_tokens, on_piece=lambda _r, t: pieces.append(t)
        )
        yield from (p for p in pieces if p is not None)

    def logprobs(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str], batch_size: int = 8
    ) -> np.ndarray:
        self.log.append("logprobs")
        return np.zeros((len(prompts), len(targets)))


def _ask(worker: GenerationWorker, question: str) -> str:
    messages: list[Message] = [{"role": "user", "content": question}]
    return "".join(worker.stream(messages, max_new_tokens=8, temperature=0.0))


def _in_threads(fn: Callable[[str], Any], names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run(name: str) -> None:
        out[name] = fn(name)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_concurrent_drafts_are_one_batch_and_each_session_gets_its_own_text() -> None:
    model = FakeModel()
    worker = GenerationWorker(model, wait_s=0.3, max_batch=8)
    out = _in_threads(lambda q: _ask(worker, q), ["q1", "q2", "q3"])
    assert out == {q: f"answer to {q} " for q in ["q1", "q2", "q3"]}
    assert [sorted(b) for b in model.batches] == [["q1", "q2", "q3"]]
    worker.close()


def test_the_wait_is_bounded_and_the_batch_size_capped() -> None:
    model = FakeModel()
    worker = GenerationWorker(model, wait_s=0.2, max_batch=2)
    t = time.monotonic()
    assert _ask(worker, "alone") == "answer to alone "
    alone = time.monotonic() - t
    assert 0.15 <= alone < 2.0  # waited for company about wait_s, then went alone
    _in_threads(lambda q: _ask(worker, q), ["a", "b", "c"])
    assert sorted(len(b) for b in model.batches[1:]) == [1, 2]
    worker.close()


def test_batching_off_runs_drafts_one_by_one() -> None:
    model = FakeModel()
    worker = GenerationWorker(model, wait_s=0.3, batching=False)
    out = _in_threads(lambda q: _ask(worker, q), ["x", "y", "z"])
    assert out["y"] == "answer to y "
    assert [len(b) for b in model.batches] == [1, 1, 1]
    worker.close()


def test_answers_go_before_background_calls_and_waiters_see_their_position() -> None:
    model = FakeModel()
    model.gate.clear()
    worker = GenerationWorker(model, wait_s=0.0)
    first = threading.Thread(target=_ask, args=(worker, "first"))
    first.start()
    assert model.running.wait(5)  # the model is busy with "first"

    def background() -> None:
        with low_priority():
            worker.logprobs([[{"role": "user", "content": "attribution"}]], ["t"])

    positions: list[int] = []

    def answer() -> None:
        with queue_updates(positions.append):
            _ask(worker, "second")

    bg = threading.Thread(target=background)
    bg.start()
    time.sleep(0.2)  # the background call is queued first
    fg = threading.Thread(target=answer)
    fg.start()
    time.sleep(0.3)
    assert worker.ahead() == 2  # "first" running, "second" queued; attribution not counted
    model.gate.set()
    for t in (first, bg, fg):
        t.join(10)
    assert model.log == ["draft:first", "draft:second", "logprobs"]
    assert positions and positions[0] == 1  # behind "first" only, not behind the attribution
    worker.close()


def test_a_model_error_reaches_the_caller() -> None:
    class Broken(FakeModel):
        def generate_batch(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("out of memory")

    worker = GenerationWorker(Broken(), wait_s=0.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        _ask(worker, "q")
    worker.close()


# ------------------------------------------------------------------ the packaged model


@pytest.mark.slow
def test_batched_greedy_drafts_equal_unbatched_ones(library: Settings, packaged_llm: Any) -> None:
    from assistant.generate import build_messages
    from assistant.prompts import load_template
    from assistant.retrieve import Retriever

    retriever = Retriever(library)
    template = load_template(library.prompt_template)
    questions = [
        "What is the first-line treatment for hypertension?",
        "When should adults be screened for type 2 diabetes?",
        "Which vaccine is recommended for adults over 65?",
    ]
    prompts = [build_messages(template, q, retriever.retrieve(q, k=3)) for q in questions]
    alone = [
        "".join(packaged_llm.stream(p, max_new_tokens=24, temperature=0.0)).strip() for p in prompts
    ]
    worker = GenerationWorker(packaged_llm, wait_s=1.0, max_batch=3)
    batched = _in_threads(
        lambda i: "".join(
            worker.stream(prompts[int(i)], max_new_tokens=24, temperature=0.0)
        ).strip(),
        ["0", "1", "2"],
    )
    worker.close()
    assert worker.stats.batches == [3]
    assert len(set(alone)) == 3
    assert [batched[str(i)] for i in range(3)] == alone


@pytest.mark.slow
def test_a_quoted_answer_makes_no_draft_and_says_so(library: Settings, packaged_llm: Any) -> None:
    from assistant import policy
    from assistant.pipeline import Assistant

    calls: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(packaged_llm, name)

        @property
        def info(self) -> Any:
            return packaged_llm.info

        def stream(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return packaged_llm.stream(*args, **kwargs)

    base = library.model_copy(update={"attribution": "off", "answer_style": "quoted"})
    question = "What is the first-line treatment for hypertension?"
    answers = {}
    for draft in (False, True):
        settings = base.model_copy(update={"quoted_draft": draft})
        answers[draft] = Assistant(settings, llm=Counting()).ask(question, record=False)
    skipped, drafted = answers[False], answers[True]
    assert calls == [1]  # only the assistant told to draft drafted
    assert skipped.mode == drafted.mode == "quoted"
    assert skipped.answer == drafted.answer
    assert skipped.generation is not None and drafted.generation is not None
    assert skipped.generation.template == policy.NO_DRAFT_TEMPLATE
    assert skipped.generation.text == "" and skipped.unverified == []
    assert drafted.generation.text  # the old behaviour: a draft nobody is shown


def test_app_sessions_share_the_worker_without_the_one_question_lock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ui import session

    class FakeAssistant:
        def __init__(self, s: Settings) -> None:
            self.settings, self.llm = s, FakeModel()

        def warm_up(self) -> None:
            pass

    monkeypatch.setattr(session, "assistant_factory", FakeAssistant)
    lock = session._lock(str(settings.home))
    try:
        for batching in (True, False):
            session._assistant.clear()
            s = settings.model_copy(update={"generation_batching": batching})
            with session.assistant_session(s) as assistant:
                assert isinstance(assistant.llm, GenerationWorker) is batching
                # with the worker another session may ask meanwhile; without it, it waits
                assert lock.locked() is not batching
            assert not lock.locked()
    finally:
        session._assistant.clear()
