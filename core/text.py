"""Sentence splitting shared by chunking, citation alignment and attribution.

A small rule-based splitter: clinical text is full of decimals ("1.5 mg"), abbreviations
("e.g.", "U.S.") and list items, which generic splitters cut in the wrong places.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "e.g",
    "i.e",
    "etc",
    "vs",
    "dr",
    "mr",
    "mrs",
    "ms",
    "no",
    "fig",
    "approx",
    "u.s",
    "al",
    "st",
    "jr",
    "sr",
    "inc",
    "dept",
    "min",
    "max",
    "ref",
    "vol",
    "mo",
    "yr",
    "yrs",
    "wk",
    "wks",
}
_BOUNDARY = re.compile(r"([.!?])(\s*\[\d+(?:\s*,\s*\d+)*\])?[\"')\]]*(\s+)(?=[\"'(\[]?[A-Z0-9•\-])")
_WORD_BEFORE = re.compile(r"([A-Za-z.]+)$")
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text`` (whitespace trimmed, never empty)."""
    spans: list[tuple[int, int]] = []
    for line_start, line in _lines(text):
        start = 0
        for match in _BOUNDARY.finditer(line):
            end = match.end(3) - len(match.group(3))
            if match.group(1) == ".":
                word = _WORD_BEFORE.search(line[start : match.start(1)])
                if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
                    continue
                if word and len(word.group(1)) == 1 and word.group(1).isupper():
                    continue  # an initial, as in "J. Smith"
            spans.append((line_start + start, line_start + end))
            start = match.end(3)
        spans.append((line_start + start, line_start + len(line)))
    return [_trim(text, a, b) for a, b in spans if text[a:b].strip()]


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def _lines(text: str) -> list[tuple[int, str]]:
    # A line break ends a sentence only when the text is list- or paragraph-shaped; a soft wrap
    # inside a sentence (lower-case continuation) is kept together.
    out: list[tuple[int, str]] = []
    pos = 0
    current_start = 0
    parts = text.split("\n")
    buffer: list[str] = []
    for i, part in enumerate(parts):
        stripped = part.strip()
        continues = (
            buffer
            and stripped
            and stripped[0].islower()
            and not buffer[-1].rstrip().endswith((".", ":", "?", "!"))
        )
        if not continues and buffer:
            out.append((current_start, "\n".join(buffer)))
            buffer = []
        if not buffer:
            current_start = pos
        if stripped or buffer:
            buffer.append(part)
        elif not stripped:
            current_start = pos + len(part) + 1
        pos += len(part) + (1 if i < len(parts) - 1 else 0)
    if buffer:
        out.append((current_start, "\n".join(buffer)))
    return out


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens, used for lexical overlap."""
    return _TOKEN.findall(text.lower())


STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "being",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "this",
        "to",
        "was",
        "were",
        "which",
        "with",
        "should",
        "who",
        "what",
        "when",
        "how",
        "does",
        "do",
        "can",
        "may",
        "not",
        "no",
        "than",
        "these",
        "those",
        "also",
        "such",
        "per",
        "any",
        "all",
    ]
)


def content_tokens(text: str) -> set[str]:
    return {t for t in tokens(text) if t not in STOPWORDS}
