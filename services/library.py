"""The library as users change and read it: list, ingest, upload, remove, currency warnings.

The command line and the Library page call the same functions; each checks the actor's role
and records its audit event (``audit.record``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from audit.record import IngestDocument, Recorder
from core.config import Settings, ensure_home
from core.errors import NotFoundError
from core.library import supersedes
from core.library.index import Index, writer_lock
from core.library.manifest import Manifest
from core.types import Actor
from ingest.index import FileResult as FileResult
from ingest.index import IngestSummary, ingest
from ingest.loaders.metadata import SIDECAR_SUFFIX
from services.access import Operation, require

# A cited guideline older than this is flagged: guidelines are usually revised within 5 years.
MAX_GUIDELINE_AGE_YEARS = 5
UPLOADS_DIR = "uploads"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def uploads_dir(settings: Settings) -> Path:
    return settings.home / UPLOADS_DIR


def documents(settings: Settings, actor: Actor) -> list[dict[str, Any]]:
    """Every complete document in the manifest (doc_id, title, metadata, n_chunks, ...)."""
    require(actor, Operation.READ_LIBRARY)
    if not settings.manifest_path.is_file():
        return []
    manifest = Manifest(settings.manifest_path)
    try:
        return manifest.documents()
    finally:
        manifest.close()


def _parse_date(text: str) -> date | None:
    """ISO dates, or year-month, or year alone (taken as the first day)."""
    text = (text or "").strip()
    for pattern, fill in (
        (r"^\d{4}-\d{2}-\d{2}", ""),
        (r"^\d{4}-\d{2}$", "-01"),
        (r"^\d{4}$", "-01-01"),
    ):
        match = re.match(pattern, text)
        if match:
            with contextlib.suppress(ValueError):
                return date.fromisoformat(match.group(0) + fill)
    return None


def superseded_by(
    doc_id: str, title: str, docs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Documents in the library that declare they supersede this one (by doc_id or title)."""
    return supersedes.superseded_by(doc_id, title, docs)


def currency_warnings(
    doc_id: str,
    docs: Sequence[Mapping[str, Any]],
    *,
    today: date | None = None,
    max_age_years: int = MAX_GUIDELINE_AGE_YEARS,
    title: str = "",
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Plain-text warnings for a cited document: superseded, or older than ``max_age_years``."""
    today = today or date.today()
    doc = next((d for d in docs if d["doc_id"] == doc_id), None)
    meta = metadata if metadata is not None else (doc or {}).get("metadata", {})
    title = title or (doc or {}).get("title", "")
    out: list[str] = []
    for newer in superseded_by(doc_id, title, docs):
        when = newer["metadata"].get("publication_date")
        out.append(
            f"Superseded by {newer['title']}" + (f" ({when})" if when else "") + ": check it."
        )
    published = _parse_date(meta.get("publication_date", ""))
    if published is not None:
        try:
            limit = published.replace(year=published.year + max_age_years)
        except ValueError:  # 29 February
            limit = published.replace(year=published.year + max_age_years, day=28)
        if limit < today:
            out.append(
                f"Published {meta['publication_date']}, more than {max_age_years} "
                f"year{'s' if max_age_years != 1 else ''} ago: "
                "check for a newer version."
            )
    return out


def source_file(settings: Settings, doc_id: str, docs: Sequence[Mapping[str, Any]]) -> Path | None:
    """The original file of a library document, if it still exists (only manifest paths)."""
    doc = next((d for d in docs if d["doc_id"] == doc_id), None)
    if doc is None:
        return None
    path = Path(doc["source_path"])
    if not path.is_absolute():
        path = Path.cwd() / path
    return path if path.is_file() else None


def safe_upload_name(name: str) -> str:
    """A file name that cannot leave the uploads folder or hide itself."""
    base = Path(name.replace("\\", "/")).name
    base = _SAFE_NAME.sub("_", base).strip(" .")
    if not base:
        raise ValueError(f"Cannot store an upload named {name!r}.")
    return base[:120]


def save_uploads(
    settings: Settings, actor: Actor, files: Sequence[tuple[str, bytes]]
) -> list[Path]:
    """Write uploaded files (name, bytes) into ``home/uploads``, owner-only. Returns the paths.

    A file with a name already there replaces it, so uploading a new edition updates it.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    ensure_home(settings)
    folder = uploads_dir(settings)
    folder.mkdir(mode=0o700, exist_ok=True)
    paths: list[Path] = []
    for name, data in files:
        path = folder / safe_upload_name(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def add(
    settings: Settings,
    actor: Actor,
    paths: Sequence[Path],
    *,
    source: str,
    prune: bool = False,
    progress: bool | None = None,
    index: Index | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders into the library, then record the ``ingest`` event.

    ``source`` says where the files came from (``cli``, ``upload``). Metadata sidecars named
    on their own are skipped: they describe the document beside them, which reads them.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    candidates = [p for p in paths if not Path(p).name.endswith(SIDECAR_SUFFIX)]
    summary = ingest(
        candidates, settings, prune=prune, index=index, on_file=on_file, progress=progress
    )
    data = summary.to_dict()
    documents: list[IngestDocument] = [
        {"doc_id": r.doc_id, "status": r.status, "reason": r.reason}
        for r in summary.results
        if r.status != "unchanged"
    ]
    with Recorder.open(settings) as recorder:
        recorder.ingest(
            actor,
            source=source,
            paths=[str(p) for p in candidates],
            counts={k: v for k, v in data.items() if isinstance(v, int)},
            index_version=summary.index_version,
            documents=documents,
        )
    return summary


def is_empty(settings: Settings) -> bool:
    """Whether the library holds no document (the first start ingests the samples then)."""
    if not settings.manifest_path.is_file():
        return True
    manifest = Manifest(settings.manifest_path)
    try:
        return not manifest.documents()
    finally:
        manifest.close()


def remove(settings: Settings, actor: Actor, doc_id: str, *, index: Index | None = None) -> bool:
    """Remove a document from the index (under the writer lock) and record a ``remove`` event.

    An uploaded original in ``home/uploads`` is deleted too, so it cannot come back unseen.
    Raises :class:`NotFoundError` when the library has no such document.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    index = index or Index(settings)
    doc = index.manifest.document(doc_id)
    with writer_lock(settings):
        index.warm_up()
        removed = bool(index.remove(doc_id))
    if not removed:
        raise NotFoundError(f"No document {doc_id!r} in the library (see: clinrag sources).")
    deleted_file = False
    if doc is not None:
        path = Path(doc["source_path"]).resolve()
        if path.parent == uploads_dir(settings).resolve() and path.is_file():
            path.unlink()
            deleted_file = True
    with Recorder.open(settings) as recorder:
        recorder.remove(actor, doc_id, deleted_upload=deleted_file)
    return True
