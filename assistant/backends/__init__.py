"""The one backend registry: a config name maps to "module:Class", imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from assistant.errors import ConfigError

REGISTRY: dict[str, dict[str, str]] = {
    "embedder": {
        "sentence_transformers": (
            "assistant.backends.sentence_transformers:SentenceTransformerEmbedder"
        ),
    },
    "vector_store": {
        "chroma": "assistant.backends.chroma:ChromaStore",
    },
    "llm": {
        "transformers": "assistant.backends.transformers_llm:TransformersLLM",
        "openai": "assistant.backends.openai_llm:OpenAILLM",
    },
    "lexical": {
        "bm25s": "assistant.backends.bm25:BM25Index",
    },
    "reranker": {
        "cross_encoder": "assistant.backends.sentence_transformers:CrossEncoderReranker",
    },
}


def create(kind: str, name: str, settings: Any) -> Any:
    """Construct backend ``name`` of ``kind`` with the settings. Cheap: nothing is loaded yet."""
    try:
        target = REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY.get(kind, {})))
        raise ConfigError(f"Unknown {kind} backend {name!r}; choose one of: {known}.") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(settings)
