"""Guideline metadata a document declares: front matter (Markdown and text files), HTML
``<meta>`` tags (read in ``html.py`` through :func:`clean`) or a ``NAME.meta.json`` sidecar.

Metadata decides who may read a document (``restricted_roles``), so a mistake in it fails
closed: the file is refused with ``bad_metadata`` and a detail naming the problem, rather than
ingested with the mistaken part dropped.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from core.errors import LoadError

KNOWN_KEYS = (
    "title",
    "issuing_body",
    "publication_date",
    "version",
    "supersedes",
    "recommendation_grade",
    "source_url",
    "doc_id",
    "restricted_roles",
)
# What a static-site generator (Jekyll, Hugo, MkDocs) writes into a page's front matter: about
# the web page, not the guideline, and never a misspelling of ours. Ignored in front matter
# (with any nested lines under them), so a site's Markdown export ingests: all 96 federal
# guideline summaries in ../shared/eval/guidelines carry "id" and "permalink" and were refused.
# Any other unknown key is still an error.
SITE_KEYS = frozenset(
    {
        "id",
        "permalink",
        "layout",
        "slug",
        "aliases",
        "tags",
        "categories",
        "draft",
        "weight",
        "description",
        "summary",
        "keywords",
        "lang",
        "toc",
        "nav_order",
        "parent",
        "has_children",
        "sidebar",
        "menu",
        "template",
        "collection",
        "published",
        "excerpt",
    }
)
SIDECAR_SUFFIX = ".meta.json"
# A sidecar holds a handful of short fields; anything bigger is a mistake or an attack.
MAX_SIDECAR_BYTES = 64 * 1024
# Values are copied into every chunk's metadata. Oversized values are refused, not clipped:
# clipping ``restricted_roles`` would silently change who may read the document.
MAX_VALUE_CHARS = 2000
# Front matter lines end where str.splitlines() ends them, as the body's do: a file saved
# with CR or CRLF line ends, or with blank lines before the opening "---", must not have its
# block read as body text (its restricted_roles would be lost).
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_EOL = re.compile(f"\r\n|[{_BREAKS}]")
_BLANK_LINES = re.compile(f"(?:[^\\S{_BREAKS}]*(?:\r\n|[{_BREAKS}]))*")
_FRONT_OPEN = re.compile(f"---[ \t]*(?:\r\n|[{_BREAKS}])")
# a closing line: right after a line break, "---" or "...", then a line break or the end
_FRONT_CLOSE = re.compile(f"(?<=[{_BREAKS}])(?:---|\\.\\.\\.)[ \t]*(?:\r\n|[{_BREAKS}]|\\Z)")
_KEY_LINE = re.compile(r"\s*([^\s:][^:\n]{0,60}?)\s*:")
# How close an unknown name must be to a known key to count as a misspelling of it: catches
# restricted_role, restrictedroles, docid; lets HTML's description, DC.title... through.
_NEAR_MISS = 0.8


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar_bytes(side: Path) -> bytes | None:
    """The sidecar's bytes; None if there is none. Never follows a link, never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(side, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise LoadError(
                "bad_metadata", f"{side.name} is a symbolic link; links are not followed"
            ) from exc
        if exc.errno == errno.ENOTDIR:
            return None
        raise LoadError("bad_metadata", f"{side.name} cannot be opened ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoadError("bad_metadata", f"{side.name} is not a regular file")
        if info.st_size > MAX_SIDECAR_BYTES:
            raise LoadError(
                "bad_metadata",
                f"{side.name} is {info.st_size} bytes; the limit is {MAX_SIDECAR_BYTES}",
            )
        data = os.read(fd, MAX_SIDECAR_BYTES + 1)
        if len(data) > MAX_SIDECAR_BYTES:
            raise LoadError("bad_metadata", f"{side.name} is over {MAX_SIDECAR_BYTES} bytes")
        return data
    except OSError as exc:
        raise LoadError("bad_metadata", f"{side.name} cannot be read ({exc.strerror})") from exc
    finally:
        os.close(fd)


def load_sidecar(path: Path) -> tuple[dict[str, str], bytes]:
    """(metadata, raw bytes) of ``path``'s sidecar; ({}, b"") if it has none.

    The raw bytes are returned so the caller hashes exactly what was parsed (one read).
    """
    side = sidecar_path(path)
    raw = _read_sidecar_bytes(side)
    if raw is None:
        return {}, b""
    try:
        # json.loads keeps the last of two equal keys: {"restricted_roles": "x",
        # "restricted_roles": ""} would read as public. The pairs are checked in clean().
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_Pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError("bad_metadata", f"{side.name} is not valid JSON ({exc})"[:300]) from exc
    except RecursionError as exc:  # [[[[...]]]] nested deeper than the interpreter's stack
        raise LoadError("bad_metadata", f"{side.name} nests too deeply") from exc
    if not isinstance(data, _Pairs):
        raise LoadError("bad_metadata", f"{side.name} must hold a JSON object")
    return clean(data, side.name), raw


def read_sidecar(path: Path) -> dict[str, str]:
    return load_sidecar(path)[0]


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its (key, value) pairs, duplicates included (``object_pairs_hook``)."""


def split_front_matter(text: str) -> tuple[dict[str, str], str, int]:
    """Return (metadata, body, body_offset) for a text with optional front matter.

    Front matter is a block between a ``---`` line and the next ``---`` (or ``...``) line at
    the start of the text; blank lines before it are allowed (an editor or a converter adds
    them, and reading the block as body text would drop its ``restricted_roles``). Lines end
    wherever ``str.splitlines`` ends them, as in the body: LF, CRLF, a lone CR... It is a
    small YAML subset: ``key: value``, quoted values, ``key: [a, b]`` and block lists
    (``key:`` then ``- a`` lines), ``#`` comments. Anything else in the block (an unknown or
    misspelt key, a line that is not ``key: value``, nested or multi-line YAML, a key given
    twice) is a ``bad_metadata`` error for the file, never skipped: what was skipped could
    have been the restriction.
    """
    lead = _BLANK_LINES.match(text, 1 if text.startswith("\ufeff") else 0)
    assert lead is not None  # the pattern matches the empty string
    opened = _FRONT_OPEN.match(text, lead.end())
    if not opened:
        return {}, text, 0
    first_number = 2 + len(_EOL.findall(text, 0, lead.end()))
    closed = _FRONT_CLOSE.search(text, opened.end())
    if closed is None:
        # "---" then prose is a rule; "---" then "restricted_roles: ..." without a closing
        # line is front matter whose end was lost: reading it as body would drop the
        # metadata (fail open), so refuse when the first line looks meant as metadata.
        start = _BLANK_LINES.match(text, opened.end())
        assert start is not None
        eol = _EOL.search(text, start.end(), start.end() + 200)
        first = text[start.end() : eol.start() if eol else start.end() + 200]
        key = _KEY_LINE.match(first)
        if key and meant_as_metadata(key.group(1)):
            raise LoadError(
                "bad_metadata",
                "front matter opens with '---' but has no closing '---' line; add it (or "
                "remove the opening one if the file has no metadata)",
            )
        return {}, text, 0
    block = text[opened.end() : closed.start()]
    lines = list(enumerate(_EOL.split(block) if block else [], start=first_number))
    return _parse_block(lines), text[closed.end() :], closed.end()


def _parse_block(lines: list[tuple[int, str]]) -> dict[str, str]:
    pairs: list[tuple[str, object]] = []
    list_items: list[str] | None = None  # the open block list, if the last key had no value
    site_key = False  # the last key was a site generator's: its nested lines are its own
    for number, line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if site_key and (line[:1].isspace() or stripped.startswith("-")):
            continue
        site_key = False
        if list_items is not None and (stripped.startswith("- ") or stripped == "-"):
            item = _unquote(stripped[1:].strip())
            if item:
                list_items.append(item)
            continue
        list_items = None
        where = f"front matter line {number}"
        if line[:1].isspace():
            raise LoadError(
                "bad_metadata",
                f"{where} is indented ({_show(stripped)}): nested values are not supported; "
                "write 'key: value' lines, lists as [a, b] or '- item' lines",
            )
        key, colon, value = line.partition(":")
        if not colon or not key.strip():
            raise LoadError(
                "bad_metadata",
                f"{where} is not 'key: value' ({_show(stripped)}); fix it, or remove the "
                "'---' lines if the file has no metadata",
            )
        value = value.strip()
        if key.strip().lower() in SITE_KEYS:
            site_key = True
            continue
        # block scalars (| >) and flow mappings ({) would be read as the text "|"...
        if value[:1] in ("|", ">", "{") or (value.startswith("[") and not value.endswith("]")):
            raise LoadError(
                "bad_metadata",
                f"{where}: '{key.strip()}' has a value clinrag cannot read ({_show(value)}); "
                "write it on one line in quotes, or a list as [a, b]",
            )
        if value.startswith("["):
            pairs.append((key, [_unquote(v) for v in value[1:-1].split(",") if v.strip()]))
        elif value:
            pairs.append((key, _unquote(value)))
        else:
            list_items = []
            pairs.append((key, list_items))
    return clean(pairs, "front matter")


def _unquote(value: str) -> str:
    return value.strip().strip("\"'")


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "\u2026")


def meant_as_metadata(name: str) -> bool:
    """Whether a name that is not a known key was most likely meant as one: a misspelling
    (``restricted-role``, ``docid``) or anything about roles or restrictions. Used where
    unknown names are normal (HTML ``<meta>``) or ambiguous (an unclosed block)."""
    key = name.strip().lower().replace("-", "_")
    return (
        key in KNOWN_KEYS
        or bool(difflib.get_close_matches(key, KNOWN_KEYS, 1, _NEAR_MISS))
        or "role" in key
        or "restrict" in key
    )


def _suggestion(key: str) -> str:
    near = difflib.get_close_matches(key.replace("-", "_"), KNOWN_KEYS, 1, 0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _value_text(key: str, value: object, where: str) -> str | None:
    """A value as the string stored on every chunk; None when it is empty (no value)."""
    if isinstance(value, bool | dict | _Pairs):  # _Pairs (a JSON object) is a list too
        raise LoadError(
            "bad_metadata", f"{where}: '{key}' must be text (or a list of text for roles)"
        )
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        items = []
        for item in value:
            if item is None or isinstance(item, bool | list | dict):
                raise LoadError(
                    "bad_metadata",
                    f"{where}: '{key}' lists {json.dumps(item)[:40]}; list items must be text",
                )
            items.append(str(item))
        return ",".join(items)
    return str(value)


def clean(raw: Mapping[str, object] | Iterable[tuple[str, object]], where: str) -> dict[str, str]:
    """Known keys as strings, checked. Anything unexpected is a ``bad_metadata`` error.

    An unknown key is most often a misspelt known one: dropping ``restricted-roles`` made a
    restricted document public. So are a key given twice with different values (which one
    did the author mean?) and a value that is not text or a list of text. Keys are read in
    any case. Oversized values are refused, not clipped: clipping ``restricted_roles`` would
    silently change who may read the document.
    """
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    out: dict[str, str] = {}
    seen: dict[str, str | None] = {}
    for raw_key, value in pairs:
        key = str(raw_key).strip().lower()
        if key not in KNOWN_KEYS:
            raise LoadError(
                "bad_metadata",
                f"{where}: unknown key {_show(str(raw_key), 40)}{_suggestion(key)}; the known "
                f"keys are {', '.join(KNOWN_KEYS)}",
            )
        text = _value_text(key, value, where)
        if text is not None and len(text) > MAX_VALUE_CHARS:
            raise LoadError(
                "bad_metadata",
                f"{where}: '{key}' is {len(text)} characters; the limit is {MAX_VALUE_CHARS}",
            )
        if key in seen and seen[key] != text:
            raise LoadError(
                "bad_metadata", f"{where}: '{key}' is given twice, with different values"
            )
        seen[key] = text
        if text is not None:
            out[key] = text
    return out


def merge(own: dict[str, str], sidecar: dict[str, str], sidecar_name: str) -> dict[str, str]:
    """The file's own metadata with its sidecar's on top (the sidecar wins for a title, a
    date...), except that two different ``restricted_roles`` are an error: taking either
    silently could widen who may read the document."""
    mine, theirs = own.get("restricted_roles"), sidecar.get("restricted_roles")
    if mine and theirs and _roles(mine) != _roles(theirs):
        raise LoadError(
            "bad_metadata",
            f"restricted_roles differs between the file ({mine!r}) and {sidecar_name} "
            f"({theirs!r}); give it in one place",
        )
    return {**own, **sidecar}


def _roles(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())
