"""Ingestion throughput: clinrag's ``ingest()`` vs. the LangChain recipe, same texts, same run.

    .venv/bin/python -m benchmarks.ingest_speed

Corpora (from ../shared/eval):
  guidelines  the real guideline Markdown files (../shared/eval/guidelines/markdown), ingested
              as files through ``ingest.index.ingest`` (loader, front matter, sections,
              chunking, embedding, Chroma, manifest). Default: the first 20 files by name
              (about 1.1 MB); ``--limit 0`` takes all 96 (5.6 MB: about 20+ min on 2 cores).
  pubmedqa    the 500 PubMedQA abstracts, written as Markdown files to a temp folder (not
              timed) and ingested the same way. Default: all 500.
Each corpus goes into a fresh temporary CLINRAG_HOME. The recipe gets the same file texts:
RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200) + HuggingFaceEmbeddings on
the same packaged all-MiniLM-L6-v2 + Chroma.from_documents into a temp persist dir.

Both models are loaded before the clock starts. Chunk counts differ (clinrag packs sentences
up to 700 characters without overlap and never crosses a section; the recipe cuts 1000
characters with 200 of overlap), so the table also gives characters: "embedded chars" is what
each system sends to the embedder (clinrag adds the title and section path to every chunk),
and "corpus chars/s" is the same input divided by each system's wall time, the fair
throughput figure. ratio = clinrag / recipe (above 1: clinrag is faster). "in embedder" is
the share of wall time inside the embedding model (the rest: loading, splitting, the store,
clinrag's manifest and per-document crash-safe writes); ">256 tokens" the share of chunks
longer than MiniLM's 256-token window, whose tail the vector does not see.

Systems: "clinrag" is the shipped configuration (embedder_dtype auto: bfloat16 on a CPU with
native bf16, as this one has); "clinrag float32" is the same pipeline with the embedder forced
to float32, to show how much of the difference is the embedder's precision and how much the
rest of the pipeline; "langchain" is the recipe (float32, as the tutorial runs it).

Options: --corpus guidelines|pubmedqa|all (default all), --limit N documents per corpus
(0 = all), --repeat R (alternate which system goes first; the median time is kept), --json.
Timings on a shared 2-core machine are noisy: compare the two systems within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import log
from core.config import apply_offline_environment
from evaluation import baseline_langchain
from evaluation.data import write_library

DEFAULT_LIMIT = {"guidelines": 20, "pubmedqa": None}


def _inputs(name: str, limit: int | None, work: Path) -> tuple[list[Path], dict[str, str]]:
    """Files for clinrag and {path: doc_id} (the recipe reads the same files)."""
    if name == "guidelines":
        files = [_known_front_matter(p, work / "guidelines") for p in common.guideline_files(limit)]
        return files, {str(p): p.stem for p in files}
    rows = common.dataset(name).corpus
    rows = rows[:limit] if limit else rows
    path_to_doc = write_library(rows, work / "library", render=common.library_text)
    return [work / "library"], path_to_doc


def _known_front_matter(path: Path, folder: Path) -> Path:
    """A copy of a shared guideline without the site generator's keys (``id``,
    ``permalink``): clinrag refuses metadata keys it does not know, so a typo can never
    drop a restriction. Not timed; both systems read the copies."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, in_front = [], False
    for i, line in enumerate(lines):
        if line.strip() == "---":
            in_front = i == 0
        elif in_front and line.split(":", 1)[0].strip() in {"id", "permalink"}:
            continue
        kept.append(line)
    copy = folder / path.name
    copy.write_text("".join(kept), encoding="utf-8")
    return copy


def bench(name: str, limit: int | None, repeat: int, embeddings: Any) -> dict[str, Any]:
    runs: dict[str, list[common.IngestRun]] = {
        "clinrag": [],
        "clinrag float32": [],
        "langchain": [],
    }
    with tempfile.TemporaryDirectory(prefix=f"clinrag-bench-{name}-") as tmp:
        work = Path(tmp)
        paths, path_to_doc = _inputs(name, limit, work)
        texts = [(doc_id, Path(p).read_text(encoding="utf-8")) for p, doc_id in path_to_doc.items()]
        for i in range(repeat):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for system in order:
                home = work / f"{system.replace(' ', '-')}-{i}"
                log(f"[{name}] {system} run {i + 1}/{repeat} over {len(texts)} documents ...")
                if system.startswith("clinrag"):
                    dtype = "float32" if system.endswith("float32") else "auto"
                    settings = common.clinrag_settings(home, embedder_dtype=dtype)
                    run = common.clinrag_ingest(paths, settings, path_to_doc)
                    if run.failed:
                        log(f"[{name}] clinrag: {len(run.failed)} failed: {run.failed[:3]}")
                else:
                    store, run = common.recipe_build(texts, home, embeddings)
                    del store
                runs[system].append(run)
                log(f"[{name}] {system}: {run.chunks} chunks in {run.seconds:.1f} s")
                shutil.rmtree(home, ignore_errors=True)

    out: dict[str, Any] = {"corpus": name, "documents": len(texts), "systems": {}}
    for system, rs in runs.items():
        seconds = statistics.median(r.seconds for r in rs)
        r = rs[0]
        out["systems"][system] = {
            "documents": r.docs,
            "chunks": r.chunks,
            "embedded_chars": r.chars,
            "chars_per_chunk": r.chars / max(r.chunks, 1),
            "corpus_chars": r.source_chars,
            "seconds": seconds,
            "all_seconds": [round(x.seconds, 2) for x in rs],
            "chunks_per_s": r.chunks / seconds,
            "embedded_chars_per_s": r.chars / seconds,
            "corpus_chars_per_s": r.source_chars / seconds,
            "embed_share": statistics.median(x.embed_seconds / x.seconds for x in rs),
            "chunks_over_embedder_window": r.over_limit,
            "failed": r.failed,
        }
    c, lc = out["systems"]["clinrag"], out["systems"]["langchain"]
    out["ratio_clinrag_over_recipe"] = {
        k: c[k] / lc[k] for k in ("chunks_per_s", "embedded_chars_per_s", "corpus_chars_per_s")
    }
    return out


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--corpus", choices=["guidelines", "pubmedqa", "all"], default="all")
    parser.add_argument("--limit", type=int, default=None, help="documents per corpus; 0 = all")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    corpora = ["guidelines", "pubmedqa"] if args.corpus == "all" else [args.corpus]
    embeddings = baseline_langchain.embeddings()
    results = []
    for name in corpora:
        limit = DEFAULT_LIMIT[name] if args.limit is None else (args.limit or None)
        results.append(bench(name, limit, max(args.repeat, 1), embeddings))
    out: dict[str, Any] = {"results": results, "machine": common.machine()}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in results:
        print(f"\n{r['corpus']}: {r['documents']} documents")
        rows = []
        for system, s in r["systems"].items():
            rows.append(
                [
                    system,
                    s["chunks"],
                    round(s["chars_per_chunk"]),
                    s["seconds"],
                    s["chunks_per_s"],
                    round(s["embedded_chars_per_s"]),
                    round(s["corpus_chars_per_s"]),
                    f"{s['embed_share']:.0%}",
                    f"{s['chunks_over_embedder_window'] / max(s['chunks'], 1):.1%}",
                ]
            )
        ratio = r["ratio_clinrag_over_recipe"]
        rows.append(
            [
                "ratio clinrag/recipe",
                None,
                None,
                None,
                ratio["chunks_per_s"],
                ratio["embedded_chars_per_s"],
                ratio["corpus_chars_per_s"],
                None,
                None,
            ]
        )
        print(
            common.table(
                [
                    "system",
                    "chunks",
                    "chars/chunk",
                    "seconds",
                    "chunks/s",
                    "embedded chars/s",
                    "corpus chars/s",
                    "in embedder",
                    ">256 tokens",
                ],
                rows,
            )
        )
        failed = r["systems"]["clinrag"]["failed"]
        if failed:
            print(f"clinrag failed files: {failed}")
    m = out["machine"]
    print(
        f"\n{m['cpus']} CPUs, torch threads {m['torch_threads']}; models loaded before timing. "
        "'in embedder': share of the time inside the embedding model; '>256 tokens': chunks "
        "longer than MiniLM's window, whose tail the embedding ignores."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
