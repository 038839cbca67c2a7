"""kill -9 during ingest: no duplicates, no orphans, and the same top-5 as a clean ingest.

    .venv/bin/python -m benchmarks.kill_ingest

About 60 guideline-like Markdown documents are generated into a temporary folder. Each round
first changes the folder (a random quarter of the documents switch to their other revision,
so there are updates to write; now and then two documents are removed, which ``--prune``
then removes from the library, and later put back), then starts a real ingest process
(``ingest.index.ingest``, the packaged embedder, embedded Chroma, the manifest) and kills it
with SIGKILL. The ingest process announces each step that embeds or writes (embed, the
manifest's mark_pending_many / complete_many / forget, the store's upsert / delete_*); the
kill comes up to ``--after`` seconds (uniform) after a step chosen uniformly among those of a
typical run (learned from the runs that finished first), so kills land inside and between
all the write phases. Rounds share one CLINRAG_HOME, so each ingest starts by recovering from
the previous kill.

Afterwards the folder is put in its final state, ingest runs to completion, and the result is
compared with a clean ingest of the same folder into a fresh home: documents and chunks in
the manifest against the files, vectors in the store against the manifest (orphans: vectors
the manifest does not know; missing: chunks without a vector), duplicate documents or chunks,
``pending`` documents, and the top-5 chunk ids of fixed queries.

The ingest processes set ``ingest.index.EMBED_GROUP_CHUNKS`` to ``--group-chunks`` (default
64 instead of 2048), so a run commits several groups and kills land between and inside
those write phases rather than mostly in the embedding of one large group.

Options: --kills N (default 100; each round starts a process that loads the models, about
10-20 s on 2 shared cores, so 100 kills take 20-30 minutes; --kills 10 for a quick run),
--docs N (default 60), --seed, --group-chunks N, --after S, --keep DIR, --json. Exit status
1 when the killed library differs from the clean one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import REPO, log, table
from core.config import apply_offline_environment

INGESTER = r"""
import sys
from pathlib import Path
import ingest.index as index_module
from core.config import load_settings

home, folder, group = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
index_module.EMBED_GROUP_CHUNKS = group
settings = load_settings(env={"CLINRAG_HOME": home, "CLINRAG_CONFIG": home + "/none.toml"})
index = index_module.Index(settings)
index.embedder.embed(["warm up"])


def traced(obj, name):
    # Announce each step of ingest that writes (or embeds), so kills can aim between and
    # inside them. Instance attributes: ingest() calls these through the same objects.
    inner = getattr(obj, name)

    def step(*args, **kwargs):
        print("step", name, "start", flush=True)
        out = inner(*args, **kwargs)
        print("step", name, "end", flush=True)
        return out

    setattr(obj, name, step)


traced(index.embedder, "embed")
for name in ("upsert", "delete_doc", "delete_docs", "delete_ids"):
    traced(index.store, name)
for name in ("mark_pending_many", "complete_many", "forget"):
    traced(index.manifest, name)
print("ready", flush=True)
summary = index_module.ingest([folder], settings, prune=True, progress=False, index=index)
print("done", summary.count("added"), summary.count("updated"), summary.count("removed"),
      flush=True)
"""

CONDITIONS = [
    "renal artery stenosis",
    "atrial flutter",
    "gout flare",
    "iron deficiency anaemia",
    "community-acquired pneumonia",
    "cellulitis",
    "migraine prophylaxis",
    "osteoporosis",
    "hypothyroidism",
    "peptic ulcer disease",
    "acute otitis media",
    "plantar fasciitis",
    "psoriasis",
    "rosacea",
    "urinary tract infection",
    "venous leg ulcer",
    "vitamin D deficiency",
    "sickle cell crisis",
    "heart failure with reduced ejection fraction",
    "chronic kidney disease",
    "obstructive sleep apnoea",
    "glaucoma",
    "Lyme disease",
    "scabies",
    "tension headache",
    "benign prostatic hyperplasia",
    "endometriosis",
    "polycystic ovary syndrome",
    "bronchiolitis",
    "croup",
    "Kawasaki disease",
    "restless legs syndrome",
    "Bell palsy",
    "herpes zoster",
    "hepatitis B",
    "latent tuberculosis",
    "pertussis",
    "rheumatoid arthritis",
    "ankylosing spondylitis",
    "carpal tunnel syndrome",
    "acne vulgaris",
    "atopic dermatitis",
    "head lice",
    "hyperkalaemia",
    "hyponatraemia",
    "diverticulitis",
    "irritable bowel syndrome",
    "coeliac disease",
    "pancreatitis",
    "cholecystitis",
    "appendicitis",
    "kidney stones",
    "preeclampsia",
    "gestational diabetes",
    "postpartum haemorrhage",
    "neonatal jaundice",
    "febrile seizures",
    "anaphylaxis",
    "frostbite",
    "heat stroke",
    "snake bite",
    "carbon monoxide poisoning",
]
DRUGS = [
    "amoxicillin",
    "doxycycline",
    "prednisolone",
    "ibuprofen",
    "paracetamol",
    "metoprolol",
    "bisoprolol",
    "allopurinol",
    "colchicine",
    "levothyroxine",
    "omeprazole",
    "ferrous sulfate",
    "cefalexin",
    "nitrofurantoin",
    "topiramate",
    "alendronate",
    "propranolol",
    "amitriptyline",
]
SECTIONS = ["Population", "Diagnosis", "First-line treatment", "Dosing", "Monitoring", "Referral"]


def document(i: int, revision: int) -> str:
    """A guideline-like Markdown document; revision 1 changes numbers and adds a sentence."""
    rng = random.Random(i * 1000 + 7)
    condition = CONDITIONS[i % len(CONDITIONS)]
    drug = DRUGS[rng.randrange(len(DRUGS))]
    age = 18 + rng.randrange(50)
    dose = (1 + rng.randrange(20)) * 25 + (50 if revision else 0)
    weeks = 2 + rng.randrange(10) + revision
    lines = [f"# Guideline {i:02d}: management of {condition}", ""]
    for s, section in enumerate(SECTIONS):
        lines += [f"## {section}", ""]
        body = [
            f"This section covers {section.lower()} for adults aged {age} and older with "
            f"{condition}.",
            f"Clinicians should offer {drug} {dose} mg when {condition} is confirmed, and "
            f"review the response after {weeks} weeks.",
            f"Record the {section.lower()} decision and the reason in the notes for guideline "
            f"{i:02d}, step {s + 1}.",
        ]
        if revision and s % 2 == 0:
            body.append(
                f"Revision {revision}: the {section.lower()} threshold for {condition} was "
                f"lowered to {age - 5} years after new trial evidence."
            )
        lines += [" ".join(body), ""]
    return "\n".join(lines)


QUERY_DOCS = (3, 11, 17, 24, 38, 45, 52, 59)


def queries(n_docs: int) -> list[str]:
    out = []
    for i in QUERY_DOCS:
        if i < n_docs:
            condition = CONDITIONS[i % len(CONDITIONS)]
            out.append(f"What dose should be offered for {condition} and when is it reviewed?")
    return out


def write_state(folder: Path, revisions: dict[int, int], absent: set[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, revision in revisions.items():
        path = folder / f"guideline-{i:02d}.md"
        if i in absent:
            path.unlink(missing_ok=True)
            continue
        text = document(i, revision)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def start_ingester(home: Path, folder: Path, group: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", INGESTER, str(home), str(folder), str(group)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )


def kill_round(
    home: Path, folder: Path, group: int, target: int, after: float
) -> tuple[str, int, str]:
    """One ingest, killed ``after`` s (at most) after it announced its ``target``-th step.

    Returns (outcome, steps announced, the step it was in or had just finished when it died).
    """
    proc = start_ingester(home, folder, group)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        proc.wait()
        raise SystemExit(f"the ingest process failed to start (said {line!r})")
    steps: list[str] = []
    outcome = ""
    while True:
        line = proc.stdout.readline()
        if not line:  # it finished before reaching the target
            proc.wait()
            outcome = "finished" if proc.returncode == 0 else f"exited {proc.returncode}"
            break
        if line.startswith("step "):
            steps.append(line[5:].strip())
            if len(steps) == target:
                time.sleep(after)
                proc.send_signal(signal.SIGKILL)
                steps += [
                    x[5:].strip() for x in proc.stdout.read().splitlines() if x[:5] == "step "
                ]
                proc.wait()
                outcome = "killed" if proc.returncode == -signal.SIGKILL else "finished"
                break
    return outcome, len(steps), (steps[-1] if steps else "before any step")


def inspect(settings: Any, folder: Path) -> dict[str, Any]:
    from core.library.index import Index

    index = Index(settings)
    index.warm_up()
    docs = index.manifest.documents(state=None)
    complete = [d for d in docs if d["state"] == "complete"]
    chunk_ids = index.manifest.chunk_ids()
    store_ids = index.store.ids()
    rows = index.manifest.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    paths = [Path(d["source_path"]).resolve() for d in docs]
    texts = index.manifest.conn.execute(
        "SELECT COUNT(*) - COUNT(DISTINCT doc_id || char(0) || text) FROM chunks"
    ).fetchone()[0]
    result = {
        "files": sum(1 for _ in folder.glob("*.md")),
        "documents": len(docs),
        "complete": len(complete),
        "pending": len(docs) - len(complete),
        "manifest_chunks": len(chunk_ids),
        "sum_n_chunks": sum(d["n_chunks"] for d in complete),
        "store_vectors": index.store.count(),
        "orphans": len(store_ids - chunk_ids),
        "missing": len(chunk_ids - store_ids),
        "duplicate_documents": len(paths) - len(set(paths)),
        # the same text twice in one document, or one id stored twice
        "duplicate_chunks": (rows - len(chunk_ids))
        + int(texts or 0)
        + (index.store.count() - len(store_ids)),
        "doc_ids": sorted(d["doc_id"] for d in docs),
        "chunk_ids": sorted(chunk_ids),
    }
    index.manifest.close()
    return result


def top5(settings: Any, qs: list[str]) -> list[list[str]]:
    from assistant.retrieve import Retriever

    retriever = Retriever(settings)
    return [[h.chunk.chunk_id for h in retriever.retrieve(q, k=5)] for q in qs]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ingest.index import ingest

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill-ingest-"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    folder, home, clean_home = work / "library", work / "home", work / "clean"
    rng = random.Random(args.seed)
    revisions = {i: 0 for i in range(args.docs)}
    absent: set[int] = set()
    outcomes: dict[str, int] = {}
    where: dict[str, int] = {}
    expected_steps = args.first_steps
    t0 = time.perf_counter()
    try:
        write_state(folder, revisions, absent)
        for k in range(1, args.kills + 1):
            if k > 1:
                for i in rng.sample(sorted(revisions), max(1, args.docs // 4)):
                    revisions[i] = 1 - revisions[i]
                if absent:
                    absent.clear()
                elif rng.random() < 0.3:
                    absent = set(rng.sample(sorted(revisions), 2))
                write_state(folder, revisions, absent)
            target = rng.randint(1, max(1, expected_steps))
            outcome, steps, last = kill_round(
                home, folder, args.group_chunks, target, rng.uniform(0.0, args.after)
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "killed":
                where[last] = where.get(last, 0) + 1
            else:
                expected_steps = max(2, steps)  # learn how many steps a run takes
            if k % 10 == 0 or k == args.kills:
                log(f"{k}/{args.kills} rounds: {outcomes}; killed in/after: {where}")

        final_revisions = {i: (i * 7 + args.seed) % 2 for i in range(args.docs)}
        write_state(folder, final_revisions, set())
        log("final ingest, run to completion ...")
        proc = start_ingester(home, folder, args.group_chunks)
        try:
            proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("the final ingest did not finish within 30 minutes") from None
        if proc.returncode != 0:
            raise SystemExit(f"the final ingest failed with exit status {proc.returncode}")
        settings = common.clinrag_settings(home)
        killed = inspect(settings, folder)

        log("clean ingest of the same folder into a fresh home ...")
        clean_settings = common.clinrag_settings(clean_home)
        summary = ingest([folder], clean_settings, progress=False)
        if summary.failed:
            raise SystemExit(f"the clean ingest failed: {summary.failed[:3]}")
        clean = inspect(clean_settings, folder)
        qs = queries(args.docs)
        top_killed, top_clean = top5(settings, qs), top5(clean_settings, qs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    same_top5 = sum(a == b for a, b in zip(top_killed, top_clean, strict=True))
    return {
        "kills": args.kills,
        "outcomes": outcomes,
        "killed_in_or_after_step": where,
        "files": killed["files"],
        "documents": {"killed": killed["documents"], "clean": clean["documents"]},
        "chunks_manifest": {"killed": killed["manifest_chunks"], "clean": clean["manifest_chunks"]},
        "chunks_sum_n_chunks": killed["sum_n_chunks"],
        "store_vectors": {"killed": killed["store_vectors"], "clean": clean["store_vectors"]},
        "pending_documents": killed["pending"],
        "duplicate_documents": killed["duplicate_documents"],
        "duplicate_chunks": killed["duplicate_chunks"],
        "orphan_vectors": killed["orphans"],
        "missing_vectors": killed["missing"],
        "same_doc_ids_as_clean": killed["doc_ids"] == clean["doc_ids"],
        "same_chunk_ids_as_clean": killed["chunk_ids"] == clean["chunk_ids"],
        "top5_unchanged": f"{same_top5}/{len(qs)}",
        "top5_all_unchanged": same_top5 == len(qs),
        "group_chunks": args.group_chunks,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    apply_offline_environment()
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--docs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-chunks", type=int, default=64)
    p.add_argument("--first-steps", type=int, default=40, help="first guess of steps per run")
    p.add_argument("--after", type=float, default=0.5, help="kill up to this many s after the step")
    p.add_argument("--keep", help="work in this folder and keep it")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args)
    ok = (
        r["files"] == r["documents"]["killed"] == r["documents"]["clean"]
        and r["chunks_manifest"]["killed"] == r["chunks_sum_n_chunks"]
        and r["store_vectors"]["killed"] == r["chunks_manifest"]["killed"]
        and r["pending_documents"] == r["duplicate_documents"] == r["duplicate_chunks"] == 0
        and r["orphan_vectors"] == r["missing_vectors"] == 0
        and r["same_chunk_ids_as_clean"]
        and r["top5_all_unchanged"]
    )
    if args.json:
        print(json.dumps(r | {"ok": ok}, indent=2))
        return 0 if ok else 1
    rows = [
        ("kill -9 rounds", r["kills"], ""),
        ("  killed mid-run", r["outcomes"].get("killed", 0), ""),
        ("  finished before the kill", r["outcomes"].get("finished", 0), ""),
        ("files in the folder", r["files"], r["files"]),
        ("documents in the manifest", r["documents"]["killed"], r["documents"]["clean"]),
        ("chunks in the manifest", r["chunks_manifest"]["killed"], r["chunks_manifest"]["clean"]),
        ("vectors in the store", r["store_vectors"]["killed"], r["store_vectors"]["clean"]),
        ("pending documents", r["pending_documents"], 0),
        ("duplicate documents", r["duplicate_documents"], 0),
        ("duplicate chunks", r["duplicate_chunks"], 0),
        ("orphan vectors (not in the manifest)", r["orphan_vectors"], 0),
        ("missing vectors (manifest chunk without one)", r["missing_vectors"], 0),
        ("same chunk ids as the clean ingest", "yes" if r["same_chunk_ids_as_clean"] else "NO", ""),
        ("fixed queries with unchanged top-5", r["top5_unchanged"], ""),
        ("wall time (s)", r["seconds"], ""),
    ]
    print(table(["", "after kills", "clean ingest"], rows))
    print("\nkills by the ingest step they interrupted or followed (store / manifest calls):")
    for step, n in sorted(r["killed_in_or_after_step"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:4} x {step}")
    print("\nOK" if ok else "\nFAILED: the killed library differs from a clean ingest")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
