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
from typing import Any

import numpy as np

from core.config import Settings

__all__ = ["FitReport", "fit_weights", "load_questions"]

# Version of what a cached example holds; bump when its meaning changes.
CACHE_FORMAT = 1
# The attribution benchmark samples its questions with this seed; these sample sizes are
# kept out of training so the benchmark measures weights on questions they never saw.
BENCHMARK_SEED = 0
BENCHMARK_LIMITS = (20, 50, 100)


@dataclass
class FitReport:
    path: Path
    examples: int
    skipped: int
    data_hash: str
    stats: dict[str, Any]
    seconds: dict[str, float]


def load_questions(
    path: Path, *, limit: int | None = None, seed: int = 15
) -> list[tuple[str, str]]:
    """(id, question) pairs from a text file (one per line), a .jsonl file (``question``
    field), or an evaluation folder (questions.jsonl beside corpus.jsonl, as in ../shared/eval).

    From an evaluation folder, the questions the attribution benchmark samples are left out,
    and the rest are shuffled with ``seed`` before ``limit`` applies.
    """
    path = Path(path)
    if path.is_dir():
        from evaluation.data import load_dataset, sample_questions

        questions = load_dataset(path).questions
        held = {
            q.qid
            for n in BENCHMARK_LIMITS
            for q in sample_questions(questions, n, seed=BENCHMARK_SEED)
        }
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


def fit_weights(
    settings: Settings,
    questions: Sequence[tuple[str, str]],
    *,
    out: Path | None = None,
    n_ablations: int = 32,
    k: int | None = None,
    seed: int = 0,
    cached_only: bool = False,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> FitReport:
    """Collect (or read cached) ablation data for ``questions`` ((id, text) pairs) and write
    fitted weights; the file lists the ids used, so a benchmark can leave them out.

    ``cached_only`` fits on the questions already collected and skips the rest (to fit while
    a long collection is still running, or on what an interrupted one left).
    """
    import time

    from assistant.attribute import AnswerScorer, answer_targets, attention_features
    from assistant.cite import source_sentences
    from assistant.generate import generate
    from assistant.prompts import load_template
    from assistant.retrieve import Retriever
    from audit.attribution.attention import HeadWeights
    from audit.attribution.attention_fit import FitExample, fit_head_weights
    from core import backends
    from core.backends.base import AttentionReader, LogProbScorer
    from core.errors import ConfigError

    say = progress or (lambda _m: None)
    llm = backends.create("llm", settings.llm, settings)
    llm.warm_up()
    if not isinstance(llm, LogProbScorer) or not isinstance(llm, AttentionReader):
        raise ConfigError(
            f"llm = {settings.llm!r}: fitting attention weights needs a local model that "
            "reports log-probabilities and attention (the transformers backend)"
        )
    retriever = Retriever(settings)
    retriever.warm_up()
    template = load_template(settings.prompt_template)
    info = llm.info
    cache = settings.cache_dir / "attribution_fit"
    cache.mkdir(parents=True, exist_ok=True)
    examples: list[FitExample] = []
    digests: list[str] = []
    skipped = 0
    seconds = {"generation": 0.0, "ablation": 0.0, "attention": 0.0}
    used: list[str] = []
    for i, (qid, question) in enumerate(questions, start=1):
        key = _key(
            CACHE_FORMAT,
            info.weights_hash,
            question,
            k or settings.top_k,
            settings.max_new_tokens,
            settings.prompt_template,
            settings.attribution_max_sentences,
            n_ablations,
            seed,
        )
        path = cache / f"{key[:32]}.json"
        record: dict[str, Any] | None = None
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
        elif cached_only:
            continue
        hits = retriever.retrieve(question, k=k)
        sources = source_sentences(hits)[: settings.attribution_max_sentences]
        if record is None:
            start = time.perf_counter()
            generation = generate(llm, settings, question, hits)
            seconds["generation"] += time.perf_counter() - start
            targets = answer_targets(generation.text)
            record = {
                "question": question,
                "answer": generation.text,
                "targets": targets,
                "chunks": [
                    [h.chunk.chunk_id, hashlib.sha256(h.chunk.text.encode()).hexdigest()[:16]]
                    for h in hits
                ],
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
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            tmp.replace(path)
        chunks_now = [
            [h.chunk.chunk_id, hashlib.sha256(h.chunk.text.encode()).hexdigest()[:16]] for h in hits
        ]
        if "masks" not in record or chunks_now != record["chunks"]:
            # no answer or too few sentences; or the library changed since it was cached
            skipped += 1
            say(f"[{i}/{len(questions)}] skipped")
            continue
        start = time.perf_counter()
        scorer = AnswerScorer(llm, template, question, hits, sources, record["targets"])
        features = attention_features(llm, scorer)
        seconds["attention"] += time.perf_counter() - start
        examples.append(FitExample(features, np.asarray(record["masks"]), record["logprobs"]))
        used.append(qid)
        digests.append(_key(record["question"], record["answer"], record["chunks"]))
        say(f"[{i}/{len(questions)}] S={len(sources)} T={len(record['targets'])}")
    if not examples:
        raise ConfigError("no question gave an answer with two or more source sentences")
    result = fit_head_weights(examples)
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
            **result.stats,
            "train_qids": used,
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
