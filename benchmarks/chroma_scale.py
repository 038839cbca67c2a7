"""Chroma server vs embedded Chroma at 100k chunks: ingest writes and query latency (issue 18).

Both stores are driven through clinrag's own adapter (``core.backends.chroma.ChromaStore``), so
the figures are the product's: the embedded store is a PersistentClient in a temp dir, the
server a real ``chroma run`` on a free loopback port with its data in a temp dir
(``tests/cluster_parts.start_chroma_server``, the one the tests use).

The chunks are real: all of MedQuAD and PubMedQA (each row written as the Markdown library file
the other benchmarks ingest) and every guideline in ``../shared/eval/guidelines/markdown``,
loaded by ingest's loaders and cut by ingest's chunker with the default settings; what is
embedded is ``indexed_text`` (title, section and chunk), by the default embedder
(``embedder_backend = auto``), once, cached under ``benchmarks/.cache/chroma_scale/`` keyed by
the chunks' content and the embedder's identity. When the real chunks are fewer than
``--chunks``, the rest are copies of real chunks under new ids (``<chunk id>~cN``, document
``<doc id>~cN``) whose vectors carry small seeded Gaussian noise, renormalised, so the index
holds distinct points; the output says how many are real.

Phases, each with the load average before and after:

1. **write**: the chunks go in as ingest writes them: whole documents grouped until ingest's
   estimate of their chunks reaches ``EMBED_GROUP_CHUNKS``, and per group the adapter's
   ``delete_docs`` (ingest clears a document's old vectors first) then ``upsert`` (the
   adapter's own 4,000-id batches). Embedding is not timed here (vectors are precomputed).
   Embedded first, then the server.
2. **query**: real questions (MedQuAD and PubMedQA, seeded sample) embedded as queries, each
   sent to both stores in turn (the order alternates) through ``ChromaStore.query`` with
   ``k = candidates`` (40, what retrieval asks the dense store for) and no filter, which is
   retrieval's call when the asker may see every document. Then the filtered call retrieval
   makes when one document is hidden from the asker: ``where = {"doc_id": {"$in": every other
   doc id}}``.
3. **concurrent** (``--clients``): that many threads share one store, as app sessions share one.
4. **agreement**: for what share of queries the server's top-k equals embedded's (as a set and
   in order), and each store's recall of the exact top-k (numpy over all vectors).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.chroma_scale --json OUT.json
    .venv/bin/python -m benchmarks.chroma_scale --chunks 2000      # a quick end-to-end run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    CACHE_DIR,
    REPO,
    clinrag_settings,
    dataset,
    guideline_files,
    library_text,
    log,
    percentile_ms,
    table,
)

if TYPE_CHECKING:
    import numpy as np

    from core.backends.chroma import ChromaStore
    from core.config import Settings
    from core.types import Chunk, EmbedderInfo

HERE = CACHE_DIR / "chroma_scale"
CORPORA = ("medquad", "pubmedqa")
EMBED_PART = 1024  # texts per embed call; each part is saved, so an interrupted run resumes
NOISE_NORM = 0.05  # expected norm of the noise added to a copy's unit vector (cosine ~0.999)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")


# --- the chunks --------------------------------------------------------------------------------


@dataclass
class Corpus:
    chunks: list[Chunk]  # real chunks first, then copies
    estimates: list[int]  # per chunk: its document's chunk estimate, on the doc's first chunk
    vectors: np.ndarray
    info: EmbedderInfo
    real: int
    sources: dict[str, int] = field(default_factory=dict)  # documents per source


def _load_docs(settings: Settings, work: Path) -> Iterator[tuple[str, Any]]:
    """Every document (source, Document), loaded by ingest's loaders, with ingest's doc-id
    clash rule."""
    # without the site generator's front-matter keys, which clinrag refuses (as ingest_speed)
    from benchmarks.ingest_speed import _known_front_matter
    from evaluation.data import write_library
    from ingest.loaders import load_document

    taken: set[str] = set()
    for name in (*CORPORA, "guidelines"):
        if name == "guidelines":
            paths = [_known_front_matter(p, work / name) for p in guideline_files()]
        else:
            write_library(dataset(name).corpus, work / name, render=library_text)
            paths = sorted((work / name).glob("*.md"))
        for path in paths:
            doc = load_document(
                path,
                max_bytes=int(settings.max_file_mb * 1024 * 1024),
                max_pages=settings.max_pages,
                timeout_s=settings.parse_timeout_s,
            )
            if doc.doc_id in taken:  # ingest suffixes a clashing name with its path's hash
                doc.doc_id = f"{doc.doc_id}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"
            taken.add(doc.doc_id)
            yield name, doc


def real_chunks(settings: Settings, limit: int) -> tuple[list[Chunk], list[int], dict[str, int]]:
    """Real chunks, cut as ingest cuts them, in document order until at least ``limit`` (or
    all); with ingest's chunk estimate per document and the documents used per source."""
    from ingest.split import split_document

    chunks: list[Chunk] = []
    estimates: list[int] = []
    per_source = dict.fromkeys([*CORPORA, "guidelines"], 0)
    now = "2026-01-01T00:00:00+00:00"  # chunk ids do not depend on it
    with tempfile.TemporaryDirectory(prefix="clinrag-chroma-scale-") as tmp:
        for source, doc in _load_docs(settings, Path(tmp)):
            if len(chunks) >= limit:
                break
            cut = split_document(doc, settings.chunk_chars, settings.chunk_overlap_sentences, now)
            # ingest's group-size estimate (ingest/index.py), so groups are the size it makes
            estimate = sum(len(b.text) for b in doc.blocks) // max(settings.chunk_chars // 2, 1)
            for i, chunk in enumerate(cut):
                chunks.append(chunk)
                estimates.append(estimate if i == 0 else 0)
            per_source[source] += 1
    return chunks, estimates, per_source


def _embed_cached(
    embedder: Any, texts: Sequence[str], name: str, *, query: bool = False
) -> np.ndarray:
    """``embedder.embed`` of ``texts`` in parts of ``EMBED_PART``, each part cached by its
    texts and the embedder's identity (so a small run embeds only what it uses, and an
    interrupted run resumes)."""
    import numpy as np

    info = embedder.info
    folder = HERE / "vectors"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    t0 = time.perf_counter()
    embedded = 0
    for start in range(0, len(texts), EMBED_PART):
        part = list(texts[start : start + EMBED_PART])
        key = json.dumps([info.model, info.weights_hash, query, part])
        path = folder / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
        if path.is_file():
            out.append(np.load(path))
            continue
        vectors = np.asarray(embedder.embed(part, query=query), dtype=np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)  # a killed run leaves no half-written part behind
        out.append(vectors)
        embedded += len(part)
        rate = embedded / max(time.perf_counter() - t0, 1e-9)
        log(
            f"[embed {name}] {start + len(part):,}/{len(texts):,} ({rate:.1f}/s, load "
            f"{os.getloadavg()[0]:.1f})"
        )
    return np.concatenate(out) if out else np.zeros((0, info.dim), dtype=np.float32)


def build_corpus(n_chunks: int, seed: int, real_max: int | None = None) -> Corpus:
    """``n_chunks`` chunks with vectors: real ones (embedded once, cached; at most
    ``real_max``), then noisy copies."""
    import numpy as np

    from core import backends
    from core.library.index import indexed_text

    settings = clinrag_settings(HERE / "home")
    # whole embedding parts, so a small run's parts are the first parts of the full run's cache
    wanted = min(n_chunks, real_max or n_chunks)
    whole = -(-wanted // EMBED_PART) * EMBED_PART
    chunks, estimates, per_source = real_chunks(settings, whole)
    log(f"[chunks] {len(chunks):,} real chunks from {per_source}")
    embedder = backends.create("embedder", settings.embedder, settings)
    embedder.warm_up()
    log(f"[chunks] embedder {embedder.info.name} {embedder.info.model} {embedder.info.dtype}")
    real = min(len(chunks), wanted)
    vectors = _embed_cached(embedder, [indexed_text(c) for c in chunks[:whole]], "chunks")
    chunks, estimates, vectors = chunks[:real], estimates[:real], vectors[:real]
    rng = np.random.default_rng(seed)
    copies: list[Chunk] = []
    copy_estimates: list[int] = []
    noisy = []
    for n in range(n_chunks - real):
        src = n % real
        k = n // real + 1
        chunk = chunks[src]
        copies.append(
            dataclasses.replace(
                chunk, chunk_id=f"{chunk.chunk_id}~c{k}", doc_id=f"{chunk.doc_id}~c{k}"
            )
        )
        copy_estimates.append(estimates[src])
        v = vectors[src] + rng.normal(0.0, NOISE_NORM / np.sqrt(vectors.shape[1]), vectors.shape[1])
        noisy.append(v / np.linalg.norm(v))
    if noisy:
        vectors = np.concatenate([vectors, np.asarray(noisy, dtype=np.float32)])
    return Corpus(
        chunks=chunks + copies,
        estimates=estimates + copy_estimates,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        info=embedder.info,
        real=real,
        sources=per_source,
    )


def query_vectors(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` real questions, half MedQuAD and half PubMedQA (seeded), embedded as queries."""
    from core import backends

    rng = random.Random(seed)
    questions: list[str] = []
    for i, name in enumerate(CORPORA):
        pool = sorted({q.question for q in dataset(name).questions})
        questions += rng.sample(pool, n // len(CORPORA) + (i < n % len(CORPORA)))
    settings = clinrag_settings(HERE / "home")
    embedder = backends.create("embedder", settings.embedder, settings)
    embedder.warm_up()
    return questions, _embed_cached(embedder, questions, "queries", query=True)


def write_groups(corpus: Corpus, group_chunks: int) -> list[tuple[int, int]]:
    """(start, end) spans of whole documents, grouped as ingest groups them for a write."""
    groups, start, estimate = [], 0, 0
    for i, chunk in enumerate(corpus.chunks):
        if i > start and chunk.doc_id != corpus.chunks[i - 1].doc_id and estimate >= group_chunks:
            groups.append((start, i))
            start, estimate = i, 0
        estimate += corpus.estimates[i]
    if start < len(corpus.chunks):
        groups.append((start, len(corpus.chunks)))
    return groups


# --- measuring ---------------------------------------------------------------------------------


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ms_stats(seconds: Sequence[float], ps: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    return {f"p{p}_ms": _round(percentile_ms(seconds, p)) for p in ps} | {
        "mean_ms": _round(1000 * sum(seconds) / len(seconds)) if seconds else None,
        "n": len(seconds),
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def write_phase(store: ChromaStore, corpus: Corpus, groups: list[tuple[int, int]]) -> dict:
    deletes, upserts, totals = [], [], []
    before = load()
    t0 = time.perf_counter()
    for start, end in groups:
        part = corpus.chunks[start:end]
        doc_ids = list(dict.fromkeys(c.doc_id for c in part))
        t = time.perf_counter()
        store.delete_docs(doc_ids)
        t_mid = time.perf_counter()
        store.upsert(part, corpus.vectors[start:end])
        t_end = time.perf_counter()
        deletes.append(t_mid - t)
        upserts.append(t_end - t_mid)
        totals.append(t_end - t)
        if len(totals) % 10 == 0:
            log(f"[write] {end:,} chunks, {time.perf_counter() - t0:.0f} s, load {load()[0]}")
    seconds = time.perf_counter() - t0
    count = store.count()
    return {
        "chunks": len(corpus.chunks),
        "count_after": count,
        "groups": len(groups),
        "seconds": round(seconds, 2),
        "chunks_per_s": round(len(corpus.chunks) / seconds, 1),
        "group_p50_ms": _round(percentile_ms(totals, 50)),
        "group_p95_ms": _round(percentile_ms(totals, 95)),
        "delete_docs_seconds": round(sum(deletes), 2),
        "delete_docs": _ms_stats(deletes, (50, 95)),
        "upsert_seconds": round(sum(upserts), 2),
        "upsert": _ms_stats(upserts, (50, 95)),
        # the last tenth of the groups against the first: does a write slow as the index grows
        "last_vs_first_tenth": _round(_tenth_ratio(totals)),
        "load_before": before,
        "load_after": load(),
    }


def _tenth_ratio(values: Sequence[float]) -> float | None:
    n = max(len(values) // 10, 1)
    if len(values) < 2:
        return None
    first, last = sum(values[:n]) / n, sum(values[-n:]) / n
    return last / first if first else None


def query_phase(
    stores: dict[str, ChromaStore],
    vectors: np.ndarray,
    k: int,
    where: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, list[list[str]]]]:
    """Each query to every store in turn (the order alternates), single client."""
    names = list(stores)
    times: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[list[str]]] = {n: [] for n in names}
    before = load()
    for i, vector in enumerate(vectors):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            hits = stores[name].query(vector, k, where)
            times[name].append(time.perf_counter() - t)
            results[name].append([h for h, _ in hits])
    after = load()
    out = {n: _ms_stats(times[n]) | {"load_before": before, "load_after": after} for n in names}
    return out, results


def concurrent_phase(store: ChromaStore, vectors: np.ndarray, k: int, clients: int) -> dict:
    """``clients`` threads sharing one store, each sending its share of the queries."""
    times: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(part: np.ndarray) -> None:
        for vector in part:
            t = time.perf_counter()
            try:
                store.query(vector, k)
            except Exception as exc:  # counted and reported, the other clients go on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                times.append(time.perf_counter() - t)

    before = load()
    threads = [threading.Thread(target=client, args=(vectors[i::clients],)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    return _ms_stats(times) | {
        "clients": clients,
        "queries_per_s": round(len(times) / wall, 1),
        "errors": len(errors),
        "first_errors": errors[:3],
        "load_before": before,
        "load_after": load(),
    }


def agreement(a: list[list[str]], b: list[list[str]], top: int) -> dict[str, Any]:
    pairs = [(x[:top], y[:top]) for x, y in zip(a, b, strict=True)]
    n = len(pairs)
    return {
        "k": top,
        "same_set_share": round(sum(set(x) == set(y) for x, y in pairs) / n, 4),
        "same_order_share": round(sum(x == y for x, y in pairs) / n, 4),
        "mean_overlap": round(sum(len(set(x) & set(y)) / top for x, y in pairs) / n, 4),
    }


def exact_top(corpus: Corpus, vectors: np.ndarray, k: int) -> tuple[list[list[str]], Any]:
    """The exact cosine top-k over every vector (numpy), to measure each store's recall, and
    every query's scores against every chunk."""
    import numpy as np

    scores = vectors @ corpus.vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[corpus.chunks[j].chunk_id for j in row] for row in top], scores


def recall(found: list[list[str]], exact: list[list[str]], top: int) -> float:
    hits = sum(len(set(f[:top]) & set(e[:top])) for f, e in zip(found, exact, strict=True))
    return round(hits / (top * len(exact)), 4)


TIE_TOLERANCE = 0.01  # cosine: a returned chunk this close to the exact k-th is no miss


def recall_detail(
    corpus: Corpus, found: list[list[str]], exact: list[list[str]], scores: Any, top: int
) -> dict[str, Any]:
    """Where the misses are: per half of the questions (MedQuAD, PubMedQA), how many queries
    miss most of the exact top-k, and recall that forgives near-ties (a returned chunk whose
    exact cosine is within ``TIE_TOLERANCE`` of the exact k-th best counts as found)."""
    import numpy as np

    row = {c.chunk_id: i for i, c in enumerate(corpus.chunks)}
    per_query = [len(set(f[:top]) & set(e[:top])) / top for f, e in zip(found, exact, strict=True)]
    tolerant = []
    for q, f in enumerate(found):
        kth = np.sort(scores[q])[-top]
        ok = sum(scores[q, row[i]] >= kth - TIE_TOLERANCE for i in f[:top])
        tolerant.append(ok / top)
    half = len(per_query) // 2
    return {
        "k": top,
        "medquad_questions": round(float(np.mean(per_query[:half])), 4),
        "pubmedqa_questions": round(float(np.mean(per_query[half:])), 4),
        "queries_below_half": sum(r < 0.5 for r in per_query),
        "queries_perfect": sum(r == 1.0 for r in per_query),
        "tie_tolerant": round(float(np.mean(tolerant)), 4),
    }


def disk_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def rss_mb(pid: int) -> float | None:
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if "flags" in ln), [])
    return [f for f in CPU_FLAGS if f in flags]


@contextlib.contextmanager
def chroma_server(path: Path) -> Iterator[tuple[str, Any]]:
    """A real ``chroma run`` on a free loopback port (the tests' own starter)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from cluster_parts import start_chroma_server, stop

    url, process = start_chroma_server(path)
    try:
        yield url, process
    finally:
        stop(process)


def _store(settings: Settings, info: EmbedderInfo) -> ChromaStore:
    from core.backends.chroma import ChromaStore

    store = ChromaStore(settings)
    store.warm_up(info)
    return store


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import chromadb

    from core.library.index import EMBED_GROUP_CHUNKS

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    header = {
        "date": started,
        "commit": _commit(),
        "chromadb": chromadb.__version__,
        "cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_start": load(),
    }
    log(f"[start] {header}")
    t = time.perf_counter()
    corpus = build_corpus(args.chunks, args.seed, args.real_max)
    questions, qvectors = query_vectors(args.queries, args.seed)
    prepare_s = time.perf_counter() - t
    groups = write_groups(corpus, EMBED_GROUP_CHUNKS)
    probe = clinrag_settings(HERE / "home")
    k = probe.candidates
    doc_ids = sorted({c.doc_id for c in corpus.chunks})
    log(
        f"[chunks] {len(corpus.chunks):,} chunks ({corpus.real:,} real), {len(doc_ids):,} "
        f"documents, {len(groups)} write groups, {len(questions)} queries, k={k} "
        f"(prepared in {prepare_s:.0f} s)"
    )
    root = Path(tempfile.mkdtemp(prefix="clinrag-chroma-scale-"))
    result: dict[str, Any] = header | {
        "chunks": len(corpus.chunks),
        "real_chunks": corpus.real,
        "copies": len(corpus.chunks) - corpus.real,
        "copy_noise_norm": NOISE_NORM,
        "documents": len(doc_ids),
        "sources": corpus.sources,
        "embedder": dataclasses.asdict(corpus.info),
        "dim": int(corpus.vectors.shape[1]),
        "write_group_chunks": EMBED_GROUP_CHUNKS,
        "queries": len(questions),
        "k": k,
    }
    try:
        embedded_settings = clinrag_settings(root / "embedded")
        stores: dict[str, ChromaStore] = {}
        log("[write] embedded ...")
        stores["embedded"] = _store(embedded_settings, corpus.info)
        writes = {"embedded": write_phase(stores["embedded"], corpus, groups)}
        log(f"[write] embedded: {writes['embedded']}")
        with chroma_server(root / "server-data") as (url, process):
            stores["server"] = _store(
                clinrag_settings(root / "server", chroma_url=url), corpus.info
            )
            log(f"[write] server at {url} ...")
            writes["server"] = write_phase(stores["server"], corpus, groups)
            log(f"[write] server: {writes['server']}")
            result["write"] = writes

            # untimed warm-up: the first queries load each index into memory
            for vector in qvectors[:5]:
                for store in stores.values():
                    store.query(vector, k)
            log("[query] unfiltered ...")
            result["query"], found = query_phase(stores, qvectors, k)
            log(f"[query] {result['query']}")
            # one hidden document: retrieval then names every other document in the filter
            hidden = doc_ids[len(doc_ids) // 2]
            where = {"doc_id": {"$in": [d for d in doc_ids if d != hidden]}}
            nf = min(args.filtered_queries, len(qvectors))
            if nf:
                log(f"[query] filtered ($in of {len(doc_ids) - 1:,} doc ids) x {nf} ...")
                try:
                    filtered, found_f = query_phase(stores, qvectors[:nf], k, where)
                except Exception:  # a store refusing the product's filter is a finding
                    errors = {}
                    for name, store in stores.items():
                        try:
                            store.query(qvectors[0], k, where)
                            errors[name] = "ok"
                        except Exception as exc:
                            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                    result["query_filtered_error"] = errors | {"in_ids": len(doc_ids) - 1}
                    log(f"[query] filtered failed: {errors}")
                else:
                    result["query_filtered"] = filtered | {"in_ids": len(doc_ids) - 1}
                    log(f"[query] filtered: {filtered}")
                    result["filtered_agreement"] = agreement(
                        found_f["embedded"], found_f["server"], k
                    )
                # what retrieval sends now (assistant/retrieve.py dense_filter): the hidden one
                log(f"[query] filtered ($nin of 1 doc id) x {nf} ...")
                excluded = {"doc_id": {"$nin": [hidden]}}
                result["query_excluded"], found_x = query_phase(stores, qvectors[:nf], k, excluded)
                log(f"[query] excluded: {result['query_excluded']}")
                if "query_filtered" in result:
                    result["excluded_vs_listed"] = {
                        name: agreement(found_f[name], found_x[name], k) for name in stores
                    }
                # retrieval's plan for a few hidden chunks (assistant/retrieve.py
                # dense_query_plan): unfiltered, k + the hidden chunks, those dropped
                gone = {c.chunk_id for c in corpus.chunks if c.doc_id == hidden}
                log(f"[query] unfiltered k + {len(gone)}, hidden dropped x {nf} ...")
                result["query_post_filtered"], found_p = query_phase(
                    stores, qvectors[:nf], k + len(gone)
                )
                for name in stores:
                    found_p[name] = [[i for i in ids if i not in gone][:k] for ids in found_p[name]]
                log(f"[query] post-filtered: {result['query_post_filtered']}")
                if "query_filtered" in result:
                    result["post_filtered_vs_listed"] = {
                        name: agreement(found_f[name], found_p[name], k) for name in stores
                    }
            if args.clients > 1:
                result["concurrent"] = {}
                for name, store in stores.items():
                    log(f"[concurrent] {name}, {args.clients} clients ...")
                    result["concurrent"][name] = concurrent_phase(store, qvectors, k, args.clients)
                    log(f"[concurrent] {name}: {result['concurrent'][name]}")
            # every ingest starts with recover(), which lists every id in the store twice
            result["ids_listing"] = {}
            for name, store in stores.items():
                before, t = load(), time.perf_counter()
                listed = len(store.ids())
                result["ids_listing"][name] = {
                    "ids": listed,
                    "seconds": round(time.perf_counter() - t, 2),
                    "load_before": before,
                    "load_after": load(),
                }
            log(f"[ids] {result['ids_listing']}")
            result["server_rss_mb"] = rss_mb(process.pid)
            exact, scores = exact_top(corpus, qvectors, k)
            top_k = probe.top_k
            result["agreement"] = {
                f"top{n}": agreement(found["embedded"], found["server"], n) for n in (k, top_k)
            }
            result["recall_vs_exact"] = {
                name: {f"top{n}": recall(found[name], exact, n) for n in (k, top_k)}
                for name in stores
            }
            result["recall_detail"] = {
                name: recall_detail(corpus, found[name], exact, scores, k) for name in stores
            }
            for store in stores.values():
                store.close()
        result["disk_mb"] = {
            "embedded": disk_mb(embedded_settings.store_dir),
            "server": disk_mb(root / "server-data"),
        }
        result["process_rss_mb"] = rss_mb(os.getpid())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["load_end"] = load()
    return result


def report(r: dict[str, Any]) -> str:
    w, q = r["write"], r["query"]
    lines = [
        f"chromadb {r['chromadb']}, {r['cpus']} CPUs, flags {' '.join(r['cpu_flags'])}, "
        f"OMP_NUM_THREADS={r['omp_num_threads']}, commit {r['commit']}, {r['date']}",
        f"{r['chunks']:,} chunks: {r['real_chunks']:,} real + {r['copies']:,} noisy copies; "
        f"{r['documents']:,} documents; write groups of ~{r['write_group_chunks']} chunks; "
        f"{r['queries']} queries, k={r['k']}",
        "",
        table(
            ["write", "seconds", "chunks/s", "group p50 ms", "group p95 ms", "of it delete s",
             "last/first tenth", "load before -> after"],
            [
                [n, w[n]["seconds"], w[n]["chunks_per_s"], w[n]["group_p50_ms"],
                 w[n]["group_p95_ms"], w[n]["delete_docs_seconds"], w[n]["last_vs_first_tenth"],
                 f"{w[n]['load_before'][0]} -> {w[n]['load_after'][0]}"]
                for n in w
            ],
        ),
        "",
    ]  # fmt: skip
    rows = [["query " + n, q[n]["p50_ms"], q[n]["p95_ms"], q[n]["p99_ms"], q[n]["n"]] for n in q]
    for n, v in r.get("query_filtered", {}).items():
        if isinstance(v, dict):
            rows.append([f"filtered {n}", v["p50_ms"], v["p95_ms"], v["p99_ms"], v["n"]])
    for n, v in r.get("query_excluded", {}).items():
        if isinstance(v, dict):
            rows.append([f"excluded {n}", v["p50_ms"], v["p95_ms"], v["p99_ms"], v["n"]])
    for n, v in r.get("query_post_filtered", {}).items():
        if isinstance(v, dict):
            rows.append([f"post-filtered {n}", v["p50_ms"], v["p95_ms"], v["p99_ms"], v["n"]])
    for n, v in r.get("concurrent", {}).items():
        rows.append([f"{v['clients']} clients {n}", v["p50_ms"], v["p95_ms"], v["p99_ms"], v["n"]])
    lines.append(table(["latency", "p50 ms", "p95 ms", "p99 ms", "n"], rows))
    for n, v in r.get("concurrent", {}).items():
        lines.append(f"{n}, {v['clients']} clients: {v['queries_per_s']} q/s, {v['errors']} errors")
    lines.append(f"server/embedded agreement: {json.dumps(r['agreement'])}")
    if "post_filtered_vs_listed" in r:
        agree = json.dumps(r["post_filtered_vs_listed"])
        lines.append(f"post-filter vs $in top-k agreement: {agree}")
    if "excluded_vs_listed" in r:
        lines.append(f"$nin vs $in top-k agreement: {json.dumps(r['excluded_vs_listed'])}")
    if "filtered_agreement" in r:
        lines.append(f"filtered agreement: {json.dumps(r['filtered_agreement'])}")
    if "query_filtered_error" in r:
        lines.append(f"filtered query failed: {r['query_filtered_error']}")
    lines.append(f"recall vs exact: {json.dumps(r['recall_vs_exact'])}")
    lines.append(f"recall detail: {json.dumps(r['recall_detail'])}")
    lines.append(
        "store.ids() (run twice by every ingest's recover): "
        + ", ".join(
            f"{n} {v['ids']:,} ids in {v['seconds']} s" for n, v in r["ids_listing"].items()
        )
    )
    lines.append(f"disk MB: {r['disk_mb']}, server RSS MB {r.get('server_rss_mb')}")
    lines.append(f"load start {r['load_start']}, end {r['load_end']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from core.config import apply_offline_environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filtered-queries", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients; 1: none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--real-max", type=int, default=None, help="at most this many real chunks (default: all)"
    )
    parser.add_argument("--prepare-only", action="store_true", help="embed and cache, no stores")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="JSON to FILE or stdout")
    args = parser.parse_args(argv)
    apply_offline_environment()
    if args.prepare_only:
        corpus = build_corpus(args.chunks, args.seed, args.real_max)
        query_vectors(args.queries, args.seed)
        log(f"[prepare] {corpus.real:,} real chunks of {len(corpus.chunks):,}")
        return 0
    result = run(args)
    print(report(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(result, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
