"""Retrieval quality and query latency: clinrag's hybrid Retriever vs. the LangChain recipe.

    HF_HUB_OFFLINE=1 ANONYMIZED_TELEMETRY=False .venv/bin/python benchmarks/retrieval.py

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
  --limit-docs N                  index only the first N corpus documents (quick tries; only
                                  questions whose gold document is indexed are asked)
  --latency-n N                   questions timed for latency (default 200)
  --no-recipe                     skip the LangChain recipe
  --latency-only                  skip recall/MRR, only time the queries
  --scale 100000                  instead: clinrag query latency at ~100,000 chunks (MedQuAD's
                                  real chunks padded with synthetic ones; see scale())
  --sweep                         instead: tune the RRF lexical weight on a dev sample of
                                  MedQuAD questions disjoint from the seeded test sample, so
                                  the shipped weights are not fitted to the reported figures
  --json                          print one JSON object instead of tables
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# This folder holds ingest.py, which would shadow clinrag's own ``ingest`` package while the
# folder is on sys.path (Python puts a script's folder first): import via the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from benchmarks import common  # noqa: E402  (sets the offline environment before model imports)
from benchmarks.common import log  # noqa: E402

RECIPE_K = 40  # the same depth as clinrag's per-retriever candidates


def _questions(
    name: str, n: int | None, seed: int, indexed: set[str]
) -> tuple[list[dict[str, Any]], int]:
    """The seeded sample, and how many questions were left out for an ambiguous gold id."""
    rows = common.load_questions(name)
    rows = [q for q in rows if q["gold_doc_ids"] and set(q["gold_doc_ids"]) <= indexed]
    dup = common.duplicated_doc_ids(name)
    clean = [q for q in rows if not set(q["gold_doc_ids"]) & dup]
    return common.sample(clean, n, seed), len(rows) - len(clean)


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
    per: dict[str, list[tuple[float, float]]] = {}
    to_corpus = built.doc_map
    store = common.recipe_open(built.recipe_dir) if recipe and built.recipe_dir else None
    t0 = time.perf_counter()
    if quality:
        # the full fused list, ranking unchanged, display cosines skipped (see the docstring)
        retriever = Retriever(built.settings)
        retriever.warm_up()
        retriever._fill_dense_scores = lambda vector, hits: None  # type: ignore[method-assign]
        depth = 2 * built.settings.candidates
        per = {s: [] for s in systems}
        for q in questions:
            hits = retriever.retrieve(q["question"], k=depth)
            dense = sorted((h for h in hits if h.dense_rank), key=lambda h: h.dense_rank)
            lexical = sorted((h for h in hits if h.bm25_rank), key=lambda h: h.bm25_rank)
            for system, ranked in zip(systems, (hits, dense, lexical), strict=True):
                docs = common.doc_ranking(to_corpus.get(h.chunk.doc_id, "?") for h in ranked)
                per[system].append(common.rank_metrics(docs, q["gold_doc_ids"]))
        if store is not None:
            per["langchain"] = []
            for q in questions:
                found = store.similarity_search(q["question"], k=RECIPE_K)
                docs = common.doc_ranking(d.metadata.get("doc_id", "?") for d in found)
                per["langchain"].append(common.rank_metrics(docs, q["gold_doc_ids"]))
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
        real.retrieve(q["question"])
        lat["clinrag hybrid"].append(time.perf_counter() - t)
        if store is not None:
            t = time.perf_counter()
            store.similarity_search(q["question"], k=built.settings.top_k)
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
        if system not in per and system not in lat:
            continue
        values = per.get(system, [])
        n = max(len(values), 1)
        entry: dict[str, Any] = {
            "recall@5": sum(r for r, _ in values) / n if values else None,
            "mrr@10": sum(rr for _, rr in values) / n if values else None,
        }
        if system in lat:
            entry["latency_p50_ms"] = 1000 * common.percentile(lat[system], 50)
            entry["latency_p95_ms"] = 1000 * common.percentile(lat[system], 95)
        result["systems"][system] = entry
    return result


# --- fusion weights, tuned on a dev sample ------------------------------------------------

SWEEP_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def sweep(name: str, n_test: int, n_dev: int, seed: int) -> dict[str, Any]:
    """recall@5 / MRR of weighted RRF (dense weight 1, lexical weight w) on dev questions.

    Dev questions are drawn (seed + 1) from those *not* in the seeded test sample that
    evaluate() reports, so choosing the weight here does not fit it to the reported figures.
    One retrieve() per question gives both candidate lists with their ranks (Hit.dense_rank,
    Hit.bm25_rank); every weighting is then re-fused from those ranks, exactly as retrieve()
    fuses them (no superseded documents or reranker in this corpus).
    """
    from assistant.retrieve import Retriever

    built = common.build_corpus(name, None, recipe=False)
    indexed = set(built.doc_map.values())
    test, _ = _questions(name, n_test, seed, indexed)
    test_ids = {q["qid"] for q in test}
    pool, _ = _questions(name, None, seed, indexed)
    dev = common.sample([q for q in pool if q["qid"] not in test_ids], n_dev, seed + 1)
    log(f"[sweep] {len(dev)} dev questions, disjoint from the {len(test)} test questions")
    retriever = Retriever(built.settings)
    retriever.warm_up()
    retriever._fill_dense_scores = lambda vector, hits: None  # type: ignore[method-assign]
    rrf_k = built.settings.rrf_k
    scores: dict[float, list[tuple[float, float]]] = {w: [] for w in SWEEP_WEIGHTS}
    for q in dev:
        hits = retriever.retrieve(q["question"], k=2 * built.settings.candidates)
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
            docs = common.doc_ranking(built.doc_map.get(h.chunk.doc_id, "?") for h in fused)
            scores[w].append(common.rank_metrics(docs, q["gold_doc_ids"]))
    table = {
        str(w): {
            "recall@5": sum(r for r, _ in v) / len(v),
            "mrr@10": sum(rr for _, rr in v) / len(v),
        }
        for w, v in scores.items()
    }
    return {"mode": "sweep", "corpus": name, "dev_questions": len(dev), "lexical_weight": table}


# --- latency at scale ----------------------------------------------------------------------------


def scale(target: int, latency_n: int, seed: int) -> dict[str, Any]:
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
    from core.library.index import Index, writer_lock
    from core.types import Chunk, Document
    from ingest.split import chunk_id

    built = common.build_corpus("medquad", None, recipe=False)
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
    questions = common.sample(common.load_questions("medquad"), latency_n, seed)
    retriever.retrieve("warm up question")
    timers = instrument(retriever)
    times = []
    for q in questions:
        t = time.perf_counter()
        retriever.retrieve(q["question"])
        times.append(time.perf_counter() - t)
    stages = breakdown(timers, len(times))
    return {
        "mode": "scale",
        "chunks_in_store": total,
        **pad_info,
        "warm_up_seconds": round(warm_seconds, 1),
        "questions": len(times),
        "latency_p50_ms": 1000 * common.percentile(times, 50),
        "latency_p95_ms": 1000 * common.percentile(times, 95),
        "stage_ms": stages,
        "note": (
            "padding chunks are perturbed copies of real MedQuAD chunks with perturbed copies "
            "of their real vectors, not embedded by the model; see scale() in retrieval.py"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args = parser.parse_args(argv)

    if args.sweep:
        result = sweep("medquad", args.questions, args.questions, args.seed)
        if args.json:
            print(json.dumps(result, indent=1))
            return 0
        print(f"MedQuAD dev sample ({result['dev_questions']} questions), dense weight 1.0")
        rows = [[w, m["recall@5"], m["mrr@10"]] for w, m in result["lexical_weight"].items()]
        print(common.table(["lexical weight", "recall@5", "MRR@10"], rows))
        return 0

    if args.scale:
        result = scale(args.scale, args.latency_n, args.seed)
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
