"""Offline, regex-based PHI redaction for questions stored in the audit log.

This catches the structured identifiers clinicians most often paste into a question (emails,
US phone numbers, dates, SSNs, medical record numbers, ages over 89) and names where the wording
marks them as names: after a title ("Mrs. Alvarez", "Dr Chen") or a cue ("patient John Smith",
"named Maria Lopez", "for Mr Kowalski"). No offline name-recognition model ships with clinrag,
so a bare name with no cue ("does John Smith need a statin") is missed: "redacted" is a safety
net, not de-identification; use the "hashed" mode where questions may name patients.

Patterns are tuned to leave clinical numbers alone: blood pressures (130/80), doses
(0.5 mg/kg), ranges (1000-1500 mg), scores and ages under 90.

The question mode applies to every text derived from the question, not only the question
(:func:`protect_text` for the model's text and comments, :func:`protect_words` for short text
that repeats some of the question's words, such as an abstention reason naming them), and the
question hash is keyed (HMAC-SHA256) with a site key the caller reads with :func:`site_key`
and passes in, so an export cannot be used to confirm a guessed question.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable, Collection
from pathlib import Path
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


# ------------------------------------------------------------------ keyed hashes

# Recorded beside a keyed question hash. Records without it (written before the site key
# existed) hold the plain sha256 of the question: they are never rewritten.
QUESTION_HASH_ALG = "hmac-sha256"
# What a hashed text field holds instead of the text: the algorithm, then the hex digest.
HASHED_PREFIX = QUESTION_HASH_ALG + ":"
SITE_KEY_BYTES = 32


def site_key(path: Path) -> bytes:
    """The site's secret for keyed hashes, created owner-only (0600) on first use.

    Kept beside the audit signing key and guarded like it: whoever holds it can test guesses
    against the hashes in an export, which is what the key is there to prevent.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = _create_site_key(path)
    if len(data) < SITE_KEY_BYTES:
        raise ValueError(
            f"The question hashing key at {path} is damaged ({len(data)} bytes). Restore it "
            "from backup; a new key would make new question hashes unmatchable with old ones."
        )
    return data


def _create_site_key(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(SITE_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails when the name exists: of two processes starting on an empty home,
        # exactly one key wins and nobody reads a half-written one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path.read_bytes()


def keyed_hash(text: str, key: bytes) -> str:
    """HMAC-SHA256 hex of ``text`` under ``key``."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def question_hash(question: str, key: bytes | None = None) -> str:
    """The hash of the question as typed, so equal questions can be matched across records.

    With the site ``key`` (what answer records use) it is an HMAC: without the key nobody can
    confirm a guessed question against it. Without a key it is the plain sha256 that records
    written before the key existed hold.
    """
    if key is None:
        return hashlib.sha256(question.encode("utf-8")).hexdigest()
    return keyed_hash(question, key)


def question_fields(question: str, mode: str, key: bytes | None = None) -> dict[str, str]:
    """The question fields to store in an answer record under the configured policy."""
    h = question_hash(question, key)
    alg = {} if key is None else {"question_hash_alg": QUESTION_HASH_ALG}
    if mode == "verbatim":
        return {"question": question, "question_hash": h} | alg
    if mode == "redacted":
        return {"question": redact(question), "question_hash": h} | alg
    if mode == "hashed":
        return {"question_hash": h} | alg
    raise _unknown_mode(mode)


# ------------------------------------------------------------------ text derived from it

REDACTED = "[REDACTED]"
HASHED_WORD = "[hashed]"
_TOKEN = re.compile(r"[^\W_]+")
# The words an abstention reason takes from the question are the question's rare words,
# which assistant.coverage takes only from words of four letters or more.
_MIN_REPEATED_WORD = 4


def _words(text: str) -> set[str]:
    return {t.lower() for t in _TOKEN.findall(text)}


def hidden_words(question: str) -> frozenset[str]:
    """The question's words that redaction removed (the name after "patient", the digits of
    an MRN): no other field of a redacted record may show them.

    Letters-only words of one character and numbers of under five digits are left out: they
    are everywhere in clinical text ("5 mg", "type 2") and identify nobody on their own.
    """
    kept = _words(redact(question))
    return frozenset(
        word
        for word in _words(question) - kept
        if (len(word) >= 2 and not word.isdigit()) or len(word) >= 5
    )


def hide_words(text: str, words: Collection[str], tag: str) -> str:
    """``text`` with every whole word in ``words`` (lower-case) replaced by ``tag``."""
    if not words:
        return text
    return _TOKEN.sub(lambda m: tag if m.group().lower() in words else m.group(), text)


def protect_text(text: str, question: str, mode: str, key: bytes | None) -> str:
    """A text derived from the question (the model's answer, a comment) as ``mode`` allows.

    ``verbatim``: unchanged. ``redacted``: redacted like the question, and every word that
    redaction removed from the question is removed here too (a model repeats the patient's
    name without the cue that gave it away). ``hashed``: the keyed hash alone, so equal texts
    still match; ``key`` is required.
    """
    if mode == "verbatim":
        return text
    if mode == "redacted":
        return hide_words(redact(text), hidden_words(question), REDACTED)
    if mode == "hashed":
        if key is None:
            raise ValueError("hashing a text needs the site key")
        return HASHED_PREFIX + keyed_hash(text, key)
    raise _unknown_mode(mode)


def protect_words(text: str, question: str, mode: str) -> str:
    """Short text that repeats some of the question's words (an abstention reason naming
    the words no passage mentions), with those words hidden as ``mode`` requires.

    The rest stays readable, so the record still says why: ``redacted`` hides the words that
    redaction removed from the question; ``hashed`` hides every word of four letters or more
    that the question holds, each as ``[hashed]``, so their number is kept.
    """
    if mode == "verbatim":
        return text
    if mode == "redacted":
        return hide_words(text, hidden_words(question), REDACTED)
    if mode == "hashed":
        repeated = {w for w in _words(question) if len(w) >= _MIN_REPEATED_WORD}
        return hide_words(text, repeated, HASHED_WORD)
    raise _unknown_mode(mode)


def _unknown_mode(mode: str) -> ValueError:
    return ValueError(
        f"Unknown audit question mode {mode!r}; set audit_questions to one of "
        f"{', '.join(QUESTION_MODES)}."
    )
