"""HTML loader. Text only: scripts, styles, comments and hidden elements never reach the index.

Parsed with lxml's HTML parser (libxml2, through BeautifulSoup) when it is installed, which it
is wherever python-docx is: CPython's ``html.parser`` before 3.11.13 is quadratic on
malformed markup (CVE-2025-6069: a few hundred KB of ``</`` or ``<?`` took minutes), and it
nests every unclosed ``<p>``/``<li>`` inside the previous one. ``html.parser`` remains the
fallback; the parse timeout then bounds it.

Every text node is read once, as part of its nearest enclosing block element (``p``, ``li``,
``h2``...), in one pass over the tree: the earlier "skip a block if it contains another block,
then get_text() it" was quadratic in nesting depth (20,000 nested ``<li>`` took 30 s) and
dropped the text of any block that had a nested one.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

from core.errors import LoadError
from core.types import Block
from ingest.loaders.metadata import KNOWN_KEYS, clean, meant_as_metadata
from ingest.loaders.text import decode

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag

_BLOCK_TAGS = frozenset(
    {
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
    }
)
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_REMOVED = ["script", "style", "noscript", "template", "iframe", "object", "svg"]
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?![.\d])", re.I
)
# Text a reader cannot see but a model would read: white-on-default text and near-zero sizes.
_FONT_SIZE = re.compile(r"font-size\s*:\s*(\d*\.?\d+)\s*(px|pt|em|rem|%)?", re.I)
_TINY = {"px": 3.0, "pt": 2.5, "em": 0.25, "rem": 0.25, "%": 25.0, None: 0.5}
_WHITE = re.compile(
    r"^\s*(white|#fff|#ffffff|#fefefe|rgba?\(\s*25[0-5]\s*,\s*25[0-5]\s*,\s*25[0-5]\b[^)]*\))"
    r"\s*(!important)?\s*$",
    re.I,
)
_WS = re.compile(r"[ \t\r\f\v]+")
# Each element costs BeautifulSoup about 1 KB and 25 us; a guideline page has a few thousand.
# Counted before parsing, so a file of a million empty tags is refused without building a tree.
MAX_ELEMENTS = 200_000
_TAG_OPEN = re.compile(r"<[A-Za-z]")


def _invisible(style: str, el: Tag) -> bool:
    """White text (with no background of its own) or a font too small to read."""
    for size, unit in _FONT_SIZE.findall(style):
        if float(size) < _TINY[unit.lower() or None]:
            return True
    declarations = dict(
        (k.strip().lower(), v) for k, _, v in (d.partition(":") for d in style.split(";"))
    )
    color = declarations.get("color") or (el.get("color") if el.name == "font" else None)
    if color and _WHITE.match(str(color)):
        return not any(k.startswith("background") for k in declarations)
    return el.name == "font" and str(el.get("size", "")).strip() in {"0", "-3", "-4"}


def _soup(text: str) -> BeautifulSoup:
    import bs4
    from bs4 import BeautifulSoup, FeatureNotFound

    with warnings.catch_warnings():
        # bs4 warns when a short input "looks like a filename or URL", or like XML: noise on
        # the console for content we parse on purpose.
        for name in ("MarkupResemblesLocatorWarning", "XMLParsedAsHTMLWarning"):
            category = getattr(bs4, name, None)
            if category is not None:
                warnings.simplefilter("ignore", category)
        try:
            return BeautifulSoup(text, "lxml")
        except FeatureNotFound:
            return BeautifulSoup(text, "html.parser")


def _meta(soup: BeautifulSoup) -> dict[str, str]:
    """clinrag's keys from ``<meta name=... content=...>`` (``issuing-body`` reads as
    ``issuing_body``).

    Other names are normal in a web page (viewport, description, DC.title) and are left out,
    so that a page's hundreds of tags never become metadata on every chunk; but a name that
    looks meant as one of ours (``restricted-role``, ``docid``, anything about roles) is a
    ``bad_metadata`` error, as in front matter: dropping it could make the page public.
    """
    pairs: list[tuple[str, object]] = []
    for tag in soup.find_all("meta"):
        name = tag.get("name")
        if not name:
            continue
        key = str(name).strip().lower().replace("-", "_")
        if key in KNOWN_KEYS:
            pairs.append((key, str(tag.get("content") or "").strip()))
        elif meant_as_metadata(key):
            raise LoadError(
                "bad_metadata",
                f"HTML <meta name={str(name)[:40]!r}> is not a key clinrag knows "
                f"({', '.join(KNOWN_KEYS)}); correct the name, or rename it if it is not "
                "meant for clinrag",
            )
    return clean(pairs, "HTML <meta>")


def load_html(data: bytes) -> tuple[str | None, list[Block], dict[str, str], list[str]]:
    from bs4 import CData, Comment, NavigableString, Tag

    text = decode(data)
    n_tags = sum(1 for _ in _TAG_OPEN.finditer(text)) if text.count("<") > MAX_ELEMENTS else 0
    if n_tags > MAX_ELEMENTS:
        raise LoadError(
            "too_complex", f"{n_tags} HTML elements; the limit is {MAX_ELEMENTS} per file"
        )
    try:
        soup = _soup(text)
    except (RecursionError, MemoryError):
        raise  # load_document names these
    except Exception as exc:  # lxml raises ParserError, ValueError... on input it rejects
        raise LoadError(
            "corrupt_html", f"the HTML cannot be parsed ({exc.__class__.__name__})"
        ) from exc
    # Before anything is removed: a <meta> tag is never rendered, so "hidden" (or inside a
    # <noscript> or <template>) says nothing about it, and a <meta name="restricted_roles"
    # ... hidden> removed with the hidden elements made a restricted page public.
    meta = _meta(soup)
    warnings: list[str] = []
    for tag in soup(_REMOVED):
        if not tag.decomposed:
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
        or _invisible(str(el.get("style", "")), el)
    ]
    if hidden:
        warnings.append(f"removed {len(hidden)} hidden element(s)")
    for el in hidden:
        if not el.decomposed:
            el.decompose()

    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None

    # One pass in document order (parents before children): each string goes to the nearest
    # block ancestor; text outside any block element is not read (navigation, layout).
    owner: dict[int, Tag | None] = {id(soup): None}
    parts: dict[int, list[str]] = {}
    order: list[Tag] = []
    for node in soup.descendants:
        parent = node.parent
        if parent is None:
            continue
        near = parent if parent.name in _BLOCK_TAGS else owner.get(id(parent))
        if isinstance(node, Tag):
            owner[id(node)] = near
            if node.name in _BLOCK_TAGS:
                order.append(node)
                parts[id(node)] = []
        # exact types: comments, doctypes and processing instructions subclass NavigableString
        elif (
            isinstance(node, NavigableString)
            and type(node) in (NavigableString, CData)
            and near is not None
        ):
            piece = node.strip()
            if piece:
                parts[id(near)].append(piece)

    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    for el in order:
        content = _WS.sub(" ", " ".join(parts[id(el)])).strip()
        if not content:
            continue
        if el.name in _HEADINGS:
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
