"""Vector index recall: how many of the exact nearest passages the index returns, per ef_search.

    .venv/bin/python -m benchmarks.vector_recall --home H [--collection C] \\
        --questions evaluation/sets/guidelines/guidelines_questions.jsonl [...] \\
        [--ef 100,200,400,800] [--json]

For each ef_search value, a copy of the home's index (the home is never changed) gets that
value, and a fresh process (Chroma reads ef_search when it loads the index) asks the copy for
each question's ``candidates`` (40) nearest passages through clinrag's own adapter
(``ChromaStore.query``, no filter: retrieval's call when the asker may see everything). They
are compared with the exact nearest 40 by cosine over every stored vector (numpy): recall@40,
the share of questions whose exact nearest passage is returned first, the worst question's
recall, and the median query time. Questions are embedded as retrieval embeds them.

Setting a value below the collection's own goes through the adapter's collection object
directly (the product only ever raises it); that is why the copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from core.config import Settings, apply_offline_environment, load_settings


def _settings(home: Path, collection: str | None) -> Settings:
    env = {"CLINRAG_HOME": str(home)}
    if collection:
        env["CLINRAG_COLLECTION"] = collection
    return load_settings(env=env)


def _questions(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            out += [json.loads(line)["question"] for line in fh if line.strip()]
    return out


def _collection(index: Any) -> Any:
    """The adapter's Chroma collection (the benchmark reads vectors and sets ef_search)."""
    return cast(Any, index.store)._col


def _set_ef(home: Path, collection: str | None, ef: int) -> None:
    from assistant.retrieve import Retriever

    index = Retriever(_settings(home, collection)).index
    index.warm_up()
    _collection(index).modify(configuration={"hnsw": {"ef_search": ef}})
    index.store.close()


def measure(home: Path, collection: str | None, questions: list[str]) -> dict[str, Any]:
    """In this process: the index's answers against the exact nearest, for every question."""
    from assistant.retrieve import Retriever

    settings = _settings(home, collection)
    settings = settings.model_copy(update={"vector_search_ef": 10})  # never raise it here
    index = Retriever(settings).index
    index.warm_up()
    stored = _collection(index).get(include=["embeddings"], limit=10**7)
    ids = list(stored["ids"])
    vectors = np.asarray(stored["embeddings"], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = index.embedder.embed(questions, query=True)
    k = settings.candidates
    recalls, first, seconds = [], [], []
    for q in queries:
        exact = [ids[i] for i in np.argsort(-(vectors @ q))[:k]]
        t0 = time.perf_counter()
        got = [i for i, _ in index.store.query(q, k, None)]
        seconds.append(time.perf_counter() - t0)
        recalls.append(len(set(exact) & set(got)) / len(exact))
        first.append(bool(got) and got[0] == exact[0])
    config = _collection(index).configuration
    return {
        "ef_search": config["hnsw"]["ef_search"],
        "vectors": len(ids),
        "questions": len(questions),
        "k": k,
        "recall_at_k": round(float(np.mean(recalls)), 4),
        "nearest_first": round(float(np.mean(first)), 4),
        "worst_recall": round(float(min(recalls)), 4),
        "query_ms_median": round(1000 * statistics.median(seconds), 2),
    }


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--collection")
    parser.add_argument("--questions", type=Path, nargs="+", required=True)
    parser.add_argument("--ef", default="100,200,400,800")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    questions = _questions(args.questions)
    if args.measure:  # the child: one load of the index, at the ef_search it holds
        print(json.dumps(measure(args.home, args.collection, questions)))
        return 0
    rows = []
    for ef in [int(x) for x in args.ef.split(",")]:
        with tempfile.TemporaryDirectory(prefix="clinrag-recall-") as tmp:
            copy = Path(tmp) / "home"
            shutil.copytree(args.home, copy, ignore=shutil.ignore_patterns("*.lock", "eval"))
            _set_ef(copy, args.collection, ef)
            child = [sys.executable, "-m", "benchmarks.vector_recall", "--measure"]
            child += ["--home", str(copy), "--questions", *map(str, args.questions)]
            if args.collection:
                child += ["--collection", args.collection]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{rows[0]['vectors']} vectors, {rows[0]['questions']} questions, k {rows[0]['k']}")
        print("ef_search  recall@k  nearest first  worst  query ms (median)")
        for r in rows:
            print(
                f"{r['ef_search']:>9}  {r['recall_at_k']:>8}  {r['nearest_first']:>13}  "
                f"{r['worst_recall']:>5}  {r['query_ms_median']:>8}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
