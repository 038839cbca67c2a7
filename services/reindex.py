"""Rebuild the vector index from the manifest: ``clinrag reindex [--fresh]`` and restores."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.record import Recorder
from core.config import Settings
from core.errors import ClinragError
from core.library.index import Index, writer_lock
from core.library.manifest import manifest_exists
from core.types import Actor
from services.access import Operation, require


class ReindexError(ClinragError):
    """The index cannot be rebuilt as asked; the message says what to do."""


# --------------------------------------------------------------------------- reindex


def rebuild(settings: Settings, *, fresh: bool) -> dict[str, Any]:
    """Re-embed the manifest into the vector store under the writer lock; no role check, no
    record (restore calls it inside its own operation)."""
    t0 = time.perf_counter()
    with writer_lock(settings):
        moved: Path | None = None
        if fresh and settings.store_dir.exists():
            # Another process (or an earlier Index in this one) holding the old store open
            # would keep writing to the moved folder: the CLI runs this in a fresh process.
            moved = settings.store_dir.with_name(
                f"store.old-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
            )
            settings.store_dir.rename(moved)
        index = Index(settings)
        try:
            try:
                index.warm_up()
            except ClinragError:
                raise
            except Exception as exc:
                raise ReindexError(
                    f"The vector store in {settings.store_dir} cannot be opened ({exc}). Stop "
                    "every clinrag process using this home, then run `clinrag reindex --fresh` "
                    "to rebuild it from the manifest."
                ) from exc
            chunks = index.rebuild_vectors()
            # After the rebuild, so pending documents (an ingest killed mid-write) are rolled
            # back cheaply: their chunks are not in the rebuilt store; the next ingest redoes
            # them from their files.
            rolled_back = len(index.manifest.documents(state="pending"))
            index.recover()
            stored = index.store.count()
            documents = len(index.manifest.documents())
            manifest_chunks = len(index.manifest.chunk_ids())
            version = index.version
        finally:
            index.close()
    if stored != manifest_chunks:
        raise ReindexError(
            f"After the rebuild the store holds {stored} vectors but the manifest {manifest_chunks}"
            " chunks. Run `clinrag reindex --fresh` with no other clinrag process running."
        )
    return {
        "documents": documents,
        "chunks": chunks,
        "vectors": stored,
        "pending_rolled_back": rolled_back,
        "index_version": version,
        "old_store_moved_to": str(moved) if moved else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def rebuild_index(settings: Settings, actor: Actor, *, fresh: bool = False) -> dict[str, Any]:
    """Re-embed every chunk of the manifest into the vector store, under the writer lock.

    ``fresh`` first moves ``store/`` aside (to ``store.old-<time>``, to delete once the new
    index answers well): for a store that cannot be opened at all. Readers in other processes
    keep their old handle, so stop the app before ``fresh``; without it, answers given during
    the rebuild may miss passages that are not re-added yet.
    """
    if not manifest_exists(settings.manifest_path, settings.database_url):
        raise ReindexError(
            f"There is no manifest in {settings.home}, so there is nothing to rebuild from. "
            "Ingest documents (clinrag ingest PATH) or restore a backup (clinrag restore SRC)."
        )
    require(actor, Operation.MAINTAIN)
    summary = rebuild(settings, fresh=fresh)
    if settings.database_url is not None or settings.audit_db.is_file():
        with Recorder.open(settings) as recorder:
            recorder.reindex(
                actor,
                documents=summary["documents"],
                chunks=summary["chunks"],
                vectors=summary["vectors"],
                pending_rolled_back=summary["pending_rolled_back"],
                index_version=summary["index_version"],
                old_store_moved_to=summary["old_store_moved_to"],
            )
    return summary
