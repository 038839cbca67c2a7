"""Run an evaluation: per-question work (cached, resumable), then the metrics.

Per question, up to five parts are computed, each cached on its own in a JSONL file under the
eval folder, keyed by qid and the hash of the configuration that part depends on:

- ``retrieval``: clinrag's document ranking (top ``DOC_DEPTH`` documents from
  ``CHUNK_DEPTH`` chunks);
- ``answer``: the real pipeline's answer (``Assistant.ask(record=False, attribute=False)``);
- ``attribution``: per attribution method, the top-k removal drop and the random drop;
- ``baseline_retrieval`` and ``baseline_answer``: the LangChain recipe's.

So an interrupted run resumes where it stopped, and a run with more metrics reuses what an
earlier run with fewer computed. Several processes may share one cache (``--shard K/N``): each
appends whole lines, and the stores are built under a lock. Nothing is written to the user's
library or audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import Settings
from evaluation import metrics as m
from evaluation.data import (
    Dataset,
    EvalLibrary,
    Question,
    build_library,
    eval_root,
    hold_out,
    ingest_key,
    load_dataset,
    sample_questions,
)

METRICS = ("retrieval", "answer", "citations", "attribution")
DEFAULT_METRICS = ("retrieval", "answer", "citations")
BASELINES = ("langchain",)
CHUNK_DEPTH = 30  # chunks retrieved for the retrieval metrics (both systems)
DOC_DEPTH = 10  # documents kept from them (recall@10, nDCG@10)
CACHE_FORMAT = 1
# Settings that cannot change an answer (paths, limits, audit and identity).
_NOT_ANSWER_SETTINGS = {
    "home",
    "max_file_mb",
    "max_pages",
    "parse_timeout_s",
    "embed_batch_size",
    "chroma_url",
    "collection",
    "llm_api_key",
    "max_question_chars",
    "questions_per_minute",
    "attribution",
    "attribution_ablations",
    "attribution_max_sentences",
    "audit_questions",
    "audit_checkpoint_every",
    "user",
    "role",
}


@dataclass
class EvalOptions:
    folder: Path
    limit: int | None = None
    seed: int = 0
    metrics: tuple[str, ...] = DEFAULT_METRICS
    baseline: str | None = None
    report: Path | None = None
    attribution_methods: tuple[str, ...] = ()  # empty: settings.attribution, else surrogate
    progress: bool = True
    fresh: bool = False  # recompute even what the results cache holds
    shard: tuple[int, int] | None = None  # (k, n): only sample positions i with i % n == k - 1
    unanswerable: int = 0  # sampled questions whose topic is left out of the library

    def __post_init__(self) -> None:
        if self.shard is not None:
            k, n = self.shard
            if not 1 <= k <= n:
                raise ValueError(f"--shard {k}/{n}: K must be between 1 and N")
        unknown = [x for x in self.metrics if x not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(
                f"unknown metrics {unknown}; choose from {', '.join(METRICS)}"
                if unknown
                else "choose at least one metric"
            )
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose from {BASELINES}")

    @property
    def needs_answers(self) -> bool:
        return bool({"answer", "citations", "attribution"} & set(self.metrics))


def _hash(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hashes(
    settings: Settings, dataset: Dataset, methods: Sequence[str], recipe: str | None = None
) -> dict[str, str]:
    """One hash per cached part: what that part's result depends on."""
    base = {"format": CACHE_FORMAT, "corpus": dataset.corpus_sha256, "ingest": ingest_key(settings)}
    retrieval = {
        **base,
        "candidates": settings.candidates,
        "rrf_k": settings.rrf_k,
        "reranker": settings.reranker_model,
        "depth": [CHUNK_DEPTH, DOC_DEPTH],
    }
    from assistant.prompts import load_template

    answer = {
        **base,
        "settings": settings.model_dump(mode="json", exclude=_NOT_ANSWER_SETTINGS),
        # an edited template under the same name changes every answer
        "template": load_template(settings.prompt_template).sha256,
    }
    attribution = {
        "answer": _hash(answer),
        "methods": sorted(methods),
        "ablations": settings.attribution_ablations,
        "max_sentences": settings.attribution_max_sentences,
    }
    out = {
        "retrieval": _hash(retrieval),
        "answer": _hash(answer),
        "attribution": _hash(attribution),
    }
    if recipe:
        baseline = {"format": CACHE_FORMAT, "corpus": dataset.corpus_sha256, "recipe": recipe}
        out["baseline_retrieval"] = _hash({**baseline, "depth": [CHUNK_DEPTH, DOC_DEPTH]})
        out["baseline_answer"] = _hash(
            {
                **baseline,
                "llm": [settings.llm, settings.llm_model, settings.llm_base_url, settings.device],
                "decoding": [settings.max_new_tokens, settings.temperature],
            }
        )
    return out


class ResultsCache:
    """Append-only JSONL of per-question results: ``{part, config, qid, question, data}``.

    A line is flushed as soon as its part is computed, so an interrupted run loses at most the
    question in progress. A torn last line is ignored on reading.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                        key = (row["part"], row["config"], row["qid"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
                    self._rows[key] = row

    def get(self, part: str, config: str, q: Question) -> dict[str, Any] | None:
        row = self._rows.get((part, config, q.qid))
        if row is None or row.get("question") != q.question:
            return None
        return row["data"]

    def put(self, part: str, config: str, q: Question, data: dict[str, Any]) -> None:
        row = {"part": part, "config": config, "qid": q.qid, "question": q.question, "data": data}
        self._rows[(part, config, q.qid)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write() on an O_APPEND descriptor: lines from concurrent shards never interleave.
        line = (json.dumps(row) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@dataclass
class _Resources:
    """Models and stores, built only when some question needs them (not on a cached rerun)."""

    settings: Settings
    dataset: Dataset
    options: EvalOptions
    llm: Any = None
    _library: EvalLibrary | None = None
    _assistant: Any = None
    _baseline: Any = None
    _retriever: Any = None
    notes: list[str] = field(default_factory=list)

    def _build_lock(self) -> Any:
        from filelock import FileLock

        # Shards started together: the first builds a store, the others wait and reuse it.
        root = eval_root(self.settings, self.dataset)
        root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(root / "build.lock"))

    @property
    def library(self) -> EvalLibrary:
        if self._library is None:
            with self._build_lock():
                self._library = build_library(
                    self.dataset, self.settings, progress=self.options.progress
                )
            if self._library.failed:
                self.notes.append(
                    f"{len(self._library.failed)} corpus documents failed to ingest, e.g. "
                    + self._library.failed[0]
                )
        return self._library

    @property
    def assistant(self) -> Any:
        if self._assistant is None:
            from assistant.pipeline import Assistant
            from core import backends

            # The model conversion cache stays in the user's home, shared with `ask`.
            llm = self.llm or backends.create("llm", self.settings.llm, self.settings)
            self._assistant = Assistant(self.library.settings, llm=llm)
            self._assistant.warm_up()
            self.llm = llm
        return self._assistant

    @property
    def baseline(self) -> Any:
        if self._baseline is None:
            from evaluation.baseline_langchain import LangChainBaseline, recipe_key

            folder = eval_root(self.settings, self.dataset) / f"langchain-{recipe_key()}"
            self._baseline = LangChainBaseline(folder)
            with self._build_lock():
                self._baseline.open(self.dataset.corpus, progress=self.options.progress)
        return self._baseline

    @property
    def retriever(self) -> Any:
        """The assistant's retriever when answers are evaluated too, else one of its own."""
        if self.options.needs_answers:
            return self.assistant.retriever
        if self._retriever is None:
            from assistant.retrieve import Retriever

            self._retriever = Retriever(self.library.settings)
            self._retriever.warm_up()
        return self._retriever

    def baseline_llm(self) -> Any:
        return self.assistant.llm


def _progress(items: Sequence[Question], enabled: bool) -> Iterator[Question]:
    from tqdm import tqdm

    yield from tqdm(items, desc="eval", unit="q", file=sys.stderr, disable=not enabled)


def _retrieval_record(res: _Resources, q: Question) -> dict[str, Any]:
    lib = res.library
    retriever = res.retriever
    t0 = time.perf_counter()
    hits = retriever.retrieve(q.question, k=CHUNK_DEPTH)
    seconds = time.perf_counter() - t0
    docs = m.dedupe_docs((lib.corpus_id(h.chunk.doc_id) for h in hits), DOC_DEPTH)
    return {"doc_ids": docs, "seconds": seconds}


def _answer_record(res: _Resources, answer: Any) -> dict[str, Any]:
    lib = res.library
    shown = [] if answer.abstained else answer.sentences
    return {
        "answer": answer.answer,
        "abstained": bool(answer.abstained),
        # a weak-retrieval abstention may carry the default mode; the flag decides
        "mode": "abstained" if answer.abstained else answer.mode,
        "abstain_reason": answer.abstain_reason,
        "cited": [lib.corpus_id(c.doc_id) for c in answer.citations],
        "sentences": len(shown),
        "unsupported": sum(not s.supported for s in shown),
        "retrieved": [lib.corpus_id(h.chunk.doc_id) for h in answer.hits],
        "timings": {k: round(float(v), 4) for k, v in answer.timings.items()},
    }


def _attribution_record(res: _Resources, answer: Any, methods: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        if answer.abstained:
            out[method] = None
            continue
        copy = replace(answer, timings=dict(answer.timings), attribution=None)
        t0 = time.perf_counter()
        res.assistant.attribute(copy, method)
        seconds = time.perf_counter() - t0
        faith = (copy.attribution or {}).get("faithfulness")
        out[method] = (
            None
            if not faith
            else {
                "top_k_drop": float(faith["top_k_drop"]),
                "random_drop": float(faith["random_drop"]),
                "k": faith.get("k"),
                "seconds": round(seconds, 4),
            }
        )
    return out


def resolve_methods(settings: Settings, options: EvalOptions) -> tuple[str, ...]:
    if options.attribution_methods:
        return tuple(options.attribution_methods)
    return (settings.attribution if settings.attribution != "off" else "surrogate",)


def run_evaluation(
    options: EvalOptions, settings: Settings, *, llm: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate and return (summary, per-question records). ``llm`` may be injected (tests)."""
    started = time.perf_counter()
    dataset = load_dataset(options.folder)
    questions = sample_questions(dataset.questions, options.limit, options.seed)
    if options.unanswerable:
        # before sharding, so every shard holds out the same topics and shares one store
        dataset, questions = hold_out(dataset, questions, options.unanswerable, options.seed)
    if options.shard is not None:
        k, n = options.shard
        questions = questions[k - 1 :: n]
    methods = resolve_methods(settings, options) if "attribution" in options.metrics else ()
    if methods:
        from audit.attribution import METHODS as KNOWN

        bad = [x for x in methods if x not in KNOWN]
        if bad:
            raise ValueError(f"unknown attribution methods {bad}; choose from {sorted(KNOWN)}")
    recipe = None
    if options.baseline == "langchain":
        from evaluation.baseline_langchain import recipe_key

        recipe = recipe_key()
    hashes = config_hashes(settings, dataset, methods, recipe)
    cache_path = eval_root(settings, dataset) / "results.jsonl"
    cache = ResultsCache(cache_path)
    res = _Resources(settings, dataset, options, llm=llm)
    res.notes.extend(data_notes(dataset, questions))
    if options.unanswerable:
        res.notes.append(
            f"--unanswerable {options.unanswerable}: the topics of that many sampled questions "
            f"({dataset.held_out} corpus documents: their gold documents and every document "
            "with the same title) are left out of this run's library, so those questions "
            "are unanswerable and the assistant should abstain on them."
        )
    if options.shard is not None:
        res.notes.append(
            f"Shard {options.shard[0]} of {options.shard[1]}: these figures cover "
            f"{len(questions)} questions of the sample. Once every shard is done, run the "
            "same command without --shard to report the whole sample from the cache."
        )

    parts: list[str] = []
    if "retrieval" in options.metrics:
        parts.append("retrieval")
    if options.needs_answers:
        parts.append("answer")
    if methods:
        parts.append("attribution")
    if recipe and "retrieval" in options.metrics:
        parts.append("baseline_retrieval")
    if recipe and "answer" in options.metrics:
        parts.append("baseline_answer")

    reused: Counter[str] = Counter()
    computed: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    for q in _progress(questions, options.progress):
        rec: dict[str, Any] = {
            "qid": q.qid,
            "question": q.question,
            "gold": list(q.gold),
            "gold_answer": q.answer,
            "long_answer": q.long_answer,
        }
        cached = {p: (None if options.fresh else cache.get(p, hashes[p], q)) for p in parts}
        answer_obj = None
        for part in parts:
            data = cached[part]
            if data is not None:
                reused[part] += 1
                rec[part] = data
                continue
            if part == "retrieval":
                data = _retrieval_record(res, q)
            elif part == "answer":
                answer_obj = res.assistant.ask(q.question, record=False, attribute=False)
                data = _answer_record(res, answer_obj)
            elif part == "attribution":
                if answer_obj is None:  # the answer came from the cache: regenerate it
                    answer_obj = res.assistant.ask(q.question, record=False, attribute=False)
                data = _attribution_record(res, answer_obj, methods)
            elif part == "baseline_retrieval":
                t0 = time.perf_counter()
                found = res.baseline.search(q.question, CHUNK_DEPTH)
                data = {
                    "doc_ids": m.dedupe_docs((d for d, _ in found), DOC_DEPTH),
                    "seconds": time.perf_counter() - t0,
                }
            elif part == "baseline_answer":
                data = res.baseline.answer(
                    res.baseline_llm(),
                    q.question,
                    max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                )
            cache.put(part, hashes[part], q, data)
            computed[part] += 1
            rec[part] = data
        records.append(rec)

    summary: dict[str, Any] = {
        "folder": str(options.folder),
        "corpus": {
            "documents": len(dataset.corpus),
            "sha256": dataset.corpus_sha256,
            "held_out_documents": dataset.held_out,
        },
        "questions": {
            "in_file": len(dataset.questions),
            "evaluated": len(questions),
            "answerable": sum(q.answerable for q in questions),
            "unanswerable": sum(not q.answerable for q in questions),
        },
        "limit": options.limit,
        "seed": options.seed,
        "shard": None if options.shard is None else f"{options.shard[0]}/{options.shard[1]}",
        "metrics": list(options.metrics),
        "clinrag": system_metrics(records, options.metrics, prefix=""),
        "baseline": None,
        "cache": {
            "path": str(cache_path),
            "reused": dict(reused),
            "computed": dict(computed),
            "fully_cached": not computed,
        },
        "config": {p: hashes[p] for p in parts},
        "settings": {
            "top_k": settings.top_k,
            "retrieval_chunk_depth": CHUNK_DEPTH,
            "llm": settings.llm,
            "llm_model": settings.llm_model or "packaged SmolLM2-135M-Instruct",
            "embedder_model": settings.embedder_model or "packaged all-MiniLM-L6-v2",
            "attribution_methods": list(methods),
        },
        "notes": res.notes,
    }
    if res._library is not None:
        summary["corpus"]["store"] = str(res._library.settings.home)
    if recipe:
        summary["baseline"] = {
            "name": "langchain",
            "recipe": "RecursiveCharacterTextSplitter(1000, 200) + HuggingFaceEmbeddings "
            "(packaged all-MiniLM-L6-v2) + Chroma similarity_search; answers: top 4 chunks "
            "in the RetrievalQA stuff prompt, same LLM",
            **system_metrics(records, options.metrics, prefix="baseline_"),
        }
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    return summary, records


def data_notes(dataset: Dataset, questions: Sequence[Question]) -> list[str]:
    """Problems in the data that bias the figures, said once in the summary."""
    notes = []
    ids = Counter(str(row["doc_id"]) for row in dataset.corpus)
    missing = sorted({g for q in questions for g in q.gold} - set(ids))
    if missing:
        notes.append(
            f"{len(missing)} gold doc ids are not in corpus.jsonl (e.g. {missing[0]}); "
            "those questions cannot score on retrieval."
        )
    renamed = [q.qid for q in dataset.questions if "#" in q.qid]
    if renamed:
        notes.append(
            f"{len(renamed)} questions repeat an earlier qid in questions.jsonl; they are "
            f"kept and numbered in file order (e.g. {renamed[0]})."
        )
    repeated = [d for d, n in ids.items() if n > 1]
    if repeated:
        notes.append(
            f"{len(repeated)} doc ids are shared by several corpus rows "
            f"({sum(ids[d] for d in repeated)} rows, e.g. {repeated[0]}); any of them counts "
            "as gold."
        )
    return notes


def _is_decision(label: str | None) -> bool:
    return label is not None and label.strip().lower() in m.DECISIONS


def system_metrics(
    records: Sequence[dict[str, Any]], chosen: Sequence[str], prefix: str
) -> dict[str, Any]:
    """The metrics of one system (``prefix`` "" for clinrag, "baseline_" for the recipe)."""
    out: dict[str, Any] = {}
    ret_key, ans_key = f"{prefix}retrieval", f"{prefix}answer"
    latency: dict[str, list[float]] = {}
    with_ret = [r for r in records if r.get(ret_key)]
    if "retrieval" in chosen and with_ret:
        out["retrieval"] = m.retrieval_metrics(
            [r[ret_key]["doc_ids"] for r in with_ret], [r["gold"] for r in with_ret]
        )
        latency[f"retrieval@{CHUNK_DEPTH}"] = [r[ret_key]["seconds"] for r in with_ret]
    with_ans = [r for r in records if r.get(ans_key)]
    if with_ans and (
        "answer" in chosen or (not prefix and {"citations", "attribution"} & set(chosen))
    ):
        if not prefix:
            out["modes"] = dict(Counter(r[ans_key]["mode"] for r in with_ans))
        for r in with_ans:
            for stage, v in r[ans_key]["timings"].items():
                latency.setdefault(stage, []).append(float(v))
    if "answer" in chosen and with_ans:
        answer: dict[str, Any] = {}
        decided = [r for r in with_ans if _is_decision(r["gold_answer"])]
        if decided:
            preds = [
                m.ABSTAINED if r[ans_key]["abstained"] else m.parse_decision(r[ans_key]["answer"])
                for r in decided
            ]
            for r, p in zip(decided, preds, strict=True):
                r.setdefault("decisions", {})[prefix.rstrip("_") or "clinrag"] = p
            answer["decision"] = m.decision_metrics(
                [r["gold_answer"].strip().lower() for r in decided], preds
            )
        pairs = [
            (r[ans_key]["answer"], r["long_answer"])
            for r in with_ans
            if r.get("long_answer") and not r[ans_key]["abstained"]
        ]
        if pairs:
            answer["text"] = m.text_metrics([p for p, _ in pairs], [ref for _, ref in pairs])
        out["answer"] = answer
    if not prefix and "citations" in chosen and with_ans:
        out["citations"] = m.citation_metrics(
            [
                {
                    "gold": r["gold"],
                    "abstained": r[ans_key]["abstained"],
                    "cited": r[ans_key]["cited"],
                    "sentences": r[ans_key]["sentences"],
                    "unsupported": r[ans_key]["unsupported"],
                }
                for r in with_ans
            ]
        )
    elif prefix and "answer" in chosen and with_ans:
        answerable = [r for r in with_ans if r["gold"]]
        unanswerable = [r for r in with_ans if not r["gold"]]
        out["abstention"] = {
            "abstention_rate": _rate([r[ans_key]["abstained"] for r in unanswerable]),
            "false_abstention_rate": _rate([r[ans_key]["abstained"] for r in answerable]),
        }
    if not prefix and "attribution" in chosen:
        rows = [r["attribution"] for r in records if r.get("attribution") is not None]
        out["attribution"] = m.attribution_metrics(rows)
        for row in rows:
            for method, v in row.items():
                if v:
                    latency.setdefault(f"attribution:{method}", []).append(v["seconds"])
    out["latency"] = {
        stage: {"n": len(xs), "p50": m.percentile(xs, 50), "p95": m.percentile(xs, 95)}
        for stage, xs in latency.items()
    }
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(bool(f) for f in flags) / len(flags) if flags else None
