"""The path of one question: retrieve -> generate -> cite -> (attribute) -> record.

``Assistant`` is cheap to construct; ``warm_up`` loads the models once. An answer is returned
only after its audit record is committed: if the log cannot be written, the answer is withheld.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from assistant import coverage
from assistant.cite import align, question_evidence, quote_answer, source_sentences
from assistant.generate import generate
from assistant.retrieve import Filters, Retriever
from core import backends
from core.config import Settings
from core.errors import AuditError, InputLimitError
from core.types import Answer, EmbedderInfo, Hit

ABSTAIN_TEXT = "The library does not contain guidance on this question."
UNVERIFIED_TEXT = (
    "The assistant could not write an answer that the library supports. "
    "The closest guideline passages are listed below; read them directly."
)
_MODEL_DECLINES = (
    "sources do not answer",
    "do not contain",
    "does not contain",
    "not enough information",
    "cannot answer",
    "can't answer",
    "no information",
)


class Assistant:
    def __init__(
        self,
        settings: Settings,
        retriever: Retriever | None = None,
        llm: Any = None,
        audit_log: Any = None,
    ) -> None:
        self.settings = settings
        self.retriever = retriever or Retriever(settings)
        self.llm = llm or backends.create("llm", settings.llm, settings)
        self._audit = audit_log

    @property
    def audit(self) -> Any:
        if self._audit is None:
            from audit.log import AuditLog

            self._audit = AuditLog(
                self.settings.audit_db,
                self.settings.audit_checkpoint,
                self.settings.audit_key,
                checkpoint_every=self.settings.audit_checkpoint_every,
            )
        return self._audit

    def warm_up(self) -> None:
        self.retriever.warm_up()
        self.llm.warm_up()
        if self.settings.abstain_rare_term_zipf > 0:
            coverage.warm_up()

    def embed(self, texts: Any) -> Any:
        return self.retriever.index.embedder.embed(list(texts))

    def ask(
        self,
        question: str,
        *,
        k: int | None = None,
        filters: Filters | None = None,
        user: str | None = None,
        role: str | None = None,
        on_token: Callable[[str], None] | None = None,
        record: bool = True,
        attribute: bool | None = None,
    ) -> Answer:
        question = question.strip()
        if not question:
            raise InputLimitError("The question is empty. Type a clinical question.")
        if len(question) > self.settings.max_question_chars:
            raise InputLimitError(
                f"The question is {len(question)} characters; the limit is "
                f"{self.settings.max_question_chars}. Shorten it."
            )
        user = user or self.settings.user
        role = role or self.settings.role
        # The asker's role always decides which restricted documents are visible, whatever
        # other filters the caller chose.
        filters = replace(filters or Filters(), roles=(role,))
        if record:
            self._check_audit_writable()
            self._check_rate(user)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        hits = self.retriever.retrieve(question, k=k, filters=filters)
        timings["retrieval"] = time.perf_counter() - t0
        answer = self._answer(question, hits, timings, on_token)
        if attribute is None:
            attribute = self.settings.attribution != "off"
        if attribute and not answer.abstained:
            self.attribute(answer)
        timings["total"] = time.perf_counter() - t0
        if record:
            answer.audit_id = self.record(answer, user=user, role=role)
        return answer

    def _answer(
        self,
        question: str,
        hits: list[Hit],
        timings: dict[str, float],
        on_token: Callable[[str], None] | None,
    ) -> Answer:
        sources = source_sentences(hits)
        relevance = max((h.dense_score or 0.0) for h in hits) if hits else 0.0
        nearest = _nearest_documents(hits)
        reason = None
        if relevance < self.settings.abstain_min_relevance:
            reason = f"weak_retrieval (best relevance {relevance:.2f})"
        else:
            cov = coverage.check(
                question, hits, self.retriever.lexical.stem, self.settings.abstain_rare_term_zipf
            )
            if not cov.covered:
                reason = f"not_in_library (no retrieved passage mentions {', '.join(cov.missing)})"
        if reason is not None:
            if on_token:
                on_token(ABSTAIN_TEXT)
            return Answer(
                question,
                ABSTAIN_TEXT,
                True,
                [],
                [],
                [],
                hits,
                sources,
                None,
                timings,
                abstain_reason=reason,
                nearest_documents=nearest,
            )
        t = time.perf_counter()
        generation = generate(self.llm, self.settings, question, hits, on_token)
        timings["generation"] = time.perf_counter() - t
        t = time.perf_counter()
        alignment = align(
            generation.text,
            hits,
            self.embed,
            threshold=self.settings.support_threshold,
            sources=sources,
            question=question,
        )
        timings["citation"] = time.perf_counter() - t
        n = len(alignment.sentences)
        unsupported = sum(not s.supported for s in alignment.sentences) / n if n else 1.0
        declined = any(p in generation.text.lower() for p in _MODEL_DECLINES)
        if declined or unsupported > self.settings.abstain_max_unsupported:
            reason = (
                "model_declined" if declined else f"unsupported ({unsupported:.0%} of sentences)"
            )
            evidence = question_evidence(question, hits, self.embed, sources)
            # Scores are the sentences' own match to the question; ranking also weighs the title.
            strong = bool(evidence) and (
                max(e.score for e in evidence) >= self.settings.quote_min_evidence
            )
            if strong and self.settings.unsupported_fallback == "quote":
                # The library holds the answer but the model did not say it verifiably: give
                # the clinician the guideline's own sentences rather than nothing.
                quoted = quote_answer(evidence, hits)
                text = " ".join(f"{s.text} [{s.citations[0]}]" for s in quoted.sentences)
                return Answer(
                    question,
                    text,
                    False,
                    quoted.sentences,
                    quoted.citations,
                    quoted.evidence,
                    hits,
                    sources,
                    generation,
                    timings,
                    mode="quoted",
                    abstain_reason=None,
                    nearest_documents=nearest,
                    unverified=[s for s in alignment.sentences if not s.supported],
                )
            text = ABSTAIN_TEXT if declined or not strong else UNVERIFIED_TEXT
            return Answer(
                question,
                text,
                True,
                alignment.sentences,
                [],
                evidence,
                hits,
                sources,
                generation,
                timings,
                abstain_reason=reason,
                nearest_documents=nearest,
                mode="abstained",
            )
        return Answer(
            question,
            generation.text,
            False,
            alignment.sentences,
            alignment.citations,
            alignment.evidence,
            hits,
            sources,
            generation,
            timings,
            nearest_documents=nearest,
        )

    def attribute(self, answer: Answer, method: str | None = None) -> Answer:
        """Causal attribution; may run after the answer was shown (the UI does so)."""
        from assistant.attribute import attribute_answer

        return attribute_answer(answer, self.llm, self.settings, self.embed, method)

    # audit
    def _check_audit_writable(self) -> None:
        try:
            self.audit.check_writable()
        except Exception as exc:
            raise AuditError(
                f"{exc} No answer is given without an audit record; ask your administrator."
            ) from exc

    def record_attribution(self, answer: Answer, *, user: str, role: str) -> int:
        """Append attribution computed after the answer was shown, tied to its record."""
        try:
            return int(
                self.audit.append(
                    "attribution",
                    user,
                    role,
                    {
                        "answer_seq": answer.audit_id,
                        "attribution": answer.attribution,
                        "faithfulness": (answer.attribution or {}).get("faithfulness"),
                    },
                ).seq
            )
        except Exception as exc:
            raise AuditError(f"The attribution could not be recorded: {exc}") from exc

    def _check_rate(self, user: str) -> None:
        # Counted from the audit log itself, so the limit holds across processes and restarts.
        since = datetime.now(UTC) - timedelta(minutes=1)
        recent = self.audit.list(since=since, user=user, event="answer")
        if len(recent) >= self.settings.questions_per_minute:
            raise InputLimitError(
                f"{user} has asked {len(recent)} questions in the last minute; the limit is "
                f"{self.settings.questions_per_minute}. Wait a minute and ask again."
            )

    def record(self, answer: Answer, *, user: str, role: str) -> int:
        from audit.log.redact import question_fields

        index = self.retriever.index
        payload = answer_payload(answer, self.settings, index.version, index.embedder.info)
        payload.update(question_fields(answer.question, self.settings.audit_questions))
        payload["question_mode"] = self.settings.audit_questions
        try:
            return int(self.audit.append("answer", user, role, payload).seq)
        except Exception as exc:
            raise AuditError(
                f"The answer was withheld because its audit record could not be written: {exc}"
            ) from exc


def _nearest_documents(hits: list[Hit]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for h in hits:
        c = h.chunk
        if c.doc_id not in seen:
            seen[c.doc_id] = {
                "doc_id": c.doc_id,
                "title": c.title,
                "relevance": round(h.dense_score or 0.0, 4),
            }
    return list(seen.values())


def hit_dict(hit: Hit, n: int) -> dict[str, Any]:
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
        "dense_score": None if hit.dense_score is None else round(hit.dense_score, 6),
        "dense_rank": hit.dense_rank,
        "bm25_score": None if hit.bm25_score is None else round(hit.bm25_score, 6),
        "bm25_rank": hit.bm25_rank,
        "rerank_score": None if hit.rerank_score is None else round(hit.rerank_score, 6),
    }


def answer_payload(
    answer: Answer, settings: Settings, index_version: str, embedder: EmbedderInfo
) -> dict[str, Any]:
    """Everything needed to verify and replay an answer (the question is added per policy)."""
    gen = answer.generation
    by_chunk = {h.chunk.chunk_id: h for h in answer.hits}
    return {
        "answer": answer.answer,
        "abstained": answer.abstained,
        "abstain_reason": answer.abstain_reason,
        "mode": answer.mode,
        "generated_text": gen.text if gen else None,
        "sentences": [asdict(s) for s in answer.sentences],
        "citations": [
            {k: v for k, v in asdict(c).items() if k not in {"text", "metadata"}}
            | {"content_hash": by_chunk[c.chunk_id].chunk.content_hash}
            for c in answer.citations
        ],
        "evidence": [asdict(e) for e in answer.evidence],
        "retrieved": [hit_dict(h, n) for n, h in enumerate(answer.hits, start=1)],
        "index_version": index_version,
        "embedder": asdict(embedder),
        "model": asdict(gen.model) if gen else None,
        "prompt": {"template": gen.template, "hash": gen.prompt_hash} if gen else None,
        "decoding": gen.decoding if gen else None,
        "settings": {
            "top_k": len(answer.hits),
            "llm": settings.llm,
            "llm_model": settings.llm_model,
            "prompt_template": settings.prompt_template,
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "support_threshold": settings.support_threshold,
            "abstain_min_relevance": settings.abstain_min_relevance,
            "abstain_max_unsupported": settings.abstain_max_unsupported,
            "abstain_rare_term_zipf": settings.abstain_rare_term_zipf,
            "unsupported_fallback": settings.unsupported_fallback,
            "quote_min_evidence": settings.quote_min_evidence,
        },
        "attribution": answer.attribution,
        "faithfulness": (answer.attribution or {}).get("faithfulness"),
        "timings": {k: round(v, 4) for k, v in answer.timings.items()},
    }
