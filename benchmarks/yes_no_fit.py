"""Fit the yes/no decision's logistic model (``assistant/decide_weights.json``) on PubMedQA.

    CLINRAG_HOME=H .venv/bin/python -m benchmarks.yes_no_fit [../shared/eval/pubmedqa] \
        [--channel] [--write]

Per question, exactly what an answer computes (``assistant.decide.answer``): retrieval, the
checks before generation, the quotes, the retrieved passages of the best quote's document,
and on them the decision's features (the text cues; with ``--channel`` also the packaged
model's channel scores, about 10 s per question on 2 shared cores). Rows are cached under
``H/eval/<corpus hash>/yes_no_features.jsonl``, so a rerun only refits; the store is the one
``clinrag eval`` builds there.

Splits, as in docs/benchmarks.md: dev = even file positions of questions.jsonl (250), test =
odd positions (250). The shipped weights are fitted on the dev half only (rows whose gold is
yes or no; "maybe" rows are wrong whatever is decided), so the test half is held out. Printed
(accuracy against the three-way gold, every question counted; questions the checks decline
are counted wrong): dev in-sample, dev 10-fold cross-validated, test held out, and the
PubMedQA paper's protocol (10-fold cross-validation over all 500), each beside always "yes",
for each feature set. ``--write`` writes the dev-half fit of the shipped feature set with the
data's hashes and this command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from assistant.decide import TEXT_FEATURES
from core.backends.base import LogProbScorer
from core.config import Settings, answer_settings, apply_offline_environment

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "channel only": ("shift",),
    "cues, whole passages (previous)": ("negative", "positive", "doubt"),
    "cues in the results": ("negative_results", "positive_results", "doubt"),
    "results + scoped negation": (
        "negative_results",
        "positive_results",
        "doubt",
        "negation_of_question_terms",
        "no_difference_results",
        "last_sentence_negative",
    ),
    "all text features": TEXT_FEATURES,
    "channel + results": ("shift", "negative_results", "positive_results", "doubt"),
}
FOLDS = 10
REPEATS = 5  # cross-validation repeated with 5 seeds: one 10-fold split of 226 rows is noisy
# L2 strengths tried; the one with the best dev cross-validated accuracy is kept
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def _cache_key(settings: Settings, model_hash: str) -> str:
    from assistant import decide

    relevant = {k: v for k, v in answer_settings(settings).items() if not k.startswith("yes_no")}
    parts = [relevant, decide.PROMPT_SHA256, model_hash, 3]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_rows(path: Path, key: str | None = None) -> dict[str, dict[str, Any]]:
    """Cached rows by qid (a cut-off last line from a stopped run is skipped); with ``key``,
    only the rows computed under it."""
    cached: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key is None or row.get("key") == key:
                cached[row["qid"]] = row
    return cached


def compute_rows(
    folder: Path,
    settings: Settings,
    *,
    dev_only: bool = False,
    test_only: bool = False,
    channel: bool = False,
    shard: tuple[int, int] = (1, 1),
) -> tuple[list[dict[str, Any]], Any, str]:
    """Per question: gold, file position, the checks' verdict, the evidence and its scores;
    then the data set and the scoring model's weights hash."""
    from assistant import decide, policy
    from assistant.cite import quotes_for, source_sentences
    from evaluation.data import eval_root, load_dataset
    from evaluation.runner import EvalOptions, Plan, _Resources

    dataset = load_dataset(folder, settings)
    res = _Resources(Plan(settings, dataset, ("answer",)), EvalOptions(folder=folder))
    assistant = res.assistant
    llm = assistant.llm
    key = _cache_key(settings, llm.info.weights_hash)
    path = eval_root(settings, dataset) / "yes_no_features.jsonl"
    cached = _read_rows(path, key)
    rows = []
    t0 = time.perf_counter()
    # the dev half first: the fit needs only it
    order = [] if test_only else [*range(0, len(dataset.questions), 2)]
    if not dev_only:
        order += range(1, len(dataset.questions), 2)
    k, n = shard
    mine = set(order[k - 1 :: n])  # the others are left to the other shards
    for pos in order:
        q = dataset.questions[pos]
        row = cached.get(q.qid)
        if pos not in mine:
            continue
        if row is None or row.get("question") != q.question:
            hits = assistant.retriever.retrieve(q.question)
            ctx_sources = source_sentences(hits)
            reason = policy.before_generation(
                q.question, hits, assistant.settings, assistant.retriever.lexical.stem
            )
            quotes = quotes_for(
                q.question, hits, assistant.embed, ctx_sources, limit=decide.EVIDENCE_SENTENCES
            )
            read = [s.text for s in decide.passages_read(quotes, ctx_sources, hits)]
            row = {
                "key": key,
                "qid": q.qid,
                "question": q.question,
                "declined": None if reason is None else str(reason.code),
                "evidence": read,
                "log_p_yes": None,
                "log_p_no": None,
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{pos + 1} {q.qid} {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        rows.append(
            {**row, "gold": q.answer, "pos": pos, "is_yes_no": decide.is_yes_no(q.question)}
        )
    rows.sort(key=lambda r: r["pos"])
    if shard == (1, 1):
        add_documents(rows, assistant, eval_root(settings, dataset), key, channel)
    return rows, dataset, llm.info.weights_hash


def gold_document_rows(folder: Path, settings: Settings) -> tuple[list[dict[str, Any]], Any]:
    """Per question, the decision's reading if retrieval cites the gold document: its whole
    text from the library, as ``add_documents`` reads it, with each sentence's match to the
    question. No retrieval and no LLM (minutes, not hours, on shared cores); the checks
    before the decision are not run (``declined`` is None). Cached like the rows."""
    from assistant import decide
    from core.library.index import Index
    from evaluation.data import build_library, eval_root, load_dataset

    dataset = load_dataset(folder, settings)
    library = build_library(dataset, settings, progress=False)
    index = Index(library.settings)
    index.warm_up()

    def _embed(texts: Any) -> Any:
        return index.embedder.embed(list(texts))

    clinrag_id = {corpus: ours for ours, corpus in library.doc_map.items()}
    path = eval_root(settings, dataset) / "yes_no_gold_documents.jsonl"
    cached = _read_rows(path)
    rows = []
    for pos, q in enumerate(dataset.questions):
        row = cached.get(q.qid)
        if row is None or row.get("question") != q.question:
            doc = clinrag_id.get(q.gold[0], q.gold[0])
            document = decide.whole_document(index.manifest.chunks([doc]))
            sims = decide.similarities(_embed, q.question, document)
            row = {
                "qid": q.qid,
                "question": q.question,
                "declined": None,
                "evidence": document,
                "document": document,
                "document_similarity": sims,
                "log_p_yes": None,
                "log_p_no": None,
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        rows.append(
            {**row, "gold": q.answer, "pos": pos, "is_yes_no": decide.is_yes_no(q.question)}
        )
    return rows, dataset


def add_documents(
    rows: list[dict[str, Any]], assistant: Any, root: Path, key: str, channel: bool
) -> None:
    """Each row's ``document``: the whole cited document as the answer reads it (the sentences
    of all its chunks, from the library), with each sentence's match to the question, and
    with ``channel`` the model's channel scores on it. Cached beside the rows."""
    from assistant import decide
    from core.text import split_sentences

    path = root / "yes_no_documents.jsonl"
    cached = {
        qid: row
        for qid, row in _read_rows(path, key).items()
        if row["log_p_yes"] is not None or not channel
    }
    chunks = assistant.retriever.index.manifest.chunks()
    by_doc: dict[str, list[Any]] = {}
    owner: dict[str, str] = {}  # sentence -> the document it was read from
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
        for text in split_sentences(c.text):
            owner.setdefault(text, c.doc_id)
    llm = assistant.llm
    for r in rows:
        got = cached.get(r["qid"])
        if got is None:
            # the evidence is the cited document's retrieved sentences: its first one names it
            doc = owner.get(r["evidence"][0]) if r["evidence"] else None
            document = decide.whole_document(by_doc[doc]) if doc else []
            sims = decide.similarities(assistant.embed, r["question"], document) if doc else []
            scores = None
            if document and channel and isinstance(llm, LogProbScorer):
                scores = decide.score(llm, r["question"], document)
            got = {
                "key": key,
                "qid": r["qid"],
                "doc_id": doc,
                "document": document,
                "document_similarity": sims,
                "log_p_yes": None if scores is None else scores.yes,
                "log_p_no": None if scores is None else scores.no,
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(got) + "\n")
        r.update(
            document=got["document"],
            document_similarity=got["document_similarity"],
            log_p_yes=got["log_p_yes"],
            log_p_no=got["log_p_no"],
        )


def feature_matrix(rows: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray:
    from assistant import decide

    out = []
    for r in rows:
        f: dict[str, float] = {}
        if r["log_p_yes"] is not None:
            f["shift"] = r["log_p_yes"] - r["log_p_no"]
        # what the answer reads: the whole cited document (``add_documents``)
        f.update(decide.cues(r["question"], r["document"], r["document_similarity"]))
        out.append([f[n] for n in names])
    return np.asarray(out, dtype=float)


def fit(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression on standardised features (``c``: inverse
    strength); coefficients back on the raw scale."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    model = LogisticRegression(C=c).fit((x - mean) / std, y)
    coef = model.coef_[0] / std
    return coef, float(model.intercept_[0] - (coef * mean).sum())


def predict(x: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    return np.where(x @ coef + intercept > 0, "yes", "no")


def accuracy(rows: list[dict[str, Any]], pred: np.ndarray) -> float:
    """Against the three-way gold; a declined or undetected question counts as wrong."""
    ok = [
        r["declined"] is None and r["is_yes_no"] and p == r["gold"]
        for r, p in zip(rows, pred, strict=True)
    ]
    return float(np.mean(ok))


def _trainable(rows: list[dict[str, Any]]) -> list[int]:
    return [i for i, r in enumerate(rows) if r["gold"] in ("yes", "no") and r["evidence"]]


def cross_validated(
    rows: list[dict[str, Any]], x: np.ndarray, c: float, seed: int = 0
) -> np.ndarray:
    """Each question predicted by the model fitted on the other nine folds."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    pred = np.empty(len(rows), dtype=object)
    for k in range(FOLDS):
        held = set(order[k::FOLDS].tolist())
        train = [i for i in _trainable(rows) if i not in held]
        coef, b = fit(x[train], np.array([rows[i]["gold"] == "yes" for i in train]), c)
        ids = sorted(held)
        pred[ids] = predict(x[ids], coef, b)
    return pred


def cv_accuracy(rows: list[dict[str, Any]], x: np.ndarray, c: float) -> float:
    """10-fold cross-validated accuracy, the mean of ``REPEATS`` seeded splits."""
    return float(np.mean([accuracy(rows, cross_validated(rows, x, c, s)) for s in range(REPEATS)]))


def choose_c(rows: list[dict[str, Any]], x: np.ndarray) -> float:
    """The L2 strength with the best cross-validated accuracy on these rows (the dev half)."""
    return max(C_GRID, key=lambda c: (cv_accuracy(rows, x, c), -c))


def evaluate(rows: list[dict[str, Any]], channel: bool) -> dict[str, dict[str, float]]:
    """Per feature set: C chosen on the dev half, dev in-sample and cross-validated, the test
    half held out (fitted on dev), and 10-fold cross-validation over all rows."""
    dev = [r for r in rows if r["pos"] % 2 == 0]
    test = [r for r in rows if r["pos"] % 2 == 1]
    out: dict[str, dict[str, float]] = {}
    for name, names in FEATURE_SETS.items():
        if "shift" in names and not channel:
            continue
        xd = feature_matrix(dev, names)
        c = choose_c(dev, xd)
        train = _trainable(dev)
        coef, b = fit(xd[train], np.array([dev[i]["gold"] == "yes" for i in train]), c)
        out[name] = {
            "C": c,
            "dev in-sample": accuracy(dev, predict(xd, coef, b)),
            "dev 10-fold CV": cv_accuracy(dev, xd, c),
        }
        if test:
            xt, xa = feature_matrix(test, names), feature_matrix(rows, names)
            out[name]["test held out"] = accuracy(test, predict(xt, coef, b))
            out[name][f"all {len(rows)}, 10-fold CV"] = cv_accuracy(rows, xa, c)
    for label, part in (("dev", dev), ("test", test), ("all", rows)):
        if not part:
            continue
        out.setdefault("always yes", {})[label] = accuracy(part, np.array(["yes"] * len(part)))
    return out


def best_text_set(results: dict[str, dict[str, float]]) -> str:
    """The feature set to ship: the best dev cross-validated accuracy among those that need
    no log-probabilities (any backend can then decide); the test half plays no part."""
    text_only = [n for n in results if n in FEATURE_SETS and "shift" not in FEATURE_SETS[n]]
    return max(text_only, key=lambda n: results[n]["dev 10-fold CV"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/eval/pubmedqa"))
    parser.add_argument("--write", action="store_true", help="write assistant/decide_weights.json")
    parser.add_argument(
        "--dev-only", action="store_true", help="score only the dev half (enough to fit)"
    )
    parser.add_argument(
        "--test-only",
        action="store_true",
        help="only compute the test half's rows (to run beside --dev-only); prints nothing",
    )
    parser.add_argument(
        "--gold-documents",
        action="store_true",
        help="read each question's gold document instead of retrieving (retrieval assumed "
        "right; no checks, no LLM): fast, and what --write fits on when given",
    )
    parser.add_argument(
        "--shard",
        default="1/1",
        help="K/N: compute only every N-th row from the K-th (run K=1..N side by side, then "
        "once without it to fit); prints nothing",
    )
    parser.add_argument(
        "--channel",
        action="store_true",
        help="also score the evidence with the packaged model (channel score; slow: about "
        "10 s per question on 2 shared CPU cores) and compare the feature sets with it",
    )
    args = parser.parse_args(argv)
    apply_offline_environment()
    from assistant import decide
    from core.config import load_settings

    settings = load_settings()
    if args.gold_documents:
        rows, dataset = gold_document_rows(args.folder, settings)
        model_hash = ""
    else:
        rows, dataset, model_hash = compute_rows(
            args.folder,
            settings,
            dev_only=args.dev_only,
            test_only=args.test_only,
            channel=args.channel,
            shard=(int(args.shard.split("/")[0]), int(args.shard.split("/")[1])),
        )
    if args.test_only or args.shard != "1/1":
        return 0
    results = evaluate(rows, args.channel)
    print(json.dumps(results, indent=2))
    declined = sum(r["declined"] is not None for r in rows)
    print(f"declined by the checks before the decision: {declined} of {len(rows)}")
    shipped = best_text_set(results)
    print(f"best dev cross-validated text feature set: {shipped}")
    if args.write:
        dev = [r for r in rows if r["pos"] % 2 == 0]
        names = FEATURE_SETS[shipped]
        train = _trainable(dev)
        x = feature_matrix(dev, names)
        c = results[shipped]["C"]
        coef, b = fit(x[train], np.array([dev[i]["gold"] == "yes" for i in train]), c)
        questions = (args.folder / "questions.jsonl").read_bytes()
        payload = {
            "description": "Logistic model of the yes/no decision (assistant/decide.py): "
            "log-odds(yes vs no) = intercept + sum(coef * feature).",
            "coef": {n: round(float(c), 6) for n, c in zip(names, coef, strict=True)},
            "intercept": round(b, 6),
            "model_weights_hash": model_hash if "shift" in names else "",
            "feature_set": shipped,
            "C": c,
            "fitted_on": f"PubMedQA dev half: even file positions of questions.jsonl, gold yes "
            f"or no ({len(train)} questions)",
            "data": {
                "questions_sha256": hashlib.sha256(questions).hexdigest(),
                "corpus_sha256": dataset.corpus_sha256,
            },
            "command": "CLINRAG_HOME=H .venv/bin/python -m benchmarks.yes_no_fit "
            "../shared/eval/pubmedqa --write"
            + (" --gold-documents" if args.gold_documents else ""),
            "rows": "the gold document, whole (retrieval assumed right)"
            if args.gold_documents
            else "the retrieved cited document, whole",
            "accuracy": {k: round(v, 4) for k, v in results[shipped].items() if k != "C"},
            "always_yes": {k: round(v, 4) for k, v in results["always yes"].items()},
        }
        out = Path(decide.__file__).with_name(decide.WEIGHTS_FILE)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
