"""Do the retrieved passages mention the question's specific terms? Checked before generation.

Three checks: the question's rare and subject words (:func:`check`), its numbered or
lettered subtype (:func:`other_subtype`: "type 1 diabetes" over passages that only ever
name type 2 diabetes), and its young population (:func:`other_population`: children over
passages that only address adults).

A question about a subject the library never covers ("What are the symptoms of
oculoectodermal syndrome?") still retrieves the nearest passages, on neighbouring subjects,
with embedding similarity close to that of a covered question, so relevance alone cannot tell
the two apart (docs/benchmarks.md, Abstention). The question's rare words can: when none of
them appears in any retrieved passage, the answer would rest on passages about something else.

"Rare" is judged against general English (wordfreq's Zipf scale: 3.0 is once per million
words), not against the library, because a small library lacks many everyday words ("dose")
that say nothing about whether it covers the subject. Words are compared by their stems, and
a stem one edit away from a passage's stem counts as present, so plurals, a typo in the
question ("vacination") and British spellings ("haemoglobin", "immunisation") do not trigger
an abstention.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from core import recommendations
from core.text import STOPWORDS, tokens
from core.types import Hit

# Words as the asker wrote them: lower-case after the first letter and at least four letters.
# Abbreviations (LDL, PrEP, HbA1c, FIT) are left out because libraries often spell them
# differently from the asker (A1C, F/TDF), and a wrong abstention costs more than a missed one.
_WORD = re.compile(r"\b[A-Za-z][a-z]{3,}\b")
# Shorter stems are only matched exactly: one edit turns many of them into other real words.
MIN_FUZZY_STEM = 5
# British -ise spellings ("immunisation", "randomised") stem apart from the American -ize ones
# ("immunis" against "immun"), more than one edit: both sides are written with z before
# stemming. A word that only has -ise ("exercise") is rewritten on both sides alike.
_ISE = re.compile(r"(?<=[a-z]{3})is(?=(?:e|ed|es|ing|ation|ations)$)")

# The word naming what a question is about, just before the kind of condition: "prostate
# cancer", "Lyme disease", "thyroid nodules". It counts as specific whatever its frequency in
# English: "prostate" (Zipf 3.7) passes the rare-word test, and a library without a prostate
# guideline answered a PSA question with colorectal age bands.
# The same for a vaccine: "zoster" in "the recombinant zoster vaccine" (a library with only an
# influenza guideline answered it with the flu shot's dose).
_SUBJECT = re.compile(
    r"\b([A-Za-z][a-z]{3,})\s+(?:cancers?|carcinomas?|tumou?rs?|diseases?|syndromes?|"
    r"disorders?|infections?|deficienc(?:y|ies)|fractures?|nodules?|vaccines?|vaccinations?)\b"
)
# Words in that place that say how, not what: "early cancer", "chronic disease".
_NOT_SUBJECT = frozenset(
    [
        "early",
        "late",
        "advanced",
        "chronic",
        "acute",
        "metastatic",
        "invasive",
        "recurrent",
        "primary",
        "secondary",
        "severe",
        "mild",
        "moderate",
        "common",
        "rare",
        "other",
        "this",
        "that",
        "these",
        "those",
        "such",
        "some",
        "many",
        "most",
        "each",
        "every",
        "what",
        "which",
        "their",
        "your",
        "with",
        "from",
        "have",
        "been",
        "into",
        "after",
        "before",
        "during",
        "among",
        "same",
        "single",
        "known",
        "existing",
        "underlying",
        "active",
        "latent",
        "cancer",
        "disease",
        # verbs before an unmodified condition: "Can biopsy improve cancer detection?"
        "improve",
        "improves",
        "reduce",
        "reduces",
        "increase",
        "increases",
        "prevent",
        "prevents",
        "predict",
        "predicts",
        "detect",
        "detects",
        "treat",
        "treats",
        "cause",
        "causes",
        "affect",
        "affects",
        "influence",
        "lower",
        "delay",
        "decrease",
        "worsen",
        "cure",
        "avoid",
        "screen",
        "diagnose",
        "manage",
        "control",
        "develop",
        "against",
        "without",
        "having",
        "about",
        "than",
        "versus",
        "give",
        "receive",
        "need",
        "needs",
        "measure",
        # degree, not what
        "different",
        "similar",
        "more",
        "less",
        "serious",
        "major",
        "minor",
        "certain",
        "specific",
        "new",
    ]
)

Stemmer = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class Coverage:
    specific: tuple[str, ...]  # question words rarer than the threshold, and its subject words
    missing: tuple[str, ...]  # of those, the ones no retrieved passage mentions
    subjects: tuple[str, ...] = ()  # of ``specific``, the words naming the condition's subject

    @property
    def covered(self) -> bool:
        """False when the passages mention none of the question's specific words, or none of
        its subject words.

        One missing word of several is often a paraphrase (a question asking whether a
        treatment is "efficacious" over an abstract that says "effective"); all of them
        missing means the subject itself is absent. On dev questions, requiring all rather than
        any cut the false abstentions on answerable PubMedQA questions to a third, for a third
        fewer catches on MedQuAD questions whose topic was removed (docs/benchmarks.md).
        The subject is the exception: passages that never name it ("zoster") are about
        something else however many of the other words ("recombinant") they share.
        """
        if self.subjects and set(self.subjects) <= set(self.missing):
            return False
        return not self.specific or len(self.missing) < len(self.specific)


@lru_cache(maxsize=4096)
def zipf(word: str) -> float:
    """How common ``word`` is in general English: log10 of uses per billion words (0 = unseen)."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def warm_up() -> None:
    """Load the English word list now (about half a second) rather than in the first answer."""
    zipf("clinical")


def specific_terms(question: str, max_zipf: float) -> list[str]:
    """The question's words rarer than ``max_zipf``, in order, without repeats."""
    seen: list[str] = []
    for match in _WORD.finditer(question):
        word = match.group().lower()
        if word not in STOPWORDS and word not in seen and zipf(word) < max_zipf:
            seen.append(word)
    return seen


def subject_terms(question: str) -> list[str]:
    """The words naming the subject of a condition the question asks about ("prostate" in
    "prostate cancer screening"), in order, without repeats."""
    seen: list[str] = []
    for match in _SUBJECT.finditer(question):
        word = match.group(1).lower()
        if word not in _NOT_SUBJECT and word not in STOPWORDS and word not in seen:
            seen.append(word)
    return seen


def _one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one insertion, deletion or substitution."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1 :] == b[i + 1 :]
    return a[i:] == b[i + 1 :]


def check(question: str, hits: Sequence[Hit], stem: Stemmer, max_zipf: float) -> Coverage:
    """Which of the question's specific terms appear in no retrieved passage (title included)."""
    if max_zipf <= 0:
        return Coverage((), ())
    subjects = subject_terms(question)
    specific = specific_terms(question, max_zipf)
    specific += [w for w in subjects if w not in specific]
    if not specific:
        return Coverage((), ())
    passage_words = set()
    for hit in hits:
        c = hit.chunk
        passage_words.update(tokens(" ".join((c.title, c.section, c.text))))
    present = set(stem(sorted({_ISE.sub("iz", w) for w in passage_words})))
    long_stems = [s for s in present if len(s) >= MIN_FUZZY_STEM]
    missing = []
    for word, s in zip(specific, stem([_ISE.sub("iz", w) for w in specific]), strict=True):
        if s in present:
            continue
        if len(s) >= MIN_FUZZY_STEM and any(_one_edit(s, p) for p in long_stems):
            continue
        missing.append(word)
    return Coverage(tuple(specific), tuple(missing), tuple(subjects))


# ------------------------------------------------------------------ numbered subtypes

# A subtype named by a number or a letter is another condition, however many words it shares
# with its siblings: a library holding only a type 2 diabetes guideline answered "What HbA1c
# target for adults with type 1 diabetes?" with the type 2 targets, and MedQuAD's "Long QT
# syndrome 3" is not its "Long QT syndrome 1". Every word of such a question is in the
# passages, so the word checks above cannot see it.
_MARK = r"(\d{1,2}[a-z]?|i{1,3}|iv|vi{0,3}|ix|x)"
_WORDS = r"[a-z][a-z0-9'-]*"
# the kind of condition a trailing number or "type N" follows, skipped to reach its name
_KIND = (
    r"(?:cancers?|diseases?|syndromes?|disorders?|deficienc(?:y|ies)|infections?|myopath(?:y|ies)"
    r"|dystroph(?:y|ies)|neuropath(?:y|ies)|dysplasias?|ataxias?|fibromatosis|diabetes|mellitus)"
)
_TYPE_FIRST = re.compile(rf"\btype\s+{_MARK}\s+({_WORDS})")  # type 1 diabetes
_TYPE_AFTER = re.compile(rf"\b({_WORDS})(?:\s+{_KIND})?\s*,?\s+type\s+{_MARK}\b")  # ... type 4
# long QT syndrome 3, inclusion body myopathy 2: the number ends the name
_NUMBERED = re.compile(rf"\b({_WORDS})\s+{_KIND}\s*,?\s+(\d{{1,2}}[a-z]?)(?=\s*(?:[?.,;:)]|$))")
_LETTERED = re.compile(r"\b(hepatitis|vitamin)\s+([a-ek])(?:\d{1,2})?\b")  # hepatitis B
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7",
          "viii": "8", "ix": "9", "x": "10"}  # fmt: skip


@dataclass(frozen=True)
class Subtype:
    """A named subtype: ``name`` the word it belongs to (stemmed), ``mark`` its number or
    letter, ``text`` as written."""

    name: str
    mark: str
    text: str


def subtypes(text: str, stem: Stemmer) -> list[Subtype]:
    """The numbered or lettered subtypes ``text`` names ("type 2 diabetes", "hepatitis C")."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a letter whose lower case is longer: spans would shift
        text = lowered
    found: list[tuple[str, str, str]] = []
    for m in _TYPE_FIRST.finditer(lowered):
        found.append((m.group(2), m.group(1), text[m.start() : m.end()]))
    for pattern in (_TYPE_AFTER, _NUMBERED, _LETTERED):
        for m in pattern.finditer(lowered):
            found.append((m.group(1), m.group(2), text[m.start() : m.end()]))
    found = [f for f in found if f[0] not in STOPWORDS and f[0] not in _NOT_SUBJECT]
    if not found:
        return []
    names = stem([name for name, _, _ in found])
    return [
        Subtype(name, _ROMAN.get(mark, mark), " ".join(written.split()).rstrip(","))
        for name, (_, mark, written) in zip(names, found, strict=True)
    ]


def _read(hits: Sequence[Hit]) -> str:
    """The passages as the subtype and population checks read them, titles included."""
    return "\n".join(f"{h.chunk.title}. {h.chunk.section}. {h.chunk.text}" for h in hits)


@dataclass(frozen=True)
class OtherSubtype:
    """The question's subtype, absent from passages that name only others of its kind."""

    asked: str  # as the question writes it: "type 1 diabetes"
    held: tuple[str, ...]  # as the passages write the others: ("type 2 diabetes",)

    def __str__(self) -> str:
        shown = ", ".join(self.held[:3]) + (", ..." if len(self.held) > 3 else "")
        return f"{self.asked} (only {shown})"


def other_subtype(question: str, hits: Sequence[Hit], stem: Stemmer) -> OtherSubtype | None:
    """The question's numbered or lettered subtype when the retrieved passages (titles
    included) name other subtypes of the same condition and never this one; else None.

    Passages that name no subtype of it at all are left to :func:`check`: a guideline on
    "diabetes" may well hold the answer for type 1.
    """
    asked = subtypes(question, stem)
    if not asked:
        return None
    held = subtypes(_read(hits), stem)
    for a in asked:
        same = [h for h in held if h.name == a.name]
        if same and all(h.mark != a.mark for h in same):
            held_as = {h.text.lower(): h.text for h in reversed(same)}  # first spelling kept
            return OtherSubtype(
                a.text, tuple(held_as[k] for k in dict.fromkeys(h.text.lower() for h in same))
            )
    return None


# ------------------------------------------------------------------ children and adults

# Words that put a question (or a passage) under 18. "minor" is left out: passages use it as
# an adjective ("minor surgery").
_YOUNG = re.compile(
    r"\b(?:child(?:ren|hood)?|kids?|p(?:a)?ediatric|adolescents?|teen(?:ager)?s?|infants?|"
    r"newborns?|neonates?|toddlers?|youths?)\b",
    re.I,
)
_ADULT = re.compile(r"\badults?\b", re.I)
ADULT_AGE = 18


def other_population(question: str, hits: Sequence[Hit]) -> OtherSubtype | None:
    """Men asked about, over passages that address women only ("Should men get screening
    mammograms?" was answered yes with the women's grade B), or the reverse; and children
    asked about, over passages that address adults only: a library without
    children's guidance quoted "screening now begins at age 45" for "At what age should
    children start colorectal cancer screening?", and the adult blood pressure goal for
    children with hypertension.

    Read in the leading document's passages only. They address the young when they name
    them ("children", "adolescents", even to exclude them: then they say so) or state an age
    range starting under 18 ("younger than 21", "ages 4 to 11"); adults only when they name
    adults or their ages and never the young. A question naming adults as well ("adults and
    adolescents") is left alone.
    """
    if not hits:
        return None
    # whom the guideline that would answer is for: another document's passage ("Among men
    # aged 65 to 75", an aneurysm guideline) says nothing about a breast screening guideline
    text = _read([h for h in hits if h.chunk.doc_id == hits[0].chunk.doc_id])
    asked_sex, held_sex = recommendations.sex(question), recommendations.sex(text)
    if asked_sex and held_sex and held_sex != asked_sex:
        return OtherSubtype(asked_sex, (held_sex,))
    asked = _YOUNG.search(question)
    if asked is None or _ADULT.search(question):
        return None
    ranges = recommendations.age_ranges(text)
    if _YOUNG.search(text) or any(low < ADULT_AGE for low, _ in ranges):
        return None
    if not (_ADULT.search(text) or ranges):
        return None
    return OtherSubtype(asked.group(0), ("adults",))
