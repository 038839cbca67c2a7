"""Yes/no questions: detect them, and decide yes / no / uncertain from the cited document.

A guideline states its answer: when a quoted passage is a recommendation statement that
says what to do (for the question's ages), the first such one's polarity is the decision
(:func:`stated_decision`: grade D or "do not" is no, grade C or I uncertain, else yes;
reversed for a question about stopping or avoiding). Everything else (a study's findings)
is decided as follows.

The decision reads only library text and the question: the whole document the best quote
comes from (every chunk of it, from the library, in order), verbatim, never the model's free
text. A logistic model (``decide_weights.json``, fitted by ``benchmarks/yes_no_fit.py`` on
one half of PubMedQA, measured on the other; ``docs/benchmarks.md``) weighs text features:

- negative-finding phrases ("no significant", "did not", "similar", p > 0.05) and positive
  ones ("significantly", p < 0.05), counted in the whole document and in its results (the last
  third of its sentences, where abstracts report findings);
- "no difference" comparisons in the results, negations whose scope holds one of the
  question's terms ("aspirin did not reduce stroke"), 95% CIs of ratios that include 1;
- negative phrases in the sentences closest to the question (embedding similarity);
- whether the question doubts its claim ("really", "necessary"), or asks for a link
  ("associated", "predict"), crossed with the negative results;
- optionally the answering model's "channel" score (Min et al. 2022): how much likelier the
  evidence is after "The answer is yes" than after "no" (``LogProbScorer``; not shipped).

A guideline's recommendation statement ("Do not start aspirin...", "Fasting is not required")
is advice, not a study's negative finding: it is left out of the counts. The model's output
is the log-odds of "yes" against "no"; within ``yes_no_margin`` of ``yes_no_bias`` the
decision is ``uncertain``. Weights with a channel coefficient belong to the model they were
fitted with (its weights hash is in the file); an LLM without log-probabilities then gets no
decision and the answer is generated as before, never guessed from the model's wording.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from core.backends.base import LogProbScorer, Message
from core.config import Settings
from core.text import STOPWORDS, split_sentences
from core.types import (
    Answer,
    Chunk,
    Decision,
    DecisionLabel,
    Generation,
    Hit,
    SourceSentence,
)

if TYPE_CHECKING:
    from assistant.cite import Quote
    from assistant.pipeline import Assistant
    from assistant.policy import Context
    from core.recommendations import Population, Statement

log = logging.getLogger(__name__)

METHOD = "logistic:channel+cues"
OPTIONS = ("yes", "no")
# Sentences quoted for a yes/no answer; the decision reads the best one's whole document (its
# retrieved passages), since the finding is rarely the sentence closest to the question. One
# document, not all the quotes' documents: on PubMedQA the others are other studies.
EVIDENCE_SENTENCES = 3
WEIGHTS_FILE = "decide_weights.json"
PROMPT_NAME = "yes_no_v2"
_SYSTEM = "You report the findings of clinical studies and guidelines."
_USER = "Question: {question}\nThe answer is {option}. What does the evidence say?"
PROMPT_SHA256 = hashlib.sha256((_SYSTEM + "\n" + _USER).encode()).hexdigest()

_AUX = (
    "is|are|was|were|am|do|does|did|can|could|should|would|will|shall|may|might|must|"
    "has|have|had|isn't|aren't|wasn't|weren't|don't|doesn't|didn't|can't|cannot|couldn't|"
    "shouldn't|wouldn't|won't|hasn't|haven't|hadn't|it's"
)
_WH = r"what|which|when|where|who|whom|whose|why|how"
_AUX_FIRST = re.compile(rf"^[\s\"'(\[*_-]*(?:{_AUX})\b", re.I)
_WH_FIRST = re.compile(rf"^[\s\"'(\[*_-]*(?:{_WH})\b", re.I)
# "Is it safe, and when should it start?": a second question, not a yes/no one; a wh-word
# elsewhere is usually a subordinate clause ("...when assessing fitness?", "what to teach")
_WH_QUESTION = re.compile(rf"(?:,|\band\b|\bor\b)\s+(?:{_WH})(?:\s+\w+)?\s+(?:{_AUX})\b", re.I)
# Headline questions put the topic first: "Double balloon enteroscopy: is it safe?",
# "Metered-dose inhalers. Do providers know what to teach?", "Malnutrition, a new inducer of
# arterial calcification?", "Injury mortality--are there common factors?"
_CLAUSE_BREAK = re.compile(rf"(?::|\.\s|--|\s-\s|;|,\s+(?=(?:a|an|the|{_AUX})\b))", re.I)
# "Are they the same or different?", "Are ACE inhibitors or ARBs preferred?": a choice
_CHOICE = re.compile(
    r"\b(?:same|different|better|worse|prefer(?:red|able)?|superior|inferior|rather|more|"
    r"less)\b",
    re.I,
)


def _is_choice(clause: str) -> bool:
    return bool(re.search(r"\bor\b(?!\s+not\b)", clause, re.I) and _CHOICE.search(clause))


def is_yes_no(question: str) -> bool:
    """Whether the question asks for yes or no.

    Yes/no when a clause starts with an auxiliary verb ("Is aspirin recommended...",
    "Double balloon enteroscopy: is it safe?"), or, after a topic, asks a verbless question
    ("Aripiprazole: a new risk factor for pathological gambling?"). Not a wh-question ("When
    should screening start?", "Is it safe, and when should it start?") and not a choice
    ("Are they the same or different?"). A verbless question with no topic ("Gluten
    tolerance 20 years after diagnosis?") is not recognised: nothing in its words says it.
    """
    text = question.strip()
    clauses = [c.strip() for c in _CLAUSE_BREAK.split(text) if c.strip()]
    if not clauses:
        return False
    last = clauses[-1]
    if _WH_FIRST.match(last) or _WH_QUESTION.search(last) or _is_choice(last):
        return False
    if any(_AUX_FIRST.match(c) for c in clauses):
        return True
    return len(clauses) > 1 and text.endswith("?") and not any(_WH_FIRST.match(c) for c in clauses)


@dataclass(frozen=True)
class Scores:
    """log p(evidence | "The answer is yes") and log p(evidence | "The answer is no")."""

    yes: float
    no: float

    @property
    def shift(self) -> float:
        """How much likelier the evidence is under "yes" than under "no" (log-odds)."""
        return self.yes - self.no


# Findings against the claim, as abstracts and guidelines word them. Counted, not parsed: the
# logistic model weighs the counts.
_NEGATIVE = re.compile(
    r"\b(?:no|not|non)[- ](?:statistically[- ])?significant(?:ly)?\b"
    r"|\bnonsignificant(?:ly)?\b"
    r"|\b(?:did|does|do|was|were|is|are|could|would|has|have|had|may) not\b"
    r"|\b(?:didn't|doesn't|don't|wasn't|weren't|isn't|aren't|hasn't|haven't)\b"
    r"|\bno (?:\w+ ){0,2}?(?:differences?|associations?|correlations?|effects?|relationships?|"
    r"relations?|improvements?|benefits?|changes?|increases?|reductions?|decreases?|"
    r"advantages?|impact|evidence)\b"
    r"|\bnot (?:associated|related|correlated|predictive|different|superior|effective|useful|"
    r"necessary|improved|reduced|increased|recommended)\b"
    r"|\b(?:similar|comparable|equivalent|unchanged|unaffected|unrelated)\b"
    r"|\bfail(?:ed|s)? to\b|\bneither\b"
    r"|\bp\s*(?:>|\u2265|=\s*0?\.(?:0[5-9]|[1-9]))",
    re.I,
)
# Findings for it: significance not negated, and p below 0.05.
_POSITIVE = re.compile(
    r"(?<!\bno )(?<!\bnot )(?<!\bnon-)(?<!\bnon )\bsignificant(?:ly)?\b"
    r"|\bp\s*(?:<|\u2264|=\s*0?\.0[0-4])",
    re.I,
)
# Two groups found alike: the commonest way a comparison says "no".
_NO_DIFFERENCE = re.compile(
    r"\b(?:no|not|without)\b(?:\s+[\w-]+){0,5}?\s+(?:differ\w*|superior|inferior|better|worse|"
    r"advantage\w*|benefit\w*)\b"
    r"|\b(?:similar|comparable|equivalent|equally|identical|the same)\b",
    re.I,
)
# A negation that can scope over the question's terms: "X did not reduce Y", "no Y", "failed to"
_NEGATOR = re.compile(
    r"\b(?:not|no|nor|neither|without|fail(?:ed|s)?\s+to|"
    r"(?:did|does|do|was|were|is|are|has|have|had)n't)\b",
    re.I,
)
# 95% confidence intervals of ratios: "(95% CI 0.80-2.46)", "95% CI, 1.3 to 3.0"
_CI = re.compile(
    r"\b(?:CI|confidence interval)\b[\s,:;=]*(?:of\s+)?\(?\s*(\d+(?:\.\d+)?)\s*"
    r"(?:-|\u2013|to|,)\s*(\d+(?:\.\d+)?)",
    re.I,
)
# Questions that doubt their own claim ("Is routine imaging really necessary?")
_DOUBT = re.compile(
    r"\b(?:really|still|truly|myth|necessary|mandatory|justified|worth|needed|obsolete)\b", re.I
)
# "Is X associated with Y?", "Does X predict Y?": asks for a link, not an effect
_ASKS_LINK = re.compile(
    r"\b(?:associat\w*|relat(?:ed|ion\w*)|correlat\w*|predict\w*|link\w*|marker|risk factor)\b",
    re.I,
)
# Words too common to tie a negation to the question's subject
_LIGHT = frozenset(
    [
        "there",
        "their",
        "they",
        "them",
        "patients",
        "patient",
        "study",
        "studies",
        "group",
        "groups",
        "after",
        "before",
        "during",
        "while",
        "where",
        "whose",
        "between",
        "among",
        "within",
        "about",
        "using",
        "used",
        "other",
        "more",
        "less",
        "than",
        "into",
        "does",
        "have",
        "were",
    ]
)
SCOPE_WORDS = 6  # a negation reaches this many words either side
RESULTS_SHARE = 1 / 3  # the last third of the document's sentences: where abstracts put results
CLOSEST = 3  # sentences most similar to the question
TEXT_FEATURES = (
    "negative",
    "positive",
    "doubt",
    "negative_results",
    "positive_results",
    "negative_closest",
    "no_difference_results",
    "negation_of_question_terms",
    "ci_includes_1",
    "ci_excludes_1",
    "last_sentence_negative",
    "link_question_x_negative_results",
)
FEATURES = ("shift", *TEXT_FEATURES)


def _stem(word: str) -> str:
    # a crude stem: "reduced", "reduces", "reduction" meet at "reduc"
    return word.lower()[:5]


def question_terms(question: str) -> set[str]:
    """The question's subject words, stemmed: content words of 4 letters or more."""
    words = re.findall(r"[A-Za-z][A-Za-z-]{3,}", question)
    return {_stem(w) for w in words if w.lower() not in _LIGHT and w.lower() not in STOPWORDS}


def negations_of_question_terms(question: str, sentence: str) -> int:
    """How many negations in the sentence have one of the question's terms within
    ``SCOPE_WORDS`` words: "aspirin did not reduce stroke" for "Does aspirin reduce stroke?"."""
    terms = question_terms(question)
    words = re.findall(r"[\w'-]+", sentence)
    stems = [_stem(w) for w in words]
    count = 0
    for m in _NEGATOR.finditer(sentence):
        at = len(re.findall(r"[\w'-]+", sentence[: m.start()]))
        window = stems[max(0, at - SCOPE_WORDS) : at + SCOPE_WORDS + 1]
        if terms.intersection(window):
            count += 1
    return count


def confidence_intervals(text: str) -> tuple[int, int]:
    """(intervals that include 1, intervals that exclude it): a ratio's 95% CI crossing 1 is
    a finding of no effect; below 0.3 or a reversed pair it is not a ratio's, and skipped."""
    includes = excludes = 0
    for m in _CI.finditer(text):
        low, high = float(m.group(1)), float(m.group(2))
        if not 0 < low < high or high > 100:
            continue
        if low < 1 < high:
            includes += 1
        elif high < 1 or low > 1:
            excludes += 1
    return includes, excludes


def is_recommendation(sentence: str) -> bool:
    """A guideline's recommendation statement ("Do not start aspirin...", "Fasting is not
    required"): its negation says what to do, not that a study found nothing."""
    from core import recommendations

    body = sentence.strip()
    if not recommendations.find(body):
        return False
    return recommendations.describe(body, 0, len(body)).recommends


def cues(
    question: str, evidence: Sequence[str], similarity: Sequence[float] | None = None
) -> dict[str, float]:
    """The text features of the evidence (sentences in the document's order; ``similarity``:
    each one's match to the question, when known). Counts are log(1 + count).

    Recommendation statements are left out of the finding counts: "Do not screen..." in a
    guideline is advice, not a study's negative finding. The results are the last third of
    the sentences (abstracts state aims and methods first); the closest sentences are the
    ``CLOSEST`` most similar to the question (by shared question terms without similarity).
    """
    order = list(range(len(evidence)))
    findings = [i for i in order if not is_recommendation(evidence[i])]
    results = findings[-max(1, math.ceil(len(findings) * RESULTS_SHARE)) :] if findings else []
    if similarity is not None and len(similarity) == len(evidence):
        ranked = sorted(findings, key=lambda i: -similarity[i])
    else:
        terms = question_terms(question)
        ranked = sorted(
            findings,
            key=lambda i: -len(terms & {_stem(w) for w in re.findall(r"\w+", evidence[i])}),
        )
    closest = ranked[:CLOSEST]

    def text(ids: Sequence[int]) -> str:
        return " ".join(evidence[i] for i in ids)

    def count(pattern: re.Pattern[str], ids: Sequence[int]) -> float:
        return math.log1p(len(pattern.findall(text(ids))))

    includes, excludes = confidence_intervals(text(findings))
    negative_results = count(_NEGATIVE, results)
    return {
        "negative": count(_NEGATIVE, findings),
        "positive": count(_POSITIVE, findings),
        "doubt": 1.0 if _DOUBT.search(question) else 0.0,
        "negative_results": negative_results,
        "positive_results": count(_POSITIVE, results),
        "negative_closest": count(_NEGATIVE, closest),
        "no_difference_results": count(_NO_DIFFERENCE, results),
        "negation_of_question_terms": math.log1p(
            sum(negations_of_question_terms(question, evidence[i]) for i in results)
        ),
        "ci_includes_1": math.log1p(includes),
        "ci_excludes_1": math.log1p(excludes),
        "last_sentence_negative": 1.0
        if results and _NEGATIVE.search(evidence[results[-1]])
        else 0.0,
        "link_question_x_negative_results": negative_results
        if _ASKS_LINK.search(question)
        else 0.0,
    }


@dataclass(frozen=True)
class Weights:
    """The fitted logistic model: log-odds(yes vs no) = intercept + sum(coef * feature)."""

    coef: dict[str, float]
    intercept: float
    model_hash: str = ""  # the weights hash of the LLM whose channel score was fitted
    sha256: str = ""  # of the weights file, recorded with each decision

    @property
    def needs_model(self) -> bool:
        """Whether a feature comes from the answering model (its log-probabilities)."""
        return "shift" in self.coef

    def log_odds(self, features: dict[str, float]) -> float:
        return self.intercept + sum(w * features[name] for name, w in self.coef.items())


@cache
def shipped_weights() -> Weights:
    """The coefficients shipped with clinrag (``assistant/decide_weights.json``)."""
    raw = resources.files("assistant").joinpath(WEIGHTS_FILE).read_bytes()
    data: dict[str, Any] = json.loads(raw)
    unknown = set(data["coef"]) - set(FEATURES)
    if unknown:
        raise ValueError(f"{WEIGHTS_FILE}: unknown features {sorted(unknown)}")
    return Weights(
        coef={k: float(v) for k, v in data["coef"].items()},
        intercept=float(data["intercept"]),
        model_hash=str(data.get("model_weights_hash", "")),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def similarities(
    embed: Callable[[list[str]], Any], question: str, texts: Sequence[str]
) -> list[float]:
    """Each sentence's cosine similarity to the question (the embedder's vectors are unit)."""
    vectors = np.asarray(embed([question, *texts]), dtype=float)
    return [round(float(v), 4) for v in vectors[1:] @ vectors[0]]


def features(
    llm: LogProbScorer | None,
    question: str,
    evidence: Sequence[str],
    similarity: Sequence[float] | None = None,
) -> dict[str, float]:
    """The decision's features: the text cues, and the channel scores when ``llm`` is given."""
    out = cues(question, evidence, similarity)
    if llm is not None:
        scores = score(llm, question, evidence)
        out.update(log_p_yes=scores.yes, log_p_no=scores.no, shift=scores.shift)
    return out


def messages(question: str, option: str) -> list[Message]:
    """The scoring prompt for one option; the evidence is what the model is scored on."""
    user = _USER.format(question=question.strip(), option=option)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def score(llm: LogProbScorer, question: str, evidence: Sequence[str]) -> Scores:
    """Teacher-forced log-probability of the evidence after each option."""
    prompts = [messages(question, option) for option in OPTIONS]
    lp = llm.logprobs(prompts, [" ".join(evidence)])[:, 0]
    return Scores(float(lp[0]), float(lp[1]))


def label(log_odds: float, *, bias: float, margin: float) -> DecisionLabel:
    """yes above ``bias + margin``, no below ``bias - margin``, uncertain between."""
    if log_odds > bias + margin:
        return DecisionLabel.YES
    if log_odds < bias - margin:
        return DecisionLabel.NO
    return DecisionLabel.UNCERTAIN


def decide(
    llm: object,
    question: str,
    evidence: Sequence[SourceSentence],
    settings: Settings,
    weights: Weights | None = None,
    similarity: Sequence[float] | None = None,
    document: Sequence[str] | None = None,
) -> Decision | None:
    """The decision from these evidence sentences, or None when it cannot be made.

    None when there is no evidence, or when the weights use the channel score and the LLM
    cannot score options (no ``logprobs``); the reason is logged. Nothing but the question and
    the text read reaches the model. ``weights``: the shipped ones unless given. ``document``:
    the text read, when more than the evidence (the whole cited document, in order);
    ``similarity``: each of its sentences' match to the question.
    """
    weights = weights or shipped_weights()
    if not evidence:
        log.info("yes/no decision skipped: no verified evidence")
        return None
    scorer: LogProbScorer | None = None
    if weights.needs_model:
        if not isinstance(llm, LogProbScorer):
            log.info("yes/no decision skipped: %s has no log-probabilities", type(llm).__name__)
            return None
        scorer = llm
        info = getattr(llm, "info", None)
        if weights.model_hash and getattr(info, "weights_hash", "") != weights.model_hash:
            log.warning(
                "yes/no weights were fitted with another model's channel score; refit them "
                "(benchmarks/yes_no_fit.py) for this one"
            )
    text = list(document) if document else [s.text for s in evidence]
    found = features(scorer, question, text, similarity)
    z = weights.log_odds(found)
    return Decision(
        label=label(z, bias=settings.yes_no_bias, margin=settings.yes_no_margin),
        probabilities={
            **{k: round(v, 4) for k, v in found.items()},
            "log_odds": round(z, 4),
            "p_yes": round(1.0 / (1.0 + math.exp(-z)), 4),
        },
        evidence=[s.index for s in evidence],
        method=f"{METHOD}:{weights.sha256[:12]}" if weights.sha256 else METHOD,
    )


STATED_METHOD = "recommendation-polarity"
# A statement advising against what it names: "do not start aspirin", "fasting is not
# required", "beta blockers are not first line", "recommends against", "stop screening".
# "no" alone is left out: "adults who have no symptoms" is a population, not advice.
# "does not prefer one product over another" chooses among options the advice allows: not
# advice against (it answered "Should children get the flu vaccine?" with no).
_AGAINST = re.compile(
    r"\b(?:do|does|did|is|are|was|were|should|must|need|needs)\s+not\b(?!\s+prefer)"
    r"|\b(?:don't|doesn't|didn't|isn't|aren't|shouldn't|mustn't)\b(?!\s+prefer)"
    r"|\bnot\s+(?:recommended|required|needed|necessary|indicated|advised|routinely|"
    r"(?:the\s+)?first[- ]line)\b"
    r"|\brecommends?\s+against\b|\b(?:avoid|stop|discontinue|never)\b"
    r"|\bno\s+(?:further|longer|need|routine)\b",
    re.I,
)
# "adults who are not pregnant", "people who do not smoke": a negation inside the clause that
# says whom a statement is for is no advice against; left out before reading the polarity.
_WHO_CLAUSE = re.compile(r"\bwho\b[^,;:.()]*", re.I)
# A reason given for the advice ("Anyone who asks for a test should get one, since some people
# do not want to disclose risk behavior"): its negation is not advice against.
_REASON_CLAUSE = re.compile(r"\b(?:since|because)\b[^;:.()]*", re.I)
# Advice that depends on the person: grade C ("offer selectively", "an individual decision")
# and grade I (evidence insufficient) answer neither yes nor no.
_DEPENDS = re.compile(
    r"\bindividual(?:ized|ised)?\s+(?:decision|basis)\b|\bselectively\b|\binsufficient\b|"
    # "use particular caution when prescribing opioids with benzodiazepines": allowed, with care
    r"\bshared decision\b|\bcaution\b|\bdecide with\b|\bdiscuss(?:ed)? with\b",
    re.I,
)
# A question asking what to do ("Should I start...?", "Is X an acceptable test?", "Does my
# patient need to fast?"), which a guideline's statement answers; not one asking what a study
# found ("Does X predict Y?", "Can X prevent Y?"), which a statement in an abstract's
# background ("It has been suggested that...", "Current guidelines recommend...") does not.
_ASKS_ADVICE = re.compile(
    r"^\W*should\b|\b(?:recommend\w*|acceptable|reasonable|first[- ]line|appropriate|"
    r"indicated|necessary|need to|usual|safe to)\b"
    # "Does a 30-year-old need hepatitis C screening?": does this person need it
    r"|^\W*(?:does|do)\s+(?:a|an|the|my|our|this|i|we|she|he|they|patients?|people|adults?|"
    r"children|women|men)\b[^?]*?\bneeds?\b"
    # "Can a pregnant woman get the flu shot?": may this person have it, not what a study found
    r"|^\W*(?:can|may)\s+(?:a|an|the|my|our|this|i|we|she|he|they|patients?|people|adults?|"
    r"children|women|men)\b[^?]*?\b(?:get|have|receive|take|use|start|continue|be\s+"
    r"(?:given|vaccinated|immuni[sz]ed|screened|tested|treated|offered|prescribed))\b",
    re.I,
)
# A statement that applies only under a condition ("Stop screening when...", "If ..., do not",
# "Before stopping at 65, ...") does not contradict one that applies without it.
_CONDITIONAL = re.compile(r"\b(?:when|whenever|if|unless|once|until|before|after)\b", re.I)
DISAGREE = "statements disagree"
# A question asking about not doing something: "Should aspirin be stopped...?", "Is X
# contraindicated...?". Its answer is the statement's polarity reversed.
_ASKS_AGAINST = re.compile(
    r"\b(?:stop(?:ped|ping)?|discontinu\w*|avoid(?:ed)?|withh(?:o|e)ld\w*|contraindicated|"
    r"unsafe)\b|^\W*\w+n't\b|^\W*(?:should|must|can|is|are|do|does)\s+\S+(?:\s+\S+)?\s+not\b",
    re.I,
)


def asks_advice(question: str) -> bool:
    """Whether the question, or any sentence of it, asks what to do: a case is often told
    first ("A health-care worker still has anti-HBs below 10 mIU/mL after a full series.
    Should she get more vaccine doses?")."""
    return any(_ASKS_ADVICE.search(part) for part in re.split(r"(?<=[.?!])\s+", question))


def stated_decision(question: str, quotes: Sequence[Quote]) -> Decision | None:
    """The decision a guideline states, for a question asking what to do: read from the first
    quoted passage that is a recommendation statement saying what to do (a recommendation verb
    or a grade) for the question's ages, when it names ages and so does the question. "no"
    when it advises against (grade D, "do not", "is not required", "not first line"),
    "uncertain" when it leaves it to the person (grade C or I, "individual decision"), else
    "yes"; reversed for a question about not doing it ("Should aspirin be stopped?"). None for
    anything else (a study's findings), which the logistic model decides.

    When two unconditional instructions of one guideline among the quotes point opposite
    ways, the second naming as many of the question's words as the first, the decision is
    uncertain and its
    evidence is both (method ``recommendation-polarity:statements
    disagree``).

    Not only the passage quoted first: a guideline often leads with whom it covers ("Adults
    aged 50 to 80 who meet both smoking criteria: ...") and states what to do in the next
    passage ("Grade B: annual LDCT screening for adults aged 50 to 80..."); the abstract-fitted
    model then read "has not smoked for 15 years" in the stopping rule as a negative finding
    and said no to screening a 55-year-old smoker.

    The abstract-fitted model reads findings ("no significant difference"), not advice: on the
    clinician set's 10 guideline yes/no questions it decided 4 right, while their first quote
    was the statement that answers (docs/benchmarks.md). On PubMedQA, without the question's
    gate, abstracts' background sentences ("It has been suggested...") and disease grades
    ("grade C oesophagitis") passed as statements: 7 decisions changed, 2 fewer right.
    """
    from core import recommendations

    if not asks_advice(question):
        return None
    population = recommendations.Population.of(question)
    terms = question_terms(question)
    stated: list[Decision] = []
    unconditional: list[bool] = []
    shared: list[set[str]] = []  # the question's terms each statement names
    documents: list[str] = []
    for quote in quotes:
        if not quote.recommendation:
            continue
        text = quote.evidence.text
        statement = recommendations.describe(text, 0, len(text))
        if not statement.recommends:
            continue
        text, statement = _clause_for(population, text, statement)
        if population.compare(text, quote.evidence.section)[1]:
            continue  # for other ages, the other sex, smoking or risk: about someone else
        stated.append(_polarity(question, quote, text, statement))
        unconditional.append(statement.directs and not _CONDITIONAL.search(text))
        shared.append(terms & {_stem(w) for w in re.findall(r"[\w-]+", text)})
        documents.append(quote.evidence.doc_id)
    if not stated:
        return None
    first = stated[0]
    if first.label is not DecisionLabel.UNCERTAIN and unconditional[0]:
        # Two unconditional instructions quoted together that point opposite ways ("LAIV must
        # not be used in pregnancy" beside "Pregnancy: vaccinate during any trimester with an
        # inactivated vaccine") leave the answer to what differs between them: neither yes
        # nor no, and the reader is shown both. A report ("modeling suggested little added
        # benefit") reads as yes only by default, so it contradicts nothing.
        # Only one naming every word of the question the first names, or more of them
        # ("chest x-ray"): "Screening programs should use Lung-RADS" does not contradict
        # "chest x-ray is not recommended" for a question about chest x-rays, nor "counsel
        # about contraception while taking hydroxyurea" "in females who are pregnant,
        # discontinue hydroxyurea" for a pregnant woman (as many words, but not "pregnant").
        # Only within the guideline stated first: another document's instruction is about its
        # own subject ("Anyone who asks for a test should get one", hepatitis C, beside
        # "Younger than 21: do not screen" for a Pap test question).
        others = zip(stated[1:], unconditional[1:], shared[1:], documents[1:], strict=True)
        for other, plain, names, document in others:
            if (
                plain
                and document == documents[0]
                and (names >= shared[0] or len(names) > len(shared[0]))
                and other.label not in (first.label, DecisionLabel.UNCERTAIN)
            ):
                return Decision(
                    label=DecisionLabel.UNCERTAIN,
                    probabilities={},
                    evidence=list(dict.fromkeys([*first.evidence, *other.evidence])),
                    method=f"{STATED_METHOD}:{DISAGREE}",
                )
    return first


_NON = re.compile(r"\bnon-?([a-z]{4,})", re.I)


def _names_only_the_alternative(question: str, statement: str) -> bool:
    """Whether a statement names the question's subject only as what to use instead: "non-
    opioid options should come first" answers "Should opioids be the first treatment?" with
    no, its advice being for the alternative."""
    asked = question_terms(question)
    if _NON.search(question):
        return False
    negated = {_stem(m.group(1)) for m in _NON.finditer(statement)} & asked
    if not negated:
        return False
    plain = {_stem(w) for w in re.findall(r"[A-Za-z]+", _NON.sub(" ", statement))}
    return not negated & plain


def _clause_for(population: Population, text: str, statement: Statement) -> tuple[str, Statement]:
    """The clause of a statement addressed to the question's population, with its own grade:
    "Adolescents aged 12 to 18 years should also be screened (grade B); the evidence for
    children aged 11 and younger was insufficient" answers yes for adolescents, though its
    second clause alone would read as uncertain. The whole statement when it has one clause
    or the question names no population its clauses tell apart."""
    from core import recommendations

    clauses = [c.strip() for c in re.split(r";\s+", text) if c.strip()]
    if len(clauses) < 2:
        return text, statement
    compared = [population.compare(c) for c in clauses]
    kept = [c for c, (held, excluded) in zip(clauses, compared, strict=True) if not excluded]
    held = [c for c, (n, excluded) in zip(clauses, compared, strict=True) if n and not excluded]
    if not kept or len(kept) == len(clauses):
        return text, statement
    clause = (held or kept)[0]
    own = recommendations.describe(clause, 0, len(clause))
    return clause, own


def _polarity(question: str, quote: Quote, text: str, statement: Statement) -> Decision:
    """The decision ``text`` (the quote, or its clause for the question's population) states."""
    grade = (statement.grade or "").upper()
    if grade in {"C", "I"} or _DEPENDS.search(text):
        label = DecisionLabel.UNCERTAIN
    else:
        advice = _REASON_CLAUSE.sub(" ", _WHO_CLAUSE.sub(" ", text))
        against = grade == "D" or bool(_AGAINST.search(advice))
        if _ASKS_AGAINST.search(question):
            against = not against
        if _names_only_the_alternative(question, text):
            against = not against
        label = DecisionLabel.NO if against else DecisionLabel.YES
    return Decision(
        label=label,
        probabilities={},
        evidence=list(quote.indices),
        method=STATED_METHOD + (f":grade {statement.grade}" if statement.grade else ""),
    )


def cited(decision: Decision, answer: Answer) -> list[int]:
    """The citation numbers the reader sees for the passages the decision read, in order.
    Passages read but not cited have no number on the screen, so none is named for them."""
    # citations carry the number shown (label) beside the source number (n) when numbered
    shown = {c.n: (getattr(c, "label", 0) or c.n) for c in answer.citations}
    out: list[int] = []
    for i in decision.evidence:
        if 0 <= i < len(answer.source_sentences):
            label = shown.get(answer.source_sentences[i].n)
            if label is not None and label not in out:
                out.append(label)
    return out


def describe(decision: Decision, answer: Answer) -> str:
    """One line for the reader: "Decision: yes (from [1], [2])"."""
    refs = ", ".join(f"[{n}]" for n in cited(decision, answer))
    return f"Decision: {decision.label}" + (f" (from {refs})" if refs else "")


# ------------------------------------------------------------------ answers without free text


def passages_read(
    quotes: Sequence[Quote], sources: Sequence[SourceSentence], hits: Sequence[Hit]
) -> list[SourceSentence]:
    """Every sentence of the retrieved passages of the document the best quote comes from, in
    the document's order, each sentence once: the cited document, verbatim.

    The whole document, not only the quoted passage: the passage that best matches a question
    is usually the one stating the study's aim, and the finding follows in the next one (on
    PubMedQA, 2 to 3 passages per abstract).
    """
    if not quotes or not quotes[0].indices:
        return []
    doc = hits[sources[quotes[0].indices[0]].n - 1].chunk.doc_id
    chosen = sorted(
        (n for n, h in enumerate(hits, start=1) if h.chunk.doc_id == doc),
        key=lambda n: hits[n - 1].chunk.char_start,
    )
    out: list[SourceSentence] = []
    seen: set[str] = set()
    for n in chosen:
        for s in sources:
            if s.n == n and s.text not in seen:  # passages may overlap
                seen.add(s.text)
                out.append(s)
    return out


def whole_document(chunks: Sequence[Chunk]) -> list[str]:
    """The sentences of a document's chunks, in the document's order, each once (chunks may
    overlap)."""
    out: list[str] = []
    seen: set[str] = set()
    for chunk in sorted(chunks, key=lambda c: c.char_start):
        for text in split_sentences(chunk.text):
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def answer(assistant: Assistant, ctx: Context) -> Answer | None:
    """The answer to a yes/no question without free-text generation, or None to generate.

    Called once the abstention checks before generation have passed. The decision and its
    evidence are the answer: the guideline's (or abstract's) sentences that best match the
    question, quoted and cited, with the decision on top: stated by the recommendation quoted
    first (:func:`stated_decision`), else read from the best quote's whole document. The
    packaged 135M model's own wording is the less accurate one (it failed verification on
    most PubMedQA questions, and parsed as "maybe" when quoted), and skipping
    it saves the generation, about 6 of the 6.5 seconds of an answer on a CPU. Off when
    ``yes_no_decisions`` is off, or when the weights use the channel score and the LLM cannot
    score options.
    """
    from assistant import policy
    from assistant.cite import quote_answer, quotes_for

    settings, llm = assistant.settings, assistant.llm
    question, hits, timings = ctx.question, ctx.hits, ctx.timings
    weights = shipped_weights()
    if not (settings.yes_no_decisions and is_yes_no(question)):
        return None
    if weights.needs_model and not isinstance(llm, LogProbScorer):
        return None
    t = time.perf_counter()
    quotes = quotes_for(question, hits, assistant.embed, ctx.sources, limit=EVIDENCE_SENTENCES)
    timings["citation"] = time.perf_counter() - t
    if not quotes:
        weak = policy.Reason(policy.ReasonCode.WEAK_RETRIEVAL, "no evidence sentence")
        return policy.abstained(ctx, weak)
    # No sentence-level bar (quote_min_evidence) here: the decision reads the document, whose
    # passages passed the passage-level checks before this (relevance, the question's rare
    # words). A yes/no question rarely matches its finding's sentence closely ("Does X improve
    # Y?" against "Y was 12% higher with X"), so the bar declined answerable questions (9 of
    # 430 on PubMedQA, 1 of the 10 clinician yes/no questions) and, on 12 off-library yes/no
    # questions over data_samples, caught none the passage-level checks had let through
    # (docs/benchmarks.md).
    quote = quote_answer(quotes, hits, limit=EVIDENCE_SENTENCES)
    t = time.perf_counter()
    # a guideline says it in a statement among the quotes: no model, no weights
    stated = stated_decision(question, quotes[:EVIDENCE_SENTENCES])
    scored = stated is None and weights.needs_model
    if scored:
        assistant.load_model(timings)
    prompts = [messages(question, option) for option in OPTIONS] if scored else []
    # Recorded as the answer's generation (empty text: nothing was written), so the record
    # names the model, the prompt when the model scored the evidence, and the weights when
    # they decided.
    method = STATED_METHOD if stated is not None else METHOD
    scoring = Generation(
        text="",
        model=llm.info,
        prompt_hash=hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest(),
        template=f"{PROMPT_NAME}:{PROMPT_SHA256}" if prompts else f"{method}:no-prompt",
        decoding={
            "teacher_forced": "evidence" if prompts else None,
            "options": list(OPTIONS),
            "max_new_tokens": 0,
            "weights_sha256": weights.sha256 if stated is None else None,
        },
        seconds=0.0,
    )
    out = policy.quoted(
        ctx,
        scoring,
        sentences=quote.sentences,
        evidence=quote.evidence,
        unverified=[],
    )
    if stated is not None:
        out.decision = stated
    else:
        out.decision = _decide_from_document(assistant, ctx, quotes, weights)
    scoring.seconds = timings["decision"] = time.perf_counter() - t
    return out


def _decide_from_document(
    assistant: Assistant, ctx: Context, quotes: Sequence[Quote], weights: Weights
) -> Decision | None:
    """The fitted model's decision, read from the best quote's whole document.

    The whole cited document from the library, not only its retrieved passages: the retrieved
    ones missed an abstract's last (results) sentence on about a third of PubMedQA questions,
    and the results are where the finding is.
    """
    question, hits = ctx.question, ctx.hits
    read = passages_read(quotes, ctx.sources, hits)
    document: list[str] = []
    if read:
        doc = hits[read[0].n - 1].chunk.doc_id
        document = whole_document(assistant.retriever.index.manifest.chunks([doc]))
    document = document or [s.text for s in read]
    # each sentence's match to the question picks the closest ones, as in the fit
    sims = similarities(assistant.embed, question, document) if document else None
    return decide(assistant.llm, question, read, assistant.settings, weights, sims, document)
