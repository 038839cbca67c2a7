"""One small protocol per backend kind. Adapters live beside this file, one per library."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.types import Chunk, EmbedderInfo, ModelInfo


@runtime_checkable
class Embedder(Protocol):
    """Turns text into unit-length vectors. Construction is cheap; ``warm_up`` loads."""

    def warm_up(self) -> None: ...

    @property
    def info(self) -> EmbedderInfo: ...

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray: ...


@runtime_checkable
class VectorStore(Protocol):
    """Holds chunk vectors. The manifest, not the store, is the source of truth for chunks."""

    def warm_up(self, embedder: EmbedderInfo) -> None: ...

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None: ...

    def delete_doc(self, doc_id: str) -> None: ...

    def delete_docs(self, doc_ids: Sequence[str]) -> None: ...

    def delete_ids(self, ids: Sequence[str]) -> None: ...

    def query(
        self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[str, float]]: ...

    def ids(self) -> set[str]: ...

    def count(self) -> int: ...

    def close(self) -> None:
        """Release the client and its files (so the store folder may be moved); idempotent."""
        ...


@runtime_checkable
class LexicalIndex(Protocol):
    """A keyword index over chunk texts, rebuilt when the library's version changes."""

    size: int

    def load_or_build(
        self, version: str, items_fn: Callable[[], Sequence[tuple[str, str]]]
    ) -> None: ...

    def search(self, query: str, k: int) -> list[tuple[str, float]]: ...

    def stem(self, words: Sequence[str]) -> list[str]:
        """The index's own normal form of each word, so callers compare words as it does."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """Optional second stage of retrieval: scores (query, passage) pairs, higher is closer."""

    def warm_up(self) -> None: ...

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray: ...


Message = dict[str, str]  # {"role": ..., "content": ...}


@runtime_checkable
class LLM(Protocol):
    """A chat model. Greedy when temperature is 0 so the same inputs give the same answer.

    ``info`` must not need the weights in memory where the identity can be read otherwise
    (a quoted answer records it without running the model). An adapter whose load is costly
    may expose ``loaded: bool``; ``Assistant.load_model`` then times a load made on demand.
    """

    def warm_up(self) -> None: ...

    @property
    def info(self) -> ModelInfo: ...

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]: ...


@runtime_checkable
class LogProbScorer(Protocol):
    """Optional LLM capability used by attribution: teacher-forced log-probabilities.

    For each prompt (a message list) returns log p(target_i | prompt) for every target span,
    where the targets are consecutive pieces of one completion (answer sentences). Summing a
    row gives log p(whole completion | prompt).
    """

    def logprobs(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str]
    ) -> np.ndarray: ...


# (message index, start, end): a character span of one message's content
Span = tuple[int, int, int]


@runtime_checkable
class AttentionReader(Protocol):
    """Optional LLM capability used by attention attribution: attention mass, one pass.

    For a prompt and a completion split into consecutive ``targets``, returns an array of
    shape (len(targets), len(spans), layers * heads): the attention that the positions
    predicting target t's tokens pay to the tokens of span s, summed over those positions and
    tokens, per (layer, head), from one teacher-forced forward pass.
    """

    @property
    def attention_layout(self) -> tuple[int, int]:
        """(layers, heads): the feature count is their product."""
        ...

    def attention(
        self, messages: Sequence[Message], spans: Sequence[Span], targets: Sequence[str]
    ) -> np.ndarray: ...


@runtime_checkable
class SpanMasker(Protocol):
    """Optional LLM capability: removal estimated by masking, without re-running the prompt.

    For each row of ``keep`` (rows x spans, True keeps a span), log p(target_t | prompt) with
    the tokens of the dropped spans hidden from what follows the last span; shape
    (len(keep), len(targets)).
    """

    def masked_logprobs(
        self,
        messages: Sequence[Message],
        spans: Sequence[Span],
        targets: Sequence[str],
        keep: np.ndarray,
    ) -> np.ndarray: ...
