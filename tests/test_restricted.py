"""Restricted documents act only on the people who may see them: in retrieval's supersession,
the Ask page's warnings and downloads, and the audit trail's views and replays.

A small real library (the packaged embedder, embedded Chroma, a real audit log) with one
admin-only memo that supersedes a public guideline; the LLM is the extractive stand-in from
``test_ui_fakes``, so no model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.record import open_log
from core.config import Settings, load_settings
from core.errors import AccessDeniedError, ClinragError, NotFoundError
from core.types import Actor
from services import ask as asking
from services import audit, library
from tests.test_ui_fakes import PASSWORDS, ExtractiveLLM, attributing_assistant, build_library

PUBLIC = "colorectal-cancer-screening"
PUBLIC_TITLE = "Colorectal Cancer Screening in Adults (USPSTF 2021)"
MEMO = "internal-crc-memo"
MEMO_TITLE = "Internal Colorectal Screening Protocol"
MEMO_DATE = "2024-03-01"
CANARY = "CANARYRX7Q2"
MEMO_TEXT = f"""---
title: {MEMO_TITLE}
publication_date: {MEMO_DATE}
restricted_roles: admin
supersedes: {PUBLIC}
---

# {MEMO_TITLE}

## Pilot committee

The pilot committee {CANARY} starts colorectal cancer screening at age 40 for hospital staff.
"""
MEMO_QUESTION = "At what age does the pilot committee start colorectal cancer screening for staff?"
PUBLIC_QUESTION = "At what age should average-risk adults start colorectal cancer screening?"
HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
ADMIN = Actor("admin", "admin")
CLINICIAN = Actor("carol", "clinician")
AUDITOR = Actor("audrey", "auditor")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ingest.index import ingest

    root = tmp_path_factory.mktemp("restricted")
    home = build_library(root / "home", ("hypertension-diagnosis-and-treatment.md", f"{PUBLIC}.md"))
    # the memo lives beside the samples, under home/sources, like every ingested file
    (home / "sources" / f"{MEMO}.md").write_text(MEMO_TEXT)
    summary = ingest([home / "sources"], _settings(home), progress=False)
    assert not summary.failed and summary.count("added") == 1, summary.to_dict()
    yield home
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def home(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the library (tests edit its files and its audit log)."""
    copy = tmp_path / "home"
    shutil.copytree(built, copy, symlinks=True)
    # the manifest names the sources by absolute path: point the copy's at its own files
    import sqlite3

    db = sqlite3.connect(_settings(copy).manifest_path)
    try:
        with db:
            db.execute(
                "UPDATE documents SET source_path = replace(source_path, ?, ?)",
                (str(built), str(copy)),
            )
    finally:
        db.close()
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    return copy


def _settings(home: Path) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(home)})


def _stored(home: Path, seq: int) -> Any:
    with open_log(_settings(home)) as log:
        return log.get(seq)


def _records(home: Path, event: str) -> list[Any]:
    with open_log(_settings(home)) as log:
        return log.list(event=event)


def _memo_answer(home: Path) -> Any:
    """An admin's answer drawn from the admin-only memo, with its attribution recorded."""
    settings = _settings(home)
    assistant = attributing_assistant(settings)
    answer = asking.ask(assistant, ADMIN, MEMO_QUESTION)
    assert any(h.chunk.doc_id == MEMO for h in answer.hits)
    assert CANARY in json.dumps(_stored(home, answer.audit_id).payload)  # stored whole
    assert asking.attribute(assistant, ADMIN, answer) is not None
    return answer


# ------------------------------------------------------------------ supersession


def test_a_restricted_successor_demotes_nothing_for_roles_that_may_not_see_it(
    home: Path,
) -> None:
    """Defect: a restricted document's ``supersedes`` halved the public guideline's score
    for every asker, including those who may not see the restricted document."""
    from assistant.retrieve import SUPERSEDED_WEIGHT, Filters, Retriever

    settings = _settings(home)
    retriever = Retriever(settings)
    weights = {"dense": settings.dense_weight, "bm25": settings.lexical_weight}
    for role, factor in (("clinician", 1.0), ("admin", SUPERSEDED_WEIGHT), ("clinician", 1.0)):
        hits = retriever.retrieve(PUBLIC_QUESTION, k=40, filters=Filters(roles=(role,)))
        public = [h for h in hits if h.chunk.doc_id == PUBLIC]
        assert public, role
        for hit in public:
            fused = sum(
                weights[stage] / (settings.rrf_k + rank)
                for stage, rank in (("dense", hit.dense_rank), ("bm25", hit.bm25_rank))
                if rank is not None
            )
            assert hit.score == pytest.approx(fused * factor), role
        assert (role == "admin") == any(h.chunk.doc_id == MEMO for h in hits)


def test_currency_warnings_name_only_documents_the_reader_may_see(home: Path) -> None:
    """Defect: the warnings named the restricted successor (title and date) to everyone."""
    settings = _settings(home)
    seen = library.visible_documents(settings, CLINICIAN)
    assert MEMO not in {d["doc_id"] for d in seen}
    assert not any("Superseded" in w for w in library.currency_warnings(PUBLIC, seen))
    # the whole library, filtered by the reader's role, says the same
    everything = library.documents(settings, ADMIN)
    assert MEMO in {d["doc_id"] for d in everything}  # the admin manages it
    for_clinician = library.currency_warnings(PUBLIC, everything, roles=["clinician"])
    assert not any(MEMO_TITLE in w or MEMO_DATE in w for w in for_clinician)
    assert library.superseded_by(PUBLIC, PUBLIC_TITLE, everything, roles=["clinician"]) == []
    # a clinician's listing of the library leaves it out too
    assert MEMO not in {d["doc_id"] for d in library.documents(settings, CLINICIAN)}
    # the role that may see it is warned
    for_admin = library.currency_warnings(PUBLIC, library.visible_documents(settings, ADMIN))
    assert any(f"Superseded by {MEMO_TITLE} ({MEMO_DATE})" in w for w in for_admin)


# ------------------------------------------------------------------ the Ask page


class _OnlyPublic:
    """The real Assistant (fake LLM) asked within the public guideline only, so the page
    cites it whatever retrieval's ranking (checked on its own above) makes of it."""

    def __init__(self, settings: Any) -> None:
        from assistant.pipeline import Assistant

        self._inner = Assistant(settings, llm=ExtractiveLLM())
        self.retriever = self._inner.retriever

    def __getattr__(self, name: str) -> Any:
        # the app reaches the model, settings and audit log too (generation worker, queue)
        return getattr(self._inner, name)

    def warm_up(self) -> None:
        self._inner.warm_up()

    def ask(self, question: str, **kwargs: Any) -> Any:
        from assistant.retrieve import Filters

        return self._inner.ask(question, filters=Filters(doc_ids=(PUBLIC,)), **kwargs)


def _app(home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import ui.session
    from tests.test_ui_apptest import APP, OFFLINE

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CLINRAG_CONFIG", raising=False)
    monkeypatch.setattr(ui.session, "assistant_factory", _OnlyPublic)
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="signin_username").input("carol")
    at.text_input(key="signin_password").input(PASSWORDS["carol"])
    at.button[0].click().run()
    at.chat_input(key="question").set_value(PUBLIC_QUESTION).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _page_text(at: Any) -> str:
    parts = [e.label for e in at.expander]
    for kind in ("markdown", "caption", "warning", "error", "info", "text"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def test_the_ask_page_never_names_a_restricted_successor(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: a clinician's answer citing the public guideline warned "Superseded by" the
    admin-only memo, with its title and date."""
    at = _app(home, monkeypatch)
    assert any("Colorectal Cancer Screening in Adults" in e.label for e in at.expander)
    text = _page_text(at)
    assert "Internal Colorectal" not in text and MEMO_DATE not in text and CANARY not in text
    assert "Superseded" not in text
    # the original of a cited guideline is still offered
    assert at.get("download_button")


def test_the_ask_page_does_not_offer_an_original_replaced_by_a_link(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Defect: "Original file" re-opened the manifest's path at click time and followed
    links, so a file swapped for a link served whatever the link pointed at."""
    secret = tmp_path / "secret.txt"
    secret.write_text("service credentials")
    source = home / "sources" / f"{PUBLIC}.md"
    source.unlink()
    source.symlink_to(secret)
    at = _app(home, monkeypatch)
    assert any("Colorectal Cancer Screening in Adults" in e.label for e in at.expander)
    assert not at.get("download_button")
    assert any("replaced by a link" in c.value for c in at.caption)


# ------------------------------------------------------------------ downloads


def test_original_downloads_serve_only_the_ingested_bytes_to_who_may_see_them(
    home: Path, tmp_path: Path
) -> None:
    """Defect: the download followed links and never checked the bytes against the
    manifest; nothing stopped offering a document the asker may not see."""
    settings = _settings(home)
    source = home / "sources" / f"{PUBLIC}.md"
    ingested = source.read_bytes()
    assert library.original_bytes(settings, CLINICIAN, PUBLIC) == ingested
    assert library.original_name(settings, CLINICIAN, PUBLIC) == f"{PUBLIC}.md"
    # a restricted document is missing for those who may not see it, served to those who may
    for call in (library.original_bytes, library.original_name):
        with pytest.raises(NotFoundError):
            call(settings, CLINICIAN, MEMO)
    assert CANARY.encode() in library.original_bytes(settings, ADMIN, MEMO)
    # an edited file is not what was ingested (nor what the answer cites)
    source.write_bytes(ingested + b"\nEdited after ingest.\n")
    for call in (library.original_bytes, library.original_name):
        with pytest.raises(ClinragError, match="changed since it was ingested"):
            call(settings, CLINICIAN, PUBLIC)
    # a link is never followed, wherever it points (even at the ingested bytes)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(ingested)
    source.unlink()
    source.symlink_to(secret)
    for call in (library.original_bytes, library.original_name):
        with pytest.raises(ClinragError, match="replaced by a link"):
            call(settings, CLINICIAN, PUBLIC)
    source.unlink()
    os.mkfifo(source)  # a pipe must neither block nor be read
    with pytest.raises(ClinragError, match="not a regular file"):
        library.original_bytes(settings, CLINICIAN, PUBLIC)
    source.unlink()
    with pytest.raises(ClinragError, match="no longer there"):
        library.original_bytes(settings, CLINICIAN, PUBLIC)
    # put back, it is served again
    source.write_bytes(ingested)
    assert library.original_bytes(settings, CLINICIAN, PUBLIC) == ingested


# ------------------------------------------------------------------ the audit trail


def test_auditors_read_answers_from_restricted_documents_withheld(home: Path) -> None:
    """Defect: an answer drawn from an admin-only document was shown to auditors in full:
    answer, sentences, evidence, generated text, titles, in the page and in exports."""
    settings = _settings(home)
    answer = _memo_answer(home)
    seq = int(answer.audit_id)
    stored = _stored(home, seq)

    view = audit.get(settings, AUDITOR, seq)
    dumped = json.dumps(view.payload)
    assert CANARY not in dumped and MEMO_TITLE not in dumped and "hospital staff" not in dumped
    p = view.payload
    assert p["withheld"]["role"] == "auditor" and MEMO in p["withheld"]["documents"]
    assert "restricted to admin" in p["withheld"]["documents"][MEMO]
    marker = p["withheld"]["marker"]
    assert marker.startswith(audit.WITHHELD) and MEMO in marker
    assert p["answer"] == marker and p["generated_text"] == marker
    assert all(s["text"] == marker for s in p["sentences"]) and p["sentences"]
    assert all(e["text"] == marker for e in p["evidence"])
    memo_hits = [r for r in p["retrieved"] if r["doc_id"] == MEMO]
    assert memo_hits and all(r["title"] == marker for r in memo_hits)
    # what is not the documents' content stays: place in the chain, who, scores, versions
    assert (view.seq, view.ts, view.user, view.role) == (
        stored.seq,
        stored.ts,
        stored.user,
        stored.role,
    )
    assert (view.hash, view.prev_hash) == (stored.hash, stored.prev_hash)
    assert p["question"] == MEMO_QUESTION and p["model"] == stored.payload["model"]
    assert [r["score"] for r in p["retrieved"]] == [r["score"] for r in stored.payload["retrieved"]]
    assert [r["chunk_id"] for r in p["retrieved"]] == [
        r["chunk_id"] for r in stored.payload["retrieved"]
    ]
    assert p["settings"] == stored.payload["settings"]

    # listing, the linked attribution and every export format withhold it alike
    listed = {r.seq: r for r in audit.find(settings, AUDITOR, audit.Query())}
    assert listed[seq].payload == view.payload
    attribution = audit.attribution_of(settings, AUDITOR, seq)
    assert attribution is not None and "withheld" in attribution.payload
    assert CANARY in json.dumps(_stored(home, attribution.seq).payload)  # stored whole
    assert CANARY not in json.dumps(attribution.payload)
    assert CANARY not in json.dumps(listed[attribution.seq].payload)
    for fmt in audit.ExportFormat:
        exported = audit.export(settings, AUDITOR, fmt, audit.Query(), destination="download")
        assert CANARY not in exported.data.decode(), fmt
        assert MEMO_TITLE not in exported.data.decode(), fmt

    # a reader whose role may see the memo reads the record whole
    assert audit.get(settings, ADMIN, seq).payload == stored.payload
    admin_export = audit.export(settings, ADMIN, "jsonl", audit.Query(), destination="x")
    assert CANARY in admin_export.data.decode()
    # the stored rows are untouched and the chain verifies
    assert _stored(home, seq).payload == stored.payload
    assert audit.verify(settings, AUDITOR).ok


def test_the_audit_page_shows_auditors_restricted_answers_withheld(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the Audit page showed an admin-only answer to auditors in full."""
    from streamlit.testing.v1 import AppTest

    from tests.test_ui_apptest import APP, OFFLINE

    seq = int(_memo_answer(home).audit_id)
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="signin_username").input("audrey")
    at.text_input(key="signin_password").input(PASSWORDS["audrey"])
    at.button[0].click().run()
    at.selectbox(key="audit_record").set_value(seq).run()
    assert not at.exception, at.exception
    shown = _page_text(at) + json.dumps([f.value.to_dict() for f in at.dataframe], default=str)
    assert MEMO_QUESTION in shown  # the record is there, its question and scores too
    assert CANARY not in shown and MEMO_TITLE not in shown
    warnings = " ".join(w.value for w in at.warning)
    assert "Content withheld" in warnings and "restricted to admin" in warnings
    assert not any("Replay" in b.label for b in at.button)


def test_replay_needs_a_role_that_may_see_the_records_documents(home: Path) -> None:
    """Defect: an auditor's replay re-ran the admin-only answer (as its asker) and showed
    the original and replayed answers in full."""
    settings = _settings(home)
    seq = int(_memo_answer(home).audit_id)
    replays = len(_records(home, "replay"))
    with pytest.raises(AccessDeniedError, match=f"may not replay record {seq}.*{MEMO}"):
        audit.replay(settings, AUDITOR, seq, assistant=attributing_assistant(settings))
    assert len(_records(home, "replay")) == replays  # refused before anything ran
    report = audit.replay(settings, ADMIN, seq, assistant=attributing_assistant(settings))
    assert report.unchanged and CANARY in report.replayed_answer
    replay = _records(home, "replay")[-1]
    assert CANARY in replay.payload["original_answer"]  # stored whole
    # the auditor reads the admin's replay record withheld, like the answer it replays
    view = audit.get(settings, AUDITOR, replay.seq)
    assert CANARY not in json.dumps(view.payload) and "withheld" in view.payload
    assert view.payload["unchanged"] is True


def test_a_replay_drawing_on_newly_restricted_documents_is_withheld(home: Path) -> None:
    """The replay runs as the original asker: a document restricted to that role and added
    since must not reach an auditor through the replayed answer."""
    from ingest.index import ingest

    settings = _settings(home)
    seq = int(asking.ask(attributing_assistant(settings), CLINICIAN, HTN_QUESTION).audit_id)
    assert "withheld" not in audit.get(settings, AUDITOR, seq).payload  # all public
    ward = home / "sources" / "ward-memo.md"
    ward.write_text(
        "---\ntitle: Ward hypertension memo\nrestricted_roles: clinician\n---\n# Ward memo\n\n"
        f"## Stage 1\n\nOn ward 7 {CANARY} stage 1 hypertension is systolic 130 to 139 "
        "blood pressure.\n"
    )
    assert ingest([ward], settings, progress=False).count("added") == 1
    report = audit.replay(settings, AUDITOR, seq, assistant=attributing_assistant(settings))
    assert "ward-memo" in report.documents  # the clinician's replay drew on it
    assert CANARY not in json.dumps(report.to_dict())
    assert report.replayed_answer.startswith(audit.WITHHELD)
    stored = _records(home, "replay")[-1]
    assert stored.user == "audrey" and CANARY not in json.dumps(stored.payload)


def test_a_removed_document_without_a_recorded_restriction_counts_as_admin_only() -> None:
    """Records written before answers stored each document's restriction: a document gone
    from the library since cannot be checked, so only administrators read them whole."""
    record = audit.Record(
        seq=3,
        ts="2025-01-01T00:00:00Z",
        event="answer",
        user="carol",
        role="clinician",
        payload={
            "answer": "Gone text.",
            "question": "q?",
            "retrieved": [{"doc_id": "gone", "title": "Gone", "score": 0.5}],
            "citations": [{"doc_id": "public", "title": "Public", "score": 0.4}],
        },
        prev_hash="0" * 64,
        hash="1" * 64,
    )
    library_now = {"public": {"doc_id": "public", "metadata": {}}}
    view = audit.withheld_view(record, "auditor", library_now)
    assert view.payload["answer"].startswith(audit.WITHHELD)
    assert view.payload["retrieved"][0]["title"].startswith(audit.WITHHELD)
    assert view.payload["citations"][0]["title"] == "Public"  # a visible document's title
    assert "removed from the library" in view.payload["withheld"]["documents"]["gone"]
    assert audit.withheld_view(record, "admin", library_now) is record
    # a recorded restriction outlives the document
    recorded = dict(record.payload, retrieved=[{"doc_id": "gone", "restricted_roles": ""}])
    from dataclasses import replace

    assert audit.withheld_view(replace(record, payload=recorded), "auditor", library_now).payload[
        "answer"
    ] == ("Gone text.")
