"""LangChain adapter: clinrag's hybrid retriever as a ``BaseRetriever``.

The only module that imports langchain_core; import it only where LangChain is wanted.
"""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from assistant.retrieve import Filters, Retriever


class ClinragRetriever(BaseRetriever):
    """Drop-in retriever: ``ClinragRetriever(retriever=Retriever(settings), k=5).invoke(q)``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    retriever: Retriever
    k: int = 5
    filters: Filters | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[LCDocument]:
        out = []
        for hit in self.retriever.retrieve(query, k=self.k, filters=self.filters):
            c = hit.chunk
            meta = {
                "doc_id": c.doc_id,
                "chunk_id": c.chunk_id,
                "title": c.title,
                "section": c.section,
                "page": c.page,
                "source": c.source_path,
                "score": hit.score,
                "dense_score": hit.dense_score,
                "bm25_score": hit.bm25_score,
                **c.metadata,
            }
            out.append(LCDocument(page_content=c.text, metadata=meta))
        return out
