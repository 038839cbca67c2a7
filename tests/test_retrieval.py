"""Hybrid retrieval over data_samples with the real embedder, Chroma and BM25."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.retrieve import Filters, Retriever
from core.config import Settings
from tests.conftest import SAMPLES


def test_sample_library_has_every_format(library: Settings) -> None:
    from core.library.manifest import Manifest

    docs = {d["doc_id"]: d for d in Manifest(library.manifest_path).documents()}
    assert len(docs) == 16
    suffixes = {d["source_path"].rsplit(".", 1)[1] for d in docs.values()}
    assert suffixes == {"md", "txt", "html", "docx", "pdf"}
    assert docs["lung-cancer-screening"]["metadata"]["issuing_body"]
    chunks = Manifest(library.manifest_path).chunks(["lung-cancer-screening"])
    assert {c.page for c in chunks} >= {1, 2}  # real page numbers from the PDF


def test_answerable_questions_retrieve_their_document(library: Settings) -> None:
    retriever = Retriever(library)
    questions = [
        q
        for q in json.loads((SAMPLES / "example_questions.json").read_text())
        if q["expected_file"]
    ]
    found = 0
    for q in questions:
        hits = retriever.retrieve(q["question"], k=5)
        expected = q["expected_file"].rsplit(".", 1)[0]
        found += any(h.chunk.doc_id == expected for h in hits)
        for h in hits:
            assert h.dense_rank is not None or h.bm25_rank is not None
    assert found / len(questions) >= 0.9


def test_every_stage_score_is_kept_and_chunks_deduped(library: Settings) -> None:
    hits = Retriever(library).retrieve("lung cancer screening pack-years low-dose CT", k=8)
    ids = [h.chunk.chunk_id for h in hits]
    assert len(ids) == len(set(ids))
    assert hits[0].chunk.doc_id == "lung-cancer-screening"
    assert any(h.dense_score is not None and h.bm25_score is not None for h in hits)
    assert all(h.dense_score is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_filters_by_document_body_and_date(library: Settings) -> None:
    r = Retriever(library)
    only = r.retrieve("screening", k=5, filters=Filters(doc_ids=("hepatitis-c-screening",)))
    assert only and {h.chunk.doc_id for h in only} == {"hepatitis-c-screening"}
    cdc = r.retrieve("screening", k=10, filters=Filters(issuing_body="Centers for Disease Control"))
    assert cdc and all("Disease Control" in h.chunk.metadata["issuing_body"] for h in cdc)
    old = r.retrieve(
        "colorectal cancer screening age", k=5, filters=Filters(published_before="2017")
    )
    assert old and all(h.chunk.metadata["publication_date"] <= "2017" for h in old)


def test_langchain_retriever_adapter(library: Settings) -> None:
    from langchain_core.retrievers import BaseRetriever

    from assistant.langchain_retriever import ClinragRetriever

    lc = ClinragRetriever(retriever=Retriever(library), k=3)
    assert isinstance(lc, BaseRetriever)
    docs = lc.invoke("first-line treatment for hypertension")
    assert len(docs) == 3
    assert docs[0].metadata["doc_id"] == "hypertension-diagnosis-and-treatment"
    assert docs[0].page_content


def test_superseded_guideline_ranks_below_its_replacement(library: Settings) -> None:
    hits = Retriever(library).retrieve("colorectal cancer screening age to start", k=6)
    docs = [h.chunk.doc_id for h in hits]
    assert "colorectal-cancer-screening" in docs
    assert docs.index("colorectal-cancer-screening") == 0


def test_embedder_precision_is_recorded_and_vectors_agree(tmp_path: Path) -> None:
    """bf16 (auto, where the CPU computes it natively) and float32 vectors of the same weights
    agree closely enough to share an index; the precision used goes into the embedder info."""
    from core import backends
    from core.backends.sentence_transformers import resolve_dtype

    texts = ["Stage 1 hypertension is 130 to 139 mmHg systolic.", "Screen adults from age 45."]
    infos, vectors = {}, {}
    for dtype in ("float32", "auto"):
        # torch pinned: on a CPU without bf16, auto would choose the ONNX int8 path
        settings = Settings(home=tmp_path / dtype, embedder_dtype=dtype, embedder_backend="torch")
        embedder = backends.create("embedder", "sentence_transformers", settings)
        vectors[dtype] = embedder.embed(texts)
        infos[dtype] = embedder.info
    assert infos["float32"].dtype == "float32"
    assert infos["auto"].dtype == resolve_dtype("auto") in {"float32", "bfloat16"}
    assert infos["auto"].weights_hash == infos["float32"].weights_hash  # one index identity
    cosines = (vectors["auto"] * vectors["float32"]).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    assert np.allclose(np.linalg.norm(vectors["auto"], axis=1), 1.0, atol=1e-5)


def test_a_few_hidden_documents_cost_no_store_filter(
    library: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hidden document: the store is asked, unfiltered, for as many more candidates as it
    has chunks, which are dropped; not to search a list of every other document (at 100k
    chunks such a filter made a query 727 ms instead of 2.6 ms)."""
    r = Retriever(library)
    r.warm_up()
    calls: list[tuple[int, Any]] = []
    query = r.index.store.query

    def spy(vector: Any, k: int, where: Any = None) -> Any:
        calls.append((k, where))
        return query(vector, k, where)

    monkeypatch.setattr(r.index.store, "query", spy)
    docs = {d["doc_id"]: d for d in r.index.manifest.documents()}
    hidden = "lung-cancer-screening"
    others = tuple(d for d in docs if d != hidden)
    question = "lung cancer screening pack-years low-dose CT"
    unfiltered = r.retrieve(question, k=40)
    assert calls[-1] == (library.candidates, None)
    assert hidden in {h.chunk.doc_id for h in unfiltered}
    hits = r.retrieve(question, k=40, filters=Filters(doc_ids=others))
    assert calls[-1] == (library.candidates + docs[hidden]["n_chunks"], None)
    assert hits and hidden not in {h.chunk.doc_id for h in hits}
    # the same chunks, in the same order, as the store's own filter gives
    from assistant import retrieve

    monkeypatch.setattr(retrieve, "_POST_FILTER_CHUNKS", -1)
    in_store = r.retrieve(question, k=40, filters=Filters(doc_ids=others))
    assert calls[-1] == (library.candidates, {"doc_id": {"$nin": [hidden]}})
    assert [h.chunk.chunk_id for h in hits] == [h.chunk.chunk_id for h in in_store]
    r.retrieve("screening", k=5, filters=Filters(doc_ids=("hepatitis-c-screening",)))
    assert calls[-1][1] == {"doc_id": {"$in": ["hepatitis-c-screening"]}}


def test_many_hidden_chunks_are_filtered_in_the_store_by_the_shorter_list() -> None:
    from assistant import retrieve

    docs = {f"d{i}": {"doc_id": f"d{i}", "n_chunks": 300} for i in range(10)}
    assert retrieve.dense_query_plan(set(docs), docs) == (None, 0)
    assert retrieve.dense_query_plan(set(docs) - {"d3"}, docs) == (None, 300)
    few_visible = {"d0", "d1"}
    assert retrieve.dense_query_plan(few_visible, docs) == (
        {"doc_id": {"$in": ["d0", "d1"]}},
        0,
    )
    many_visible = set(docs) - {"d7", "d2", "d5", "d9"}  # 1,200 hidden chunks
    assert retrieve.dense_query_plan(many_visible, docs) == (
        {"doc_id": {"$nin": ["d2", "d5", "d7", "d9"]}},
        0,
    )
