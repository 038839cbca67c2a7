"""Shared helpers for the benchmarks: the eval data, clinrag and LangChain indexes, and tables.

Nothing here is a benchmark by itself. The data lives in ``../shared/eval`` (next to the
repository, never copied into it); see that folder's README for the format.

clinrag indexes are built through clinrag's real ingestion path: each corpus row is written
as a Markdown file (``# {title}\\n\\n{text}``, no heading when the title is empty) and the
folder is ingested with ``ingest.index.ingest``, so loaders, chunking, embedding, the vector
store and the manifest are all the shipped code. clinrag slugs file names into doc ids
(``CancerGov:0000001_1-1`` -> ``cancergov-0000001-1-1``) and suffixes clashes, so every
index keeps a map from its doc ids back to the corpus doc ids.

The LangChain recipe is the usual one: ``RecursiveCharacterTextSplitter(chunk_size=1000,
chunk_overlap=200)`` over the same Markdown text, ``HuggingFaceEmbeddings`` with the same
packaged all-MiniLM-L6-v2 folder, ``Chroma.from_documents`` and ``similarity_search``.

Built indexes are cached under ``benchmarks/.cache/`` (git-ignored), keyed by corpus, corpus
file size and mtime, document limit and the chunking settings, so reruns skip embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO.parent / "shared" / "eval"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
CACHE_FORMAT = 1  # bump when the way indexes are built changes

RECIPE_CHUNK_SIZE = 1000
RECIPE_CHUNK_OVERLAP = 200
RECIPE_COLLECTION = "recipe"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_corpus(name: str) -> list[dict[str, Any]]:
    """corpus.jsonl rows: {doc_id, title, text, source, url}."""
    return read_jsonl(eval_dir() / name / "corpus.jsonl")


def load_questions(name: str) -> list[dict[str, Any]]:
    """questions.jsonl rows: {qid, question, gold_doc_ids, answer, long_answer}."""
    return read_jsonl(eval_dir() / name / "questions.jsonl")


def duplicated_doc_ids(name: str) -> set[str]:
    """Corpus doc ids shared by several rows (MedQuAD: 4 ids cover 23 passages on different
    diseases). A question whose gold is such an id has no single gold passage: the benchmarks
    leave those questions out and say how many."""
    seen: set[str] = set()
    dup: set[str] = set()
    for row in load_corpus(name):
        (dup if row["doc_id"] in seen else seen).add(row["doc_id"])
    return dup


def sample(rows: Sequence[Any], n: int | None, seed: int = 0) -> list[Any]:
    """A fixed seeded sample of ``n`` rows (all rows, in order, when n is None or too big)."""
    if n is None or n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(list(rows), n)


def guideline_files(limit: int | None = None) -> list[Path]:
    files = sorted((eval_dir() / "guidelines" / "markdown").glob("*.md"))
    return files[:limit] if limit else files


def markdown_text(row: dict[str, Any]) -> str:
    """How a corpus row becomes a library file: its title as the H1, then its text."""
    title = (row.get("title") or "").strip()
    return f"# {title}\n\n{row['text']}\n" if title else f"{row['text']}\n"


def write_library(rows: Iterable[dict[str, Any]], folder: Path) -> dict[str, str]:
    """Write each row as ``folder/<safe doc_id>.md``. Returns {file path: corpus doc_id}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    used: set[str] = set()
    for row in rows:
        base = _SAFE_NAME.sub("_", row["doc_id"]).strip("._") or "doc"
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        path = folder / f"{name}.md"
        path.write_text(markdown_text(row), encoding="utf-8")
        paths[str(path)] = row["doc_id"]
    return paths


# --- clinrag -----------------------------------------------------------------------------------


def clinrag_settings(home: Path, **overrides: Any) -> Any:
    """Default settings with ``home``; CLINRAG_* variables (other than HOME) still apply."""
    from core.config import load_settings

    env = {k: v for k, v in os.environ.items() if k.startswith("CLINRAG_") and k != "CLINRAG_HOME"}
    env.setdefault("CLINRAG_CONFIG", str(home / "no-config.toml"))
    return load_settings(env=env, overrides={"home": home, **overrides})


def warm_index(settings: Any) -> Any:
    """An ``Index`` whose embedder is loaded, so model loading is not part of any timing."""
    from core.library.index import Index

    index = Index(settings)
    index.embedder.warm_up()
    return index


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

    @property
    def rate(self) -> dict[str, float]:
        s = max(self.seconds, 1e-9)
        return {
            "chunks_per_s": self.chunks / s,
            "embedded_chars_per_s": self.chars / s,
            "source_chars_per_s": self.source_chars / s,
        }


def clinrag_ingest(
    paths: Sequence[Path], settings: Any, path_to_doc: dict[str, str] | None = None
) -> IngestRun:
    """Time ``ingest.index.ingest`` over ``paths`` into ``settings.home`` (model pre-loaded)."""
    from core.library.index import indexed_text
    from ingest.index import ingest

    index = warm_index(settings)
    timer = Timer(index.embedder.embed)
    index.embedder.embed = timer  # instance attribute: ingest's calls go through the timer
    t0 = time.perf_counter()
    summary = ingest(list(paths), settings, progress=False, index=index)
    seconds = time.perf_counter() - t0
    doc_map: dict[str, str] = {}
    for r in summary.results:
        if r.doc_id and r.status in {"added", "updated", "unchanged"}:
            doc_map[r.doc_id] = (path_to_doc or {}).get(r.path, r.doc_id)
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
        embed_seconds=timer.seconds,
        over_limit=count_over_limit(embedded),
        failed=[f"{r.path}: {r.reason} {r.detail or ''}".strip() for r in summary.failed],
        doc_map=doc_map,
    )


class Timer:
    """Wraps a callable and adds up the wall time spent inside it."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


_TOKENIZER: Any = None


def count_over_limit(texts: Sequence[str]) -> int:
    """How many texts exceed the embedder's window (MiniLM: 256 tokens; the rest is cut off)."""
    global _TOKENIZER
    from core.backends.sentence_transformers import _load, packaged_embedder_dir

    if _TOKENIZER is None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "sequence length is longer than" is what we count
        model = _load(str(packaged_embedder_dir()), "cpu", "float32")
        _TOKENIZER = (model.tokenizer, int(model.max_seq_length))
    tokenizer, window = _TOKENIZER
    n = 0
    for start in range(0, len(texts), 512):
        enc = tokenizer(list(texts[start : start + 512]), add_special_tokens=True)
        n += sum(len(ids) > window for ids in enc["input_ids"])
    return n


# --- the LangChain recipe ------------------------------------------------------------------------


def recipe_embeddings() -> Any:
    from langchain_huggingface import HuggingFaceEmbeddings

    from core.backends.sentence_transformers import packaged_embedder_dir

    return HuggingFaceEmbeddings(model_name=str(packaged_embedder_dir()))


def recipe_split(texts: Sequence[tuple[str, str]]) -> list[Any]:
    """(doc_id, text) -> LangChain Documents carrying ``doc_id`` metadata."""
    from langchain_core.documents import Document as LCDocument
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=RECIPE_CHUNK_SIZE, chunk_overlap=RECIPE_CHUNK_OVERLAP
    )
    docs = [LCDocument(page_content=t, metadata={"doc_id": d}) for d, t in texts]
    return splitter.split_documents(docs)


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


def recipe_build(
    texts: Sequence[tuple[str, str]], persist_dir: Path | None, embeddings: Any = None
) -> tuple[Any, IngestRun]:
    """Split, embed and store with the recipe; timed from split to stored."""
    from langchain_chroma import Chroma

    embeddings = embeddings or recipe_embeddings()
    embeddings.embed_query("warm up")  # model loading is not timed, as for clinrag
    timed = _TimedEmbeddings(embeddings)
    t0 = time.perf_counter()
    chunks = recipe_split(texts)
    store = Chroma.from_documents(
        chunks,
        timed,
        collection_name=RECIPE_COLLECTION,
        persist_directory=str(persist_dir) if persist_dir else None,
        client_settings=_chroma_settings(),
    )
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


def _TimedEmbeddings(inner: Any) -> Any:  # noqa: N802  (a class factory, used like a class)
    """The recipe's embeddings with the time spent in ``embed_documents`` added up."""
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


def recipe_open(persist_dir: Path, embeddings: Any = None) -> Any:
    from langchain_chroma import Chroma

    return Chroma(
        collection_name=RECIPE_COLLECTION,
        embedding_function=embeddings or recipe_embeddings(),
        persist_directory=str(persist_dir),
        client_settings=_chroma_settings(),
    )


# --- cached indexes for the retrieval and abstention benchmarks --------------------------------


def _corpus_stamp(name: str) -> str:
    path = eval_dir() / name / "corpus.jsonl"
    st = path.stat()
    return f"{st.st_size}-{int(st.st_mtime)}"


def resolved_embedder_dtype(settings: Any) -> str:
    """The precision the embedder will actually run in on this machine ("" for float32, so
    indexes built before the setting existed keep their cache key)."""
    from core.backends.sentence_transformers import resolve_dtype

    dtype = resolve_dtype(settings.embedder_dtype, settings.device)
    return dtype if dtype != "float32" else ""


def cache_key(name: str, limit: int | None, settings: Any) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "corpus": _corpus_stamp(name),
        "limit": limit,
        "chunk_chars": settings.chunk_chars,
        "overlap": settings.chunk_overlap_sentences,
        "embedder": settings.embedder,
        "embedder_model": settings.embedder_model,
        "recipe": [RECIPE_CHUNK_SIZE, RECIPE_CHUNK_OVERLAP],
    }
    dtype = resolved_embedder_dtype(settings)
    if dtype:
        parts["embedder_dtype"] = dtype
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-{limit or 'all'}-{digest}"


@dataclass
class BuiltCorpus:
    name: str
    folder: Path
    settings: Any  # clinrag settings whose home holds the clinrag index
    doc_map: dict[str, str]  # clinrag doc_id -> corpus doc_id
    recipe_dir: Path | None
    meta: dict[str, Any]


def build_corpus(
    name: str, limit: int | None = None, *, recipe: bool = True, rebuild: bool = False
) -> BuiltCorpus:
    """The clinrag index (and the recipe's Chroma) for a corpus, built once and cached."""
    probe = clinrag_settings(CACHE_DIR / "probe")
    folder = CACHE_DIR / cache_key(name, limit, probe)
    meta_path = folder / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if rebuild or not meta.get("clinrag"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rows = load_corpus(name)[:limit] if limit else load_corpus(name)
        path_to_doc = write_library(rows, folder / "library")
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
        rows = load_corpus(name)[:limit] if limit else load_corpus(name)
        shutil.rmtree(folder / "recipe", ignore_errors=True)
        log(f"[{name}] building the LangChain recipe index (cached) ...")
        store, run = recipe_build(
            [(r["doc_id"], markdown_text(r)) for r in rows], folder / "recipe"
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


def copy_home(built: BuiltCorpus, dest: Path) -> Any:
    """A private copy of a cached clinrag home (to modify without touching the cache)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        built.settings.home, dest, ignore=shutil.ignore_patterns("writer.lock", "*.owner")
    )
    return clinrag_settings(dest)


# --- metrics and output --------------------------------------------------------------------------


def doc_ranking(doc_ids: Iterable[str], depth: int = 10) -> list[str]:
    """Documents in order of their first chunk, duplicates dropped, cut at ``depth``."""
    out: list[str] = []
    for d in doc_ids:
        if d not in out:
            out.append(d)
            if len(out) == depth:
                break
    return out


def rank_metrics(ranked_docs: list[str], gold: Iterable[str], k: int = 5) -> tuple[float, float]:
    """(recall@k, reciprocal rank of the first gold doc within the ranking) for one question."""
    gold = set(gold)
    recall = len(gold & set(ranked_docs[:k])) / len(gold) if gold else 0.0
    rr = next((1.0 / i for i, d in enumerate(ranked_docs, start=1) if d in gold), 0.0)
    return recall, rr


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return float(qs[int(p) - 1])


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
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
