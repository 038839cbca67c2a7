"""Offline, regex-based PHI redaction for questions stored in the audit log.

This catches the structured identifiers clinicians most often paste into a question (emails,
US phone numbers, dates, SSNs, medical record numbers, ages over 89) and names where the wording
marks them as names: after a title ("Mrs. Alvarez", "Dr Chen") or a cue ("patient John Smith",
"named Maria Lopez", "for Mr Kowalski"). No offline name-recognition model ships with clinrag,
so a bare name with no cue ("does John Smith need a statin") is missed: "redacted" is a safety
net, not de-identification; use the "hashed" mode where questions may name patients.

Patterns are tuned to leave clinical numbers alone: blood pressures (130/80), doses
(0.5 mg/kg), ranges (1000-1500 mg), scores and ages under 90.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Literal

QuestionMode = Literal["verbatim", "redacted", "hashed"]
QUESTION_MODES: tuple[str, ...] = ("verbatim", "redacted", "hashed")

_MONTHS = (
    r"(?:(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?|May|MAY)"
)
_NAME = (
    r"[A-Z](?:['’][A-Z])?[a-z]+(?:[A-Z][a-z]+)*(?:-[A-Z]?[a-z]+)*\b"  # O'Neil, McDonald, Ann-Marie
)
# Capitalised words that follow "Patient" in instrument and programme names (PHQ-9 is the
# "Patient Health Questionnaire"), never the start of a person's name.
_NOT_NAMES = (
    r"(?:Health|Care|Safety|Education|Assessment|Reported|Centered|Centred|Portal|Records?"
    r"|Information|Controlled|Administered|Protection|Experience|Satisfaction|Access)"
)
# "may" is only a month when capitalised: "the dose may 2 x daily" is a verb.

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("[EMAIL]", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    # Before phones and MRNs: a bare SSN would otherwise be taken for part of either.
    (
        "[SSN]",
        re.compile(
            r"(?i:\b(?:SSN|social\s+security(?:\s+(?:number|no\.?|#))?)\s*[:#]?\s*)?"
            r"(?<!\d)(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?!\d)"
            r"|(?i:\b(?:SSN|social\s+security(?:\s+(?:number|no\.?|#))?)\s*[:#]?\s*)\d{9}(?!\d)"
        ),
    ),
    (
        "[MRN]",
        re.compile(
            r"(?i:\b(?:MRN|MR\s?#|med(?:ical)?\.?\s*rec(?:ord)?s?\.?(?:\s*(?:number|num\.?|no\.?|#))?"
            r"|(?:patient|pt\.?)\s*(?:id|#|number|no\.?)|record\s*(?:number|num\.?|no\.?|#))"
            r"\s*(?:is\s+)?[:#]?\s*#?\s*)"
            r"[A-Za-z]{0,3}-?\d[\dA-Za-z-]{2,}"
        ),
    ),
    (
        "[DATE]",
        re.compile(
            # 2024-03-04, 2024/3/4
            r"(?<![\d.])(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?![\d.])"
            # 03/04/2024, 3-4-24, 3.4.2024 (a year is required: 3/4 alone is often a ratio)
            r"|(?<![\d./])(?:0?[1-9]|[12]\d|3[01])([-/.])(?:0?[1-9]|[12]\d|3[01])\1"
            r"(?:19|20)?\d\d(?![\d/]|\.\d)"
            # March 3, 2024 / Mar. 3rd 2024 / March 3
            rf"|\b{_MONTHS}\s+(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?\b(?:,?\s+(?:19|20)\d\d\b)?"
            # 3 March 2024 / 3rd of March
            rf"|\b(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\b"
            r"(?:,?\s+(?:19|20)\d\d\b)?"
            # March 2024
            rf"|\b{_MONTHS}\s+(?:19|20)\d\d\b"
        ),
    ),
    (
        "[PHONE]",
        re.compile(
            r"(?<![\d/.])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}"
            r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?![\d/])"
        ),
    ),
    (
        "[NAME]",
        re.compile(
            # a title, then one to three capitalised words: "Mrs. Alvarez", "Dr Ann-Marie Chen"
            r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+"
            rf"{_NAME}(?:\s+[A-Z]\.?(?![a-z]))?(?:\s+{_NAME}){{0,2}}"
            # a cue word, then a capitalised name of two or three words: "patient John Smith"
            # (the cue is kept: it is group "cue")
            r"|(?P<cue>\b(?i:patient|pt\.?|named|called|name\s+is|name:|client|resident|mother"
            r"|father|daughter|son|husband|wife)\s+)"
            rf"(?!{_NOT_NAMES}\b){_NAME}(?:\s+[A-Z]\.?(?![a-z]))?(?:\s+{_NAME}){{1,2}}"
        ),
    ),
    # HIPAA Safe Harbor treats ages over 89 as identifying; younger ages are clinical context.
    (
        "[AGE>89]",
        re.compile(
            r"(?i:(?<=\bage\s)|(?<=\baged\s)|(?<=\bage:\s)|(?<=\bage:))(?:9\d|1[0-2]\d)\b"
            r"|\b(?:9\d|1[0-2]\d)(?=[- ]?(?i:y/?o\b|yrs?\b|years?[- ]old\b|year-old\b))"
        ),
    ),
)


def redact(text: str) -> str:
    """Replace recognised identifiers with bracketed tags such as ``[DATE]``."""
    for tag, pattern in _PATTERNS:
        if "cue" in pattern.groupindex:
            text = pattern.sub(_after_cue(tag), text)
        else:
            text = pattern.sub(tag, text)
    return text


def _after_cue(tag: str) -> Callable[[re.Match[str]], str]:
    """A replacement that keeps the cue word ("patient ") and swaps only the name for ``tag``."""
    return lambda match: (match.group("cue") or "") + tag


def question_hash(question: str) -> str:
    """sha256 hex of the question as typed, so equal questions can be matched across records."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()


def question_fields(question: str, mode: str) -> dict[str, str]:
    """The question fields to store in an answer record under the configured policy."""
    h = question_hash(question)
    if mode == "verbatim":
        return {"question": question, "question_hash": h}
    if mode == "redacted":
        return {"question": redact(question), "question_hash": h}
    if mode == "hashed":
        return {"question_hash": h}
    raise ValueError(
        f"Unknown audit question mode {mode!r}; set audit_questions to one of "
        f"{', '.join(QUESTION_MODES)}."
    )
