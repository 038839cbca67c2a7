"""What a clinician reads beside an answer: nearest documents and currency warnings."""

from __future__ import annotations

from typing import Any

from assistant.pipeline import _nearest_documents
from core.types import Chunk, Hit
from ui.views.ask import _currency_lines


def _hit(doc_id: str, chunk_id: str, dense: float, published: str = "") -> Hit:
    meta = {"publication_date": published} if published else {}
    chunk = Chunk(chunk_id, doc_id, "text.", doc_id.title(), "", None, 0, 5, "0", "x", "t", meta)
    return Hit(chunk=chunk, score=0.1, dense_score=dense)


def test_nearest_documents_are_sorted_by_their_best_passage() -> None:
    """Defect (issue 19): a decline listed nearest documents in fusion order, not relevance,
    and at the relevance of whichever passage came first."""
    hits = [_hit("b", "b1", 0.30), _hit("a", "a1", 0.20), _hit("a", "a2", 0.41)]
    assert [(d["doc_id"], d["relevance"]) for d in _nearest_documents(hits)] == [
        ("a", 0.41),
        ("b", 0.30),
    ]


def test_one_currency_warning_per_document_names_every_citation() -> None:
    """Defect (issue 19): the same "more than 5 years ago" warning appeared once per cited
    passage of one document."""
    hits = [_hit("old", f"old{i}", 0.5, "2010-01-01") for i in range(3)] + [_hit("new", "n", 0.5)]
    docs: list[dict[str, Any]] = [
        {"doc_id": "old", "title": "Old", "metadata": {"publication_date": "2010-01-01"}},
        {"doc_id": "new", "title": "New", "metadata": {}},
    ]
    lines = _currency_lines(hits, [1, 2, 3, 4], docs, "clinician")
    assert len(lines) == 1 and lines[0].startswith("[1, 2, 3] Old: Published 2010-01-01")
