"""What an auditor reads: faithfulness in words, attribution labels, the replay diff.

Render helpers are tested directly; the Audit page through ``streamlit.testing.v1.AppTest``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from ui.render import faithfulness_rows, faithfulness_text, likelihood_factor


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
