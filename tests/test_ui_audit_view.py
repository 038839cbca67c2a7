"""What an auditor reads: faithfulness in words, attribution labels, the replay diff.

Render helpers are tested directly; the Audit page through ``streamlit.testing.v1.AppTest``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_ui_fakes import PASSWORDS, ExtractiveLLM, attributing_assistant, build_library

from assistant.replay import (
    ReplayReport,
    describe_changes,
    sentence_diff,
    source_changes,
    word_diff,
)
from audit.record import open_log as audit_log
from core.config import load_settings
from core.types import Actor, SourceSentence
from ingest.index import ingest
from services import ask as asking
from ui.render import (
    NEGATIVE_SCORE_NOTE,
    attribution_by_source,
    attribution_chart,
    faithfulness_rows,
    faithfulness_text,
    has_negative,
    heatmap_rows,
    likelihood_factor,
    md_escape,
    sentence_diff_html,
    sentence_start,
)

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")


def _faith(**overrides: Any) -> dict[str, Any]:
    stored = {
        "k": 3,
        "top_k_drop": math.log(40),
        "random_drop": math.log(1.5),
        "difference": math.log(40) - math.log(1.5),
        "ratio": math.log(40) / math.log(1.5),
        "context_reliance": math.log(200),
        "full_logprob": -12.0,
        "empty_logprob": -12.0 - math.log(200),
        "flag_memory": False,
        "min_reliance_nats": 1.0,
        "min_reliance_fraction": 0.05,
        "n_evaluations": 8,
    }
    return {**stored, **overrides}


def test_faithfulness_reads_as_likelihood_factors() -> None:
    """Defect (issue 19): the auditor saw the faithfulness check as raw JSON in nats."""
    text = faithfulness_text(_faith())
    assert text.startswith(
        "Removing the 3 most-credited sentences makes this answer 40x less likely; "
        "removing 3 random sentences: 1.5x less likely."
    )
    assert "matter more than random ones" in text
    assert "With no sources at all the answer is 200x less likely." in text
    assert "{" not in text and "top_k_drop" not in text


def test_faithfulness_says_when_the_attribution_is_not_confirmed() -> None:
    text = faithfulness_text(_faith(k=1, top_k_drop=-0.5, random_drop=0.2, flag_memory=True))
    assert "Removing the most-credited sentence makes this answer 1.6x more likely" in text
    assert "removing 1 random sentence: 1.2x less likely" in text
    assert "not confirmed" in text
    assert "model's memory" in text


def test_faithfulness_tiny_and_huge_drops() -> None:
    assert "leaves this answer about as likely" in faithfulness_text(
        _faith(top_k_drop=0.001, random_drop=0.0)
    )
    assert likelihood_factor(500.0) == "10^217x"
    assert likelihood_factor(math.log(1e6) + 0.01) == "10^6x"


def test_faithfulness_keeps_two_huge_factors_apart() -> None:
    """Defect: a quoted answer's check read "more than 1,000,000x less likely" for the credited
    sentences and for random ones, and then claimed the credited ones matter more."""
    text = faithfulness_text(_faith(top_k_drop=100.0, random_drop=30.0))
    assert "makes this answer 10^43x less likely; removing 3 random sentences: 10^13x" in text
    assert likelihood_factor(math.log(2.5)) == "2.5x"
    assert likelihood_factor(math.log(1234)) == "1,234x"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, "not measured"),
        (0.8, "older format: 0.8"),
        ({}, "not recorded"),
        ({"top_k_drop": None, "random_drop": None}, "not recorded"),
        ({"top_k_drop": 2.0}, "Removing the most-credited sentences makes this answer 7.4x less"),
    ],
)
def test_faithfulness_old_or_partial_records_still_read(stored: Any, expected: str) -> None:
    assert expected in faithfulness_text(stored)


def test_faithfulness_rows_give_drop_and_factor() -> None:
    rows = faithfulness_rows(_faith())
    assert [r["removal"] for r in rows] == [
        "remove the 3 most-credited sentences",
        "remove 3 random sentences (mean of draws)",
        "remove all sources",
    ]
    assert rows[0]["answer becomes"] == "40x less likely"
    assert rows[0]["log-probability drop (nats)"] == pytest.approx(math.log(40), abs=1e-3)
    assert faithfulness_rows(None) == [] and faithfulness_rows({"k": 3}) == []


# --- attribution chart labels -------------------------------------------------------------

CRC = [
    "Adults aged 45 to 49 should be screened for colorectal cancer (grade B).",
    "Adults aged 50 to 75 should be screened for colorectal cancer (grade A).",
    "Colorectal cancer is the third leading cause of cancer death.",
    "Colorectal cancer is the third leading cause of cancer death.",
]


def _crc_answer(scores: list[float]) -> Any:
    sources = [SourceSentence(i, 1 if i < 3 else 2, f"c{i}", text) for i, text in enumerate(CRC)]
    return SimpleNamespace(
        source_sentences=sources,
        attribution={
            "method": "surrogate",
            "scores": scores,
            "sources": [{"index": s.index, "n": s.n, "text": s.text} for s in sources],
        },
    )


def test_chart_labels_name_the_source_and_its_sentence() -> None:
    """Defect (issue 19): every bar of one document read "[1] Colorectal Ca..." (the title,
    cut by the chart), so a reader could not tell which sentence a bar stood for."""
    rows = attribution_by_source(_crc_answer([0.9, -0.3, 0.1, 0.0]))
    labels = [r["source"] for r in rows]
    assert labels[0] == '[1] "Adults aged 45 to 49 should be\u2026"'
    assert labels[1].startswith('[1] "Adults aged 50 to 75')
    assert labels[3] == labels[2].replace("[1]", "[2]")
    assert len(set(labels)) == len(labels)
    assert all(len(label) <= 45 for label in labels)
    assert [r["sentence"] for r in rows] == CRC
    assert [r["attribution"] for r in rows] == [0.9, -0.3, 0.1, 0.0]
    assert has_negative(rows) and not has_negative(rows[2:])
    spec = attribution_chart(rows).to_dict()
    assert spec["encoding"]["y"]["axis"]["labelLimit"] >= 300


def test_repeated_sentences_keep_separate_bars() -> None:
    payload = {
        "sentences": [{"text": "Screen from 45."}],
        "attribution": {
            "per_sentence": [[0.5, 0.2, -0.1]],
            "sources": [{"n": 1, "text": CRC[2]}, {"n": 1, "text": CRC[2]}, {"n": 2, "text": ""}],
        },
    }
    rows = heatmap_rows(payload)
    assert [r["source_sentence"] for r in rows] == [
        '[1] "Colorectal cancer is the third\u2026"',
        '[1] "Colorectal cancer is the third\u2026" (2)',
        '[2] ""',
    ]
    assert [r["source_order"] for r in rows] == [0, 1, 2]
    assert rows[0]["answer_sentence"] == "1. Screen from 45."


def test_sentence_start_cuts_at_a_word() -> None:
    assert sentence_start("short one.") == "short one."
    assert sentence_start("word " * 20, 20) == "word word word\u2026"
    assert sentence_start("x" * 50, 10) == "x" * 9 + "\u2026"


def test_negative_note_says_it_is_not_evidence_against_the_answer() -> None:
    assert "less likely with this sentence than without it" in NEGATIVE_SCORE_NOTE
    assert "not evidence that the answer is false" in NEGATIVE_SCORE_NOTE


# --- the Audit page ----------------------------------------------------------------------

HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
CLINICIAN = Actor("carol", "clinician")
FAITH = {"k": 2, "top_k_drop": math.log(40), "random_drop": math.log(1.5), "flag_memory": False}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A library of its own (a test edits a guideline: a copied home's manifest would still
    point at the original's files); every assistant, the app's and the replay's, answers
    with the extractive fake, so a replay changes only when the library does."""
    import assistant.pipeline
    import ui.session

    copy = build_library(tmp_path / "home")
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    monkeypatch.setenv("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")

    class Extractive(assistant.pipeline.Assistant):
        def __init__(self, settings: Any, **kwargs: Any) -> None:
            super().__init__(settings, **{"llm": ExtractiveLLM(), **kwargs})

    monkeypatch.setattr(assistant.pipeline, "Assistant", Extractive)
    monkeypatch.setattr(ui.session, "assistant_factory", Extractive)
    st.cache_resource.clear()
    yield copy
    st.cache_resource.clear()


def _answered(home: Path) -> Any:
    """A clinician's recorded answer with its attribution record (faithfulness FAITH)."""
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    helper = attributing_assistant(settings, FAITH)
    answer = asking.ask(helper, CLINICIAN, HTN_QUESTION)
    assert not answer.abstained and answer.audit_id is not None
    assert asking.attribute(helper, CLINICIAN, answer) is not None
    return answer


def _auditor_on(seq: int) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="signin_username").input("audrey")
    at.text_input(key="signin_password").input(PASSWORDS["audrey"])
    at.button[0].click().run()
    at.selectbox(key="audit_record").set_value(seq).run()
    assert not at.exception, at.exception
    return at


def _shown_json(at: AppTest) -> list[Any]:
    return [json.loads(j.value) for j in at.json]


def test_faithfulness_is_shown_in_words_with_a_table_not_as_json(home: Path) -> None:
    """Defect (issue 19): the auditor read the faithfulness check as raw JSON."""
    answer = _answered(home)
    at = _auditor_on(answer.audit_id)
    markdown = [m.value for m in at.markdown]
    assert md_escape(faithfulness_text(FAITH)) in markdown
    assert md_escape("Removing the 2 most-credited sentences makes this answer 40x") in "".join(
        markdown
    )
    removals = next(f.value for f in at.dataframe if "removal" in f.value.columns)
    assert list(removals["answer becomes"]) == ["40x less likely", "1.5x less likely"]
    assert FAITH not in _shown_json(at)
    # the fake attribution scores one sentence below zero: the chart says what that means
    assert any("A score below zero" in c.value for c in at.caption)


def test_replay_reads_as_a_diff_of_sentences_and_sources(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect (issue 19): the replay result was shown as raw JSON."""
    answer = _answered(home)
    at = _auditor_on(answer.audit_id)
    at.button(key=f"replay-{answer.audit_id}").click().run()
    assert not at.exception, at.exception
    assert [s.value for s in at.success] == [
        md_escape(
            f"Unchanged: record {answer.audit_id} replays to the same answer from the same sources."
        )
    ]

    # the guideline is edited after the answer: the replay must show what that changed
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    doc = home / "sources" / "hypertension-diagnosis-and-treatment.md"
    doc.write_text(doc.read_text().replace("130 to 139", "135 to 139"))
    assert not ingest([home / "sources"], settings, progress=False).failed
    at.button(key=f"replay-{answer.audit_id}").click().run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] == [
        md_escape(f"Changed: record {answer.audit_id} replays differently.")
    ]
    text = "\n".join(m.value for m in at.markdown)
    assert md_escape("'130' became '135'") in text
    # the edited passage has a new chunk id: the recorded one, named by its title, is gone
    assert md_escape("High Blood Pressure in Adults") in text
    assert "no longer retrieved" in text and "newly retrieved as source" in text
    [diff] = [m.value for m in at.markdown if "clinrag-diff" in m.value]
    assert "<del" in diff and "<ins" in diff and "130" in diff and "135" in diff
    shown = [t.value for t in at.text]
    assert answer.answer in shown and any("135 to 139" in t for t in shown)
    assert not any(isinstance(j, dict) and "replayed_answer" in j for j in _shown_json(at)[:-1])

    # the replay's own record reads the same way
    with audit_log(settings) as log:
        replay = log.list(event="replay")[-1]
    at.run()  # the list was read before the replay was recorded
    at.selectbox(key="audit_record").set_value(replay.seq).run()
    assert not at.exception, at.exception
    assert any("'130' became '135'" in m.value.replace("\\", "") for m in at.markdown)
    assert any("clinrag-diff" in m.value for m in at.markdown)

    # and `clinrag audit replay` prints the same diff in plain text
    from ui.cli.main import main

    capsys.readouterr()
    assert main(["audit", "replay", str(answer.audit_id)]) == 3
    out = capsys.readouterr().out
    assert out.startswith(f"CHANGED: record {answer.audit_id} replays differently.")
    assert "Sources that changed:" in out and "no longer retrieved" in out
    assert "~ Stage 1 hypertension: systolic [-130-] {+135+} to 139" in out
    assert "{" not in re.sub(r"\{\+.*?\+\}", "", out)  # no JSON or dict, only markers


# --- the replay diff ---------------------------------------------------------------------


def test_sentence_diff_pairs_edited_sentences_and_lists_the_rest() -> None:
    recorded = "Screen adults aged 45 to 49 (grade B) [1]. Repeat every 10 years [1]. Old [2]."
    replayed = "Screen adults aged 50 to 75 (grade B) [1]. Repeat every 10 years [1]. New one [3]."
    changes = sentence_diff(recorded, replayed)
    assert [c.kind for c in changes] == ["changed", "same", "removed", "added"]
    assert changes[0].marked() == "Screen adults aged [-45-] {+50+} to [-49-] {+75+} (grade B) [1]."
    assert describe_changes(changes) == [
        "Sentence 1 changed ('45' became '50'; '49' became '75'): " + changes[0].marked(),
        "Sentence 3 of the recorded answer is gone: Old [2].",
        "The replay adds a sentence (its sentence 3): New one [3].",
    ]
    assert [c.kind for c in sentence_diff(recorded, recorded)] == ["same"] * 3
    assert word_diff("do not smoke", "do smoke") == [("=", "do"), ("-", "not"), ("=", "smoke")]


def test_sentence_diff_html_escapes_and_marks() -> None:
    changes = sentence_diff("Give <b>5</b> mg [1].", "Give <b>10</b> mg [1].")
    html_block = sentence_diff_html(changes)
    assert "<b>" not in html_block and "&#60;b&#62;" in html_block
    assert "<del" in html_block and "<ins" in html_block and "\n\n" not in html_block


def test_source_changes_name_recorded_titles_and_new_ids_only() -> None:
    old = {
        "retrieved": [
            {"chunk_id": "a:1", "doc_id": "a", "title": "A", "content_hash": "x"},
            {"chunk_id": "b:1", "doc_id": "b", "title": "B", "content_hash": "y"},
            {"chunk_id": "c:1", "doc_id": "c", "title": "C", "content_hash": "z"},
        ]
    }
    new = {
        "retrieved": [
            {"chunk_id": "b:1", "doc_id": "b", "title": "B", "content_hash": "y2"},
            {"chunk_id": "c:1", "doc_id": "c", "title": "C", "content_hash": "z"},
            {"chunk_id": "m:1", "doc_id": "memo", "title": "Secret memo", "content_hash": "w"},
        ]
    }
    assert [s.text() for s in source_changes(old, new)] == [
        "A (a:1): was source [1], no longer retrieved",
        "B (b:1): its text changed since the answer (source [2])",
        "C (c:1): was source [3], now [2]",
        "m:1: newly retrieved as source [3]",
    ]


def test_a_withheld_replayed_answer_is_diffed_as_withheld() -> None:
    """services.audit.replay replaces the replayed text when it draws on documents the reader
    may not see; the diff is computed from the text as it stands, never the original."""
    report = ReplayReport(1, False, ["answer text changed"], "Old [1].", "Secret [2].")
    report.replayed_answer = "(withheld)"
    assert "Secret" not in json.dumps(report.to_dict()) and "Secret" not in str(report.readable())


def test_library_warnings_are_shown_in_full_above_the_table(home: Path) -> None:
    """Defect (issue 19): warnings were the last of ten table columns, off-screen at 1400 px."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="signin_username").input("admin")
    at.text_input(key="signin_password").input(PASSWORDS["admin"])
    at.button[0].click().run()
    at.sidebar.radio(key="page").set_value("Library").run()
    assert not at.exception, at.exception
    [box] = [w.value for w in at.warning if "Superseded by" in w.value]
    assert md_escape("colorectal-cancer-screening-2016") in box
    table = next(f.value for f in at.dataframe if "chunks" in f.value.columns)
    assert list(table.columns[:2]) == ["title", "warnings"]
