"""Plain text and Markdown loaders."""

from __future__ import annotations

import re

from assistant.errors import LoadError
from assistant.types import Block
from ingest.loaders.metadata import split_front_matter

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+([A-Z].{0,80})$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|`)")


def decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise LoadError("binary_content", "the file holds binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
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
        heading = None if in_fence else _MD_HEADING.match(line)
        if heading:
            flush()
            level, text = len(heading.group(1)), _MD_EMPHASIS.sub("", heading.group(2)).strip()
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
    lines = decode(data).splitlines()
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
    return title, blocks, {}
