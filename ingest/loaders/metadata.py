"""Guideline metadata a document declares: Markdown front matter or a ``NAME.meta.json`` sidecar."""

from __future__ import annotations

import json
import re
from pathlib import Path

from assistant.errors import LoadError

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
_FRONT = re.compile(r"\A\ufeff?---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.S)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> dict[str, str]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError("bad_metadata", f"{side.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise LoadError("bad_metadata", f"{side.name} must hold a JSON object")
    return clean(data)


def split_front_matter(text: str) -> tuple[dict[str, str], str, int]:
    """Return (metadata, body, body_offset) for a Markdown text with optional front matter."""
    match = _FRONT.match(text)
    if not match:
        return {}, text, 0
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            key, value = line.split(":", 1)
            meta[key.strip().lower()] = value.strip().strip("\"'")
    return clean(meta), text[match.end() :], match.end()


def clean(raw: dict) -> dict[str, str]:
    """Keep known keys as strings; unknown keys are dropped so they never reach the index."""
    out: dict[str, str] = {}
    for key in KNOWN_KEYS:
        value = raw.get(key)
        if value is None or value == "":
            continue
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out
