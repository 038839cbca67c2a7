"""Which documents a newer one replaces: one reading of the ``supersedes`` metadata.

A document lists what it replaces in ``supersedes``, comma-separated, by doc id or by title,
in any case. Retrieval demotes the replaced documents and the app warns about them; both
read the field here, so they never disagree about what is superseded.

Callers pass only the documents the reader may see (``core.library.restrictions``): a
restricted document supersedes nothing for someone who may not read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def names(metadata: Mapping[str, Any]) -> frozenset[str]:
    """The doc ids and titles a document's metadata says it supersedes, lower-cased."""
    raw = str(metadata.get("supersedes") or "")
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def _keys(doc: Mapping[str, Any]) -> frozenset[str]:
    return frozenset({str(doc["doc_id"]).lower(), str(doc.get("title") or "").strip().lower()}) - {
        ""
    }


def superseded_by(
    doc_id: str, title: str, docs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The documents that declare they supersede this one (by doc_id or title)."""
    keys = _keys({"doc_id": doc_id, "title": title})
    return [d for d in docs if d["doc_id"] != doc_id and names(d.get("metadata") or {}) & keys]


def superseded_ids(docs: Iterable[Mapping[str, Any]]) -> set[str]:
    """The doc ids of every document that another document supersedes."""
    docs = list(docs)
    out: set[str] = set()
    for newer in docs:
        replaced = names(newer.get("metadata") or {})
        if not replaced:
            continue
        out.update(
            str(d["doc_id"]) for d in docs if d["doc_id"] != newer["doc_id"] and _keys(d) & replaced
        )
    return out
