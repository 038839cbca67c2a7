"""Audit (auditors, admins): find records, read one in full, verify the chain, export, replay.

Rendering only: ``services.audit`` finds, verifies, exports and replays, and records each of
those (an export before its data is handed out).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import streamlit as st

from assistant.replay import SourceChange, describe_changes, sentence_diff
from core.config import Settings
from core.errors import ClinragError
from services import audit
from services.accounts import User
from services.audit import Record
from ui.render import (
    LABEL_LIMIT_PX,
    NEGATIVE_SCORE_NOTE,
    faithfulness_rows,
    faithfulness_text,
    heatmap_rows,
    md_escape,
    sentence_diff_html,
)
from ui.session import actor, require

EVENTS = ["all", *audit.EVENTS]
EXPORT_FORMATS = {
    "FHIR (Bundle, JSON)": (audit.ExportFormat.FHIR, "json", "application/fhir+json"),
    "CSV": (audit.ExportFormat.CSV, "csv", "text/csv"),
    "JSONL": (audit.ExportFormat.JSONL, "jsonl", "application/jsonl"),
}
DEFAULT_DAYS = 30
MAX_RECORDS = 1000


def render(settings: Settings, user: User | None) -> None:
    user = require(user, "Audit")
    st.header("Audit")
    _verify(settings, user)
    st.divider()
    query = _query()
    records = audit.find(settings, actor(user), query)
    st.markdown(md_escape(audit.attribution_coverage(settings, actor(user), query).line()))
    _table(records)
    _detail(settings, user, records)
    st.divider()
    _export(settings, user, records, query)


def _verify(settings: Settings, user: User) -> None:
    cols = st.columns([1, 3])
    if cols[0].button("Verify the chain", key="verify", icon=":material/verified:"):
        try:
            verified = audit.verify(settings, actor(user))
            st.session_state["verify_result"] = verified.to_dict()
        except ClinragError as exc:
            st.error(md_escape(f"The verification could not be recorded: {exc}"))
    result = st.session_state.get("verify_result")
    if result:
        if result["ok"]:
            cols[1].success(
                md_escape(f"Chain verified ({result['count']} records): {result['reason']}")
            )
        else:
            bad = result.get("first_bad_seq")
            cols[1].error(
                f"Verification FAILED{f' at record {bad}' if bad is not None else ''}: "
                f"{result['reason']}"
            )


def _query() -> audit.Query:
    cols = st.columns(5)
    today = date.today()
    start = cols[0].date_input("From", today - timedelta(days=DEFAULT_DAYS), key="audit_from")
    end = cols[1].date_input("To", today, key="audit_to")
    who = cols[2].text_input("User", key="audit_user").strip().lower()
    event = cols[3].selectbox("Event", EVENTS, index=0, key="audit_event")
    answers = cols[4].selectbox(
        "Answers", ["all", "answered", "abstained"], index=0, key="audit_abstained"
    )
    return audit.Query(
        since=start.isoformat() if isinstance(start, date) else None,
        until=(end + timedelta(days=1)).isoformat() if isinstance(end, date) else None,
        user=who or None,
        event=None if event == "all" else event,
        answers=str(answers),
        limit=MAX_RECORDS,
        newest_first=True,
    )


def _question(payload: dict[str, Any]) -> str:
    if payload.get("question"):
        return str(payload["question"])
    if payload.get("question_hash"):
        return f"(hashed: {str(payload['question_hash'])[:16]}...)"
    return ""


def _table(records: list[Record]) -> None:
    st.caption(
        f"{len(records)} records (newest first"
        + (f", at most {MAX_RECORDS}" if len(records) >= MAX_RECORDS else "")
        + ")."
    )
    if not records:
        st.info("No records match these filters.")
        return
    rows = [
        {
            "seq": r.seq,
            "time (UTC)": r.ts,
            "event": r.event,
            "user": r.user,
            "role": r.role,
            "question": _question(r.payload)[:120],
            "abstained": r.payload.get("abstained") if r.event == "answer" else None,
            "answer": str(r.payload.get("answer") or "")[:120],
        }
        for r in records
    ]
    st.dataframe(rows, hide_index=True, width="stretch", key="audit_table")


def _detail(settings: Settings, user: User, records: list[Record]) -> None:
    if not records:
        return
    by_seq = {r.seq: r for r in records}
    seq = st.selectbox(
        "Record",
        list(by_seq),
        format_func=lambda s: f"#{s} · {by_seq[s].ts} · {by_seq[s].event} · {by_seq[s].user}",
        key="audit_record",
    )
    record = by_seq.get(seq)
    if record is None:
        return
    with st.container(border=True):
        st.subheader(f"Record {record.seq}: {record.event}")
        st.caption(md_escape(f"{record.ts} · {record.user} ({record.role})"))
        withheld = record.payload.get("withheld")
        if withheld:
            # services.audit withheld what this role may not see; the stored record is whole
            st.warning(
                md_escape(
                    "Content withheld: this record draws on documents your role "
                    f"({withheld.get('role')}) may not see: "
                    + "; ".join(f"{d} ({why})" for d, why in withheld["documents"].items())
                    + ". Scores, ids, versions and hashes are shown; the chain verifies on "
                    "the stored record."
                ),
                icon=":material/lock:",
            )
        if record.event == "answer":
            _answer_detail(record.payload)
            _later_attribution(settings, user, record.seq)
            if not withheld:  # replaying would show what is withheld (and is refused)
                _replay(settings, user, record.seq)
        elif record.event == "replay":
            _replay_view(
                record.payload.get("answer_id", "?"),
                bool(record.payload.get("unchanged")),
                list(record.payload.get("differences") or []),
                str(record.payload.get("original_answer") or ""),
                str(record.payload.get("replayed_answer") or ""),
                key=f"record-{record.seq}",
            )
        else:
            st.json(record.payload)
        if record.event in {"answer", "replay"}:
            with st.expander("Raw record (JSON)"):
                st.json(record.payload, expanded=False)
        with st.expander("Hash chain"):
            st.code(f"prev_hash {record.prev_hash}\nhash      {record.hash}", language=None)


def _answer_detail(p: dict[str, Any]) -> None:
    st.markdown("**Question**")
    st.text(_question(p) or "(not recorded)")
    st.markdown("**Answer**" + (" (abstained)" if p.get("abstained") else ""))
    st.text(str(p.get("answer") or ""))
    if p.get("abstain_reason"):
        st.caption(md_escape(f"Abstention reason: {p['abstain_reason']}"))
    if p.get("sentences"):
        st.markdown("**Sentences and their support**")
        st.dataframe(
            [
                {
                    "sentence": s.get("text", ""),
                    "citations": ", ".join(str(n) for n in s.get("citations") or []),
                    "supported": s.get("supported"),
                    "support": s.get("support"),
                }
                for s in p["sentences"]
            ],
            hide_index=True,
            width="stretch",
        )
    if p.get("citations"):
        st.markdown("**Cited sources**")
        st.dataframe(p["citations"], hide_index=True, width="stretch")
    if p.get("retrieved"):
        with st.expander(f"Retrieved passages ({len(p['retrieved'])})"):
            st.dataframe(p["retrieved"], hide_index=True, width="stretch")
    st.markdown("**Versions**")
    versions = {
        "index_version": p.get("index_version"),
        "embedder": p.get("embedder"),
        "model": p.get("model"),
        "prompt": p.get("prompt"),
        "decoding": p.get("decoding"),
        "settings": p.get("settings"),
    }
    st.json({k: v for k, v in versions.items() if v is not None}, expanded=False)
    _faithfulness(p.get("faithfulness"))
    _heatmap(p)
    if p.get("timings"):
        st.caption("Timings (s): " + ", ".join(f"{k} {v}" for k, v in p["timings"].items()))


def _later_attribution(settings: Settings, user: User, seq: int) -> None:
    """Attribution computed after the answer: its own record, linked by ``answer_id``."""
    rec = audit.attribution_of(settings, actor(user), seq)
    if rec is None:
        return
    st.markdown(
        "**Attribution computed after the answer** "
        + md_escape(f"(record {rec.seq}, {rec.ts}, {rec.user})")
    )
    _faithfulness((rec.payload.get("attribution") or {}).get("faithfulness"))
    _heatmap(rec.payload)


def _faithfulness(faithfulness: Any) -> None:
    """Does the attribution hold up: the removal check in words, then its numbers."""
    if faithfulness is None:
        return
    st.markdown("**Faithfulness**")
    st.markdown(md_escape(faithfulness_text(faithfulness)))
    rows = faithfulness_rows(faithfulness)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption(
            "A drop of d in log-probability (natural log) makes the answer e^d times less "
            "likely; random removals are averaged over several draws."
        )


def _heatmap(p: dict[str, Any]) -> None:
    rows = heatmap_rows(p)
    if rows:
        import altair as alt

        method = md_escape(str((p.get("attribution") or {}).get("method", "")))
        st.markdown(
            f"**Attribution** ({method}): credit of each source sentence per answer sentence"
        )
        chart = (
            alt.Chart(alt.Data(values=rows))
            .mark_rect()
            .encode(
                y=alt.Y(
                    "source_sentence:N",
                    title="source sentence",
                    sort=alt.EncodingSortField(field="source_order", order="ascending"),
                    axis=alt.Axis(labelLimit=LABEL_LIMIT_PX),
                ),
                x=alt.X(
                    "answer_sentence:N",
                    title="answer sentence",
                    axis=alt.Axis(labelAngle=-20, labelLimit=240),
                ),
                color=alt.Color("score:Q", scale=alt.Scale(scheme="blueorange", domainMid=0)),
                tooltip=["answer_sentence:N", "source_sentence:N", "score:Q"],
            )
        )
        st.altair_chart(chart, width="stretch")
        if any(isinstance(r["score"], int | float) and r["score"] < 0 for r in rows):
            st.caption(NEGATIVE_SCORE_NOTE.replace("A bar below zero", "A score below zero"))


def _replay(settings: Settings, user: User, seq: int) -> None:
    if st.button("Replay this answer", key=f"replay-{seq}", icon=":material/replay:"):
        try:
            with st.spinner("Re-running the recorded question with the recorded settings..."):
                # the replay is recorded under the auditor who asked for it
                report = audit.replay(settings, actor(user), seq)
                st.session_state[f"replay-result-{seq}"] = report.to_dict()
        except Exception as exc:
            st.error(md_escape(f"Replay failed: {exc}"))
    result = st.session_state.get(f"replay-result-{seq}")
    if result is not None:
        st.markdown("**Replay result**")
        _replay_view(
            seq,
            bool(result.get("unchanged")),
            list(result.get("differences") or []),
            str(result.get("original_answer") or ""),
            str(result.get("replayed_answer") or ""),
            sources=[SourceChange(**s).text() for s in result.get("sources") or []],
            key=f"replay-{seq}",
        )


def _replay_view(
    seq: Any,
    unchanged: bool,
    differences: list[str],
    original: str,
    replayed: str,
    *,
    sources: list[str] | None = None,
    key: str,
) -> None:
    """A replay as a reader compares it: the verdict, what changed in words, the sources that
    changed, the two answers side by side and a sentence diff with the changed words marked."""
    if unchanged:
        st.success(
            md_escape(f"Unchanged: record {seq} replays to the same answer from the same sources.")
        )
        return
    st.warning(md_escape(f"Changed: record {seq} replays differently."))
    changes = sentence_diff(original, replayed)
    described = describe_changes(changes)
    lines = [*differences, *described]
    if lines:
        st.markdown("**What changed**")
        st.markdown("\n".join(f"- {md_escape(line)}" for line in lines))
    if sources:
        st.markdown("**Sources that changed**")
        st.markdown("\n".join(f"- {md_escape(line)}" for line in sources))
    left, right = st.columns(2)
    left.markdown("**Recorded answer**")
    left.text(original or "(empty)")
    right.markdown("**Replayed answer**")
    right.text(replayed or "(empty)")
    if any(c.kind != "same" for c in changes):
        st.markdown("**Sentence by sentence** (struck through: recorded only; green: replay only)")
        st.markdown(sentence_diff_html(changes), unsafe_allow_html=True)


def _export(settings: Settings, user: User, records: list[Record], query: audit.Query) -> None:
    st.subheader("Export")
    cols = st.columns([2, 1])
    label = cols[0].radio("Format", list(EXPORT_FORMATS), horizontal=True, key="export_format")
    fmt, ext, mime = EXPORT_FORMATS[str(label)]
    if cols[1].button(f"Export {len(records)} records", key="export", disabled=not records):
        try:
            exported = audit.export(settings, actor(user), fmt, query, destination="download")
        except ClinragError as exc:
            st.error(md_escape(f"The export could not be recorded, so it is not offered: {exc}"))
            return
        st.session_state["export_data"] = {
            "data": exported.data,
            "name": f"clinrag-audit-{exported.first_seq}-{exported.last_seq}.{ext}",
            "mime": mime,
            "seq": exported.record_seq,
            "count": exported.count,
        }
    ready = st.session_state.get("export_data")
    if ready:
        st.download_button(
            f"Download {ready['name']}",
            data=ready["data"],
            file_name=ready["name"],
            mime=ready["mime"],
            key="export_download",
            icon=":material/download:",
            on_click="ignore",
        )
        st.caption(f"{ready['count']} records; this export is audit record {ready['seq']}.")
