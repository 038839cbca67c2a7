"""What an answer record may say about its question, under ``audit_questions``.

The question mode applies to every field derived from the question, not only the question:
the abstention reason that names the question's rare words, the model's text (which echoes
the question), and the clinician's feedback comment. The question hash is keyed with a site
key, so an export cannot confirm a guessed question. Each record also names the operating-
system account that wrote it (``clinrag ask --user`` is only what the asker said).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from audit.log.export import to_csv, to_fhir, to_jsonl
from audit.record import Recorder, open_log
from core.config import Settings
from core.types import (
    Actor,
    Answer,
    AnswerSentence,
    EmbedderInfo,
    Evidence,
    Generation,
    Mode,
    ModelInfo,
)

CLINICIAN = Actor("carol", "clinician")
EMBEDDER = EmbedderInfo("st", "minilm", "0" * 64, 384)
SURNAME = "smithers"
RARE = "ogilvy"


def _generation(text: str) -> Generation:
    return Generation(
        text=text,
        model=ModelInfo("fake", "tiny", "f" * 64),
        prompt_hash="p" * 64,
        template="answer_v1",
        decoding={"temperature": 0.0},
        seconds=0.1,
    )


def _abstained(question: str, words: str) -> Answer:
    return Answer(
        question=question,
        answer="The library does not contain guidance on this question.",
        abstained=True,
        sentences=[],
        citations=[],
        evidence=[],
        hits=[],
        source_sentences=[],
        generation=None,
        timings={"total": 0.1},
        abstain_reason=f"not_in_library (no retrieved passage mentions {words})",
        mode=Mode.ABSTAINED,
    )


def _generated(question: str, text: str, mode: Mode = Mode.GENERATED) -> Answer:
    drafted = [AnswerSentence(text, [1], True, 0.81, [0])]
    quoted = [AnswerSentence("Warfarin needs INR checks.", [1], True, 0.77, [0])]
    return Answer(
        question=question,
        answer=text if mode is Mode.GENERATED else "Warfarin needs INR checks. [1]",
        abstained=False,
        sentences=drafted if mode is Mode.GENERATED else quoted,
        citations=[],
        evidence=[Evidence(1, "Warfarin needs INR checks.", "d1", "Warfarin", "", None, 0.7)],
        hits=[],
        source_sentences=[],
        generation=_generation(text),
        timings={"total": 0.1},
        mode=mode,
        unverified=[AnswerSentence(f"{text} Unchecked.", [], False, 0.12)]
        if mode is Mode.QUOTED
        else [],
    )


def _record(settings: Settings, answer: Answer, mode: str) -> dict[str, Any]:
    configured = settings.model_copy(update={"audit_questions": mode})
    with Recorder.open(configured) as recorder:
        seq = recorder.answer(
            CLINICIAN, answer, settings=configured, index_version="1:abc", embedder=EMBEDDER
        )
        record = recorder.log.get(seq)
    assert record is not None
    return dict(record.payload)


def _exports(settings: Settings) -> str:
    log = open_log(settings)
    try:
        records = log.list()
    finally:
        log.close()
    jsonl, csv = io.StringIO(), io.StringIO()
    to_jsonl(records, jsonl)
    to_csv(records, csv)
    return jsonl.getvalue() + csv.getvalue() + json.dumps(to_fhir(records))


# ------------------------------------------------------------------ the abstention reason


def test_hashed_mode_keeps_the_question_words_out_of_the_abstention_reason(
    settings: Settings,
) -> None:
    question = f"Does Mrs {SURNAME.title()} with {RARE} syndrome need warfarin?"
    answer = _abstained(question, f"{SURNAME}, {RARE}")
    payload = _record(settings, answer, "hashed")
    assert "question" not in payload
    # the code and the number of words stay; the words do not
    assert payload["abstain_reason"] == (
        "not_in_library (no retrieved passage mentions [hashed], [hashed])"
    )
    assert SURNAME not in json.dumps(payload).lower() and RARE not in json.dumps(payload).lower()
    assert SURNAME not in _exports(settings).lower()
    # the clinician's screen keeps them: it is their own question
    assert SURNAME in (answer.abstain_reason or "")


def test_redacted_mode_hides_the_reason_words_that_redaction_hid(settings: Settings) -> None:
    question = f"Is patient Anna {SURNAME.title()} at risk of {RARE} syndrome?"
    payload = _record(settings, _abstained(question, f"{SURNAME}, {RARE}"), "redacted")
    assert payload["question"] == f"Is patient [NAME] at risk of {RARE} syndrome?"
    # no more than the redacted question shows: the surname goes, the disease stays
    assert payload["abstain_reason"] == (
        f"not_in_library (no retrieved passage mentions [REDACTED], {RARE})"
    )
    assert SURNAME not in _exports(settings).lower()


def test_verbatim_mode_keeps_the_reason_as_it_was(settings: Settings) -> None:
    answer = _abstained(f"Does {SURNAME} need warfarin?", SURNAME)
    assert _record(settings, answer, "verbatim")["abstain_reason"] == answer.abstain_reason


def test_a_reason_without_the_question_words_is_kept(settings: Settings) -> None:
    answer = _abstained("What dose of warfarin?", "x")
    answer.abstain_reason = "weak_retrieval (best relevance 0.20)"
    assert _record(settings, answer, "hashed")["abstain_reason"] == answer.abstain_reason
    # a question word is hidden wherever the reason repeats it, even in the reason's own
    # wording: hiding one word too many is the safe mistake
    answer = _abstained("Which dose is best?", "x")
    answer.abstain_reason = "weak_retrieval (best relevance 0.20)"
    assert _record(settings, answer, "hashed")["abstain_reason"] == (
        "weak_retrieval ([hashed] relevance 0.20)"
    )


# ------------------------------------------------------------------ the model's text


def test_hashed_mode_hashes_the_model_text_and_keeps_its_structure(settings: Settings) -> None:
    question = f"What dose of warfarin for Mrs {SURNAME.title()}?"
    text = f"Mrs {SURNAME.title()} should take 5 mg daily [1]."
    payload = _record(settings, _generated(question, text), "hashed")
    dumped = json.dumps(payload).lower()
    assert SURNAME not in dumped and "5 mg daily" not in dumped
    assert payload["generated_text"].startswith("hmac-sha256:")
    assert payload["answer"] == payload["generated_text"]
    [sentence] = payload["sentences"]
    assert sentence["text"].startswith("hmac-sha256:")
    assert (sentence["citations"], sentence["supported"], sentence["support"]) == ([1], True, 0.81)
    # the guideline's own words are not the question's: kept
    assert payload["evidence"][0]["text"] == "Warfarin needs INR checks."
    assert SURNAME not in _exports(settings).lower()


def test_an_attribution_keeps_the_model_text_as_its_answer_record_did(
    settings: Settings,
) -> None:
    """The attribution record repeats the answer's sentences: in hashed mode it used to store
    them verbatim, beside an answer record that hashed them."""
    question = f"What dose of warfarin for Mrs {SURNAME.title()}?"
    text = f"Mrs {SURNAME.title()} should take 5 mg daily [1]."
    configured = settings.model_copy(update={"audit_questions": "hashed"})
    answer = _generated(question, text)
    answer.attribution = {"method": "surrogate", "scores": [0.4], "faithfulness": None}
    with Recorder.open(configured) as recorder:
        seq = recorder.answer(
            CLINICIAN, answer, settings=configured, index_version="1:abc", embedder=EMBEDDER
        )
        attributed = recorder.log.get(recorder.attribution(CLINICIAN, seq, answer))
        recorded = recorder.log.get(seq)
    assert attributed is not None and recorded is not None
    assert SURNAME not in json.dumps(attributed.payload).lower()
    assert [s["text"] for s in attributed.payload["sentences"]] == [
        s["text"] for s in recorded.payload["sentences"]
    ]
    assert attributed.payload["sentences"][0]["support"] == 0.81


def test_quoted_answers_keep_the_guideline_and_hide_the_draft(settings: Settings) -> None:
    question = f"What dose of warfarin for Mrs {SURNAME.title()}?"
    answer = _generated(question, f"{SURNAME.title()} takes 5 mg.", Mode.QUOTED)
    payload = _record(settings, answer, "hashed")
    assert payload["answer"] == "Warfarin needs INR checks. [1]"
    assert payload["sentences"][0]["text"] == "Warfarin needs INR checks."
    [draft] = payload["unverified_sentences"]
    assert draft["text"].startswith("hmac-sha256:") and draft["support"] == 0.12
    assert SURNAME not in json.dumps(payload).lower()


def test_redacted_mode_redacts_the_model_text_like_the_question(settings: Settings) -> None:
    question = f"Dose for patient Anna {SURNAME.title()}, MRN 1234567?"
    text = f"Anna {SURNAME.title()} (MRN 1234567) should take 5 mg daily [1]."
    payload = _record(settings, _generated(question, text), "redacted")
    expected = "[REDACTED] [REDACTED] ([MRN]) should take 5 mg daily [1]."
    assert payload["generated_text"] == payload["answer"] == expected
    assert payload["sentences"][0]["text"] == expected
    assert SURNAME not in _exports(settings).lower() and "1234567" not in _exports(settings)


def test_verbatim_mode_keeps_the_model_text(settings: Settings) -> None:
    text = "Take 5 mg daily [1]."
    payload = _record(settings, _generated("What dose of warfarin?", text), "verbatim")
    assert payload["generated_text"] == payload["answer"] == payload["sentences"][0]["text"] == text


# ------------------------------------------------------------------ feedback


@pytest.mark.parametrize(
    ("mode", "stored"),
    [
        ("verbatim", f"Called Mrs {SURNAME.title()} on 555-123-4567"),
        ("redacted", "Called [NAME] on [PHONE]"),
        ("hashed", ""),
    ],
)
def test_feedback_comments_follow_their_answers_question_mode(
    settings: Settings, mode: str, stored: str
) -> None:
    comment = f"Called Mrs {SURNAME.title()} on 555-123-4567"
    answer_id = 0
    configured = settings.model_copy(update={"audit_questions": mode})
    with Recorder.open(configured) as recorder:
        answer_id = recorder.answer(
            CLINICIAN,
            _generated("What dose?", "Take 5 mg [1]."),
            settings=configured,
            index_version="1:abc",
            embedder=EMBEDDER,
        )
        seq = recorder.feedback(CLINICIAN, answer_id, helpful=False, comment=comment)
        record = recorder.log.get(seq)
    assert record is not None
    assert record.payload["comment"] == stored
    assert record.payload["helpful"] is False and record.payload["answer_id"] == answer_id
    if mode == "hashed":
        assert record.payload["comment_chars"] == len(comment)
    else:
        assert "comment_chars" not in record.payload


def test_feedback_on_an_unknown_answer_keeps_no_comment(settings: Settings) -> None:
    with Recorder.open(settings) as recorder:
        seq = recorder.feedback(CLINICIAN, 999, helpful=True, comment=f"Mrs {SURNAME}")
        record = recorder.log.get(seq)
    assert record is not None and record.payload["comment"] == ""


# ------------------------------------------------------------------ the question hash


def test_the_question_hash_is_keyed_with_an_owner_only_site_key(
    settings: Settings, tmp_path: Path
) -> None:
    question = "What dose of warfarin for Mrs Smithers?"
    payload = _record(settings, _generated(question, "Take 5 mg [1]."), "hashed")
    key_path = settings.question_key
    assert key_path.parent == settings.audit_key.parent and key_path.is_file()
    if os.name == "posix":
        assert key_path.stat().st_mode & 0o777 == 0o600
    key = key_path.read_bytes()
    assert len(key) >= 32
    # a guess checked with plain sha256 (all an export holder can do) no longer matches
    assert payload["question_hash"] != hashlib.sha256(question.encode()).hexdigest()
    expected = hmac.new(key, question.encode("utf-8"), hashlib.sha256).hexdigest()
    assert payload["question_hash"] == expected
    assert payload["question_hash_alg"] == "hmac-sha256"
    # the key is made once: equal questions still match across records
    again = _record(settings, _generated(question, "Take 5 mg [1]."), "verbatim")
    assert again["question_hash"] == expected
    # another site (another key) cannot match them
    other = settings.model_copy(update={"home": tmp_path / "other-site"})
    assert _record(other, _generated(question, "x"), "hashed")["question_hash"] != expected


def test_a_damaged_site_key_withholds_the_answer(settings: Settings) -> None:
    from core.errors import AuditError

    settings.question_key.parent.mkdir(parents=True, exist_ok=True)
    settings.question_key.write_bytes(b"short")
    with pytest.raises(AuditError, match="withheld"):
        _record(settings, _generated("What dose?", "Take 5 mg [1]."), "hashed")


# ------------------------------------------------------------------ who ran the command


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX accounts")
def test_the_answer_record_names_the_operating_system_account(settings: Settings) -> None:
    import pwd

    payload = _record(settings, _generated("What dose?", "Take 5 mg [1]."), "verbatim")
    assert payload["os_user"] == pwd.getpwuid(os.getuid()).pw_name
    assert payload["os_uid"] == os.getuid()
