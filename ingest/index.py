"""Idempotent, crash-safe ingestion: files -> Documents -> Chunks -> the library's index.

One bad file is reported in the summary with its reason, never fatal. Writing follows the
index's pending -> vectors -> complete protocol (``core.library.index``), in groups of
documents so the embedder sees large batches.
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

from core.config import Settings
from core.errors import LoadError
from core.library.index import EMBED_GROUP_CHUNKS, Index, indexed_text, writer_lock
from core.library.manifest import Manifest
from core.types import Document
from ingest.loaders import deadline_available, is_candidate, load_document
from ingest.loaders.isolated import IsolatedLoader
from ingest.split import split_document


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


@contextmanager
def _file_loader(
    isolate: bool | None, max_bytes: int, max_pages: int, timeout_s: float | None
) -> Iterator[Callable[[Path], Document]]:
    """``load_document`` with the run's limits: in this process where the parse timeout works
    (the command line's main thread), else in a child process (the app's script threads),
    so that a parse is bounded the same way wherever ingest runs."""
    if isolate is None:
        isolate = not deadline_available()
    if not isolate:
        # looked up at each call: the hostile-files benchmark wraps it to time each parse
        yield lambda path: load_document(
            path, max_bytes=max_bytes, max_pages=max_pages, timeout_s=timeout_s
        )
        return
    with IsolatedLoader() as child:
        child.start()  # before the writer lock: a failure here is the run's, not a file's
        yield lambda path: child.load(
            path, max_bytes=max_bytes, max_pages=max_pages, timeout_s=timeout_s
        )


def ingest(
    paths: Sequence[Path],
    settings: Settings,
    *,
    prune: bool = False,
    progress: bool | None = None,
    index: Index | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    isolate: bool | None = None,
) -> IngestSummary:
    """Ingest files and folders. One bad file is reported, never fatal.

    ``isolate`` parses each file in a child process (``ingest.loaders.isolated``); by default
    only where the parse timeout cannot interrupt a parse in this thread.
    """
    index = index or Index(settings)
    summary = IngestSummary()
    loader = _file_loader(
        isolate,
        max_bytes=int(settings.max_file_mb * 1024 * 1024),
        max_pages=settings.max_pages,
        timeout_s=settings.parse_timeout_s,
    )
    with loader as load, writer_lock(settings):
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
                doc = load(path)
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
            for row in index.manifest.documents(state=None):
                if not Path(row["source_path"]).exists():
                    index.remove(row["doc_id"])
                    emit(
                        FileResult(path=row["source_path"], status="removed", doc_id=row["doc_id"])
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
