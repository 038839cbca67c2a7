"""Yes/no questions: detection, the decision from the evidence, and where the decision goes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from assistant import decide
from core import recommendations
from core.types import DecisionLabel, Mode, ModelInfo, SourceSentence
from tests.test_ui_fakes import ExtractiveLLM

if TYPE_CHECKING:
    from core.backends.base import LLM
    from core.config import Settings


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "Is aspirin recommended for primary prevention in adults over 70?",
        "Should statins be used in adults aged 40 to 75 with diabetes?",
        "Can I use metformin in pregnancy?",
        "Does screening or surveillance improve prognosis?",
        "Do beta blockers work or not?",
        "Has the guideline changed since 2016?",
        "Were the results significant?",
        "Isn't 45 too young to start screening?",
        # headline questions: a topic, then the question
        "Double balloon enteroscopy: is it efficacious and safe in a community setting?",
        "Metered-dose inhalers. Do health care providers know what to teach?",
        "Injury and poisoning mortality among young men--are there any common factors?",
        "Suturing of the nasal septum after septoplasty, is it an effective alternative?",
        "Aripiprazole: a new risk factor for pathological gambling?",
        "Malnutrition, a new inducer for arterial calcification in hemodialysis patients?",
        # a wh-word in a subordinate clause does not make a wh-question
        "Do approved doctors and medical referees agree when assessing a seafarer's fitness?",
        "Are patients aware of when they do not understand?",
    ],
)
def test_yes_no_questions_are_detected(question: str) -> None:
    assert decide.is_yes_no(question)


@pytest.mark.parametrize(
    "question",
    [
        "At what age should average-risk adults start colorectal cancer screening?",
        "What is the first-line drug treatment for hypertension in adults?",
        "How often should HbA1c be measured?",
        "Which drug is first line?",
        "When should screening stop?",
        "Hypertension: what is first line?",
        "In adults over 50, what is the dose?",
        "Is it safe, and when should it start?",  # a second question asks for more
        "Are they the same or different?",  # a choice, not yes/no
        "Are ACE inhibitors or ARBs preferred in chronic kidney disease?",
        "and for smokers?",
        "Gluten tolerance in adults with celiac disease?",  # no verb, no topic: unreadable
        "",
    ],
)
def test_other_questions_are_not(question: str) -> None:
    assert not decide.is_yes_no(question)


# --- the decision -------------------------------------------------------------------------------


def test_label_has_an_uncertain_band_around_the_bias() -> None:
    assert decide.label(1.0, bias=0.2, margin=0.5) is DecisionLabel.YES
    assert decide.label(0.5, bias=0.2, margin=0.5) is DecisionLabel.UNCERTAIN
    assert decide.label(-0.4, bias=0.2, margin=0.5) is DecisionLabel.NO
    assert decide.label(0.3, bias=0.2, margin=0.0) is DecisionLabel.YES


class ScoringLLM(ExtractiveLLM):
    """The extractive fake plus log-probabilities: evidence that holds ``cue`` is likelier
    after "The answer is yes", other evidence after "no". Records every prompt and target it
    scores, and whether it was asked to generate."""

    def __init__(self, cue: str) -> None:
        self.cue = cue
        self.scored: list[tuple[str, str]] = []
        self.generated = False

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", model_id="scoring-test-llm", weights_hash="1" * 64)

    def stream(
        self, messages: Sequence[dict[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.generated = True
        yield from super().stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)

    def logprobs(self, prompts: Any, targets: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(prompts), len(targets)))
        for i, messages in enumerate(prompts):
            prompt = "\n".join(m["content"] for m in messages)
            for j, target in enumerate(targets):
                self.scored.append((prompt, target))
                agrees = (self.cue.lower() in target.lower()) == ("answer is yes" in prompt)
                out[i, j] = np.log(0.8 if agrees else 0.2)
        return out


# The channel score alone, unscaled: the fake's shift (log 4, either way) decides.
CHANNEL_ONLY = decide.Weights(coef={"shift": 1.0}, intercept=0.0)


def _decisive(settings: Settings) -> Settings:
    """Settings under which the fake's shift (log 4, either way) decides."""
    return settings.model_copy(update={"yes_no_bias": 0.0, "yes_no_margin": 0.5})


@pytest.fixture
def channel_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline decides with CHANNEL_ONLY instead of the shipped weights, whatever the
    first quote states (the tests of a guideline's stated decision are apart)."""
    monkeypatch.setattr(decide, "shipped_weights", lambda: CHANNEL_ONLY)
    monkeypatch.setattr(decide, "stated_decision", lambda question, quotes: None)


@pytest.fixture
def findings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped weights decide, whatever the first quote states."""
    monkeypatch.setattr(decide, "stated_decision", lambda question, quotes: None)


def _sources(*texts: str) -> list[SourceSentence]:
    return [SourceSentence(i, 1, "c1", t) for i, t in enumerate(texts)]


def test_decision_reads_only_the_question_and_the_evidence(settings: Settings) -> None:
    llm = ScoringLLM(cue="reduced mortality")
    settings = _decisive(settings)
    evidence = _sources("Screening reduced mortality by 20%.", "It was a randomised trial.")
    question = "Does screening reduce mortality?"
    decision = decide.decide(llm, question, evidence, settings, CHANNEL_ONLY)
    assert decision is not None
    assert decision.label is DecisionLabel.YES
    assert decision.evidence == [0, 1]
    assert decision.method == decide.METHOD
    assert decision.probabilities["shift"] == pytest.approx(np.log(4), abs=1e-3)
    assert decision.probabilities["log_odds"] == pytest.approx(np.log(4), abs=1e-3)
    # one scoring per option: the evidence is the target, the prompt holds only the question
    assert {t for _, t in llm.scored} == {
        "Screening reduced mortality by 20%. It was a randomised trial."
    }
    assert len(llm.scored) == 2
    assert all(question in p and "Screening" not in p for p, _ in llm.scored)

    against = _sources("Screening did not change mortality.")
    no = decide.decide(llm, question, against, settings, CHANNEL_ONLY)
    assert no is not None and no.label is DecisionLabel.NO
    # within the margin of the bias: uncertain
    close = decide.decide(
        llm, question, evidence, settings.model_copy(update={"yes_no_bias": 1.0}), CHANNEL_ONLY
    )
    assert close is not None and close.label is DecisionLabel.UNCERTAIN
    # a negative finding phrase weighs towards no when the weights say so
    cue_weighted = decide.Weights(coef={"shift": 1.0, "negative": -4.0}, intercept=0.0)
    hedged = _sources("Screening reduced mortality, but not significantly (p = 0.21).")
    weighed = decide.decide(llm, question, hedged, settings, cue_weighted)
    assert weighed is not None and weighed.label is DecisionLabel.NO


def test_finding_cues_are_counted_and_negated_significance_is_not_positive() -> None:
    found = decide.cues(
        "Is routine imaging really necessary?",
        [
            "Outcomes were similar in both groups and did not differ (p = 0.42).",
            "There was no significant difference in survival.",
        ],
    )
    # "similar", "did not", "p = 0.42", "no significant (difference)"
    assert found["negative"] == pytest.approx(np.log1p(4))
    assert found["positive"] == 0.0  # "no significant" is not a significant finding
    assert found["doubt"] == 1.0
    found = decide.cues(
        "Does screening reduce mortality?",
        ["Mortality was significantly lower with screening (p < 0.001)."],
    )
    assert found["negative"] == 0.0 and found["doubt"] == 0.0
    assert found["positive"] == pytest.approx(np.log1p(2))
    assert set(found) == set(decide.TEXT_FEATURES)


# An abstract without its conclusions, as PubMedQA's contexts are: aims and methods first.
ABSTRACT = [
    "We asked whether daily aspirin reduces recurrent stroke.",  # aim
    "Patients who did not attend follow-up were excluded.",  # methods: a negation, no finding
    "We randomised 400 patients to aspirin or placebo.",
    "Recurrent stroke occurred in 12% and 13% (OR 0.92, 95% CI 0.61-1.38).",
    "Aspirin did not reduce recurrent stroke.",
    "Bleeding was similar in both groups.",
]


def test_findings_are_counted_in_the_results_not_the_methods() -> None:
    found = decide.cues("Does daily aspirin reduce recurrent stroke?", ABSTRACT)
    # six sentences: the results are the last two ("did not", "similar")
    assert found["negative_results"] == pytest.approx(np.log1p(2))
    assert found["negative"] == pytest.approx(np.log1p(3))  # the methods' "did not" too
    assert found["no_difference_results"] == pytest.approx(np.log1p(1))  # "similar"
    assert found["last_sentence_negative"] == 1.0
    # the same abstract with a positive last sentence
    positive = [*ABSTRACT[:4], "Aspirin reduced recurrent stroke by 30% (p = 0.01).", ABSTRACT[3]]
    found = decide.cues("Does daily aspirin reduce recurrent stroke?", positive)
    assert found["negative_results"] == 0.0 and found["last_sentence_negative"] == 0.0
    assert found["positive_results"] == pytest.approx(np.log1p(1))


def test_negation_is_scoped_to_the_questions_terms() -> None:
    question = "Does daily aspirin reduce recurrent stroke?"
    assert decide.negations_of_question_terms(question, "Aspirin did not reduce stroke.") == 1
    assert decide.negations_of_question_terms(question, "No recurrent stroke was prevented.") == 1
    # a negation about something else, far from the question's words
    unrelated = "Patients who did not attend the clinic were excluded from all further analyses."
    assert decide.negations_of_question_terms(question, unrelated) == 0
    found = decide.cues(question, ABSTRACT)
    assert found["negation_of_question_terms"] == pytest.approx(np.log1p(1))
    assert decide.question_terms(question) == {"daily", "aspir", "reduc", "recur", "strok"}


def test_confidence_intervals_crossing_1_are_findings_of_no_effect() -> None:
    assert decide.confidence_intervals("odds ratio, 1.40; 95% confidence interval, 0.80-2.46") == (
        1,
        0,
    )
    assert decide.confidence_intervals(
        "(OR 2.0, 95% CI 1.3-3.0) and (HR 0.5; 95% CI 0.3 to 0.8)"
    ) == (
        0,
        2,
    )
    # a difference in means is no ratio: its interval around 0 is skipped
    assert decide.confidence_intervals("mean difference -2.1 (95% CI -4.0 to -0.2)") == (0, 0)
    found = decide.cues("Does daily aspirin reduce recurrent stroke?", ABSTRACT)
    assert found["ci_includes_1"] == pytest.approx(np.log1p(1))


def test_a_guideline_recommendation_is_not_a_negative_finding() -> None:
    # "do not", "is not required" in a recommendation say what to do, not what a study found
    assert decide.is_recommendation(
        "Do not start low-dose aspirin for primary prevention in adults 60 or older (grade D)."
    )
    assert decide.is_recommendation("Fasting is not required; we recommend a nonfasting panel.")
    assert not decide.is_recommendation("Mortality did not differ between the groups.")
    guideline = [
        "Do not start low-dose aspirin for primary prevention in adults 60 or older (grade D).",
        "Adults 40 to 59 should decide with their clinician (grade C).",
    ]
    found = decide.cues("Should a healthy 65-year-old start aspirin?", guideline)
    assert found["negative"] == 0.0 and found["negative_results"] == 0.0
    study = ["Aspirin did not reduce mortality in adults 60 or older."]
    assert decide.cues("Should a healthy 65-year-old start aspirin?", study)["negative"] > 0


def test_the_closest_sentences_follow_the_similarity_when_given() -> None:
    question = "Does daily aspirin reduce recurrent stroke?"
    evidence = ["Stroke did not recur less often.", "Aspirin lowered blood pressure."]
    # the first sentence is the closer one: its negation counts
    assert decide.cues(question, evidence, [0.9, 0.1])["negative_closest"] > 0
    # with three or more sentences, only the CLOSEST most similar ones are read
    many = [*evidence, "Aspirin was given daily.", "Doses were low.", "Follow-up was long."]
    assert decide.cues(question, many, [0.1, 0.9, 0.8, 0.7, 0.6])["negative_closest"] == 0.0
    assert decide.cues(question, many, [0.9, 0.1, 0.8, 0.7, 0.6])["negative_closest"] > 0


def test_shipped_weights_say_what_they_were_fitted_on() -> None:
    import json
    from importlib import resources

    from core.backends.transformers_llm import PACKAGED_GGUF_SHA256

    raw = json.loads(resources.files("assistant").joinpath(decide.WEIGHTS_FILE).read_text())
    weights = decide.shipped_weights()
    assert set(weights.coef) <= set(decide.FEATURES)
    # a channel coefficient belongs to the model it was fitted with
    assert weights.model_hash == (PACKAGED_GGUF_SHA256 if weights.needs_model else "")
    assert len(raw["data"]["questions_sha256"]) == 64 and "yes_no_fit" in raw["command"]
    # a negative finding in the results pushes the decision towards no
    question = "Does daily aspirin reduce recurrent stroke?"
    positive = [*ABSTRACT[:3], "Aspirin reduced recurrent stroke by 30% (p = 0.01)."]
    z_negative = weights.log_odds(decide.features(None, question, ABSTRACT))
    z_positive = weights.log_odds(decide.features(None, question, positive))
    assert z_negative < 0 < z_positive
    assert raw["feature_set"] and raw["C"] > 0


def test_no_decision_without_log_probabilities_or_evidence(settings: Settings) -> None:
    evidence = _sources("Screening reduced mortality.")
    question = "Does screening help?"
    assert decide.decide(ExtractiveLLM(), question, evidence, settings, CHANNEL_ONLY) is None
    assert decide.decide(ScoringLLM("x"), question, [], settings, CHANNEL_ONLY) is None
    # weights on the text cues alone need no log-probabilities, and never call the model
    cues_only = decide.Weights(coef={"negative": -2.0}, intercept=0.5)
    llm = ScoringLLM("x")
    against = _sources("Mortality did not differ (p = 0.40).")
    decision = decide.decide(llm, question, against, settings, cues_only)
    assert decision is not None and decision.label is DecisionLabel.NO
    assert "shift" not in decision.probabilities and not llm.scored
    plain = decide.decide(ExtractiveLLM(), question, evidence, settings, cues_only)
    assert plain is not None and plain.label is DecisionLabel.YES


def test_the_decision_reads_the_document_when_given_not_only_the_evidence(
    settings: Settings,
) -> None:
    cues_only = decide.Weights(coef={"negative_results": -3.0}, intercept=0.5)
    question = "Does daily aspirin reduce recurrent stroke?"
    evidence = _sources("We asked whether daily aspirin reduces recurrent stroke.")
    alone = decide.decide(None, question, evidence, settings, cues_only)
    assert alone is not None and alone.label is DecisionLabel.YES
    # the whole document's results say otherwise: they decide
    read = decide.decide(None, question, evidence, settings, cues_only, document=ABSTRACT)
    assert read is not None and read.label is DecisionLabel.NO
    assert read.evidence == [0]  # what the reader is shown stays the cited evidence


def test_whole_document_orders_chunks_and_reads_overlaps_once() -> None:
    from core.types import Chunk

    def chunk(text: str, start: int) -> Chunk:
        return Chunk(f"c{start}", "d", text, "", "", None, start, start + len(text), "", "", "")

    chunks = [chunk("Second. Third.", 8), chunk("First. Second.", 0)]
    assert decide.whole_document(chunks) == ["First.", "Second.", "Third."]


# --- in the pipeline ----------------------------------------------------------------------------

YES_NO = "Are beta blockers first line for uncomplicated hypertension?"


def _assistant(library: Settings, llm: object) -> Any:
    from assistant.pipeline import Assistant

    # records go to the session library's log, as warm_assistant's do
    settings = _decisive(library.model_copy(update={"attribution": "off"}))
    return Assistant(settings, llm=llm)  # type: ignore[arg-type]


def test_yes_no_answer_is_its_decision_and_quoted_evidence(
    library: Settings, capsys: pytest.CaptureFixture[str], channel_only: None
) -> None:
    from ui.cli.main import answer_json, print_answer

    llm = ScoringLLM(cue="beta blockers are first line")
    assistant = _assistant(library, llm)
    answer = assistant.ask(YES_NO, record=False)
    assert not llm.generated  # no free text for a yes/no question
    assert answer.mode is Mode.QUOTED and not answer.abstained
    assert answer.decision is not None
    assert answer.decision.label is DecisionLabel.NO
    # the decision read every retrieved passage of one quoted document, and nothing else
    quoted = {i for s in answer.sentences for i in s.evidence}
    doc = {n: answer.hits[n - 1].chunk.doc_id for n in range(1, len(answer.hits) + 1)}
    docs = {doc[answer.source_sentences[i].n] for i in answer.decision.evidence}
    assert len(docs) == 1 and docs <= {doc[answer.source_sentences[i].n] for i in quoted}
    texts = {answer.source_sentences[i].text for i in answer.decision.evidence}
    assert texts == {s.text for s in answer.source_sentences if doc[s.n] in docs}
    read = " ".join(answer.source_sentences[i].text for i in answer.decision.evidence)
    assert "not first line" in read
    assert answer.generation is not None and answer.generation.text == ""
    assert answer.generation.template.startswith(decide.PROMPT_NAME)

    print_answer(answer)
    first = capsys.readouterr().out.splitlines()[0]
    refs = ", ".join(f"[{n}]" for n in decide.cited(answer.decision, answer))
    assert first == f"Decision: no (from {refs})"
    assert answer_json(answer)["decision"]["label"] == "no"

    # the quoted evidence a decision shows is attributed like any answer's sentences
    assistant.attribute(answer, method="loo")
    assert answer.attribution is not None and answer.attribution["scores"]


def test_the_pipeline_decision_reads_the_cited_documents_unretrieved_passages(
    library: Settings, monkeypatch: pytest.MonkeyPatch, findings_only: None
) -> None:
    from core.text import split_sentences

    read: dict[str, Any] = {}
    original = decide.decide

    def spy(*args: Any, **kwargs: Any) -> Any:
        read["document"], read["similarity"] = args[6], args[5]
        return original(*args, **kwargs)

    monkeypatch.setattr(decide, "decide", spy)
    assistant = _assistant(library, ExtractiveLLM())
    one = {"top_k": 1}  # one passage retrieved
    assistant.settings = assistant.settings.model_copy(update=one)
    assistant.retriever.settings = assistant.retriever.settings.model_copy(update=one)
    answer = assistant.ask(YES_NO, record=False)
    assert answer.decision is not None
    doc = answer.hits[0].chunk.doc_id
    chunks = assistant.retriever.index.manifest.chunks([doc])
    retrieved = {h.chunk.chunk_id for h in answer.hits if h.chunk.doc_id == doc}
    assert len(retrieved) < len(chunks)  # the document has passages retrieval did not return
    every = {t for c in chunks for t in split_sentences(c.text)}
    assert set(read["document"]) == every
    assert len(read["similarity"]) == len(read["document"])


def test_other_questions_and_models_without_log_probabilities_are_unchanged(
    library: Settings, channel_only: None
) -> None:
    scoring = ScoringLLM(cue="x")
    answer = _assistant(library, scoring).ask(
        "What is the first-line drug treatment for hypertension?", record=False
    )
    assert scoring.generated and answer.decision is None
    plain = ExtractiveLLM()
    answer = _assistant(library, plain).ask(YES_NO, record=False)
    assert answer.decision is None  # no decision, no crash: the answer is generated as before
    assert answer.generation is not None and answer.generation.text


def test_the_shipped_cue_weights_decide_without_the_model(
    library: Settings, findings_only: None
) -> None:
    # the shipped fit uses the text cues only (docs/benchmarks.md): any model can decide
    assert not decide.shipped_weights().needs_model
    plain = ExtractiveLLM()  # no log-probabilities
    answer = _assistant(library, plain).ask(YES_NO, record=False)
    assert answer.decision is not None and not answer.abstained
    assert answer.generation is not None and answer.generation.text == ""
    assert answer.generation.decoding["weights_sha256"] == decide.shipped_weights().sha256


def test_the_record_carries_the_decision_and_replay_sees_no_change(
    library: Settings, channel_only: None
) -> None:
    from assistant.replay import compare
    from audit.record import answer_payload

    assistant = _assistant(library, ScoringLLM(cue="beta blockers are first line"))
    answer = assistant.ask(YES_NO)
    assert answer.audit_id is not None and answer.decision is not None
    record = assistant.audit.get(answer.audit_id)
    assert record is not None
    stored = record.payload
    assert stored["decision"] == asdict(answer.decision)
    assert stored["settings"]["yes_no_decisions"] is True

    again = assistant.ask(YES_NO, record=False)
    index = assistant.retriever.index
    replayed = answer_payload(again, assistant.settings, index.version, index.embedder.info)
    assert compare(stored, replayed) == []
    flipped = {**replayed, "decision": {**(replayed["decision"] or {}), "label": "yes"}}
    assert compare(stored, flipped) == ["decision changed: no -> yes"]


def test_a_yes_no_question_whose_passage_was_found_is_decided_not_declined(
    library: Settings, channel_only: None
) -> None:
    # No sentence reaches the quoting bar (set out of reach here; on PubMedQA a title-like
    # question often matches its finding's sentence at 0.5): the old code declined as weak
    # retrieval although the passage passed every passage-level check.
    assistant = _assistant(library, ScoringLLM(cue="beta blockers are first line"))
    assistant.settings = assistant.settings.model_copy(update={"quote_min_evidence": 0.99})
    answer = assistant.ask(YES_NO, record=False)
    assert not answer.abstained, answer.abstain_reason
    assert answer.decision is not None and answer.decision.label is DecisionLabel.NO


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        # nothing close in the library
        (
            "Should levothyroxine be started at a low dose in elderly patients with "
            "hypothyroidism?",
            "weak_retrieval",
        ),
        # close passages (diabetes screening), but none mentions the subject
        (
            "Should adults with type 2 diabetes be screened for diabetic retinopathy every year?",
            "not_in_library",
        ),
    ],
)
def test_off_library_yes_no_questions_are_still_declined(
    library: Settings, channel_only: None, question: str, reason: str
) -> None:
    llm = ScoringLLM(cue="x")
    answer = _assistant(library, llm).ask(question, record=False)
    assert answer.abstained and answer.decision is None
    assert (answer.abstain_reason or "").startswith(reason)
    assert not llm.scored and not llm.generated


# --- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "evidence", "expected"),
    [
        (
            "Does daily aspirin reduce recurrent stroke?",
            ["Daily aspirin reduced recurrent stroke.", "Aspirin is effective in preventing it."],
            DecisionLabel.YES,
        ),
        (
            "Does daily aspirin reduce recurrent stroke?",
            ["Daily aspirin did not reduce recurrent stroke.", "Aspirin is not effective."],
            DecisionLabel.NO,
        ),
        (
            "Is exercise training safe in patients with heart failure?",
            [
                "Exercise training was safe in patients with heart failure: no adverse events "
                "occurred in 200 patients.",
                "Exercise training is safe and improves quality of life in heart failure.",
            ],
            DecisionLabel.YES,
        ),
        pytest.param(
            "Is exercise training safe in patients with heart failure?",
            [
                "Exercise training was not safe in patients with heart failure: serious "
                "adverse events occurred in 40 of 200 patients.",
                "Exercise training is unsafe in heart failure.",
            ],
            DecisionLabel.NO,
            # the shipped cues read the results (here the last sentence) and count negations,
            # not negative adjectives: "unsafe" is no cue (docs/benchmarks.md)
            marks=pytest.mark.xfail(strict=True, reason="'unsafe' is not a negative cue"),
        ),
    ],
)
def test_packaged_model_decides_from_clear_evidence(
    packaged_llm: LLM,
    settings: Settings,
    question: str,
    evidence: list[str],
    expected: DecisionLabel,
) -> None:
    # the shipped settings and weights, as fitted on the PubMedQA dev half (text cues only:
    # the model is not asked)
    decision = decide.decide(packaged_llm, question, _sources(*evidence), settings)
    assert decision is not None
    assert decision.label is expected, decision.probabilities


# --- a guideline's stated decision ----------------------------------------------------------


def _lead(
    text: str, *, recommendation: bool = True, section: str = "Recommendation", doc: str = "doc"
) -> Any:
    from assistant.cite import Quote
    from core.types import Evidence

    evidence = Evidence(1, text, doc, "Guideline", section, 1, 0.7)
    return Quote(evidence, (0, 1), recommendation, 0.9)


@pytest.mark.parametrize(
    ("question", "statement", "expected"),
    [
        (
            "Should I start daily low-dose aspirin for primary prevention at 65?",
            "Age 60 and older: do not start low-dose aspirin for primary prevention (grade D).",
            DecisionLabel.NO,
        ),
        # a question about not doing it: the statement's polarity reversed
        (
            "Should aspirin for primary prevention be stopped at age 65?",
            "Age 60 and older: do not start low-dose aspirin for primary prevention (grade D).",
            DecisionLabel.YES,
        ),
        (
            "Is a beta blocker a reasonable first-line drug for uncomplicated hypertension?",
            "Beta blockers are not first line for uncomplicated hypertension; use them when "
            "there is a specific indication.",
            DecisionLabel.NO,
        ),
        (
            "Should pregnant and postpartum patients be screened for depression?",
            "Screen all adults for depression (grade B), including during pregnancy.",
            DecisionLabel.YES,
        ),
        # "no symptoms" names a population; it does not advise against anything
        (
            "Should adults aged 50 be screened for colorectal cancer?",
            "Ages 50 to 75: screen all adults who have no symptoms (grade A).",
            DecisionLabel.YES,
        ),
        # "who do not smoke" says whom the statement is for, not what to avoid
        (
            "Should adults who do not smoke be screened for lung cancer at 55?",
            "Do not screen adults who have never smoked (grade D).",
            DecisionLabel.NO,
        ),
        (
            "Should non-pregnant adults be screened for hepatitis C?",
            "Screen adults who are not pregnant once (grade B).",
            DecisionLabel.YES,
        ),
        # "did not recommend" advises against, as "does not" does
        (
            "Should a 90-year-old be screened for colorectal cancer?",
            "Over age 85: the Task Force did not recommend routine screening.",
            DecisionLabel.NO,
        ),
        # "Does <person> need X?" asks for advice
        (
            "Does a 30-year-old need hepatitis C screening?",
            "USPSTF 2020: screen adults aged 18 to 79 for hepatitis C (grade B).",
            DecisionLabel.YES,
        ),
        # advice for the alternative ("non-opioid") answers no about the thing itself
        (
            "Should opioids be the first treatment for chronic low back pain?",
            "For subacute and chronic pain, non-opioid options should come first.",
            DecisionLabel.NO,
        ),
        (
            "Should non-opioid options come first for chronic pain?",
            "For subacute and chronic pain, non-opioid options should come first.",
            DecisionLabel.YES,
        ),
        # allowed with care: neither yes nor no
        (
            "Should opioids be prescribed together with benzodiazepines?",
            "Use particular caution when prescribing opioids together with benzodiazepines.",
            DecisionLabel.UNCERTAIN,
        ),
        (
            "Should adults aged 80 be screened for colorectal cancer?",
            "Decide with the patient, taking into account overall health.",
            DecisionLabel.UNCERTAIN,
        ),
        # left to the person: neither yes nor no
        (
            "Should a 50-year-old with a 12% 10-year risk start aspirin?",
            "Ages 40 to 59 with a 10-year CVD risk of 10% or higher: the decision to start "
            "low-dose aspirin should be an individual one (grade C).",
            DecisionLabel.UNCERTAIN,
        ),
        (
            "Should adults over 80 be screened?",
            "Over 80: the evidence is insufficient to recommend for or against (grade I).",
            DecisionLabel.UNCERTAIN,
        ),
    ],
)
def test_a_guideline_statement_quoted_first_states_the_decision(
    question: str, statement: str, expected: DecisionLabel
) -> None:
    decision = decide.stated_decision(question, [_lead(statement)])
    assert decision is not None
    assert decision.label is expected
    assert decision.method.startswith(decide.STATED_METHOD)
    assert decision.evidence == [0, 1]  # the statement's own sentences


def test_findings_and_statements_that_advise_nothing_are_left_to_the_model() -> None:
    advice = "Should adults over 70 take aspirin to prevent stroke?"
    # a study's finding is not a recommendation statement
    finding = _lead("Aspirin did not reduce stroke (HR 0.95).", recommendation=False)
    assert decide.stated_decision(advice, [finding]) is None
    # an age band and an interval say for whom and how often, not what to do
    assert decide.stated_decision(advice, [_lead("Ages 70 to 74: every 2 years.")]) is None
    # a question about what a study found: an abstract's background statement does not
    # answer it ("It has been suggested...", "Current guidelines recommend...")
    background = _lead("Current guidelines recommend aspirin after a stroke.")
    assert decide.stated_decision(advice, [background]) is not None
    assert decide.stated_decision("Does aspirin reduce stroke after 70?", [background]) is None


def test_the_first_quoted_statement_for_the_questions_ages_decides() -> None:
    """A guideline often leads with whom it covers and says what to do in the next passage; a
    statement for other ages is passed over."""
    question = "Should a 55 year old smoker with 30 pack-years be screened for lung cancer?"
    population = _lead(
        "Adults aged 50 to 80 years who have no symptoms of lung cancer and who meet both "
        "smoking criteria: Smoking history: at least 20 pack-years."
    )
    other_ages = _lead("Younger than 50: do not screen (grade D).")
    graded = _lead(
        "Grade B: annual LDCT screening for adults aged 50 to 80 years with a 20 pack-year "
        "smoking history."
    )
    decision = decide.stated_decision(question, [population, other_ages, graded])
    assert decision is not None
    assert decision.label is DecisionLabel.YES
    assert decision.method == f"{decide.STATED_METHOD}:grade B"
    # without a statement that says what to do, the fitted model decides
    assert decide.stated_decision(question, [population, other_ages]) is None


def test_the_clause_for_the_questions_population_decides() -> None:
    """One statement, two populations: "Adolescents ... should also be screened (grade B);
    the evidence for children aged 11 and younger was insufficient" was read whole, its
    "insufficient" made the adolescents' answer uncertain, and for an 8-year-old its first
    clause's ages passed it over for the adults' statement ("Screen all adults"): yes."""
    both = _lead(
        "Adolescents aged 12 to 18 years should also be screened for major depressive "
        "disorder (USPSTF 2022, grade B); the evidence for children aged 11 and younger was "
        "insufficient."
    )
    adults = _lead("Screen all adults for depression (grade B).")
    teens = decide.stated_decision("Should adolescents be screened for depression?", [both])
    assert teens is not None and teens.label is DecisionLabel.YES
    assert teens.method == f"{decide.STATED_METHOD}:grade B"
    child = decide.stated_decision(
        "Should children aged 8 be screened for depression?", [both, adults]
    )
    assert child is not None and child.label is DecisionLabel.UNCERTAIN
    assert child.method == decide.STATED_METHOD  # the grade was the other clause's
    # a question that names no population its clauses tell apart reads the whole statement
    whole = decide.stated_decision("Should we screen for depression?", [both])
    assert whole is not None and whole.label is DecisionLabel.UNCERTAIN


def test_a_preference_among_options_is_not_advice_against() -> None:
    question = "Should children get the flu vaccine?"
    allowed = _lead(
        "Any licensed, age-appropriate vaccine may be used; ACIP does not prefer one product "
        "over another for adults under 65."
    )
    decision = decide.stated_decision(question, [allowed])
    assert decision is not None and decision.label is DecisionLabel.YES
    against = _lead("Adults under 65 should not receive the high-dose vaccine.")
    decision = decide.stated_decision(question, [against])
    assert decision is not None and decision.label is DecisionLabel.NO


def test_men_and_women_are_adults_not_adolescents() -> None:
    """ "Should men be screened for depression?" read the adolescents' statement (quoted
    first) as if it were for men, and its "insufficient" made the answer uncertain."""
    teens = _lead(
        "Adolescents aged 12 to 18 years should also be screened for major depressive "
        "disorder (grade B); the evidence for children aged 11 and younger was insufficient."
    )
    adults = _lead("Screen all adults for depression (grade B).")
    for question in ("Should men be screened for depression?", "Should a woman be screened?"):
        decision = decide.stated_decision(question, [teens, adults])
        assert decision is not None and decision.label is DecisionLabel.YES, question
        assert decision.evidence == list(adults.indices)
    boys = decide.stated_decision("Should boys aged 13 be screened for depression?", [teens])
    assert boys is not None and boys.label is DecisionLabel.YES


def test_a_negation_in_the_reason_given_is_not_advice_against() -> None:
    """ "Anyone who asks for a test should get one, since some people do not want to disclose
    risk behavior" decided no for "Should people aged 80 get hepatitis C screening?"."""
    asks = _lead(
        "Anyone who asks for a test should get one, since some people do not want to "
        "disclose risk behavior."
    )
    decision = decide.stated_decision("Should people aged 80 get hepatitis C screening?", [asks])
    assert decision is not None and decision.label is DecisionLabel.YES
    against = _lead("Do not screen people older than 79, since the benefit is small.")
    decision = decide.stated_decision("Should people aged 80 get hepatitis C screening?", [against])
    assert decision is not None and decision.label is DecisionLabel.NO


def test_statements_pointing_opposite_ways_leave_the_decision_uncertain() -> None:
    """ "Can a pregnant woman get the flu shot?" was decided no by the abstract-fitted cues
    from "LAIV must not be used in pregnancy", beside "Pregnancy: vaccinate during any
    trimester with an inactivated vaccine". Opposite unconditional statements leave it to what
    differs between them; a conditional one ("Stop screening when...") contradicts nothing."""
    question = "Can a pregnant woman get the flu shot?"
    assert decide._ASKS_ADVICE.search(question)  # may this person have it: advice
    assert not decide._ASKS_ADVICE.search("Can aspirin prevent stroke in women?")  # a finding
    vaccinate = _lead(
        "Pregnancy: vaccinate during any trimester with an inactivated or recombinant vaccine."
    )
    laiv = _lead("The live attenuated vaccine (LAIV) must not be used in pregnancy.")
    assert recommendations.describe(vaccinate.evidence.text, 0, 60).recommends
    decision = decide.stated_decision(question, [vaccinate, laiv])
    assert decision is not None
    assert decision.label is DecisionLabel.UNCERTAIN
    assert decision.method == f"{decide.STATED_METHOD}:{decide.DISAGREE}"
    assert decision.evidence == [0, 1]  # both statements' sentences, once each
    assert decide.stated_decision(question, [vaccinate]).label is DecisionLabel.YES  # type: ignore[union-attr]


# (question, the quoted statements in order (text, or text and heading), decision): a
# statement under a condition, about something the question does not name, or a report
# contradicts nothing; one for someone else (other ages, even in its heading; another life
# stage, sex or smoking status; a risk threshold that leaves the question's risk out) is
# passed over
_PASSED_OVER: list[tuple[str, list[str | tuple[str, str]], DecisionLabel | None]] = [
    # it names "taking hydroxyurea" but not the pregnancy the first one is about (was
    # "uncertain": the two were read as disagreeing; a real federal guideline's quotes)
    (
        "Should a woman with sickle cell anemia keep taking hydroxyurea while pregnant?",
        [
            "In females who are pregnant or breastfeeding, discontinue hydroxyurea therapy.",
            "Both males and females of reproductive age should be counseled regarding the "
            "need for contraception while taking hydroxyurea.",
        ],
        DecisionLabel.NO,
    ),
    (
        "Should a 60-year-old who smokes be screened for lung cancer?",
        [
            "Grade B: annual LDCT screening for adults aged 50 to 80 years who smoke.",
            "Stop screening when the person has not smoked for 15 years.",
        ],
        DecisionLabel.YES,
    ),
    (
        "Is a chest x-ray acceptable for lung cancer screening?",
        [
            "LDCT is the only recommended test; chest x-ray and sputum cytology are not "
            "recommended for screening.",
            "Screening programs should use a structured reporting system.",
        ],
        DecisionLabel.NO,
    ),
    (
        "Should a sexually active 19-year-old have a Pap test?",
        [
            "Younger than 21: do not screen (grade D), whatever the sexual history.",
            (
                "Cervical cytology (Pap test) alone every 3 years (grade A).",
                "Recommendation > Ages 21 to 29",
            ),
            "Before stopping at 65, a patient should have had 3 negative test results.",
        ],
        DecisionLabel.NO,
    ),
    (
        "Should all adults be screened for depression?",
        [
            "Adolescents aged 12 to 18 should not be screened for depression (grade D).",
            "Screen all adults for depression (grade B).",
        ],
        DecisionLabel.YES,
    ),
    (
        "Should all adults be screened for depression?",
        ["Adolescents aged 12 to 18 should not be screened for depression (grade D)."],
        None,
    ),
    (
        "Should a 70-year-old woman who never smoked be screened for aneurysm?",
        [
            "Men aged 65 to 75 who have never smoked: offer screening to selected men.",
            "Women who have never smoked: do not screen (grade D).",
        ],
        DecisionLabel.NO,
    ),
    (
        "Should a 70-year-old man who never smoked be screened for aneurysm?",
        [
            "Men aged 65 to 75 who have ever smoked: one-time screening (grade B).",
            "Men aged 65 to 75 who have never smoked: offer it to some (grade C).",
        ],
        DecisionLabel.UNCERTAIN,
    ),
    (
        "Should a 60-year-old with a 12% 10-year risk take a statin?",
        [
            "Ages 40 to 75 with a risk of 7.5% to less than 10%: offer a statin (grade C).",
            "Ages 40 to 75 with a risk of 10% or higher: prescribe a statin (grade B).",
        ],
        DecisionLabel.YES,
    ),
    (
        # quit longer ago than "within the past 15 years": the stopping rule is the one left
        "Should a 77-year-old who quit smoking 20 years ago be screened for lung cancer?",
        [
            "Adults aged 50 to 80 years who meet both smoking criteria: at least 20 "
            "pack-years; currently smoke, or quit smoking within the past 15 years.",
            "Grade B: annual LDCT screening for adults aged 50 to 80 years with a 20 "
            "pack-year smoking history who currently smoke or have quit within the past 15 "
            "years.",
            "Stop screening when any of these applies: the person has not smoked for 15 years.",
        ],
        DecisionLabel.NO,
    ),
    (
        "Should I start daily low-dose aspirin at 65?",
        [
            "Age 60 and older: do not start low-dose aspirin (grade D).",
            "For people already taking aspirin, modeling suggested little added benefit.",
        ],
        DecisionLabel.NO,
    ),
]


@pytest.mark.parametrize(("question", "statements", "expected"), _PASSED_OVER)
def test_a_statement_for_someone_else_or_that_contradicts_nothing_is_passed_over(
    question: str, statements: list[str | tuple[str, str]], expected: DecisionLabel | None
) -> None:
    quotes = [_lead(s) if isinstance(s, str) else _lead(s[0], section=s[1]) for s in statements]
    decision = decide.stated_decision(question, quotes)
    assert (decision.label if decision is not None else None) is expected
    if decision is not None:
        assert decision.method != f"{decide.STATED_METHOD}:{decide.DISAGREE}"


def test_a_question_that_tells_the_case_first_still_asks_for_advice() -> None:
    """ "A health-care worker still has anti-HBs below 10 mIU/mL after a full hepatitis B
    series. Should she get more vaccine doses?" was left to the abstract-fitted model, which
    said no to "...should receive 2 additional vaccine doses": its "Should" was not first."""
    question = (
        "A health-care worker still has anti-HBs below 10 mIU/mL after a full hepatitis B "
        "series. Should she get more vaccine doses?"
    )
    assert decide.asks_advice(question)
    assert not decide.asks_advice("Aspirin was given after the stroke. Did it reduce deaths?")
    statement = _lead(
        "HCP whose anti-HBs remains <10 mIU/mL should receive 2 additional vaccine doses."
    )
    decision = decide.stated_decision(question, [statement])
    assert decision is not None and decision.label is DecisionLabel.YES


def test_another_guidelines_instruction_contradicts_nothing() -> None:
    """Opposite instructions leave a decision uncertain only within one guideline: hepatitis
    C's "Anyone who asks for a test should get one" is about its own test."""
    question = "Should a 20-year-old have a Pap test?"
    pap = _lead("Younger than 21: do not screen (grade D).", doc="cervical")
    hcv = _lead("Anyone who asks for a test should get one.", doc="hepatitis-c")
    decision = decide.stated_decision(question, [pap, hcv])
    assert decision is not None and decision.label is DecisionLabel.NO
    same = _lead("Anyone who asks for a test should get one.", doc="cervical")
    decision = decide.stated_decision(question, [pap, same])
    assert decision is not None and decision.method.endswith(decide.DISAGREE)


def test_a_stated_age_reads_the_leading_guidelines_passage_for_it(library: Settings) -> None:
    """ "Should a 20-year-old have a Pap test?" retrieved the cervical guideline's "Ages 21 to
    29" and "Ages 30 to 65" passages, not "When Not to Screen"; the answer led with another
    guideline's "Anyone who asks for a test should get one" and its decision named no quoted
    sentence. The passage whose statement holds the age is read, and leads."""
    answer = _assistant(library, ExtractiveLLM()).ask(
        "Should a 20-year-old have a Pap test?", record=False
    )
    assert answer.sentences[0].text.startswith("Younger than 21: do not screen (grade D)")
    assert answer.citations[0].doc_id == "cervical-cancer-screening"
    assert answer.decision is not None and answer.decision.label is DecisionLabel.NO
    assert answer.decision.method == f"{decide.STATED_METHOD}:grade D"
    assert decide.cited(answer.decision, answer)  # its evidence is a citation shown


def test_a_decision_names_only_the_citations_the_reader_sees(library: Settings) -> None:
    """The findings model reads every retrieved passage of the cited document; the line
    naming its evidence used to print source numbers with no citation beside it ([6], [7])."""
    import dataclasses

    answer = _assistant(library, ExtractiveLLM()).ask(
        "Should a 55 year old smoker with 30 pack-years be screened for lung cancer?",
        record=False,
    )
    assert answer.decision is not None
    assert answer.decision.label is DecisionLabel.YES
    assert answer.decision.method.startswith(decide.STATED_METHOD)
    shown = {getattr(c, "label", 0) or c.n for c in answer.citations}
    assert set(decide.cited(answer.decision, answer)) <= shown
    # a decision read from passages that are not all cited names only the cited ones
    every = list(range(len(answer.source_sentences)))
    wider = dataclasses.replace(answer.decision, evidence=every)
    assert set(decide.cited(wider, answer)) == shown


def test_a_guideline_yes_no_question_is_decided_by_the_statement_quoted_first(
    library: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the sample library: the answer leads with the grade D statement against aspirin at
    60 and older, and the decision says no (the abstract-fitted cues decided yes)."""
    answer = _assistant(library, ExtractiveLLM()).ask(
        "Should I start daily low-dose aspirin for primary prevention in a healthy 65-year-old?",
        record=False,
    )
    assert answer.decision is not None and not answer.abstained
    assert answer.sentences[0].text.startswith("Age 60 and older: do not start low-dose aspirin")
    assert answer.decision.label is DecisionLabel.NO
    assert answer.decision.method.startswith(decide.STATED_METHOD)
    shown = {i for i in answer.sentences[0].evidence}
    assert set(answer.decision.evidence) == shown
    # the record says the statement decided: no prompt, no fitted weights
    assert answer.generation is not None
    assert answer.generation.template == f"{decide.STATED_METHOD}:no-prompt"
    assert answer.generation.decoding["weights_sha256"] is None
    # the CLI says so in words under the decision
    from ui.cli.main import print_answer

    print_answer(answer)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Decision: no (from [1]")
    assert lines[1] == "  Stated by the quoted recommendation (grade D)"
