"""Who may see a document: one reading of the ``restricted_roles`` metadata.

A document lists the roles that may see it in ``restricted_roles``, comma-separated; none
means every role. Retrieval, the library's listings and warnings, downloads and the audit
trail's views all read the field here, so they never disagree about who may see what.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def restricted_roles(metadata: Mapping[str, Any]) -> frozenset[str]:
    """The roles a document's metadata restricts it to; empty when every role may see it."""
    raw = str(metadata.get("restricted_roles") or "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def may_see(metadata: Mapping[str, Any], roles: Iterable[str]) -> bool:
    """Whether someone holding ``roles`` may see the document with this metadata."""
    restricted = restricted_roles(metadata)
    return not restricted or bool(restricted & set(roles))
