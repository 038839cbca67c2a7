"""Ask: a question streams into an answer; each sentence carries its sources, checked.

Answers stay in the session's history (newest last); a new question never replaces an old one.
Each answer's attribution is computed in the background (``services.attribution_queue``) and
appears by itself when ready: under each sentence, the source sentences that drove it,
highlighted in their passage by score, and the faithfulness check in words.
The history is one conversation: a question that leans on the previous one ("and when should
they stop?") is answered as rewritten from it ("Understood as ..."), and "New conversation"
clears it. Only checked sentences are shown; removed ones are counted, never displayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from assistant.policy import display_labels, removed_note
from core.config import Settings
from core.errors import ClinragError
from core.types import Actor, Answer, Chunk, DecisionLabel, Hit, Mode
from services import ask as asking
from services import library
from services.accounts import User
from services.attribution_queue import State
from services.generation_worker import queue_updates
from ui.render import (
    NEGATIVE_SCORE_NOTE,
    SentenceDrivers,
    abstain_reason_text,
    attribution_by_source,
    attribution_chart,
    decision_method_text,
    driver_html,
    faithfulness_text,
    has_negative,
    highlighted_html,
    md_escape,
    score_text,
    sentence_drivers,
    source_highlights,
)
from ui.session import actor, assistant_session, attribution_queue, require

log = logging.getLogger("clinrag.ui")
MAX_COMMENT_CHARS = asking.MAX_COMMENT_CHARS
# How often a pending attribution is looked at (seconds): the page shows it by itself.
POLL_SECONDS = 2.0
_DECISION_WORDS = {
    DecisionLabel.YES: "Yes",
    DecisionLabel.NO: "No",
    DecisionLabel.UNCERTAIN: "Uncertain",
}


def render(settings: Settings, user: User | None) -> None:
    user = require(user, "Ask")
    st.header("Ask")
    # What this asker may see, as retrieval decides it: warnings name only these documents.
    docs = library.visible_documents(settings, actor(user))
    if not docs:
        st.info("The library is empty. An administrator adds guidelines on the Library page.")
    # the process's attribution queue: made by the first Ask page after a start, which
    # queues the answers earlier processes left unattributed (in the background)
    attribution_queue(settings)
    history: list[dict[str, Any]] = st.session_state.setdefault("history", [])
    if history and st.button(
        "New conversation",
        key="new-conversation",
        icon=":material/add_comment:",
        help="Clears this conversation: the next question is read on its own.",
    ):
        # the answers stay in the audit log; the next question has no previous turn
        history.clear()
        st.rerun()
    for i, entry in enumerate(history):
        _render_entry(settings, user, entry, i, docs)
    question = st.chat_input(
        "Ask a clinical question", key="question", max_chars=settings.max_question_chars
    )
    if question:
        with st.chat_message("user"):
            st.markdown(md_escape(question))
        with st.chat_message("assistant"):
            entry = _ask(settings, user, question, _previous(history))
        history.append(entry)
        st.rerun()


def _previous(history: list[dict[str, Any]]) -> Answer | None:
    """The conversation's last answer, the context a follow-up question is read in (a turn
    that failed has none; the one before it stands)."""
    for entry in reversed(history):
        if entry.get("answer") is not None:
            answer: Answer = entry["answer"]
            return answer
    return None


def _ask(
    settings: Settings, user: User, question: str, previous: Answer | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"question": question, "answer": None, "error": None, "feedback": None}
    try:
        with assistant_session(settings) as assistant:
            # The draft itself is never shown: nothing unchecked reaches a clinician. Progress
            # is, so a slow CPU does not look like a hung page.
            placeholder = st.empty()
            placeholder.caption("Searching the library…")
            words = [0]

            def on_token(token: str) -> None:
                words[0] += len(token.split())
                placeholder.caption(
                    f"Writing the answer: {words[0]} words drafted. It is shown once every "
                    "sentence has been checked against the sources."
                )

            def on_wait(ahead: int) -> None:
                if ahead:
                    placeholder.caption(
                        f"Waiting for the model: {ahead} question{'s' * (ahead != 1)} ahead "
                        "of yours (attribution of earlier answers waits for yours)."
                    )

            with queue_updates(on_wait):
                entry["answer"] = asking.ask(
                    assistant, actor(user), question, on_token=on_token, previous=previous
                )
        # shown and recorded now; its attribution follows in the background, after the
        # model lock is released
        attribution_queue(settings).submit(actor(user), entry["answer"])
    except ClinragError as exc:
        entry["error"] = str(exc)
    except Exception as exc:  # shown, not raised: the history must survive
        log.exception("question failed")
        entry["error"] = (
            f"Unexpected error ({exc.__class__.__name__}: {exc}). Tell your administrator."
        )
    return entry


def _collect_attribution(settings: Settings, entry: dict[str, Any]) -> None:
    """Put a finished background attribution into the history entry (before it is drawn)."""
    answer = entry.get("answer")
    if (
        answer is None
        or answer.attribution is not None
        or answer.audit_id is None
        or entry.get("attribution_failed")
    ):
        return
    job = attribution_queue(settings).job(int(answer.audit_id))
    if job is None or not job.done:
        return
    if job.state == State.ATTRIBUTED and job.result is not None:
        entry["answer"] = job.result
    else:
        entry["attribution_failed"] = job.reason or str(job.state)


def _fragment_run() -> bool:
    """Whether this run redraws only fragments (their timer), not the whole page."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and getattr(ctx, "fragment_ids_this_run", None))


def _render_entry(
    settings: Settings, user: User, entry: dict[str, Any], i: int, docs: list[dict[str, Any]]
) -> None:
    _collect_attribution(settings, entry)
    with st.chat_message("user"):
        st.markdown(md_escape(entry["question"]))
    with st.chat_message("assistant"):
        if entry.get("error"):
            st.error(md_escape(entry["error"]))
            return
        answer = entry["answer"]
        _render_answer(settings, actor(user), answer, i, docs)
        _render_attribution(settings, user, entry, i)
        _render_feedback(settings, user, entry, i)


def _render_answer(
    settings: Settings, who: Actor, answer: Answer, i: int, docs: list[dict[str, Any]]
) -> None:
    if answer.resolved_question:
        st.caption("Understood as: " + md_escape(answer.resolved_question))
    labels = display_labels(answer)
    if answer.abstained:
        st.warning(
            "**No answer.** The assistant abstained: "
            + md_escape(abstain_reason_text(answer.abstain_reason))
            + "."
        )
        st.markdown(md_escape(answer.answer))
        numbers = sorted({e.n for e in answer.evidence})
    else:
        _render_decision(answer, labels)
        if answer.mode == Mode.QUOTED:
            st.info(
                "The model's own wording could not be verified against the sources, so the "
                "guideline sentences that best answer the question are quoted instead."
            )
        elif answer.mode == Mode.COMBINED:
            st.caption(
                "The model's sentences that were checked against the cited sources, completed "
                "with the guideline's own sentences."
            )
        else:
            st.caption("Each sentence was checked against the cited sources.")
        # Only the sentence flags decide what is shown: a sentence verification refused is
        # never displayed, whatever attribution later adds to the answer.
        drivers = sentence_drivers(answer)
        for k, s in enumerate(answer.sentences):
            if s.supported:
                chips = " ".join(f":blue-badge[{labels.get(n, n)}]" for n in s.citations)
                st.markdown(f"{md_escape(s.text)} {chips}")
                if k < len(drivers) and drivers[k].drivers:
                    _render_drivers(answer, drivers[k], labels, key=f"drv-{i}-{k}")
        numbers = [c.n for c in answer.citations]
        # evidence from a source no sentence cites still gets its panel, so every label shown
        # can be opened
        numbers += sorted({e.n for e in answer.evidence} - set(numbers))
    removed = removed_note(answer)
    if removed:
        st.caption(":material/content_cut: " + md_escape(removed))

    hits = answer.hits or []
    for w in _currency_lines(hits, numbers, docs, who.role, labels):
        st.warning(md_escape(w), icon=":material/history:")

    if numbers:
        st.markdown("**Sources**" if not answer.abstained else "**Closest passages**")
        for n in numbers:
            if 0 < n <= len(hits):
                _source_panel(settings, who, answer, hits[n - 1].chunk, n, i, docs, labels)

    if answer.evidence:
        st.markdown("**Key evidence** (the guideline's own words)")
        for e in answer.evidence:
            st.markdown("> " + md_escape(e.text))
            where = ", ".join(x for x in (e.section, f"p. {e.page}" if e.page else "") if x)
            st.caption(
                md_escape(f"[{labels.get(e.n, e.n)}] {e.title}" + (f" ({where})" if where else ""))
            )

    if answer.abstained and answer.nearest_documents:
        st.markdown("**Nearest documents**")
        for d in answer.nearest_documents:
            st.markdown(
                "- " + md_escape(f"{d['title']} ({d['doc_id']}), relevance {d['relevance']:.2f}")
            )

    if answer.audit_id is not None:
        st.caption(f"Audit record {int(answer.audit_id)}")


def _label_key(label: Any) -> tuple[int, int, str]:
    text = str(label)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _render_decision(answer: Answer, labels: dict[int, Any]) -> None:
    """A yes/no question's decision first, with the guideline sentences it was read from."""
    decision = answer.decision
    if decision is None:
        return
    word = _DECISION_WORDS.get(DecisionLabel(decision.label), str(decision.label).title())
    by_index = {s.index: s for s in answer.source_sentences}
    st.markdown(f"### {md_escape(word)}")
    # only the cited sources' sentences: the findings model reads every retrieved passage of
    # the cited document, and an uncited one has no number or panel on this screen
    shown = [by_index[k] for k in decision.evidence if k in by_index and by_index[k].n in labels]
    if shown:
        st.caption("Decided from these sentences of the sources only:")
        for s in shown:
            st.markdown(f"> {md_escape(s.text)} :blue-badge[{labels[s.n]}]")
    else:
        st.caption("No source sentence supports a yes or a no.")
    odds = ", ".join(
        f"{k} {v:.2f}"
        for k, v in decision.probabilities.items()
        if k.lower() in {"yes", "no"} and isinstance(v, int | float)
    )
    method = decision_method_text(decision.method)
    st.caption(md_escape(method + (f" ({odds})" if odds else "")))


def _currency_lines(
    hits: list[Hit],
    numbers: list[int],
    docs: list[dict[str, Any]],
    role: str,
    labels: dict[int, Any] | None = None,
) -> list[str]:
    """One line per cited document and warning, naming every source number that cites it
    (several passages of one outdated guideline used to repeat its warning per passage)."""
    cited: dict[str, list[int]] = {}
    chunks: dict[str, Chunk] = {}
    for n in numbers:
        if 0 < n <= len(hits):
            chunk = hits[n - 1].chunk
            cited.setdefault(chunk.doc_id, []).append(n)
            chunks.setdefault(chunk.doc_id, chunk)
    lines = []
    for doc_id, ns in cited.items():
        chunk = chunks[doc_id]
        shown = sorted({(labels or {}).get(n, n) for n in ns}, key=_label_key)
        marks = ", ".join(str(m) for m in shown)
        for w in library.currency_warnings(
            doc_id, docs, title=chunk.title, metadata=chunk.metadata, roles=[role]
        ):
            lines.append(f"[{marks}] {chunk.title}: {w}")
    return lines


def chart_rows(answer: Answer) -> list[dict[str, Any]]:
    """The attribution chart's bars, each source named by the label the answer shows."""
    rows = attribution_by_source(answer)
    labels = display_labels(answer)
    for row in rows:
        n = row.get("n")
        if isinstance(n, int):
            # a source the answer does not cite has no label; its retrieval rank would read
            # as another source's label
            label = f"[{labels[n]}]" if n in labels else "[not cited]"
            row["source"] = str(row["source"]).replace(f"[{n}]", label, 1)
    return rows


def _render_drivers(
    answer: Answer, found: SentenceDrivers, labels: dict[int, Any], key: str
) -> None:
    """Under one answer sentence: the passages holding the source sentences that drove it,
    those sentences highlighted darker the more credit they got, with their scores."""
    hits = answer.hits or []
    # no source label in the title: it would read as (and be found as) a source panel
    count = len(found.drivers)
    title = (
        f"What drove this sentence: {count} source sentence{'s' if count != 1 else ''}, "
        f"best score {score_text(found.drivers[0].score)}"
    )
    # keyed and tracked, like the source panels: an open panel stays open across redraws
    with st.expander(md_escape(title), icon=":material/insights:", key=key, on_change="rerun"):
        if found.whole_answer:
            st.caption("Scores for the whole answer (this record has none per sentence).")
        for n, drivers in found.by_source().items():
            if not 0 < n <= len(hits):
                continue
            chunk = hits[n - 1].chunk
            where = f" · {chunk.section}" if chunk.section else ""
            st.caption(md_escape(f"{_label(labels, n)} {chunk.title}{where}"))
            st.markdown(driver_html(chunk.text, drivers), unsafe_allow_html=True)
        st.caption(
            "Darker: more credit for this sentence. The number after a highlighted sentence "
            "is its attribution score (hover it for its rank)."
        )


def _label(labels: dict[int, Any], n: int) -> str:
    # a source the answer does not cite has no label; its retrieval rank would read as
    # another source's label
    return f"[{labels[n]}]" if n in labels else "[not cited]"


def _render_attribution(settings: Settings, user: User, entry: dict[str, Any], i: int) -> None:
    """The attribution (chart and faithfulness in words), or its progress while the
    background queue computes it; it replaces the progress by itself when ready.

    Attribution runs after the answer was shown and recorded, as its own ``attribution``
    audit event pointing at the answer record, so no clinician waits for it.
    """
    answer = entry["answer"]
    rows = chart_rows(answer)
    if rows:
        attribution = answer.attribution or {}
        st.markdown(
            "**Which sources the answer relied on** "
            + md_escape(f"(attribution: {attribution.get('method', '')})")
        )
        st.caption(md_escape(faithfulness_text(attribution.get("faithfulness"))))
        st.altair_chart(attribution_chart(rows), width="stretch")
        if has_negative(rows):
            st.caption(NEGATIVE_SCORE_NOTE)
        return
    if entry.get("attribution_failed"):
        st.caption(md_escape(f"No attribution for this answer: {entry['attribution_failed']}."))
        return
    if entry.get("attribution_elsewhere"):
        st.caption(
            "The attribution of this answer is computed in the background; its audit "
            "record will hold it."
        )
        return
    if answer.abstained or answer.audit_id is None or settings.attribution == "off":
        return
    _attribution_progress(settings, user, entry)


@st.fragment(run_every=POLL_SECONDS)
def _attribution_progress(settings: Settings, user: User, entry: dict[str, Any]) -> None:
    """Polls the queue while the answer's attribution is pending; once it is done, puts the
    attributed answer into the history and reruns the page (the passages too get their
    highlights)."""
    answer: Answer = entry["answer"]
    queue = attribution_queue(settings)
    job = queue.job(int(answer.audit_id or 0))
    if job is None:
        # not on this process's queue (submitted before a restart): the next start's
        # recovery attributes it; the audit record will hold it
        entry["attribution_elsewhere"] = True
    if job is None or job.done:
        # Redraw the whole page (the sentences and passages get their highlights), but only
        # from the timer's run: a rerun during a full run would drop a question just typed.
        # A full run collects the result itself (_collect_attribution).
        if _fragment_run():
            st.rerun()
        st.caption("Attribution ready: showing it…")
        return
    if job.state == State.RETRYING:
        wait = max(0.0, (job.retry_at or 0.0) - time.monotonic())
        st.progress(
            0.0,
            text=f"The model server is busy: trying the attribution again in {wait:.0f} s.",
        )
        return
    if job.state == State.QUEUED:
        ahead = queue.ahead(job)
        st.progress(
            0.0,
            text=f"Attribution waiting: {ahead} answer{'s' if ahead != 1 else ''} ahead of it.",
        )
        return
    elapsed, typical = job.seconds(), queue.typical_seconds()
    text = f"Measuring which source sentences drove this answer: {elapsed:.0f} s"
    if typical:
        text += f" (usually about {typical:.0f} s)"
    st.progress(min(elapsed / typical, 0.95) if typical else 0.05, text=text + ".")


def _source_panel(
    settings: Settings,
    who: Actor,
    answer: Answer,
    chunk: Chunk,
    n: int,
    i: int,
    docs: list[dict[str, Any]],
    labels: dict[int, Any] | None = None,
) -> None:
    meta = chunk.metadata or {}
    where = ", ".join(x for x in (chunk.section, f"p. {chunk.page}" if chunk.page else "") if x)
    shown = (labels or {}).get(n, n)
    label = md_escape(f"[{shown}] {chunk.title}" + (f" · {where}" if where else ""))
    # Keyed and tracked: when the background attribution arrives the page redraws with its
    # "what drove this sentence" panels above the sources, and an untracked expander is then
    # a new element that starts closed, closing the panel the clinician was reading.
    with st.expander(label, key=f"src-{i}-{n}", on_change="rerun"):
        facts = [
            ("Issued by", meta.get("issuing_body")),
            ("Published", meta.get("publication_date")),
            ("Version", meta.get("version")),
            ("Section", chunk.section),
            ("Page", str(chunk.page) if chunk.page else None),
            ("Document", chunk.doc_id),
        ]
        st.caption(" · ".join(md_escape(f"{k}: {v}") for k, v in facts if v))
        for w in library.currency_warnings(
            chunk.doc_id, docs, title=chunk.title, metadata=meta, roles=[who.role]
        ):
            st.warning(md_escape(w))
        evidence, attributed = source_highlights(answer, n)
        st.markdown(highlighted_html(chunk.text, evidence, attributed), unsafe_allow_html=True)
        legend = "Highlighted: the sentences the answer relies on."
        if attributed:
            legend += " Underlined: the sentences attribution credits most."
        st.caption(legend)
        cols = st.columns(2)
        # services.library checks the file is the one ingested (and the asker may see it),
        # now to say why it is not offered, and again at the click that reads it
        try:
            name = library.original_name(settings, who, chunk.doc_id)
        except ClinragError as exc:
            cols[0].caption(md_escape(str(exc)))
        else:
            cols[0].download_button(
                "Original file",
                data=_original(settings, who, chunk.doc_id),
                file_name=name,
                key=f"dl-{i}-{n}",
                icon=":material/download:",
                on_click="ignore",
            )
        url = meta.get("source_url", "")
        if url.startswith(("https://", "http://")):
            cols[1].link_button("Published version", url, icon=":material/open_in_new:")


def _original(settings: Settings, who: Actor, doc_id: str) -> Callable[[], bytes]:
    def read() -> bytes:
        return library.original_bytes(settings, who, doc_id)

    return read


def _render_feedback(settings: Settings, user: User, entry: dict[str, Any], i: int) -> None:
    answer = entry["answer"]
    if answer.audit_id is None:
        return
    if entry.get("feedback"):
        st.caption(f"Feedback recorded: {entry['feedback']}. Thank you.")
        return
    with st.form(f"feedback-{i}", border=False):
        comment = st.text_input("Feedback comment (optional)", key=f"fb-comment-{i}")
        cols = st.columns(2)
        helpful = cols[0].form_submit_button("Helpful", icon=":material/thumb_up:")
        unhelpful = cols[1].form_submit_button("Not helpful", icon=":material/thumb_down:")
    if not (helpful or unhelpful):
        return
    try:
        asking.feedback(
            settings,
            actor(user),
            int(answer.audit_id),
            helpful=bool(helpful),
            comment=comment or "",
        )
    except Exception as exc:
        st.error(md_escape(f"The feedback could not be recorded: {exc}"))
        return
    entry["feedback"] = "helpful" if helpful else "not helpful"
    st.rerun()
