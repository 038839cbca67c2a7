"""Fit attention-attribution weights for the answering model on a library, offline.

For each training question: retrieve from the library, generate the answer with the
configured model, then score ``n_ablations`` random keep/drop masks of the source sentences
(plus the full context) by teacher forcing, as the ablation surrogate does. That is the slow
part (one forward pass per mask), so each question's result is cached under
``HOME/cache/attribution_fit/`` and a rerun, or a fit on more questions, only pays for new
ones. The attention features (one pass per question) are then read and the per-head weights
fitted by ``audit.attribution.attention_fit``. The weights file says which model weights it
is for, on what data (a hash of every question, answer and retrieved passage used), by which
command and when; ``assistant.attribute.choose_method`` picks it up from ``HOME/attribution``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import Settings

if TYPE_CHECKING:
    from evaluation.data import Question

__all__ = [
    "FitReport",
    "benchmark_held_out",
    "fit_weights",
    "load_questions",
    "read_cache",
]

# Version of what a cached example holds; bump when its meaning changes. 2: the record also
# holds its attention features, question id and corpus, so a fit can read examples collected
# in other homes (other libraries) without their index.
CACHE_FORMAT = 2
# The attribution benchmark samples its questions with this seed; these sample sizes are
# kept out of training so the benchmark measures weights on questions they never saw.
BENCHMARK_SEED = 0
BENCHMARK_LIMITS = (20, 50, 100)
# ... over the first 2,000 MedQuAD passages (benchmarks/attribution.py --medquad-docs), and
# over the whole corpus for the other sets
BENCHMARK_CORPUS_DOCS = {"medquad": 2000}


@dataclass
class FitReport:
    path: Path
    examples: int
    skipped: int
    data_hash: str
    stats: dict[str, Any]
    seconds: dict[str, float]


def benchmark_held_out(
    questions: Sequence[Question], corpus: Sequence[dict[str, Any]], corpus_docs: int | None
) -> set[str]:
    """Ids of the questions the attribution benchmark samples (``benchmarks/attribution.py``).

    Over a whole corpus (PubMedQA) it samples ``sample_questions(questions, n, seed=0)``; over
    the first ``corpus_docs`` passages (MedQuAD) it samples from the questions whose gold
    passages all lie there (and carry one passage each), with ``random.Random(0).sample``.
    Both for n = 20, 50 and 100, so no benchmark size measures weights on questions they saw.
    """
    from evaluation.data import sample_questions

    if corpus_docs is None:
        return {
            q.qid
            for n in BENCHMARK_LIMITS
            for q in sample_questions(questions, n, seed=BENCHMARK_SEED)
        }
    pool = gold_pool(questions, corpus, corpus_docs)
    return {
        q.qid
        for n in BENCHMARK_LIMITS
        for q in random.Random(BENCHMARK_SEED).sample(pool, min(n, len(pool)))
    }


def gold_pool(
    questions: Sequence[Question], corpus: Sequence[dict[str, Any]], corpus_docs: int
) -> list[Question]:
    """The questions whose gold passages all lie among the first ``corpus_docs`` corpus rows
    (and are not ids several rows share): those a library of that prefix can answer."""
    from evaluation.data import shared_doc_ids

    inside = {str(r["doc_id"]) for r in corpus[:corpus_docs]}
    shared = shared_doc_ids(corpus)
    return [q for q in questions if q.gold and all(g in inside and g not in shared for g in q.gold)]


def load_questions(
    path: Path, *, limit: int | None = None, seed: int = 15, corpus_docs: int | None = None
) -> list[tuple[str, str]]:
    """(id, question) pairs from a text file (one per line), a .jsonl file (``question``
    field), or an evaluation folder (questions.jsonl beside corpus.jsonl, as in ../shared/eval).

    From an evaluation folder, the questions the attribution benchmark samples are left out
    (:func:`benchmark_held_out`), and the rest are shuffled with ``seed`` before ``limit``
    applies. With ``corpus_docs`` (the library holds only the first N corpus rows, as the
    benchmark's MedQuAD library does), only questions whose gold passages are among them.
    """
    path = Path(path)
    if path.is_dir():
        from evaluation.data import load_dataset

        data = load_dataset(path)
        questions = data.questions
        if corpus_docs is not None:
            questions = gold_pool(questions, data.corpus, corpus_docs)
        # the benchmark's own sample, and the one this prefix of the corpus would give
        held = benchmark_held_out(data.questions, data.corpus, BENCHMARK_CORPUS_DOCS.get(path.name))
        held |= benchmark_held_out(data.questions, data.corpus, corpus_docs)
        pairs = [(q.qid, q.question) for q in questions if q.qid not in held]
        random.Random(seed).shuffle(pairs)
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        pairs = [(str(r.get("qid", n)), str(r["question"])) for n, r in enumerate(rows, 1)]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        pairs = [(str(n), line.strip()) for n, line in enumerate(lines, 1)]
    pairs = [(qid, text) for qid, text in pairs if text.strip()]
    return pairs[:limit] if limit else pairs


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _chunks(hits: Sequence[Any]) -> list[list[str]]:
    return [
        [h.chunk.chunk_id, hashlib.sha256(h.chunk.text.encode()).hexdigest()[:16]] for h in hits
    ]


def cached_hits(settings: Settings, record: dict[str, Any]) -> list[Any] | None:
    """The passages a cached example was answered from, read back from the home's manifest
    by chunk id (no embedder, no retrieval); None when any is gone or its text changed."""
    from core.library.manifest import Manifest
    from core.types import Hit

    manifest = Manifest(settings.manifest_path, database_url=settings.database_url)
    try:
        found = manifest.chunks_by_id([cid for cid, _ in record["chunks"]])
    finally:
        manifest.close()
    hits = [Hit(chunk=found[cid], score=0.0) for cid, _ in record["chunks"] if cid in found]
    return hits if _chunks(hits) == record["chunks"] else None


def by_corpus_ids(by_corpus: dict[str, list[str]]) -> set[str]:
    return {q for ids in by_corpus.values() for q in ids}


def read_cache(folder: Path, weights_hash: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The complete examples cached in ``folder`` for this model and collection ``config``
    (k, answer length, template, ablations, seed): those a fit may pool, whatever library
    they were collected on. Records of an older format, or without features, are skipped."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(record, dict)
            and record.get("format") == CACHE_FORMAT
            and record.get("weights_hash") == weights_hash
            and record.get("config") == config
            and "features" in record
            and "masks" in record
        ):
            out.append(record)
    return out


def fit_weights(
    settings: Settings,
    questions: Sequence[tuple[str, str]],
    *,
    out: Path | None = None,
    n_ablations: int = 32,
    k: int | None = None,
    seed: int = 0,
    cached_only: bool = False,
    corpus: str = "",
    extra_caches: Sequence[Path] = (),
    fit_options: dict[str, Any] | None = None,
    prior: Path | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> FitReport:
    """Collect (or read cached) ablation data for ``questions`` ((id, text) pairs) and write
    fitted weights; the file lists the ids used per corpus, so a benchmark can leave them out.

    ``cached_only`` fits on the questions already collected and skips the rest (to fit while
    a long collection is still running, or on what an interrupted one left). ``extra_caches``
    are ``cache/attribution_fit`` folders of other homes (other libraries): every complete
    example there for this model and the same collection settings joins the fit. ``corpus``
    names this library's questions in the file (default: the home's folder name). ``prior``:
    a weights file fitted before (on other answers) that the fit shrinks towards; its
    training questions count as this fit's too.
    """
    import time

    from assistant.attribute import AnswerScorer, answer_targets, attention_features
    from assistant.cite import source_sentences
    from assistant.generate import build_messages, generate
    from assistant.prompts import load_template
    from assistant.retrieve import Retriever
    from audit.attribution.attention import HeadWeights
    from audit.attribution.attention_fit import FitExample, fit_head_weights
    from core import backends
    from core.backends.base import AttentionReader, LogProbScorer
    from core.errors import ConfigError

    say = progress or (lambda _m: None)
    corpus = corpus or settings.home.name
    llm = backends.create("llm", settings.llm, settings)
    llm.warm_up()
    if not isinstance(llm, LogProbScorer) or not isinstance(llm, AttentionReader):
        raise ConfigError(
            f"llm = {settings.llm!r}: fitting attention weights needs a local model that "
            "reports log-probabilities and attention (the transformers backend)"
        )
    info = llm.info
    config = {
        "k": k or settings.top_k,
        "max_new_tokens": settings.max_new_tokens,
        "prompt_template": settings.prompt_template,
        "max_sentences": settings.attribution_max_sentences,
        "n_ablations": n_ablations,
        "seed": seed,
    }
    cache = settings.cache_dir / "attribution_fit"
    cache.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    skipped = 0
    seconds = {"generation": 0.0, "ablation": 0.0, "attention": 0.0}
    retriever: Retriever | None = None
    template = load_template(settings.prompt_template)
    for i, (qid, question) in enumerate(questions, start=1):
        key = _key(CACHE_FORMAT, info.weights_hash, question, config)
        path = cache / f"{key[:32]}.json"
        record: dict[str, Any] | None = None
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if "masks" in record and "features" in record:
                # no retrieval for what is cached (the features are in the record): only
                # check, from the manifest, that its passages are still the library's
                if cached_hits(settings, record) is None:
                    skipped += 1
                    say(f"[{i}/{len(questions)}] skipped: the library changed")
                else:
                    records.append(record)
                    say(f"[{i}/{len(questions)}] cached")
            else:  # no answer, or too few source sentences to ablate
                skipped += 1
            continue
        elif cached_only:
            continue
        if retriever is None:
            retriever = Retriever(settings)
            retriever.warm_up()
        hits = retriever.retrieve(question, k=k)
        sources = source_sentences(hits)[: settings.attribution_max_sentences]
        if record is None:
            start = time.perf_counter()
            generation = generate(llm, settings, question, hits)
            seconds["generation"] += time.perf_counter() - start
            targets = answer_targets(generation.text)
            record = {
                "format": CACHE_FORMAT,
                "weights_hash": info.weights_hash,
                "config": config,
                "qid": qid,
                "corpus": corpus,
                "question": question,
                "answer": generation.text,
                "targets": targets,
                "chunks": _chunks(hits),
                "n_sources": len(sources),
            }
            if targets and len(sources) >= 2:
                rng = np.random.default_rng([seed, int(key[:8], 16)])
                masks = np.vstack(
                    [
                        np.ones((1, len(sources)), bool),
                        rng.random((n_ablations, len(sources))) < 0.5,
                    ]
                )
                scorer = AnswerScorer(llm, template, question, hits, sources, targets)
                start = time.perf_counter()
                record["masks"] = masks.astype(int).tolist()
                record["logprobs"] = scorer(masks).tolist()
                seconds["ablation"] += time.perf_counter() - start
                # the features of the full context, as the attention method will read them
                start = time.perf_counter()
                features = attention_features(llm, scorer)
                seconds["attention"] += time.perf_counter() - start
                record["features"] = np.round(features.astype(float), 7).tolist()
                messages = build_messages(
                    template, question, hits, scorer.texts(np.ones(len(sources), bool))
                )
                record["prompt_sha"] = _key(messages)[:16]
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            tmp.replace(path)
        if "masks" not in record or "features" not in record or _chunks(hits) != record["chunks"]:
            # no answer or too few sentences; or the library changed since it was cached
            skipped += 1
            say(f"[{i}/{len(questions)}] skipped")
            continue
        records.append(record)
        say(f"[{i}/{len(questions)}] S={len(sources)} T={len(record['targets'])}")
    seen = {(r["corpus"], r["qid"]) for r in records}
    for folder in extra_caches:
        for record in read_cache(folder, info.weights_hash, config):
            if (record["corpus"], record["qid"]) not in seen:
                seen.add((record["corpus"], record["qid"]))
                records.append(record)
    if not records:
        raise ConfigError("no question gave an answer with two or more source sentences")
    examples = [
        FitExample(np.asarray(r["features"]), np.asarray(r["masks"]), r["logprobs"])
        for r in records
    ]
    digests = [_key(r["question"], r["answer"], r["chunks"]) for r in records]
    by_corpus: dict[str, list[str]] = {}
    for r in records:
        by_corpus.setdefault(r["corpus"], []).append(str(r["qid"]))
    options = dict(fit_options or {})
    prior_info: dict[str, Any] = {}
    if prior is not None:
        before = HeadWeights.load(prior)
        if before.weights_hash != info.weights_hash:
            raise ConfigError(f"{prior}: fitted for another model's weights")
        options["prior"] = before.w
        prior_info = {
            "file": Path(prior).name,
            "data_hash": before.data_hash,
            "n_examples": before.n_examples,
            "train_qids": [str(q) for q in before.fit.get("train_qids", [])],
        }
        digests.append(f"prior:{before.data_hash}")
    result = fit_head_weights(examples, **options)
    layers, heads = llm.attention_layout
    weights = HeadWeights(
        model_id=info.model_id,
        weights_hash=info.weights_hash,
        layers=layers,
        heads=heads,
        w=result.w,
        data_hash=hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(),
        n_examples=len(examples),
        command=command,
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        fit={
            "ridge": result.ridge,
            "n_ablations": n_ablations,
            "seed": seed,
            "k": config["k"],
            "max_new_tokens": config["max_new_tokens"],
            **result.stats,
            # every training question id (the benchmark leaves these out), and per corpus
            "train_qids": [str(r["qid"]) for r in records]
            + [q for q in prior_info.get("train_qids", []) if q not in by_corpus_ids(by_corpus)],
            "train_qids_by_corpus": by_corpus,
            **({"prior": prior_info} if prior_info else {}),
        },
    )
    target = out or settings.home / "attribution" / weights.file_name()
    if target.suffix != ".json":
        target = target / weights.file_name()
    weights.save(target)
    return FitReport(
        path=target,
        examples=len(examples),
        skipped=skipped,
        data_hash=weights.data_hash,
        stats=weights.fit,
        seconds={k2: round(v, 1) for k2, v in seconds.items()},
    )
