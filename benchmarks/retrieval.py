"""Retrieval quality and query latency: clinrag's hybrid Retriever vs. the LangChain recipe.

    .venv/bin/python -m benchmarks.retrieval

Datasets (from ../shared/eval): MedQuAD, a fixed sample of 1,000 questions (seed 0) over its
full corpus of 8,254 passages, and PubMedQA, all 500 questions over its 500 abstracts. Each
question has one gold document. (MedQuAD reuses 4 doc ids for 23 passages on different
diseases; the 23 questions pointing at them have no single gold passage and are left out
before sampling.)

Metrics, per system: the ranked chunks are turned into a ranking of documents (first chunk of
each document, duplicates dropped, top 10); recall@5 = gold document among the first 5
documents; MRR = mean of 1/rank of the gold document within those 10 (0 when absent).

Systems, all in one run over the same cached indexes:
  clinrag hybrid   Retriever.retrieve (dense + BM25, reciprocal rank fusion), the shipped code
  dense only       the same call's dense candidate list (Hit.dense_rank), i.e. Chroma alone
  bm25 only        the same call's BM25 candidate list (Hit.bm25_rank)
  langchain        RecursiveCharacterTextSplitter(1000, 200) + HuggingFaceEmbeddings (same
                   MiniLM) + Chroma.similarity_search(k=40)
For the quality pass the retriever returns its whole fused list (k = 2 x candidates) and its
``_fill_dense_scores`` step is skipped: that step only adds cosines for display/abstention
after the ranking is fixed, and would re-embed up to 40 chunks per question on the CPU.
Latency is then measured separately over the real, unmodified ``retrieve(question)`` at the
default top_k, after warm-up, one question at a time, interleaved with the recipe's
``similarity_search`` at the same k so that both see the same machine load; the mean time
per stage of clinrag's retrieve is printed too.

The first run builds and caches the indexes under benchmarks/.cache/ (MedQuAD: about 15 min
on 2 CPU cores for clinrag + recipe); later runs take a few minutes.

Options:
  --corpus medquad|pubmedqa|all   (default all)
  --questions N                   MedQuAD sample size (default 1000; PubMedQA always all)
  --limit-docs N                  index only the first N corpus documents (quick tries, also
                                  with --sweep and --scale; only questions whose gold document
                                  is indexed are asked)
  --latency-n N                   questions timed for latency (default 200)
  --no-recipe                     skip the LangChain recipe
  --latency-only                  skip recall/MRR, only time the queries
  --scale 100000                  instead: clinrag query latency at ~100,000 chunks (MedQuAD's
                                  real chunks padded with synthetic ones; see scale())
  --sweep                         instead: tune the RRF lexical weight on a dev sample of
                                  MedQuAD questions disjoint from the seeded test sample, so
                                  the shipped weights are not fitted to the reported figures
  --json                          print one JSON object instead of tables
  --embedder-backends A,B         instead: the same questions over indexes embedded each way
                                  (e.g. torch-float32,onnx-int8: torch float32 vs the int8
                                  ONNX export), recall@5 / MRR@10 side by side and the
                                  difference in points; no recipe
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks import common
from benchmarks.common import log
from core.config import apply_offline_environment
from core.types import Hit
from evaluation import metrics as m
from evaluation.data import Question, sample_questions, shared_doc_ids
from evaluation.runner import DOC_DEPTH

RECIPE_K = 40  # the same depth as clinrag's per-retriever candidates


def _questions(
    name: str, n: int | None, seed: int, indexed: set[str]
) -> tuple[list[Question], int]:
    """The seeded sample, and how many questions were left out for an ambiguous gold id."""
    data = common.dataset(name)
    rows = [q for q in data.questions if q.gold and set(q.gold) <= indexed]
    shared = shared_doc_ids(data.corpus)
    clean = [q for q in rows if not shared.keys() & set(q.gold)]
    return sample_questions(clean, n, seed), len(rows) - len(clean)


def _ranking(doc_ids: Iterable[str]) -> list[str]:
    """The documents of ranked chunks, first chunk of each, top ``DOC_DEPTH``."""
    return m.dedupe_docs(doc_ids, DOC_DEPTH)


def _quality(rankings: Sequence[list[str]], questions: Sequence[Question]) -> dict[str, Any]:
    """recall@5 and MRR within the ranking (MRR@10), None without rankings."""
    if not rankings:
        return {"recall@5": None, "mrr@10": None}
    scores = m.retrieval_metrics(rankings, [q.gold for q in questions], ks=(5,))
    return {"recall@5": scores["recall@5"], "mrr@10": scores["mrr"]}


STAGES = {
    "embed (all)": ("index.embedder", "embed"),
    "of which fill_dense_scores": ("", "_fill_dense_scores"),
    "vector store": ("index.store", "query"),
    "bm25": ("lexical", "search"),
    "manifest": ("index.manifest", "documents"),
    "manifest chunks": ("index.manifest", "chunks_by_id"),
}


def instrument(retriever: Any) -> dict[str, Any]:
    """Time each stage of ``retrieve`` by wrapping the backends' methods on their instances."""
    timers = {}
    for stage, (path, method) in STAGES.items():
        obj = retriever
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
        timer = common.Timer(getattr(obj, method))
        setattr(obj, method, timer)
        timers[stage] = timer
    return timers


def breakdown(timers: dict[str, Any], n: int) -> dict[str, float]:
    """Mean milliseconds per question in each stage. "embed (all)" is every embedder call
    inside retrieve: the question, plus the top-k chunks that only BM25 found, re-embedded by
    ``_fill_dense_scores`` for their cosine (that stage's time includes its embedder call)."""
    return {stage: 1000 * t.seconds / max(n, 1) for stage, t in timers.items()}


def evaluate(
    name: str,
    n_questions: int | None,
    seed: int,
    limit_docs: int | None,
    latency_n: int,
    recipe: bool,
    quality: bool = True,
) -> dict[str, Any]:
    from assistant.retrieve import Retriever

    built = common.build_corpus(name, limit_docs, recipe=recipe)
    indexed = set(built.doc_map.values())
    questions, ambiguous = _questions(name, n_questions, seed, indexed)
    log(f"[{name}] {len(questions)} questions over {len(built.doc_map)} documents")

    systems = ["clinrag hybrid", "dense only", "bm25 only"]
    rankings: dict[str, list[list[str]]] = {}
    to_corpus = built.doc_map
    store = built.recipe_store() if recipe else None
    t0 = time.perf_counter()
    if quality:
        # the full fused list, ranking unchanged, display cosines skipped (see the docstring)
        retriever = Retriever(built.settings)
        retriever.warm_up()
        retriever._fill_dense_scores = lambda vector, hits: None  # type: ignore[method-assign]
        depth = 2 * built.settings.candidates
        rankings = {s: [] for s in systems}
        for q in questions:
            hits = retriever.retrieve(q.question, k=depth)
            dense = _by_rank(hits, "dense_rank")
            lexical = _by_rank(hits, "bm25_rank")
            for system, ranked in zip(systems, (hits, dense, lexical), strict=True):
                rankings[system].append(
                    _ranking(to_corpus.get(h.chunk.doc_id, "?") for h in ranked)
                )
        if store is not None:
            rankings["langchain"] = [
                _ranking(
                    d.metadata.get("doc_id", "?")
                    for d in store.similarity_search(q.question, k=RECIPE_K)
                )
                for q in questions
            ]
    quality_seconds = time.perf_counter() - t0

    # latency: the real retrieve() at the default top_k vs. the recipe's similarity_search at
    # the same k, one question at a time, interleaved so both see the same machine load
    timed = questions[:latency_n]
    real = Retriever(built.settings)
    real.warm_up()
    real.retrieve("warm up question")
    timers = instrument(real)
    lat: dict[str, list[float]] = {"clinrag hybrid": []}
    if store is not None:
        lat["langchain"] = []
        store.similarity_search("warm up question", k=built.settings.top_k)
    for q in timed:
        t = time.perf_counter()
        real.retrieve(q.question)
        lat["clinrag hybrid"].append(time.perf_counter() - t)
        if store is not None:
            t = time.perf_counter()
            store.similarity_search(q.question, k=built.settings.top_k)
            lat["langchain"].append(time.perf_counter() - t)
    stages = breakdown(timers, len(timed))

    result: dict[str, Any] = {
        "corpus": name,
        "documents": len(built.doc_map),
        "questions": len(questions),
        "excluded_ambiguous_gold": ambiguous,
        "seed": seed,
        "clinrag_chunks": built.meta["clinrag"]["chunks"],
        "recipe_chunks": (built.meta.get("recipe") or {}).get("chunks"),
        "systems": {},
        "latency_questions": len(timed),
        "clinrag_stage_ms": stages,
        "quality_pass_seconds": round(quality_seconds, 1),
    }
    for system in [*systems, "langchain"] if quality else list(lat):
        if system not in rankings and system not in lat:
            continue
        entry = _quality(rankings.get(system, []), questions)
        if system in lat:
            entry["latency_p50_ms"] = common.percentile_ms(lat[system], 50)
            entry["latency_p95_ms"] = common.percentile_ms(lat[system], 95)
        result["systems"][system] = entry
    return result


def _by_rank(hits: Sequence[Hit], rank: str) -> list[Hit]:
    """The hits one retriever found (``rank``: "dense_rank" or "bm25_rank"), in its order."""
    found = [(r, h) for h in hits if (r := getattr(h, rank))]
    return [h for _, h in sorted(found, key=lambda pair: pair[0])]


# --- fusion weights, tuned on a dev sample ------------------------------------------------

SWEEP_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def sweep(
    name: str, n_test: int, n_dev: int, seed: int, limit_docs: int | None = None
) -> dict[str, Any]:
    """recall@5 / MRR of weighted RRF (dense weight 1, lexical weight w) on dev questions.

    Dev questions are drawn (seed + 1) from those *not* in the seeded test sample that
    evaluate() reports, so choosing the weight here does not fit it to the reported figures.
    One retrieve() per question gives both candidate lists with their ranks (Hit.dense_rank,
    Hit.bm25_rank); every weighting is then re-fused from those ranks, exactly as retrieve()
    fuses them (no superseded documents or reranker in this corpus).
    """
    from assistant.retrieve import Retriever

    built = common.build_corpus(name, limit_docs, recipe=False)
    indexed = set(built.doc_map.values())
    test, _ = _questions(name, n_test, seed, indexed)
    # by the qid as written: a question that repeats a test question's qid stays out too, so
    # the dev sample is the one the shipped weights were chosen on
    test_ids = {q.source_qid for q in test}
    pool, _ = _questions(name, None, seed, indexed)
    dev = sample_questions([q for q in pool if q.source_qid not in test_ids], n_dev, seed + 1)
    log(f"[sweep] {len(dev)} dev questions, disjoint from the {len(test)} test questions")
    retriever = Retriever(built.settings)
    retriever.warm_up()
    retriever._fill_dense_scores = lambda vector, hits: None  # type: ignore[method-assign]
    rrf_k = built.settings.rrf_k
    rankings: dict[float, list[list[str]]] = {w: [] for w in SWEEP_WEIGHTS}
    for q in dev:
        hits = retriever.retrieve(q.question, k=2 * built.settings.candidates)
        for w in SWEEP_WEIGHTS:
            fused = sorted(
                hits,
                key=lambda h: (
                    -(
                        (1.0 / (rrf_k + h.dense_rank) if h.dense_rank else 0.0)
                        + (w / (rrf_k + h.bm25_rank) if h.bm25_rank else 0.0)
                    ),
                    h.chunk.chunk_id,
                ),
            )
            rankings[w].append(_ranking(built.doc_map.get(h.chunk.doc_id, "?") for h in fused))
    table = {str(w): _quality(v, dev) for w, v in rankings.items()}
    return {"mode": "sweep", "corpus": name, "dev_questions": len(dev), "lexical_weight": table}


# --- latency at scale ----------------------------------------------------------------------------


def scale(target: int, latency_n: int, seed: int, limit_docs: int | None = None) -> dict[str, Any]:
    """clinrag query latency with ``target`` chunks in the library.

    The real MedQuAD index (every chunk embedded by MiniLM) is copied and padded with synthetic
    chunks until it holds ``target``. Embedding ~80,000 chunks would take about an hour on 2
    CPU cores, so the padding is not embedded: each padding chunk is a real chunk's sentences
    shuffled with some words dropped (so BM25 sees realistic postings), and its vector is that
    real chunk's vector plus Gaussian noise, renormalised (cosine ~0.9 to the original, so
    the vectors cluster like real ones rather than spreading like random unit vectors).
    Padding goes in through the real Manifest (mark_pending/complete) and ChromaStore.upsert,
    as ingest does, in synthetic documents of 50 chunks each.
    """
    import numpy as np

    from assistant.retrieve import Retriever
    from core.backends.chroma import ChromaStore
    from core.library.index import Index, writer_lock
    from core.types import Chunk, Document
    from ingest.split import chunk_id

    built = common.build_corpus("medquad", limit_docs, recipe=False)
    folder = common.CACHE_DIR / f"scale-{target}-{built.folder.name}"
    stamp = folder / "done.json"
    pad_info: dict[str, Any]
    if stamp.is_file():
        pad_info = json.loads(stamp.read_text())
        settings = common.clinrag_settings(folder / "clinrag")
    else:
        settings = common.copy_home(built, folder / "clinrag")
        index = Index(settings)
        index.warm_up()
        real = index.manifest.chunks()
        need = target - len(real)
        log(f"[scale] padding {len(real):,} real chunks with {need:,} synthetic ones ...")
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        if not isinstance(index.store, ChromaStore):
            raise SystemExit("--scale copies vectors out of Chroma: set vector_store = chroma")
        with writer_lock(settings):
            col = index.store._col  # the vectors of the real chunks, to perturb
            got = col.get(ids=[c.chunk_id for c in real], include=["embeddings"])
            by_id = dict(zip(got["ids"], np.asarray(got["embeddings"]), strict=True))
            now = "2000-01-01T00:00:00+00:00"
            per_doc = 50
            made = 0
            d = 0
            while made < need:
                n = min(per_doc, need - made)
                src = [real[int(i)] for i in rng.integers(0, len(real), n)]
                doc_id = f"pad-{d:06d}"
                texts, starts, pos = [], [], 0
                for c in src:
                    words = " ".join(s for s in rng.permutation(c.text.split(". ")) if s).split()
                    keep = [w for w in words if rng.random() > 0.15] or words
                    texts.append(" ".join(keep))
                    starts.append(pos)
                    pos += len(texts[-1]) + 2
                sha = f"{d:064x}"
                doc = Document(
                    doc_id=doc_id,
                    title=f"{src[0].title} (synthetic variant {d})",
                    source_path=f"synthetic://{doc_id}",
                    sha256=sha,
                    blocks=[],
                )
                chunks = [
                    Chunk(
                        chunk_id=chunk_id(doc_id, t, s),
                        doc_id=doc_id,
                        text=t,
                        title=doc.title,
                        section="",
                        page=None,
                        char_start=s,
                        char_end=s + len(t),
                        doc_sha256=sha,
                        source_path=doc.source_path,
                        ingested_at=now,
                    )
                    for t, s in zip(texts, starts, strict=True)
                ]
                base = np.stack([by_id[c.chunk_id] for c in src]).astype(np.float32)
                noisy = base + rng.normal(0, 0.48 / np.sqrt(base.shape[1]), base.shape)
                vectors = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
                index.manifest.mark_pending(doc, now)
                index.store.upsert(chunks, vectors)
                index.manifest.complete(doc, chunks, now)
                made += n
                d += 1
        pad_info = {
            "real_chunks": len(real),
            "padding_chunks": need,
            "padding_docs": d,
            "padding_seconds": round(time.perf_counter() - t0, 1),
        }
        index.manifest.close()
        stamp.write_text(json.dumps(pad_info))

    retriever = Retriever(settings)
    t0 = time.perf_counter()
    retriever.warm_up()  # loads the embedder and (first time) builds the BM25 index
    warm_seconds = time.perf_counter() - t0
    total = retriever.index.store.count()
    questions = sample_questions(common.dataset("medquad").questions, latency_n, seed)
    retriever.retrieve("warm up question")
    timers = instrument(retriever)
    times = []
    for q in questions:
        t = time.perf_counter()
        retriever.retrieve(q.question)
        times.append(time.perf_counter() - t)
    stages = breakdown(timers, len(times))
    return {
        "mode": "scale",
        "chunks_in_store": total,
        **pad_info,
        "warm_up_seconds": round(warm_seconds, 1),
        "questions": len(times),
        "latency_p50_ms": common.percentile_ms(times, 50),
        "latency_p95_ms": common.percentile_ms(times, 95),
        "stage_ms": stages,
        "note": (
            "padding chunks are perturbed copies of real MedQuAD chunks with perturbed copies "
            "of their real vectors, not embedded by the model; see scale() in retrieval.py"
        ),
    }


_BACKEND_ENV = {
    "torch-float32": {"CLINRAG_EMBEDDER_BACKEND": "torch", "CLINRAG_EMBEDDER_DTYPE": "float32"},
    "torch-bfloat16": {"CLINRAG_EMBEDDER_BACKEND": "torch", "CLINRAG_EMBEDDER_DTYPE": "bfloat16"},
    "onnx-int8": {"CLINRAG_EMBEDDER_BACKEND": "onnx-int8", "CLINRAG_EMBEDDER_DTYPE": "auto"},
    "onnx-fp32": {"CLINRAG_EMBEDDER_BACKEND": "onnx-fp32", "CLINRAG_EMBEDDER_DTYPE": "auto"},
}


def compare_backends(
    name: str,
    backends: Sequence[str],
    n: int | None,
    seed: int,
    limit_docs: int | None,
    latency_n: int,
) -> dict[str, Any]:
    """One index per embedder backend (each cached under its own key), the same questions."""
    import os

    per: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in ("CLINRAG_EMBEDDER_BACKEND", "CLINRAG_EMBEDDER_DTYPE")}
    try:
        for backend in backends:
            os.environ.update(_BACKEND_ENV[backend])
            log(f"[{name}] embedder {backend} ...")
            per[backend] = evaluate(name, n, seed, limit_docs, latency_n, recipe=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    base = backends[0]
    diff = {
        backend: {
            system: {
                metric: round(
                    100 * (r["systems"][system][metric] - per[base]["systems"][system][metric]), 2
                )
                for metric in ("recall@5", "mrr@10")
            }
            for system in ("clinrag hybrid", "dense only")
        }
        for backend, r in per.items()
        if backend != base
    }
    return {"corpus": name, "baseline": base, "backends": per, "difference_points": diff}


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--corpus", choices=["medquad", "pubmedqa", "all"], default="all")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-docs", type=int, default=None)
    parser.add_argument("--latency-n", type=int, default=200)
    parser.add_argument("--no-recipe", action="store_true")
    parser.add_argument(
        "--latency-only", action="store_true", help="skip recall/MRR; only time the queries"
    )
    parser.add_argument("--scale", type=int, default=None, metavar="CHUNKS")
    parser.add_argument("--sweep", action="store_true", help="tune the RRF lexical weight")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--embedder-backends", default=None, metavar="A,B")
    args = parser.parse_args(argv)

    if args.embedder_backends:
        backends = [b.strip() for b in args.embedder_backends.split(",") if b.strip()]
        unknown = set(backends) - set(_BACKEND_ENV)
        if unknown or len(backends) < 2:
            parser.error(f"--embedder-backends: two or more of {', '.join(_BACKEND_ENV)}")
        name = "medquad" if args.corpus == "all" else args.corpus
        n = args.questions if name == "medquad" else None
        result = compare_backends(name, backends, n, args.seed, args.limit_docs, args.latency_n)
        result["machine"] = common.machine()
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        first = result["backends"][backends[0]]
        print(f"\n{name}: {first['questions']} questions over {first['documents']:,} documents")
        rows = []
        for backend, r in result["backends"].items():
            for system in ("clinrag hybrid", "dense only"):
                m = r["systems"][system]
                d = result["difference_points"].get(backend, {}).get(system, {})
                rows.append(
                    [
                        backend,
                        system,
                        r["clinrag_chunks"],
                        m["recall@5"],
                        d.get("recall@5"),
                        m["mrr@10"],
                        d.get("mrr@10"),
                        m.get("latency_p50_ms"),
                    ]
                )
        print(
            common.table(
                [
                    "embedder",
                    "system",
                    "chunks",
                    "recall@5",
                    "diff (points)",
                    "MRR@10",
                    "diff (points)",
                    "p50 ms",
                ],
                rows,
            )
        )
        return 0

    if args.sweep:
        result = sweep("medquad", args.questions, args.questions, args.seed, args.limit_docs)
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        print(f"MedQuAD dev sample ({result['dev_questions']} questions), dense weight 1.0")
        rows = [[w, m["recall@5"], m["mrr@10"]] for w, m in result["lexical_weight"].items()]
        print(common.table(["lexical weight", "recall@5", "MRR@10"], rows))
        return 0

    if args.scale:
        result = scale(args.scale, args.latency_n, args.seed, args.limit_docs)
        result["machine"] = common.machine()
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        print(f"clinrag query latency at {result['chunks_in_store']:,} chunks")
        print(
            common.table(
                ["chunks", "real", "padding", "questions", "p50 ms", "p95 ms"],
                [
                    [
                        result["chunks_in_store"],
                        result["real_chunks"],
                        result["padding_chunks"],
                        result["questions"],
                        result["latency_p50_ms"],
                        result["latency_p95_ms"],
                    ]
                ],
            )
        )
        print(f"warm-up (embedder load + BM25 build/load): {result['warm_up_seconds']} s")
        print(
            "mean ms per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in result["stage_ms"].items())
        )
        print(f"note: {result['note']}")
        return 0

    corpora = ["medquad", "pubmedqa"] if args.corpus == "all" else [args.corpus]
    results = []
    for name in corpora:
        n = args.questions if name == "medquad" else None
        results.append(
            evaluate(
                name,
                n,
                args.seed,
                args.limit_docs,
                args.latency_n,
                not args.no_recipe,
                quality=not args.latency_only,
            )
        )
    out = {"results": results, "machine": common.machine()}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in results:
        print(
            f"\n{r['corpus']}: {r['questions']} questions over {r['documents']:,} documents "
            f"(clinrag {r['clinrag_chunks']:,} chunks, recipe {r['recipe_chunks'] or 0:,} chunks)"
        )
        if r["excluded_ambiguous_gold"]:
            print(
                f"({r['excluded_ambiguous_gold']} questions left out before sampling: their "
                "gold doc_id is shared by several corpus passages)"
            )
        rows = [
            [
                system,
                m["recall@5"],
                m["mrr@10"],
                m.get("latency_p50_ms"),
                m.get("latency_p95_ms"),
            ]
            for system, m in r["systems"].items()
        ]
        print(common.table(["system", "recall@5", "MRR@10", "p50 ms", "p95 ms"], rows))
        print(f"latency over {r['latency_questions']} questions, top_k=5, one at a time")
        print(
            "clinrag mean ms per stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["clinrag_stage_ms"].items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
