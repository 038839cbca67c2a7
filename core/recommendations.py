"""Recommendation statements in guideline text: found at ingest, read back at answer time.

A recommendation statement is a sentence or list item that says what to do for whom: it has a
recommendation verb ("recommends", "should", "screen", "start", "do not use", "first line"),
a grade ("grade B", "strong recommendation"), an age range ("ages 45 to 49", "adults 18 and
older") or an interval ("every 10 years", "annually"). A statement that ends with a colon and
introduces a list ("Four drug classes are first line:") takes its list items with it, since
the items are what it recommends.

Ingest stores each chunk's statements as character spans in the chunk's metadata
(:data:`METADATA_KEY`, a JSON string, so the value stays a scalar wherever metadata goes).
Chunks ingested before this existed, or under an older :data:`VERSION` of the rules, have none
or stale ones; :func:`spans` then finds them in the text, so answers never depend on a
re-ingest. Standard library only: ingest and the assistant both read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from core.text import sentence_spans

METADATA_KEY = "recommendations"
# Bump when the rules below change: stored spans of another version are recomputed on read.
# 2: "younger than 21" is an age range without the word "age"; 3: unmarked list items;
# 4: "vaccinate", "immunize", "refer", "counsel" as imperatives ("Pregnancy: vaccinate ...")
VERSION = 4
# Longest sentence taken as an unmarked list item (characters)
MAX_UNMARKED_ITEM = 160

_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
_VERB = re.compile(
    r"\b(?:recommends?|recommended|should|must|prefer|preferred|"
    r"(?:is|are)\s+(?:not\s+)?(?:the\s+)?(?:usual\s+|preferred\s+|initial\s+)?first"
    r"(?:[- ]line|\s+(?:drug|choice|treatment|therapy|agent))|"
    r"(?:goal|target)\s+is|(?:is|are) reasonable|suggests?|suggested|"
    r"do not (?:use|give|start|combine|prescribe|offer|screen|routinely)|don't|avoid|"
    r"(?:be|is|are) offered)\b",
    re.I,
)
# Imperatives count where an instruction starts: the beginning, or after ':', ';' or ','
# ("Ages 45 to 49: screen all adults"); elsewhere "use" or "start" are ordinary words.
_IMPERATIVE = re.compile(
    r"(?:^|[:;,]\s+)(?:screen|offer|start|initiate|begin|avoid|consider|use|give|prescribe|"
    r"treat|add|stop|discontinue|reassess|recheck|check|repeat|follow up|decide|ask|document|"
    r"vaccinate|revaccinate|immuni[sz]e|refer|counsel)\b",
    re.I,
)
_DIRECTIVE = re.compile(r"\b(?:should|must|recommends?|recommended|do not|don't)\b", re.I)
_GRADE = re.compile(
    r"\bgrade\s+(?:[A-D]|I)\b|\b(?:strong|weak|conditional|moderate)\s+recommendation\b|"
    r"\((?:strong|weak|conditional)\)|\bclass\s+(?:I{1,3}|IIa|IIb)\b",
    re.I,
)
_GRADE_VALUE = re.compile(
    r"\bgrade\s+([A-D]|I)\b|\b(strong|weak|conditional)\b(?=\s+recommendation|\))|"
    # the USPSTF's own form: "( A recommendation )", "(D recommendation)", "(I statement)"
    r"\(\s*([A-D])\s+recommendation\s*\)|\(\s*(I)\s+statement\s*\)",
    re.I,
)
_AGE = re.compile(
    r"\b(?:ages?|aged)\s+(\d{1,3})\s*(?:to|-|–|through)\s*(\d{1,3})\b|"
    r"\b(?:ages?|aged)?\s*(\d{1,3})\s+(?:years\s+)?(?:and|or)\s+(?:older|over)\b|"
    r"\b(?:ages?|aged)?\s*(\d{1,3})\s+(?:years\s+)?(?:and|or)\s+(?:younger|under)\b|"
    r"\b(?:over|above)\s+age\s+(\d{1,3})\b|\bolder than\s+(?:age\s+)?(\d{1,3})\b|"
    r"\b(?:under|younger than|below)\s+age\s+(\d{1,3})\b|\byounger than\s+(\d{1,3})\b|"
    r"\b(\d{1,3})\s*(?:to|-|–)\s*(\d{1,3})\s+years?\s+(?:old|of age)\b|"
    # "starting at age 50 years and continuing until age 75 years" (USPSTF 2016)
    r"\b(?:starting|beginning|from)\s+(?:at\s+)?age\s+(\d{1,3})(?:\s+years?)?\s+(?:and\s+)?"
    r"(?:continuing\s+)?(?:until|to|through)\s+(?:age\s+)?(\d{1,3})\b",
    re.I,
)
_INTERVAL = re.compile(
    r"\bevery\s+(?:\d+(?:\.\d+)?\s*(?:to|-|–|or)\s*)?(?:\d+(?:\.\d+)?\s+|other\s+)?"
    r"(?:day|week|month|year)s?\b|\b(?:annually|yearly|monthly|weekly|biennially)\b|"
    r"\bonce\s+(?:a|per|every)\s+(?:day|week|month|year)\b|\b(?:per|a)\s+year\b",
    re.I,
)
# An amount given, not a level measured: "90 mL/min" (kidney function) and "126 mg/dL"
# (glucose) are not doses; "200 mg/25 mg" and "1 mg/kg" are.
_DOSE = re.compile(
    r"\b\d+(?:\.\d+)?\s*(?:mg|mcg|µg|g|units?|ml|mL)\b"
    r"(?!\s*/\s*(?:min|dl|l|m2|h|hr|hour|1\.73)\b)",
    re.I,
)
_BIBLIOGRAPHIC_SECTION = re.compile(r"\b(source|references?|citation|bibliography|about)\b", re.I)
_BIBLIOGRAPHIC_LINE = re.compile(r"^\s*(title|url|source|citation|doi|related|year)\s*:", re.I)
_RECOMMENDATION_SECTION = re.compile(r"\brecommendations?\b", re.I)


@dataclass(frozen=True)
class Statement:
    """One recommendation statement of a chunk: its span and what it states."""

    start: int  # character offsets in the chunk's text
    end: int
    text: str  # as a reader should see it: list markers removed, a list joined into one line
    verb: bool
    grade: str | None  # "A", "B", "strong", ... as written
    ages: tuple[int, int | None] | None  # (lowest age, highest age or None for "and older")
    interval: bool
    dose: bool

    @property
    def recommends(self) -> bool:
        """Says what to do (a verb or a grade), not only for whom or how often."""
        return self.verb or self.grade is not None

    @property
    def directs(self) -> bool:
        """Says what to do as an instruction: a grade, an imperative, "should", "must" or
        "recommend"; not a report that "modeling suggested" something."""
        return self.grade is not None or bool(
            _IMPERATIVE.search(self.text) or _DIRECTIVE.search(self.text)
        )


def find(text: str, section: str = "") -> list[tuple[int, int]]:
    """Spans of the recommendation statements in a chunk's text, in order."""
    last = section.split(" > ")[-1] if section else ""
    if _BIBLIOGRAPHIC_SECTION.search(last):
        return []
    in_recommendations = bool(_RECOMMENDATION_SECTION.search(last))
    sentences = sentence_spans(text)
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(sentences):
        a, b = sentences[i]
        sentence = text[a:b]
        j = i
        if sentence.rstrip().endswith(":") and _is_statement(sentence, listed=False):
            # a statement introducing a list: its items are what it recommends
            while j + 1 < len(sentences) and _LIST_MARKER.match(text[sentences[j + 1][0] :]):
                j += 1
            if j == i:
                # a list that lost its markers (a PDF's bullets): short one-sentence
                # paragraphs right after the colon
                while j + 1 < len(sentences) and _unmarked_item(text, sentences, j + 1):
                    j += 1
        whole = text[a : sentences[j][1]]
        item = bool(_LIST_MARKER.match(sentence))
        if _is_statement(whole, listed=item and in_recommendations):
            out.append((a, sentences[j][1]))
            i = j + 1
        else:
            i += 1
    return out


def _unmarked_item(text: str, sentences: list[tuple[int, int]], k: int) -> bool:
    """Whether sentence ``k`` is a paragraph of its own, short, after a paragraph break: a list
    item whose marker the document's format lost ("Stop screening when any of these applies:"
    then "The person has not smoked for 15 years." on its own line)."""
    a, b = sentences[k]
    before = text[sentences[k - 1][1] : a]
    after = text[b : sentences[k + 1][0]] if k + 1 < len(sentences) else "\n"
    return "\n" in before and "\n" in after and b - a <= MAX_UNMARKED_ITEM


def _is_statement(text: str, *, listed: bool) -> bool:
    body = _LIST_MARKER.sub("", text, count=1)
    if body.rstrip().endswith("?") or _BIBLIOGRAPHIC_LINE.match(body):
        return False
    return bool(
        listed
        or _VERB.search(body)
        or _IMPERATIVE.search(body)
        or _GRADE.search(body)
        or _AGE.search(body)
        or _INTERVAL.search(body)
    )


def display_text(raw: str) -> str:
    """A statement as quoted in an answer: list markers dropped, a list joined with '; '."""
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
    if not lines:
        return raw.strip()
    head, items = lines[0], lines[1:]
    head = _LIST_MARKER.sub("", head, count=1)
    if not items:
        return head
    parts = [_LIST_MARKER.sub("", x, count=1).rstrip(" .;") for x in items]
    joined = "; ".join(p for p in parts if p)
    return f"{head} {joined}."


def describe(text: str, start: int, end: int) -> Statement:
    """The statement at ``text[start:end]`` with its grade, ages and interval read off."""
    raw = text[start:end]
    grade = _GRADE_VALUE.search(raw)
    return Statement(
        start=start,
        end=end,
        text=display_text(raw),
        verb=bool(_VERB.search(raw) or _IMPERATIVE.search(_LIST_MARKER.sub("", raw, count=1))),
        grade=next(g for g in grade.groups() if g) if grade else None,
        ages=_ages(raw),
        interval=bool(_INTERVAL.search(raw)),
        dose=bool(_DOSE.search(raw)),
    )


# One person's age, as a question gives it: "a 19-year-old", "aged 65", "at age 70". Only for
# questions: in a guideline's text "a 45-year-old" is an example, not whom it addresses.
_ONE_AGE = re.compile(
    r"\b(\d{1,3})[- ](?:years?|yrs?)[- ]old\b|\b(?:aged?|at age)\s+(\d{1,3})\b", re.I
)


def ages(text: str) -> tuple[int, int | None] | None:
    """The population a question asks about: its first age range, else one person's age as
    a range of one year ("a 19-year-old": (19, 19)); None without either."""
    found = _ages(text)
    if found is not None:
        return found
    one = _ONE_AGE.search(text)
    if one is None:
        return None
    age = int(one.group(1) or one.group(2))
    return age, age


# A population named by its life stage ("Should all adults be screened?"), first match in this
# order: adults are 19 and older, as USPSTF statements count them beside "adolescents aged 12
# to 18"; children are 11 and younger.
_STAGES: tuple[tuple[re.Pattern[str], tuple[int, int | None]], ...] = (
    (re.compile(r"\bolder adults?\b|\belderly\b", re.I), (65, None)),
    (re.compile(r"\badolescents?\b|\bteen(?:ager)?s?\b", re.I), (12, 18)),
    (re.compile(r"\bchild(?:ren)?\b|\bkids?\b", re.I), (0, 11)),
    # men and women are adults; boys and girls are not ("Should men be screened for
    # depression?" read the adolescents' statement as if it were for them)
    (re.compile(r"\badults?\b|\b(?:wo)?m[ae]n\b", re.I), (19, None)),
)


_WOMEN = re.compile(r"\b(?:women|woman|female|females|girls?)\b", re.I)
_MEN = re.compile(r"\b(?:men|man|male|males|boys?)\b", re.I)
# A statement's population opens it: "Men aged 65 to 75 who have ever smoked: ...", "Women
# who have never smoked: do not screen". Later mentions ("offer screening to selected men")
# say what to do, not for whom.
_OPENING = re.compile(r"^\W*(?:(?:adult|older|younger|pregnant|nonpregnant)\s+)?(\w+)", re.I)


def names_sex(text: str) -> bool:
    """Whether ``text`` names a sex at all ("women", "men", "female", "boys")."""
    return bool(_WOMEN.search(text) or _MEN.search(text))


def sex(text: str) -> str | None:
    """ "women" or "men" when a question names one sex and not the other, else None."""
    women, men = bool(_WOMEN.search(text)), bool(_MEN.search(text))
    return "women" if women and not men else "men" if men and not women else None


_NEVER_SMOKED = re.compile(
    r"\bnever\s+(?:have\s+)?smoked\b|\bnon-?smokers?\b|\b(?:do|does) not smoke\b", re.I
)
_SMOKED = re.compile(
    r"\bever\s+smoked\b|\bsmokers?\b|\b(?:currently|who)\s+smokes?\b|\b(?:has|have|had)\s+"
    r"smoked\b|\bformer(?:ly)?\s+smok",
    re.I,
)


def smoking(text: str) -> str | None:
    """ "never" or "ever" when a text names whether the person has smoked, else None."""
    if _NEVER_SMOKED.search(text):
        return "never"
    return "ever" if _SMOKED.search(text) else None


def addressed_smoking(statement: str) -> str | None:
    """Whom a statement is for by smoking, read in its population (before its colon, when it
    has one): "Men aged 65 to 75 who have never smoked: offer ..." is "never"."""
    head, colon, _ = statement.partition(":")
    return smoking(head) if colon else None


def addressed_sex(statement: str) -> str | None:
    """ "women" or "men" when a statement opens with the sex it is for, else None."""
    match = _OPENING.match(statement)
    return sex(match.group(1)) if match else None


# The thresholds a statement applies within: a 10-year risk ("10% or higher", "7.5% to less
# than 10%", "below 10%") and a smoking history ("at least 20 pack-years", "a 20 pack-year
# smoking history"). A question's own value ("a 12% 10-year risk", "30 pack-years") picks the
# statement whose range holds it, as an age picks its age band.
_NUM = r"(\d+(?:\.\d+)?)"
_PERCENT_RANGE = re.compile(
    rf"{_NUM}\s*%\s*(?:to|-|–)\s*(less than\s+|under\s+|below\s+)?{_NUM}\s*%", re.I
)
_PERCENT_ABOVE = re.compile(rf"{_NUM}\s*%\s*or\s+(?:higher|more|greater|above)", re.I)
_PERCENT_BELOW = re.compile(rf"\b(?:below|under|less than)\s+{_NUM}\s*%", re.I)
_PACK_YEARS_ABOVE = re.compile(
    rf"\bat least\s+{_NUM}[- ]pack[- ]years?|{_NUM}[- ]pack[- ]years?\s+or\s+more|"
    rf"\b{_NUM}[- ]pack[- ]year smoking history",
    re.I,
)
_PERCENT = re.compile(rf"{_NUM}\s*%")
_PACK_YEARS = re.compile(rf"{_NUM}[- ]pack[- ]years?", re.I)
# Years since the person quit smoking: a statement's "quit within the past 15 years" (up to
# 15) or "has not smoked for 15 years" (15 or more), a question's "quit smoking 20 years ago"
_QUIT_WITHIN = re.compile(
    rf"\bquit(?:\s+smoking)?\s+within\s+the\s+(?:past|last)\s+{_NUM}\s+years\b", re.I
)
_QUIT_SINCE = re.compile(
    rf"\b(?:has|have)\s+not\s+smoked\s+(?:for|in)\s+(?:the\s+(?:past|last)\s+)?{_NUM}\s+years"
    rf"|\bquit(?:\s+smoking)?\s+(?:more\s+than|over|at\s+least)\s+{_NUM}\s+years\s+ago",
    re.I,
)
_QUIT_AGO = re.compile(
    rf"\b(?:quit|stopped|gave\s+up)(?:\s+smoking)?\s+{_NUM}\s+years\s+ago"
    rf"|\b(?:has|have)\s+not\s+smoked\s+(?:for|in)\s+{_NUM}\s+years",
    re.I,
)
Range = tuple[float, float, bool]  # low, high, whether high itself is inside


def thresholds(statement: str) -> dict[str, Range]:
    """The ranges of a risk ("%"), a smoking history ("pack-years") and the years since
    quitting a statement applies within, by unit; a unit it names no range of is absent."""
    out: dict[str, Range] = {}
    if m := _PERCENT_RANGE.search(statement):
        out["%"] = (float(m.group(1)), float(m.group(3)), not m.group(2))
    elif m := _PERCENT_ABOVE.search(statement):
        out["%"] = (float(m.group(1)), float("inf"), True)
    elif m := _PERCENT_BELOW.search(statement):
        out["%"] = (float("-inf"), float(m.group(1)), False)
    if m := _PACK_YEARS_ABOVE.search(statement):
        out["pack-years"] = (float(next(g for g in m.groups() if g)), float("inf"), True)
    if m := _QUIT_WITHIN.search(statement):
        out["years since quitting"] = (0.0, float(m.group(1)), True)
    elif m := _QUIT_SINCE.search(statement):
        out["years since quitting"] = (float(next(g for g in m.groups() if g)), float("inf"), True)
    return out


def quantities(question: str) -> dict[str, float]:
    """A question's own risk ("a 12% 10-year risk"), smoking history ("30 pack-years") and
    years since quitting ("quit 20 years ago")."""
    out: dict[str, float] = {}
    if m := _PERCENT.search(question):
        out["%"] = float(m.group(1))
    if m := _PACK_YEARS.search(question):
        out["pack-years"] = float(m.group(1))
    if m := _QUIT_AGO.search(question):
        out["years since quitting"] = float(next(g for g in m.groups() if g))
    return out


def outside(asked: dict[str, float], statement: str) -> bool | None:
    """Whether a statement's thresholds leave out the question's values: True when one does,
    False when they hold every value they bound, None when they bound none of them."""
    ranges = thresholds(statement)
    shared = [(asked[u], ranges[u]) for u in asked if u in ranges]
    if not shared:
        return None
    return any(
        not (low <= value < high or (closed and value == high))
        for value, (low, high, closed) in shared
    )


def overlap(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    """Whether two age ranges share an age (None: no upper bound)."""
    return a[0] <= (b[1] if b[1] is not None else 200) and b[0] <= (
        a[1] if a[1] is not None else 200
    )


@dataclass(frozen=True)
class Population:
    """Whom a question asks about: its ages (stated, else its life stage's), sex, smoking and
    own 10-year risk or smoking history. A statement for someone else answers about someone
    else, however well its words match."""

    ages: tuple[int, int | None] | None
    stated_ages: bool  # given as ages, not read from a life stage ("all adults")
    sex: str | None
    smoking: str | None
    values: dict[str, float]

    @classmethod
    def of(cls, question: str) -> Population:
        stated = ages(question)
        return cls(
            ages=stated or life_stage(question),
            stated_ages=stated is not None,
            sex=sex(question),
            smoking=smoking(question),
            values=quantities(question),
        )

    def compare(self, text: str, section: str = "", *, statement: bool = True) -> tuple[int, int]:
        """(held, excluded): how many of the question's traits a passage is addressed to, and
        how many it leaves out. Ages: its own, else its heading's ("Recommendation > Ages 21
        to 29"); a life stage only excludes. Sex, smoking and thresholds are read only in a
        statement (``statement``), where they say whom it is for."""
        held = excluded = 0
        addressed = _ages(text) or ages_in_heading(section)
        if self.ages is not None and addressed is not None:
            if overlap(self.ages, addressed):
                held += self.stated_ages
            else:
                excluded += 1
        if not statement:
            return held, excluded
        if self.sex is not None and addressed_sex(text) not in (None, self.sex):
            excluded += 1
        if self.smoking is not None and addressed_smoking(text) not in (None, self.smoking):
            excluded += 1
        outside_range = outside(self.values, text) if self.values else None
        if outside_range is not None:
            excluded += outside_range
            held += not outside_range
        return held, excluded


def life_stage(text: str) -> tuple[int, int | None] | None:
    """The ages of the life stage a question names ("adults": 19 and older), or None. Weaker
    than :func:`ages`: used only where the question gives no age."""
    for pattern, span in _STAGES:
        if pattern.search(text):
            return span
    return None


def _ages(text: str) -> tuple[int, int | None] | None:
    match = _AGE.search(text)
    return None if match is None else _age_range(match)


def age_ranges(text: str) -> list[tuple[int, int | None]]:
    """Every age range ``text`` states, in order ("Ages 45 to 49", "younger than 21")."""
    return [_age_range(m) for m in _AGE.finditer(text)]


def _age_range(match: re.Match[str]) -> tuple[int, int | None]:
    g = match.groups()
    if g[0] is not None:
        return int(g[0]), int(g[1])
    if g[2] is not None:
        return int(g[2]), None
    if g[3] is not None:
        return 0, int(g[3])
    for lowest in (g[4], g[5]):
        if lowest is not None:
            return int(lowest), None
    for highest in (g[6], g[7]):
        if highest is not None:
            return 0, int(highest)
    if g[8] is not None:
        return int(g[8]), int(g[9])
    return int(g[10]), int(g[11])


def ages_in_heading(section: str) -> tuple[int, int | None] | None:
    """The age range the innermost heading of a section path names ("Recommendation > Ages 21
    to 29"), or None."""
    return _ages(section.split(" > ")[-1]) if section else None


def to_metadata(found: list[tuple[int, int]]) -> str:
    """The metadata value for a chunk's statements (a string: metadata values are scalars)."""
    return json.dumps({"v": VERSION, "spans": [list(s) for s in found]}, separators=(",", ":"))


def spans(text: str, section: str, metadata: Mapping[str, str]) -> list[tuple[int, int]]:
    """The chunk's statements: stored at ingest when they are current, else found now."""
    stored = _stored(metadata.get(METADATA_KEY), len(text))
    return stored if stored is not None else find(text, section)


def _stored(value: str | None, length: int) -> list[tuple[int, int]] | None:
    if not value:
        return None
    try:
        data = json.loads(value)
        if data.get("v") != VERSION:
            return None
        out = [(int(a), int(b)) for a, b in data["spans"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # unreadable: the text is still there to read them from
    if any(not 0 <= a < b <= length for a, b in out):
        return None
    return out
