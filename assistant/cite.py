"""Citations: parse [n] markers, align answer sentences to source sentences, pick key evidence.

An answer sentence's evidence is its best matches among the retrieved source sentences, by a
blend of embedding similarity and lexical overlap. Similarity only says the sentence is *about*
its evidence, so a sentence is supported only when, in addition, the rule-based entailment
check :func:`assistant.verify.problems` finds nothing the evidence does not say: no added or
dropped negation, no quantifier ("any", "all", "only") the evidence lacks, no changed number,
unit, age or interval, no new drug or population, no added claim. Every number in the sentence
must also appear in its evidence, and a sentence that only restates the question asserts
nothing. Each reason for refusing a sentence is kept in ``AnswerSentence.problems``.

Attribution never feeds back into this decision: what is marked supported is decided once, here,
from the text, and recorded (see :mod:`assistant.attribute`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from assistant import verify
from core import recommendations
from core.recommendations import Statement
from core.text import content_tokens, sentence_spans, split_sentences, tokens
from core.types import AnswerSentence, Citation, Evidence, Hit, Origin, SourceSentence

_MARKER = re.compile(r"\s*\[(\d+(?:\s*[,;-]\s*\d+)*)\]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass
class Alignment:
    sentences: list[AnswerSentence]
    citations: list[Citation]
    evidence: list[Evidence]
    similarity: np.ndarray  # (answer sentences, source sentences)


def parse_markers(sentence: str, n_sources: int) -> tuple[str, list[int], list[int]]:
    """Strip [n] markers. Returns (clean text, valid source numbers, invalid numbers)."""
    valid: list[int] = []
    invalid: list[int] = []
    for match in _MARKER.finditer(sentence):
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                numbers = list(range(lo, hi + 1)) if 0 < hi - lo < 10 else [lo, hi]
            else:
                numbers = [int(part)]
            for n in numbers:
                target = valid if 1 <= n <= n_sources else invalid
                if n not in target:
                    target.append(n)
    clean = _MARKER.sub("", sentence).strip()
    clean = re.sub(r"\s+([.,;:!?])", r"\1", clean)
    return clean, valid, invalid


def source_sentences(hits: Sequence[Hit]) -> list[SourceSentence]:
    out: list[SourceSentence] = []
    for n, hit in enumerate(hits, start=1):
        for text in split_sentences(hit.chunk.text):
            out.append(SourceSentence(index=len(out), n=n, chunk_id=hit.chunk.chunk_id, text=text))
    return out


def lexical_overlap(answer: str, source: str) -> float:
    """Share of the answer sentence's content words that the source sentence contains."""
    a = content_tokens(answer)
    if not a:
        return 0.0
    return len(a & content_tokens(source)) / len(a)


def numbers_in(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def align(
    answer: str,
    hits: Sequence[Hit],
    embed: Embed,
    *,
    threshold: float = 0.5,
    sources: list[SourceSentence] | None = None,
    max_evidence: int = 5,
    question: str | None = None,
) -> Alignment:
    """Tie every answer sentence to the source sentences that support it.

    A sentence is supported when some source sentence matches it (similarity at least
    ``threshold``) and its best matches entail it (:func:`assistant.verify.problems` is empty,
    every number appears in them, it does more than restate ``question``).
    """
    sources = sources if sources is not None else source_sentences(hits)
    raw = [answer[a:b] for a, b in sentence_spans(answer)]
    parsed = [parse_markers(s, len(hits)) for s in raw]
    parsed = [p for p in parsed if re.search(r"[A-Za-z0-9]", p[0])]
    if not parsed or not sources:
        return Alignment([], [], [], np.zeros((len(parsed), len(sources))))

    texts = [p[0] for p in parsed]
    vectors = embed(texts + [s.text for s in sources])
    cos = vectors[: len(texts)] @ vectors[len(texts) :].T
    lex = np.array([[lexical_overlap(t, s.text) for s in sources] for t in texts])
    similarity = 0.5 * np.clip(cos, 0, 1) + 0.5 * lex

    by_n: dict[int, list[int]] = {}
    for s in sources:
        by_n.setdefault(s.n, []).append(s.index)

    sentences: list[AnswerSentence] = []
    for i, (text, marked, _invalid) in enumerate(parsed):
        score = similarity[i]
        order = np.argsort(-score)
        support = float(score[order[0]])
        # The best match must pass the threshold; the next two, related more loosely, may hold
        # the part of the statement the best one leaves to its neighbours (its number, its drug).
        best = [int(j) for j in order[:3] if score[j] >= threshold * (1 if j == order[0] else 0.5)]
        best = best if support >= threshold else []
        if best:
            passages = {sources[j].n for j in best}
            context = [
                f"{hits[n - 1].chunk.title}. {hits[n - 1].chunk.section}" for n in sorted(passages)
            ]
            problems = _problems(text, [sources[j].text for j in best], embed, question, context)
        else:
            problems = [f"no source sentence matches it (best {support:.2f} < {threshold})"]
        supported = bool(best) and not problems
        aligned_n = [sources[j].n for j in best]
        # keep a model citation only when that source actually supports the sentence
        kept = [n for n in marked if any(score[j] >= threshold for j in by_n.get(n, []))]
        numbers = list(dict.fromkeys(kept + aligned_n[:1] if supported else kept))
        sentences.append(
            AnswerSentence(text, numbers, supported, round(support, 4), best, problems=problems)
        )

    cited = sorted({n for s in sentences for n in s.citations})
    citations = [_citation(hits[n - 1], n) for n in cited]
    evidence = _evidence(sentences, similarity, sources, hits, max_evidence)
    return Alignment(sentences, citations, evidence, similarity)


def _problems(
    text: str, evidence: list[str], embed: Embed, question: str | None, context: list[str]
) -> list[str]:
    """Why ``evidence`` does not support ``text`` (empty when it does)."""
    # verify also holds the number rule: every number must appear in the evidence, bound to
    # the same statement, with the same unit
    problems = verify.problems(text, evidence, embed, context)
    # a sentence that only restates the question asserts nothing the sources could support
    if question is not None and content_tokens(text) <= content_tokens(question):
        problems.append("restates the question")
    return problems


def numbered_citations(sentences: Sequence[AnswerSentence], hits: Sequence[Hit]) -> list[Citation]:
    """The citations of the sentences a reader is shown, in order of first appearance, each
    labelled with the number the reader sees (1, 2, 3 ...; ``n`` stays the source number)."""
    order = dict.fromkeys(n for s in sentences for n in s.citations if 1 <= n <= len(hits))
    return [replace(_citation(hits[n - 1], n), label=i) for i, n in enumerate(order, start=1)]


def _citation(hit: Hit, n: int) -> Citation:
    c = hit.chunk
    return Citation(
        n,
        c.doc_id,
        c.chunk_id,
        c.title,
        c.section,
        c.page,
        c.text,
        round(hit.score, 6),
        dict(c.metadata),
    )


def _evidence(
    sentences: list[AnswerSentence],
    similarity: np.ndarray,
    sources: list[SourceSentence],
    hits: Sequence[Hit],
    limit: int,
) -> list[Evidence]:
    # key evidence is what supports the sentences a reader may trust, from sources they cite
    ranked: dict[int, float] = {}
    for i, s in enumerate(sentences):
        for j in s.evidence:
            if s.supported and sources[j].n in s.citations:
                ranked[j] = max(ranked.get(j, 0.0), float(similarity[i, j]))
    out = []
    for j, score in sorted(ranked.items(), key=lambda kv: -kv[1])[:limit]:
        src = sources[j]
        c = hits[src.n - 1].chunk
        out.append(Evidence(src.n, src.text, c.doc_id, c.title, c.section, c.page, round(score, 4)))
    return out


@dataclass(frozen=True)
class Quote:
    """A passage that can be quoted: one source sentence, or a recommendation statement (with
    the list it introduces) as the guideline words it."""

    evidence: Evidence  # text as quoted; score: its own match to the question
    indices: tuple[int, ...]  # the SourceSentence indices it is made of
    recommendation: bool
    rank: float
    # its match to the question read under its passage's title ("Type 2 Diabetes ...:
    # Metformin is the usual first drug"), which names the subject the sentence leaves out
    titled: float = -1.0


# Ranking bonuses, chosen on data_samples/example_questions.json (key fact in the first quoted
# sentence): a recommendation statement leads when it is about as close to the question as
# the best sentence, and a statement that says what the question asks (an age, an interval,
# a grade) beats one that does not.
RECOMMENDATION_BONUS = 0.08
ASPECT_BONUS = 0.08
START_BONUS = 0.1
# A quote must read alone: a summary describing itself answers nothing, and a sentence that
# opens with "This" or "It" leans on one the reader was not shown.
META_PENALTY = 0.15
ANAPHORA_PENALTY = 0.1
# "Stop screening when any of these applies:" cut from its list (a PDF's list lost its
# bullets) says nothing: last, whatever its words share with the question.
LIST_OPENING_PENALTY = 0.5
# A statement for other ages than the question's ("Ages 21 to 29: cytology every 3 years" for
# a 19-year-old) answers about someone else: it must not lead when one for those ages exists,
# even when its words match the question better.
# Likewise one for the other sex ("Men aged 65 to 75..." for a woman), for people who have
# (never) smoked when the question's person never (has), or whose risk or smoking threshold
# leaves out the question's value ("7.5% to less than 10%" for a 12% risk), each trait it
# leaves out (`recommendations.Population`). Each trait it holds (stated ages, a threshold)
# lifts it by ASPECT_BONUS.
OTHER_POPULATION_PENALTY = 0.2
# Another document's sentence follows the lead only when it matches the question about as
# well: below that it is a neighbouring study or guideline on another subject ("Sixty TAVI
# patients were randomized..." under a question on enteroscopy). On PubMedQA's 500 questions
# such quotes fell a median 0.24 below the lead, the rare right ones 0.07 (docs/benchmarks.md).
# And only when its title or section names a subject word of the question: "Anyone who asks
# for a test should get one" (hepatitis C) matched "Should a 20-year-old have a Pap test?"
# within the margin, and a reader takes it for the cervical guideline's advice.
OTHER_DOCUMENT_MARGIN = 0.1
_ASKS_AGE = re.compile(
    r"\b(?:what|which|minimum|maximum|starting|stopping)\s+ages?\b|\bhow old\b|"
    # (a gestational age is the pregnancy's, not the person's: "at what gestational age
    # should an undelivered woman be offered delivery?" led with "women greater than 44")
    r"(?<!gestational\s)\bage\s+(?:to|at which|range|should)\b|"
    # "When should screening start?": for a screening or a treatment, when is an age
    r"\bwhen\b.*\b(?:start|starts|begin|begins|stop|stops|end|ends)\b",
    re.I,
)
_ASKS_WHO = re.compile(
    r"^\s*who\b|\bwhich\s+(?:adults|patients|people|women|men|children)\b|\beligible\b"
    # "the eligibility criteria" asks who; "used to estimate statin eligibility" does not
    r"|\beligibility\s+(?:criteria|requirements)\b",
    re.I,
)
_ASKS_INTERVAL = re.compile(
    r"\b(?:how often|interval|frequen\w*|every|repeat\w*|how many (?:years|months))\b", re.I
)
_ASKS_GRADE = re.compile(r"\b(?:grade|strength|level of evidence)\b", re.I)
_ASKS_DOSE = re.compile(r"\b(?:dose|doses|dosage|dosing|how much)\b", re.I)
# "What HbA1c cut-off confirms a diagnosis of diabetes?" quoted the HbA1c targets first: what
# defines a condition sits under a diagnosis heading or says "means" / "is defined as".
_ASKS_DIAGNOSIS = re.compile(r"\b(?:diagnos\w*|defines?|definition)\b", re.I)
_DIAGNOSTIC_SECTION = re.compile(r"\b(?:diagnos\w*|thresholds?|categories|definitions?)\b", re.I)
_DEFINES = re.compile(r"\b(?:means|is defined as|defines|diagnos\w*)\b", re.I)
# a heading that says the passage is about dosing ("Medication Options and Dosing"): its list
# items name the drug, not the question's words ("oral PrEP"), and lost to a follow-up line
_DOSING_SECTION = re.compile(r"\b(?:dos(?:e|es|ing|age)|regimens?)\b", re.I)
# a treatment goal is another aspect than what makes the diagnosis, however close its numbers
_GOAL = re.compile(r"\b(?:targets?|goals?)\b", re.I)
_ASKS_START = re.compile(r"\b(?:start|starts|begin|begins|initiate)\b", re.I)
_ASKS_DRUG = re.compile(
    r"\b(?:drugs?|medications?|medicines?|pharmacotherapy|pharmacologic\w*|first[- ]line)\b",
    re.I,
)
# A numbered category of a staging or stepping scheme: "stage 1", "step 3", "type 2",
# "class II". Passages for the neighbouring category share almost every word with the one
# asked about ("Stage 2 hypertension: systolic 140 or higher"), so similarity alone cannot
# tell them apart: the category named decides.
_CATEGORY_VALUE = r"(?:\d+[a-c]?|iv|v|i{1,3})"
# "stage 1", and lists: "steps 3 and 4" (SMART, which led for "What is step 1 asthma therapy?")
_CATEGORY = re.compile(
    rf"\b(stage|step|type|class|phase|tier|category)s?\s+"
    rf"({_CATEGORY_VALUE}(?:\s*(?:,|and|or)\s*{_CATEGORY_VALUE})*)\b",
    re.I,
)
_CATEGORY_SPLIT = re.compile(r"\s*(?:,|\band\b|\bor\b)\s*", re.I)
_NEGATIVE = re.compile(r"\b(?:not|no|never|insufficient)\b", re.I)
_META = re.compile(
    r"^\s*(?:this|the)\s+(?:is\s+an?\s+)?(?:short\s+)?(?:summary|document|page)\b|"
    r"\bsummar(?:y|izes|ises|ize)\s+(?:of\s+)?the\b",
    re.I,
)
# Whatever its verbs, a summary pointing at its source ("The original guideline document
# provides comprehensive information for the use of daily oral PrEP" led a PrEP question) or
# a labelled aside ("Note : This recommendation does not apply to children", "Rationale :
# Previously, ... was recommended" led) is not the advice: seen in the federal guideline
# summaries (../shared).
_ASIDE = re.compile(
    r"\boriginal guideline document\b|"
    r"^\s*(?:see|refer to)\s+(?:the\s+)?(?:original|appendix|appendices|tables?|figures?|"
    r"sections?|algorithms?|discussion|full|text)\b|"
    r"^\s*(?:note|rationale|comments?|discussion|remarks?)\s*:",
    re.I,
)
_ANAPHORA = re.compile(r"^\s*(?:this|these|that|those|it|they|such)\b", re.I)
# What an earlier version said ("The 2016 statement recommended biennial mammography for ages
# 50 to 74 ..." led for a 50-year-old woman, above the current grade B): history, not advice.
_EARLIER_VERSION = re.compile(
    r"\b(?:(?:19|20)\d{2}|previous|prior|earlier|former|older|original)\s+"
    r"(?:statement|recommendation|guideline|guidance|update|version|report)s?\s+"
    r"(?:had\s+)?(?:recommended|said|advised|suggested|called|left|kept|gave|was|were)\b",
    re.I,
)
HISTORY_PENALTY = 0.1
# A heading whose every word the question uses ("Screening Test" for "What screening test is
# used for AAA?", "When to Start Medication" for "What blood pressure threshold should prompt
# starting medication?") says its passage is the one asked about, while its sentences rarely
# repeat the subject ("Abdominal duplex ultrasonography is the test of choice" ranked below
# a grade D statement naming AAA twice). Two words at least: "Recommendation" alone is every
# guideline's heading. An aspect's size, not more: "Adequate Prior Screening" is made of the
# words of "Should a 70-year-old woman with adequate negative prior screening continue
# cervical cancer screening?", whose answer is the statement "...: stop screening (grade D)".
HEADING_BONUS = 0.1


def question_evidence(
    question: str, hits: Sequence[Hit], embed: Embed, sources: list[SourceSentence], limit: int = 3
) -> list[Evidence]:
    """The passages that best answer the question, best first (see :func:`quotes_for`)."""
    return [q.evidence for q in quotes_for(question, hits, embed, sources, limit)]


def quotes_for(
    question: str, hits: Sequence[Hit], embed: Embed, sources: list[SourceSentence], limit: int = 3
) -> list[Quote]:
    """What to quote for the question, best first: recommendation statements (from the chunk
    metadata ingest stored, or found in the text for older indexes) and single sentences,
    ranked by their match to the question alone and under their passage's title, with
    recommendations that state what the question asks lifted. The first retrieved
    document's best sentence leads unless another's ranks more than
    ``OTHER_DOCUMENT_MARGIN`` above it; passages of other documents than the one quoted
    first follow it only within that margin of its rank.

    When the ranking leaves out the sentence closest to the question on its own, it follows
    the ``limit`` ranked ones: whether the evidence is strong enough to quote
    (``policy.strong_evidence``) is judged on the best match in the passages, not on which
    statements the bonuses happened to lift ("Ages 45 to 49: screen all adults" names no
    subject, so its own match is low)."""
    units = _units(hits, sources)
    if not units:
        return []
    texts = [u[1] for u in units]
    # A sentence rarely names its subject ("Signs and symptoms may include ..."), so it is
    # ranked as read under its passage's title, the way the index reads chunks: otherwise a
    # neighbouring disease's symptom list can outrank the passage the question is about.
    titled = [f"{hits[u[0] - 1].chunk.title}: {u[1]}" for u in units]
    vectors = embed([question, *texts, *titled])
    n = len(units)
    scores = vectors[1 : n + 1] @ vectors[0]
    in_context = vectors[n + 1 :] @ vectors[0]
    lexical = np.array([lexical_overlap(question, t) for t in titled])
    # Bibliographic lines repeat the question's words without answering it.
    bibliographic = np.array([_is_bibliographic(hits[u[0] - 1], u[1]) for u in units])
    # Read alone, a sentence says which aspect it answers; under its title, which subject.
    ranking = 0.5 * (scores + in_context) + 0.2 * lexical - bibliographic
    ranking = ranking + _bonuses(question, hits, units, ranking)
    out = []
    order = [int(j) for j in np.argsort(-ranking, kind="stable")]
    # The retrieved passage ranked first was judged whole, with its neighbours' words; one
    # sentence of another document can match the question's form better ("Anyone who asks
    # for a test should get one", hepatitis C, for "Should a 20-year-old have a Pap test?").
    # Within the margin, the first retrieved document's best sentence leads.
    first = hits[0].chunk.doc_id
    if hits[units[order[0]][0] - 1].chunk.doc_id != first:
        own = next((j for j in order if hits[units[j][0] - 1].chunk.doc_id == first), None)
        if own is not None and ranking[own] >= ranking[order[0]] - OTHER_DOCUMENT_MARGIN:
            order.remove(own)
            order.insert(0, own)
    lead = hits[units[order[0]][0] - 1].chunk.doc_id
    floor = ranking[order[0]] - OTHER_DOCUMENT_MARGIN
    asked = _subject_stems(question)

    def follows(j: int) -> bool:
        chunk = hits[units[j][0] - 1].chunk
        if chunk.doc_id == lead:
            return True
        return ranking[j] >= floor and bool(
            asked & _subject_stems(f"{chunk.title} {chunk.section}")
        )

    chosen = [j for j in order if follows(j)][:limit]
    closest = int(np.argmax(np.where(bibliographic, -np.inf, scores)))
    if chosen and closest not in chosen and not bibliographic[closest] and follows(closest):
        chosen.append(closest)
    for j in chosen:
        n_, text, indices, statement = units[j]
        c = hits[n_ - 1].chunk
        evidence = Evidence(
            n_, text, c.doc_id, c.title, c.section, c.page, round(float(scores[j]), 4)
        )
        out.append(
            Quote(evidence, indices, statement is not None, float(ranking[j]), float(in_context[j]))
        )
    return out


# Words that name no guideline's subject: who, when, what kind of act.
_NO_SUBJECT = frozenset(
    [
        "adult",
        "adults",
        "people",
        "person",
        "patient",
        "patients",
        "women",
        "woman",
        "men",
        "man",
        "children",
        "child",
        "year",
        "years",
        "old",
        "aged",
        "older",
        "young",
        "younger",
        "test",
        "tests",
        "testing",
        "screen",
        "screening",
        "screened",
        "should",
        "start",
        "stop",
        "begin",
        "first",
        "line",
        "treatment",
        "treat",
        "therapy",
        "management",
        "care",
        "guideline",
        "guidelines",
        "recommendation",
        "recommendations",
        "prevention",
        "primary",
        "daily",
        "every",
        "often",
    ]
)


def _subject_stems(text: str) -> set[str]:
    """The content words of a question or a title that can name a subject, crudely stemmed."""
    return {w[:5] for w in content_tokens(text) if len(w) >= 4 and w not in _NO_SUBJECT}


_Unit = tuple[int, str, tuple[int, ...], Statement | None]


def _units(hits: Sequence[Hit], sources: list[SourceSentence]) -> list[_Unit]:
    """(source number, text, source sentence indices, statement) for every quotable passage:
    each recommendation statement, and each sentence no statement covers."""
    by_n: dict[int, list[SourceSentence]] = {}
    for s in sources:
        by_n.setdefault(s.n, []).append(s)
    units: list[_Unit] = []
    for n, own in by_n.items():
        chunk = hits[n - 1].chunk
        spans = sentence_spans(chunk.text)
        statements: list[tuple[Statement, tuple[int, ...]]] = []
        if len(spans) == len(own):  # the sources are this chunk's sentences, in order
            for a, b in recommendations.spans(chunk.text, chunk.section, chunk.metadata):
                covered = tuple(
                    own[k].index for k, (x, y) in enumerate(spans) if a <= (x + y) // 2 < b
                )
                if covered:
                    statements.append((recommendations.describe(chunk.text, a, b), covered))
        taken = {i for _, covered in statements for i in covered}
        first = {covered[0]: (st, covered) for st, covered in statements}
        previous: SourceSentence | None = None  # the last plain sentence quoted alone
        for s in own:
            if s.index in first:
                st, covered = first[s.index]
                units.append((n, st.text, covered, st))
                previous = None
            elif s.index not in taken:
                if previous is not None and _ANAPHORA.match(s.text):
                    # "It is quick, does not use radiation..." names nothing: it is quoted
                    # with the sentence it leans on ("Abdominal duplex ultrasonography is the
                    # test of choice."), which its words then lift
                    units[-1] = (n, f"{previous.text} {s.text}", (previous.index, s.index), None)
                    previous = None
                    continue
                units.append((n, s.text, (s.index,), None))
                previous = s
            else:
                previous = None
    return units


def _categories(text: str) -> dict[str, set[str]]:
    """The numbered categories a text names, by kind: {"stage": {"1"}}."""
    out: dict[str, set[str]] = {}
    for kind, values in _CATEGORY.findall(text):
        for value in _CATEGORY_SPLIT.split(values):
            if value:
                out.setdefault(kind.lower(), set()).add(value.lower())
    return out


def names_drug(text: str) -> bool:
    """Whether the text names a drug or a drug class (verify's lexicon)."""
    return any(verify.is_drug(w) or w in verify.DRUG_CLASSES for w in tokens(text))


def _category_bonus(asked: dict[str, set[str]], text: str) -> float:
    """Lift a passage naming the category asked about; lower one naming only another
    category of the same kind (stage 2 when stage 1 was asked)."""
    named = _categories(text)
    for kind, values in asked.items():
        if named.get(kind, set()) & values:
            return ASPECT_BONUS
    if any(named.get(kind) for kind in asked):
        return -ASPECT_BONUS
    return 0.0


def _bonuses(
    question: str, hits: Sequence[Hit], units: list[_Unit], ranking: np.ndarray
) -> np.ndarray:
    """What lifts a passage beyond its match: it recommends, it states what the question asks
    (an age, who, an interval, a grade, a dose, a drug, what defines a diagnosis, the category
    named) for the population asked about."""
    asks_category = _categories(question)
    asks_drug = bool(_ASKS_DRUG.search(question))
    asks_age = bool(_ASKS_AGE.search(question))
    asks_who = bool(_ASKS_WHO.search(question))
    asks_interval = bool(_ASKS_INTERVAL.search(question))
    asks_grade = bool(_ASKS_GRADE.search(question))
    asks_dose = bool(_ASKS_DOSE.search(question))
    asks_diagnosis = bool(_ASKS_DIAGNOSIS.search(question))
    # "what systolic goal should I treat to at 60?" led with when to start treating (160)
    asks_goal = bool(_GOAL.search(question))
    population = recommendations.Population.of(question)
    asked_stems = {w[:5] for w in content_tokens(question)}
    bonus = np.zeros(len(units))
    described = [
        st if st is not None else recommendations.describe(text, 0, len(text))
        for _, text, _, st in units
    ]
    for j, ((n, text, _, st), facts) in enumerate(zip(units, described, strict=True)):
        if st is not None and st.recommends:
            bonus[j] += RECOMMENDATION_BONUS
        if (
            ((asks_age or asks_who) and facts.ages is not None)
            or (asks_interval and facts.interval)
            or (asks_grade and facts.grade is not None)
            or (asks_dose and facts.dose)
            or (asks_drug and names_drug(text))
            or (asks_goal and bool(_GOAL.search(text)))
            or (
                asks_diagnosis
                and bool(
                    _DIAGNOSTIC_SECTION.search(hits[n - 1].chunk.section) or _DEFINES.search(text)
                )
            )
        ):
            bonus[j] += ASPECT_BONUS
        if asks_dose and facts.dose and _DOSING_SECTION.search(hits[n - 1].chunk.section):
            bonus[j] += ASPECT_BONUS
        if asks_diagnosis and not _GOAL.search(question) and _GOAL.search(text):
            bonus[j] -= ASPECT_BONUS
        if asks_category:
            bonus[j] += _category_bonus(asks_category, text)
        # whom it addresses, against whom the question asks about
        held, excluded = population.compare(
            text, hits[n - 1].chunk.section, statement=st is not None
        )
        bonus[j] += ASPECT_BONUS * held - OTHER_POPULATION_PENALTY * excluded
        if _heading_asked(hits[n - 1].chunk.section, asked_stems):
            bonus[j] += HEADING_BONUS
        if _EARLIER_VERSION.search(text):
            bonus[j] -= HISTORY_PENALTY
        if text.rstrip().endswith(":"):
            bonus[j] -= LIST_OPENING_PENALTY
        elif _ASIDE.search(text) or (st is None and _META.search(text)):
            bonus[j] -= META_PENALTY
        elif st is None and _ANAPHORA.match(text):
            bonus[j] -= ANAPHORA_PENALTY
    if asks_age and _ASKS_START.search(question):
        # "At what age should ... start": the youngest age the best document recommends it
        # for, among its statements that recommend rather than advise against.
        top = hits[units[int(np.argmax(ranking + bonus))][0] - 1].chunk.doc_id
        aged = [
            (facts.ages[0], j)
            for j, ((n, text, _, st), facts) in enumerate(zip(units, described, strict=True))
            if st is not None
            and st.recommends
            and facts.ages is not None
            and hits[n - 1].chunk.doc_id == top
            and not _NEGATIVE.search(text)
        ]
        if aged:
            bonus[min(aged)[1]] += START_BONUS
    return bonus


def _heading_asked(section: str, asked_stems: set[str]) -> bool:
    """Whether the passage's own heading is made of the question's words (two or more)."""
    heading = section.split(" > ")[-1] if section else ""
    words = {w[:5] for w in content_tokens(heading) if not w.isdigit()}
    return len(words) >= 2 and words <= asked_stems


_BIBLIOGRAPHIC_SECTION = re.compile(r"\b(source|references?|citation|bibliography|about)\b", re.I)
_BIBLIOGRAPHIC_LINE = re.compile(r"^\s*(title|url|source|citation|doi|related)\s*:", re.I)


def _is_bibliographic(hit: Hit, sentence: str) -> bool:
    last = hit.chunk.section.split(" > ")[-1] if hit.chunk.section else ""
    return bool(_BIBLIOGRAPHIC_SECTION.search(last) or _BIBLIOGRAPHIC_LINE.match(sentence))


def quote_answer(quotes: Sequence[Quote], hits: Sequence[Hit], limit: int = 3) -> Alignment:
    """An answer made of the guideline's own words, each cited: supported by construction."""
    chosen = list(quotes[:limit])
    sentences = [
        AnswerSentence(
            q.evidence.text,
            [q.evidence.n],
            True,
            1.0,
            evidence=list(q.indices),
            origin=Origin.QUOTE,
        )
        for q in chosen
    ]
    cited = sorted({q.evidence.n for q in chosen})
    citations = [_citation(hits[n - 1], n) for n in cited]
    return Alignment(sentences, citations, [q.evidence for q in chosen], np.zeros((len(chosen), 0)))
