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

Each part is one entry of :data:`PARTS` (when a run wants it, what its result depends on, how
one question's result is made), and each figure of the summary one entry of :data:`FIGURES`:
adding either is adding an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings, answer_settings
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
    shared_doc_ids,
)

if TYPE_CHECKING:
    from assistant.pipeline import Assistant
    from assistant.retrieve import Retriever
    from core.types import Answer
    from evaluation.baseline_langchain import LangChainBaseline

METRICS = ("retrieval", "answer", "citations", "attribution")
DEFAULT_METRICS = ("retrieval", "answer", "citations")
BASELINES = ("langchain",)
CHUNK_DEPTH = 30  # chunks retrieved for the retrieval metrics (both systems)
DOC_DEPTH = 10  # documents kept from them (recall@10, nDCG@10)
# 2: answers keyed by core.config.answer_settings, retrieval by the fusion weights too
# 3: answers keep their first sentence, removed sentences and decision (question sets)
CACHE_FORMAT = 3
# Metrics that read clinrag's answers: any of them makes the run ask every question.
ANSWER_METRICS = frozenset({"answer", "citations", "attribution"})

Record = dict[str, Any]


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
        return bool(ANSWER_METRICS & set(self.metrics))


@dataclass(frozen=True)
class Plan:
    """What a run evaluates: all that decides which parts run and what their results depend on."""

    settings: Settings
    dataset: Dataset
    metrics: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # attribution methods, with the attribution metric
    recipe: str | None = None  # the baseline recipe's key, when one is compared

    @property
    def needs_answers(self) -> bool:
        return bool(ANSWER_METRICS & set(self.metrics))


def _hash(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hashes(
    settings: Settings, dataset: Dataset, methods: Sequence[str], recipe: str | None = None
) -> dict[str, str]:
    """One hash per cached part that this configuration can compute: what its result depends on."""
    plan = Plan(settings, dataset, methods=tuple(methods), recipe=recipe)
    return {name: _hash(key) for name, part in PARTS.items() if (key := part.key(plan)) is not None}


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
                    # ValueError covers a torn line of digits too long to be an int
                    except (ValueError, KeyError, TypeError):
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
        line = (json.dumps(row) + "\n").encode("utf-8")
        # Shards append to one file. One write() on an O_APPEND descriptor was not enough: a
        # 50 kB line from one process was seen torn by another's under load
        # (tests/test_evaluation.py). So each line is written whole under a lock.
        from filelock import FileLock

        with FileLock(f"{self.path}.lock"):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)


@dataclass
class _Resources:
    """Models and stores, built only when some question needs them (not on a cached rerun)."""

    plan: Plan
    options: EvalOptions
    llm: Any = None
    _library: EvalLibrary | None = None
    _assistant: Assistant | None = None
    _baseline: LangChainBaseline | None = None
    _retriever: Retriever | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.plan.settings

    def _build_lock(self) -> Any:
        from filelock import FileLock

        # Shards started together: the first builds a store, the others wait and reuse it.
        root = eval_root(self.settings, self.plan.dataset)
        root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(root / "build.lock"))

    @property
    def library(self) -> EvalLibrary:
        if self._library is None:
            with self._build_lock():
                self._library = build_library(
                    self.plan.dataset, self.settings, progress=self.options.progress
                )
            if self._library.failed:
                self.notes.append(
                    f"{len(self._library.failed)} corpus documents failed to ingest, e.g. "
                    + self._library.failed[0]
                )
        return self._library

    @property
    def assistant(self) -> Assistant:
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
    def baseline(self) -> LangChainBaseline:
        if self._baseline is None:
            from evaluation.baseline_langchain import LangChainBaseline, recipe_key

            folder = eval_root(self.settings, self.plan.dataset) / f"langchain-{recipe_key()}"
            self._baseline = LangChainBaseline(folder)
            with self._build_lock():
                self._baseline.open(self.plan.dataset.corpus, progress=self.options.progress)
        return self._baseline

    @property
    def retriever(self) -> Retriever:
        """The assistant's retriever when answers are evaluated too, else one of its own."""
        if self.plan.needs_answers:
            return self.assistant.retriever
        if self._retriever is None:
            from assistant.retrieve import Retriever

            self._retriever = Retriever(self.library.settings)
            self._retriever.warm_up()
        return self._retriever


@dataclass
class _Turn:
    """One question on its way through the parts."""

    question: Question
    _answer: Answer | None = None

    def answer(self, res: _Resources) -> Answer:
        """The pipeline's answer, asked once however many parts read it."""
        if self._answer is None:
            self._answer = res.assistant.ask(self.question.question, record=False, attribute=False)
        return self._answer


# --- the parts: what is computed and cached per question ---------------------------------------


@dataclass(frozen=True)
class Part:
    """One cached per-question result."""

    wanted: Callable[[Plan], bool]  # whether a run computes it
    key: Callable[[Plan], Record | None]  # what it depends on; None: the plan cannot make it
    compute: Callable[[_Resources, _Turn], Record]


def _store_key(plan: Plan) -> Record:
    return {
        "format": CACHE_FORMAT,
        "corpus": plan.dataset.corpus_sha256,
        "ingest": ingest_key(plan.settings),
    }


def _retrieval_key(plan: Plan) -> Record:
    s = plan.settings
    return {
        **_store_key(plan),
        "candidates": s.candidates,
        "rrf_k": s.rrf_k,
        "weights": [s.dense_weight, s.lexical_weight],
        "reranker": s.reranker_model,
        "depth": [CHUNK_DEPTH, DOC_DEPTH],
    }


def _retrieval(res: _Resources, turn: _Turn) -> Record:
    lib = res.library
    retriever = res.retriever
    t0 = time.perf_counter()
    hits = retriever.retrieve(turn.question.question, k=CHUNK_DEPTH)
    seconds = time.perf_counter() - t0
    docs = m.dedupe_docs((lib.corpus_id(h.chunk.doc_id) for h in hits), DOC_DEPTH)
    return {"doc_ids": docs, "seconds": seconds}


def _answer_key(plan: Plan) -> Record:
    from assistant.prompts import load_template

    return {
        **_store_key(plan),
        "settings": answer_settings(plan.settings),
        # an edited template under the same name changes every answer
        "template": load_template(plan.settings.prompt_template).sha256,
    }


def _answer(res: _Resources, turn: _Turn) -> Record:
    answer = turn.answer(res)
    lib = res.library
    shown = [] if answer.abstained else answer.sentences
    return {
        "answer": answer.answer,
        "abstained": bool(answer.abstained),
        "mode": str(answer.mode),
        "abstain_reason": answer.abstain_reason,
        "cited": [lib.corpus_id(c.doc_id) for c in answer.citations],
        "sentences": len(shown),
        "unsupported": sum(not s.supported for s in shown),
        "removed": 0 if answer.abstained else len(answer.unverified),
        # what a clinician reads first: the first sentence shown, else the text's first
        "first_sentence": shown[0].text if shown else m.first_sentence(answer.answer),
        "decision": None if answer.decision is None else str(answer.decision.label),
        "retrieved": [lib.corpus_id(h.chunk.doc_id) for h in answer.hits],
        "timings": {k: round(float(v), 4) for k, v in answer.timings.items()},
    }


def _attribution_key(plan: Plan) -> Record:
    return {
        "answer": _hash(_answer_key(plan)),
        "methods": sorted(plan.methods),
        "ablations": plan.settings.attribution_ablations,
        "max_sentences": plan.settings.attribution_max_sentences,
    }


def _attribution(res: _Resources, turn: _Turn) -> Record:
    # the answer part may have come from the cache: the live answer is asked again then
    answer = turn.answer(res)
    out: Record = {}
    for method in res.plan.methods:
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


def _baseline_key(plan: Plan, **depends_on: Any) -> Record | None:
    if not plan.recipe:
        return None
    base = {"format": CACHE_FORMAT, "corpus": plan.dataset.corpus_sha256, "recipe": plan.recipe}
    return {**base, **depends_on}


def _baseline_retrieval_key(plan: Plan) -> Record | None:
    return _baseline_key(plan, depth=[CHUNK_DEPTH, DOC_DEPTH])


def _baseline_retrieval(res: _Resources, turn: _Turn) -> Record:
    t0 = time.perf_counter()
    found = res.baseline.search(turn.question.question, CHUNK_DEPTH)
    return {
        "doc_ids": m.dedupe_docs((d for d, _ in found), DOC_DEPTH),
        "seconds": time.perf_counter() - t0,
    }


def _baseline_answer_key(plan: Plan) -> Record | None:
    s = plan.settings
    return _baseline_key(
        plan,
        llm=[s.llm, s.llm_model, s.llm_base_url, s.device],
        decoding=[s.max_new_tokens, s.temperature],
    )


def _baseline_answer(res: _Resources, turn: _Turn) -> Record:
    return res.baseline.answer(
        res.assistant.llm,
        turn.question.question,
        max_new_tokens=res.settings.max_new_tokens,
        temperature=res.settings.temperature,
    )


# In the order they run: attribution reuses the answer the answer part just asked for.
PARTS: dict[str, Part] = {
    "retrieval": Part(lambda p: "retrieval" in p.metrics, _retrieval_key, _retrieval),
    "answer": Part(lambda p: p.needs_answers, _answer_key, _answer),
    "attribution": Part(lambda p: bool(p.methods), _attribution_key, _attribution),
    "baseline_retrieval": Part(
        lambda p: bool(p.recipe) and "retrieval" in p.metrics,
        _baseline_retrieval_key,
        _baseline_retrieval,
    ),
    "baseline_answer": Part(
        lambda p: bool(p.recipe) and "answer" in p.metrics,
        _baseline_answer_key,
        _baseline_answer,
    ),
}


def _progress(items: Sequence[Question], enabled: bool) -> Iterator[Question]:
    from tqdm import tqdm

    yield from tqdm(items, desc="eval", unit="q", file=sys.stderr, disable=not enabled)


def resolve_methods(settings: Settings, options: EvalOptions) -> tuple[str, ...]:
    if options.attribution_methods:
        return tuple(options.attribution_methods)
    return (settings.attribution if settings.attribution != "off" else "surrogate",)


def run_evaluation(
    options: EvalOptions, settings: Settings, *, llm: Any = None
) -> tuple[dict[str, Any], list[Record]]:
    """Evaluate and return (summary, per-question records). ``llm`` may be injected (tests)."""
    started = time.perf_counter()
    dataset = load_dataset(options.folder, settings)
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

        # "auto" is resolved per answer by assistant.attribute.choose_method
        bad = [x for x in methods if x not in KNOWN and x != "auto"]
        if bad:
            raise ValueError(f"unknown attribution methods {bad}; choose from {sorted(KNOWN)}")
    recipe = None
    if options.baseline == "langchain":
        from evaluation.baseline_langchain import recipe_key

        recipe = recipe_key()
    plan = Plan(settings, dataset, tuple(options.metrics), methods, recipe)
    hashes = config_hashes(settings, dataset, methods, recipe)
    cache_path = eval_root(settings, dataset) / "results.jsonl"
    cache = ResultsCache(cache_path)
    res = _Resources(plan, options, llm=llm)
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

    parts = [name for name, part in PARTS.items() if part.wanted(plan)]
    reused: Counter[str] = Counter()
    computed: Counter[str] = Counter()
    records: list[Record] = []
    for q in _progress(questions, options.progress):
        rec: Record = {
            "qid": q.qid,
            "question": q.question,
            "gold": list(q.gold),
            "gold_answer": q.answer,
            "long_answer": q.long_answer,
        }
        if q.kind or q.key_fact:
            rec.update(
                type=q.kind, key_fact=[list(t) for t in q.key_fact], key_fact_min=q.key_fact_min
            )
        turn = _Turn(q)
        for name in parts:
            data = None if options.fresh else cache.get(name, hashes[name], q)
            if data is None:
                data = PARTS[name].compute(res, turn)
                cache.put(name, hashes[name], q, data)
                computed[name] += 1
            else:
                reused[name] += 1
            rec[name] = data
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
    if any("type" in r for r in records):
        # after both systems' figures: they leave their per-question checks on the records
        summary["per_question"] = [per_question_row(r) for r in records]
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    return summary, records


def data_notes(dataset: Dataset, questions: Sequence[Question]) -> list[str]:
    """Problems in the data that bias the figures, said once in the summary."""
    notes = []
    ids = {str(row["doc_id"]) for row in dataset.corpus}
    missing = sorted({g for q in questions for g in q.gold} - ids)
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
    shared = shared_doc_ids(dataset.corpus)
    if shared:
        notes.append(
            f"{len(shared)} doc ids are shared by several corpus rows "
            f"({sum(shared.values())} rows, e.g. {next(iter(shared))}); any of them counts "
            "as gold."
        )
    return notes


# --- the summary: each system's figures from the per-question records --------------------------


@dataclass(frozen=True)
class _System:
    """Whose figures: clinrag's parts, or the baseline's (named ``baseline_<part>``)."""

    name: str  # its key in a record's "decisions"
    prefix: str
    figures: tuple[str, ...]  # its entries of FIGURES, in output order
    answer_metrics: frozenset[str]  # metrics that have its answers read


@dataclass
class _Scope:
    """What a figure reads: one system's part of the records, and the metrics asked for."""

    records: Sequence[Record]
    chosen: set[str]
    system: _System
    latency: dict[str, list[float]] = field(default_factory=dict)  # seconds per stage

    def part(self, name: str) -> list[tuple[Record, Record]]:
        """(record, the system's ``name`` part) for the records that hold it."""
        key = f"{self.system.prefix}{name}"
        return [(r, r[key]) for r in self.records if r.get(key)]

    @property
    def answers_read(self) -> bool:
        return bool(self.chosen & self.system.answer_metrics)


# A figure's value goes into the system's summary under its name, unless it is None.
Figure = Callable[[_Scope], Any]


def _retrieval_figure(s: _Scope) -> Any:
    rows = s.part("retrieval")
    if "retrieval" not in s.chosen or not rows:
        return None
    s.latency[f"retrieval@{CHUNK_DEPTH}"] = [ret["seconds"] for _, ret in rows]
    return m.retrieval_metrics([ret["doc_ids"] for _, ret in rows], [r["gold"] for r, _ in rows])


def _modes_figure(s: _Scope) -> Any:
    rows = s.part("answer")
    if not rows or not s.answers_read:
        return None
    return dict(Counter(a["mode"] for _, a in rows))


def _timings_figure(s: _Scope) -> Any:
    if s.answers_read:
        for _, a in s.part("answer"):
            for stage, v in a["timings"].items():
                s.latency.setdefault(stage, []).append(float(v))
    return None  # stage timings go into the latency table only


def _is_decision(label: str | None) -> bool:
    return label is not None and label.strip().lower() in m.DECISIONS


def _answer_figure(s: _Scope) -> Any:
    rows = s.part("answer")
    if "answer" not in s.chosen or not rows:
        return None
    out: Record = {}
    decided = [(r, a) for r, a in rows if _is_decision(r["gold_answer"])]
    if decided:
        # the recorded decision when the answer made one (uncertain reads as maybe)
        preds = [decision_of(a) for _, a in decided]
        for (r, _), p in zip(decided, preds, strict=True):
            r.setdefault("decisions", {})[s.system.name] = p
        out["decision"] = m.decision_metrics(
            [r["gold_answer"].strip().lower() for r, _ in decided], preds
        )
    pairs = [
        (a["answer"], r["long_answer"])
        for r, a in rows
        if r.get("long_answer") and not a["abstained"]
    ]
    if pairs:
        out["text"] = m.text_metrics([p for p, _ in pairs], [ref for _, ref in pairs])
    return out


def _citations_figure(s: _Scope) -> Any:
    rows = s.part("answer")
    if "citations" not in s.chosen or not rows:
        return None
    keys = ("abstained", "cited", "sentences", "unsupported")
    return m.citation_metrics([{"gold": r["gold"], **{k: a[k] for k in keys}} for r, a in rows])


def _abstention_figure(s: _Scope) -> Any:
    rows = s.part("answer")
    if "answer" not in s.chosen or not rows:
        return None
    return {
        "abstention_rate": _rate([a["abstained"] for r, a in rows if not r["gold"]]),
        "false_abstention_rate": _rate([a["abstained"] for r, a in rows if r["gold"]]),
    }


def _attribution_figure(s: _Scope) -> Any:
    if "attribution" not in s.chosen:
        return None
    rows = [r["attribution"] for r in s.records if r.get("attribution") is not None]
    for row in rows:
        for method, v in row.items():
            if v:
                s.latency.setdefault(f"attribution:{method}", []).append(v["seconds"])
    return m.attribution_metrics(rows)


def _check(r: Record, system: _System, **values: Any) -> None:
    """Per-question outcomes, kept on the record for the report's per-question rows."""
    r.setdefault("checks", {}).setdefault(system.name, {}).update(values)


def _key_fact_figure(s: _Scope) -> Any:
    rows = [(r, a) for r, a in s.part("answer") if r.get("key_fact") and r["gold"]]
    if "answer" not in s.chosen or not rows:
        return None
    out = []
    for r, a in rows:
        terms, least = r["key_fact"], r.get("key_fact_min")
        # the recipe has no sentence structure: its first sentence is its text's
        first = a.get("first_sentence", m.first_sentence(a["answer"]))
        found = {
            "first": not a["abstained"] and m.key_fact_found(first, terms, least),
            "anywhere": not a["abstained"] and m.key_fact_found(a["answer"], terms, least),
        }
        _check(r, s.system, key_fact_first=found["first"], key_fact_anywhere=found["anywhere"])
        out.append({"type": r.get("type"), "abstained": a["abstained"], **found})
    return m.key_fact_metrics(out)


def _documents_cited_figure(s: _Scope) -> Any:
    rows = [(r, a) for r, a in s.part("answer") if not a["abstained"]]
    if "citations" not in s.chosen or not rows:
        return None
    for r, a in rows:
        cited = m.dedupe_docs(a["cited"])
        _check(r, s.system, cited=cited, cited_unexpected=[d for d in cited if d not in r["gold"]])
    return m.document_citation_metrics([{"gold": r["gold"], "cited": a["cited"]} for r, a in rows])


def _verification_figure(s: _Scope) -> Any:
    rows = [(r, a) for r, a in s.part("answer") if not a["abstained"]]
    if "citations" not in s.chosen or not rows:
        return None
    for r, a in rows:
        _check(r, s.system, removed=a.get("removed", 0), shown_unsupported=a["unsupported"])
    return m.verification_metrics([a for _, a in rows])


def decision_of(a: Record) -> str:
    """An answer's yes/no reading: its decision when it made one, else its text parsed."""
    if a["abstained"]:
        return m.ABSTAINED
    label = a.get("decision")
    if label:
        return "maybe" if label == "uncertain" else str(label)
    return m.parse_decision(a["answer"])


def _yes_no_figure(s: _Scope) -> Any:
    rows = [(r, a) for r, a in s.part("answer") if r.get("type") == "yes_no"]
    if "answer" not in s.chosen or not rows:
        return None
    preds = [decision_of(a) for _, a in rows]
    for (r, _), p in zip(rows, preds, strict=True):
        _check(r, s.system, decision=p, decision_right=p == r["gold_answer"])
    return m.yes_no_metrics([r["gold_answer"] for r, _ in rows], preds)


FIGURES: dict[str, Figure] = {
    "retrieval": _retrieval_figure,
    "modes": _modes_figure,
    "timings": _timings_figure,
    "answer": _answer_figure,
    "citations": _citations_figure,
    "abstention": _abstention_figure,
    "attribution": _attribution_figure,
    "key_fact": _key_fact_figure,
    "documents_cited": _documents_cited_figure,
    "verification": _verification_figure,
    "yes_no": _yes_no_figure,
}
_SYSTEMS = {
    "": _System(
        "clinrag",
        "",
        (
            "retrieval",
            "modes",
            "timings",
            "answer",
            "citations",
            "abstention",
            "key_fact",
            "documents_cited",
            "verification",
            "yes_no",
            "attribution",
        ),
        ANSWER_METRICS,
    ),
    # The recipe has no modes and cites nothing; saying it does not know is its abstention.
    "baseline_": _System(
        "baseline",
        "baseline_",
        ("retrieval", "timings", "answer", "abstention", "key_fact", "yes_no"),
        frozenset({"answer"}),
    ),
}


def per_question_row(r: Record) -> Record:
    """One question's outcome per system, for a reviewer to see each miss."""
    row: Record = {
        "qid": r["qid"],
        "type": r.get("type"),
        "question": r["question"],
        "expected_docs": r["gold"],
        "expected_decision": r["gold_answer"] if r.get("type") == "yes_no" else None,
    }
    for name, prefix in (("clinrag", ""), ("baseline", "baseline_")):
        a = r.get(f"{prefix}answer")
        if not a:
            continue
        row[name] = {
            "mode": a.get("mode"),
            "abstained": a["abstained"],
            "first_sentence": a.get("first_sentence", m.first_sentence(a["answer"])),
            "answer": a["answer"],
            **r.get("checks", {}).get(name, {}),
        }
    return row


def system_metrics(records: Sequence[Record], chosen: Sequence[str], prefix: str) -> dict[str, Any]:
    """The metrics of one system (``prefix`` "" for clinrag, "baseline_" for the recipe)."""
    scope = _Scope(records, set(chosen), _SYSTEMS[prefix])
    out: dict[str, Any] = {}
    for name in scope.system.figures:
        value = FIGURES[name](scope)
        if value is not None:
            out[name] = value
    out["latency"] = {
        stage: {"n": len(xs), "p50": m.percentile(xs, 50), "p95": m.percentile(xs, 95)}
        for stage, xs in scope.latency.items()
    }
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(bool(f) for f in flags) / len(flags) if flags else None
