"""The entailment rules (assistant/verify.py) one by one, then the pair set through align().

The rule tests need no model. The set test runs every pair of
evaluation/sets/entailment_pairs.jsonl through the real ``align()`` decision with the real
packaged embedder: each pair's evidence is one retrieved passage under its guideline's title.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from assistant.verify import is_drug, problems, quantities

PAIRS = Path(__file__).resolve().parents[1] / "evaluation" / "sets" / "entailment_pairs.jsonl"
KINDS = {
    "paraphrase", "negation", "quantifier", "number", "unit", "age", "interval", "drug",
    "population", "added_claim", "invented_word",
}  # fmt: skip


def reasons(sentence: str, *evidence: str) -> list[str]:
    return problems(sentence, list(evidence))


# --- negation ----------------------------------------------------------------------------


def test_an_added_negation_is_caught_and_a_kept_one_passes() -> None:
    e = "Adults aged 60 and older: do not start low-dose aspirin for primary prevention."
    assert reasons("Adults 60 and older should not start low-dose aspirin.", e) == []
    ev = "Men aged 65 to 75 who have ever smoked: one-time screening with ultrasonography."
    found = reasons("Men aged 65 to 75 who have not smoked need one-time ultrasonography.", ev)
    assert any(r.startswith("negation: 'not'") for r in found)


def test_a_negation_elsewhere_in_the_evidence_does_not_license_one() -> None:
    e = "Adults who have no symptoms and currently smoke are screened every year."
    found = reasons("Adults who never smoked are screened every year.", e)
    assert "negation: 'never' absent from the evidence" in found


def test_a_dropped_negation_is_caught() -> None:
    e = "Beta blockers are not first line for uncomplicated hypertension."
    found = reasons("Beta blockers are first-line drugs for uncomplicated hypertension.", e)
    assert any("drops it" in r for r in found)
    assert reasons("For uncomplicated hypertension, beta blockers are not first line.", e) == []
    # another subject, negated in the evidence, says nothing about this one
    e2 = "LDCT is the only recommended test; chest x-ray is not recommended for screening."
    assert not any("drops it" in r for r in reasons("LDCT is the only recommended test.", e2))


def test_rather_than_negates_what_follows_it() -> None:
    e = "When starting opioids, prescribe immediate-release rather than extended-release opioids."
    found = reasons("When starting opioids, prescribe extended-release opioids.", e)
    assert any("drops it" in r for r in found)


def test_a_negated_condition_needs_its_condition() -> None:
    e = "Do not start metformin when eGFR is between 30 and 45."
    assert not any("drops" in r for r in reasons("Start metformin with meals.", e))
    assert any("drops" in r for r in reasons("Start metformin when eGFR is 30 to 45.", e))


def test_an_uncertain_statement_cannot_become_an_assertion() -> None:
    e = "There is not enough evidence to say whether supplemental MRI for dense breasts helps."
    found = reasons("Supplemental MRI for dense breasts helps.", e)
    assert "certainty: the evidence is uncertain, the sentence asserts" in found


# --- quantifiers -------------------------------------------------------------------------


def test_quantifiers_must_be_the_evidences() -> None:
    e = "Ages 45 to 49: screen all adults (grade B)."
    assert reasons("Screen all adults aged 45 to 49.", e) == []
    assert "quantifier 'any' not in the evidence" in reasons("Screen adults at any age.", e)
    assert "quantifier 'only' not in the evidence" in reasons("Screen only adults aged 45.", e)
    # synonyms of one quantifier pass: every ~ all ~ each
    assert reasons("Screen every adult aged 45 to 49.", e) == []


def test_a_quantifier_is_read_against_the_statement_it_speaks_of() -> None:
    e = [
        "Screen all adults for depression (grade B).",
        "For suicide risk, clinicians may screen selected adults who present with symptoms.",
    ]
    assert problems("Screen all adults for depression.", e) == []
    found = problems("Clinicians may screen all adults for suicide risk.", e)
    assert "quantifier 'all' not in the evidence" in found


def test_every_in_an_interval_is_not_a_quantifier() -> None:
    assert reasons("Mammography every 2 years.", "Biennial mammography (grade B).") == []


# --- numbers, units, ages, intervals -----------------------------------------------------


def test_a_changed_number_is_caught() -> None:
    e = "Stage 1 hypertension: systolic 130 to 139 mm Hg."
    assert reasons("Stage 1 means systolic 130 to 139 mm Hg.", e) == []
    assert "number 135 not in the evidence" in reasons("Stage 1 means systolic 135 to 139.", e)
    assert "number 11 not in the evidence" in reasons("The HbA1c target is 11.0%.", e)


def test_units_must_agree() -> None:
    e = "Low-dose aspirin is usually 81 mg once a day."
    assert reasons("Low-dose aspirin is usually 81 mg daily.", e) == []
    assert any(r.startswith("unit:") for r in reasons("Low-dose aspirin is usually 81 g.", e))
    rate = "A decrease of about 10% per month is a common starting point."
    assert reasons("A decrease of 10% per week is a common starting point.", rate)
    # a unit the evidence gives the range's other end
    bp = "Stage 2: systolic 140 or higher or diastolic 90 or higher mm Hg."
    assert reasons("Stage 2 starts at a systolic of 140 mg or higher.", bp)


def test_the_direction_of_a_bound_must_agree() -> None:
    e = "The ADA suggests an HbA1c goal below 7% for many adults."
    found = reasons("The ADA suggests an HbA1c goal above 7% for many adults.", e)
    assert any(r.startswith("direction:") for r in found)
    assert reasons("The ADA suggests an HbA1c goal under 7% for many adults.", e) == []


def test_ages_and_age_ranges() -> None:
    e = "Ages 45 to 49: screen all adults (grade B)."
    assert "age 40 differs from the evidence (45, 49)" in reasons(
        "Screen all adults aged 40 to 49.", e
    )
    q = quantities("Adults aged 50 to 80 years and people 65 and older.")
    assert [(x.value, x.kind) for x in q] == [(50, "age"), (80, "age"), (65, "age")]
    assert q[2].direction == "up"


def test_intervals_compare_as_durations() -> None:
    assert reasons("Ultrasound every 12 months.", "Ultrasound every year.") == []
    assert reasons("Screen annually.", "Screen every year.") == []
    assert reasons("Mammography every other year.", "Biennial mammography.") == []
    found = reasons("Colonoscopy every 5 years.", "Colonoscopy: every 10 years.")
    assert "interval 'every 5 years' differs from the evidence (every 10 years)" in found


def test_a_number_cannot_be_borrowed_from_another_statement() -> None:
    e = [
        "Cytology alone every 3 years.",
        "High-risk HPV testing alone (primary HPV testing) every 5 years.",
    ]
    assert problems("Primary HPV testing alone every 5 years.", e) == []
    assert problems("Cytology alone every 3 years.", e) == []
    found = problems("Primary HPV testing alone every 3 years.", e)
    assert "interval 'every 3 years' differs from the evidence (every 5 years)" in found


def test_names_with_digits_must_match() -> None:
    e = "A PHQ-2 score of 3 or more should prompt a fuller assessment."
    assert "name 'phq9' not in the evidence" in reasons("A PHQ-9 score of 3 or more.", e)


# --- drugs and populations ---------------------------------------------------------------


def test_drug_names_are_recognised_by_their_stems() -> None:
    assert all(map(is_drug, ["atorvastatin", "lisinopril", "losartan", "empagliflozin"]))
    assert not any(map(is_drug, ["screening", "provide", "hypertension", "adults"]))


def test_a_drug_the_evidence_does_not_name_is_caught() -> None:
    e = "ACE inhibitors (for example, lisinopril)."
    assert reasons("Lisinopril is an ACE inhibitor.", e) == []
    assert "drug 'metoprolol' not in the evidence" in reasons("Metoprolol is an ACE inhibitor.", e)
    ccb = "Start with a thiazide diuretic or a calcium channel blocker."
    assert "drug 'beta' not in the evidence" in reasons("Start with a beta blocker.", ccb)


def test_a_population_the_evidence_does_not_name_is_caught() -> None:
    e = "Men aged 65 to 75 who have ever smoked: one-time screening with ultrasonography."
    found = reasons("Women aged 65 to 75 who have ever smoked need one ultrasound.", e)
    assert "population 'women' not in the evidence" in found
    # "white-coat" names no group of people
    wc = "Home monitoring detects white-coat hypertension."
    assert reasons("Home monitoring detects hypertension.", wc) == []


def test_the_population_a_statement_is_restricted_to_cannot_be_dropped() -> None:
    e = "Men aged 65 to 75 who have ever smoked: one-time screening with ultrasonography."
    found = reasons("Adults aged 65 to 75 need one-time screening with ultrasonography.", e)
    assert any(r.startswith("population dropped") for r in found)


# --- added claims ------------------------------------------------------------------------


def test_an_added_claim_is_caught_and_one_new_word_is_not_a_claim() -> None:
    e = "Colonoscopy: every 10 years."
    assert reasons("Colonoscopy is repeated every 10 years.", e) == []
    found = reasons("Colonoscopy every 10 years, with a genetic test for Lynch syndrome.", e)
    assert any(r.startswith("adds a claim") for r in found)


def test_one_invented_word_is_a_claim_and_no_synonym() -> None:
    """The packaged model wrote a guideline's title followed by "(AccredEdHD)", five times,
    each shown as supported: one new word passes as a paraphrase, so a word that no English
    text uses must not, and its word pieces must not make it a near synonym either."""
    e = ["Beta blockers are not first line for uncomplicated hypertension."]
    found = reasons("Beta blockers are not first line for uncomplicated hypertensitivity.", e[0])
    assert any("neither the evidence nor English" in r for r in found)

    def embed(texts: Sequence[str]) -> np.ndarray:
        # every word on one axis: all synonyms of each other
        return np.ones((len(texts), 1))

    sentence = "Beta blockers are not first line for uncomplicated hypertensitivity."
    assert problems(sentence, e, embed) != []
    # a real word the list lacks only with its prefix ("rescreening") is no invention
    rescreen = "Screen adults with normal results again every 3 years."
    assert reasons("Rescreening adults with normal results every 3 years.", rescreen) == []


def test_the_passage_title_supplies_the_topic_but_nothing_else() -> None:
    e = ["Ages 50 to 75: screen all adults (grade A)."]
    title = ["Colorectal Cancer Screening in Adults"]
    sentence = "Colorectal cancer screening applies to adults aged 50 to 75."
    assert problems(sentence, e) != []
    assert problems(sentence, e, context=title) == []
    assert problems("Screen women aged 50 to 75.", e, context=["Women"]) != []


def test_synonyms_by_embedding_cover_a_paraphrase() -> None:
    same = {"stopping": "cessation", "advice": "counseling"}

    def embed(texts: Sequence[str]) -> np.ndarray:
        # each word its own axis, a synonym on its partner's
        keys = sorted({same.get(t, t) for t in texts})
        out = np.zeros((len(texts), len(keys)))
        for i, t in enumerate(texts):
            out[i, keys.index(same.get(t, t))] = 1.0
        return out

    e = ["Offer cessation counseling to smokers."]
    assert any(
        r.startswith("adds a claim") for r in problems("Offer stopping advice to smokers.", e)
    )
    assert problems("Offer stopping advice to smokers.", e, embed) == []


def test_the_check_is_deterministic() -> None:
    e = ["Ages 45 to 49: screen all adults (grade B).", "Colonoscopy: every 10 years."]
    s = "Screen any adult from 40, with colonoscopy every 5 years and aspirin."
    assert problems(s, e) == problems(s, e)


# --- the pair set ------------------------------------------------------------------------


def load_pairs() -> list[dict[str, object]]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line]


def test_the_pair_set_is_well_formed() -> None:
    rows = load_pairs()
    assert len(rows) >= 200
    assert len({r["id"] for r in rows}) == len(rows)
    kinds = [r["kind"] for r in rows]
    assert set(kinds) == KINDS
    assert sum(k == "paraphrase" for k in kinds) >= 80
    assert sum(k != "paraphrase" for k in kinds) >= 150
    assert all(r["supported"] == (r["kind"] == "paraphrase") for r in rows)
    assert {r["split"] for r in rows} == {"dev", "heldout"}


def decide(embed: Callable[[Sequence[str]], np.ndarray], row: dict[str, object]) -> bool:
    """The pipeline's decision: align() over one retrieved passage under its title."""
    from assistant.cite import align
    from core.config import Settings
    from core.types import Chunk, Hit

    evidence, title = str(row["evidence"]), str(row["title"])
    chunk = Chunk("doc:1", "doc", evidence, title, "", 1, 0, len(evidence), "sha", "doc.md", "now")
    aligned = align(
        str(row["sentence"]),
        [Hit(chunk=chunk, score=0.03, dense_score=0.8)],
        embed,
        threshold=Settings.model_fields["support_threshold"].default,
    )
    return bool(aligned.sentences) and all(s.supported for s in aligned.sentences)


@pytest.fixture(scope="module")
def real_embed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Sequence[str]], np.ndarray]:
    from core import backends
    from core.config import load_settings

    home = tmp_path_factory.mktemp("verify-home")
    embedder = backends.create(
        "embedder", "sentence_transformers", load_settings(env={"CLINRAG_HOME": str(home)})
    )
    embedder.warm_up()
    seen: dict[str, np.ndarray] = {}

    def embed(texts: Sequence[str]) -> np.ndarray:
        # the real model; repeated words are looked up rather than embedded again
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            seen.update(zip(new, embedder.embed(new), strict=True))
        return np.array([seen[t] for t in texts])

    return embed


@pytest.mark.slow
def test_no_corruption_is_supported_and_most_paraphrases_are(
    real_embed: Callable[[Sequence[str]], np.ndarray],
) -> None:
    rows = load_pairs()
    accepted = {str(r["id"]): decide(real_embed, r) for r in rows}
    wrongly = [r["id"] for r in rows if not r["supported"] and accepted[str(r["id"])]]
    assert wrongly == []
    paraphrases = [r for r in rows if r["supported"]]
    rate = sum(accepted[str(r["id"])] for r in paraphrases) / len(paraphrases)
    assert rate >= 0.8, rate
