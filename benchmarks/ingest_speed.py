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

--whole-process (default corpus pubmedqa): each system as its own process, timed end to end
from start to exit (imports, model loads, parsing, embedding, storing), as a user runs it:
  clinrag <backend>  `clinrag ingest LIBRARY` into a fresh CLINRAG_HOME with
                     CLINRAG_EMBEDDER_BACKEND=<backend>; systems from --systems (default
                     auto, onnx-int8, torch: auto as this machine resolves it; onnx-int8, what
                     auto picks on a CPU without native bf16; torch with embedder_dtype float32,
                     what such a CPU ran before). An ONNX export is a one-time first-use cost
                     per home: it is built before timing (its seconds are reported) and copied
                     into each fresh home.
  langchain          `python -m benchmarks.ingest_speed --recipe-process LIBRARY DIR`: read the
                     same files, RecursiveCharacterTextSplitter(1000, 200), HuggingFaceEmbeddings
                     on the packaged MiniLM, Chroma.from_documents.
Threads are left as the product uses them (OMP_NUM_THREADS is passed through, unset by
default); the load average is recorded beside each run, and --repeat alternates the order.
Each process's CPU seconds (user + system, all its threads) are reported too: on a machine
shared with other jobs they move much less with the load than the wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


# --- whole process ------------------------------------------------------------------------------

WHOLE_SYSTEMS = ("auto", "onnx-int8", "torch")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def recipe_process(library: Path, persist: Path) -> int:
    """The recipe as its own script: the files of ``library``, split, embedded, stored."""
    texts = [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(library.glob("*.md"))]
    chunks = baseline_langchain.split(texts)
    baseline_langchain.build_store(chunks, baseline_langchain.embeddings(), persist)
    print(f"{len(chunks)} chunks")
    return 0


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    have = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            have.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f in have]


def _clinrag_env(home: Path, backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINRAG_")}
    env |= {"CLINRAG_HOME": str(home), "CLINRAG_CONFIG": str(home / "no-config.toml")}
    if backend == "torch":
        env |= {"CLINRAG_EMBEDDER_BACKEND": "torch", "CLINRAG_EMBEDDER_DTYPE": "float32"}
    else:
        env["CLINRAG_EMBEDDER_BACKEND"] = backend
    return env


def _describe(home: Path, backend: str) -> str:
    from core.backends.sentence_transformers import SentenceTransformerEmbedder
    from core.config import load_settings

    settings = load_settings(env=_clinrag_env(home, backend))
    return SentenceTransformerEmbedder(settings).describe_path()


def _prepare_export(template: Path) -> dict[str, Any]:
    """Build the ONNX export once (the first-use cost a fresh home pays), timed."""
    from core.backends import onnx_embedder
    from core.backends.sentence_transformers import cached_weights_hash, packaged_embedder_dir

    model_dir = packaged_embedder_dir()
    t0 = time.perf_counter()
    record = onnx_embedder.ensure_export(
        model_dir, cached_weights_hash(model_dir), template / "models"
    )
    record["export_seconds"] = round(time.perf_counter() - t0, 1)
    return record


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds, and CPU seconds (user + system, all threads): on a machine shared with
    other jobs the wall time follows their load, the CPU time much less so."""
    load = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    cpu_seconds = _children_cpu() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err.decode()[-2000:]}")
    found = re.search(r"(\d+) chunks", out.decode())
    return {
        "seconds": seconds,
        "cpu_seconds": round(cpu_seconds, 1),
        "chunks": int(found.group(1)) if found else None,
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def whole_process(name: str, limit: int | None, repeat: int, systems: list[str]) -> dict[str, Any]:
    from core.backends.sentence_transformers import native_bf16_cpu

    clinrag_bin = Path(sys.executable).with_name("clinrag")
    clinrag_cmd = (
        [str(clinrag_bin)] if clinrag_bin.exists() else [sys.executable, "-m", "ui.cli.main"]
    )
    names = [f"clinrag {s}" for s in systems] + ["langchain"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    out: dict[str, Any] = {"corpus": name, "mode": "whole process", "systems": {}}
    with tempfile.TemporaryDirectory(prefix=f"clinrag-whole-{name}-") as tmp:
        work = Path(tmp)
        paths, path_to_doc = _inputs(name, limit, work)
        library = paths[0]
        template = work / "template-home"
        export = None
        if any(s.startswith("onnx") or s == "auto" for s in systems):
            log(f"[{name}] exporting the embedder to ONNX (first use; not timed) ...")
            export = _prepare_export(template)
            out["onnx_export"] = {
                k: export.get(k) for k in ("export_seconds", "agreement", "sample_size", "fused")
            }
        out["documents"] = len(path_to_doc)
        out["paths"] = {}
        for i in range(repeat):
            order = names if i % 2 == 0 else list(reversed(names))
            for system in order:
                home = work / f"home-{system.replace(' ', '-')}-{i}"
                if system == "langchain":
                    cmd = [
                        sys.executable,
                        "-m",
                        "benchmarks.ingest_speed",
                        "--recipe-process",
                        str(library),
                        str(home),
                    ]
                    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINRAG_")}
                else:
                    backend = system.split(" ", 1)[1]
                    if export is not None:
                        shutil.copytree(template, home)
                    env = _clinrag_env(home, backend)
                    out["paths"].setdefault(system, _describe(home, backend))
                    cmd = [*clinrag_cmd, "ingest", str(library)]
                log(f"[{name}] {system} run {i + 1}/{repeat} (whole process) ...")
                run = _timed(cmd, env)
                runs[system].append(run)
                log(
                    f"[{name}] {system}: {run['chunks']} chunks in {run['seconds']:.1f} s "
                    f"(load {run['load_before']} -> {run['load_after']})"
                )
                shutil.rmtree(home, ignore_errors=True)
    for system, rs in runs.items():
        out["systems"][system] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "all_seconds": [round(r["seconds"], 1) for r in rs],
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
            "all_cpu_seconds": [r["cpu_seconds"] for r in rs],
            "chunks": rs[0]["chunks"],
            "load": [(r["load_before"], r["load_after"]) for r in rs],
        }
    recipe = out["systems"]["langchain"]["seconds"]
    out["ratio_recipe_seconds_over_clinrag"] = {
        s: recipe / out["systems"][s]["seconds"] for s in names if s != "langchain"
    }
    out["ratio_recipe_cpu_seconds_over_clinrag"] = {
        s: out["systems"]["langchain"]["cpu_seconds"] / out["systems"][s]["cpu_seconds"]
        for s in names
        if s != "langchain"
    }
    # per repeat too: each pair ran back to back, so it shares the machine's load
    out["ratio_per_repeat"] = {
        s: [
            round(r["seconds"] / c["seconds"], 2)
            for r, c in zip(runs["langchain"], runs[s], strict=True)
        ]
        for s in names
        if s != "langchain"
    }
    out["cpu"] = {"flags": cpu_flags(), "native_bf16": native_bf16_cpu()}
    if export is not None:
        from core.backends import onnx_embedder

        out["auto_without_native_bf16"] = (
            "onnx-int8"
            if onnx_embedder.int8_meets_quality(export)
            else "onnx-fp32"
            if onnx_embedder.same_vectors(export, "float32")
            else "torch float32"
        )
    out["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "(unset)")
    return out


def print_whole(r: dict[str, Any]) -> None:
    print(f"\n{r['corpus']}: {r['documents']} documents, each system a whole process")
    rows = []
    for system, s in r["systems"].items():
        ratio = r["ratio_recipe_seconds_over_clinrag"].get(system)
        rows.append(
            [
                system,
                r["paths"].get(system, "torch float32 (recipe)"),
                s["chunks"],
                s["seconds"],
                s["all_seconds"],
                s["cpu_seconds"],
                ratio,
                s["load"],
            ]
        )
    print(
        common.table(
            [
                "system",
                "embedder path",
                "chunks",
                "seconds (median)",
                "all",
                "CPU s (median)",
                "speed-up vs recipe",
                "load avg (before, after)",
            ],
            rows,
        )
    )
    print(f"speed-up per repeat (same pair, back to back): {r['ratio_per_repeat']}")
    print(f"speed-up in CPU seconds: {r['ratio_recipe_cpu_seconds_over_clinrag']}")
    print(
        f"CPU flags: {' '.join(r['cpu']['flags'])}; native bf16: {r['cpu']['native_bf16']}; "
        f"OMP_NUM_THREADS {r['omp_num_threads']}"
    )
    if "onnx_export" in r:
        e = r["onnx_export"]
        print(
            f"ONNX export (once per home, not timed above): {e['export_seconds']} s; "
            f"agreement with torch float32 on {e['sample_size']} sentences: {e['agreement']}; "
            f"fused ops: {e.get('fused')}; "
            f"auto on a CPU without native bf16: {r['auto_without_native_bf16']}"
        )


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--corpus", choices=["guidelines", "pubmedqa", "all"], default=None)
    parser.add_argument("--limit", type=int, default=None, help="documents per corpus; 0 = all")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--whole-process", action="store_true", help="time whole processes")
    parser.add_argument(
        "--systems", default=",".join(WHOLE_SYSTEMS), help="clinrag embedder backends to time"
    )
    parser.add_argument("--recipe-process", nargs=2, metavar=("LIBRARY", "PERSIST_DIR"))
    args = parser.parse_args(argv)

    if args.recipe_process:
        return recipe_process(Path(args.recipe_process[0]), Path(args.recipe_process[1]))
    if args.whole_process:
        name = args.corpus if args.corpus in ("guidelines", "pubmedqa") else "pubmedqa"
        limit = DEFAULT_LIMIT[name] if args.limit is None else (args.limit or None)
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        result = whole_process(name, limit, max(args.repeat, 1), systems)
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print_whole(result)
        return 0
    args.corpus = args.corpus or "all"

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
