"""The one backend registry: a config name maps to "module:Class", imported only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Literal, overload

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.backends.base import LLM, Embedder, LexicalIndex, Reranker, VectorStore
    from core.config import Settings

REGISTRY: dict[str, dict[str, str]] = {
    "embedder": {
        "sentence_transformers": (
            "core.backends.sentence_transformers:SentenceTransformerEmbedder"
        ),
        # int8 ONNX Runtime directly; embedder_backend reaches it through the one above
        "onnx": "core.backends.onnx_embedder:OnnxEmbedder",
    },
    "vector_store": {
        "chroma": "core.backends.chroma:ChromaStore",
    },
    "llm": {
        "transformers": "core.backends.transformers_llm:TransformersLLM",
        "openai": "core.backends.openai_llm:OpenAILLM",
    },
    "lexical": {
        "bm25s": "core.backends.bm25:BM25Index",
    },
    "reranker": {
        "cross_encoder": "core.backends.sentence_transformers:CrossEncoderReranker",
    },
}


# One overload per kind, so a caller gets the protocol its kind promises, not Any.
@overload
def create(kind: Literal["embedder"], name: str, settings: Settings) -> Embedder: ...
@overload
def create(kind: Literal["vector_store"], name: str, settings: Settings) -> VectorStore: ...
@overload
def create(kind: Literal["llm"], name: str, settings: Settings) -> LLM: ...
@overload
def create(kind: Literal["lexical"], name: str, settings: Settings) -> LexicalIndex: ...
@overload
def create(kind: Literal["reranker"], name: str, settings: Settings) -> Reranker: ...


def create(kind: str, name: str, settings: Settings) -> Any:
    """Construct backend ``name`` of ``kind`` with the settings. Cheap: nothing is loaded yet."""
    try:
        target = REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY.get(kind, {})))
        raise ConfigError(f"Unknown {kind} backend {name!r}; choose one of: {known}.") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(settings)
