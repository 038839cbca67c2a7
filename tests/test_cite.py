"""Citation parsing and alignment on crafted cases (a deterministic bag-of-words embedder)."""

from collections.abc import Sequence

import numpy as np

from assistant.cite import align, parse_markers
from core.text import split_sentences, tokens
from core.types import Chunk, Hit


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


def test_causal_scores_lift_support() -> None:
    sentence = "Adults in their mid-forties should begin colorectal screening."
    weak = align(sentence, HITS, bow_embed)
    assert not weak.sentences[0].supported
    causal = np.zeros((1, 3))
    causal[0, 0] = 2.0  # attribution says source sentence 0 drove this sentence
    strong = align(sentence, HITS, bow_embed, causal=causal)
    assert strong.sentences[0].supported and strong.sentences[0].citations == [1]


def test_sentence_splitter_keeps_decimals_and_abbreviations() -> None:
    parts = split_sentences("Give 1.5 mg daily, e.g. with food. Dr. Lee agrees [2]. Stop.")
    assert parts == ["Give 1.5 mg daily, e.g. with food.", "Dr. Lee agrees [2].", "Stop."]


def test_restating_the_question_is_not_support() -> None:
    q = "How often is colonoscopy repeated?"
    a = align("How often is colonoscopy repeated?", HITS, bow_embed, question=q)
    assert not a.sentences[0].supported
