"""The vector index explores enough of its graph per query (``vector_search_ef``).

At Chroma's default ef_search of 100, "Should I order imaging for acute non-radiating low back
pain with no red flags?" found none of the low back pain guideline's passages (cosine 0.77)
among the 12,150 of the federal guideline summaries, only passages at 0.47; at 400 it found
them (docs/benchmarks.md). New collections are made with the setting, and an existing one
made with less is raised (never lowered); embedded and server alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.backends.chroma import ChromaStore
from core.config import load_settings
from core.types import Chunk, EmbedderInfo

INFO = EmbedderInfo(name="test", model="test-embedder", weights_hash="0" * 64, dim=4)


def _chunk(chunk_id: str, doc_id: str) -> Chunk:
    return Chunk(chunk_id, doc_id, "text", "title", "", None, 0, 4, "0" * 64, "x.md", "now")


def _ef(env: dict[str, str]) -> int:
    store = ChromaStore(load_settings(env=env))
    store.warm_up(INFO)
    try:
        hnsw = store._col.configuration["hnsw"]
        # cosine, as every collection was made (a configuration without the space made L2)
        assert hnsw["space"] == "cosine"
        return int(hnsw["ef_search"])
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_a_collection_searches_with_the_setting_and_an_older_one_is_raised(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {"CLINRAG_HOME": str(tmp_path), "CLINRAG_COLLECTION": f"ef-{kind}"}
    if kind == "server":
        env["CLINRAG_CHROMA_URL"] = request.getfixturevalue("chroma_server")
    assert load_settings(env=env).vector_search_ef == 400
    older = {**env, "CLINRAG_COLLECTION": f"ef-older-{kind}", "CLINRAG_VECTOR_SEARCH_EF": "100"}
    assert _ef(older) == 100  # made as Chroma's default made every collection
    assert _ef({**older, "CLINRAG_VECTOR_SEARCH_EF": "400"}) == 400
    assert _ef({**older, "CLINRAG_VECTOR_SEARCH_EF": "150"}) == 400  # never lowered
    assert _ef(env) == 400
    # cosine similarity, not L2: a vector's own similarity is 1
    store = ChromaStore(load_settings(env=env))
    store.warm_up(INFO)
    try:
        vector = np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)
        store.upsert([_chunk("only", "doc")], vector[None, :])
        assert store.query(vector, 1)[0][1] == pytest.approx(1.0, abs=1e-5)
        assert store.query(np.array([0.8, -0.6, 0, 0], dtype=np.float32), 1)[0][1] == (
            pytest.approx(0.0, abs=1e-5)
        )
    finally:
        store.close()
