"""Chroma adapter: embedded PersistentClient by default, a Chroma server when chroma_url is set.

The only module that imports chromadb. Vectors are computed by our embedder, never by Chroma.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from core.errors import ConfigError, EmbedderMismatchError
from core.types import Chunk, EmbedderInfo

if TYPE_CHECKING:
    from core.config import Settings

_BATCH = 4000  # below Chroma's max batch size


class ChromaStore:
    def __init__(self, settings: Settings) -> None:
        self._path = settings.store_dir
        self._url: str | None = settings.chroma_url
        self._name: str = settings.collection
        self._client: Any = None
        self._collection: Any = None

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if self._url:
            url = urlparse(self._url)
            if not url.hostname:
                raise ConfigError(f"chroma_url {self._url!r} is not a URL like http://host:8000.")
            return chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        self._path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(self._path), settings=chroma_settings)

    def warm_up(self, embedder: EmbedderInfo) -> None:
        if self._collection is not None:
            return
        self._client = self._connect()
        wanted = {
            "embedder_model": embedder.model,
            "embedder_hash": embedder.weights_hash,
            "dim": embedder.dim,
            "hnsw:space": "cosine",
        }
        collection = self._client.get_or_create_collection(
            self._name, metadata=wanted, embedding_function=None
        )
        have = collection.metadata or {}
        if have.get("embedder_hash") != embedder.weights_hash:
            raise EmbedderMismatchError(
                f"The index '{self._name}' was built with embedder {have.get('embedder_model')!r} "
                f"(weights {str(have.get('embedder_hash'))[:12]}), but {embedder.model!r} "
                f"(weights {embedder.weights_hash[:12]}) is configured. Set embedder_model back, "
                "or re-ingest into a fresh CLINRAG_HOME or another collection."
            )
        self._collection = collection

    def close(self) -> None:
        client, self._client, self._collection = self._client, None, None
        close = getattr(client, "close", None)  # only recent chromadb clients have one
        if close is not None:
            close()

    @property
    def _col(self) -> Any:
        if self._collection is None:
            raise RuntimeError("ChromaStore.warm_up() must be called first")
        return self._collection

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        for start in range(0, len(chunks), _BATCH):
            part = chunks[start : start + _BATCH]
            self._col.upsert(
                ids=[c.chunk_id for c in part],
                embeddings=vectors[start : start + _BATCH],
                metadatas=[{"doc_id": c.doc_id} for c in part],
            )

    def delete_doc(self, doc_id: str) -> None:
        self._col.delete(where={"doc_id": doc_id})

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        for start in range(0, len(doc_ids), 500):
            self._col.delete(where={"doc_id": {"$in": list(doc_ids[start : start + 500])}})

    def delete_ids(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _BATCH):
            self._col.delete(ids=list(ids[start : start + _BATCH]))

    def query(
        self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        result = self._col.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=["distances"],
        )
        ids = result["ids"][0]
        distances = result["distances"][0]
        # cosine distance -> cosine similarity, so thresholds read naturally
        return [(i, 1.0 - float(d)) for i, d in zip(ids, distances, strict=True)]

    def ids(self) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            page = self._col.get(include=[], limit=10000, offset=offset)
            out.update(page["ids"])
            if len(page["ids"]) < 10000:
                return out
            offset += 10000

    def count(self) -> int:
        return int(self._col.count())
