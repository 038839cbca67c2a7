"""HTML loader. Text only: scripts, styles, comments and hidden elements never reach the index."""

from __future__ import annotations

import re

from assistant.errors import LoadError
from assistant.types import Block
from ingest.loaders.text import decode

_BLOCK_TAGS = [
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "p",
    "li",
    "td",
    "th",
    "pre",
    "blockquote",
    "dd",
    "dt",
]
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0|opacity\s*:\s*0(?![.\d])", re.I
)
_WS = re.compile(r"[ \t\r\f\v]+")


def load_html(data: bytes) -> tuple[str | None, list[Block], dict[str, str], list[str]]:
    from bs4 import BeautifulSoup, Comment

    text = decode(data)
    try:
        soup = BeautifulSoup(text, "html.parser")
    except RecursionError as exc:
        raise LoadError("too_deeply_nested", "the HTML nests elements too deeply to parse") from exc
    warnings: list[str] = []
    for tag in soup(["script", "style", "noscript", "template", "iframe", "object", "svg"]):
        tag.decompose()
    comments = soup.find_all(string=lambda s: isinstance(s, Comment))
    if comments:
        warnings.append(f"removed {len(comments)} HTML comment(s)")
    for comment in comments:
        comment.extract()
    hidden = [
        el
        for el in soup.find_all(True)
        if el.has_attr("hidden")
        or el.get("aria-hidden") == "true"
        or _HIDDEN_STYLE.search(str(el.get("style", "")))
    ]
    if hidden:
        warnings.append(f"removed {len(hidden)} hidden element(s)")
    for el in hidden:
        if not el.decomposed:
            el.decompose()

    meta: dict[str, str] = {}
    for tag in soup.find_all("meta"):
        name, content = tag.get("name"), tag.get("content")
        if name and content:
            meta[str(name).lower().replace("-", "_")] = str(content)
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None

    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    try:
        elements = soup.find_all(_BLOCK_TAGS)
    except RecursionError as exc:
        raise LoadError("too_deeply_nested", "the HTML nests elements too deeply to parse") from exc
    for el in elements:
        # nested block tags (a <p> inside an <li>) are read once, at the innermost level
        if el.name not in {"h1", "h2", "h3", "h4", "h5", "h6"} and el.find(_BLOCK_TAGS):
            continue
        content = _WS.sub(" ", el.get_text(" ", strip=True)).strip()
        if not content:
            continue
        if el.name[0] == "h" and el.name[1:].isdigit():
            level = int(el.name[1])
            if level == 1 and title is None:
                title = content
            if level == 1:
                path = []
                continue
            path = [(lv, h) for lv, h in path if lv < level] + [(level, content)]
            continue
        if el.name == "li":
            content = "- " + content
        blocks.append(Block(content, tuple(h for _, h in path)))
    return title, blocks, meta, warnings
