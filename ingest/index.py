"""Idempotent, crash-safe indexing: files -> chunks -> vectors, under one writer lock.

Per document: the manifest row goes ``pending`` first, then the old vectors are deleted and
the new ones upserted, then the manifest commits the chunks and marks it ``complete``. A crash
anywhere leaves a ``pending`` row that ``recover`` rolls back on the next run, and orphan
vectors (in the store, not in the manifest) are swept, so there are never duplicates.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant import backends
from assistant.config import Settings
from assistant.errors import EmbedderMismatchError, LoadError, StoreLockedError
from assistant.types import Chunk, Document
from ingest.loaders import is_candidate, load_document
from ingest.manifest import Manifest
from ingest.split import split_document

EMBED_GROUP_CHUNKS = 2048  # embed across documents in large batches; write per document


def indexed_text(chunk: Chunk) -> str:
    """What is embedded and BM25-indexed: the chunk with its title and section as context."""
    return (
        f"{chunk.title}\n{chunk.section}\n{chunk.text}"
        if chunk.section
        else f"{chunk.title}\n{chunk.text}"
    )


@dataclass
class FileResult:
    path: str
    status: str  # added | updated | unchanged | failed | removed
    doc_id: str | None = None
    chunks: int = 0
    reason: str | None = None
    detail: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestSummary:
    results: list[FileResult] = field(default_factory=list)
    index_version: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results if r.status in {"added", "updated"})

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{s: self.count(s) for s in ("added", "updated", "unchanged", "failed", "removed")},
            "chunks": self.chunks,
            "index_version": self.index_version,
            "files": [asdict(r) for r in self.results],
        }


@contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """Exclusive, non-blocking: Chroma's embedded store is not safe with two writing processes."""
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

    def __init__(self, settings: Settings, embedder: Any = None, store: Any = None) -> None:
        self.settings = settings
        self.embedder = embedder or backends.create("embedder", settings.embedder, settings)
        self.store = store or backends.create("vector_store", settings.vector_store, settings)
        self.manifest = Manifest(settings.manifest_path)
        self._warm = False

    def warm_up(self) -> None:
        if self._warm:
            return
        info = self.embedder.info
        recorded = self.manifest.get_meta("embedder_hash")
        if recorded and recorded != info.weights_hash:
            raise EmbedderMismatchError(
                f"This index was built with embedder {self.manifest.get_meta('embedder_model')!r}; "
                f"the configured one is {info.model!r} with other weights. Set embedder_model "
                "back, or ingest into a fresh CLINRAG_HOME."
            )
        self.store.warm_up(info)
        self._warm = True

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


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for root in paths:
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                # a symlinked folder is yielded (and refused by the loader) rather than skipped
                # silently, so it shows up in the summary with its reason
                links = sorted(d for d in dirnames if (Path(dirpath) / d).is_symlink())
                yield from (Path(dirpath) / d for d in links)
                dirnames[:] = sorted(
                    d for d in dirnames if not d.startswith(".") and d not in links
                )
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    if is_candidate(path):
                        yield path
        else:
            yield root


def _assign_doc_id(doc: Document, manifest: Manifest, taken: dict[str, str]) -> None:
    """Keep doc ids stable and unique: a second file with the same name gets a path suffix."""
    existing = manifest.document(doc.doc_id)
    other = taken.get(doc.doc_id)
    clash_manifest = (
        existing is not None
        and Path(existing["source_path"]).resolve() != Path(doc.source_path).resolve()
        and Path(existing["source_path"]).exists()
    )
    clash_run = other is not None and other != doc.source_path
    if clash_manifest or clash_run:
        suffix = hashlib.sha1(str(Path(doc.source_path).resolve()).encode()).hexdigest()[:6]
        doc.doc_id = f"{doc.doc_id}-{suffix}"
    taken[doc.doc_id] = doc.source_path


def ingest(
    paths: Sequence[Path],
    settings: Settings,
    *,
    prune: bool = False,
    progress: bool | None = None,
    index: Index | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders. One bad file is reported, never fatal."""
    index = index or Index(settings)
    summary = IngestSummary()
    with writer_lock(settings):
        index.warm_up()
        index.recover()
        index.record_embedder()
        files = list(iter_files(paths))
        show = sys.stderr.isatty() if progress is None else progress
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="ingest", unit="file", disable=not show, file=sys.stderr)
        pending: list[tuple[Document, FileResult]] = []
        taken: dict[str, str] = {}

        def emit(result: FileResult) -> None:
            summary.results.append(result)
            bar.update(1)
            if on_file:
                on_file(result)

        def flush() -> None:
            _write_group(index, settings, pending, emit)
            pending.clear()

        group_chunks = 0
        for path in files:
            result = FileResult(path=str(path), status="failed")
            try:
                if not path.exists() and not path.is_symlink():
                    raise LoadError("not_found", "no such file or folder")
                doc = load_document(
                    path,
                    max_bytes=int(settings.max_file_mb * 1024 * 1024),
                    max_pages=settings.max_pages,
                    timeout_s=settings.parse_timeout_s,
                )
            except LoadError as exc:
                result.reason, result.detail = exc.reason, exc.detail
                emit(result)
                continue
            except Exception as exc:  # a parser bug must not stop the other files
                result.reason = "parse_error"
                result.detail = f"{exc.__class__.__name__}: {exc}"[:300]
                emit(result)
                continue
            _assign_doc_id(doc, index.manifest, taken)
            result.doc_id, result.warnings = doc.doc_id, doc.warnings
            existing = index.manifest.document(doc.doc_id)
            if existing and existing["state"] == "complete" and existing["sha256"] == doc.sha256:
                result.status, result.chunks = "unchanged", existing["n_chunks"]
                emit(result)
                continue
            result.status = "updated" if existing else "added"
            pending.append((doc, result))
            group_chunks += sum(len(b.text) for b in doc.blocks) // max(
                settings.chunk_chars // 2, 1
            )
            if group_chunks >= EMBED_GROUP_CHUNKS:
                flush()
                group_chunks = 0
        flush()
        if prune:
            for doc in index.manifest.documents(state=None):
                if not Path(doc["source_path"]).exists():
                    index.remove(doc["doc_id"])
                    emit(
                        FileResult(path=doc["source_path"], status="removed", doc_id=doc["doc_id"])
                    )
        bar.close()
        summary.index_version = index.manifest.index_version()
    return summary


def _write_group(
    index: Index,
    settings: Settings,
    pending: list[tuple[Document, FileResult]],
    emit: Callable[[FileResult], None],
) -> None:
    if not pending:
        return
    now = datetime.now(UTC).isoformat(timespec="seconds")
    per_doc = [
        split_document(doc, settings.chunk_chars, settings.chunk_overlap_sentences, now)
        for doc, _ in pending
    ]
    flat = [c for chunks in per_doc for c in chunks]
    vectors = index.embedder.embed([indexed_text(c) for c in flat])
    docs = [doc for doc, _ in pending]
    # One pending mark, one delete and one upsert for the whole group: per-document round trips
    # to the store dominated small-document corpora. Crash safety is unchanged: every document
    # of the group stays ``pending`` until its chunks are committed below.
    index.manifest.mark_pending_many(docs, now)
    index.store.delete_docs([doc.doc_id for doc in docs])
    index.store.upsert(flat, vectors)
    index.manifest.complete_many(list(zip(docs, per_doc, strict=True)), now)
    for (_, result), chunks in zip(pending, per_doc, strict=True):
        result.chunks = len(chunks)
        emit(result)
