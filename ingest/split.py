"""Chunking that respects sections, pages and sentences.

A chunk never crosses a section or a page, so every citation has one section and one page.
Sentences are packed up to ``chunk_chars``; a sentence longer than that is cut at word bounds.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from core import recommendations
from core.text import sentence_spans
from core.types import Chunk, Document

BLOCK_SEPARATOR = "\n\n"


def document_text(doc: Document) -> tuple[str, list[int]]:
    """The document's text and each block's start offset in it."""
    starts: list[int] = []
    pos = 0
    for block in doc.blocks:
        starts.append(pos)
        pos += len(block.text) + len(BLOCK_SEPARATOR)
    return BLOCK_SEPARATOR.join(b.text for b in doc.blocks), starts


def chunk_id(doc_id: str, text: str, char_start: int) -> str:
    digest = hashlib.sha256(f"{doc_id}\x00{char_start}\x00{text}".encode()).hexdigest()
    return f"{doc_id[:40]}:{digest[:16]}"


def split_document(
    doc: Document, chunk_chars: int = 700, overlap_sentences: int = 0, now: str | None = None
) -> list[Chunk]:
    now = now or datetime.now(UTC).isoformat(timespec="seconds")
    full, starts = document_text(doc)
    # (start, end) spans in document coordinates, grouped by (section, page)
    groups: list[tuple[tuple[str, ...], int | None, list[tuple[int, int]]]] = []
    for block, offset in zip(doc.blocks, starts, strict=True):
        spans = [(offset + a, offset + b) for a, b in _bounded(block.text, chunk_chars)]
        if groups and groups[-1][0] == block.section and groups[-1][1] == block.page:
            groups[-1][2].extend(spans)
        else:
            groups.append((block.section, block.page, spans))

    chunks: list[Chunk] = []
    for section, page, spans in groups:
        i = 0
        while i < len(spans):
            j = i
            while j + 1 < len(spans) and spans[j + 1][1] - spans[i][0] <= chunk_chars:
                j += 1
            start, end = spans[i][0], spans[j][1]
            text = full[start:end]
            section_path = " > ".join(section)
            # Found once here and kept with the chunk, so answers need not look for them.
            found = recommendations.find(text, section_path)
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(doc.doc_id, text, start),
                    doc_id=doc.doc_id,
                    text=text,
                    title=doc.title,
                    section=section_path,
                    page=page,
                    char_start=start,
                    char_end=end,
                    doc_sha256=doc.sha256,
                    source_path=doc.source_path,
                    ingested_at=now,
                    metadata=dict(doc.metadata)
                    | {recommendations.METADATA_KEY: recommendations.to_metadata(found)},
                )
            )
            i = max(j + 1 - overlap_sentences, i + 1)
    return chunks


def _bounded(text: str, limit: int) -> list[tuple[int, int]]:
    """Sentence spans, with any sentence longer than ``limit`` cut at word boundaries."""
    out: list[tuple[int, int]] = []
    for a, b in sentence_spans(text) or [(0, len(text))]:
        while b - a > limit:
            cut = text.rfind(" ", a + limit // 2, a + limit)
            cut = cut if cut > a else a + limit
            out.append((a, cut))
            a = cut
            while a < b and text[a].isspace():
                a += 1
        if b > a:
            out.append((a, b))
    return out
