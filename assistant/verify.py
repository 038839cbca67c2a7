"""Rule-based entailment: does the evidence say what an answer sentence says?

Similarity tells whether a sentence is *about* its evidence; it cannot tell "start at 45" from
"start at any age". :func:`problems` reads a sentence against its evidence sentences and lists
every way the sentence claims more than, or other than, the evidence:

- **negation**: a "not", "no", "never" ... where the evidence statement the sentence speaks
  about has no negative word; an evidence negation the sentence drops ("beta blockers are not
  first line" -> "are first line"); an uncertain statement ("not enough evidence to say
  whether ...") turned into an assertion;
- **quantifiers**: "any", "all", "every", "only", "some", "most" ... that the statement the
  sentence speaks about does not use (synonyms grouped: all/every/each, any/whatever ...);
- **numbers, units, ages, intervals**: every quantity in the sentence must match the evidence
  quantity whose surrounding words match its own, so "HPV testing every 3 years" cannot borrow
  the 3 of cytology's interval; same value, same unit (81 mg is not 81 g, 10% a month is not
  10% a week), same direction (below 7% is not above 7%); intervals compare as durations
  ("annually" = "every 12 months", "biennial" = "every 2 years"); what a bare count counts
  ("2 negative Pap results") must be something the evidence mentions; names with digits
  (PHQ-9, H1N1) must be the evidence's;
- **drugs**: a drug name (a USAN/INN stem such as -statin, -pril, -sartan, -gliflozin, a
  common name, or a class word such as "beta" blocker) that the evidence does not name;
- **populations**: a group (women, men, pregnant people, children, adolescents, smokers, ...)
  the evidence does not name, or the group an evidence statement is restricted to, dropped
  when the sentence restates that statement;
- **added claims**: two or more content words that the evidence (and its passage's title and
  section, ``context``) does not cover, by stem or, given ``embed``, as a near synonym; or one
  such word that general English never uses (wordfreq), an invented one ("AccredEdHD").

Binding: a word of the sentence is judged against the evidence statement (sentence, or part
between semicolons) or quantity whose neighbouring words it shares most, rare shared words
weighing most; so support cannot be assembled from pieces of different statements.

Deterministic: rules, plus the embedding model align already uses (``embed``) for single-word
synonyms; no model of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from assistant.coverage import zipf
from core.text import STOPWORDS, split_sentences

Embed = Callable[[Sequence[str]], np.ndarray]

# cosine above which two single words count as the same concept ("yearly" ~ "annual")
SYNONYM_MIN_COSINE = 0.6
# a sentence adds a claim when this many of its content words are absent from the evidence
ADDED_CLAIM_MIN_WORDS = 2
# evidence items scoring at least this share of the best one count as pointed at
BINDING_SHARE = 0.65


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- vocabulary ------------------------------------------------------------------------------

NEGATIONS = _words("not no never none neither nor cannot without nothing nobody")
# words with negative polarity in evidence: a sentence's "not" may paraphrase them
NEGATIVE_POLARITY = NEGATIONS | _words(
    "avoid against stop insufficient lack lacks unless except exclude excluded instead rather "
    "little absent contraindicated contraindication discontinue omit unable refuse inadequate"
)
# an uncertain statement: a sentence restating it must keep the uncertainty
UNCERTAINTY = _words(
    "whether insufficient unclear uncertain unknown inconclusive unproven enough limited"
)
_QUANTIFIER_GROUPS: dict[str, str] = {
    "universal": "all every each everyone everybody universal universally",
    "free choice": "any anyone anybody whatever whichever regardless",
    "exclusive": "only solely exclusively sole",
    "always": "always invariably",
    "existential": "some selected selectively certain",
    "majority": "most majority mostly mainly",
    "few": "few rarely seldom",
    "none": "none nobody nothing",
}
QUANTIFIERS: dict[str, str] = {
    w: group for group, words in _QUANTIFIER_GROUPS.items() for w in words.split()
}
_POPULATION_GROUPS: dict[str, str] = {
    "women": "women woman female females girls mothers cervix",
    "men": "men man male males boys",
    "pregnant": "pregnant pregnancy pregnancies prenatal antenatal postpartum trimester perinatal",
    "children": "children child pediatric paediatric kids infants infant newborns newborn toddlers",
    "adolescents": "adolescents adolescent teenagers teens teen youth",
    "older adults": "elderly seniors geriatric",
    "smokers": "smokers smoker smoked smoking smoke smokes nonsmokers",
    "black": "black",
    "white": "white",
    "asian": "asian",
    "hispanic": "hispanic latino latina latinx",
    "transgender": "transgender",
    "veterans": "veterans veteran",
}
POPULATIONS: dict[str, str] = {
    w: group for group, words in _POPULATION_GROUPS.items() for w in words.split()
}
_GENERIC_ADULT = _words("adults adult")
# group words that name a condition or activity, not the people restricted to it
_CONDITION_WORDS = _words(
    "smoking smoke smoked smokes pregnancy pregnancies trimester prenatal antenatal perinatal "
    "postpartum cervix"
)
_PERSON_CUES = _words("who ever never have")
_NON_ADULT_GROUPS = _words("children adolescents")

# USAN/INN stems (WHO, "The use of stems in the selection of INN") that end drug names
_DRUG_STEM = re.compile(
    r"(?:statin|pril|prilat|sartan|olol|alol|dipine|thiazide|azide|formin|gliptin|gliflozin|"
    r"glutide|mab|nib|vir|virine|cillin|mycin|floxacin|cycline|azole|prazole|tidine|terol|"
    r"tropium|isone|asone|olone|onide|azepam|azolam|caine|xaban|gatran|parin|grel|profen|"
    r"fenac|oxetine|traline|opram|ipramine|triptyline|lukast|semide|adone|idone|codone|"
    r"morphone|orphine|trexone|oxone|tegravir|citabine|barbital|setron|triptan|afil|zodone|"
    r"apine|peridol|glinide|glitazone|ride)$"
)
_NOT_DRUGS = _words("ride pride bride stride chloride fluoride override provide")
DRUG_NAMES = _words(
    "aspirin insulin warfarin heparin morphine codeine fentanyl tramadol acetaminophen "
    "paracetamol ibuprofen naproxen digoxin lithium nitroglycerin penicillin nicotine "
    "varenicline bupropion metformin levothyroxine allopurinol colchicine ezetimibe niacin "
    "spironolactone hydralazine gabapentin pregabalin ketamine"
)
# classes, and the words that tell one class from another ("beta" vs "calcium channel")
DRUG_CLASSES = _words(
    "statin statins diuretic diuretics ace arb arbs beta calcium angiotensin renin nsaid "
    "nsaids opioid opioids benzodiazepine benzodiazepines corticosteroid corticosteroids "
    "steroid steroids antibiotic antibiotics antidepressant antidepressants anticoagulant "
    "anticoagulants anticonvulsant anticonvulsants antiviral antivirals antiretroviral "
    "antipsychotic antipsychotics antihistamine antihistamines sglt2 glp dpp ics laba saba "
    "lama ssri ssris snri ppi ppis sulfonylurea sulfonylureas biologic biologics vaccine "
    "vaccines immunotherapy chemotherapy placebo"
)
# reporting and hedging words: an answer wraps its claim in them without adding to it
DISCOURSE = _words(
    "recommend recommends recommended recommendation recommendations guideline guidelines "
    "guidance document documents statement summary source sources states stated say says "
    "said note notes according suggest suggests suggested advise advises advised clinician "
    "clinicians doctor doctors provider providers patient patients people person persons "
    "individual individuals must might could would will generally typically usually however "
    "therefore thus so because if then there here one ones them they he she we you your our "
    "his her into about over under also well just very more less other given make made get "
    "gets use used using take taken need needs needed own between after before during while "
    "within up out way ways time times task force uspstf cdc ada acip nhlbi aha acc whether "
    "both either same new current currently often"
)
# light verbs: they link a claim's parts without adding to it
LIGHT_VERBS = _words(
    "become becomes remain remains stay stays seem seems appear appears happen happens occur "
    "occurs mean means equal equals apply applies qualify qualifies suit suits include "
    "includes involve involves go goes come comes put set keep keeps let lets give gives do "
    "does done"
)
_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100,
}  # fmt: skip
_UNITS: dict[str, str] = {
    "mg": "mg", "milligram": "mg", "milligrams": "mg", "g": "g", "gram": "g", "grams": "g",
    "mcg": "mcg", "µg": "mcg", "ug": "mcg", "microgram": "mcg", "micrograms": "mcg",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "lb": "lb", "lbs": "lb", "pound": "lb",
    "pounds": "lb",
    "ml": "ml", "milliliter": "ml", "milliliters": "ml", "l": "l", "liter": "l", "liters": "l",
    "%": "%", "percent": "%", "per cent": "%", "cm": "cm", "mm": "mm", "mmhg": "mmhg",
    "mm hg": "mmhg", "year": "year", "years": "year", "yr": "year", "yrs": "year",
    "month": "month", "months": "month", "week": "week", "weeks": "week", "wk": "week",
    "day": "day", "days": "day", "hour": "hour", "hours": "hour", "h": "hour",
    "minute": "minute", "minutes": "minute", "min": "minute", "pack-year": "pack-year",
    "pack-years": "pack-year", "pack year": "pack-year", "pack years": "pack-year",
    "puff": "puff", "puffs": "puff", "drink": "drink", "drinks": "drink", "tablet": "tablet",
    "tablets": "tablet", "pill": "tablet", "pills": "tablet", "dose": "dose", "doses": "dose",
    "mme": "mme", "cigarette": "cigarette", "cigarettes": "cigarette", "times": "times",
    "iu": "iu", "unit": "unit", "units": "unit",
}  # fmt: skip
# compound units first, so "mg/dL" is not read as "mg"
_UNIT_RE = re.compile(
    r"[\s-]?(?P<unit>mg/dl|mg/g|ml/min(?:/1\.73\s*m2)?|mmol/l|mm\s?hg|pack[- ]years?|"
    r"per\s?cent|µg|%|[a-zµ]+)"
)
_RATE_RE = re.compile(r"\s*(?:per|a|an|each|/)\s*([a-z]+)\b")
_TIME_DAYS = {"hour": 1 / 24, "day": 1.0, "week": 7.0, "month": 30.4, "year": 365.0}
_INTERVAL_WORDS = {
    "annual": 365.0, "annually": 365.0, "yearly": 365.0, "biennial": 730.0,
    "biennially": 730.0, "triennial": 1095.0, "monthly": 30.4, "quarterly": 91.0,
    "weekly": 7.0, "daily": 1.0,
}  # fmt: skip
_UP_BEFORE = _words("older over above more greater higher exceeding exceeds beyond least minimum")
_DOWN_BEFORE = _words("younger under below less lower fewer maximum within until")
_UP_AFTER = _words("older higher more greater above over larger longer bigger")
_DOWN_AFTER = _words("younger lower less fewer below under smaller shorter")
_RANGE_LINKS = _words("to - – through /")
_CLAUSE_MARKS = (",", ";", ":")


# --- tokens ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|[a-zµ][a-z0-9µ']*|%|/|-|–|[;:,()]")
_NUMBER = re.compile(r"^\d+(?:,\d{3})*(?:\.\d+)?$")
_SUFFIXES = ("ational", "ations", "ation", "ities", "ity", "ings", "ing", "ers", "er", "ies",
             "ied", "ancy", "ant", "es", "ed", "ly", "s", "ive", "ion", "ate", "at", "e", "al",
             "ic")  # fmt: skip


def _tokenize(text: str) -> tuple[str, list[str], list[int]]:
    low = text.lower().replace("’", "'")
    found = list(_TOKEN.finditer(low))
    return low, [m.group(0) for m in found], [m.start() for m in found]


# words that state an obligation: "must fast" says what "fasting is required" says
_REQUIREMENT = _words(
    "must required requires require requirement mandatory necessary obligatory need needed"
)


def stem(word: str) -> str:
    """A crude suffix stripper: forms of one word map to one stem (screened, screening)."""
    w = word.lower().strip("'")
    if w.endswith("n't"):
        return "not"
    if w in _REQUIREMENT:
        return "requir"
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                w, changed = w[: -len(suffix)], True
                break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
        w = w[:-1]  # stopped -> stopp -> stop
    return w


def _is_word(t: str) -> bool:
    return t[:1].isalpha()


def _is_negation(t: str) -> bool:
    return t in NEGATIONS or t.endswith("n't")


def _key(t: str) -> str | None:
    """The form a token takes in binding contexts: a stem, a number, or None (no meaning)."""
    if _NUMBER.match(t):
        return t.replace(",", "")
    if _is_word(t) and t not in STOPWORDS and len(t) > 1 and not _is_negation(t):
        return stem(t)
    return None


def _content(words: Sequence[str]) -> set[str]:
    return {stem(w) for w in words if _is_word(w) and _key(w) is not None}


def _clauses(words: Sequence[str]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for k, w in enumerate(words):
        if w in _CLAUSE_MARKS:
            if k > start:
                spans.append((start, k))
            start = k + 1
    if start < len(words):
        spans.append((start, len(words)))
    return spans


def _context(
    words: Sequence[str],
    position: int,
    skip: Sequence[int] = (),
    near_only: bool = False,
    numbers: bool = False,
) -> dict[str, float]:
    """Meaningful tokens around ``position``, nearer ones weighing more; within its clause,
    plus the rest of the sentence at a low weight (a clause often omits its subject).
    ``near_only``: the 4 tokens either side within the clause, numbers left out unless
    ``numbers`` (a quantifier binds through them: "all adults aged 76 to 85")."""
    clause = next(((a, b) for a, b in _clauses(words) if a <= position < b), (0, len(words)))
    if (
        sum(
            _is_word(w) and _key(w) not in (None, *_QUANTITY_KEYS)
            for w in words[clause[0] : clause[1]]
        )
        < 3
    ):
        clause = (0, len(words))  # "600 mg): intramuscular injection ...": read on
    out: dict[str, float] = {}
    for k, w in enumerate(words):
        key = _key(w)
        if key is None or k == position or k in skip or key in _QUANTITY_KEYS:
            continue
        inside = clause[0] <= k < clause[1]
        d = abs(k - position)
        if near_only and (not inside or d > 4 or (_NUMBER.match(w) and not numbers)):
            continue
        weight = (1.0 if d <= 3 else 0.6 if d <= 6 else 0.3) if inside else 0.15
        out[key] = max(out.get(key, 0.0), weight)
    return out


def _whole(words: Sequence[str]) -> dict[str, float]:
    """Every meaningful token of a sentence, equally weighted."""
    return {key: 1.0 for w in words if (key := _key(w)) is not None}


def _pointed(context: dict[str, float], candidates: Sequence[dict[str, float]]) -> list[int]:
    """The candidates whose contexts share the most with ``context`` (rare shared words weigh
    most); every candidate when nothing is shared."""
    if not candidates:
        return []
    df: dict[str, int] = {}
    for c in candidates:
        for w in c:
            df[w] = df.get(w, 0) + 1
    scores = [
        sum(weight * c[w] / df[w] for w, weight in context.items() if w in c)
        / math.sqrt(max(len(c), 1) / 8 + 1)
        for c in candidates
    ]
    best = max(scores)
    if best <= 0:
        return list(range(len(candidates)))
    return [k for k, v in enumerate(scores) if v >= BINDING_SHARE * best]


# --- quantities ------------------------------------------------------------------------------


@dataclass
class Quantity:
    value: float  # for an interval, its length in days
    unit: str | None
    kind: str  # "age", "interval" or "number"
    direction: str | None  # "up" (at least), "down" (at most) or None
    position: int  # token index
    label: str  # as written, for messages
    span: list[int] = field(default_factory=list)  # token indices it covers
    group: int = -1  # quantities of one range share a group
    nearby_units: set[str] = field(default_factory=set)  # the units its text uses


def _as_number(t: str) -> float | None:
    if _NUMBER.match(t):
        return float(t.replace(",", ""))
    return float(_NUMBER_WORDS[t]) if t in _NUMBER_WORDS else None


def quantities(text: str) -> list[Quantity]:
    """The numbers (digits or words) in ``text``, each with unit, kind and direction, and its
    intervals ("every 3 years", "annually", "once a month")."""
    low, words, starts = _tokenize(text)
    out: list[Quantity] = []
    i = 0
    while i < len(words):
        found = _interval_at(words, i)
        if found is not None:
            out.extend(found[0])
            i = found[1]
            continue
        value = _as_number(words[i])
        if value is None or _is_name_digit(low, words[i], starts[i]):
            i += 1
            continue
        unit = _unit_after(low, starts[i] + len(words[i]))
        label = words[i] if unit is None else (
            f"{words[i]}{unit}" if unit == "%" else f"{words[i]} {unit}"
        )  # fmt: skip
        out.append(Quantity(value, unit, "number", _direction(words, i), i, label, [i]))
        i += 1
    _link_ranges(out, words)
    _mark_ages(out, words)
    units = {q.unit.split("/")[0] for q in out if q.unit and q.kind != "interval"}
    for q in out:
        q.nearby_units = units
    return out


def _interval_at(words: Sequence[str], i: int) -> tuple[list[Quantity], int] | None:
    w = words[i]
    nxt = words[i + 1 : i + 5]
    if w == "every" and nxt:
        j, n = i + 1, 1.0
        if nxt[0] == "other":
            j, n = j + 1, 2.0
        elif (v := _as_number(nxt[0])) is not None:
            j, n = j + 1, v
            # "every 1 to 3 years": both ends are intervals
            if len(nxt) >= 4 and nxt[1] in (*_RANGE_LINKS, "or") and (v2 := _as_number(nxt[2])):
                unit = _UNITS.get(nxt[3])
                if unit in _TIME_DAYS:
                    span = list(range(i, i + 5))
                    return [
                        _interval(n, unit, i, f"every {n:g}-{v2:g} {unit}s", span, group=i),
                        _interval(v2, unit, i + 3, f"every {n:g}-{v2:g} {unit}s", span, i),
                    ], i + 5
        if j < len(words) and _UNITS.get(words[j]) in _TIME_DAYS:
            unit = _UNITS[words[j]]
            label = f"every {n:g} {unit}" + ("s" if n != 1 else "")
            return [_interval(n, unit, i, label, list(range(i, j + 1)))], j + 1
    if w in ("once", "twice") and len(nxt) >= 2 and nxt[0] in ("a", "per", "each", "every"):
        unit = _UNITS.get(nxt[1])
        if unit in _TIME_DAYS:
            per = 1.0 if w == "once" else 0.5
            return [_interval(per, unit, i, f"{w} a {unit}", [i, i + 1, i + 2])], i + 3
    if w in _INTERVAL_WORDS:
        return [Quantity(_INTERVAL_WORDS[w], "interval", "interval", None, i, w, [i])], i + 1
    return None


def _interval(
    value: float, unit: str, position: int, label: str, span: list[int], group: int = -1
) -> Quantity:
    days = value * _TIME_DAYS[unit]
    return Quantity(days, "interval", "interval", None, position, label, span, group)


def _is_name_digit(low: str, word: str, start: int) -> bool:
    """A digit glued to letters is part of a name (H1N1, SGLT2, GLP-1, PHQ-9), not a number."""
    if not word[0].isdigit():
        return False
    before = low[max(0, start - 2) : start]
    return before[-1:].isalpha() or bool(re.match(r"[a-z]-$", before))


_BOUND_WORDS = re.compile(
    r"\s+(?:or|and)\s+(?:higher|more|greater|older|lower|less|above|over|larger|smaller)"
)


def _unit_after(low: str, end: int) -> str | None:
    bound = _BOUND_WORDS.match(low, end)  # "90 or higher mm Hg"
    m = _UNIT_RE.match(low, end)
    if bound and (not m or _UNITS.get(m.group("unit").strip()) is None):
        m = _UNIT_RE.match(low, bound.end())
    if not m:
        return None
    raw = re.sub(r"\s+", " ", m.group("unit"))
    unit = _UNITS.get(raw) or (raw.replace(" ", "") if "/" in raw else None)
    if unit is None:
        return None
    # a rate: "10% per month", "1500 mg a day"
    rate = _RATE_RE.match(low, m.end())
    per = _UNITS.get(rate.group(1)) if rate else None
    return f"{unit}/{per}" if per and unit not in _TIME_DAYS and per != unit else unit


def _direction(words: Sequence[str], i: int) -> str | None:
    """Which way a bound goes: "below 7" and "no more than 2" are at most; "45 and older",
    "at least 20" and "10% or higher" are at least."""
    joined = " ".join(words[max(0, i - 3) : i])
    if re.search(r"\bno (more|greater|higher) than$|\bat most$|\bup to$", joined):
        return "down"
    if re.search(r"\bno (less|fewer|lower) than$|\bat least$", joined):
        return "up"
    before = [w for w in words[max(0, i - 3) : i] if w not in ("than", "of", "age", "aged")]
    prev = before[-1] if before else ""
    after = [w for w in words[i + 1 : i + 6] if _UNITS.get(w) is None and w not in ("hg", "/")]
    if len(after) >= 2 and after[0] in ("and", "or"):
        if after[1] in _UP_AFTER:
            return "up"
        if after[1] in _DOWN_AFTER:
            return "down"
    if prev in _UP_BEFORE:
        return "up"
    if prev in _DOWN_BEFORE:
        return "down"
    return None


def _link_ranges(qs: list[Quantity], words: Sequence[str]) -> None:
    """ "10 to 20 mg", "130/80 mm Hg", "between 100 and 125": a range's ends share unit and
    group."""
    for a, b in zip(qs, qs[1:], strict=False):
        if "interval" in (a.kind, b.kind):
            continue
        gap = [w for w in words[a.position + 1 : b.position] if not _is_unit_token(w)]
        between = words[max(0, a.position - 1) : a.position] == ["between"]
        if len(gap) == 1 and (gap[0] in _RANGE_LINKS or (between and gap[0] == "and")):
            a.group = b.group = a.group if a.group >= 0 else a.position
            if a.unit is None and b.unit is not None:
                a.unit = b.unit
                a.label = f"{a.label}{b.unit}" if b.unit == "%" else f"{a.label} {b.unit}"
            if gap[0] != "/":
                a.direction = b.direction = None  # "120 to 129" bounds both ways


def _is_unit_token(w: str) -> bool:
    return w in _UNITS or w in ("hg", "dl", "min")


def _mark_ages(qs: list[Quantity], words: Sequence[str]) -> None:
    for q in qs:
        if q.kind == "interval":
            continue
        before = words[max(0, q.position - 3) : q.position]
        after = words[q.position + 1 : q.position + 4]
        if (
            any(w in ("age", "aged", "ages") for w in before)
            or before[-2:] in (["older", "than"], ["younger", "than"])
            or after[:2] in (["years", "old"], ["year", "old"], ["years", "of"])
            or after[:2] in (["and", "older"], ["or", "older"], ["and", "younger"])
            or after[:2] in (["or", "younger"], ["and", "over"], ["and", "above"])
            or words[q.position][-1:] == "s"
            and words[q.position][:-1].isdigit()
        ):
            q.kind = "age"
    # the other end of an age range is an age too ("ages 45 to 49")
    groups = {q.group for q in qs if q.kind == "age" and q.group >= 0}
    for q in qs:
        if q.group in groups:
            q.kind = "age"
    for q in qs:
        if q.kind == "age" and q.unit == "year":
            q.unit = None
            q.label = q.label.replace(" year", "")


def _same(q: Quantity, e: Quantity) -> bool:
    if (q.kind == "interval") != (e.kind == "interval"):
        return False
    if q.kind == "interval":
        return abs(q.value - e.value) <= 0.05 * max(q.value, e.value)
    if abs(q.value - e.value) > 1e-9:
        return False
    if q.unit and not e.unit and e.nearby_units and q.unit.split("/")[0] not in e.nearby_units:
        return False  # "140 mg" against "140 or higher ... mm Hg"
    # a rate and its bare unit may be one dose written two ways ("81 mg once a day")
    if (
        q.unit
        and e.unit
        and q.unit != e.unit
        and (q.unit.split("/")[0] != e.unit.split("/")[0] or ("/" in q.unit and "/" in e.unit))
    ):
        return False
    return not (q.direction and e.direction and q.direction != e.direction)


_QUANTITY_KEYS = frozenset(stem(w) for w in (*_UNITS, "every", "other", "once", "twice"))


# --- evidence statements ---------------------------------------------------------------------


@dataclass
class Statement:
    text: str
    words: list[str]
    stems: set[str]
    context: dict[str, float]  # every meaningful token, weight 1
    quantities: list[Quantity]


def _statements(evidence: Sequence[str]) -> list[Statement]:
    out = []
    for passage in evidence:
        for sentence in split_sentences(passage) or [passage]:
            for part in _split_semicolons(sentence):
                words = _tokenize(part)[1]
                out.append(Statement(part, words, _content(words), _whole(words), quantities(part)))
    return out


def _split_semicolons(sentence: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for k, ch in enumerate(sentence):
        depth += (ch == "(") - (ch == ")")
        if ch == ";" and depth <= 0:
            parts.append(sentence[last:k])
            last = k + 1
    parts.append(sentence[last:])
    return [p.strip() for p in parts if p.strip()]


def _pointed_statements(
    context: dict[str, float], statements: Sequence[Statement]
) -> list[Statement]:
    return [statements[k] for k in _pointed(context, [s.context for s in statements])]


# --- the checks ------------------------------------------------------------------------------


def problems(
    sentence: str,
    evidence: Sequence[str],
    embed: Embed | None = None,
    context: Sequence[str] = (),
) -> list[str]:
    """Why ``evidence`` does not entail ``sentence``; empty when, as far as the rules see, it does.

    ``context`` (the evidence passages' titles and sections) may supply the topic words a
    sentence names and its evidence leaves implicit ("colorectal cancer", a drug named in the
    list item's heading); it never supplies numbers, negations, quantifiers or populations.
    """
    statements = _statements([e for e in evidence if e.strip()])
    if not statements:
        return ["no evidence"]
    words = _tokenize(sentence)[1]
    topic = [w for text in context for w in _tokenize(text)[1]]
    uncovered = _uncovered(words, statements, topic, embed)
    found = [
        *_negation(words, statements),
        *_quantifiers(words, statements),
        *_quantities(sentence, words, statements, uncovered),
        *_drugs(words, statements, topic),
        *_names(sentence, evidence),
        *_populations(words, statements),
    ]
    if len(uncovered) >= ADDED_CLAIM_MIN_WORDS:
        found.append(f"adds a claim the evidence lacks: '{' '.join(uncovered)}'")
    else:
        # one uncovered word passes as a paraphrase, unless no English text uses it: the
        # packaged model's "(AccredEdHD)" after a guideline's title, "hypertensitivity"
        invented = [w for w in uncovered if _invented(w)]
        if invented:
            found.append(f"a word neither the evidence nor English uses: '{' '.join(invented)}'")
    return list(dict.fromkeys(found))


# prefixes that make a word the word list lacks from one it has ("rescreening")
_PREFIXES = ("re", "pre", "non", "co", "post", "sub", "over", "under", "anti", "de", "un",
             "mis", "multi", "inter", "intra", "self")  # fmt: skip


def _invented(word: str) -> bool:
    """No English text uses it (wordfreq), nor its rest after a common prefix; a word with
    digits (a name such as PHQ-9) is judged by the name rule instead."""
    if any(c.isdigit() for c in word) or zipf(word) > 0.0:
        return False
    rests = [word[len(p) :].lstrip("-") for p in _PREFIXES if word.startswith(p)]
    return not any(len(r) >= 4 and zipf(r) > 0.0 for r in rests)


def _polar(words: Sequence[str]) -> bool:
    return any(w in NEGATIVE_POLARITY or w.endswith("n't") for w in words)


def _negation(words: Sequence[str], statements: Sequence[Statement]) -> list[str]:
    out = []
    # A negation the sentence adds: some negative word of the evidence must stand among the
    # same words ("never smoked" is not supported by "no symptoms" elsewhere in the evidence).
    negatives = [
        set(_negated(s.words, j, before=True))
        for s in statements
        for j, x in enumerate(s.words)
        if x in NEGATIVE_POLARITY or x.endswith("n't")
    ]
    for k, w in enumerate(words):
        if not _is_negation(w) or _is_bound(words, k):
            continue
        mine = set(_negated(words, k))
        if not any(mine & n for n in negatives) and (mine or not negatives):
            cue = "not" if w.endswith("n't") else w
            out.append(f"negation: '{cue}' absent from the evidence")
    stems = [stem(x) if _is_word(x) else x for x in words]
    for s in statements:
        for k, w in enumerate(s.words):
            # "prescribe immediate-release rather than extended-release" negates the latter
            contrast = s.words[k - 1 : k + 1] in (["rather", "than"], ["instead", "of"])
            if (_is_negation(w) or contrast) and _drops(words, stems, s.words, k):
                phrase = " ".join([w, *[x for x in s.words[k + 1 : k + 5] if _is_word(x)][:3]])
                out.append(f"negation: the evidence says '{phrase}', the sentence drops it")
    # an uncertain statement turned into an assertion: the sentence states what only that
    # statement talks about, with no uncertain or negative word of its own
    if not set(words) & (UNCERTAINTY | NEGATIVE_POLARITY):
        mine = set(_whole(words))
        hedges = {stem(u) for u in UNCERTAINTY | NEGATIVE_POLARITY}
        for k, st in enumerate(statements):
            if not (set(st.words) & UNCERTAINTY and _polar(st.words)):
                continue
            others = set().union(*(o.context for j, o in enumerate(statements) if j != k))
            own = set(st.context) - others - hedges
            if own and len(mine & own) >= min(3, len(own)):
                out.append("certainty: the evidence is uncertain, the sentence asserts")
                break
    return out


# a negation reaches over a list ("does not cover A, B, or C") but not over a conjunction
def _is_bound(words: Sequence[str], k: int) -> bool:
    """ "no more than 2", "not later than 6 weeks": a bound on a number, which the number rules
    check (its direction), not the negation of a statement."""
    return words[k + 2 : k + 3] == ["than"] and words[k + 1] in (
        "more", "less", "fewer", "greater", "higher", "lower", "later", "earlier", "longer",
    )  # fmt: skip


def _negated(words: Sequence[str], k: int, before: bool = False) -> list[str]:
    """What the negative word ``k`` governs: up to 5 content stems after it, to the end of its
    phrase; the content word before it too when ``before`` ("fasting is not required") or when
    what follows says nothing by itself ("screening should not be done")."""
    after: list[str] = []
    for x in words[k + 1 :]:
        if x in _SCOPE_BREAKS or x == "," or len(after) >= 5:
            break
        if _is_word(x) and _key(x) is not None and x not in DISCOURSE and x not in LIGHT_VERBS:
            after.append(stem(x))
    if before or not after:
        for x in reversed(words[max(0, k - 4) : k]):
            if x in _SCOPE_BREAKS:
                break
            if _is_word(x) and _key(x) is not None and x not in DISCOURSE and x not in LIGHT_VERBS:
                return [stem(x), *after]
    return after


_SCOPE_BREAKS = _words("; : ( ) and or but unless because while whereas so")
_CONDITIONS = _words("when if where once")


def _drops(words: Sequence[str], stems: list[str], evidence: Sequence[str], k: int) -> bool:
    """Whether the sentence states, without a negative word near it, what evidence word ``k``
    negates: most of the negated phrase, its subject, and its condition ("do not start
    metformin when eGFR is 30 to 45" is not contradicted by "start metformin at 500 mg")."""
    scope: list[str] = []
    condition: list[str] = []
    j = k + 1
    while j < len(evidence) and evidence[j] not in _SCOPE_BREAKS and len(scope) < 8:
        if evidence[j] in _CONDITIONS:
            condition = [stem(x) for x in evidence[j + 1 :]
                         if _is_word(x) and x not in STOPWORDS][:4]  # fmt: skip
            break
        x = evidence[j]
        if _is_word(x) and x not in STOPWORDS and not _is_negation(x) and stem(x) not in scope:
            scope.append(stem(x))
        j += 1
    if not scope:
        return False
    present = [x for x in scope if x in stems]
    if not (present and (scope[0] in present or len(present) >= 3)):
        return False
    if len(present) < (len(scope) + 1) // 2:
        return False
    if condition and sum(x in stems for x in condition) < (len(condition) + 1) // 2:
        return False
    start = max((a for a, b in _clauses(list(evidence)) if a <= k), default=0)
    subject = _content(evidence[start:k]) - {"do", "should"}
    if subject and not subject & set(stems):
        return False
    for x in present:
        at = stems.index(x)
        if _polar(list(words[max(0, at - 4) : at + 3])):
            return False
    return True


def _quantifiers(words: Sequence[str], statements: Sequence[Statement]) -> list[str]:
    occurrences = [
        (QUANTIFIERS[x], _context(s.words, j, near_only=True, numbers=True))
        for s in statements
        for j, x in enumerate(s.words)
        if x in QUANTIFIERS
    ]
    out = []
    for k, w in enumerate(words):
        group = QUANTIFIERS.get(w)
        if group is None or (w == "most" and words[k - 1 : k] == ["at"]):
            continue
        if w == "any" and words[k + 1 : k + 2] in (["other"], ["more"]):
            continue
        if w in ("every", "each") and k + 1 < len(words):
            after = words[k + 1]
            if after == "other" or _as_number(after) is not None or after in _UNITS:
                continue  # an interval ("every 2 years"), judged as one
        mine = _context(words, k, near_only=True, numbers=True)
        pointed = _pointed(mine, [c for _, c in occurrences])
        if not any(occurrences[j][0] == group for j in pointed):
            out.append(f"quantifier '{w}' not in the evidence")
    return out


def _quantities(
    sentence: str, words: Sequence[str], statements: Sequence[Statement], uncovered: list[str]
) -> list[str]:
    every = [(e, _quantity_context(s.words, e, s.quantities)) for s in statements
             for e in s.quantities]  # fmt: skip
    mine = quantities(sentence)
    out = []
    for q in mine:
        context = _quantity_context(words, q, mine)
        candidates = [(e, c) for e, c in every if (e.kind == "interval") == (q.kind == "interval")]
        if q.kind == "age" and any(e.kind == "age" for e, _ in candidates):
            candidates = [(e, c) for e, c in candidates if e.kind == "age"]
        pointed = [candidates[j][0] for j in _pointed(context, [c for _, c in candidates])]
        if not any(_same(q, e) for e in pointed):
            out.append(_quantity_problem(q, pointed, [e for e, _ in every]))
            continue
        # what the number counts must be something the evidence mentions: "2 negative Pap
        # results" is not "2 negative co-test results"
        counted = []
        for w in words[q.span[-1] + 1 : q.span[-1] + 4]:
            if not _is_word(w) or w in STOPWORDS:
                break
            counted += [w] if w in uncovered else []
        if q.kind == "number" and q.unit is None and counted:
            out.append(f"number {q.label} counts '{counted[0]}', which the evidence does not")
    return out


def _quantity_context(
    words: Sequence[str], q: Quantity, siblings: Sequence[Quantity]
) -> dict[str, float]:
    """A quantity's context; a range's ends share theirs (45 in "45 to 49" binds like 49)."""
    ends = [s for s in siblings if s.group >= 0 and s.group == q.group] or [q]
    skip = [k for s in ends for k in s.span]
    out: dict[str, float] = {}
    for end in ends:
        for w, weight in _context(words, end.position, skip).items():
            out[w] = max(out.get(w, 0.0), weight)
    return out


def _quantity_problem(q: Quantity, pointed: list[Quantity], every: list[Quantity]) -> str:
    same_value = [e for e in every if e.kind != "interval" and abs(e.value - q.value) < 1e-9]
    if q.kind == "interval":
        others = list(dict.fromkeys(e.label for e in pointed if e.kind == "interval"))
        if others:
            return f"interval '{q.label}' differs from the evidence ({', '.join(others)})"
        return f"interval '{q.label}' not in the evidence"
    if same_value and q.unit and all(e.unit and e.unit != q.unit for e in same_value):
        return f"unit: {q.label} but the evidence has {same_value[0].label}"
    if q.direction and any(e.direction and e.direction != q.direction for e in same_value):
        bound = "at least" if q.direction == "up" else "at most"
        return f"direction: the sentence says {bound} {q.label}, the evidence the opposite"
    if q.kind == "age":
        ages = list(dict.fromkeys(e.label for e in pointed if e.kind == "age"))
        if ages:
            return f"age {q.label} differs from the evidence ({', '.join(ages)})"
    if same_value:
        return f"number {q.label}: the evidence gives it for something else"
    return f"number {q.value:g} not in the evidence"


def is_drug(word: str) -> bool:
    w = word.lower()
    return w in DRUG_NAMES or (len(w) >= 6 and w not in _NOT_DRUGS and bool(_DRUG_STEM.search(w)))


def _drugs(words: Sequence[str], statements: Sequence[Statement], topic: list[str]) -> list[str]:
    evidence_words = [w for s in statements for w in s.words]
    named = {stem(w) for w in evidence_words if _is_word(w)}
    # evidence that names no drug speaks of its passage's drug (a dose line under its heading)
    if not any(is_drug(w) or w in DRUG_CLASSES for w in evidence_words):
        named |= {stem(w) for w in topic if _is_word(w)}
    out = []
    for w in dict.fromkeys(words):
        if _is_word(w) and (is_drug(w) or w in DRUG_CLASSES) and stem(w) not in named:
            out.append(f"drug '{w}' not in the evidence")
    return out


_NAME_WITH_DIGITS = re.compile(r"\b[a-z][a-z0-9]*-?\d[a-z0-9]*\b")


def _names(sentence: str, evidence: Sequence[str]) -> list[str]:
    """Names with digits (PHQ-9, H1N1, SGLT2, GLP-1) must be the evidence's, character for
    character: PHQ-2 and PHQ-9 are different tools."""

    def found(text: str) -> set[str]:
        return {m.replace("-", "") for m in _NAME_WITH_DIGITS.findall(text.lower())}

    named = set().union(*(found(e) for e in evidence))
    return [f"name '{n}' not in the evidence" for n in sorted(found(sentence) - named)]


def _groups(words: Sequence[str], restricting: bool = False) -> set[str]:
    """The population groups ``words`` name ("white-coat" names none). ``restricting``: only
    words that name people (women, smokers, "who smoked"), not a condition ("smoking")."""
    found = set()
    for k, w in enumerate(words):
        if w not in POPULATIONS or words[k + 1 : k + 2] == ["-"]:
            continue
        person = w in ("smoked", "smoke", "smokes") and bool(_PERSON_CUES & set(words[k - 2 : k]))
        if restricting and w in _CONDITION_WORDS and not person:
            continue  # "current smoking" is a risk factor; "men who smoked" a group
        found.add(POPULATIONS[w])
    for k, w in enumerate(words[:-1]):
        if w == "older" and words[k + 1] in ("adults", "adult", "people", "patients"):
            found.add("older adults")
    return found


def _populations(words: Sequence[str], statements: Sequence[Statement]) -> list[str]:
    evidence_words = [w for s in statements for w in s.words]
    named = _groups(evidence_words)
    if any(q.kind == "age" and q.value >= 60 for s in statements for q in s.quantities):
        named.add("older adults")  # "65 and older" names them as well
    mine = _groups(words)
    out = [f"population '{g}' not in the evidence" for g in sorted(mine - named)]
    if (
        any(w in _GENERIC_ADULT for w in words)
        and named & _NON_ADULT_GROUPS
        and not mine & _NON_ADULT_GROUPS
        and not any(w in _GENERIC_ADULT for w in evidence_words)
    ):
        out.append("population 'adults' not in the evidence")
    # the group the statement the sentence restates is restricted to, dropped
    if not mine:
        pointed = _pointed_statements(_whole(words), statements)
        if len(pointed) == 1:
            restricted = _groups(pointed[0].words, restricting=True) - {"older adults"}
            shared = _content(words) & pointed[0].stems
            if restricted and len(shared) >= max(2, len(pointed[0].stems) // 3):
                out.append(
                    "population dropped: the evidence is about " + ", ".join(sorted(restricted))
                )
    return out


def _uncovered(
    words: Sequence[str], statements: Sequence[Statement], topic: list[str], embed: Embed | None
) -> list[str]:
    """The sentence's content words that neither the evidence nor its topic covers, by stem,
    spelling, or (given ``embed``) as a near synonym."""
    covered = {w for s in statements for w in s.words if _is_word(w)} | {
        w for w in topic if _is_word(w)
    }
    covered_stems = {stem(w) for w in covered}
    missing: list[str] = []
    for w in dict.fromkeys(words):
        if not _is_word(w) or len(w) < 3 or w in STOPWORDS or w in DISCOURSE or w in LIGHT_VERBS:
            continue
        if _is_negation(w) or w in QUANTIFIERS or w in POPULATIONS or w in _INTERVAL_WORDS:
            continue  # judged by their own rules
        if w in _NUMBER_WORDS or w in _UNITS or is_drug(w) or w in DRUG_CLASSES:
            continue
        if stem(w) in covered_stems or any(_same_word(w, c) for c in covered):
            continue
        missing.append(w)
    if missing and embed is not None:
        # a word no English text uses is nobody's synonym, however close its word pieces sit
        # ("hypertensitivity" embeds next to "hypertension")
        unseen = [w for w in missing if _invented(w)]
        seen = [w for w in missing if w not in unseen]
        kept = set(_not_synonyms(seen, sorted(covered), embed)) if seen else set()
        missing = [w for w in missing if w in kept or w in unseen]
    return missing


def _same_word(a: str, b: str) -> bool:
    """Spellings and compounds: "colonoscopies" ~ "colonoscopy", "first-line" ~ "line"."""
    n = min(len(a), len(b))
    return n >= 5 and a[: n - 1] == b[: n - 1] and abs(len(a) - len(b)) <= 3


def _not_synonyms(missing: list[str], covered: list[str], embed: Embed) -> list[str]:
    vocabulary = [w for w in covered if w not in STOPWORDS and len(w) > 2]
    if not vocabulary:
        return missing
    vectors = np.asarray(embed(missing + vocabulary), dtype=float)
    sims = vectors[: len(missing)] @ vectors[len(missing) :].T
    return [
        w for w, row in zip(missing, sims, strict=True) if float(row.max()) < SYNONYM_MIN_COSINE
    ]
