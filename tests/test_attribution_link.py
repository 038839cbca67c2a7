"""One link between an answer and its attribution, whoever asked (issue 15).

The CLI records and prints the answer first, then attributes it through ``services.ask`` as
the app does: an ``attribution`` record linked by ``answer_id``, or an ``attribution_failed``
record with its reason. Coverage counts answers attributed, failed and pending.

Real library and audit log; the LLM is the extractive stand-in from ``test_ui_fakes``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from audit.record import open_log
from core.config import Settings, load_settings
from core.types import Actor
from services import ask as asking
from services import audit
from tests.test_ui_fakes import PASSWORDS, ExtractiveLLM, attributing_assistant
from ui.cli.main import main
from ui.render import md_escape

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")
HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
OFF_TOPIC = "How do I replace the chain on a mountain bike?"
CLINICIAN = Actor("carol", "clinician")
AUDITOR = Actor("audrey", "auditor")
FAITH = {"k": 1, "top_k_drop": 1.2, "random_drop": 0.1, "flag_memory": False}


@pytest.fixture
def home(accounts_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(accounts_library, copy)
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    monkeypatch.setenv("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return copy


def _settings(home: Path) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(home)})


def _records(home: Path, event: str | None = None) -> list[Any]:
    with open_log(_settings(home)) as log:
        return log.list(event=event)


def _use(monkeypatch: pytest.MonkeyPatch, factory: Any) -> None:
    monkeypatch.setattr(asking, "open_assistant", factory)


def test_cli_prints_and_records_the_answer_before_attributing_it_then_links_it(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: `clinrag ask` attributed inside ``Assistant.ask``, before the answer was shown
    or recorded, and kept the attribution inside the answer record."""
    seen: dict[str, Any] = {}

    def factory(settings: Settings) -> Any:
        helper = attributing_assistant(settings, FAITH)
        attribute = helper.attribute

        def watched(answer: Any, method: str | None = None) -> Any:
            seen["stdout"] = capsys.readouterr().out
            seen["recorded"] = [r.event for r in _records(home)]
            seen["audit_id"] = answer.audit_id
            return attribute(answer, method)

        helper.attribute = watched
        return helper

    _use(monkeypatch, factory)
    assert main(["ask", HTN_QUESTION]) == 0
    after = capsys.readouterr().out
    assert seen["stdout"].lstrip().startswith("ANSWER ("), seen["stdout"][:200]
    assert "ATTRIBUTION" not in seen["stdout"] and "ATTRIBUTION" in after
    assert seen["recorded"][-1] == "answer"
    answer = _records(home, "answer")[-1]
    assert answer.seq == seen["audit_id"]
    assert answer.payload["attribution"] is None  # not inline: its own record
    [attribution] = _records(home, "attribution")
    assert attribution.payload["answer_id"] == answer.seq > 0
    assert attribution.seq > answer.seq
    assert not _records(home, "attribution_failed")


def test_no_attribution_leaves_the_answer_pending(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, lambda s: attributing_assistant(s, FAITH))
    assert main(["ask", HTN_QUESTION, "--no-attribution"]) == 0
    out = capsys.readouterr().out
    assert "ANSWER (" in out and "ATTRIBUTION" not in out
    assert len(_records(home, "answer")) == 1
    assert not _records(home, "attribution") and not _records(home, "attribution_failed")
    coverage = audit.attribution_coverage(_settings(home), AUDITOR)
    assert coverage == audit.Coverage(attributed=0, pending=1, failed=0)


def test_an_attribution_error_is_recorded_with_its_reason(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def factory(settings: Settings) -> Any:
        helper = attributing_assistant(settings, FAITH)

        def broken(answer: Any, method: str | None = None) -> Any:
            raise RuntimeError("scorer ran out of memory")

        helper.attribute = broken
        return helper

    _use(monkeypatch, factory)
    assert main(["ask", HTN_QUESTION]) == 1  # answered, but not attributed
    out, err = capsys.readouterr()
    assert "ANSWER (" in out and "scorer ran out of memory" in err
    answer = _records(home, "answer")[-1]
    [failed] = _records(home, "attribution_failed")
    assert failed.payload == {
        "answer_id": answer.seq,
        "reason": "RuntimeError: scorer ran out of memory",
    }
    assert not _records(home, "attribution")


def test_a_model_without_log_probabilities_is_recorded_as_failed_for_the_app_too(
    home: Path,
) -> None:
    """The app's path (``services.ask.attribute``): the packaged extractive fake gives no
    log-probabilities, so nothing can be attributed, and the record says so."""
    from assistant.pipeline import Assistant

    settings = _settings(home)
    helper = Assistant(settings, llm=ExtractiveLLM())
    answer = asking.ask(helper, CLINICIAN, HTN_QUESTION)
    assert not answer.abstained and answer.audit_id is not None
    assert asking.attribute(helper, CLINICIAN, answer) is None
    assert answer.attribution is None
    [failed] = _records(home, "attribution_failed")
    assert failed.payload["answer_id"] == answer.audit_id
    assert "log-probabilities" in failed.payload["reason"]
    # switched off: nothing is attempted, nothing recorded as failed
    off = Assistant(settings.model_copy(update={"attribution": "off"}), llm=ExtractiveLLM())
    again = asking.ask(off, CLINICIAN, HTN_QUESTION)
    assert asking.attribute(off, CLINICIAN, again) is None
    assert len(_records(home, "attribution_failed")) == 1


def _small_log(home: Path) -> None:
    """Answers of each kind: attributed (linked), attributed (inline, as older CLI records),
    failed, pending, and one abstention."""
    from assistant.pipeline import Assistant

    settings = _settings(home)
    helper = attributing_assistant(settings, FAITH)
    linked = asking.ask(helper, CLINICIAN, HTN_QUESTION)
    assert asking.attribute(helper, CLINICIAN, linked) is not None
    inline = asking.ask(helper, CLINICIAN, HTN_QUESTION)
    helper.attribute(inline)
    helper.record(inline, user="carol", role="clinician")
    asking.ask(helper, Actor("dave", "clinician"), HTN_QUESTION)  # pending
    plain = Assistant(settings, llm=ExtractiveLLM())
    failed = asking.ask(plain, CLINICIAN, HTN_QUESTION)
    assert asking.attribute(plain, CLINICIAN, failed) is None
    assert asking.ask(helper, CLINICIAN, OFF_TOPIC).abstained


def test_coverage_counts_attributed_pending_and_failed_answers(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _small_log(home)
    settings = _settings(home)
    # five answer records were written, the inline one twice (once bare, once attributed)
    assert len(_records(home, "answer")) == 6
    coverage = audit.attribution_coverage(settings, AUDITOR)
    assert coverage == audit.Coverage(attributed=2, pending=2, failed=1)
    assert coverage.answers == 5  # the abstention is left out
    # within a query: dave's answers only
    assert audit.attribution_coverage(
        settings, AUDITOR, audit.Query(user="dave")
    ) == audit.Coverage(attributed=0, pending=1, failed=0)
    assert main(["audit", "list"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        "attribution coverage: 2 attributed, 2 pending, 1 failed of 5 answers"
    )
    with pytest.raises(Exception, match="(?i)role|permission|may not"):
        audit.attribution_coverage(settings, CLINICIAN)


def test_the_audit_page_shows_the_coverage_above_the_table(home: Path) -> None:
    _small_log(home)
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="signin_username").input("audrey")
    at.text_input(key="signin_password").input(PASSWORDS["audrey"])
    at.button[0].click().run()
    assert not at.exception, at.exception
    line = "attribution coverage: 2 attributed, 2 pending, 1 failed of 5 answers"
    assert md_escape(line) in [m.value for m in at.markdown], [m.value for m in at.markdown]
    st.cache_resource.clear()
