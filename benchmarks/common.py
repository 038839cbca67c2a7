"""What the benchmarks share: where the eval data lies, cached indexes, timers and tables.

Nothing here is a benchmark by itself, and importing it changes nothing: each benchmark's
``main()`` applies :func:`core.config.apply_offline_environment` before a model loads. The
data sets, metrics, library writing and the LangChain recipe are the evaluation's own
(:mod:`evaluation`); this module only adds what timing and caching need on top.

The data lives in ``../shared/eval`` (next to the repository, never copied into it); see that
folder's README for the format.

clinrag indexes are built through clinrag's real ingestion path: each corpus row is written
as a Markdown file (``# {title}\\n\\n{text}``, no heading when the title is empty) by
``evaluation.data.write_library`` and the folder is ingested with ``ingest.index.ingest``, so
loaders, chunking, embedding, the vector store and the manifest are all the shipped code.
clinrag slugs file names into doc ids (``CancerGov:0000001_1-1`` -> ``cancergov-0000001-1-1``)
and suffixes clashes, so every index keeps a map from its doc ids back to the corpus doc ids.

Built indexes are cached under ``benchmarks/.cache/`` (git-ignored), keyed by the corpus'
sha256, the document limit, what decides the clinrag store (``evaluation.data.ingest_key``
and the embedder's precision) and the recipe, so reruns skip embedding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings
from evaluation import baseline_langchain
from evaluation.data import (
    Dataset,
    corpus_doc_map,
    ingest_failures,
    ingest_key,
    load_dataset,
    write_library,
)
from evaluation.metrics import percentile

if TYPE_CHECKING:
    import numpy as np

    from core.backends.base import Embedder
    from core.types import EmbedderInfo

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO.parent / "shared" / "eval"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
CACHE_FORMAT = 1  # bump when the way indexes are built changes


def log(message: str) -> None:
    """Progress goes to stderr so ``--json`` output on stdout stays one clean object."""
    print(message, file=sys.stderr, flush=True)


# --- the eval data ---------------------------------------------------------------------------


def eval_dir() -> Path:
    if not EVAL_DIR.is_dir():
        raise SystemExit(
            f"The evaluation data is not at {EVAL_DIR}. It lives next to the repository in "
            "../shared/eval (see its README); nothing to benchmark without it."
        )
    return EVAL_DIR


@functools.cache
def dataset(name: str) -> Dataset:
    """``../shared/eval/<name>`` as the evaluation loads it (read once per process)."""
    return load_dataset(eval_dir() / name)


def guideline_files(limit: int | None = None) -> list[Path]:
    files = sorted((eval_dir() / "guidelines" / "markdown").glob("*.md"))
    return files[:limit] if limit else files


def library_text(row: dict[str, Any]) -> str:
    """A corpus row as a library file: the recipe's Markdown, ending in a newline.

    A heading rather than the evaluation's front matter: the cached indexes and the figures in
    docs/benchmarks.md were built from exactly these bytes.
    """
    return baseline_langchain.row_text(row) + "\n"


# --- clinrag -----------------------------------------------------------------------------------


def clinrag_settings(home: Path, **overrides: Any) -> Settings:
    """Default settings with ``home``; CLINRAG_* variables (other than HOME) still apply."""
    from core.config import load_settings

    env = {k: v for k, v in os.environ.items() if k.startswith("CLINRAG_") and k != "CLINRAG_HOME"}
    env.setdefault("CLINRAG_CONFIG", str(home / "no-config.toml"))
    return load_settings(env=env, overrides={"home": home, **overrides})


class Timer:
    """Wraps a callable and adds up the wall time spent inside it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


class TimedEmbedder:
    """An embedder that adds up the wall time spent embedding; an ``Embedder`` itself."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.seconds = 0.0

    def warm_up(self) -> None:
        self.inner.warm_up()

    @property
    def info(self) -> EmbedderInfo:
        return self.inner.info

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        t = time.perf_counter()
        try:
            return self.inner.embed(texts, query=query)
        finally:
            self.seconds += time.perf_counter() - t


@dataclass
class IngestRun:
    docs: int
    chunks: int
    chars: int  # characters embedded (clinrag: title + section + chunk text, as indexed)
    seconds: float
    source_chars: int = 0  # characters of the input documents
    embed_seconds: float = 0.0  # of ``seconds``, spent inside the embedder
    over_limit: int = 0  # embedded texts longer than the model's window (tail is ignored)
    failed: list[str] = field(default_factory=list)
    doc_map: dict[str, str] = field(default_factory=dict)  # clinrag doc_id -> corpus doc_id


def clinrag_ingest(
    paths: Sequence[Path], settings: Settings, path_to_doc: dict[str, str] | None = None
) -> IngestRun:
    """Time ``ingest.index.ingest`` over ``paths`` into ``settings.home`` (model pre-loaded)."""
    from core import backends
    from core.library.index import Index, indexed_text
    from ingest.index import ingest

    embedder = TimedEmbedder(backends.create("embedder", settings.embedder, settings))
    embedder.warm_up()  # model loading is not part of the timing
    index = Index(settings, embedder=embedder)
    t0 = time.perf_counter()
    summary = ingest(list(paths), settings, progress=False, index=index)
    seconds = time.perf_counter() - t0
    doc_map = corpus_doc_map(summary, path_to_doc or {})
    embedded = [indexed_text(c) for c in index.manifest.chunks()]
    index.manifest.close()
    source_chars = sum(
        len(Path(r.path).read_text(encoding="utf-8"))
        for r in summary.results
        if r.status in {"added", "updated"}
    )
    return IngestRun(
        docs=len(doc_map),
        chunks=summary.chunks,
        chars=sum(map(len, embedded)),
        seconds=seconds,
        source_chars=source_chars,
        embed_seconds=embedder.seconds,
        over_limit=count_over_limit(embedded),
        failed=ingest_failures(summary),
        doc_map=doc_map,
    )


@functools.cache
def _tokenizer() -> tuple[Any, int]:
    """The packaged embedder's tokenizer and window, loaded once."""
    from transformers.utils import logging as hf_logging

    from core.backends.sentence_transformers import _load, packaged_embedder_dir

    hf_logging.set_verbosity_error()  # "sequence length is longer than" is what we count
    model = _load(str(packaged_embedder_dir()), "cpu", "float32")
    return model.tokenizer, int(model.max_seq_length)


def count_over_limit(texts: Sequence[str]) -> int:
    """How many texts exceed the embedder's window (MiniLM: 256 tokens; the rest is cut off)."""
    tokenizer, window = _tokenizer()
    n = 0
    for start in range(0, len(texts), 512):
        enc = tokenizer(list(texts[start : start + 512]), add_special_tokens=True)
        n += sum(len(ids) > window for ids in enc["input_ids"])
    return n


# --- the LangChain recipe ------------------------------------------------------------------------


def recipe_build(
    texts: Sequence[tuple[str, str]], persist_dir: Path | None, embeddings: Any = None
) -> tuple[Any, IngestRun]:
    """Split, embed and store (doc_id, text) pairs with the recipe; timed from split to stored."""
    embeddings = embeddings or baseline_langchain.embeddings()
    embeddings.embed_query("warm up")  # model loading is not timed, as for clinrag
    timed = _timed_embeddings(embeddings)
    t0 = time.perf_counter()
    chunks = baseline_langchain.split(texts)
    store = baseline_langchain.build_store(chunks, timed, persist_dir)
    seconds = time.perf_counter() - t0
    run = IngestRun(
        docs=len(texts),
        chunks=len(chunks),
        chars=sum(len(c.page_content) for c in chunks),
        seconds=seconds,
        source_chars=sum(len(t) for _, t in texts),
        embed_seconds=timed.seconds,
        over_limit=count_over_limit([c.page_content for c in chunks]),
    )
    return store, run


def _timed_embeddings(inner: Any) -> Any:
    """The recipe's embeddings with the time spent in ``embed_documents`` added up.

    A class made here, not at import: LangChain is a development extra.
    """
    from langchain_core.embeddings import Embeddings

    class TimedEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.seconds = 0.0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            t = time.perf_counter()
            try:
                return inner.embed_documents(texts)
            finally:
                self.seconds += time.perf_counter() - t

        def embed_query(self, text: str) -> list[float]:
            return inner.embed_query(text)

    return TimedEmbeddings()


# --- cached indexes for the retrieval, abstention and attribution benchmarks -------------------


def embedder_path(settings: Settings) -> str:
    """The embedder path these settings take on this machine ("torch bfloat16", "onnx-int8",
    ...): ``auto`` resolves per CPU, and an index cached by one path must not be opened by
    another (EmbedderMismatchError), so the cache key carries it."""
    from core.backends.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(settings).describe_path()


def cache_key(name: str, data: Dataset, limit: int | None, settings: Settings) -> str:
    parts: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "corpus": data.corpus_sha256,
        "limit": limit,
        "ingest": ingest_key(settings),
        "recipe": baseline_langchain.recipe_key(),
        "embedder": embedder_path(settings),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-{limit or 'all'}-{digest}"


@dataclass
class BuiltCorpus:
    name: str
    folder: Path
    settings: Settings  # clinrag settings whose home holds the clinrag index
    doc_map: dict[str, str]  # clinrag doc_id -> corpus doc_id
    recipe_dir: Path | None
    meta: dict[str, Any]

    def recipe_store(self) -> Any:
        """The recipe's Chroma store over the same documents (None when not built)."""
        if self.recipe_dir is None:
            return None
        return baseline_langchain.open_store(self.recipe_dir, baseline_langchain.embeddings())


def build_corpus(
    name: str, limit: int | None = None, *, recipe: bool = True, rebuild: bool = False
) -> BuiltCorpus:
    """The clinrag index (and the recipe's Chroma) for a corpus, built once and cached."""
    data = dataset(name)
    rows = data.corpus[:limit] if limit else data.corpus
    probe = clinrag_settings(CACHE_DIR / "probe")
    folder = CACHE_DIR / cache_key(name, data, limit, probe)
    meta_path = folder / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if rebuild or not meta.get("clinrag"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path_to_doc = write_library(rows, folder / "library", render=library_text)
        settings = clinrag_settings(folder / "clinrag")
        log(f"[{name}] building the clinrag index over {len(rows)} documents (cached) ...")
        run = clinrag_ingest([folder / "library"], settings, path_to_doc)
        if run.failed:
            log(f"[{name}] {len(run.failed)} files failed: {run.failed[:3]}")
        meta = {
            "corpus": name,
            "limit": limit,
            "docs": len(rows),
            "clinrag": {
                "docs": run.docs,
                "chunks": run.chunks,
                "chars": run.chars,
                "build_seconds": round(run.seconds, 1),
                "failed": run.failed,
            },
        }
        (folder / "doc_map.json").write_text(json.dumps(run.doc_map))
        meta_path.write_text(json.dumps(meta, indent=1))
        log(f"[{name}] clinrag: {run.chunks} chunks in {run.seconds:.0f} s")
    if recipe and not meta.get("recipe"):
        shutil.rmtree(folder / "recipe", ignore_errors=True)
        log(f"[{name}] building the LangChain recipe index (cached) ...")
        store, run = recipe_build(
            [(str(r["doc_id"]), library_text(r)) for r in rows], folder / "recipe"
        )
        del store
        meta["recipe"] = {
            "chunks": run.chunks,
            "chars": run.chars,
            "build_seconds": round(run.seconds, 1),
        }
        meta_path.write_text(json.dumps(meta, indent=1))
        log(f"[{name}] recipe: {run.chunks} chunks in {run.seconds:.0f} s")
    return BuiltCorpus(
        name=name,
        folder=folder,
        settings=clinrag_settings(folder / "clinrag"),
        doc_map=json.loads((folder / "doc_map.json").read_text()),
        recipe_dir=(folder / "recipe") if meta.get("recipe") else None,
        meta=meta,
    )


def copy_home(built: BuiltCorpus, dest: Path) -> Settings:
    """A private copy of a cached clinrag home (to modify without touching the cache)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        built.settings.home, dest, ignore=shutil.ignore_patterns("writer.lock", "*.owner")
    )
    return clinrag_settings(dest)


# --- output --------------------------------------------------------------------------------------


def percentile_ms(seconds: Sequence[float], p: float) -> float | None:
    """The evaluation's percentile of timings in seconds, in milliseconds (None for none)."""
    value = percentile(seconds, p)
    return None if value is None else 1000 * value


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned plain-text table for the terminal (first column left, the rest right)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
