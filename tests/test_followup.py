"""Follow-up questions: which questions lean on the previous turn, how they are rewritten, and
that the pipeline retrieves with the rewrite and records the turn's parent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from test_ui_fakes import ExtractiveLLM

from assistant.followup import is_follow_up, parse, resolve
from core.config import Settings
from core.types import Actor

CRC = "At what age should average-risk adults start colorectal cancer screening?"
ASPIRIN = "Should adults take aspirin for primary prevention of cardiovascular disease?"
HTN = "What is the first-line treatment for hypertension?"
AAA = "Which men should be screened for abdominal aortic aneurysm?"
CERVIX = "How often should women be screened for cervical cancer?"


@pytest.mark.parametrize(
    ("previous", "question", "expected"),
    [
        # pronoun subject and a missing object, both from the previous clause
        (
            CRC,
            "and when should they stop?",
            "When should average-risk adults stop colorectal cancer screening?",
        ),
        (
            CERVIX,
            "And when should they stop?",
            "When should women stop being screened for cervical cancer?",
        ),
        # a prepositional fragment qualifies the previous question
        (
            CRC,
            "and for smokers?",
            "At what age should average-risk adults start colorectal cancer screening for smokers?",
        ),
        (
            HTN,
            "and in Black adults?",
            "What is the first-line treatment for hypertension in Black adults?",
        ),
        (
            CERVIX,
            "what about after 65?",
            "How often should women be screened for cervical cancer after 65?",
        ),
        # a population replaces the previous one, or narrows a question that had none
        (
            CRC,
            "what about smokers?",
            "At what age should smokers start colorectal cancer screening?",
        ),
        (AAA, "What about women?", "Which women should be screened for abdominal aortic aneurysm?"),
        (AAA, "and smokers?", "Which smokers should be screened for abdominal aortic aneurysm?"),
        (HTN, "what about women?", "What is the first-line treatment for hypertension in women?"),
        # a bare wh-phrase takes the previous clause
        (
            ASPIRIN,
            "how long?",
            "How long should adults take aspirin for primary prevention of cardiovascular disease?",
        ),
        (AAA, "How often?", "How often should men be screened for abdominal aortic aneurysm?"),
        (HTN, "at what dose?", "At what dose is the first-line treatment for hypertension?"),
        # it / its: the previous object, or the copular subject
        (ASPIRIN, "Is it safe in pregnancy?", "Is aspirin safe in pregnancy?"),
        (ASPIRIN, "What are its side effects?", "What are aspirin's side effects?"),
        (ASPIRIN, "Does it apply to smokers?", "Does aspirin apply to smokers?"),
        (
            HTN,
            "is it safe in pregnancy?",
            "Is the first-line treatment for hypertension safe in pregnancy?",
        ),
        # a condition on the previous question
        (
            ASPIRIN,
            "and if they already have diabetes?",
            ASPIRIN[:-1] + " if adults already have diabetes?",
        ),
        # nothing to splice: the previous question is kept alongside, so retrieval sees it
        (ASPIRIN, "what about statins?", f"What about statins? (following: {ASPIRIN})"),
        (
            CERVIX,
            "Which test should they get?",
            f"Which test should they get? (following: {CERVIX})",
        ),
        (
            AAA,
            "Is this test recommended for them?",
            f"Is this test recommended for them? (following: {AAA})",
        ),
    ],
)
def test_follow_ups_are_rewritten_to_stand_alone(
    previous: str, question: str, expected: str
) -> None:
    assert is_follow_up(question, previous)
    assert resolve(question, previous) == expected


@pytest.mark.parametrize(
    "question",
    [
        "What is the first-line treatment for hypertension?",
        "Is it true that aspirin prevents heart attacks?",
        "Is it recommended to screen adults for hepatitis C?",
        "How often should a FIT stool test be repeated for colorectal cancer screening?",
        "What HbA1c level is diagnostic of diabetes?",
        "And what is the first-line medication for type 2 diabetes?",
        "Who should receive the influenza vaccine?",
        "When should adults stop colorectal cancer screening?",
        "Which adults should be screened for prediabetes and type 2 diabetes?",
        "What are the side effects of statins?",
        "Does this guideline cover HIV pre-exposure prophylaxis?",
        "Are they eligible for lung cancer screening with low-dose CT?",
        "Thanks",
    ],
)
def test_questions_with_their_own_subject_are_not_follow_ups(question: str) -> None:
    assert not is_follow_up(question, CRC)
    assert resolve(question, CRC) is None


@pytest.mark.parametrize(
    "question", ["and when should they stop?", "how often?", "What about women?"]
)
def test_nothing_is_a_follow_up_of_no_question(question: str) -> None:
    assert not is_follow_up(question, None)
    assert not is_follow_up(question, "  ")
    assert resolve(question, None) is None


def test_a_chain_resolves_against_the_previous_resolved_question() -> None:
    second = resolve("and when should they stop?", CRC)
    assert second == "When should average-risk adults stop colorectal cancer screening?"
    third = resolve("what about smokers?", second)
    assert third == "When should smokers stop colorectal cancer screening?"


def test_the_rewrite_is_deterministic_and_keeps_acronyms() -> None:
    previous = "Who should be offered HIV PrEP?"
    first = resolve("how often should they be tested?", previous)
    assert first == resolve("how often should they be tested?", previous)
    assert first is not None and "HIV PrEP" in first


def test_parse_splits_a_question_into_its_clause() -> None:
    clause = parse(CRC)
    assert clause is not None
    assert clause.wh == ["At", "what", "age"] and clause.aux == "should"
    assert clause.subject == ["average-risk", "adults"] and clause.verb == "start"
    assert clause.obj == ["colorectal", "cancer", "screening"]
    copular = parse(HTN)
    assert copular is not None and copular.verb == "" and copular.subject[-1] == "hypertension"
    assert parse("Colorectal screening, at 45") is None


# ------------------------------------------------------------------ the pipeline


class _PromptKeepingLLM(ExtractiveLLM):
    """The extractive stand-in that keeps each prompt's question, to see what the model read;
    its log-probabilities (for attribution) only count the kept words, but keep the question."""

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.scored: list[str] = []

    def logprobs(self, prompts: Any, targets: Sequence[str]) -> Any:
        import numpy as np

        rows = []
        for messages in prompts:
            content = messages[-1]["content"]
            self.scored.append(content.rpartition("Question:")[2].strip())
            rows.append([-1.0 / (1 + len(content)) for _ in targets])
        return np.array(rows)

    def stream(
        self, messages: Sequence[dict[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Any:
        self.questions.append(messages[-1]["content"].rpartition("Question:")[2].strip())
        return super().stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)


def test_follow_up_retrieves_with_the_resolved_question_and_links_its_parent(
    library: Settings,
) -> None:
    """Real sample library and embedder; the extractive stand-in for the model."""
    from assistant.pipeline import Assistant
    from services import ask as asking

    llm = _PromptKeepingLLM()
    assistant = Assistant(library.model_copy(update={"attribution": "off"}), llm=llm)
    who = Actor("followup-tester", "clinician")
    first = asking.ask(assistant, who, CRC)
    assert first.audit_id is not None and first.resolved_question is None
    assert first.parent_id is None

    typed = "and when should they stop?"
    # the typed words alone lead elsewhere: the rewrite is what finds the guideline
    bare = assistant.retriever.retrieve(typed, filters=None)
    assert bare[0].chunk.doc_id != "colorectal-cancer-screening"

    second = asking.ask(assistant, who, typed, previous=first)
    assert second.question == typed
    assert second.resolved_question == (
        "When should average-risk adults stop colorectal cancer screening?"
    )
    assert second.hits[0].chunk.doc_id == "colorectal-cancer-screening"
    assert not second.abstained
    assert {c.doc_id for c in second.citations} == {"colorectal-cancer-screening"}
    assert llm.questions[-1] == second.resolved_question  # the model answered the rewrite
    assert second.parent_id == first.audit_id

    record = assistant.audit.get(int(second.audit_id or 0))
    assert record is not None and record.event == "answer"
    assert record.payload["question"] == typed
    assert record.payload["resolved_question"] == second.resolved_question
    assert record.payload["parent_id"] == first.audit_id
    parent = assistant.audit.get(first.audit_id)
    assert parent is not None and parent.payload["question"] == CRC

    # attribution scores the prompt the model answered (the rewrite), not the typed words
    assistant.attribute(second, method="loo")
    assert second.attribution is not None
    assert set(llm.scored) == {second.resolved_question}
    # and a replay asks it in its conversation's context: nothing changed
    from assistant.replay import replay_answer

    report = replay_answer(
        assistant.settings,
        record.seq,
        record.payload,
        user=who.user,
        role=who.role,
        assistant=assistant,
    )
    assert report.unchanged, report.differences

    # a question with its own subject in the same conversation stands alone: no parent
    third = asking.ask(assistant, who, HTN, previous=second)
    assert third.resolved_question is None and third.parent_id is None
    assert assistant.audit.get(int(third.audit_id or 0)).payload["parent_id"] is None  # type: ignore[union-attr]


@pytest.mark.slow
def test_follow_up_with_the_packaged_model(warm_assistant: Any) -> None:
    """The same conversation through the real model: the rewrite finds the guideline, the
    answer (whatever the model wrote) is recorded as a turn of its parent."""
    from services import ask as asking

    who = Actor("followup-tester-slow", "clinician")
    first = asking.ask(warm_assistant, who, CRC)
    second = asking.ask(warm_assistant, who, "and when should they stop?", previous=first)
    assert second.resolved_question == (
        "When should average-risk adults stop colorectal cancer screening?"
    )
    assert second.hits[0].chunk.doc_id == "colorectal-cancer-screening"
    cited = {c.doc_id for c in second.citations} | {e.doc_id for e in second.evidence}
    assert "colorectal-cancer-screening" in cited
    record = warm_assistant.audit.get(int(second.audit_id or 0))
    assert record.payload["parent_id"] == first.audit_id
    assert record.payload["question"] == "and when should they stop?"
