"""Asking: the question, its answer and what is recorded about it afterwards.

The CLI and the Ask page both come here, so an answer, its attribution and its feedback are
recorded the same way and linked the same way (``answer_id``, see ``audit.record``). The app
attributes on a background queue (``services.attribution_queue``), the CLI after printing the
answer; both through :func:`attribute`, which claims the answer first (:func:`claim`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.followup import resolve
from audit.record import Recorder
from core.config import Settings
from core.errors import AuditError, ModelServerBusyError
from core.types import Actor, Answer
from services.access import Operation, require

if TYPE_CHECKING:
    from assistant.pipeline import Assistant

MAX_COMMENT_CHARS = 2000
log = logging.getLogger(__name__)


def open_assistant(settings: Settings) -> Assistant:
    """An assistant on the settings' library and models (cheap: ``warm_up`` loads them)."""
    from assistant.pipeline import Assistant

    return Assistant(settings)


def ask(
    assistant: Assistant,
    actor: Actor,
    question: str,
    *,
    k: int | None = None,
    on_token: Callable[[str], None] | None = None,
    previous: Answer | None = None,
) -> Answer:
    """Answer ``question`` as ``actor`` (whose role decides the visible documents) and record
    it; the answer is returned only once its record is committed. Attribution follows with
    :func:`attribute`, so nobody waits for it to see the answer.

    ``previous`` is the conversation's last answer: a follow-up ("and when should they
    stop?") is rewritten to stand alone from its (resolved) question, answered as rewritten,
    and recorded as typed with the rewrite and the previous answer's record as its parent.
    """
    require(actor, Operation.ASK)
    resolved = parent_id = None
    if previous is not None:
        resolved = resolve(question.strip(), previous.resolved_question or previous.question)
        parent_id = previous.audit_id if resolved is not None else None
    return assistant.ask(
        question,
        k=k,
        user=actor.user,
        role=actor.role,
        on_token=on_token,
        attribute=False,
        resolved_question=resolved,
        parent_id=parent_id,
    )


def attribute(
    assistant: Assistant, actor: Actor, answer: Answer, *, busy_is_failure: bool = True
) -> int | None:
    """Compute the causal attribution of a recorded answer and record it, linked to it.

    The one way an answer gets its attribution, from the CLI, the app or any other caller:
    the answer is recorded first, then its attribution as an ``attribution`` record pointing
    at it by ``answer_id``. When it cannot be attributed (an error, or a model that gives no
    log-probabilities) an ``attribution_failed`` record says why, so coverage
    (:func:`services.audit.attribution_coverage`) tells failed from still pending.

    Returns the attribution's record, or None when nothing was attributed (an abstention,
    attribution switched off, another process attributing the same answer right now, or a
    failure recorded as such). On failure the answer keeps no attribution: what is shown must
    be what is recorded. An error is re-raised once recorded; with ``busy_is_failure``
    false, a busy model server's error is re-raised unrecorded (the caller tries again).
    """
    require(actor, Operation.ASK)
    if answer.abstained or answer.audit_id is None or assistant.settings.attribution == "off":
        return None
    with claim(assistant.settings, answer.audit_id) as mine:
        if not mine:
            return None
        return _attribute(assistant, actor, answer, answer.audit_id, busy_is_failure)


def attribution_plan(assistant: Assistant) -> str:
    """The attribution method an answer will get, in a few words, with the faithfulness check
    that every method is followed by."""
    from assistant.attribute import describe_method

    return f"{describe_method(assistant.settings, assistant.llm)}, then the faithfulness check"


def _attribute(
    assistant: Assistant, actor: Actor, answer: Answer, answer_id: int, busy_is_failure: bool
) -> int | None:
    try:
        assistant.attribute(answer)
    except Exception as exc:
        answer.attribution = None
        if busy_is_failure or not isinstance(exc, ModelServerBusyError):
            _record_failure(assistant, actor, answer_id, f"{type(exc).__name__}: {exc}")
        raise
    except BaseException:
        # interrupted (Ctrl-C, shutdown): nothing is recorded, so the answer stays pending
        answer.attribution = None
        raise
    if answer.attribution is None:
        assistant.recorder.attribution_failed(
            actor, answer_id, reason=unattributable(assistant, answer)
        )
        return None
    try:
        return assistant.recorder.attribution(actor, answer_id, answer)
    except BaseException:
        answer.attribution = None
        raise


# Claims: which answers a process is attributing now. A POSIX record lock on byte
# ``answer_id`` of one file per home: the kernel drops it when the process dies (kill -9
# included), so a claim never outlives its holder and a restart finds the answer pending again.
# Record locks belong to the process, not the thread, and closing any descriptor of the file
# drops them all: one descriptor per file stays open, and threads of one process are kept
# apart by ``_claimed``.
CLAIMS_FILE = "attribution-claims.lock"
_claims_lock = threading.Lock()
_claim_files: dict[Path, int] = {}
# claim -> (holding thread, depth): re-entrant within a thread (the queue claims an answer,
# then attributes it through :func:`attribute`, which claims it again)
_claimed: dict[tuple[Path, int], tuple[int, int]] = {}


@contextlib.contextmanager
def claim(settings: Settings, answer_id: int) -> Iterator[bool]:
    """Claim answer ``answer_id`` for attribution: yields True when this caller holds it (then
    no other process or thread of this home attributes it until the block ends), False when
    someone else is attributing it now. Without POSIX locks (Windows), other processes are
    not kept out: the worst case is the same answer attributed twice, each recorded."""
    path = Path(settings.home) / CLAIMS_FILE
    key = (path, int(answer_id))
    me = threading.get_ident()
    with _claims_lock:
        holder = _claimed.get(key)
        if holder is not None:
            mine = holder[0] == me
            if mine:
                _claimed[key] = (me, holder[1] + 1)
        else:
            mine = _lock_range(path, int(answer_id))
            if mine:
                _claimed[key] = (me, 1)
    try:
        yield mine
    finally:
        if mine:
            with _claims_lock:
                depth = _claimed[key][1] - 1
                if depth:
                    _claimed[key] = (me, depth)
                else:
                    del _claimed[key]
                    _unlock_range(path, int(answer_id))


def _lock_range(path: Path, answer_id: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - Windows
        return True
    import fcntl

    fd = _claim_files.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        _claim_files[path] = fd
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, answer_id)
    except OSError:
        return False
    return True


def _unlock_range(path: Path, answer_id: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - Windows
        return
    import fcntl

    fd = _claim_files.get(path)
    if fd is not None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, answer_id)


def _record_failure(assistant: Assistant, actor: Actor, answer_id: int, reason: str) -> None:
    try:
        assistant.recorder.attribution_failed(actor, answer_id, reason=reason)
    except AuditError:
        # the log refuses writes: the original error is the one to report; the answer stays
        # pending and is attributed again once the log is writable
        log.warning("the attribution failure of answer %s could not be recorded", answer_id)


def unattributable(assistant: Assistant, answer: Answer) -> str:
    """Why the attributor returned nothing for an answer it was asked about."""
    from core.backends.base import LogProbScorer

    if not isinstance(assistant.llm, LogProbScorer):
        return f"the model ({type(assistant.llm).__name__}) gives no log-probabilities"
    if answer.generation is None:
        return "the answer has no model prompt to attribute"
    return "no source sentences or answer sentences to attribute"


def feedback(
    settings: Settings, actor: Actor, answer_id: int, *, helpful: bool, comment: str = ""
) -> int:
    """Record a clinician's verdict on an answer (the comment is cut to a sane length)."""
    require(actor, Operation.ASK)
    with Recorder.open(settings) as recorder:
        return recorder.feedback(
            actor, answer_id, helpful=helpful, comment=(comment or "")[:MAX_COMMENT_CHARS]
        )
