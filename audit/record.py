"""Every audit event clinrag writes: its name, its payload schema, and the one function that
writes it.

Nothing outside this module appends to the audit log (a test scans the tree for it), so an
event's payload has one shape whoever triggers it: the CLI, the app, evaluation or replay.
Each :class:`Event` is written by exactly one :class:`Recorder` method, whose payload is the
:class:`~typing.TypedDict` named in :data:`PAYLOADS`.

The link between an answer and what is recorded about it later (attribution or its failure,
feedback) is ``answer_id``, the answer record's sequence number, in every event that points
at an answer; :func:`answer_link` is the one reader of that link. Records written before the
link was unified used ``answer_seq`` for attributions from the CLI; the reader accepts both,
since audit rows are never rewritten.

Recording happens before anything is handed out: an answer is shown, and an export's data is
offered, only after its record is committed.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from audit.log.redact import (
    protect_text,
    protect_words,
    question_fields,
    redact,
    site_key,
)
from core.config import Settings, answer_settings
from core.errors import AuditError
from core.types import Actor, Answer, EmbedderInfo, Hit, Mode, Origin

if TYPE_CHECKING:
    from audit.log import AuditLog, Record, VerifyResult


class Event(StrEnum):
    ANSWER = "answer"
    ATTRIBUTION = "attribution"
    ATTRIBUTION_FAILED = "attribution_failed"
    FEEDBACK = "feedback"
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    VERIFY = "verify"
    EXPORT = "export"
    REPLAY = "replay"
    INGEST = "ingest"
    REMOVE = "remove"
    BACKUP = "backup"
    RESTORE = "restore"
    REINDEX = "reindex"
    USER_ADD = "user_add"
    USER_DISABLE = "user_disable"
    USER_ENABLE = "user_enable"
    USER_PASSWORD = "user_password"
    USER_ROLE = "user_role"
    USER_UNLOCK = "user_unlock"


# The key that points from a later event at the answer record it is about.
ANSWER_LINK = "answer_id"
_LEGACY_ANSWER_LINKS = ("answer_seq",)
MAX_REASON_CHARS = 500


# ------------------------------------------------------------------------ payload schemas


class RetrievedPayload(TypedDict):
    n: int
    doc_id: str
    chunk_id: str
    content_hash: str
    doc_sha256: str
    title: str
    section: str
    page: int | None
    score: float
    dense_score: float | None
    dense_rank: int | None
    bm25_score: float | None
    bm25_rank: int | None
    rerank_score: float | None
    # who could see the document when it was used ("" = every role): the audit trail's views
    # withhold the record from readers who may not, even once the document is gone
    restricted_roles: str


class AnswerPayload(TypedDict, total=False):
    answer: str
    abstained: bool
    abstain_reason: str | None
    mode: str
    generated_text: str | None
    sentences: list[dict[str, Any]]
    unverified_sentences: list[dict[str, Any]]
    decision: dict[str, Any] | None
    resolved_question: str | None
    parent_id: int | None
    citations: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    retrieved: list[RetrievedPayload]
    index_version: str
    embedder: dict[str, Any]
    model: dict[str, Any] | None
    prompt: dict[str, str] | None
    decoding: dict[str, Any] | None
    settings: dict[str, Any]
    attribution: dict[str, Any] | None
    faithfulness: dict[str, Any] | None
    timings: dict[str, float]
    # The question, as the ``audit_questions`` policy allows (verbatim, redacted or hashed).
    # The same policy applies to the fields derived from it: abstain_reason (the words it
    # repeats from the question), and the model's text (generated_text, the sentences it
    # wrote, and answer when the model wrote it). question_hash is an HMAC with the site key
    # when question_hash_alg says so; older records hold a plain sha256.
    question: str
    question_hash: str
    question_hash_alg: str
    question_mode: str
    # The operating-system account of the process that wrote the record: for `clinrag ask`
    # the person who ran it (its --user and --role are only what they said), for the app
    # the service account.
    os_user: str
    os_uid: int | None


class AttributionPayload(TypedDict):
    answer_id: int
    attribution: dict[str, Any]
    faithfulness: dict[str, Any] | None
    sentences: list[dict[str, Any]]
    citations: list[dict[str, Any]]


class AttributionFailedPayload(TypedDict):
    answer_id: int
    # why there is no attribution (an error, or a model that gives no log-probabilities), so
    # coverage can tell a failed attribution from one still to come
    reason: str


class FeedbackPayload(TypedDict):
    answer_id: int
    helpful: bool
    # As the answer's question mode allows: verbatim, redacted, or (hashed) dropped, with
    # only its length kept in comment_chars.
    comment: str
    comment_chars: NotRequired[int]


class LoginPayload(TypedDict, total=False):
    method: str
    issuer: str


class LoginFailedPayload(TypedDict, total=False):
    reason: str
    method: str
    issuer: str


class LogoutPayload(TypedDict):
    pass


class VerifyPayload(TypedDict):
    ok: bool
    count: int
    first_bad_seq: int | None
    reason: str


class ExportPayload(TypedDict):
    format: str
    count: int
    first_seq: int | None
    last_seq: int | None
    filters: dict[str, Any]
    destination: str
    sha256: str


class ReplayPayload(TypedDict):
    answer_id: int
    unchanged: bool
    differences: list[str]
    original_answer: str
    replayed_answer: str


class IngestDocument(TypedDict):
    doc_id: str | None
    status: str
    reason: str | None


class IngestPayload(TypedDict):
    source: str
    paths: list[str]
    added: int
    updated: int
    unchanged: int
    failed: int
    removed: int
    chunks: int
    index_version: int
    documents: list[IngestDocument]


class RemovePayload(TypedDict):
    doc_id: str
    deleted_upload: bool


class BackupPayload(TypedDict):
    dest: str
    records: int
    head_seq: int
    verified: bool
    keys_included: bool


class RestorePayload(TypedDict):
    backup_dir: str
    backup_created: str | None
    records_restored: int
    documents: int
    chunks: int


class ReindexPayload(TypedDict):
    documents: int
    chunks: int
    vectors: int
    pending_rolled_back: int
    index_version: str
    old_store_moved_to: str | None


class UserAddPayload(TypedDict):
    username: str
    new_role: str
    sso_only: bool


class UserPayload(TypedDict):
    username: str


class UserRolePayload(TypedDict):
    username: str
    old_role: str
    new_role: str


PAYLOADS: dict[Event, type[Any]] = {
    Event.ANSWER: AnswerPayload,
    Event.ATTRIBUTION: AttributionPayload,
    Event.ATTRIBUTION_FAILED: AttributionFailedPayload,
    Event.FEEDBACK: FeedbackPayload,
    Event.LOGIN: LoginPayload,
    Event.LOGIN_FAILED: LoginFailedPayload,
    Event.LOGOUT: LogoutPayload,
    Event.VERIFY: VerifyPayload,
    Event.EXPORT: ExportPayload,
    Event.REPLAY: ReplayPayload,
    Event.INGEST: IngestPayload,
    Event.REMOVE: RemovePayload,
    Event.BACKUP: BackupPayload,
    Event.RESTORE: RestorePayload,
    Event.REINDEX: ReindexPayload,
    Event.USER_ADD: UserAddPayload,
    Event.USER_DISABLE: UserPayload,
    Event.USER_ENABLE: UserPayload,
    Event.USER_PASSWORD: UserPayload,
    Event.USER_ROLE: UserRolePayload,
    Event.USER_UNLOCK: UserPayload,
}


# ------------------------------------------------------------------------ answer -> record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def hit_payload(hit: Hit, n: int) -> RetrievedPayload:
    c = hit.chunk
    return {
        "n": n,
        "doc_id": c.doc_id,
        "chunk_id": c.chunk_id,
        "content_hash": c.content_hash,
        "doc_sha256": c.doc_sha256,
        "title": c.title,
        "section": c.section,
        "page": c.page,
        "score": round(hit.score, 6),
        "dense_score": _round(hit.dense_score),
        "dense_rank": hit.dense_rank,
        "bm25_score": _round(hit.bm25_score),
        "bm25_rank": hit.bm25_rank,
        "rerank_score": _round(hit.rerank_score),
        "restricted_roles": str(c.metadata.get("restricted_roles") or ""),
    }


def answer_payload(
    answer: Answer,
    settings: Settings,
    index_version: str,
    embedder: EmbedderInfo,
    *,
    top_k: int | None = None,
) -> AnswerPayload:
    """Everything needed to verify and replay an answer, without the question.

    Replay compares a fresh payload with the recorded one, so both come from here.
    """
    gen = answer.generation
    by_chunk = {h.chunk.chunk_id: h for h in answer.hits}
    asked = top_k if top_k is not None else answer.top_k
    decisive = answer_settings(settings, top_k=asked if asked is not None else len(answer.hits))
    return {
        "answer": answer.answer,
        "abstained": answer.abstained,
        "abstain_reason": answer.abstain_reason,
        "mode": str(answer.mode),
        "generated_text": gen.text if gen else None,
        "sentences": [asdict(s) for s in answer.sentences],
        "unverified_sentences": [asdict(s) for s in answer.unverified],
        "decision": asdict(answer.decision) if answer.decision else None,
        "resolved_question": answer.resolved_question,
        "parent_id": answer.parent_id,
        "citations": [
            {k: v for k, v in asdict(c).items() if k not in {"text", "metadata"}}
            | {"content_hash": by_chunk[c.chunk_id].chunk.content_hash}
            for c in answer.citations
        ],
        "evidence": [asdict(e) for e in answer.evidence],
        "retrieved": [hit_payload(h, n) for n, h in enumerate(answer.hits, start=1)],
        "index_version": index_version,
        "embedder": asdict(embedder),
        "model": asdict(gen.model) if gen else None,
        "prompt": {"template": gen.template, "hash": gen.prompt_hash} if gen else None,
        "decoding": gen.decoding if gen else None,
        "settings": decisive,
        "attribution": answer.attribution,
        "faithfulness": (answer.attribution or {}).get("faithfulness"),
        "timings": {k: round(v, 4) for k, v in answer.timings.items()},
    }


def answer_link(payload: Mapping[str, Any]) -> int | None:
    """The answer record a later event points at, whichever key its writer used."""
    for key in (ANSWER_LINK, *_LEGACY_ANSWER_LINKS):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# ------------------------------------------------------------------------ the writer


def open_log(settings: Settings) -> AuditLog:
    """The settings' audit log (cheap: nothing is opened until used). For reading; writing
    goes through :class:`Recorder`."""
    from audit.log import AuditLog

    return AuditLog(
        settings.audit_db,
        settings.audit_checkpoint,
        settings.audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
        anchor=settings.audit_anchor,
        stream=settings.audit_stream,
        # A key file the administrator named was put there by them, before the first record.
        key_provisioned=settings.audit_key_file is not None,
        database_url=settings.database_url,
    )


class Recorder:
    """Writes clinrag's audit events to one :class:`~audit.log.AuditLog`; one method per event.

    Every method returns the new record's sequence number and raises
    :class:`~core.errors.AuditError` (with what to do next) when it cannot be committed.
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    @classmethod
    def open(cls, settings: Settings) -> Recorder:
        """A recorder on the settings' audit log (cheap: nothing is opened until used)."""
        return cls(open_log(settings))

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, event: Event, actor: Actor, payload: Mapping[str, Any], what: str) -> int:
        # Fail closed on any error, not only the log's own: whatever stops the record from
        # being committed must stop what it records from being handed out.
        try:
            record = self.log.append(
                str(event), actor.user or "unknown", actor.role or "unknown", dict(payload)
            )
        except Exception as exc:
            raise AuditError(f"{what} could not be recorded in the audit log: {exc}") from exc
        return int(record.seq)

    def check_writable(self) -> None:
        try:
            self.log.check_writable()
        except Exception as exc:
            raise AuditError(
                f"{exc} No answer is given without an audit record; ask your administrator."
            ) from exc

    # answers and what follows them
    def answer(
        self,
        actor: Actor,
        answer: Answer,
        *,
        settings: Settings,
        index_version: str,
        embedder: EmbedderInfo,
        top_k: int | None = None,
    ) -> int:
        payload = answer_payload(answer, settings, index_version, embedder, top_k=top_k)
        mode = settings.audit_questions
        try:
            # Every answer record carries the keyed question hash, whatever the mode: without
            # the key the record cannot be written, and the answer is not shown.
            key = site_key(settings.question_key)
            fields = question_fields(answer.question, mode, key)
        except (OSError, ValueError) as exc:
            raise AuditError(
                f"The answer was withheld because its audit record could not be written: {exc}"
            ) from exc
        payload.update(fields)  # type: ignore[typeddict-item]
        payload["question_mode"] = mode
        _protect_question_derived(payload, answer, mode, key)
        payload["os_user"], payload["os_uid"] = _os_account()
        try:
            return self._append(Event.ANSWER, actor, payload, "The answer")
        except AuditError as exc:
            raise AuditError(
                f"The answer was withheld because its audit record could not be written: {exc}"
            ) from exc

    def attribution(self, actor: Actor, answer_id: int, answer: Answer) -> int:
        if answer.attribution is None:
            raise ValueError("the answer carries no attribution to record")
        sentences = [asdict(s) for s in answer.sentences]
        record = self._answer_record(answer_id)
        if answer.mode != Mode.QUOTED and _question_mode(record) != "verbatim":
            # The model's sentences are kept as the answer record kept them (redacted or
            # hashed there, with the question's policy); only the library's own text stays.
            stored = (record.payload.get("sentences") or []) if record is not None else []
            recorded = [str(s.get("text", "")) for s in stored]
            for i, sentence in enumerate(sentences):
                sentence["text"] = recorded[i] if i < len(recorded) else ""
        payload: AttributionPayload = {
            "answer_id": int(answer_id),
            "attribution": answer.attribution,
            "faithfulness": answer.attribution.get("faithfulness"),
            "sentences": sentences,
            "citations": [
                {"n": c.n, "doc_id": c.doc_id, "chunk_id": c.chunk_id} for c in answer.citations
            ],
        }
        return self._append(Event.ATTRIBUTION, actor, payload, "The attribution")

    def attribution_failed(self, actor: Actor, answer_id: int, *, reason: str) -> int:
        """That answer ``answer_id`` could not be attributed, and why (the reason is cut to
        a sane length: an error message, not a traceback)."""
        payload: AttributionFailedPayload = {
            "answer_id": int(answer_id),
            "reason": reason[:MAX_REASON_CHARS],
        }
        return self._append(Event.ATTRIBUTION_FAILED, actor, payload, "The attribution failure")

    def _answer_record(self, answer_id: int) -> Record | None:
        """The answer record ``answer_id``; None when there is none or it cannot be read."""
        try:
            record = self.log.get(int(answer_id))
        except Exception:  # unreadable: callers keep as little as possible, never fail
            return None
        return record if record is not None and record.event == Event.ANSWER else None

    def feedback(self, actor: Actor, answer_id: int, *, helpful: bool, comment: str) -> int:
        """A clinician's verdict on an answer; the comment is kept as that answer's question
        is (a comment about a patient names them as readily as the question did)."""
        payload: FeedbackPayload = {
            "answer_id": int(answer_id),
            "helpful": bool(helpful),
            "comment": comment,
        }
        mode = _question_mode(self._answer_record(answer_id))
        if mode == "redacted":
            payload["comment"] = redact(comment)
        elif mode != "verbatim" and comment:
            # hashed, or an answer whose policy cannot be read: nothing of the text is kept
            payload["comment"] = ""
            payload["comment_chars"] = len(comment)
        return self._append(Event.FEEDBACK, actor, payload, "The feedback")

    def replay(
        self,
        actor: Actor,
        answer_id: int,
        *,
        unchanged: bool,
        differences: Sequence[str],
        original_answer: str,
        replayed_answer: str,
    ) -> int:
        payload: ReplayPayload = {
            "answer_id": int(answer_id),
            "unchanged": unchanged,
            "differences": list(differences),
            "original_answer": original_answer,
            "replayed_answer": replayed_answer,
        }
        return self._append(Event.REPLAY, actor, payload, "The replay")

    # sign-in
    def login(self, actor: Actor, *, method: str = "password", issuer: str = "") -> int:
        payload: LoginPayload = {"method": method}
        if issuer:
            payload["issuer"] = issuer
        return self._append(Event.LOGIN, actor, payload, "The sign-in")

    def login_failed(
        self, actor: Actor, *, reason: str, method: str = "password", issuer: str = ""
    ) -> int:
        payload: LoginFailedPayload = {"reason": reason, "method": method}
        if issuer:
            payload["issuer"] = issuer
        return self._append(Event.LOGIN_FAILED, actor, payload, "The failed sign-in")

    def logout(self, actor: Actor) -> int:
        payload: LogoutPayload = {}
        return self._append(Event.LOGOUT, actor, payload, "The sign-out")

    # the audit log itself
    def verify(self, actor: Actor, result: VerifyResult) -> int:
        payload: VerifyPayload = {
            "ok": result.ok,
            "count": result.count,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
        }
        return self._append(Event.VERIFY, actor, payload, "The verification")

    def export(
        self,
        actor: Actor,
        *,
        fmt: str,
        seqs: Sequence[int],
        filters: Mapping[str, Any],
        destination: str,
        sha256: str,
    ) -> int:
        payload: ExportPayload = {
            "format": fmt,
            "count": len(seqs),
            "first_seq": min(seqs) if seqs else None,
            "last_seq": max(seqs) if seqs else None,
            "filters": {k: v for k, v in filters.items() if v is not None},
            "destination": destination,
            "sha256": sha256,
        }
        return self._append(Event.EXPORT, actor, payload, "The export")

    # the library
    def ingest(
        self,
        actor: Actor,
        *,
        source: str,
        paths: Iterable[str],
        counts: Mapping[str, int],
        index_version: int,
        documents: Sequence[IngestDocument],
    ) -> int:
        payload: IngestPayload = {
            "source": source,
            "paths": list(paths),
            "added": int(counts.get("added", 0)),
            "updated": int(counts.get("updated", 0)),
            "unchanged": int(counts.get("unchanged", 0)),
            "failed": int(counts.get("failed", 0)),
            "removed": int(counts.get("removed", 0)),
            "chunks": int(counts.get("chunks", 0)),
            "index_version": int(index_version),
            "documents": list(documents),
        }
        return self._append(Event.INGEST, actor, payload, "The ingest")

    def remove(self, actor: Actor, doc_id: str, *, deleted_upload: bool) -> int:
        payload: RemovePayload = {"doc_id": doc_id, "deleted_upload": deleted_upload}
        return self._append(Event.REMOVE, actor, payload, "The removal")

    # maintenance
    def backup(
        self,
        actor: Actor,
        *,
        dest: str,
        records: int,
        head_seq: int,
        verified: bool,
        keys_included: bool,
    ) -> int:
        payload: BackupPayload = {
            "dest": dest,
            "records": records,
            "head_seq": head_seq,
            "verified": verified,
            "keys_included": keys_included,
        }
        return self._append(Event.BACKUP, actor, payload, "The backup")

    def restore(
        self,
        actor: Actor,
        *,
        backup_dir: str,
        backup_created: str | None,
        records_restored: int,
        documents: int,
        chunks: int,
    ) -> int:
        payload: RestorePayload = {
            "backup_dir": backup_dir,
            "backup_created": backup_created,
            "records_restored": records_restored,
            "documents": documents,
            "chunks": chunks,
        }
        return self._append(Event.RESTORE, actor, payload, "The restore")

    def reindex(
        self,
        actor: Actor,
        *,
        documents: int,
        chunks: int,
        vectors: int,
        pending_rolled_back: int,
        index_version: str,
        old_store_moved_to: str | None,
    ) -> int:
        payload: ReindexPayload = {
            "documents": documents,
            "chunks": chunks,
            "vectors": vectors,
            "pending_rolled_back": pending_rolled_back,
            "index_version": index_version,
            "old_store_moved_to": old_store_moved_to,
        }
        return self._append(Event.REINDEX, actor, payload, "The reindex")

    # accounts
    def user_add(self, actor: Actor, username: str, *, new_role: str, sso_only: bool) -> int:
        payload: UserAddPayload = {"username": username, "new_role": new_role, "sso_only": sso_only}
        return self._append(Event.USER_ADD, actor, payload, "The new account")

    def user_disable(self, actor: Actor, username: str) -> int:
        payload: UserPayload = {"username": username}
        return self._append(Event.USER_DISABLE, actor, payload, "Disabling the account")

    def user_enable(self, actor: Actor, username: str) -> int:
        payload: UserPayload = {"username": username}
        return self._append(Event.USER_ENABLE, actor, payload, "Enabling the account")

    def user_password(self, actor: Actor, username: str) -> int:
        payload: UserPayload = {"username": username}
        return self._append(Event.USER_PASSWORD, actor, payload, "The password change")

    def user_role(self, actor: Actor, username: str, *, old_role: str, new_role: str) -> int:
        payload: UserRolePayload = {
            "username": username,
            "old_role": old_role,
            "new_role": new_role,
        }
        return self._append(Event.USER_ROLE, actor, payload, "The role change")

    def user_unlock(self, actor: Actor, username: str) -> int:
        payload: UserPayload = {"username": username}
        return self._append(Event.USER_UNLOCK, actor, payload, "Unlocking the account")

    # readers of links between records
    def attribution_of(self, answer_id: int) -> Record | None:
        """The newest attribution record of the answer record ``answer_id``, if any."""
        found = None
        for record in self.log.list(event=str(Event.ATTRIBUTION)):
            if answer_link(record.payload) == answer_id:
                found = record
        return found

    def recent_answers(self, user: str, since: Any) -> int:
        """How many answers ``user`` was given since ``since`` (for the rate limit)."""
        return len(self.log.list(since=since, user=user, event=str(Event.ANSWER)))


# ------------------------------------------------------------------ what an answer record
# may say about its question (Recorder.answer)


def _question_mode(answer: Record | None) -> str:
    """The ``question_mode`` an answer record was written under; ``hashed`` (the strictest)
    when there is no such record."""
    if answer is None:
        return "hashed"
    # records written before the modes existed stored the question verbatim
    return str(answer.payload.get("question_mode", "verbatim"))


def _protect_question_derived(
    payload: AnswerPayload, answer: Answer, mode: str, key: bytes
) -> None:
    """Apply the question mode to the answer record's fields derived from the question.

    The model's text echoes the question (a patient's name, an identifier), so it is kept as
    the question is: redacted, or replaced by its keyed hash, with the structure around it
    (how many sentences, their citations and support scores) left as it was. The guideline's
    own sentences (quoted answers, evidence) are library text and stay. The abstention reason
    keeps its code and wording and loses only the question's words. The Answer itself, which
    the clinician sees, is not changed.
    """
    if mode == "verbatim":
        return
    question = answer.question

    def text(value: str) -> str:
        return protect_text(value, question, mode, key)

    if payload.get("abstain_reason"):
        payload["abstain_reason"] = protect_words(str(payload["abstain_reason"]), question, mode)
    if payload.get("generated_text") is not None:
        payload["generated_text"] = text(str(payload["generated_text"]))
    if payload.get("resolved_question"):
        payload["resolved_question"] = text(str(payload["resolved_question"]))
    if answer.mode in (Mode.GENERATED, Mode.COMBINED):
        payload["answer"] = text(payload["answer"])
    # quoted sentences are the guideline's; the model's are protected like the question
    payload["sentences"] = [
        s
        if s.get("origin") == Origin.QUOTE or answer.mode == Mode.QUOTED
        else s | {"text": text(s["text"])}
        for s in payload["sentences"]
    ]
    payload["unverified_sentences"] = [
        s | {"text": text(s["text"])} for s in payload["unverified_sentences"]
    ]


def _os_account() -> tuple[str, int | None]:
    """The account this process runs as, from the uid rather than $USER (which anyone can
    set); on Windows, where there is no uid, the login name."""
    if sys.platform == "win32":  # pragma: no cover - Windows
        return getpass.getuser(), None
    import pwd

    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:  # a uid with no passwd entry (some containers)
        return f"uid {uid}", uid
