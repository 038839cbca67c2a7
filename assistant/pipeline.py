"""The path of one question: retrieve -> generate -> cite -> (attribute) -> record.

``Assistant`` is cheap to construct; ``warm_up`` loads the models once. An answer is returned
only after its audit record is committed: if the log cannot be written, the answer is withheld.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from assistant import coverage, decide, policy
from assistant.cite import align, quotes_for, source_sentences
from assistant.generate import generate
from assistant.retrieve import Filters, Retriever
from audit.record import Recorder
from core import backends
from core.config import Settings
from core.errors import InputLimitError
from core.types import Actor, Answer, Chunk, Hit

if TYPE_CHECKING:
    from audit.log import AuditLog
    from core.backends.base import LLM


class Assistant:
    """Answers questions: retrieval, the answer policy, generation, citation checks, record."""

    def __init__(
        self,
        settings: Settings,
        retriever: Retriever | None = None,
        llm: LLM | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.retriever = retriever or Retriever(settings)
        self.llm: LLM = llm or backends.create("llm", settings.llm, settings)
        self.recorder = Recorder(audit_log) if audit_log is not None else Recorder.open(settings)

    @property
    def audit(self) -> AuditLog:
        return self.recorder.log

    def warm_up(self, *, model: bool = True) -> None:
        """Load what answering needs. ``model=False`` (a one-question CLI) leaves the LLM
        to load when an answer first needs it: quoted answers and declines never do, and
        loading it imports torch and transformers (about 4 s of a 2-core start)."""
        self.retriever.warm_up()
        if model:
            self.llm.warm_up()
        if self.settings.abstain_rare_term_zipf > 0:
            coverage.warm_up()

    def load_model(self, timings: dict[str, float]) -> None:
        """Load the LLM now if it is not yet (see :meth:`warm_up`), timed apart as
        ``model_load`` so the generation or decision time stays the model's work alone."""
        if getattr(self.llm, "loaded", True):
            return
        t = time.perf_counter()
        self.llm.warm_up()
        timings["model_load"] = time.perf_counter() - t

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
        resolved_question: str | None = None,
        parent_id: int | None = None,
    ) -> Answer:
        """``resolved_question``: a follow-up rewritten to stand alone (``assistant.followup``),
        what retrieval, the checks and the model see; the record keeps ``question`` as typed
        beside it and ``parent_id``, the previous turn's answer record."""
        question = question.strip()
        if not question:
            raise InputLimitError("The question is empty. Type a clinical question.")
        if len(question) > self.settings.max_question_chars:
            raise InputLimitError(
                f"The question is {len(question)} characters; the limit is "
                f"{self.settings.max_question_chars}. Shorten it."
            )
        typed = question
        resolved_question = (resolved_question or "").strip() or None
        if resolved_question == typed:
            resolved_question = None
        question = resolved_question or typed
        user = user or self.settings.user
        role = role or self.settings.role
        # The asker's role always decides which restricted documents are visible, whatever
        # other filters the caller chose.
        filters = replace(filters or Filters(), roles=(role,))
        if record:
            self.recorder.check_writable()
            self._check_rate(user)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        k = k or self.settings.top_k
        hits = self._retrieve(question, k, filters)
        timings["retrieval"] = time.perf_counter() - t0
        answer = self._answer(question, hits, timings, on_token)
        if attribute is None:
            attribute = self.settings.attribution != "off"
        if attribute and not answer.abstained:
            self.attribute(answer)
        timings["total"] = time.perf_counter() - t0
        answer.question, answer.resolved_question = typed, resolved_question
        answer.top_k = k
        answer.parent_id = parent_id
        if record:
            answer.audit_id = self.record(answer, user=user, role=role)
        return answer

    def _retrieve(self, question: str, k: int, filters: Filters) -> list[Hit]:
        """The ``k`` best passages, then up to ``leading_document_passages`` more of the
        leading document from the next ``k`` ranks: a guideline's answer often sits in its
        own passage just below the cut ("Population", "When Not to Screen"), while passages
        of other documents below it only add citations."""
        extra = self.settings.leading_document_passages
        if not extra:
            return self.retriever.retrieve(question, k=k, filters=filters)
        ranked = self.retriever.retrieve(question, k=2 * k, filters=filters)
        top = ranked[:k]
        if top:
            leading = top[0].chunk.doc_id
            top += [h for h in ranked[k:] if h.chunk.doc_id == leading][:extra]
        if self.settings.population_passage:
            top += self._population_passage(question, top)
        if self.settings.recommendation_passage:
            top += self._recommendation_passage(question, top)
        return top

    def _recommendation_passage(self, question: str, top: list[Hit]) -> list[Hit]:
        """The leading document's recommendation passage closest to the question, when no
        passage of it read so far holds a statement.

        A summary's short administrative passages match a question through their title
        alone: "Who should get a one-time ultrasound screen for abdominal aortic aneurysm?"
        read a federal summary's "Interventions Considered", "Adaptation", "Date Released"
        and "Companion Documents", and quoted "Screening for abdominal aortic aneurysm (AAA)
        with ultrasonography", while "The USPSTF recommends 1-time screening for AAA with
        ultrasonography in men aged 65 to 75 years who have ever smoked" ranked lower. The
        answer policy leads with a statement (issue 19), so one is read."""
        from core import recommendations

        if not top:
            return []

        def statements(chunk: Chunk) -> list[str]:
            # what to do (a recommendation verb or a grade), not only whom or how often
            said = (
                recommendations.describe(chunk.text, a, b)
                for a, b in recommendations.spans(chunk.text, chunk.section, chunk.metadata)
            )
            return [st.text for st in said if st.recommends]

        found = [(c, statements(c)) for c in self._unread_of_leading(top, statements)]
        if not found:
            return []
        # Each passage by its statement closest to the question, as quotes are ranked: a
        # whole passage's match favours a neighbouring topic ("Screening Methods: studies
        # suggest handheld ultrasonography...") over the summary of recommendations.
        owner = [i for i, (_, said) in enumerate(found) for _ in said]
        vectors = self.embed([question, *(t for _, said in found for t in said)])
        best = owner[int(np.argmax(vectors[1:] @ vectors[0]))]
        return self.retriever.hits_for(question, [found[best][0]], min(h.score for h in top))

    def _unread_of_leading(
        self, top: list[Hit], fits: Callable[[Chunk], object]
    ) -> Iterator[Chunk]:
        """The leading document's passages that ``fits`` and were not read, in order; none
        when a passage of it read already fits."""
        leading = top[0].chunk.doc_id
        read = [h.chunk for h in top if h.chunk.doc_id == leading]
        if any(fits(c) for c in read):
            return
        taken = {c.chunk_id for c in read}
        for chunk in self.retriever.index.manifest.chunks([leading]):
            if chunk.chunk_id not in taken and fits(chunk):
                yield chunk

    def _population_passage(self, question: str, top: list[Hit]) -> list[Hit]:
        """The leading document's passage that says whom it is for, when no passage of it
        read so far does.

        A stated age: the passage whose statement holds it. "Should a 20-year-old have a Pap
        test?" ranks the "Ages 21 to 29" and "Ages 30 to 65" passages (they name the Pap test)
        and not "When Not to Screen", whose "Younger than 21: do not screen (grade D)"
        answers it. Else a sex the question names: the first passage naming one. Whom a
        guideline is for is often said once ("Women and other people assigned female at
        birth, aged 40 and older"), and without it "Should men get screening mammograms?"
        read "Ages 40 to 74: biennial screening mammography (grade B)" as a yes
        (``coverage.other_population`` then declines)."""
        from core import recommendations

        if not top:
            return []
        population = recommendations.Population.of(question)
        if population.stated_ages:

            def fits(chunk: Chunk) -> bool:
                for a, b in recommendations.spans(chunk.text, chunk.section, chunk.metadata):
                    held, excluded = population.compare(chunk.text[a:b], chunk.section)
                    if held and not excluded:
                        return True
                return False

        elif population.sex is not None:

            def fits(chunk: Chunk) -> bool:
                return recommendations.names_sex(chunk.text)

        else:
            return []
        found = next(self._unread_of_leading(top, fits), None)
        if found is None:
            return []
        return self.retriever.hits_for(question, [found], min(h.score for h in top))

    def _answer(
        self,
        question: str,
        hits: list[Hit],
        timings: dict[str, float],
        on_token: Callable[[str], None] | None,
    ) -> Answer:
        ctx = policy.Context(
            question=question,
            hits=hits,
            sources=source_sentences(hits),
            timings=timings,
            nearest=_nearest_documents(hits),
        )
        reason = policy.before_generation(
            question, hits, self.settings, self.retriever.lexical.stem
        )
        if reason is not None:
            if on_token:
                on_token(policy.ABSTAIN_TEXT)
            return policy.abstained(ctx, reason)
        # the JSON contract always has a generation time once an answer is given: 0 when the
        # answer needed no draft (a decision, or quotes on strong evidence)
        timings["generation"] = 0.0
        # a yes/no question is answered by its decision and the evidence it read, when the
        # model can score the options; anything else by the model's draft, checked
        decided = decide.answer(self, ctx)
        if decided is not None:
            return decided
        t = time.perf_counter()
        quotes = quotes_for(question, hits, self.embed, ctx.sources, limit=policy.QUOTE_LIMIT * 2)
        timings["citation"] = time.perf_counter() - t
        if not policy.draft_needed(quotes, self.llm.info, self.settings):
            return policy.undrafted(ctx, self.llm.info, quotes)
        self.load_model(timings)
        t = time.perf_counter()
        generation = generate(self.llm, self.settings, question, hits, on_token)
        timings["generation"] = time.perf_counter() - t
        t = time.perf_counter()
        alignment = align(
            generation.text,
            hits,
            self.embed,
            threshold=self.settings.support_threshold,
            sources=ctx.sources,
            question=question,
        )
        timings["citation"] += time.perf_counter() - t
        return policy.compose(
            ctx,
            generation,
            drafted=alignment.sentences,
            drafted_evidence=alignment.evidence,
            quotes=quotes,
            settings=self.settings,
        )

    def attribute(self, answer: Answer, method: str | None = None) -> Answer:
        """Causal attribution; may run after the answer was shown (the UI does so)."""
        from assistant.attribute import attribute_answer

        return attribute_answer(answer, self.llm, self.settings, self.embed, method)

    # audit
    def _check_rate(self, user: str) -> None:
        # Counted from the audit log itself, so the limit holds across processes and restarts.
        since = datetime.now(UTC) - timedelta(minutes=1)
        recent = self.recorder.recent_answers(user, since)
        if recent >= self.settings.questions_per_minute:
            raise InputLimitError(
                f"{user} has asked {recent} questions in the last minute; the limit is "
                f"{self.settings.questions_per_minute}. Wait a minute and ask again."
            )

    def record(self, answer: Answer, *, user: str, role: str) -> int:
        index = self.retriever.index
        return self.recorder.answer(
            Actor(user, role),
            answer,
            settings=self.settings,
            index_version=index.version,
            embedder=index.embedder.info,
        )


def _nearest_documents(hits: list[Hit]) -> list[dict[str, Any]]:
    """The retrieved documents, most relevant first, each at its best passage's cosine."""
    best: dict[str, dict[str, Any]] = {}
    for h in hits:
        c = h.chunk
        relevance = round(h.dense_score or 0.0, 4)
        if c.doc_id not in best or relevance > best[c.doc_id]["relevance"]:
            best[c.doc_id] = {"doc_id": c.doc_id, "title": c.title, "relevance": relevance}
    return sorted(best.values(), key=lambda d: -d["relevance"])
