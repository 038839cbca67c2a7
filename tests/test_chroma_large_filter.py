"""A document filter naming more documents than Chroma's SQLite binds in one statement.

Retrieval restricts the dense query to ``{"doc_id": {"$in": every document the asker may
see}}`` as soon as one document is hidden from the asker, so in a library of more than
32,766 documents every such query failed with Chroma's "too many SQL variables"
(benchmarks/chroma_scale.py at 100k chunks, docs/benchmarks.md). The adapter splits the filter
and merges the parts' nearest chunks; embedded and server alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.backends.chroma import ChromaStore
from core.config import load_settings
from core.types import Chunk, EmbedderInfo

INFO = EmbedderInfo(name="test", model="test-embedder", weights_hash="0" * 64, dim=4)
OVER_SQLITE_LIMIT = 40_000  # Chroma 1.5.9 refuses an $in of 32,766 values or more


def _chunk(chunk_id: str, doc_id: str) -> Chunk:
    return Chunk(chunk_id, doc_id, "text", "title", "", None, 0, 4, "0" * 64, "x.md", "now")


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_a_filter_over_sqlites_limit_returns_the_nearest_allowed_chunks(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {"CLINRAG_HOME": str(tmp_path), "CLINRAG_COLLECTION": f"large-filter-{kind}"}
    if kind == "server":
        env["CLINRAG_CHROMA_URL"] = request.getfixturevalue("chroma_server")
    store = ChromaStore(load_settings(env=env))
    store.warm_up(INFO)
    # "a-doc" and "z-doc" sort into the first and the last part of the split filter
    chunks = [_chunk("near", "z-doc"), _chunk("middle", "a-doc"), _chunk("hidden", "h-doc")]
    vectors = np.array([[1.0, 0.1, 0, 0], [1.0, 0.6, 0, 0], [1.0, 0.0, 0, 0]], dtype=np.float32)
    store.upsert(chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    allowed = sorted(["a-doc", "z-doc", *(f"m-{i:05d}" for i in range(OVER_SQLITE_LIMIT))])
    where = {"doc_id": {"$in": allowed}}
    query = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    try:
        hits = store.query(query, 3, where)
        assert [i for i, _ in hits] == ["near", "middle"]  # nearest first, the hidden one out
        assert hits[0][1] > hits[1][1]
        assert [i for i, _ in store.query(query, 1, where)] == ["near"]
    finally:
        store.close()
