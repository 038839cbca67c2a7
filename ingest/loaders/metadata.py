"""Guideline metadata a document declares: Markdown front matter or a ``NAME.meta.json`` sidecar."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Mapping
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
SIDECAR_SUFFIX = ".meta.json"
# A sidecar holds a handful of short fields; anything bigger is a mistake or an attack.
MAX_SIDECAR_BYTES = 64 * 1024
# Values are copied into every chunk's metadata. Oversized values are refused, not clipped:
# clipping ``restricted_roles`` would silently change who may read the document.
MAX_VALUE_CHARS = 2000
# CRLF is accepted: a Windows-saved file's front matter (and its restricted_roles) must not be
# silently read as body text.
_FRONT = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?(?:\n|\Z)", re.S)
_FRONT_OPEN = re.compile(r"\A\ufeff?---[ \t]*\r?\n")


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
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError("bad_metadata", f"{side.name} is not valid JSON ({exc})"[:300]) from exc
    except RecursionError as exc:  # [[[[...]]]] nested deeper than the interpreter's stack
        raise LoadError("bad_metadata", f"{side.name} nests too deeply") from exc
    if not isinstance(data, dict):
        raise LoadError("bad_metadata", f"{side.name} must hold a JSON object")
    return clean(data, side.name), raw


def read_sidecar(path: Path) -> dict[str, str]:
    return load_sidecar(path)[0]


def split_front_matter(text: str) -> tuple[dict[str, str], str, int]:
    """Return (metadata, body, body_offset) for a Markdown text with optional front matter.

    A small YAML subset: ``key: value``, quoted values, ``key: [a, b]`` and block lists
    (``key:`` then ``- a`` lines). A block list must not be dropped: ``restricted_roles``
    written that way would otherwise leave the document readable by every role.
    """
    match = _FRONT.match(text)
    if not match:
        opened = _FRONT_OPEN.match(text)
        if opened:
            # "---" then "restricted_roles: ..." but no closing line: reading it as body would
            # drop the metadata (fail open); refuse instead.
            first = text[opened.end() : opened.end() + 200].splitlines()[:1]
            key = first[0].split(":", 1)[0].strip().lower() if first and ":" in first[0] else ""
            if key in KNOWN_KEYS:
                raise LoadError(
                    "bad_metadata", "front matter opens with '---' but has no closing '---' line"
                )
        return {}, text, 0
    meta: dict[str, str | list[str]] = {}
    list_key: str | None = None
    for line in match.group(1).splitlines():
        stripped = line.strip()
        if list_key is not None and (stripped.startswith("- ") or stripped == "-"):
            items = meta.setdefault(list_key, [])
            if isinstance(items, list) and stripped[1:].strip():
                items.append(stripped[1:].strip().strip("\"'"))
            continue
        list_key = None
        if ":" in line and not line.lstrip().startswith("#"):
            key, value = line.split(":", 1)
            key, value = key.strip().lower(), value.strip()
            if value.startswith("[") and value.endswith("]"):
                meta[key] = [v.strip().strip("\"'") for v in value[1:-1].split(",") if v.strip()]
            elif value:
                meta[key] = value.strip("\"'")
            else:
                list_key = key
    return clean(meta, "front matter"), text[match.end() :], match.end()


def clean(raw: Mapping[str, object], where: str = "metadata") -> dict[str, str]:
    """Keep known keys as strings; unknown keys are dropped so they never reach the index."""
    out: dict[str, str] = {}
    for key in KNOWN_KEYS:
        value = raw.get(key)
        if value is None or value == "" or value == []:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        if len(text) > MAX_VALUE_CHARS:
            raise LoadError(
                "bad_metadata",
                f"{where}: '{key}' is {len(text)} characters; the limit is {MAX_VALUE_CHARS}",
            )
        out[key] = text
    return out
