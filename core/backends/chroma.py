"""Chroma adapter: embedded PersistentClient by default, a Chroma server when chroma_url is set.

The only module that imports chromadb. Vectors are computed by our embedder, never by Chroma.

The Chroma server (``chroma run``, chromadb 1.x) checks no credentials of its own: its token
settings are accepted and ignored (tests/test_chroma_server.py shows it). So it is bound to
loopback or a private interface, and the hospital's TLS proxy in front of it checks a bearer
token; ``chroma_token`` is sent to that proxy as ``Authorization: Bearer``. Before the client
is built, one request to the heartbeat tells an unreachable server from refused credentials,
so either is reported in words rather than as a client library traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from core.errors import ClinragError, ConfigError, EmbedderMismatchError
from core.types import Chunk, EmbedderInfo

if TYPE_CHECKING:
    from core.config import Settings

_BATCH = 4000  # below Chroma's max batch size
# Chroma's local metadata store (SQLite, embedded and `chroma run` alike) binds each value of
# an $in as one SQL variable and refuses a statement with more than 32,766 (chromadb 1.5.9:
# "too many SQL variables"). Retrieval names every document the asker may see when one is
# hidden, so a library past ~32k documents needs the filter split (docs/benchmarks.md).
_MAX_IN_VALUES = 30000
_HEARTBEAT_TIMEOUT_S = 10.0


class VectorStoreUnavailableError(ClinragError):
    """The Chroma server cannot be reached, or it (or its proxy) refuses clinrag."""


class ChromaStore:
    def __init__(self, settings: Settings) -> None:
        self._path = settings.store_dir
        self._url: str | None = settings.chroma_url
        self._token: str | None = settings.chroma_token
        self._name: str = settings.collection
        self._ef_search: int = settings.vector_search_ef
        self._client: Any = None
        self._collection: Any = None

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if self._url:
            url = urlparse(self._url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ConfigError(f"chroma_url {self._url!r} is not a URL like http://host:8000.")
            if url.path.strip("/"):
                raise ConfigError(
                    f"chroma_url {self._url!r} has a path; the Chroma client sends its requests "
                    "to /api/v2 at the root, so give the proxy a host or port of its own."
                )
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            self._check_server(headers or {})
            try:
                return chromadb.HttpClient(
                    host=url.hostname,
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    headers=headers,
                    settings=chroma_settings,
                )
            except Exception as exc:  # chromadb raises bare Exception/ValueError here
                raise VectorStoreUnavailableError(
                    f"The Chroma server at {self._url} answered its heartbeat but refused the "
                    f"client ({exc}). Check that it is a Chroma 1.x server."
                ) from exc
        self._path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(self._path), settings=chroma_settings)

    def _check_server(self, headers: dict[str, str]) -> None:
        """One heartbeat: refused credentials and an unreachable server, said in words."""
        import urllib.error
        import urllib.request

        where = f"The Chroma server at {self._url}"
        request = urllib.request.Request(
            f"{str(self._url).rstrip('/')}/api/v2/heartbeat", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=_HEARTBEAT_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 407):
                given = "the chroma_token given" if self._token else "no chroma_token"
                raise VectorStoreUnavailableError(
                    f"{where} (or the proxy in front of it) refused clinrag with {given} "
                    f"(HTTP {exc.code}). Set chroma_token to the token the proxy expects."
                ) from None
            raise VectorStoreUnavailableError(
                f"{where} answered its heartbeat with HTTP {exc.code}. Check chroma_url."
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VectorStoreUnavailableError(
                f"{where} cannot be reached ({reason}). Start it (chroma run --path DIR --host "
                "127.0.0.1 --port PORT) or correct chroma_url."
            ) from None

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
            self._name,
            metadata=wanted,
            # the space again: a configuration without it makes the collection L2 (Chroma
            # 1.5.9 reads "hnsw:space" only when no configuration is given)
            configuration={"hnsw": {"space": "cosine", "ef_search": self._ef_search}},
            embedding_function=None,
        )
        have = collection.metadata or {}
        if have.get("embedder_hash") != embedder.weights_hash:
            raise EmbedderMismatchError(
                f"The index '{self._name}' was built with embedder {have.get('embedder_model')!r} "
                f"(weights {str(have.get('embedder_hash'))[:12]}), but {embedder.model!r} "
                f"(weights {embedder.weights_hash[:12]}) is configured. Set embedder_model and "
                "embedder_backend back to what built it, or re-ingest into a fresh "
                "CLINRAG_HOME or another collection."
            )
        self._raise_ef_search(collection)
        self._collection = collection

    def _raise_ef_search(self, collection: Any) -> None:
        """Raise an existing collection's ef_search to the setting (never lower it: another
        process may want more). HNSW with too small an ef misses whole regions of the graph:
        at Chroma's default 100, "Should I order imaging for acute low back pain?" found none
        of the low back pain guideline's passages (cosine 0.77) among 12,150, only 0.47s.
        Chroma reads it when it loads the index: from the next start of this process, or of
        the server."""
        have = (collection.configuration.get("hnsw") or {}).get("ef_search")
        if have is not None and have < self._ef_search:
            collection.modify(configuration={"hnsw": {"ef_search": self._ef_search}})

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
        found: list[tuple[str, float]] = []
        parts = _split_in(where)
        for part in parts:
            result = self._col.query(
                query_embeddings=[np.asarray(vector, dtype=np.float32)],
                n_results=k,
                where=part,
                include=["distances"],
            )
            found += zip(result["ids"][0], map(float, result["distances"][0]), strict=True)
        if len(parts) > 1:  # each part's k nearest, merged: the k nearest of them all
            found = sorted(found, key=lambda hit: hit[1])[:k]
        # cosine distance -> cosine similarity, so thresholds read naturally
        return [(i, 1.0 - d) for i, d in found]

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


def _split_in(where: dict[str, Any] | None) -> list[dict[str, Any] | None]:
    """A filter ``{key: {"$in": values}}`` with more values than Chroma binds, as filters of
    at most :data:`_MAX_IN_VALUES` values each; any other filter as it is."""
    if not where:
        return [None]
    if len(where) == 1:
        ((key, condition),) = where.items()
        if isinstance(condition, dict) and set(condition) == {"$in"}:
            values = list(condition["$in"])
            if len(values) > _MAX_IN_VALUES:
                return [
                    {key: {"$in": values[start : start + _MAX_IN_VALUES]}}
                    for start in range(0, len(values), _MAX_IN_VALUES)
                ]
    return [where]
