"""The Streamlit app through ``streamlit.testing.v1.AppTest``: sign-in, pages, role checks.

Fast tests swap the LLM for the extractive fake in ``test_ui_fakes`` (retrieval, citation,
audit are real); ``test_real_assistant_end_to_end`` runs the packaged model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_ui_fakes import PASSWORDS, SAMPLES, ExtractiveLLM, attributing_assistant

from audit.record import open_log as audit_log
from core.config import load_settings
from ui.render import faithfulness_text, md_escape

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")
HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module")
def ui_library(tmp_path_factory: pytest.TempPathFactory, accounts_library: Path) -> Path:
    # this module's tests share one copy: they read each other's records by design
    copy = tmp_path_factory.mktemp("uihome") / "home"
    shutil.copytree(accounts_library, copy)
    return copy


@pytest.fixture
def home(ui_library: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import ui.session
    from assistant.pipeline import Assistant

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CLINRAG_CONFIG", raising=False)
    monkeypatch.setenv("CLINRAG_HOME", str(ui_library))
    monkeypatch.setattr(
        ui.session, "assistant_factory", lambda s: Assistant(s, llm=ExtractiveLLM())
    )
    st.cache_resource.clear()
    yield ui_library
    st.cache_resource.clear()


def settings_for(home: Path) -> Any:
    return load_settings(env={"CLINRAG_HOME": str(home)})


def records(home: Path, event: str | None = None) -> list[Any]:
    log = audit_log(settings_for(home))
    try:
        return log.list(event=event)
    finally:
        log.close()


def start(timeout: float = 120) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def sign_in(at: AppTest, username: str, password: str | None = None) -> AppTest:
    at.text_input(key="signin_username").input(username)
    at.text_input(key="signin_password").input(password or PASSWORDS[username])
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def pages(at: AppTest) -> list[str]:
    return list(at.sidebar.radio(key="page").options)


def all_text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("markdown", "caption", "header", "subheader", "warning", "error", "info"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def table(at: AppTest, column: str) -> Any:
    """The first dataframe shown with ``column`` (AppTest does not expose dataframe keys)."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with column {column!r}")


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, at.exception
    return at


# ------------------------------------------------------------------ sign-in


def test_sign_in_form_first_and_wrong_password_is_refused_and_audited(home: Path) -> None:
    at = start()
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert not at.sidebar.radio  # nothing but the form before sign-in
    before = len(records(home, "login_failed"))
    sign_in(at, "carol", "not-the-password")
    assert "Wrong user name or password" in at.error[0].value
    assert at.text_input(key="signin_username")  # still on the form
    failed = records(home, "login_failed")
    assert len(failed) == before + 1
    assert failed[-1].user == "carol" and failed[-1].payload["reason"] == "bad_password"
    assert "not-the-password" not in json.dumps([r.to_dict() for r in failed])


def test_sign_in_records_login_and_sign_out_ends_the_session(home: Path) -> None:
    before = len(records(home, "login"))
    at = sign_in(start(), "carol")
    assert pages(at) == ["Ask"]
    logins = records(home, "login")
    assert len(logins) == before + 1 and logins[-1].user == "carol"
    assert logins[-1].role == "clinician"
    at.sidebar.button(key="signout").click().run()
    assert at.text_input(key="signin_username")
    assert records(home, "logout")[-1].user == "carol"


def test_disabled_account_is_signed_out_on_next_run(home: Path) -> None:
    from services.accounts import disable_user

    settings = settings_for(home)
    at = sign_in(start(), "carol")
    assert pages(at) == ["Ask"]
    try:
        disable_user(settings, "carol")
        at.run()
        assert at.text_input(key="signin_username")
        assert "disabled" in at.info[0].value
        sign_in(at, "carol")
        assert at.error and not at.sidebar.radio
    finally:
        disable_user(settings, "carol", disabled=False)


def test_idle_session_is_signed_out(home: Path) -> None:
    from ui.session import IDLE_TIMEOUT_MINUTES

    at = sign_in(start(), "carol")
    auth = dict(at.session_state["auth"])
    auth["last_seen"] -= IDLE_TIMEOUT_MINUTES * 60 + 1
    at.session_state["auth"] = auth
    at.run()
    assert at.text_input(key="signin_username")
    assert "inactivity" in at.info[0].value


# ------------------------------------------------------------------ roles


def test_each_role_sees_its_pages(home: Path) -> None:
    assert pages(sign_in(start(), "carol")) == ["Ask"]
    assert pages(sign_in(start(), "audrey")) == ["Audit"]
    assert pages(sign_in(start(), "admin")) == ["Ask", "Library", "Audit", "Accounts"]


def _render_page_as(page: str, username: str) -> None:
    from services.accounts import get_user
    from ui.session import get_settings
    from ui.views import ask, audit, library

    settings = get_settings()
    view = {"Ask": ask.render, "Library": library.render, "Audit": audit.render}[page]
    view(settings, get_user(settings, username))


@pytest.mark.parametrize(
    ("page", "username"),
    [("Audit", "carol"), ("Library", "carol"), ("Library", "audrey"), ("Ask", "audrey")],
)
def test_pages_refuse_other_roles_server_side(home: Path, page: str, username: str) -> None:
    at = AppTest.from_function(
        _render_page_as, kwargs={"page": page, "username": username}, default_timeout=60
    )
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["You do not have access to this page."]
    assert not at.dataframe and not at.header and not at.chat_input


def test_signed_out_session_cannot_render_a_page(home: Path) -> None:
    at = AppTest.from_function(
        _render_page_as, kwargs={"page": "Audit", "username": "nobody"}, default_timeout=60
    )
    at.run()
    assert [e.value for e in at.error] == ["You do not have access to this page."]


def test_clinician_cannot_force_the_audit_page(home: Path) -> None:
    at = sign_in(start(), "carol")
    with contextlib.suppress(ValueError):  # AppTest refuses a value outside the options
        at.session_state["page"] = "Audit"
        at.run()
    assert "Verify the chain" not in [b.label for b in at.button]
    assert "Audit" not in [h.value for h in at.header]
    assert not any("records (newest first" in c.value for c in at.caption)


# ------------------------------------------------------------------ Ask


def test_ask_streams_a_cited_answer_with_sources_and_feedback(home: Path) -> None:
    at = sign_in(start(), "carol")
    ask(at, HTN_QUESTION)
    md = [m.value for m in at.markdown]
    assert any("Stage 1 hypertension" in m and ":blue-badge[1]" in m for m in md), md
    # the citation opens on the chunk, escaped, with the evidence highlighted
    expander = at.expander[0]
    assert expander.label.startswith("\\[1\\] High Blood Pressure")
    chunk = next(m.value for m in expander.markdown if "clinrag-chunk" in m.value)
    assert '<mark class="clinrag-evidence">' in chunk and "Stage 1 hypertension" in chunk
    captions = " ".join(c.value for c in expander.caption)
    assert "American College of Cardiology" in captions and "2017" in captions
    # older than 5 years: flagged
    assert any("more than 5 years ago" in w.value for w in at.warning)
    assert any("Key evidence" in m for m in md)
    answers = records(home, "answer")
    audit_id = answers[-1].seq
    assert answers[-1].user == "carol" and answers[-1].payload["question"] == HTN_QUESTION
    assert any(c.value == f"Audit record {audit_id}" for c in at.caption)

    at.text_input(key="fb-comment-0").input("clear and quick")
    next(b for b in at.button if b.label == "Helpful").click().run()
    feedback = records(home, "feedback")[-1]
    assert feedback.payload == {
        "answer_id": audit_id,
        "helpful": True,
        "comment": "clear and quick",
    }
    assert feedback.user == "carol"
    assert any("Feedback recorded: helpful" in c.value for c in at.caption)


def test_the_app_answers_clinrag_ask_on_its_own_assistant(
    home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With the app running, `clinrag ask` for its home goes to the app's loaded assistant
    (issue 17 item 5: no CLI start-up), recorded as the asker; the service goes with it."""
    from ui.cli.main import main

    start()  # the sign-in page: the service starts with the app, before anyone signs in
    service_file = home / "serve.json"
    assert service_file.is_file()
    assert service_file.stat().st_mode & 0o077 == 0
    umask = os.umask(0o077)  # main() sets the process umask; later tests must not inherit it
    try:
        code = main(["ask", HTN_QUESTION, "--json", "--no-attribution", "--user", "dana"])
    finally:
        os.umask(umask)
    out, err = capfd.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    # the app's assistant answered (its test model), not one loaded by the CLI
    assert answer["model"]["model_id"] == "extractive-test-llm"
    assert "Stage 1 hypertension" in answer["answer"]
    record = records(home, "answer")[-1]
    assert record.seq == answer["audit_id"] and record.user == "dana"
    st.cache_resource.clear()  # the app's resources released: the service stops
    assert not service_file.exists()


def test_the_app_opens_no_service_when_told_not_to(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINRAG_APP_SERVES_CLI", "false")
    start()
    assert not (home / "serve.json").exists()


def test_history_keeps_every_answer(home: Path) -> None:
    at = sign_in(start(), "carol")
    ask(at, HTN_QUESTION)
    ask(at, "At what age should average-risk adults start colorectal cancer screening?")
    users = [m for m in at.chat_message if m.name == "user"]
    answers = [m for m in at.chat_message if m.name == "assistant"]
    assert len(users) == 2 and len(answers) == 2
    assert "stage 1 hypertension" in users[0].markdown[0].value
    assert any("Stage 1 hypertension" in m.value for m in answers[0].markdown)
    assert any("colorectal" in m.value.lower() for m in answers[1].markdown)
    assert len(at.expander) >= 2  # each answer keeps its own sources


class _Only2016:
    """The real Assistant (fake LLM) restricted to the superseded 2016 guideline.

    Retrieval ranks superseded guidance below its successor, so an unrestricted question
    rarely cites it; the restriction makes the warning deterministic.
    """

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

        return self._inner.ask(
            question, filters=Filters(doc_ids=("colorectal-cancer-screening-2016",)), **kwargs
        )


def test_superseded_guideline_is_flagged(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ui.session

    monkeypatch.setattr(ui.session, "assistant_factory", _Only2016)
    st.cache_resource.clear()
    at = sign_in(start(), "carol")
    ask(at, "At what age should average-risk adults start colorectal cancer screening?")
    assert not at.error, [e.value for e in at.error]
    assert at.expander[0].label.startswith("\\[1\\] Colorectal Cancer Screening \\(USPSTF 2016\\)")
    warnings = " ".join(w.value for w in at.warning)
    assert "Superseded by Colorectal Cancer Screening in Adults \\(USPSTF 2021\\)" in warnings


def test_abstention_is_shown_with_nearest_documents(home: Path) -> None:
    at = sign_in(start(), "carol")
    ask(at, "How do I replace the chain on a mountain bike?")
    text = all_text(at)
    assert "**No answer.**" in text
    assert "Nearest documents" in text
    answer = records(home, "answer")[-1]
    assert answer.payload["abstained"] is True


def test_document_text_is_escaped_not_rendered(home: Path) -> None:
    from ui.render import highlighted_html

    evil = "Dose [click](javascript:alert(1)) <script>alert(1)</script> **bold** $x$"
    html = highlighted_html(evil, ["<script>alert(1)</script>"])
    assert "<script>" not in html and "](" not in html and "**" not in html
    assert "&#60;script&#62;" in html
    assert "<mark" in html
    escaped = md_escape(evil)
    assert "\\[click\\]\\(javascript" in escaped and "\\<script\\>" in escaped


CRC_START = "At what age should average-risk adults start colorectal cancer screening?"
CRC_STOP = "When should average-risk adults stop colorectal cancer screening?"


def test_follow_up_is_understood_from_the_previous_question_and_linked_to_it(
    home: Path,
) -> None:
    at = sign_in(start(), "carol")
    ask(at, CRC_START)
    first = records(home, "answer")[-1]
    ask(at, "and when should they stop?")
    second = records(home, "answer")[-1]
    assert second.payload["question"] == "and when should they stop?"
    assert second.payload["resolved_question"] == CRC_STOP
    assert second.payload["parent_id"] == first.seq
    answers = [m for m in at.chat_message if m.name == "assistant"]
    assert [c.value for c in answers[1].caption][0] == "Understood as: " + md_escape(CRC_STOP)
    assert not any(c.value.startswith("Understood as") for c in answers[0].caption)
    assert any("colorectal" in m.value.lower() for m in answers[1].markdown)
    # what the clinician typed stays their question on the screen
    users = [m for m in at.chat_message if m.name == "user"]
    assert users[1].markdown[0].value == md_escape("and when should they stop?")


def test_new_conversation_clears_the_context(home: Path) -> None:
    at = sign_in(start(), "carol")
    assert not [b for b in at.button if b.key == "new-conversation"]  # nothing to clear yet
    ask(at, CRC_START)
    at.button(key="new-conversation").click().run()
    assert not at.exception, at.exception
    assert not at.chat_message
    ask(at, "and when should they stop?")
    answer = records(home, "answer")[-1]
    assert answer.payload["question"] == "and when should they stop?"
    assert answer.payload["resolved_question"] is None and answer.payload["parent_id"] is None
    assert not any(c.value.startswith("Understood as") for c in at.caption)


FABRICATED = "The American College of Pro-Gynaecological Medicine set this target at 11.0% in 2031"


class _FabricatingLLM(ExtractiveLLM):
    """The extractive answer plus one invented sentence that no source supports."""

    def stream(self, messages: Any, *, max_new_tokens: int, temperature: float) -> Iterator[str]:
        yield from super().stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)
        yield f" {FABRICATED} [1]."


def test_unsupported_sentences_are_removed_and_counted_never_shown(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ui.session
    from assistant.pipeline import Assistant

    monkeypatch.setattr(
        ui.session, "assistant_factory", lambda s: Assistant(s, llm=_FabricatingLLM())
    )
    st.cache_resource.clear()
    at = sign_in(start(), "carol")
    ask(at, HTN_QUESTION)
    record = records(home, "answer")[-1]
    assert record.payload["abstained"] is False
    # removed: what the record keeps for auditors and the reader does not see; the record's
    # shown sentences are all supported (flags and lists agree)
    removed = record.payload["unverified_sentences"]
    assert all(s["supported"] for s in record.payload["sentences"])
    assert any("Pro-Gynaecological" in s["text"] for s in removed), removed
    n = len(removed)
    shown = all_text(at) + " ".join(e.label for e in at.expander)
    assert "Gynaecological" not in shown
    note = next(
        c.value for c in at.caption if "were removed" in c.value or "was removed" in c.value
    )
    # the same words as the CLI prints (assistant.policy.removed_note)
    assert (
        note.split(":material/content_cut: ")[1]
        .replace("\\", "")
        .startswith(
            f"{n} sentence{'s' if n != 1 else ''} of the model's draft "
            f"{'were' if n != 1 else 'was'} removed"
        )
    )
    assert not any("unverified wording" in e.label for e in at.expander)
    assert not any("withheld" in e.label.lower() for e in at.expander)
    # every sentence that is shown is a checked one, with its citation badge
    answer_md = [m.value for m in at.chat_message[1].markdown if ":blue-badge[" in m.value]
    assert answer_md and all("Gynaecological" not in m for m in answer_md)


class _Deciding:
    """The real Assistant (fake LLM) whose answers carry a yes/no decision, as the decision
    step (another module) will add it: the page must show it first, with its sentences."""

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
        from core.types import Decision, DecisionLabel

        answer = self._inner.ask(question, **kwargs)
        cited = [k for s in answer.sentences for k in s.evidence][:1]
        answer.decision = Decision(
            DecisionLabel.NO, {"yes": 0.2, "no": 0.8}, evidence=cited, method="test"
        )
        return answer


def _decided(monkeypatch: pytest.MonkeyPatch, factory: type) -> Any:
    """The assistant's message for a yes/no question asked through the app with ``factory``."""
    import ui.session

    monkeypatch.setattr(ui.session, "assistant_factory", factory)
    st.cache_resource.clear()
    at = sign_in(start(), "carol")
    ask(at, "Should stage 1 hypertension be defined by a systolic pressure of 130 to 139?")
    return [m for m in at.chat_message if m.name == "assistant"][-1]


def test_a_decision_is_shown_first_with_its_sentences(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _decided(monkeypatch, _Deciding)
    assert message.markdown[0].value == "### No"
    quote = message.markdown[1].value
    assert quote.startswith("> ") and ":blue-badge[1]" in quote
    assert md_escape("Method: test (yes 0.20, no 0.80)") in [c.value for c in message.caption]


class _DecidingFromEverything(_Deciding):
    """A decision that read every retrieved passage, cited or not, as the findings model does
    (it reads the cited document's retrieved passages)."""

    def ask(self, question: str, **kwargs: Any) -> Any:
        answer = super().ask(question, **kwargs)
        answer.decision.evidence = [s.index for s in answer.source_sentences]
        return answer


def test_a_decision_shows_only_sentences_of_cited_sources(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncited passages have no number on the screen: their sentences were listed under the
    decision with raw source numbers ([6], [7]) that no source panel explained."""
    message = _decided(monkeypatch, _DecidingFromEverything)
    assert message.markdown[0].value == "### No"
    quotes = [m.value for m in message.markdown if m.value.startswith("> ")]
    badges = {b for q in quotes for b in re.findall(r":blue-badge\[(\d+)\]", q)}
    # the answer cites a few of the retrieved passages; the decision lists only those
    assert badges and badges <= {"1", "2", "3"}, quotes
    assert len(quotes) < 20


_GATE = threading.Event()


def _attributing_assistant(settings: Any) -> Any:
    """The attribution stand-in, held at ``_GATE`` (to see the progress while it runs)."""
    helper = attributing_assistant(settings, {"top_k_drop": 1.5, "random_drop": 0.2})
    attribute = helper.attribute

    def gated(answer: Any, method: str | None = None) -> Any:
        _GATE.wait(30)
        return attribute(answer, method)

    helper.attribute = gated
    return helper


def _until(at: AppTest, done: Any, timeout: float = 60) -> AppTest:
    """Rerun the page until ``done(at)``: what the attribution fragment's timer does."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, all_text(at)
        time.sleep(0.2)
        at.run()
        assert not at.exception, at.exception
    return at


def test_attribution_appears_by_itself_after_the_answer_and_is_recorded(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ui.session

    # a model without log-probabilities: the failure, with its reason, replaces the progress
    at = sign_in(start(), "carol")
    ask(at, HTN_QUESTION)
    _until(at, lambda at: "No attribution for this answer" in all_text(at))
    assert md_escape("gives no log-probabilities") in all_text(at)
    assert not [b for b in at.button if "rely on" in str(b.label)]  # no button to press

    monkeypatch.setattr(ui.session, "assistant_factory", _attributing_assistant)
    st.cache_resource.clear()
    _GATE.clear()
    try:
        at = sign_in(start(), "carol")
        ask(at, HTN_QUESTION)
        answer = records(home, "answer")[-1]
        assert answer.payload["attribution"] is None  # the answer did not wait for it
        assert any("Stage 1 hypertension" in m.value for m in at.markdown)  # shown already
        # while it runs: a progress bar, no button
        _until(at, lambda at: any("Measuring" in p.text for p in at.get("progress")))
    finally:
        _GATE.set()
    _until(at, lambda at: any("Which sources the answer relied on" in m.value for m in at.markdown))
    event = records(home, "attribution")[-1]
    assert event.payload["answer_id"] == answer.seq and event.user == "carol"
    assert event.payload["attribution"]["scores"][0] == 0.9
    # the faithfulness check in words, not numbers
    worded = md_escape(faithfulness_text({"top_k_drop": 1.5, "random_drop": 0.2}))
    assert worded in [c.value for c in at.caption]
    # under the sentence: the source sentence that drove it, marked in its passage, scored
    drove = next(e for e in at.expander if "What drove this sentence" in e.label)
    assert "0\\.90" in drove.label
    passage = next(m.value for m in drove.markdown if "clinrag-drivers" in m.value)
    assert 'class="clinrag-driver clinrag-rank-1"' in passage and "0.90</sup>" in passage
    chunk = next(
        m.value
        for e in at.expander
        if e.label.startswith("\\[1\\]")
        for m in e.markdown
        if "clinrag-chunk" in m.value
    )
    assert "clinrag-attributed" in chunk or "clinrag-evidence" in chunk

    auditor = sign_in(start(), "audrey")
    auditor.selectbox(key="audit_event").set_value("answer").run()
    auditor.selectbox(key="audit_record").set_value(answer.seq).run()
    assert not auditor.exception, auditor.exception
    shown = [m.value for m in auditor.markdown]
    assert any(m.startswith("**Attribution computed after the answer**") for m in shown), shown
    assert any(m.startswith("**Attribution** (surrogate)") for m in shown), shown


# ------------------------------------------------------------------ Library


def test_admin_library_lists_documents_and_removes_an_upload(home: Path) -> None:
    from core.types import Actor
    from services import library

    settings = settings_for(home)
    admin = Actor("admin", "admin")
    name = "depression-screening-adults.txt"
    paths = library.save_uploads(settings, admin, [(name, (SAMPLES / name).read_bytes())])
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"
    summary = library.add(settings, admin, paths, source="upload", progress=False)
    assert summary.count("added") == 1
    assert records(home, "ingest")[-1].payload["source"] == "upload"
    doc_id = summary.results[0].doc_id

    at = sign_in(start(), "admin")
    at.sidebar.radio(key="page").set_value("Library").run()
    assert not at.exception, at.exception
    docs = table(at, "chunks")
    assert doc_id in set(docs["doc_id"]) and len(docs) == 4
    superseded = docs[docs["doc_id"] == "colorectal-cancer-screening-2016"]["warnings"]
    assert "Superseded by" in superseded.iloc[0]

    at.selectbox(key="remove_doc").set_value(doc_id).run()
    at.checkbox(key="remove_confirm").check().run()
    at.button(key="remove_button").click().run()
    assert not at.exception, at.exception
    assert md_escape(f"Removed {doc_id}.") in [s.value for s in at.success]
    assert doc_id not in set(table(at, "chunks")["doc_id"])
    assert not paths[0].exists()
    removal = records(home, "remove")[-1]
    assert removal.payload == {"doc_id": doc_id, "deleted_upload": True}
    assert removal.user == "admin"


# ------------------------------------------------------------------ Audit


def test_auditor_filters_reads_verifies_and_exports(home: Path) -> None:
    clinician = sign_in(start(), "carol")
    ask(clinician, HTN_QUESTION)
    answer = records(home, "answer")[-1]

    at = sign_in(start(), "audrey")
    assert [h.value for h in at.header] == ["Audit"]
    listed = table(at, "question")
    assert answer.seq in set(listed["seq"])
    at.selectbox(key="audit_event").set_value("answer").run()
    assert set(table(at, "question")["event"]) == {"answer"}
    at.selectbox(key="audit_abstained").set_value("answered").run()
    assert answer.seq in set(table(at, "question")["seq"])
    at.text_input(key="audit_user").input("nobody").run()
    assert "No records match these filters." in [i.value for i in at.info]
    at.text_input(key="audit_user").input("carol").run()

    at.selectbox(key="audit_record").set_value(answer.seq).run()
    assert not at.exception, at.exception
    texts = [t.value for t in at.text]
    assert HTN_QUESTION in texts and answer.payload["answer"] in texts
    assert any("Versions" in m.value for m in at.markdown)
    assert any("Replay" in b.label for b in at.button) or any(
        "Replay unavailable" in c.value for c in at.caption
    )

    at.button(key="verify").click().run()
    assert at.success and at.success[0].value.startswith("Chain verified")
    assert records(home, "verify")[-1].user == "audrey"

    at.radio(key="export_format").set_value("JSONL").run()
    exported_before = len(records(home, "export"))
    at.button(key="export").click().run()
    assert not at.exception, at.exception
    exports = records(home, "export")
    assert len(exports) == exported_before + 1
    payload = exports[-1].payload
    assert payload["format"] == "jsonl" and payload["count"] >= 1
    assert payload["filters"]["user"] == "carol" and exports[-1].user == "audrey"
    assert any(f"audit record {exports[-1].seq}" in c.value for c in at.caption)


# ------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_real_assistant_end_to_end(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ui.session

    monkeypatch.setattr(ui.session, "assistant_factory", None)
    st.cache_resource.clear()
    at = sign_in(start(timeout=600), "carol")
    ask(at, HTN_QUESTION)
    assert not at.error, [e.value for e in at.error]
    answer = records(home, "answer")[-1]
    assert answer.user == "carol" and answer.payload["question"] == HTN_QUESTION
    assert answer.payload["model"]["backend"] == "transformers"
    assistant_msg = [m for m in at.chat_message if m.name == "assistant"][-1]
    shown = " ".join(m.value for m in assistant_msg.markdown)
    if answer.payload["abstained"]:
        assert "**No answer.**" in " ".join(w.value for w in assistant_msg.warning)
        assert "Key evidence" in shown  # the closest passages are still shown
    else:
        assert ":blue-badge[" in shown
    assert any(c.value == f"Audit record {answer.seq}" for c in assistant_msg.caption)
    assert assistant_msg.expander, "sources or closest passages can be opened"

    auditor = sign_in(start(), "audrey")
    assert answer.seq in set(table(auditor, "question")["seq"])
    auditor.button(key="verify").click().run()
    assert auditor.success[0].value.startswith("Chain verified")


# ------------------------------------------------------------------ single sign-on


def test_single_sign_on_maps_the_provider_identity_to_a_local_role(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """st.login needs a live identity provider; the claims it would return are injected
    through ``sso_claims``, and everything after that runs for real."""
    import ui.views.signin
    from services.accounts import add_sso_user, get_user

    monkeypatch.setenv("CLINRAG_SSO_PROVIDER", "default")
    settings = load_settings(env={"CLINRAG_HOME": str(home), "CLINRAG_SSO_PROVIDER": "default"})
    if get_user(settings, "sam@hospital.org") is None:
        add_sso_user(settings, "sam@hospital.org", "auditor")
    claims: dict[str, Any] | None = None
    monkeypatch.setattr(ui.views.signin, "sso_claims", lambda: claims)

    at = start()
    assert [b.label for b in at.button] == ["Sign in with single sign-on", "Sign in"]
    assert at.text_input(key="signin_username")  # local accounts still work beside it

    # a verified e-mail: an unverified one is refused before the account is looked up
    claims = {
        "email": "mallory@elsewhere.org",
        "email_verified": True,
        "iss": "https://idp.example",
    }
    at.run()
    assert "not allowed to use clinrag" in at.error[0].value
    assert not at.sidebar.radio
    at.run()  # a rerun does not log the same refusal twice
    refused = [r for r in records(home, "login_failed") if r.user == "mallory@elsewhere.org"]
    assert len(refused) == 1 and refused[0].payload["reason"] == "sso_unknown_user"

    claims = {"email": "sam@hospital.org", "email_verified": True, "iss": "https://idp.example"}
    at = start()
    assert pages(at) == ["Audit"]
    login = records(home, "login")[-1]
    assert login.user == "sam@hospital.org" and login.payload["method"] == "sso"
    claims = None  # signing out also ends the provider session
    at.sidebar.button(key="signout").click().run()
    assert not at.exception, at.exception
    assert at.text_input(key="signin_username")


def test_attribution_chart_names_sources_by_the_labels_the_answer_shows() -> None:
    """Source 3 is cited as [1]; source 1 is not cited: its rank must not read as label 1."""
    from core.types import Answer, AnswerSentence, Citation, Mode, SourceSentence
    from ui.views.ask import chart_rows

    sources = [
        SourceSentence(index=0, n=1, chunk_id="a:0", text="Uncited passage sentence."),
        SourceSentence(index=1, n=3, chunk_id="c:0", text="Cited passage sentence."),
    ]
    answer = Answer(
        question="q",
        answer="Cited passage sentence. [1]",
        abstained=False,
        sentences=[AnswerSentence("Cited passage sentence.", [3], True, 1.0, [1])],
        citations=[Citation(3, "c", "c:0", "C", "", None, "", 1.0, label=1)],
        evidence=[],
        hits=[],
        source_sentences=sources,
        generation=None,
        timings={},
        mode=Mode.QUOTED,
        attribution={
            "scores": [0.5, 2.0],
            "sources": [{"index": 0, "n": 1}, {"index": 1, "n": 3}],
        },
    )
    names = {row["n"]: row["source"] for row in chart_rows(answer)}
    assert names[3].startswith("[1] ") and names[1].startswith("[not cited] "), names


def test_each_sentence_gets_the_source_sentences_that_drove_it_marked_by_score() -> None:
    """Per-sentence rows pick each sentence's own drivers (not the answer's); the passage is
    escaped whole (hostile text stays text) and a stronger score is marked darker."""
    from core.types import Answer, AnswerSentence, SourceSentence
    from ui.render import driver_html, sentence_drivers

    hostile = "<script>alert(1)</script> [x](https://evil.example) **Bold**."
    texts = ["Adults start at 45.", hostile, "Stop at 75.", "Unrelated sentence."]
    sources = [SourceSentence(i, 1, "a:0", t) for i, t in enumerate(texts)]
    shown = [
        AnswerSentence("Start at 45.", [1], True, 1.0),
        AnswerSentence("Stop at 75.", [1], True, 1.0),
    ]
    answer = Answer(
        question="q",
        answer="",
        abstained=False,
        sentences=shown,
        citations=[],
        evidence=[],
        hits=[],
        source_sentences=sources,
        generation=None,
        timings={},
        attribution={
            "scores": [0.9, 0.3, 0.8, -0.1],
            "per_sentence": [[0.9, 0.3, 0.0, -0.1], [0.0, 0.01, 0.8, 0.0]],
            "sources": [{"index": i, "n": 1} for i in range(4)],
        },
    )
    first, second = sentence_drivers(answer)
    assert [(d.index, d.rank) for d in first.drivers] == [(0, 1), (1, 2)]
    assert [d.index for d in second.drivers] == [2]  # 0.01 is under a tenth of 0.8
    assert not first.whole_answer
    html = driver_html(" ".join(texts), first.drivers)
    assert "<script" not in html and "](" not in html and "**" not in html
    assert "&#60;script&#62;" in html
    strong = html.index('class="clinrag-driver clinrag-rank-1"')
    weak = html.index('class="clinrag-driver clinrag-rank-2"')
    alpha = [float(html[i:].split("rgba(28, 131, 225, ")[1].split(")")[0]) for i in (strong, weak)]
    assert alpha[0] > alpha[1]
    assert "0.90</sup>" in html and "0.30</sup>" in html
    assert 'title="attribution score 0.90: rank 1 for this answer sentence"' in html
    # no per-sentence rows: the answer's scores under every sentence, said so
    answer.attribution = {
        "scores": [0.9, 0.3, 0.8, -0.1],
        "sources": [{"index": i, "n": 1} for i in range(4)],
    }
    assert all(s.whole_answer for s in sentence_drivers(answer))


def test_a_stated_decision_is_explained_in_words() -> None:
    """A clinician reads how a guideline-stated decision was made, not its method key."""
    from assistant.decide import DISAGREE, STATED_METHOD
    from ui.render import decision_method_text

    assert decision_method_text(f"{STATED_METHOD}:grade D") == (
        "Stated by the quoted recommendation (grade D)"
    )
    assert decision_method_text(STATED_METHOD) == "Stated by the quoted recommendation"
    assert decision_method_text(f"{STATED_METHOD}:{DISAGREE}").startswith(
        "The quoted recommendations point opposite ways"
    )
    assert decision_method_text("logistic:channel+cues:abc") == "Method: logistic:channel+cues:abc"
