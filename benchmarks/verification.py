"""Verification: does "supported" mean the evidence says it? Old rule and new, in one run.

    .venv/bin/python -m benchmarks.verification [--json]

Data: evaluation/sets/entailment_pairs.jsonl, sentence/evidence pairs written by us from the
guideline summaries in data_samples: correct paraphrases (should be supported) and minimal
corruptions of one kind each (negation, quantifier, number, unit, age, interval, drug,
population, added claim; should not be). ``split`` says which part was written before the
rules were finished (dev) and which after (heldout). Each pair is decided as the pipeline
decides: its evidence is one retrieved passage under its guideline's title, and the sentence
goes through ``assistant.cite.align`` with the packaged embedder and the default
``support_threshold``.

Two rules, same embeddings:

  old  similarity only: the best source sentence scores at least the threshold (0.5 x cosine
       + 0.5 x content-word overlap) and every number in the sentence appears in the best
       three (the rule before assistant/verify.py, reproduced here for comparison)
  new  ``align`` as shipped: similarity, then the entailment rules of assistant/verify.py

"Supported" is the positive class: precision = share of accepted sentences that are correct
paraphrases, recall = share of correct paraphrases accepted.

When ../shared/eval/expertqa/medicine.jsonl exists, both rules also judge ExpertQA's medicine
claims against the evidence passages the answer cited, and are compared with the experts'
support labels (Complete = supported; Partial, Incomplete, Missing = not); claims without
evidence or with another label are left out. Skipped cleanly when the file is absent.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import EVAL_DIR, REPO, log, table
from core.config import apply_offline_environment

PAIRS = REPO / "evaluation" / "sets" / "entailment_pairs.jsonl"
EXPERTQA = EVAL_DIR / "expertqa" / "medicine.jsonl"
Embed = Callable[[Sequence[str]], np.ndarray]


def load_embed() -> Embed:
    """The packaged embedder; a text embedded once is looked up after (same vectors)."""
    from benchmarks.common import clinrag_settings
    from core import backends

    settings = clinrag_settings(Path(tempfile.mkdtemp(prefix="clinrag-verification-")))
    embedder = backends.create("embedder", settings.embedder, settings)
    embedder.warm_up()
    seen: dict[str, np.ndarray] = {}

    def embed(texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            seen.update(zip(new, embedder.embed(new), strict=True))
        return np.array([seen[t] for t in texts])

    return embed


def make_hits(passages: Sequence[tuple[str, str]]) -> list[Any]:
    from core.types import Chunk, Hit

    hits = []
    for i, (title, text) in enumerate(passages):
        chunk = Chunk(f"d{i}:1", f"d{i}", text, title, "", 1, 0, len(text), "sha", "d.md", "now")
        hits.append(Hit(chunk=chunk, score=0.03, dense_score=0.8))
    return hits


def new_rule(sentence: str, hits: list[Any], embed: Embed, threshold: float) -> bool:
    from assistant.cite import align

    aligned = align(sentence, hits, embed, threshold=threshold)
    return bool(aligned.sentences) and all(s.supported for s in aligned.sentences)


def old_rule(sentence: str, hits: list[Any], embed: Embed, threshold: float) -> bool:
    """The support rule before verification: similarity and numbers present, nothing else."""
    from assistant.cite import lexical_overlap, numbers_in, parse_markers, source_sentences
    from core.text import split_sentences

    sources = source_sentences(hits)
    texts = [parse_markers(s, len(hits))[0] for s in split_sentences(sentence)]
    texts = [t for t in texts if re.search(r"[A-Za-z0-9]", t)]
    if not texts or not sources:
        return False
    vectors = embed(texts + [s.text for s in sources])
    cos = vectors[: len(texts)] @ vectors[len(texts) :].T
    for i, text in enumerate(texts):
        lex = np.array([lexical_overlap(text, s.text) for s in sources])
        score = 0.5 * np.clip(cos[i], 0, 1) + 0.5 * lex
        best = [int(j) for j in np.argsort(-score)[:3] if score[j] >= threshold]
        found = set().union(*(numbers_in(sources[j].text) for j in best)) if best else set()
        if not best or numbers_in(text) - found:
            return False
    return True


RULES = {"old": old_rule, "new": new_rule}


def scores(labels: Sequence[bool], accepted: Sequence[bool]) -> dict[str, float | int]:
    tp = sum(a and y for a, y in zip(accepted, labels, strict=True))
    fp = sum(a and not y for a, y in zip(accepted, labels, strict=True))
    fn = sum(y and not a for a, y in zip(accepted, labels, strict=True))
    agree = sum(a == y for a, y in zip(accepted, labels, strict=True))
    return {
        "n": len(labels),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "agreement": agree / len(labels) if labels else float("nan"),
        "false_supported": fp,
    }


def run_pairs(embed: Embed, threshold: float) -> dict[str, Any]:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line]
    out: dict[str, Any] = {"pairs": len(rows)}
    for name, rule in RULES.items():
        log(f"[pairs] {name} rule over {len(rows)} pairs ...")
        accepted = [
            rule(r["sentence"], make_hits([(r["title"], r["evidence"])]), embed, threshold)
            for r in rows
        ]
        result: dict[str, Any] = {}
        for split in ("all", "dev", "heldout"):
            keep = [i for i, r in enumerate(rows) if split == "all" or r["split"] == split]
            result[split] = scores(
                [rows[i]["supported"] for i in keep], [accepted[i] for i in keep]
            )
        kinds: dict[str, list[int]] = {}
        for r, a in zip(rows, accepted, strict=True):
            counts = kinds.setdefault(r["kind"], [0, 0])
            counts[0] += a
            counts[1] += 1
        result["accepted_by_kind"] = kinds
        out[name] = result
    return out


def expertqa_claims() -> list[tuple[str, list[tuple[str, str]], bool]]:
    """(claim, [(title, passage)], expert says Complete) for every labelled, cited claim."""
    claims = []
    for line in EXPERTQA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for answer in row["answers"].values():
            for claim in answer.get("claims") or []:
                label = claim.get("support")
                if label not in ("Complete", "Partial", "Incomplete", "Missing"):
                    continue
                passages = []
                for ev in claim.get("evidence") or []:
                    # "[2] https://...\n\nTitle | Site text ...": drop the marker and address
                    text = re.sub(r"^\[\d+\]\s*\S*\s*", "", ev.strip()).strip()
                    if text:
                        passages.append(("", text))
                if passages:
                    claims.append((claim["claim_string"], passages, label == "Complete"))
    return claims


def run_expertqa(embed: Embed, threshold: float) -> dict[str, Any] | None:
    if not EXPERTQA.is_file():
        log(f"[expertqa] {EXPERTQA} is absent: skipped")
        return None
    claims = expertqa_claims()
    out: dict[str, Any] = {"claims": len(claims), "complete": sum(c[2] for c in claims)}
    for name, rule in RULES.items():
        log(f"[expertqa] {name} rule over {len(claims)} claims ...")
        accepted = [
            rule(text, make_hits(passages), embed, threshold) for text, passages, _ in claims
        ]
        out[name] = scores([c[2] for c in claims], accepted)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = parser.parse_args(argv)
    apply_offline_environment()
    from core.config import Settings

    threshold = float(Settings.model_fields["support_threshold"].default)
    embed = load_embed()
    report = {"threshold": threshold, **run_pairs(embed, threshold)}
    report["expertqa"] = run_expertqa(embed, threshold)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print(f"Entailment pairs ({report['pairs']}), 'supported' = positive class")
    rows = []
    for name in RULES:
        for split in ("all", "dev", "heldout"):
            s = report[name][split]
            rows.append([f"{name} / {split}", s["n"], s["precision"], s["recall"],
                         s["false_supported"]])  # fmt: skip
    print(table(["rule / part", "pairs", "precision", "recall", "corruptions accepted"], rows))
    print("\nAccepted as supported, by kind (accepted / pairs)")
    kinds = sorted(report["new"]["accepted_by_kind"], key=lambda k: (k != "paraphrase", k))

    def cell(rule: str, kind: str) -> str:
        accepted, total = report[rule]["accepted_by_kind"][kind]
        return f"{accepted} / {total}"

    print(table(["kind", *RULES], [[k, *(cell(n, k) for n in RULES)] for k in kinds]))
    eq = report["expertqa"]
    if eq:
        print(f"\nExpertQA medicine: {eq['claims']} cited claims, {eq['complete']} fully supported")
        print(
            table(
                ["rule", "agreement", "precision", "recall"],
                [[n, eq[n]["agreement"], eq[n]["precision"], eq[n]["recall"]] for n in RULES],
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
