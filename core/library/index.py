"""The vector index over the manifest: embedder + vector store + manifest, under one writer lock.

Per document: the manifest row goes ``pending`` first, then the old vectors are deleted and
the new ones upserted, then the manifest commits the chunks and marks it ``complete``. A crash
anywhere leaves a ``pending`` row that ``recover`` rolls back on the next run, and orphan
vectors (in the store, not in the manifest) are swept, so there are never duplicates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from core import backends
from core.config import Settings
from core.errors import EmbedderMismatchError, StoreLockedError
from core.library.manifest import Manifest
from core.types import Chunk

if TYPE_CHECKING:
    from core.backends.base import Embedder, VectorStore

EMBED_GROUP_CHUNKS = 2048  # embed across documents in large batches; write per document


def indexed_text(chunk: Chunk) -> str:
    """What is embedded and BM25-indexed: the chunk with its title and section as context."""
    return (
        f"{chunk.title}\n{chunk.section}\n{chunk.text}"
        if chunk.section
        else f"{chunk.title}\n{chunk.text}"
    )


WRITER_LOCK = "library_writer"


@contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """Exclusive, non-blocking: one process writes the library (manifest and vectors) at a time.

    With ``database_url`` the manifest is shared by every host, so the lock is an advisory lock
    in that database (:func:`core.database.database_lock`), held by one process on any host and
    dropped by the server if its holder dies; otherwise a file lock in the home, since Chroma's
    embedded store is not safe with two writing processes either.
    """
    if settings.database_url:
        from core.database import DatabaseLockBusy, database_lock, redact_url

        with contextlib.ExitStack() as held:
            try:
                held.enter_context(database_lock(settings.database_url, WRITER_LOCK, wait=False))
            except DatabaseLockBusy:
                raise StoreLockedError(
                    f"The library in {redact_url(settings.database_url)} is being written by "
                    "another clinrag process (on this host or another). Wait for that ingest or "
                    "removal to finish, then run this again (readers keep working meanwhile)."
                ) from None
            yield
        return
    from filelock import FileLock, Timeout

    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.lock_path), timeout=0)
    holder = settings.lock_path.with_suffix(".owner")
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        raise StoreLockedError(
            f"The store in {settings.home} is being written by {who}. Wait for that ingest or "
            "removal to finish, then run this again (readers keep working meanwhile)."
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()}")
        yield
    finally:
        lock.release()


class Index:
    """The embedder, the vector store and the manifest, wired together. Cheap to construct."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings
        self.embedder: Embedder = (
            embedder
            if embedder is not None
            else backends.create("embedder", settings.embedder, settings)
        )
        self.store: VectorStore = (
            store
            if store is not None
            else backends.create("vector_store", settings.vector_store, settings)
        )
        self.manifest = Manifest(settings.manifest_path, database_url=settings.database_url)
        self._warm = False

    def warm_up(self) -> None:
        if self._warm:
            return
        info = self.embedder.info
        recorded = self.manifest.get_meta("embedder_hash")
        if recorded and recorded != info.weights_hash:
            # embedder_backend = auto may reach the recorded identity by another path
            follow = getattr(self.embedder, "follow", None)
            if follow is not None and follow(recorded):
                info = self.embedder.info
            else:
                raise EmbedderMismatchError(
                    "This index was built with embedder "
                    f"{self.manifest.get_meta('embedder_model')!r}; the configured one is "
                    f"{info.model!r}, whose vectors differ. Set embedder_model and "
                    "embedder_backend back to what built it (embedder_backend = auto follows "
                    "the index where it can), or ingest into a fresh CLINRAG_HOME."
                )
        self.store.warm_up(info)
        self._warm = True

    def close(self) -> None:
        """Release the store's client and the manifest, so their files may be moved or removed.

        Called in ``finally`` blocks: a client that fails to close must not hide the error
        that is already on its way out, so that failure is dropped.
        """
        with contextlib.suppress(Exception):
            self.store.close()
        self.manifest.close()
        self._warm = False

    @property
    def version(self) -> str:
        """Changes whenever any document changes: recorded with every answer."""
        return f"{self.manifest.index_version()}:{self.embedder.info.weights_hash[:12]}"

    # maintenance, under the writer lock
    def recover(self) -> int:
        """Roll back half-written documents and sweep orphan vectors. Returns items fixed."""
        fixed = 0
        for doc in self.manifest.documents(state="pending"):
            self.store.delete_doc(doc["doc_id"])
            self.manifest.forget(doc["doc_id"])
            fixed += 1
        known = self.manifest.chunk_ids()
        orphans = sorted(self.store.ids() - known)
        if orphans:
            self.store.delete_ids(orphans)
            fixed += len(orphans)
        missing = known - self.store.ids()
        if missing:
            # vectors lost (e.g. a store restored from an older backup): re-embed from manifest
            self._write_vectors(list(self.manifest.chunks_by_id(sorted(missing)).values()))
            fixed += len(missing)
        return fixed

    def _write_vectors(self, chunks: Sequence[Chunk]) -> None:
        for start in range(0, len(chunks), EMBED_GROUP_CHUNKS):
            part = chunks[start : start + EMBED_GROUP_CHUNKS]
            self.store.upsert(part, self.embedder.embed([indexed_text(c) for c in part]))

    def rebuild_vectors(self) -> int:
        """Re-embed every chunk from the manifest into the store (after a store loss)."""
        chunks = self.manifest.chunks()
        stale = sorted(self.store.ids())
        if stale:
            self.store.delete_ids(stale)
        self._write_vectors(chunks)
        return len(chunks)

    def remove(self, doc_id: str) -> bool:
        if self.manifest.document(doc_id) is None:
            return False
        with self.manifest.transaction() as conn:
            conn.execute("UPDATE documents SET state = 'pending' WHERE doc_id = ?", (doc_id,))
        self.store.delete_doc(doc_id)
        self.manifest.forget(doc_id)
        return True

    def record_embedder(self) -> None:
        info = self.embedder.info
        with self.manifest.transaction() as conn:
            self.manifest.set_meta(conn, "embedder_model", info.model)
            self.manifest.set_meta(conn, "embedder_hash", info.weights_hash)
