"""PDF loader (pypdf): page numbers are kept; headings are found by font size."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import import_module
from typing import Any

from core.errors import LoadError
from core.types import Block


@contextmanager
def _pdf_errors(what: str) -> Iterator[None]:
    """Map pypdf's exceptions to reasons. pypdf on hostile input raises far more than
    PdfReadError (KeyError, IndexError, struct.error, zlib.error, AssertionError...): any
    exception from inside pypdf means the PDF is unreadable, so it is corrupt_pdf; resource
    limits are too_complex; recursion and memory are left to load_document to name."""
    from pypdf.errors import PyPdfError

    limit_error = getattr(import_module("pypdf.errors"), "LimitReachedError", None)
    try:
        yield
    except (LoadError, RecursionError, MemoryError):
        raise
    except Exception as exc:
        if exc.__class__.__name__ == "DependencyError":  # AES without a crypto provider
            raise LoadError(
                "encrypted_pdf",
                "the PDF is AES-encrypted and the 'cryptography' package is not installed; "
                "save it unprotected",
            ) from exc
        if limit_error is not None and isinstance(exc, limit_error):
            raise LoadError("too_complex", f"the PDF exceeds a pypdf safety limit ({exc})") from exc
        kind = exc.__class__.__name__
        if isinstance(exc, PyPdfError) and str(exc):
            kind += f": {exc}"
        raise LoadError("corrupt_pdf", f"{what} ({kind})"[:300]) from exc


def _declared_pages(reader: Any) -> int:
    """The page count the page tree's root claims, read without walking the tree: a file
    claiming a million pages is refused before pypdf builds a million page objects."""
    try:
        count = reader.trailer["/Root"]["/Pages"]["/Count"]
        return int(count) if isinstance(count, int) else 0
    except Exception:  # a broken root: the full walk below reports it
        return 0


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def _pypdf_log_counted() -> Iterator[_Counter]:
    """Count pypdf's repair messages instead of printing them: a hostile PDF logs one per
    broken object, thousands of lines on the console for a single file."""
    logger = logging.getLogger("pypdf")
    counter = _Counter()
    propagate = logger.propagate
    logger.addHandler(counter)
    logger.propagate = False
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.propagate = propagate


def load_pdf(
    data: bytes, max_pages: int
) -> tuple[str | None, list[Block], dict[str, str], list[str]]:
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise LoadError("corrupt_pdf", "the file does not start with a PDF header")
    with _pypdf_log_counted() as log:
        title, blocks = _read_pdf(data, max_pages)
    warnings = [f"pypdf worked around {log.count} problem(s) in the file"] if log.count else []
    return title, blocks, {}, warnings


def _read_pdf(data: bytes, max_pages: int) -> tuple[str | None, list[Block]]:
    from pypdf import PdfReader

    with _pdf_errors("the PDF cannot be read"):
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            ok: int  # pypdf's PasswordType, an int enum; 0 when nothing decrypted
            try:
                ok = reader.decrypt("")
            except Exception as exc:  # pypdf raises several types for unsupported ciphers
                hint = " (AES needs the 'cryptography' package)" if "AES" in str(exc) else ""
                ok = 0
            else:
                hint = ""
            if not ok:
                raise LoadError(
                    "encrypted_pdf", f"the PDF is password-protected{hint}; save it unprotected"
                )
        declared = _declared_pages(reader)
        if declared > max_pages:
            raise LoadError(
                "too_many_pages", f"declares {declared} pages; the limit is max_pages={max_pages}"
            )
        n_pages = len(reader.pages)
    if n_pages == 0:
        raise LoadError("empty_pdf", "the PDF has no pages")
    if n_pages > max_pages:
        raise LoadError("too_many_pages", f"{n_pages} pages; the limit is max_pages={max_pages}")

    pages: list[list[tuple[str, float]]] = []
    with _pdf_errors("a page cannot be read"):
        for page in reader.pages:
            pages.append(_lines_with_size(page))

    sizes = Counter(round(s) for lines in pages for t, s in lines for _ in range(len(t)))
    if not sizes:
        raise LoadError("no_text", "the PDF holds no extractable text (scanned images need OCR)")
    body = sizes.most_common(1)[0][0]
    title: str | None = None
    with contextlib.suppress(Exception):  # a broken /Info dictionary costs only the title
        info: Mapping[str, Any] = reader.metadata or {}
        title = str(info.get("/Title") or "").strip() or None
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
    return title, blocks


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
