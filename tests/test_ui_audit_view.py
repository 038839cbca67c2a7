"""What an auditor reads: faithfulness in words, attribution labels, the replay diff.

Render helpers are tested directly; the Audit page through ``streamlit.testing.v1.AppTest``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from core.types import SourceSentence
from ui.render import (
    NEGATIVE_SCORE_NOTE,
    attribution_by_source,
    attribution_chart,
    faithfulness_rows,
    faithfulness_text,
    has_negative,
    heatmap_rows,
    likelihood_factor,
    sentence_start,
)


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
    assert likelihood_factor(500.0) == "more than 1,000,000x"
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
