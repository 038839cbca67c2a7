"""Plain text and Markdown loaders."""

from __future__ import annotations

import re

from core.errors import LoadError
from core.types import Block
from ingest.loaders.metadata import split_front_matter

# "#"s, space, text; trailing "#"s are stripped in code. The former single regex,
# ``^(#{1,6})\s+(.+?)\s*#*\s*$``, backtracked quadratically on a "#" line padded with spaces.
_MD_HEADING = re.compile(r"^(#{1,6})\s+(\S.*)$")
_MAX_HEADING_LINE = 2000  # longer "heading" lines are read as paragraphs
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+([A-Z].{0,80})$")
# Bounded, and no brackets inside text or target: the unbounded ``\[([^\]]*)\]\([^)]*\)``
# rescanned to the end of the paragraph from every "[" ("[[[[..." or "[](" repeated over a
# 5 MB line ran for hours). Now each character is scanned by at most one match attempt.
_MD_LINK = re.compile(r"!?\[([^\[\]]{0,1000})\]\([^)\[\]]{0,2000}\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|`)")
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),  # before UTF-16 LE: the same first two bytes
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_SNIFF = 8192


def _looks_utf16(head: bytes) -> bool:
    """ASCII text saved as UTF-16 without a BOM: every other byte is NUL."""
    if len(head) < 16:
        return False
    shares = sorted(half.count(0) / len(half) for half in (head[0::2], head[1::2]))
    return shares[0] < 0.1 and shares[1] > 0.7


def decode(data: bytes) -> str:
    """Text from bytes: UTF-8 (optional BOM), or UTF-16/32 when a byte-order mark says so."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(codec)
            except UnicodeDecodeError as exc:
                reason = "not_utf8" if codec == "utf-8" else "unsupported_encoding"
                raise LoadError(
                    reason,
                    f"invalid {codec.upper()} at byte {exc.start + len(bom)}; "
                    "re-save the file as UTF-8",
                ) from exc
            if "\x00" in text[:_SNIFF]:
                raise LoadError("binary_content", "the file holds binary data (NUL), not text")
            return text
    head = data[:_SNIFF]
    if b"\x00" in head:
        if _looks_utf16(head):
            raise LoadError(
                "unsupported_encoding",
                "looks like UTF-16 without a byte-order mark; re-save the file as UTF-8",
            )
        raise LoadError("binary_content", "the file holds binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(
            "not_utf8",
            f"not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8",
        ) from exc


def _paragraphs(lines: list[str]) -> list[str]:
    paras: list[str] = []
    buf: list[str] = []
    for line in lines + [""]:
        if line.strip():
            buf.append(line.rstrip())
        elif buf:
            paras.append("\n".join(buf))
            buf = []
    return paras


def load_markdown(data: bytes) -> tuple[str | None, list[Block], dict[str, str]]:
    meta, body, _ = split_front_matter(decode(data))
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    title: str | None = None
    buf: list[str] = []

    def flush() -> None:
        for para in _paragraphs(buf):
            text = _MD_EMPHASIS.sub("", _MD_LINK.sub(r"\1", para)).strip()
            if text:
                blocks.append(Block(text, tuple(h for _, h in path)))
        buf.clear()

    in_fence = False
    for line in body.splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        heading = None if in_fence or len(line) > _MAX_HEADING_LINE else _MD_HEADING.match(line)
        if heading:
            flush()
            raw = heading.group(2)
            raw = raw.rstrip().rstrip("#").rstrip() or raw[:1]
            level, text = len(heading.group(1)), _MD_EMPHASIS.sub("", raw).strip()
            if level == 1 and title is None:
                title = text
                path = []
                continue
            path = [(lv, h) for lv, h in path if lv < level] + [(level, text)]
        else:
            buf.append(line)
    flush()
    return meta.get("title") or title, blocks, meta


def _is_heading(line: str, next_blank: bool) -> bool:
    s = line.strip()
    if not s or len(s) > 90 or s.endswith((".", ",", ";", ":")) or s.startswith(("-", "*", "•")):
        return False
    if _NUMBERED_HEADING.match(s):
        return next_blank or len(s) < 60
    words = [w for w in re.findall(r"[A-Za-z]+", s) if len(w) > 3]
    title_case = bool(words) and all(w[0].isupper() for w in words)
    return next_blank and (s.isupper() or title_case)


def load_text(data: bytes) -> tuple[str | None, list[Block], dict[str, str]]:
    # Front matter is read as in Markdown: a .txt with a restricted_roles block was ingested
    # public, the block indexed as body text.
    meta, body, _ = split_front_matter(decode(data))
    lines = body.splitlines()
    blocks: list[Block] = []
    title: str | None = None
    section: tuple[str, ...] = ()
    buf: list[str] = []

    def flush() -> None:
        for para in _paragraphs(buf):
            blocks.append(Block(para.strip(), section))
        buf.clear()

    for i, line in enumerate(lines):
        prev_blank = i == 0 or not lines[i - 1].strip()
        next_blank = i + 1 >= len(lines) or not lines[i + 1].strip()
        if prev_blank and _is_heading(line, next_blank):
            flush()
            if title is None and not blocks:
                title = line.strip()
                continue
            number = _NUMBERED_HEADING.match(line.strip())
            section = (number.group(2).strip(),) if number else (line.strip(),)
            continue
        buf.append(line)
    flush()
    return meta.get("title") or title, blocks, meta
