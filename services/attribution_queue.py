"""Attribution in the background: every answer gets one, nobody waits for it, none is lost.

An answer is shown and recorded as soon as it is checked; its attribution follows on a queue
with one worker thread per process (:class:`AttributionQueue`), which attributes through the
one path every caller uses (:func:`services.ask.attribute`): an ``attribution`` record linked
to the answer, or an ``attribution_failed`` record with the reason.

The audit log is the queue's durable journal: an answer record with neither linked record
is pending (:func:`pending_answers`, the same rule as ``services.audit.attribution_coverage``).
Nothing else needs saving, so a process killed between the answer and its attribution loses
nothing: on the next start the pending answers are rebuilt from their records
(:func:`answer_from_record`) and attributed, or marked failed with the reason they cannot be
(the question was kept hashed, a cited passage changed since, the model is another one).
Starts that recover: the app's first Ask page of a process (in the background, behind new
answers) and ``clinrag attribution resume`` (in the foreground, with progress).

Two processes never attribute the same answer at once: each holds a claim on the answer
(:func:`services.ask.claim`, a lock the kernel drops when the process dies), and an answer
recovered is checked again, under its claim, for a record written meanwhile.
"""

from __future__ import annotations

import copy
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from audit.record import Event, answer_link, open_log
from core.config import Settings
from core.errors import ModelServerBusyError
from core.types import (
    Actor,
    Answer,
    AnswerSentence,
    Citation,
    Evidence,
    Generation,
    Hit,
    Mode,
    ModelInfo,
    Origin,
)
from services import ask as asking
from services.generation_worker import low_priority

if TYPE_CHECKING:
    from assistant.pipeline import Assistant
    from audit.log import AuditLog, Record

log = logging.getLogger(__name__)

LIVE, RECOVERED = 0, 1  # queue priorities: a new answer before a backlog from a restart
# Finished jobs kept for pages to collect (a page polls every few seconds; after this many
# newer answers it has long shown its result, or its session is gone).
KEEP_FINISHED = 500


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ATTRIBUTED = "attributed"
    FAILED = "failed"  # recorded as failed, with the reason
    SKIPPED = "skipped"  # nothing to do here: attributed already, elsewhere, or switched off
    # the model server was busy: nothing recorded, tried again after a wait
    RETRYING = "retrying"


FINISHED = frozenset({State.ATTRIBUTED, State.FAILED, State.SKIPPED})


class Unattributable(Exception):
    """A recorded answer that cannot be attributed again; the message is the reason."""


@dataclass
class Outcome:
    state: State
    reason: str = ""
    answer: Answer | None = None  # attributed (a copy: the caller's answer is not touched)


@dataclass
class Job:
    answer_id: int
    actor: Actor
    answer: Answer | None  # None: rebuilt from ``record`` when its turn comes
    priority: int = LIVE
    record: Record | None = None
    state: State = State.QUEUED
    reason: str = ""
    result: Answer | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    tries: int = 0  # busy-server tries so far
    retry_at: float | None = None  # monotonic time of the next try, while RETRYING

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    def seconds(self) -> float:
        """How long it has been running (or ran)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


# ------------------------------------------------------------------ the audit log as journal


def _linked(audit: AuditLog, event: Event) -> set[int]:
    return {
        link
        for record in audit.list(event=str(event))
        if (link := answer_link(record.payload)) is not None
    }


def pending_answers(settings: Settings) -> list[Record]:
    """The answer records with no attribution yet: neither inline (older records), nor a
    linked ``attribution`` or ``attribution_failed`` record. Abstentions have none to get."""
    with open_log(settings) as audit:
        answers = audit.list(event=str(Event.ANSWER))
        settled = _linked(audit, Event.ATTRIBUTION) | _linked(audit, Event.ATTRIBUTION_FAILED)
    return [
        r
        for r in answers
        if not r.payload.get("abstained")
        and not r.payload.get("attribution")
        and r.seq not in settled
    ]


def _settled(settings: Settings, answer_id: int) -> State | None:
    """ATTRIBUTED or FAILED when a record about ``answer_id`` exists, else None."""
    with open_log(settings) as audit:
        if answer_id in _linked(audit, Event.ATTRIBUTION):
            return State.ATTRIBUTED
        if answer_id in _linked(audit, Event.ATTRIBUTION_FAILED):
            return State.FAILED
    return None


def answer_from_record(assistant: Assistant, record: Record) -> Answer:
    """The answer of an answer record, rebuilt to be attributed as it was given: its
    question, shown sentences, passages (from the library, checked against the recorded
    content hashes) and model prompt. Raises :class:`Unattributable` with the reason when
    the record or the library no longer allows that."""
    from assistant.cite import source_sentences

    p = record.payload
    mode = str(p.get("question_mode", "verbatim"))
    if mode != "verbatim":
        # the prompt the model answered holds the question, which the record does not keep
        raise Unattributable(
            f"the answer record keeps the question {mode} (setting audit_questions), so the "
            "model's prompt cannot be rebuilt once the process that answered has stopped"
        )
    model, prompt = p.get("model"), p.get("prompt")
    if not isinstance(model, dict) or not isinstance(prompt, dict):
        raise Unattributable("the answer has no model prompt to attribute")
    recorded = ModelInfo(
        backend=str(model.get("backend", "")),
        model_id=str(model.get("model_id", "")),
        weights_hash=str(model.get("weights_hash", "")),
    )
    current = assistant.llm.info
    if (recorded.backend, recorded.model_id, recorded.weights_hash) != (
        current.backend,
        current.model_id,
        current.weights_hash,
    ):
        raise Unattributable(
            f"the answer was given by {recorded.backend} {recorded.model_id} and this process "
            f"runs {current.backend} {current.model_id}: attributing it with another model "
            "would not say what drove the answer"
        )
    from assistant.policy import NO_DRAFT_TEMPLATE
    from assistant.prompts import load_template

    template = load_template(assistant.settings.prompt_template)
    # a quoted answer given without a draft used no prompt: it is attributed with the
    # current one, as the process that gave it would have
    if prompt.get("template") not in (f"{template.name}:{template.sha256}", NO_DRAFT_TEMPLATE):
        # the same name with other words is another prompt too
        raise Unattributable(
            f"the answer used prompt template {prompt.get('template')!r}, this process uses "
            f"{template.name}:{template.sha256}"
        )
    retrieved = [e for e in p.get("retrieved") or [] if isinstance(e, dict)]
    chunks = assistant.retriever.index.manifest.chunks_by_id(
        [str(e.get("chunk_id")) for e in retrieved]
    )
    hits: list[Hit] = []
    for entry in retrieved:
        chunk = chunks.get(str(entry.get("chunk_id")))
        if chunk is None or chunk.content_hash != entry.get("content_hash"):
            raise Unattributable(
                f"source [{entry.get('n')}] ({entry.get('doc_id')}) was changed or removed "
                "from the library since the answer"
            )
        hits.append(
            Hit(
                chunk=chunk,
                score=float(entry.get("score") or 0.0),
                dense_score=entry.get("dense_score"),
                dense_rank=entry.get("dense_rank"),
                bm25_score=entry.get("bm25_score"),
                bm25_rank=entry.get("bm25_rank"),
                rerank_score=entry.get("rerank_score"),
            )
        )
    by_chunk = {h.chunk.chunk_id: h.chunk for h in hits}
    sentences = [
        AnswerSentence(
            text=str(s.get("text", "")),
            citations=[int(n) for n in s.get("citations") or []],
            supported=bool(s.get("supported")),
            support=float(s.get("support") or 0.0),
            evidence=[int(i) for i in s.get("evidence") or []],
            origin=Origin(s.get("origin") or Origin.MODEL),
            problems=[str(x) for x in s.get("problems") or []],
        )
        for s in p.get("sentences") or []
        if isinstance(s, dict)
    ]
    citations = []
    for c in p.get("citations") or []:
        chunk = by_chunk.get(str(c.get("chunk_id")))
        citations.append(
            Citation(
                n=int(c["n"]),
                doc_id=str(c.get("doc_id", "")),
                chunk_id=str(c.get("chunk_id", "")),
                title=str(c.get("title", "")),
                section=str(c.get("section", "")),
                page=c.get("page"),
                text=chunk.text if chunk else "",
                score=float(c.get("score") or 0.0),
                metadata=dict(chunk.metadata) if chunk else {},
                label=int(c.get("label") or 0),
            )
        )
    evidence = [
        Evidence(
            n=int(e.get("n") or 0),
            text=str(e.get("text", "")),
            doc_id=str(e.get("doc_id", "")),
            title=str(e.get("title", "")),
            section=str(e.get("section", "")),
            page=e.get("page"),
            score=float(e.get("score") or 0.0),
        )
        for e in p.get("evidence") or []
        if isinstance(e, dict)
    ]
    generation = Generation(
        text=str(p.get("generated_text") or ""),
        model=recorded,
        prompt_hash=str(prompt.get("hash", "")),
        template=str(prompt.get("template", "")),
        decoding=dict(p.get("decoding") or {}),
        seconds=0.0,
    )
    return Answer(
        question=str(p.get("question", "")),
        answer=str(p.get("answer", "")),
        abstained=False,
        sentences=sentences,
        citations=citations,
        evidence=evidence,
        hits=hits,
        source_sentences=source_sentences(hits),
        generation=generation,
        timings={},
        mode=Mode(p.get("mode") or Mode.GENERATED),
        resolved_question=p.get("resolved_question"),
        parent_id=p.get("parent_id"),
        audit_id=record.seq,
    )


# ------------------------------------------------------------------ one answer


def attribute_answer(
    assistant: Assistant,
    actor: Actor,
    answer_id: int,
    answer: Answer | None = None,
    record: Record | None = None,
    *,
    retry: bool = False,
) -> Outcome:
    """Attribute answer ``answer_id`` (given, or rebuilt from its ``record``) unless another
    process is at it or it was settled meanwhile; every failure ends recorded with its
    reason, unless the log itself refuses the write (then the answer stays pending), or
    ``retry`` is set and the model server was busy (then nothing is recorded and the outcome
    says to try again)."""
    settings = assistant.settings
    if settings.attribution == "off":
        return Outcome(State.SKIPPED, "attribution is switched off (setting attribution)")
    with asking.claim(settings, answer_id) as mine:
        if not mine:
            return Outcome(State.SKIPPED, "another process is attributing this answer now")
        if answer is None:
            settled = _settled(settings, answer_id)
            if settled is not None:
                return Outcome(State.SKIPPED, f"already {settled} by another process")
            if record is None:
                return Outcome(State.SKIPPED, "no answer and no record to attribute")
            try:
                answer = answer_from_record(assistant, record)
            except Unattributable as why:
                assistant.recorder.attribution_failed(actor, answer_id, reason=str(why))
                return Outcome(State.FAILED, str(why))
        else:
            # the caller's answer stays as shown until the attributed copy replaces it
            answer = copy.deepcopy(answer)
        try:
            seq = asking.attribute(assistant, actor, answer, busy_is_failure=not retry)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if retry and isinstance(exc, ModelServerBusyError):
                return Outcome(State.RETRYING, reason)
            if _settled(settings, answer_id) is None:
                # refused before the attributor ran (the asker's role, say): record it anyway,
                # else the answer would be retried at every start
                try:
                    assistant.recorder.attribution_failed(actor, answer_id, reason=reason)
                except Exception:
                    log.warning("the attribution failure of answer %s was not recorded", answer_id)
            return Outcome(State.FAILED, reason)
        if seq is not None:
            return Outcome(State.ATTRIBUTED, answer=answer)
        return Outcome(State.FAILED, asking.unattributable(assistant, answer))


# ------------------------------------------------------------------ the queue


class AttributionQueue:
    """One worker thread attributing recorded answers in turn, new answers first.

    ``open_assistant`` returns the process's assistant, ready to use (models loaded); it is
    called with ``model_lock`` held, the lock that also guards asking, since one model
    serves both and is not safe to run from two threads at once. The thread starts with the
    first job and ends when the queue is empty, so an idle process holds no thread.
    """

    def __init__(
        self,
        settings: Settings,
        open_assistant: Callable[[], Assistant],
        model_lock: AbstractContextManager[Any],
        *,
        idle_seconds: float = 2.0,
    ) -> None:
        self.settings = settings
        self._open = open_assistant
        self._model_lock = model_lock
        self._idle = idle_seconds
        self._queue: queue.PriorityQueue[tuple[int, int, Job]] = queue.PriorityQueue()
        self._jobs: dict[int, Job] = {}
        self._finished: list[int] = []
        self._durations: list[float] = []
        self._mutex = threading.Lock()
        self._counter = 0
        self._thread: threading.Thread | None = None
        self._recover = False
        self._closed = False

    # --------------------------------------------------------------- callers

    def submit(self, actor: Actor, answer: Answer) -> Job | None:
        """Queue a recorded answer's attribution; None when it has none to get (abstained,
        not recorded, attribution switched off)."""
        if answer.abstained or answer.audit_id is None or self.settings.attribution == "off":
            return None
        return self._put(Job(int(answer.audit_id), actor, answer, LIVE))

    def recover(self) -> None:
        """Queue every pending answer of the log behind new ones (listed by the worker, so
        the caller does not wait for the log to be read)."""
        if self.settings.attribution == "off":
            return
        with self._mutex:
            self._recover = True
            self._start()

    def job(self, answer_id: int) -> Job | None:
        with self._mutex:
            return self._jobs.get(int(answer_id))

    def ahead(self, job: Job) -> int:
        """How many attributions run or wait before ``job``."""
        with self._mutex:
            return sum(
                1
                for other in self._jobs.values()
                if other is not job
                and (
                    other.state == State.RUNNING
                    or (
                        other.state == State.QUEUED
                        and (other.priority, other.submitted) < (job.priority, job.submitted)
                    )
                )
            )

    def typical_seconds(self) -> float | None:
        """The median time of the last attributions in this process (None before the first)."""
        with self._mutex:
            recent = self._durations[-20:]
        return statistics.median(recent) if recent else None

    def jobs(self) -> list[Job]:
        with self._mutex:
            return list(self._jobs.values())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (tests and the benchmark); False on
        timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._mutex:
                busy = self._recover or any(not j.done for j in self._jobs.values())
            if not busy:
                return True
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking jobs; the one running finishes (an attribution half-recorded would be
        worse than one left pending for the next start)."""
        with self._mutex:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --------------------------------------------------------------- inside

    def _put(self, job: Job) -> Job:
        with self._mutex:
            existing = self._jobs.get(job.answer_id)
            if existing is not None and (not existing.done or job.priority == RECOVERED):
                return existing
            self._jobs[job.answer_id] = job
            self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        # with self._mutex held
        self._counter += 1
        self._queue.put((job.priority, self._counter, job))
        self._start()

    def _start(self) -> None:
        # with self._mutex held
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(target=self._work, name="clinrag-attribution", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            with self._mutex:
                recover, closed = self._recover, self._closed
            if closed:
                return
            if recover:
                self._enqueue_pending()
                with self._mutex:
                    # cleared only once the pending answers are queued, so :meth:`wait`
                    # never sees an empty queue in between
                    self._recover = False
            try:
                _, _, job = self._queue.get(timeout=self._idle)
            except queue.Empty:
                with self._mutex:
                    if self._queue.empty() and not self._recover:
                        self._thread = None
                        return
                continue
            self._run(job)

    def _retry_later(self, job: Job, reason: str) -> None:
        """Queue ``job`` again after a wait that doubles with each busy try; the worker is
        free for other answers meanwhile."""
        delay = self.settings.attribution_retry_seconds * 2**job.tries
        with self._mutex:
            job.tries += 1
            job.state, job.reason = State.RETRYING, reason
            job.started, job.retry_at = None, time.monotonic() + delay
        log.warning("model server busy for answer %s; trying again in %.0f s", job.answer_id, delay)
        timer = threading.Timer(delay, self._requeue, args=(job,))
        timer.daemon = True
        timer.start()

    def _requeue(self, job: Job) -> None:
        with self._mutex:
            if self._closed or job.state != State.RETRYING:
                return
            job.state, job.retry_at = State.QUEUED, None
            self._enqueue(job)

    def _enqueue_pending(self) -> None:
        try:
            records = pending_answers(self.settings)
        except Exception:
            log.exception("pending attributions could not be listed")
            return
        for record in records:
            self._put(
                Job(record.seq, Actor(record.user, record.role), None, RECOVERED, record=record)
            )

    def _run(self, job: Job) -> None:
        with self._mutex:
            job.state, job.started = State.RUNNING, time.monotonic()
        try:
            # low_priority: with the generation worker, each model call of the attribution
            # waits while an answer's call is queued
            with self._model_lock, low_priority():
                assistant = self._open()
                outcome = attribute_answer(
                    assistant,
                    job.actor,
                    job.answer_id,
                    job.answer,
                    job.record,
                    retry=job.tries < self.settings.attribution_retries,
                )
        except Exception as exc:  # the worker must outlive any one answer
            log.exception("attribution of answer %s failed", job.answer_id)
            outcome = Outcome(State.FAILED, f"{type(exc).__name__}: {exc}")
        if outcome.state == State.RETRYING:
            self._retry_later(job, outcome.reason)
            return
        with self._mutex:
            job.state, job.reason, job.result = outcome.state, outcome.reason, outcome.answer
            job.finished = time.monotonic()
            if outcome.state == State.ATTRIBUTED:
                self._durations.append(job.seconds())
            self._finished.append(job.answer_id)
            while len(self._finished) > KEEP_FINISHED:
                old = self._finished.pop(0)
                if self._jobs.get(old) is not None and self._jobs[old].done:
                    del self._jobs[old]


# ------------------------------------------------------------------ resume (the CLI)


def resume(
    assistant: Assistant, records: list[Record] | None = None
) -> Iterator[tuple[Record, Outcome]]:
    """Attribute every pending answer in turn (oldest first), yielding each outcome."""
    for record in records if records is not None else pending_answers(assistant.settings):
        actor = Actor(record.user, record.role)
        yield record, attribute_answer(assistant, actor, record.seq, None, record)
