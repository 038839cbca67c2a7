"""The rare-term check: a question word rare in English that no retrieved passage mentions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from assistant import coverage
from core.backends.bm25 import BM25Index
from core.config import Settings
from core.types import Chunk, Hit
from ui.render import abstain_reason_text

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


def _hit(text: str, title: str = "Guideline", section: str = "") -> Hit:
    chunk = Chunk(
        chunk_id="c1",
        doc_id="d1",
        text=text,
        title=title,
        section=section,
        page=None,
        char_start=0,
        char_end=len(text),
        doc_sha256="0" * 64,
        source_path="d1.md",
        ingested_at="2026-01-01T00:00:00Z",
    )
    return Hit(chunk=chunk, score=1.0)


@pytest.fixture(scope="module")
def stem(tmp_path_factory: pytest.TempPathFactory) -> coverage.Stemmer:
    # the lexical index's own stemmer (PyStemmer), as the pipeline uses it
    from core.backends.base import LexicalIndex

    index = BM25Index(Settings(home=tmp_path_factory.mktemp("stem")))
    assert isinstance(index, LexicalIndex)  # the protocol the pipeline relies on
    return index.stem


def test_specific_terms_are_the_words_rare_in_general_english() -> None:
    q = "What are the symptoms of Oculoectodermal syndrome and how is it treated?"
    assert coverage.specific_terms(q, 3.0) == ["oculoectodermal"]
    # common words and abbreviations never count, whatever the threshold
    assert coverage.specific_terms("LDL, PrEP, HbA1c or FIT?", 8.0) == []
    assert coverage.specific_terms(q, 0.0) == []
    # a higher threshold admits more words, in question order, once each
    assert coverage.specific_terms("Is aspirin or aspirin with warfarin safe?", 3.5) == [
        "aspirin",
        "warfarin",
    ]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("vaccin", "vaccin", True),
        ("vacin", "vaccin", True),  # insertion
        ("vaccin", "vacin", True),  # deletion
        ("vaccen", "vaccin", True),  # substitution
        ("vacine", "vaccin", False),  # two edits
        ("abc", "abcde", False),
    ],
)
def test_one_edit(a: str, b: str, expected: bool) -> None:
    assert coverage._one_edit(a, b) is expected


def test_check_finds_the_missing_subject_and_forgives_inflection_and_typos(
    stem: coverage.Stemmer,
) -> None:
    hits = [
        _hit("Screen men who ever smoked once for abdominal aortic aneurysms by ultrasonography."),
        _hit("Annual influenza vaccination for adults.", title="Vaccination"),
    ]
    result = coverage.check("Who needs ultrasonography for an aneurysm?", hits, stem, 3.0)
    assert result.covered and result.specific == ("ultrasonography",)
    assert coverage.check("Is a vacination needed yearly?", hits, stem, 3.0).covered
    partly = coverage.check("How is choroideremia inherited after aneurysm?", hits, stem, 3.5)
    assert partly.specific == ("choroideremia", "aneurysm")
    assert partly.missing == ("choroideremia",)
    assert partly.covered  # one rare word of two is there: maybe a paraphrase, answer
    absent = coverage.check("Is choroideremia inherited like spherocytosis?", hits, stem, 3.0)
    assert absent.missing == absent.specific == ("choroideremia", "spherocytosis")
    assert not absent.covered  # none is: the subject is not in these passages
    # the title and section count as part of the passage
    assert coverage.check(
        "Does the choroideremia section say?", [_hit("text", section="Choroideremia")], stem, 3.0
    ).covered
    assert not coverage.check("How is choroideremia inherited?", hits, stem, 3.0).covered
    assert coverage.check("How is choroideremia inherited?", hits, stem, 0.0).covered  # off


def test_british_spellings_meet_american_ones(stem: coverage.Stemmer) -> None:
    """A question in British spelling over an American guideline is covered: "-isation" and
    "-ised" stem more than one edit away from "-ization" and "-ized"; "ae" and "oe" do not."""
    hits = [_hit("Hepatitis B immunization for adults at risk; hospitalization is rare. Check "
                 "hemoglobin in randomized trials of esophageal disease.")]  # fmt: skip
    for question in (
        "Which adults need immunisation?",
        "How often is hospitalisation needed?",
        "Were the trials randomised?",
        "What haemoglobin is the target?",
        "Is oesophageal disease covered?",
    ):
        result = coverage.check(question, hits, stem, 3.0)
        assert result.specific, question  # the question has a rare word, and it is found
        assert result.covered and not result.missing, question
    american = [_hit("Immunisation of adults; randomised trials.")]
    assert coverage.check("Which adults need immunization?", american, stem, 3.2).covered
    assert not coverage.check(
        "Is choroideremia immunised?", [_hit("Annual flu shots.")], stem, 3.0
    ).covered


def test_the_subject_of_a_condition_counts_however_common_the_word(
    stem: coverage.Stemmer,
) -> None:
    """ "prostate" is common in English (Zipf 3.7), so the rare-word test passed a PSA question
    over a library without a prostate guideline, which then quoted colorectal age bands. The
    word naming the condition's subject is checked whatever its frequency."""
    colorectal = [
        _hit("Ages 45 to 49: screen all adults for colorectal cancer (grade B).",
             title="Colorectal Cancer Screening"),
        _hit("Ages 76 to 85: offer screening selectively (grade C)."),
    ]  # fmt: skip
    psa = "At what age should PSA-based prostate cancer screening be discussed with men?"
    assert coverage.subject_terms(psa) == ["prostate"]
    result = coverage.check(psa, colorectal, stem, 3.0)
    assert result.missing == result.specific == ("prostate",)
    assert not result.covered
    prostate = [_hit("Men aged 55 to 69: discuss PSA-based screening for prostate cancer.")]
    assert coverage.check(psa, prostate, stem, 3.0).covered
    asked = "At what age should colorectal cancer screening start?"
    assert coverage.check(asked, colorectal, stem, 3.0).covered
    # words saying how, not what, are no subject; the check off is off for subjects too
    assert coverage.subject_terms("Is early cancer or chronic disease treated?") == []
    # nor a verb before an unmodified condition (a PubMedQA title, declined for "improve")
    assert coverage.subject_terms("Can fusion biopsy improve cancer detection?") == []
    assert coverage.check(psa, colorectal, stem, 0.0).covered


def test_passages_that_never_name_the_subject_do_not_cover_it(stem: coverage.Stemmer) -> None:
    """A library with an influenza guideline only answered a zoster vaccine question with the
    flu shot's dose: "recombinant", the question's other rare word, is in the flu passages,
    so not every specific word was missing. The subject must be named."""
    flu = [
        _hit("Adults receive a single dose each season: 0.5 mL by intramuscular injection for "
             "the inactivated and recombinant vaccines.", title="Adult Influenza Vaccination"),
    ]  # fmt: skip
    zoster = "What is the dosing schedule of the recombinant zoster vaccine for adults over 50?"
    assert coverage.subject_terms(zoster) == ["zoster"]
    result = coverage.check(zoster, flu, stem, 3.0)
    assert result.missing == ("zoster",) and "recombinant" in result.specific
    assert not result.covered
    assert coverage.check(
        "Who should get the recombinant influenza vaccine?", flu, stem, 3.0
    ).covered
    shingles = [_hit("Give two doses of recombinant zoster vaccine, 2 to 6 months apart.")]
    assert coverage.check(zoster, shingles, stem, 3.0).covered
    assert coverage.check(zoster, flu, stem, 0.0).covered  # the check off


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HbA1c targets for adults with type 1 diabetes?", [("1", "type 1 diabetes")]),
        ("Type II diabetes mellitus", [("2", "Type II diabetes")]),
        ("diabetes mellitus type 2", [("2", "diabetes mellitus type 2")]),
        ("What are the symptoms of Long QT syndrome 3 ?", [("3", "QT syndrome 3")]),
        ("Charcot-Marie-Tooth disease type 2G", [("2g", "Charcot-Marie-Tooth disease type 2G")]),
        ("Who should be screened for hepatitis B?", [("b", "hepatitis B")]),
        ("Gingival fibromatosis, 1", [("1", "Gingival fibromatosis, 1")]),
        # numbers and types that name no subtype
        ("Should screening stop at age 75?", []),
        ("Start with a thiazide-type diuretic.", []),
        ("Screen adults with diabetes every 3 years.", []),
        ("Repeat the test in 2 years, or after type changes.", []),
    ],
)
def test_numbered_and_lettered_subtypes(
    stem: coverage.Stemmer, text: str, expected: list[tuple[str, str]]
) -> None:
    assert [(s.mark, s.text) for s in coverage.subtypes(text, stem)] == expected


def test_passages_on_another_subtype_do_not_cover_the_one_asked(stem: coverage.Stemmer) -> None:
    """A library with a type 2 diabetes guideline answered a type 1 question with the type 2
    HbA1c targets: every word of the question is in its passages, so only the subtype's
    number tells them apart."""
    type2 = [
        _hit("The ADA suggests an HbA1c goal below 7% for many nonpregnant adults.",
             title="Type 2 Diabetes - Screening and Glycemic Targets"),
    ]  # fmt: skip
    question = "What HbA1c target is recommended for adults with type 1 diabetes?"
    assert coverage.check(question, type2, stem, 3.0).covered  # the word check cannot see it
    other = coverage.other_subtype(question, type2, stem)
    assert other is not None and str(other) == "type 1 diabetes (only Type 2 Diabetes)"
    assert coverage.other_subtype("HbA1c target in type II diabetes?", type2, stem) is None
    # passages that name the subtype asked, or no subtype of the condition, may hold it
    both = [*type2, _hit("In type 1 diabetes, HbA1c below 7% is also a common goal.")]
    assert coverage.other_subtype(question, both, stem) is None
    plain = [_hit("Adults with diabetes: moderate-intensity statin.", title="Statins")]
    assert coverage.other_subtype(question, plain, stem) is None
    hcv = [_hit("Screen all adults aged 18 to 79 once.", title="Hepatitis C Screening")]
    other = coverage.other_subtype("Who should be screened for hepatitis B?", hcv, stem)
    assert other is not None and other.held == ("Hepatitis C",)
    assert coverage.other_subtype("Who should be screened for hepatitis C?", hcv, stem) is None


def test_passages_for_adults_only_do_not_cover_a_question_about_children() -> None:
    """A library without children's guidance quoted "screening now begins at age 45" for a
    question about children, and the adults' blood pressure goal for children."""
    colorectal = [
        _hit("Ages 45 to 49: screen all adults (grade B).", title="Colorectal Cancer Screening"),
        _hit("The main change in 2021 is that screening now begins at age 45."),
    ]
    question = "At what age should children start colorectal cancer screening?"
    other = coverage.other_population(question, colorectal)
    assert other is not None and str(other) == "children (only adults)"
    teens = "Should teenagers with hypertension be treated with drugs?"
    assert str(coverage.other_population(teens, colorectal)) == "teenagers (only adults)"
    # passages that name the young (even to leave them out) or ages under 18 are left alone
    named = [*colorectal, _hit("This summary does not cover children.")]
    assert coverage.other_population(question, named) is None
    younger = [*colorectal, _hit("Younger than 21: do not screen (grade D).")]
    assert coverage.other_population(question, younger) is None
    # a question about adults too, or about no young population, is not this check's
    assert coverage.other_population("Should adults and children be screened?", colorectal) is None
    assert coverage.other_population("When should screening start?", colorectal) is None
    # passages that address no population at all say nothing either way
    assert coverage.other_population(question, [_hit("Colonoscopy every 10 years.")]) is None


def test_a_guideline_for_one_sex_does_not_cover_the_other() -> None:
    """ "Should men get screening mammograms?" was answered yes from "Ages 40 to 74: biennial
    screening mammography (grade B)", a guideline for women. Only the leading document says
    whom it is for: another guideline's "men" (an aneurysm passage) does not cover it."""

    def hit(doc: str, text: str) -> Hit:
        h = _hit(text)
        return Hit(chunk=replace(h.chunk, doc_id=doc), score=1.0)

    breast = [
        hit("breast", "Ages 40 to 74: biennial screening mammography (grade B)."),
        hit("aaa", "Among men aged 65 to 75, one-time screening reduces AAA rupture."),
        hit("breast", "Women and other people assigned female at birth, aged 40 and older."),
    ]
    other = coverage.other_population("Should men get screening mammograms?", breast)
    assert other is not None and str(other) == "men (only women)"
    assert coverage.other_population("Should women get screening mammograms?", breast) is None
    assert coverage.other_population("Should adults get screening mammograms?", breast) is None
    aaa_first = [breast[1], *breast[:1], breast[2]]
    assert coverage.other_population("Should men be screened for AAA?", aaa_first) is None


def test_ui_names_the_missing_words() -> None:
    text = abstain_reason_text("not_in_library (no retrieved passage mentions acne, vulgaris)")
    assert "acne, vulgaris" in text and "{" not in text
    assert abstain_reason_text("weak_retrieval (best relevance 0.20)").startswith("no passage")
    assert abstain_reason_text("something {odd}") == "something {odd}"


def test_replay_puts_back_the_recorded_checks(settings: Settings) -> None:
    from core.config import with_answer_settings as recorded_settings

    new = recorded_settings(
        settings, {"abstain_rare_term_zipf": 2.5, "quote_min_evidence": 0.7, "top_k": 3}
    )
    assert (new.abstain_rare_term_zipf, new.quote_min_evidence) == (2.5, 0.7)
    # a record from before the check existed was answered without it
    assert recorded_settings(settings, {"llm": "transformers"}).abstain_rare_term_zipf == 0.0


def _questions(answerable: bool) -> list[str]:
    rows = json.loads((SAMPLES / "example_questions.json").read_text(encoding="utf-8"))
    return [r["question"] for r in rows if bool(r["expected_file"]) is answerable]


def test_library_questions_pass_and_uncovered_subjects_abstain_before_generation(
    library: Settings,
) -> None:
    """Real retriever, embedder and Chroma; the model is never loaded for these abstentions."""
    from assistant.pipeline import Assistant
    from assistant.policy import ABSTAIN_TEXT
    from assistant.retrieve import Retriever

    retriever = Retriever(library)
    for q in _questions(answerable=True):
        hits = retriever.retrieve(q)
        result = coverage.check(q, hits, retriever.lexical.stem, library.abstain_rare_term_zipf)
        assert result.covered, (q, result.missing)

    assistant = Assistant(library, retriever=retriever)
    # relevance alone does not decline this one (0.55 here: eye care sits near diabetes care)
    uncovered = "How often should adults with diabetes have a dilated eye exam for retinopathy?"
    answer = assistant.ask(uncovered, record=False)
    assert answer.abstained and answer.answer == ABSTAIN_TEXT
    assert answer.abstain_reason is not None
    assert answer.abstain_reason.startswith("not_in_library")
    assert "retinopathy" in answer.abstain_reason
    assert answer.generation is None and answer.nearest_documents
    recorded = assistant.ask(uncovered)
    payload = assistant.audit.get(recorded.audit_id).payload
    assert payload["abstain_reason"] == answer.abstain_reason
    assert payload["settings"]["abstain_rare_term_zipf"] == library.abstain_rare_term_zipf


def test_a_question_on_another_subtype_or_population_abstains_before_generation(
    library: Settings,
) -> None:
    """Real retriever on data_samples (a type 2 diabetes and a hepatitis C guideline, and
    colorectal screening for adults): the type 1, hepatitis B and children's questions decline
    and say why; none of the library's own example questions is taken for another subtype or
    population."""
    from assistant.pipeline import Assistant
    from assistant.policy import before_generation, explain
    from assistant.retrieve import Retriever

    retriever = Retriever(library)
    for q in _questions(answerable=True):
        hits = retriever.retrieve(q)
        assert coverage.other_subtype(q, hits, retriever.lexical.stem) is None, q
        assert coverage.other_population(q, hits) is None, q
    assistant = Assistant(library, retriever=retriever)
    for question, asked in (
        ("What HbA1c target is recommended for adults with type 1 diabetes?", "type 1 diabetes"),
        ("Who should be screened for hepatitis B?", "hepatitis B"),
        ("At what age should children start colorectal cancer screening?", "children"),
        # whom the breast guideline is for is said once, in its "Population" passage, which
        # the question's sex has read in (Assistant._sex_passage)
        ("Should men get screening mammograms?", "men"),
    ):
        answer = assistant.ask(question, record=False)
        assert answer.abstained and answer.generation is None, answer.answer
        assert answer.abstain_reason is not None
        assert answer.abstain_reason.startswith("not_in_library")
        assert f"never mention {asked} (only " in explain(answer.abstain_reason)
    question = "What HbA1c target is recommended for adults with type 1 diabetes?"
    hits, stem = retriever.retrieve(question), retriever.lexical.stem
    assert before_generation(question, hits, library, stem) is not None
    off = library.model_copy(update={"abstain_other_subtype": False})
    assert before_generation(question, hits, off, stem) is None  # the setting turns it off


def test_a_hashed_record_keeps_the_missing_words_that_the_screen_shows(
    library: Settings,
) -> None:
    """With audit_questions = hashed the reason's words are the question's: off the record
    (and so off every export), still on the clinician's screen."""
    from assistant.pipeline import Assistant
    from assistant.retrieve import Retriever

    hashed = library.model_copy(update={"audit_questions": "hashed"})
    assistant = Assistant(hashed, retriever=Retriever(hashed))
    uncovered = "How often should adults with diabetes have a dilated eye exam for retinopathy?"
    answer = assistant.ask(uncovered)
    assert answer.abstain_reason is not None and "retinopathy" in answer.abstain_reason
    assert "retinopathy" in abstain_reason_text(answer.abstain_reason)
    payload = assistant.audit.get(answer.audit_id).payload
    assert payload["abstain_reason"].startswith("not_in_library (no retrieved passage mentions ")
    assert "[hashed]" in payload["abstain_reason"]
    assert "retinopathy" not in json.dumps(payload).lower()
