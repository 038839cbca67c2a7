"""Follow-up questions: does a question lean on the previous turn, and what does it ask in full?

"and when should they stop?" after "At what age should average-risk adults start colorectal
cancer screening?" retrieves nothing useful on its own words: retrieval, the abstention checks
and the model all need "When should average-risk adults stop colorectal cancer screening?".

Deterministic rules, no model: the rewrite is shown to the clinician ("Understood as") and
recorded, so it must be explainable and repeatable. A question is a follow-up only when a
previous question exists and the new one names no subject of its own (no *topical* word: a
content word outside the small vocabulary of populations, aspects and generic clinical verbs
below) and either opens with a connective ("and", "what about", ...), refers back with a
pronoun (it, they, this, ...), or is a bare fragment ("how often?", "in pregnancy?"). Unknown
words count as topical, so an unfamiliar question is left as typed: a missed follow-up costs a
retype, a wrong rewrite would answer a question nobody asked.

The rewrite splices the new question into the previous one's clause (wh-phrase, auxiliary,
subject, verb, object): pronouns take the previous subject or object, a missing object or a
bare wh-phrase borrows the previous clause, a population replaces the previous population,
a prepositional fragment is appended. When none of that applies, the previous question is
kept alongside ("how often? (following: ...)") so retrieval still sees the subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Clause", "is_follow_up", "parse", "resolve"]

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’/.+%-]*[A-Za-z0-9%]|[A-Za-z0-9]|[,;:]")

# Openers that always refer back ("what about women?" has no meaning alone).
_ALWAYS = (
    ("what", "about"),
    ("how", "about"),
    ("what", "of"),
    ("same", "for"),
    ("same", "question", "for"),
    ("and", "what", "about"),
    ("and", "how", "about"),
    ("what", "if"),
    ("and", "if"),
)
# Openers that refer back unless the question names its own subject.
_CONNECTIVES = {"and", "but", "also", "or", "so", "then", "plus"}

_SINGULAR = {"it", "this", "that"}
_PLURAL = {"they", "them", "these", "those"}
_POSSESSIVE = {"its": _SINGULAR, "their": _PLURAL}
_PRONOUNS = _SINGULAR | _PLURAL | set(_POSSESSIVE)

_WH = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how"}
_AUX = {
    "is", "are", "was", "were", "be", "been",
    "do", "does", "did",
    "should", "shall", "can", "could", "may", "might", "must", "will", "would",
    "has", "have", "had",
}  # fmt: skip
_PREPOSITIONS = {
    "for", "in", "with", "without", "after", "before", "at", "from", "to", "until", "during",
    "among", "over", "under", "above", "below", "beyond", "by", "of", "on", "if", "when",
    "while", "since", "between", "past",
}  # fmt: skip
_DETERMINERS = {"the", "a", "an", "any", "all", "some", "every", "each", "no"}
# Words that carry no subject of their own: function words, the pronouns above, question words.
_FUNCTION = (
    _WH
    | _AUX
    | _PREPOSITIONS
    | _DETERMINERS
    | _PRONOUNS
    | {
        "and", "but", "also", "or", "so", "then", "plus", "about", "not", "there", "than",
        "i", "we", "you", "he", "she", "him", "her", "his", "our", "my", "your", "me", "us",
        "one", "ones", "same", "question", "again", "too", "either", "only", "still", "yet",
        "much", "many", "more", "less", "most", "often", "long", "soon", "far", "well", "else",
        "other", "others", "instead", "ok", "okay", "please", "if", "it's", "that's", "what's",
    }
)  # fmt: skip
# Who: a population narrows a question but does not name its subject.
_POPULATION = {
    "adult", "adults", "woman", "women", "man", "men", "child", "children", "kid", "kids",
    "infant", "infants", "newborns", "adolescent", "adolescents", "teen", "teens", "teenagers",
    "girls", "boys", "elderly", "people", "persons", "patient", "patients", "individuals",
    "smoker", "smokers", "nonsmokers", "ex-smokers", "drinkers", "pregnant", "breastfeeding",
    "lactating", "postmenopausal", "premenopausal", "veterans", "athletes", "seniors",
}  # fmt: skip
# Modifiers that travel with a population ("average-risk adults", "older women").
_POPULATION_MODIFIERS = {
    "average-risk", "high-risk", "low-risk", "older", "younger", "young", "old", "elderly",
    "current", "former", "heavy", "light", "pregnant", "healthy", "asymptomatic", "black",
    "white", "hispanic", "asian", "obese", "overweight", "male", "female", "other",
}  # fmt: skip
# What is asked about, and generic clinical verbs: aspects, never a subject by themselves.
_GENERIC = (
    _POPULATION
    | _POPULATION_MODIFIERS
    | {
        "age", "ages", "aged", "year", "years", "yr", "yrs", "month", "months", "week", "weeks",
        "day", "days", "old", "dose", "doses", "dosage", "dosing", "frequency", "interval",
        "intervals", "duration", "often", "long", "time", "times", "first", "second", "line",
        "first-line", "second-line", "alternative", "alternatives", "option", "options",
        "choice", "safe", "safety", "unsafe", "risk", "risks", "risky", "benefit", "benefits",
        "harm", "harms", "side", "effect", "effects", "side-effects", "adverse", "evidence",
        "grade", "recommendation", "recommendations", "recommended", "recommend", "advised",
        "indicated", "contraindicated", "contraindication", "contraindications", "allowed",
        "ok", "fine", "appropriate", "necessary", "needed", "required", "useful", "effective",
        "good", "better", "best", "worse", "preferred", "target", "targets", "goal", "goals",
        "threshold", "cutoff", "level", "levels", "range", "value", "limit", "maximum",
        "minimum", "high", "higher", "low", "lower", "normal", "abnormal", "positive",
        "negative", "result", "results", "test", "tests", "testing", "tested", "screen",
        "screens", "screened", "screening", "treat", "treats", "treated", "treatment",
        "treatments", "therapy", "therapies", "drug", "drugs", "medication", "medications",
        "medicine", "medicines", "management", "manage", "managed", "follow-up", "followup",
        "monitoring", "monitor", "monitored", "check", "checked", "repeat", "repeated",
        "repeating", "start", "started", "starting", "begin", "begins", "beginning", "stop",
        "stopped", "stopping", "end", "ending", "continue", "continued", "continuing", "take",
        "taking", "taken", "took", "give", "given", "giving", "get", "getting", "got", "use",
        "used", "using", "need", "needs", "offer", "offered", "receive", "received", "consider",
        "considered", "prescribe", "prescribed", "avoid", "avoided", "apply", "applies",
        "change", "changes", "changed", "done", "do", "doing", "happen", "happens", "work",
        "works", "mean", "means", "say", "says", "guideline", "guidelines", "guidance",
        "history", "family", "pregnancy", "pregnancies", "lactation", "elderly", "also",
        "instead", "whom", "why", "case", "cases", "type", "kind", "condition", "situation",
        "group", "groups", "population", "exception", "exceptions", "there", "how",
        "over", "under", "above", "below", "every", "each", "year-old",
    }
)  # fmt: skip
# Base-form verbs that end a question's subject ("should <adults> start ...").
_VERBS = {
    "start", "stop", "begin", "end", "continue", "take", "get", "receive", "be", "have",
    "use", "screen", "treat", "offer", "prescribe", "consider", "undergo", "repeat", "test",
    "give", "avoid", "need", "switch", "add", "discontinue", "increase", "decrease", "reduce",
    "check", "monitor", "measure", "follow", "choose", "prefer", "recommend", "apply", "cover",
    "include", "exclude", "define", "mean", "cause", "prevent", "require", "qualify",
    "benefit", "work", "help", "change", "do", "go", "see", "refer", "vaccinate", "immunize",
}  # fmt: skip
# Verbs that take a gerund: "should women stop" + "be screened" = "stop being screened".
_GERUND_VERBS = {"start", "stop", "begin", "continue", "avoid", "keep", "finish", "consider"}
_CONDITIONAL = {"if", "unless"}
_SHORT = 3  # words: a question this short without a subject of its own is a fragment


@dataclass(frozen=True)
class Clause:
    """A question in parts: ``[wh] aux subject [verb object]``; each part as typed."""

    wh: list[str]
    aux: str
    subject: list[str]
    verb: str
    obj: list[str]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.replace("’", "'"))


def _lower(words: list[str]) -> list[str]:
    return [w.lower() for w in words]


def topical(words: list[str]) -> list[str]:
    """The words that name a subject: content words outside the generic vocabulary."""
    out = []
    for w in words:
        low = w.lower()
        if low in _FUNCTION or low in _GENERIC or low in {",", ";", ":"}:
            continue
        if re.fullmatch(r"[\d.,/%-]+", low):  # numbers and ranges: an age, a dose
            continue
        out.append(w)
    return out


def _opener(low: list[str]) -> int:
    """How many leading words form an opener that always refers back (0 if none)."""
    for opener in sorted(_ALWAYS, key=len, reverse=True):
        if tuple(low[: len(opener)]) == opener:
            return len(opener)
    return 0


def is_follow_up(question: str, previous: str | None) -> bool:
    """True when ``question`` leans on ``previous`` and cannot stand alone."""
    if not previous or not previous.strip():
        return False
    words = tokens(question)
    low = _lower(words)
    if not low:
        return False
    if _opener(low):
        return True
    if topical(words):
        return False
    return bool(low[0] in _CONNECTIVES or _PRONOUNS & set(low) or len(low) <= _SHORT)


def parse(question: str) -> Clause | None:
    """The question's clause, or None when it does not read as ``[wh] aux subject ...``."""
    words = [w for w in tokens(question) if w not in {",", ";", ":"}]
    low = _lower(words)
    i = 0
    while i < len(low) and low[i] in _CONNECTIVES:
        i += 1
    start = i
    # the wh-phrase: an optional preposition, a wh word, and what it governs up to the aux
    if i < len(low) and low[i] in _PREPOSITIONS and i + 1 < len(low) and low[i + 1] in _WH:
        i += 1
    if i < len(low) and low[i] in _WH:
        i += 1
        while i < len(low) and low[i] not in _AUX and i - start < 5:
            i += 1
    wh = words[start:i]
    if i >= len(low) or low[i] not in _AUX:
        return None
    aux = words[i]
    i += 1
    j = i
    while j < len(low) and low[j] not in _VERBS:
        j += 1
    if j >= len(low):  # no verb: "what is <the first-line treatment for hypertension>"
        return Clause(wh, aux, words[i:], "", [])
    return Clause(wh, aux, words[i:j], words[j], words[j + 1 :])


def _noun_phrase(words: list[str]) -> list[str]:
    """The head noun phrase: up to the first preposition (``aspirin`` of ``aspirin for ...``)."""
    for k, w in enumerate(words):
        if k and w.lower() in _PREPOSITIONS:
            return words[:k]
    return words


def _subject(clause: Clause) -> list[str]:
    """The clause's subject; in "which men should be screened" it is the wh-phrase's noun."""
    if clause.subject:
        return clause.subject
    low = _lower(clause.wh)
    k = next((i for i, w in enumerate(low) if w in _WH), len(low))
    return clause.wh[k + 1 :] if k < len(low) and low[k] in {"which", "what"} else []


def _predicate(clause: Clause, verb: str | None = None) -> list[str]:
    """Verb and object, with ``verb`` in place of the clause's own when given."""
    if verb is None:
        return [*([clause.verb] if clause.verb else []), *clause.obj]
    if clause.verb.lower() == "be" and clause.obj and clause.obj[0].lower().endswith("ed"):
        # passive: "should women <stop> being screened", not "stop screened"
        return [verb, "being", *clause.obj] if verb.lower() in _GERUND_VERBS else []
    return [verb, *clause.obj] if clause.verb else []


def _antecedents(previous: Clause | None) -> tuple[list[str], list[str]]:
    """What ``it`` and ``they`` point at in the previous question: (singular, plural)."""
    if previous is None:
        return [], []
    subject = _subject(previous)
    obj = _noun_phrase(previous.obj) if previous.verb.lower() != "be" else []
    if not topical(subject) and not any(w.lower() in _POPULATION for w in subject):
        subject = []
    if not topical(obj):
        obj = []
    plural_subject = bool(subject) and subject[-1].lower().endswith("s")
    # it/this: the object of "should adults take <aspirin>", else the copular subject of
    # "what is <the first-line treatment>"; they: a plural subject, else the object
    singular = obj or subject
    plural = subject if plural_subject else (obj or subject)
    return singular, plural


def _population_span(words: list[str]) -> tuple[int, int] | None:
    """Where the population phrase is in ``words`` (modifiers included), or None."""
    low = _lower(words)
    for k, w in enumerate(low):
        if w in _POPULATION and w not in _POPULATION_MODIFIERS:
            a = k
            while a > 0 and low[a - 1] in _POPULATION_MODIFIERS:
                a -= 1
            return a, k + 1
    return None


def _sentence(words: list[str]) -> str:
    text = ""
    for k, w in enumerate(words):
        w = _decap(w) if k and w.lower() in _AUX | _WH | _DETERMINERS else w
        text += w if (not text or w in {",", ";", ":"} or w.startswith("'")) else " " + w
    text = text.strip(" ,;:")
    if not text:
        return text
    first = text.split(" ", 1)[0]
    # keep acronyms and proper spellings ("HIV", "PrEP"); capitalise plain lower-case words
    if first.islower():
        text = text[0].upper() + text[1:]
    return text + "?"


def _decap(word: str) -> str:
    """Lower-case a sentence-initial word moved inside a sentence ("Should" -> "should");
    acronyms and names in capitals stay ("HIV", "PrEP")."""
    return word.lower() if word[:1].isupper() and word[1:].islower() else word


def _strip_opener(words: list[str]) -> list[str]:
    low = _lower(words)
    n = _opener(low)
    if n and low[n - 1] in _CONDITIONAL:
        n -= 1  # "what if they ...": the condition stays
    while n < len(low) and low[n] in _CONNECTIVES:
        n += 1
    return words[n:]


def _bare(word: str) -> str:
    low = word.lower()
    return low[:-2] if low.endswith("'s") else low


def resolve(question: str, previous: str | None) -> str | None:
    """The follow-up ``question`` rewritten to stand alone from ``previous`` (itself already
    resolved), or None when ``question`` is not a follow-up (it is used as typed)."""
    if previous is None or not is_follow_up(question, previous):
        return None
    prev_words = tokens(previous)
    prev = parse(previous)
    words = _strip_opener(tokens(question))
    low = _lower(words)
    resolved: list[str] | None = None
    if not words:
        resolved = prev_words
    elif low[0] in _CONDITIONAL:
        # "and if they have diabetes?": the previous question under a condition
        clause = _clause(words, prev) or words
        resolved = [*prev_words, *clause]
    elif parse(" ".join(words)) is None and not (_PRONOUNS & set(low)):
        resolved = _fragment(words, prev, prev_words)
    else:
        resolved = _clause(words, prev)
    shared = {_bare(w) for w in topical(resolved or [])} & {_bare(w) for w in topical(prev_words)}
    if resolved is None or not shared:
        # nothing in the previous question could be spliced in: keep it alongside
        return _sentence(tokens(question)) + " (following: " + _sentence(prev_words) + ")"
    return _sentence(resolved)


def _fragment(words: list[str], prev: Clause | None, prev_words: list[str]) -> list[str] | None:
    """No clause of its own: "how often?", "for smokers?", "women?", "statins?"."""
    low = _lower(words)
    if low[0] in _WH or (len(low) > 1 and low[0] in _PREPOSITIONS and low[1] in _WH):
        # a bare wh-phrase takes the previous clause: "how often" + "should adults take aspirin"
        if prev is None:
            return None
        return [*words, _decap(prev.aux), *_subject(prev), *_predicate(prev)]
    span = _population_span(words)
    target = _population_span(prev_words)
    if span is not None and span == (0, len(words)) and target is not None:
        # "what about women?" after "which men should be screened ...": swap the population
        return [*prev_words[: target[0]], *words, *prev_words[target[1] :]]
    if low[0] in _PREPOSITIONS or span is not None:
        qualifier = words if low[0] in _PREPOSITIONS else ["in", *words]
        return [*prev_words, *qualifier]
    return None


def _clause(words: list[str], prev: Clause | None) -> list[str] | None:
    """A clause of its own whose pronouns and missing object come from the previous one."""
    singular, plural = _antecedents(prev)
    out: list[str] = []
    replaced = False
    low = _lower(words)
    for k, w in enumerate(words):
        word = low[k]
        if word in _POSSESSIVE:
            antecedent = singular if _POSSESSIVE[word] is _SINGULAR else plural
            if antecedent:
                out.extend([*antecedent[:-1], antecedent[-1] + "'s"])
                replaced = True
                continue
        elif word in _PRONOUNS:
            antecedent = singular if word in _SINGULAR else plural
            nxt = low[k + 1] if k + 1 < len(low) else ""
            if word in {"this", "that", "these", "those"} and nxt and nxt not in _AUX | _VERBS:
                # a determiner ("this test"): the noun stays, the phrase is not swapped
                out.append(w)
                continue
            if antecedent:
                out.extend(antecedent)
                replaced = True
                continue
        out.append(w)
    clause = parse(" ".join(out))
    if clause is not None and prev is not None and clause.verb and not clause.obj and prev.obj:
        # "when should they stop" borrows "colorectal cancer screening" from "... start ..."
        predicate = _predicate(prev, clause.verb)
        if predicate:
            out = [*out[: len(out) - 1], *predicate] if out[-1] == clause.verb else out
            replaced = True
    if clause is not None and prev is not None and not clause.subject and not replaced:
        return None
    return out if replaced else None
