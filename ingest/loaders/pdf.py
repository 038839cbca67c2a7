"""PDF loader (pypdf): page numbers are kept; headings are found by font size."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from assistant.errors import LoadError
from assistant.types import Block


def load_pdf(data: bytes, max_pages: int) -> tuple[str | None, list[Block], dict[str, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise LoadError("corrupt_pdf", "the file does not start with a PDF header")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:  # pypdf raises several types for unsupported ciphers
                ok = 0
            if not ok:
                raise LoadError(
                    "encrypted_pdf", "the PDF is password-protected; save it unprotected"
                )
        n_pages = len(reader.pages)
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise LoadError(
            "corrupt_pdf", f"the PDF cannot be read ({exc.__class__.__name__})"
        ) from exc
    if n_pages == 0:
        raise LoadError("empty_pdf", "the PDF has no pages")
    if n_pages > max_pages:
        raise LoadError("too_many_pages", f"{n_pages} pages; the limit is max_pages={max_pages}")

    pages: list[list[tuple[str, float]]] = []
    try:
        for page in reader.pages:
            pages.append(_lines_with_size(page))
    except Exception as exc:  # a broken content stream: pypdf raises many types
        raise LoadError("corrupt_pdf", f"a page cannot be read ({exc.__class__.__name__})") from exc

    sizes = Counter(round(s) for lines in pages for t, s in lines for _ in range(len(t)))
    if not sizes:
        raise LoadError("no_text", "the PDF holds no extractable text (scanned images need OCR)")
    body = sizes.most_common(1)[0][0]
    info = reader.metadata or {}
    title: str | None = str(info.get("/Title") or "").strip() or None
    blocks: list[Block] = []
    section: tuple[str, ...] = ()
    levels: list[tuple[float, str]] = []
    for page_no, lines in enumerate(pages, start=1):
        buf: list[str] = []
        for text, size in lines:
            if size >= body * 1.15 and len(text) < 120:
                _flush(buf, blocks, section, page_no)
                if not blocks and not levels and (title is None or text.lower() == title.lower()):
                    title = title or text
                    continue
                # bigger font = higher level; drop deeper or equal headings from the path
                levels = [(s, h) for s, h in levels if s > size + 0.5] + [(size, text)]
                section = tuple(h for _, h in levels)
                continue
            buf.append(text)
            if text.endswith((".", ":", "?", "!")) or text.startswith(("-", "•")):
                _flush(buf, blocks, section, page_no)
        _flush(buf, blocks, section, page_no)
    return title, blocks, {}


def _lines_with_size(page: Any) -> list[tuple[str, float]]:
    """(line text, font size) pairs in reading order, via pypdf's text visitor."""
    parts: list[tuple[str, float]] = []

    def visit(text: str, cm: Any, tm: Any, font: Any, size: float) -> None:
        scale = abs(float(tm[3])) if tm and tm[3] else 1.0
        parts.append((text, float(size) * (scale if scale > 0 else 1.0)))

    page.extract_text(visitor_text=visit)
    lines: list[tuple[str, float]] = []
    current = ""
    current_size = 0.0
    for text, size in parts:
        pieces = text.split("\n")
        for i, piece in enumerate(pieces):
            if piece.strip():
                current += piece
                current_size = max(current_size, size)
            if i < len(pieces) - 1:
                if current.strip():
                    lines.append((" ".join(current.split()), current_size))
                current, current_size = "", 0.0
    if current.strip():
        lines.append((" ".join(current.split()), current_size))
    return lines


def _flush(buf: list[str], blocks: list[Block], section: tuple[str, ...], page: int) -> None:
    text = " ".join(buf).strip()
    if text:
        blocks.append(Block(text, section, page))
    buf.clear()
