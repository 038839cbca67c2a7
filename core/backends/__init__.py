"""The one backend registry: a config name maps to "module:Class", imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import ConfigError

REGISTRY: dict[str, dict[str, str]] = {
    "embedder": {
        "sentence_transformers": (
            "core.backends.sentence_transformers:SentenceTransformerEmbedder"
        ),
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
