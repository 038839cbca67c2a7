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

from core.backends.base import LogProbScorer
from core.config import Settings, answer_settings, apply_offline_environment

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "channel only": ("shift",),
    "cues only (shipped)": ("negative", "positive", "doubt"),
    "channel + cues": ("shift", "negative", "positive", "doubt"),
}
SHIPPED = "cues only (shipped)"
FOLDS = 10
C = 1.0  # sklearn's default L2 strength; not tuned


def _cache_key(settings: Settings, model_hash: str) -> str:
    from assistant import decide

    relevant = {k: v for k, v in answer_settings(settings).items() if not k.startswith("yes_no")}
    parts = [relevant, decide.PROMPT_SHA256, model_hash, 2]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compute_rows(
    folder: Path, settings: Settings, *, dev_only: bool = False, channel: bool = False
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
    cached: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("key") == key and (row["log_p_yes"] is not None or not channel):
                cached[row["qid"]] = row
    rows = []
    t0 = time.perf_counter()
    # the dev half first: the fit needs only it
    order = [*range(0, len(dataset.questions), 2)]
    if not dev_only:
        order += range(1, len(dataset.questions), 2)
    for pos in order:
        q = dataset.questions[pos]
        row = cached.get(q.qid)
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
            scores = None
            if read and channel and isinstance(llm, LogProbScorer):
                scores = decide.score(llm, q.question, read)
            row = {
                "key": key,
                "qid": q.qid,
                "question": q.question,
                "declined": None if reason is None else str(reason.code),
                "evidence": read,
                "log_p_yes": None if scores is None else scores.yes,
                "log_p_no": None if scores is None else scores.no,
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{pos + 1} {q.qid} {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        rows.append(
            {**row, "gold": q.answer, "pos": pos, "is_yes_no": decide.is_yes_no(q.question)}
        )
    rows.sort(key=lambda r: r["pos"])
    return rows, dataset, llm.info.weights_hash


def feature_matrix(rows: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray:
    from assistant import decide

    out = []
    for r in rows:
        f: dict[str, float] = {}
        if r["log_p_yes"] is not None:
            f["shift"] = r["log_p_yes"] - r["log_p_no"]
        f.update(decide.cues(r["question"], r["evidence"]))
        out.append([f[n] for n in names])
    return np.asarray(out, dtype=float)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression on standardised features; coefficients back on the raw scale."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    model = LogisticRegression(C=C).fit((x - mean) / std, y)
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


def cross_validated(rows: list[dict[str, Any]], x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each question predicted by the model fitted on the other nine folds."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    pred = np.empty(len(rows), dtype=object)
    for k in range(FOLDS):
        held = order[k::FOLDS]
        train = [i for i in _trainable(rows) if i not in set(held)]
        coef, b = fit(x[train], np.array([rows[i]["gold"] == "yes" for i in train]))
        pred[held] = predict(x[held], coef, b)
    return pred


def evaluate(rows: list[dict[str, Any]], channel: bool) -> dict[str, dict[str, float]]:
    dev = [r for r in rows if r["pos"] % 2 == 0]
    test = [r for r in rows if r["pos"] % 2 == 1]
    out: dict[str, dict[str, float]] = {}
    for name, names in FEATURE_SETS.items():
        if "shift" in names and not channel:
            continue
        xd = feature_matrix(dev, names)
        train = _trainable(dev)
        coef, b = fit(xd[train], np.array([dev[i]["gold"] == "yes" for i in train]))
        out[name] = {
            "dev in-sample": accuracy(dev, predict(xd, coef, b)),
            "dev 10-fold CV": accuracy(dev, cross_validated(dev, xd)),
        }
        if test:
            xt, xa = feature_matrix(test, names), feature_matrix(rows, names)
            out[name]["test held out"] = accuracy(test, predict(xt, coef, b))
            out[name][f"all {len(rows)}, 10-fold CV"] = accuracy(rows, cross_validated(rows, xa))
    for label, part in (("dev", dev), ("test", test), ("all", rows)):
        if not part:
            continue
        out.setdefault("always yes", {})[label] = accuracy(part, np.array(["yes"] * len(part)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/eval/pubmedqa"))
    parser.add_argument("--write", action="store_true", help="write assistant/decide_weights.json")
    parser.add_argument(
        "--dev-only", action="store_true", help="score only the dev half (enough to fit)"
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
    rows, dataset, model_hash = compute_rows(
        args.folder, settings, dev_only=args.dev_only, channel=args.channel
    )
    results = evaluate(rows, args.channel)
    print(json.dumps(results, indent=2))
    declined = sum(r["declined"] is not None for r in rows)
    print(f"declined by the checks before the decision: {declined} of {len(rows)}")
    if args.write:
        dev = [r for r in rows if r["pos"] % 2 == 0]
        names = FEATURE_SETS[SHIPPED]
        train = _trainable(dev)
        x = feature_matrix(dev, names)
        coef, b = fit(x[train], np.array([dev[i]["gold"] == "yes" for i in train]))
        questions = (args.folder / "questions.jsonl").read_bytes()
        payload = {
            "description": "Logistic model of the yes/no decision (assistant/decide.py): "
            "log-odds(yes vs no) = intercept + sum(coef * feature).",
            "coef": {n: round(float(c), 6) for n, c in zip(names, coef, strict=True)},
            "intercept": round(b, 6),
            "model_weights_hash": model_hash if "shift" in names else "",
            "fitted_on": f"PubMedQA dev half: even file positions of questions.jsonl, gold yes "
            f"or no ({len(train)} questions)",
            "data": {
                "questions_sha256": hashlib.sha256(questions).hexdigest(),
                "corpus_sha256": dataset.corpus_sha256,
            },
            "command": "CLINRAG_HOME=H .venv/bin/python -m benchmarks.yes_no_fit "
            "../shared/eval/pubmedqa --write",
            "accuracy": {k: round(v, 4) for k, v in results[SHIPPED].items()},
            "always_yes": {k: round(v, 4) for k, v in results["always yes"].items()},
        }
        out = Path(decide.__file__).with_name(decide.WEIGHTS_FILE)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
