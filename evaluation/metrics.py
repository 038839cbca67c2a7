"""Evaluation metrics as pure functions over plain values (no model, no I/O).

Retrieval is scored at document level: retrieved chunks are reduced to their documents in order
of first appearance. Every mean is over the questions a metric applies to; a metric with no
such question is ``None`` (never a misleading 0).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DECISIONS = ("yes", "no", "maybe")
ABSTAINED = "abstained"


# --- retrieval ---------------------------------------------------------------------------------


def dedupe_docs(doc_ids: Iterable[str], depth: int | None = None) -> list[str]:
    """Document ids in order of first appearance (one per retrieved chunk in, one per doc out)."""
    out: list[str] = []
    seen: set[str] = set()
    for d in doc_ids:
        if d not in seen:
            seen.add(d)
            out.append(d)
            if depth is not None and len(out) >= depth:
                break
    return out


def recall_at_k(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    """Share of the gold documents found in the first ``k`` of a deduplicated ranking."""
    gold = set(gold)
    if not gold:
        raise ValueError("recall needs at least one gold document")
    return len(gold & set(ranked[:k])) / len(gold)


def reciprocal_rank(ranked: Sequence[str], gold: Iterable[str]) -> float:
    """1 / rank of the first gold document (0 when none is retrieved)."""
    gold = set(gold)
    for i, d in enumerate(ranked, start=1):
        if d in gold:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: Sequence[str], gold: Iterable[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: sum 1/log2(rank+1) over gold hits / the ideal ordering's sum."""
    gold = set(gold)
    if not gold:
        raise ValueError("nDCG needs at least one gold document")
    dcg = sum(1.0 / math.log2(i + 1) for i, d in enumerate(ranked[:k], start=1) if d in gold)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(gold), k) + 1))
    return dcg / ideal


def retrieval_metrics(
    rankings: Sequence[Sequence[str]],
    golds: Sequence[Iterable[str]],
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int = 10,
) -> dict[str, Any]:
    """Mean recall@k, MRR and nDCG@k over the questions that have gold documents.

    ``rankings[i]`` is the chunk-level (or doc-level) list of doc ids for question i; it is
    deduplicated here.
    """
    if len(rankings) != len(golds):
        raise ValueError("one ranking per question")
    rows = [(dedupe_docs(r), set(g)) for r, g in zip(rankings, golds, strict=True)]
    rows = [(r, g) for r, g in rows if g]
    out: dict[str, Any] = {"n": len(rows)}
    for k in ks:
        out[f"recall@{k}"] = _mean([recall_at_k(r, g, k) for r, g in rows])
    out["mrr"] = _mean([reciprocal_rank(r, g) for r, g in rows])
    out[f"ndcg@{ndcg_k}"] = _mean([ndcg_at_k(r, g, ndcg_k) for r, g in rows])
    return out


# --- answers: yes / no / maybe ------------------------------------------------------------------

_CITATION = re.compile(r"\[\d+(?:\s*[,;-]\s*\d+)*\]")
_NOT_A_REPLY = r"(?!\s+(?:longer|more|less|one|other|doubt|matter)\b)"
# "Yes, ...", "**No.**", "Based on the sources, yes", "The answer is no": a stated reply
_LEADING = re.compile(
    r"^[\s\"'*_(>-]*(?:[^.?!\n]{0,60}?(?:,|:|\banswer is)\s*[\"'*_]*)?(yes|no)\b" + _NOT_A_REPLY,
    re.I,
)
_HEDGE = re.compile(
    r"\b(maybe|may or may not|unclear|uncertain|inconclusive|not clear|not known|unknown|"
    r"insufficient (?:evidence|data)|remains? to be (?:determined|established|seen)|"
    r"(?:is|are) debated|controversial|mixed (?:results|evidence))\b",
    re.I,
)
_NEGATION = re.compile(
    r"\b(not|no evidence|no significant|no difference|no association|no effect|no benefit|"
    r"cannot|can't|doesn't|don't|didn't|isn't|aren't|wasn't|weren't|won't|never|neither|"
    r"nor|failed to|did not|does not|do not|unlikely)\b",
    re.I,
)


def parse_decision(text: str) -> str:
    """yes / no / maybe from an answer's wording.

    A leading "yes" or "no" decides (also after a short lead-in: "Based on the sources, yes",
    "The answer is no"); else a hedge ("unclear", "insufficient evidence", ...)
    gives maybe; else a negation ("not", "no evidence", "did not", ...) gives no; else maybe
    (the text does not commit).
    """
    clean = _CITATION.sub("", text or "").strip()
    lead = _LEADING.match(clean)
    if lead:
        return lead.group(1).lower()
    if _HEDGE.search(clean):
        return "maybe"
    if _NEGATION.search(clean):
        return "no"
    return "maybe"


def decision_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str] = DECISIONS
) -> dict[str, Any]:
    """Accuracy and a confusion matrix. ``predicted`` holds labels or ``"abstained"``.

    ``accuracy`` counts an abstention as wrong; ``accuracy_answered`` leaves abstentions out.
    The matrix is ``confusion[gold][predicted]`` with an extra ``abstained`` column.
    """
    if len(gold) != len(predicted):
        raise ValueError("one prediction per gold label")
    columns = [*labels, ABSTAINED]
    confusion = {g: dict.fromkeys(columns, 0) for g in labels}
    for g, p in zip(gold, predicted, strict=True):
        if g not in confusion:
            raise ValueError(f"gold label {g!r} is not one of {list(labels)}")
        if p not in confusion[g]:
            raise ValueError(f"prediction {p!r} is not one of {columns}")
        confusion[g][p] += 1
    n = len(gold)
    correct = sum(confusion[g][g] for g in labels)
    answered = n - sum(confusion[g][ABSTAINED] for g in labels)
    return {
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_answered": correct / answered if answered else None,
        "answered": answered,
        "labels": list(labels),
        "confusion": confusion,
    }


# --- answers: free text -------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation, " "))


def tokens(text: str) -> list[str]:
    """SQuAD-style normalisation: citation marks, case, punctuation and articles removed."""
    text = _CITATION.sub(" ", text or "").lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (bag of tokens, SQuAD style)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalised tokens: LCS precision and recall, harmonic mean."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    if len(predictions) != len(references):
        raise ValueError("one prediction per reference")
    pairs = list(zip(predictions, references, strict=True))
    return {
        "n": len(pairs),
        "token_f1": _mean([token_f1(p, r) for p, r in pairs]),
        "rouge_l": _mean([rouge_l(p, r) for p, r in pairs]),
    }


# --- citations and abstention -------------------------------------------------------------------


def citation_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Citation quality and abstention over per-question records.

    Each record has ``gold`` (doc ids; empty = unanswerable), ``abstained`` (bool),
    ``cited`` (the doc id of every cited chunk), ``sentences`` and ``unsupported`` (counts of
    the answer's sentences shown to the reader, and of those that failed verification).

    - precision: cited chunks from a gold document / all cited chunks (micro, every question);
    - recall: answerable questions with a gold document cited / answerable questions;
    - unsupported_rate: unsupported sentences / sentences, over answers that were given;
    - abstention_rate: abstained / unanswerable questions;
    - false_abstention_rate: abstained / answerable questions.
    """
    cited = [(d, set(r["gold"])) for r in records for d in r["cited"]]
    answerable = [r for r in records if r["gold"]]
    unanswerable = [r for r in records if not r["gold"]]
    given = [r for r in records if not r["abstained"]]
    sentences = sum(int(r["sentences"]) for r in given)
    return {
        "n": len(records),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "citations": len(cited),
        "precision": sum(d in g for d, g in cited) / len(cited) if cited else None,
        "recall": (
            sum(bool(set(r["cited"]) & set(r["gold"])) for r in answerable) / len(answerable)
            if answerable
            else None
        ),
        "unsupported_rate": (
            sum(int(r["unsupported"]) for r in given) / sentences if sentences else None
        ),
        "abstention_rate": (
            sum(bool(r["abstained"]) for r in unanswerable) / len(unanswerable)
            if unanswerable
            else None
        ),
        "false_abstention_rate": (
            sum(bool(r["abstained"]) for r in answerable) / len(answerable) if answerable else None
        ),
    }


# --- question sets: key facts, cited documents, verification -----------------------------------

_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
_TEENS = " fifteen sixteen seventeen eighteen nineteen"
_TEN_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {w: i for i, w in enumerate((_UNITS + _TEENS).split())}
_TENS = {w: 10 * i for i, w in enumerate(_TEN_WORDS.split(), 2)}
_SYMBOLS = {"\u2265": " at least ", "\u2264": " at most ", "%": " % ", "/": " / "}
_FACT_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+|[%/]")


def _canonical_number(tok: str) -> str:
    # "7.0" and "7" are one value; "4.5" and "45" are not
    return tok.rstrip("0").rstrip(".") if "." in tok else tok.lstrip("0") or "0"


def normalise_fact(text: str) -> list[str]:
    """Tokens for key-fact matching: the same for "forty-five" and "45", "10-20" and "10 to 20".

    Case, accents, citation marks, hyphens and punctuation go; "percent" is "%"; number words
    up to ninety-nine become digits; decimals keep their point (so "4.5" never reads as "45")
    and lose trailing zeros; a range ("10-20", "between 10 and 20") reads "10 to 20".
    """
    import unicodedata

    text = _CITATION.sub(" ", text or "")
    for sym, repl in _SYMBOLS.items():
        text = text.replace(sym, repl)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,500 mg
    text = re.sub(r"\bper ?cent\b", " % ", text)
    raw = _FACT_TOKEN.findall(text)
    out: list[str] = []
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok in _TENS:
            value = _TENS[tok]
            if (
                i + 1 < len(raw)
                and raw[i + 1] in _NUMBER_WORDS
                and 0 < _NUMBER_WORDS[raw[i + 1]] < 10
            ):
                value += _NUMBER_WORDS[raw[i + 1]]
                i += 1
            out.append(str(value))
        elif tok in _NUMBER_WORDS:
            out.append(str(_NUMBER_WORDS[tok]))
        elif tok[0].isdigit():
            out.append(_canonical_number(tok))
        else:
            out.append(tok)
        i += 1
    ranged: list[str] = []
    for j, tok in enumerate(out):
        if (
            tok == "between"
            and j + 3 < len(out)
            and out[j + 2] == "and"
            and _is_num(out[j + 1])
            and _is_num(out[j + 3])
        ):
            continue  # "between 35 and 70" -> "35 to 70"
        if tok == "and" and j >= 2 and out[j - 2] == "between" and _is_num(out[j - 1]):
            ranged.append("to")
            continue
        if _is_num(tok) and ranged and _is_num(ranged[-1]):
            ranged.append("to")  # "10-20" lost its hyphen above
        ranged.append(tok)
    return ranged


def _is_num(tok: str) -> bool:
    return tok[:1].isdigit()


def _token_matches(phrase_tok: str, tok: str) -> bool:
    # a plural of a word in the phrasing counts ("ACE inhibitor" finds "ACE inhibitors")
    if phrase_tok == tok:
        return True
    return (
        len(phrase_tok) >= 3
        and phrase_tok.isalpha()
        and tok in (phrase_tok + "s", phrase_tok + "es")
    )


def phrase_found(phrase: str, text: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole tokens, after :func:`normalise_fact`."""
    want, have = normalise_fact(phrase), normalise_fact(text)
    if not want:
        return False
    n = len(want)
    return any(
        all(_token_matches(w, h) for w, h in zip(want, have[i : i + n], strict=True))
        for i in range(len(have) - n + 1)
    )


def key_fact_found(text: str, terms: Sequence[Sequence[str]], minimum: int | None = None) -> bool:
    """Whether ``text`` holds the key fact: ``minimum`` (default all) of ``terms`` present,
    a term being present when any of its phrasings is.

    The match is on whole normalised tokens, so "45" is not found in "145" or "4.5", and a
    phrasing says exactly what must be read: it does not see negation ("do not screen at 45"
    still holds "45"), which is why the set pairs it with the citation and yes/no figures.
    """
    if not terms:
        return False
    hits = sum(any(phrase_found(p, text) for p in term) for term in terms)
    return hits >= (len(terms) if minimum is None else minimum)


def first_sentence(text: str) -> str:
    """The first sentence of an answer's text (the project's clinical sentence splitter)."""
    from core.text import split_sentences

    sentences = split_sentences(text or "")
    return sentences[0] if sentences else ""


def key_fact_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key fact in the first sentence and anywhere, over answerable questions with a key fact.

    Each row has ``type``, ``abstained`` and booleans ``first`` and ``anywhere`` (an
    abstention holds neither). Rates over all such questions, and per question type.
    """

    def rates(rs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "n": len(rs),
            "in_first_sentence": _mean([float(r["first"]) for r in rs]),
            "anywhere": _mean([float(r["anywhere"]) for r in rs]),
        }

    out = rates(rows)
    types = sorted({str(r.get("type")) for r in rows if r.get("type")})
    if len(types) > 1:
        out["by_type"] = {t: rates([r for r in rows if r.get("type") == t]) for t in types}
    return out


def document_citation_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Citation precision by document, over the answers given (abstentions left out).

    Each row has ``gold`` (expected doc ids; empty for a question the library cannot answer,
    where every citation is wrong) and ``cited`` (doc ids, repeats counted once).
    """
    answered = [(set(r["cited"]), set(r["gold"])) for r in rows]
    cited = sum(len(c) for c, _ in answered)
    answerable = [(c, g) for c, g in answered if g]
    return {
        "answers": len(answered),
        "documents_cited": cited,
        "precision": sum(len(c & g) for c, g in answered) / cited if cited else None,
        "answers_citing_expected": _mean([float(bool(c & g)) for c, g in answerable]),
    }


def verification_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sentences refused by verification, over the answers given.

    Each row has ``sentences`` (shown to the reader), ``unsupported`` (of those, marked not
    supported) and ``removed`` (drafted, refused and withheld). The unsupported-sentence
    rate is (removed + shown unsupported) / (shown + removed); ``shown_unsupported`` counts
    sentences a reader sees although verification refused them (target 0).
    """
    shown = sum(int(r["sentences"]) for r in rows)
    removed = sum(int(r.get("removed") or 0) for r in rows)
    bad_shown = sum(int(r["unsupported"]) for r in rows)
    drafted = shown + removed
    return {
        "answers": len(rows),
        "sentences_drafted": drafted,
        "unsupported_rate": (removed + bad_shown) / drafted if drafted else None,
        "removed": removed,
        "shown_unsupported": bad_shown,
        "answers_showing_unsupported": sum(int(r["unsupported"]) > 0 for r in rows),
    }


def yes_no_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Yes/no accuracy: a prediction is yes, no, maybe (uncertain) or ``abstained``."""
    if len(gold) != len(predicted):
        raise ValueError("one prediction per gold label")
    return {
        "n": len(gold),
        "accuracy": _mean([float(g == p) for g, p in zip(gold, predicted, strict=True)]),
        "predicted": dict(Counter(predicted)),
    }


# --- attribution and latency --------------------------------------------------------------------


def attribution_metrics(
    per_question: Sequence[Mapping[str, Mapping[str, float] | None]],
) -> dict[str, dict[str, Any]]:
    """Per method: mean top-k removal drop, mean random drop, their difference, win rate.

    ``per_question[i][method]`` is ``{"top_k_drop": x, "random_drop": y}`` or None (no
    attribution for that answer, e.g. an abstention).
    """
    methods = sorted({m for q in per_question for m in q})
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for q in per_question if (r := q.get(m)) is not None]
        top = [float(r["top_k_drop"]) for r in rows]
        rand = [float(r["random_drop"]) for r in rows]
        out[m] = {
            "n": len(rows),
            "top_k_drop": _mean(top),
            "random_drop": _mean(rand),
            "difference": _mean([t - r for t, r in zip(top, rand, strict=True)]),
            "win_rate": _mean([float(t > r) for t, r in zip(top, rand, strict=True)]),
        }
    return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError("p is a percentage")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_metrics(timings: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """p50 / p95 (seconds) per stage over the questions that ran the stage."""
    stages: list[str] = []
    for t in timings:
        stages.extend(s for s in t if s not in stages)
    out: dict[str, dict[str, Any]] = {}
    for stage in stages:
        xs = [float(t[stage]) for t in timings if stage in t]
        out[stage] = {"n": len(xs), "p50": percentile(xs, 50), "p95": percentile(xs, 95)}
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
