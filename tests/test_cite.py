"""Citation parsing and alignment on crafted cases (a deterministic bag-of-words embedder)."""

import json
from collections.abc import Sequence
from typing import cast

import numpy as np

from assistant.attribute import attribute_answer
from assistant.cite import align, parse_markers, source_sentences
from core.backends.base import LLM
from core.config import Settings
from core.text import split_sentences, tokens
from core.types import Answer, Chunk, Generation, Hit, ModelInfo


def bow_embed(texts: Sequence[str]) -> np.ndarray:
    vocab: dict[str, int] = {}
    rows = []
    for t in texts:
        row: dict[int, float] = {}
        for tok in tokens(t):
            row[vocab.setdefault(tok, len(vocab))] = 1.0
        rows.append(row)
    out = np.zeros((len(texts), max(len(vocab), 1)))
    for i, row in enumerate(rows):
        for j, v in row.items():
            out[i, j] = v
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)


def hit(doc: str, text: str) -> Hit:
    chunk = Chunk(
        f"{doc}:1",
        doc,
        text,
        doc.title(),
        "Recommendation",
        2,
        0,
        len(text),
        "sha",
        f"{doc}.md",
        "now",
    )
    return Hit(chunk=chunk, score=0.03, dense_score=0.8)


HITS = [
    hit(
        "colorectal",
        "Adults aged 45 to 75 should be screened for colorectal cancer. "
        "Colonoscopy is repeated every 10 years.",
    ),
    hit(
        "statins",
        "Statins are recommended for adults aged 40 to 75 with a 10-year risk of 10% or more.",
    ),
]


def test_parse_markers_valid_invalid_and_ranges() -> None:
    text, valid, invalid = parse_markers("Screen at 45 [1][7], see also [1, 2].", 2)
    assert text == "Screen at 45, see also."
    assert valid == [1, 2] and invalid == [7]
    assert parse_markers("Doses [1-2] apply", 3)[1] == [1, 2]
    assert parse_markers("No markers here.", 2) == ("No markers here.", [], [])


def test_cited_supported_sentence_keeps_its_citation() -> None:
    a = align("Adults aged 45 to 75 should be screened for colorectal cancer [1].", HITS, bow_embed)
    assert [s.citations for s in a.sentences] == [[1]]
    assert a.sentences[0].supported
    assert a.citations[0].doc_id == "colorectal"
    assert "45 to 75" in a.evidence[0].text


def test_uncited_sentence_gets_aligned_citation() -> None:
    a = align(
        "Statins are recommended for adults aged 40 to 75 with a 10-year risk of 10%.",
        HITS,
        bow_embed,
    )
    assert a.sentences[0].citations == [2] and a.sentences[0].supported


def test_wrong_citation_is_dropped_and_replaced() -> None:
    a = align("Colonoscopy is repeated every 10 years [2].", HITS, bow_embed)
    assert a.sentences[0].citations == [1]


def test_invalid_marker_is_dropped() -> None:
    a = align("Colonoscopy is repeated every 10 years [9].", HITS, bow_embed)
    assert a.sentences[0].citations == [1]


def test_unsupported_claim_is_flagged() -> None:
    a = align("Aspirin 325 mg should be given to every child with fever [1].", HITS, bow_embed)
    assert not a.sentences[0].supported
    assert a.citations == []


def test_changed_number_is_unsupported_even_if_wording_matches() -> None:
    a = align("Adults aged 50 to 75 should be screened for colorectal cancer [1].", HITS, bow_embed)
    assert not a.sentences[0].supported


class ReliesOnStatins:
    """A scorer-capable fake model: each answer sentence is likely exactly when the source
    sentence it leans on is kept (the colonoscopy sentence, the statin sentence)."""

    def logprobs(
        self, prompts: Sequence[Sequence[dict[str, str]]], targets: Sequence[str]
    ) -> np.ndarray:
        rows = []
        for messages in prompts:
            text = " ".join(m["content"] for m in messages)
            rows.append(
                [
                    -10.0 + 8.0 * ("Colonoscopy is repeated" in text),
                    -10.0 + 8.0 * ("Statins are" in text),
                ]
            )
        return np.array(rows)[:, : len(targets)]


def test_attribution_never_changes_what_is_supported_or_cited(settings: Settings) -> None:
    """The model leaned on the statin sentence for a sentence verification refused. Before,
    attribution re-aligned with that reliance: the sentence turned supported on screen while
    its audit record said unsupported, and key evidence grew to cite [2], which the answer
    never cited (no source panel)."""
    text = (
        "Colonoscopy is repeated every 10 years [1]. "
        "Statins are advised for adults in their forties [2]."
    )
    aligned = align(text, HITS, bow_embed)
    assert [s.supported for s in aligned.sentences] == [True, False]
    generation = Generation(text, ModelInfo("fake", "fake", "0" * 64), "h", "answer_v1", {}, 0.1)
    answer = Answer(
        question="When is colonoscopy repeated?",
        answer=text,
        abstained=False,
        sentences=aligned.sentences,
        citations=aligned.citations,
        evidence=aligned.evidence,
        hits=HITS,
        source_sentences=source_sentences(HITS),
        generation=generation,
        timings={},
    )
    recorded = json.dumps(
        [[s.supported, s.problems, s.citations] for s in answer.sentences]
        + [[c.n for c in answer.citations], sorted({e.n for e in answer.evidence})]
    )
    llm = cast(LLM, ReliesOnStatins())
    attribute_answer(answer, llm, settings, bow_embed, method="loo")
    assert answer.attribution is not None
    assert answer.attribution["per_sentence"][1][2] > 1  # it did rely on the statin sentence
    after = json.dumps(
        [[s.supported, s.problems, s.citations] for s in answer.sentences]
        + [[c.n for c in answer.citations], sorted({e.n for e in answer.evidence})]
    )
    assert after == recorded
    assert {e.n for e in answer.evidence} <= {c.n for c in answer.citations}


def test_a_sentence_that_contradicts_its_evidence_is_not_supported() -> None:
    """The reported failure: similar words, opposite meaning ("at any age" vs "at 45")."""
    hits = [hit("colorectal", "Adults should start colorectal cancer screening at age 45.")]
    a = align(
        "Adults should start colorectal cancer screening at any age, or at 45.",
        hits,
        bow_embed,
    )
    assert not a.sentences[0].supported
    assert any("'any'" in p for p in a.sentences[0].problems)
    assert a.evidence == []  # key evidence only backs sentences a reader may trust


def test_problems_hold_the_reasons_and_are_empty_when_supported() -> None:
    a = align(
        "Adults aged 45 to 75 should be screened for colorectal cancer [1]. "
        "Adults aged 50 to 75 should be screened for colorectal cancer [1].",
        HITS,
        bow_embed,
    )
    assert a.sentences[0].supported and a.sentences[0].problems == []
    assert not a.sentences[1].supported
    assert any("50" in p for p in a.sentences[1].problems)
    q = "How often is colonoscopy repeated?"
    restated = align(q, HITS, bow_embed, question=q).sentences[0]
    assert "restates the question" in restated.problems


def test_sentence_splitter_keeps_decimals_and_abbreviations() -> None:
    parts = split_sentences("Give 1.5 mg daily, e.g. with food. Dr. Lee agrees [2]. Stop.")
    assert parts == ["Give 1.5 mg daily, e.g. with food.", "Dr. Lee agrees [2].", "Stop."]


def test_restating_the_question_is_not_support() -> None:
    q = "How often is colonoscopy repeated?"
    a = align("How often is colonoscopy repeated?", HITS, bow_embed, question=q)
    assert not a.sentences[0].supported
