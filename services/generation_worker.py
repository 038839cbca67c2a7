"""One model, many sessions: a worker thread that runs every model call of the app process.

Sessions call it as they would call the LLM (it is one: ``stream``, ``logprobs``,
``attention``, the rest passed through), from their own threads. Drafts (greedy ``stream``
calls with the same ``max_new_tokens``) that arrive within ``wait_s`` of the first one are
generated as one left-padded batch (``TransformersLLM.generate_batch``): on a CPU a batch of
n drafts costs far less than n drafts one after another, since each decoding step reads the
weights once for all rows. Each session gets its own row's text as it is decoded, cut at
word ends as an unbatched stream is, and its stream ends when its row ends, not the batch.

Order: answers before background work. A call made inside :func:`low_priority` (the
attribution queue's thread) waits while any answer's call is queued; attribution makes many
short calls, so a question asked during an attribution waits for one of them, not for all.
While a call waits, the caller's :func:`queue_updates` callback is told how many answer calls
are ahead of it, so a clinician sees a queue position rather than a still page.

Greedy outputs equal unbatched ones up to float rounding (see ``generate_batch``); sampled
drafts (temperature above 0) are generated one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.backends.base import Message

ANSWER, BACKGROUND = 0, 1
# How often a waiting caller's queue position is refreshed.
POLL_SECONDS = 0.5

_local = threading.local()


@contextlib.contextmanager
def low_priority() -> Iterator[None]:
    """Model calls made by this thread inside the block wait while answers are queued."""
    before = getattr(_local, "priority", ANSWER)
    _local.priority = BACKGROUND
    try:
        yield
    finally:
        _local.priority = before


@contextlib.contextmanager
def queue_updates(callback: Callable[[int], None]) -> Iterator[None]:
    """While this thread's model call waits, ``callback(calls ahead)`` is called (from this
    thread) when the position changes."""
    before = getattr(_local, "on_wait", None)
    _local.on_wait = callback
    try:
        yield
    finally:
        _local.on_wait = before


@dataclass
class _Job:
    priority: int
    seq: int
    kind: str  # "draft" (batchable) or "call"
    arrived: float
    messages: Sequence[Message] = ()
    max_new_tokens: int = 0
    call: Callable[[], Any] | None = None
    pieces: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class Stats:
    """What the worker did (benchmarks, tests)."""

    batches: list[int] = field(default_factory=list)  # drafts per model run
    calls: int = 0


class GenerationWorker:
    """The process's model behind one thread (module docstring)."""

    def __init__(
        self,
        llm: Any,
        *,
        wait_s: float = 0.05,
        max_batch: int = 8,
        batching: bool = True,
    ) -> None:
        self.inner = llm
        self.wait_s = wait_s
        self.max_batch = max_batch if batching else 1
        self.stats = Stats()
        self._jobs: list[_Job] = []
        self._running: list[_Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ the LLM protocol

    def __getattr__(self, name: str) -> Any:
        # info, warm_up, load_report, attention_layout, device: the model's own
        return getattr(self.inner, name)

    def warm_up(self) -> None:
        self.inner.warm_up()

    @property
    def info(self) -> Any:
        return self.inner.info

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        if temperature > 0 or not hasattr(self.inner, "generate_batch"):
            # sampled drafts are not batched: one call, its pieces forwarded as they come
            def sampled() -> list[str]:
                return list(
                    self.inner.stream(
                        messages, max_new_tokens=max_new_tokens, temperature=temperature
                    )
                )

            yield from self._submit_call(sampled)
            return
        job = self._put("draft", messages=messages, max_new_tokens=max_new_tokens)
        yield from self._pieces(job)

    def logprobs(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str], batch_size: int = 8
    ) -> Any:
        return self._call(lambda: self.inner.logprobs(prompts, targets, batch_size=batch_size))

    def attention(self, messages: Sequence[Message], spans: Any, targets: Sequence[str]) -> Any:
        return self._call(lambda: self.inner.attention(messages, spans, targets))

    # ------------------------------------------------------------------ callers

    def ahead(self, priority: int = ANSWER) -> int:
        """Answer calls running or queued that a new call of ``priority`` would wait for."""
        with self._cond:
            waiting = sum(1 for j in self._jobs if j.priority <= priority)
            return waiting + len(self._running)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _call(self, fn: Callable[[], Any]) -> Any:
        result = list(self._submit_call(lambda: [fn()]))
        return result[0]

    def _submit_call(self, fn: Callable[[], list[Any]]) -> Iterator[Any]:
        job = self._put("call", call=fn)
        yield from self._pieces(job)

    def _pieces(self, job: _Job) -> Iterator[Any]:
        """What the worker hands ``job``, once it starts: its pieces, then its end or error."""
        self._wait_start(job)
        while True:
            kind, value = job.pieces.get()
            if kind == "piece":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def _put(self, kind: str, **fields: Any) -> _Job:
        priority = getattr(_local, "priority", ANSWER)
        job = _Job(priority, next(self._seq), kind, time.monotonic(), **fields)
        with self._cond:
            if self._closed:
                raise RuntimeError("the generation worker is closed")
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="clinrag-generation", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return job

    def _wait_start(self, job: _Job) -> None:
        on_wait: Callable[[int], None] | None = getattr(_local, "on_wait", None)
        if on_wait is None:
            return
        told = -1
        while not job.started.wait(POLL_SECONDS if told >= 0 else 0.0):
            with self._cond:
                position = sum(
                    1 for j in self._jobs if (j.priority, j.seq) < (job.priority, job.seq)
                ) + len(self._running)
            if position != told:
                on_wait(position)
                told = position

    # ------------------------------------------------------------------ the worker

    def _take(self) -> list[_Job] | None:
        """The next job, or batch of drafts, by priority then arrival (with the lock held)."""
        while not self._jobs:
            if self._closed:
                return None
            self._cond.wait()
        first = min(self._jobs, key=lambda j: (j.priority, j.seq))
        if first.kind != "draft" or self.max_batch <= 1:
            self._jobs.remove(first)
            return [first]
        # the bounded wait: drafts asked within wait_s of the first go with it
        deadline = first.arrived + self.wait_s
        while True:
            batch = [
                j
                for j in sorted(self._jobs, key=lambda j: (j.priority, j.seq))
                if j.kind == "draft" and j.max_new_tokens == first.max_new_tokens
            ][: self.max_batch]
            left = deadline - time.monotonic()
            if len(batch) >= self.max_batch or left <= 0 or self._closed:
                break
            self._cond.wait(left)
        for j in batch:
            self._jobs.remove(j)
        return batch

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
                if batch is None:
                    return
                self._running = batch
            for job in batch:
                job.started.set()
            try:
                if batch[0].kind == "draft":
                    self._draft(batch)
                else:
                    self._run_call(batch[0])
            finally:
                with self._cond:
                    self._running = []

    def _run_call(self, job: _Job) -> None:
        self.stats.calls += 1
        assert job.call is not None
        try:
            for value in job.call():
                job.pieces.put(("piece", value))
            job.pieces.put(("end", None))
        except BaseException as exc:  # raised in the caller's thread
            job.pieces.put(("error", exc))

    def _draft(self, batch: list[_Job]) -> None:
        self.stats.batches.append(len(batch))

        def on_piece(row: int, text: str | None) -> None:
            batch[row].pieces.put(("piece", text) if text is not None else ("end", None))

        try:
            if len(batch) == 1:
                # alone: the model's own stream, exactly as without the worker (it also keeps
                # the prompt's KV cache that attention attribution reuses)
                job = batch[0]
                for piece in self.inner.stream(
                    job.messages, max_new_tokens=job.max_new_tokens, temperature=0.0
                ):
                    job.pieces.put(("piece", piece))
                job.pieces.put(("end", None))
                return
            self.inner.generate_batch(
                [j.messages for j in batch],
                max_new_tokens=batch[0].max_new_tokens,
                on_piece=on_piece,
            )
        except BaseException as exc:
            for job in batch:
                job.pieces.put(("error", exc))
