"""Hybrid retrieval: dense (vector store) + lexical (BM25), fused by reciprocal rank fusion.

Every stage's score and rank is kept on the Hit so the audit record shows why a chunk was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import backends
from core.config import Settings
from core.errors import IndexEmptyError
from core.library.index import Index, indexed_text
from core.library.restrictions import may_see
from core.library.supersedes import superseded_ids
from core.types import Chunk, Hit

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from core.backends.base import LexicalIndex, Reranker


# Chroma binds each listed id as one SQLite variable (at most 32,766 a statement); a longer
# $in is split by the store adapter, a $nin cannot be.
_MAX_EXCLUDED = 30_000
# Up to this many chunks hidden from the asker, the dense query runs unfiltered and asks for
# that many more candidates, then drops them: exactly the filtered result, at the unfiltered
# cost. At 100k chunks (docs/benchmarks.md) one hidden document made a filtered query take
# 727 ms ($in of every visible document) or 458 ms ($nin of the hidden one) against 2.6 ms.
_POST_FILTER_CHUNKS = 1_000


def dense_query_plan(
    allowed: set[str], docs: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any] | None, int]:
    """How to ask the vector store for the chunks of ``allowed`` (of ``docs``, the library's
    documents by id): its filter, and how many candidates to fetch beyond the wanted ones.

    Few hidden chunks (a hospital's handful of restricted documents): no filter, that many
    extra candidates, dropped afterwards. Else a filter naming the shorter side: the hidden
    documents excluded, or the visible ones listed."""
    hidden = sorted(set(docs) - allowed)
    if not hidden:
        return None, 0
    hidden_chunks = sum(int(docs[d].get("n_chunks") or 0) for d in hidden)
    if hidden_chunks <= _POST_FILTER_CHUNKS:
        return None, hidden_chunks
    if len(hidden) < len(allowed) and len(hidden) <= _MAX_EXCLUDED:
        return {"doc_id": {"$nin": hidden}}, 0
    return {"doc_id": {"$in": sorted(allowed)}}, 0


@dataclass(frozen=True)
class Filters:
    """Restrict retrieval by document metadata; empty means everything the user may see."""

    doc_ids: tuple[str, ...] = ()
    issuing_body: str | None = None
    published_after: str | None = None  # compared as ISO strings: "2015" < "2015-06" < "2016"
    published_before: str | None = None
    roles: tuple[str, ...] = field(default=())  # the asker's roles, for restricted documents

    def allows(self, doc: dict[str, Any]) -> bool:
        meta = doc["metadata"]
        if self.doc_ids and doc["doc_id"] not in self.doc_ids:
            return False
        if (
            self.issuing_body
            and self.issuing_body.lower() not in meta.get("issuing_body", "").lower()
        ):
            return False
        date = meta.get("publication_date", "")
        if self.published_after and (not date or date < self.published_after):
            return False
        if self.published_before and (not date or date > self.published_before):
            return False
        return self.visible(doc)

    def visible(self, doc: dict[str, Any]) -> bool:
        """Whether the asker's roles may see the document at all (whatever the other filters)."""
        return may_see(doc["metadata"], self.roles)

    @property
    def active(self) -> bool:
        return bool(
            self.doc_ids or self.issuing_body or self.published_after or self.published_before
        )


SUPERSEDED_WEIGHT = 0.5


class Retriever:
    def __init__(self, settings: Settings, index: Index | None = None) -> None:
        self.settings = settings
        self.index = index or Index(settings)
        self.lexical: LexicalIndex = backends.create("lexical", "bm25s", settings)
        self._docs_cache: tuple[int, dict[str, dict[str, Any]]] | None = None
        # superseded ids per (index version, asker roles)
        self._superseded: dict[tuple[int, tuple[str, ...]], set[str]] = {}
        self.reranker: Reranker | None = (
            backends.create("reranker", "cross_encoder", settings)
            if settings.reranker_model
            else None
        )

    def warm_up(self) -> None:
        self.index.warm_up()
        self._refresh_lexical()
        if self.reranker is not None:
            self.reranker.warm_up()

    def _documents(self, filters: Filters) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Document metadata, reloaded only when the index changes, and the ids superseded
        for this asker.

        Only documents the asker may see can supersede: a restricted document's
        ``supersedes`` must not demote public guidance for people who cannot read the newer
        one (nor tell them, by the demotion, that it exists). The other filters do not
        count: a newer guideline outside the chosen dates still makes the older one outdated.
        """
        version = self.index.manifest.index_version()
        cached = self._docs_cache
        if cached is None or cached[0] != version:
            cached = (version, {d["doc_id"]: d for d in self.index.manifest.documents()})
            self._docs_cache, self._superseded = cached, {}
        docs = cached[1]
        # keyed by version too: a thread still on the old documents cannot file its result
        # under the new ones
        key = (version, tuple(sorted(set(filters.roles))))
        superseded = self._superseded.get(key)
        if superseded is None:
            superseded = superseded_ids(d for d in docs.values() if filters.visible(d))
            self._superseded[key] = superseded
        return docs, superseded

    def _refresh_lexical(self) -> None:
        manifest = self.index.manifest
        self.lexical.load_or_build(
            self.index.version,
            lambda: [(c.chunk_id, indexed_text(c)) for c in manifest.chunks()],
        )

    def retrieve(
        self, question: str, k: int | None = None, filters: Filters | None = None
    ) -> list[Hit]:
        k = k or self.settings.top_k
        filters = filters or Filters()
        self.index.warm_up()
        self._refresh_lexical()
        if self.lexical.size == 0:
            raise IndexEmptyError(
                "The library is empty. Ingest documents first: clinrag ingest PATH"
            )
        docs, superseded = self._documents(filters)
        allowed = {doc_id for doc_id, d in docs.items() if filters.allows(d)}
        if not allowed:
            return []
        restricted = len(allowed) < len(docs)
        n = self.settings.candidates
        where, extra = dense_query_plan(allowed, docs)
        vector = self.index.embedder.embed([question], query=True)[0]
        dense = self.index.store.query(vector, n + extra, where)
        # BM25 cannot filter inside the index: over-fetch, then drop what the filter forbids
        lexical = self.lexical.search(question, n * (4 if restricted else 1))

        chunks = self.index.manifest.chunks_by_id(
            sorted({i for i, _ in dense} | {i for i, _ in lexical})
        )
        hits: dict[str, Hit] = {}
        fused: dict[str, float] = {}
        weights = {"dense": self.settings.dense_weight, "bm25": self.settings.lexical_weight}
        for stage, results in (("dense", dense), ("bm25", lexical)):
            rank = 0
            for chunk_id, score in results:
                chunk = chunks.get(chunk_id)
                if chunk is None or chunk.doc_id not in allowed:
                    continue  # removed since the lexical index was built, or filtered out
                rank += 1
                if rank > n:
                    break
                hit = hits.setdefault(chunk_id, Hit(chunk=chunk, score=0.0))
                setattr(hit, f"{stage}_score", score)
                setattr(hit, f"{stage}_rank", rank)
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weights[stage] / (
                    self.settings.rrf_k + rank
                )
        for chunk_id, hit in hits.items():
            # Outdated guidance stays findable but ranks below what replaced it.
            penalty = SUPERSEDED_WEIGHT if hit.chunk.doc_id in superseded else 1.0
            hit.score = fused[chunk_id] * penalty
        ranked = sorted(hits.values(), key=lambda h: (-h.score, h.chunk.chunk_id))
        if self.reranker is not None and ranked:
            pool = ranked[: max(k * 4, 20)]
            scores = self.reranker.score(question, [h.chunk.text for h in pool])
            for hit, s in zip(pool, scores, strict=True):
                hit.rerank_score = float(s)
            ranked = sorted(pool, key=lambda h: -(h.rerank_score or 0.0))
        top = ranked[:k]
        self._fill_dense_scores(vector, top)
        return top

    def hits_for(self, question: str, chunks: Sequence[Chunk], score: float) -> list[Hit]:
        """Hits for chunks chosen outside the ranking (all with fused ``score``), each with
        its cosine to the question, as ranked hits have."""
        if not chunks:
            return []
        vector = self.index.embedder.embed([question], query=True)[0]
        hits = [Hit(chunk=c, score=score) for c in chunks]
        self._fill_dense_scores(vector, hits)
        return hits

    def _fill_dense_scores(self, vector: np.ndarray, hits: list[Hit]) -> None:
        """BM25-only hits get their cosine too: abstention compares relevance on one scale."""
        missing = [h for h in hits if h.dense_score is None]
        if not missing:
            return
        vectors = self.index.embedder.embed([indexed_text(h.chunk) for h in missing])
        for hit, v in zip(missing, vectors, strict=True):
            hit.dense_score = float(v @ vector)
