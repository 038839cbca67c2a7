"""One loader per format, chosen by extension; shared checks run before any parser sees a byte."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from assistant.errors import LoadError
from assistant.types import Block, Document
from ingest.loaders.metadata import SIDECAR_SUFFIX, read_sidecar

SUPPORTED = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".docx": "docx",
}
# Files in a library folder that describe it rather than belong to it.
SKIPPED_NAMES = re.compile(
    r"^(readme|about|license|changelog)(\.[a-z]+)?$|^example_questions\.json$", re.I
)

# Zero-width and Unicode tag characters hide text from a reader but not from the model.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\U000e0000-\U000e007f]")


def is_candidate(path: Path) -> bool:
    """Whether a file found while walking a folder should be offered to the loaders."""
    return not (
        path.name.startswith(".")
        or path.name.endswith(SIDECAR_SUFFIX)
        or SKIPPED_NAMES.match(path.name)
    )


def slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "document"


def _sanitize(blocks: list[Block], warnings: list[str]) -> list[Block]:
    out: list[Block] = []
    removed = 0
    for block in blocks:
        text, n = _INVISIBLE.subn("", block.text)
        removed += n
        text = text.replace("\x00", "")
        if text.strip():
            out.append(Block(text.strip(), block.section, block.page))
    if removed:
        warnings.append(f"stripped {removed} invisible character(s) (zero-width or tag)")
    return out


def load_document(path: Path, *, max_bytes: int, max_pages: int) -> Document:
    """Load one file or raise LoadError with a specific reason."""
    from ingest.loaders.docx import load_docx
    from ingest.loaders.html import load_html
    from ingest.loaders.pdf import load_pdf
    from ingest.loaders.text import load_markdown, load_text

    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise LoadError(
            "unsupported_type",
            f"'{path.suffix or path.name}' files are not supported "
            f"(supported: {', '.join(sorted(SUPPORTED))})",
        )
    if path.is_symlink() or not path.is_file():
        raise LoadError("not_a_regular_file", "symlinks and special files are not ingested")
    size = path.stat().st_size
    if size > max_bytes:
        raise LoadError(
            "too_large", f"{size / 1e6:.1f} MB exceeds max_file_mb ({max_bytes / 1e6:.1f} MB)"
        )
    if size == 0:
        raise LoadError("empty_file", "the file is empty")
    data = path.read_bytes()
    warnings: list[str] = []
    loaders: dict[str, Callable[[], tuple]] = {
        "pdf": lambda: load_pdf(data, max_pages),
        "html": lambda: load_html(data),
        "markdown": lambda: load_markdown(data),
        "text": lambda: load_text(data),
        "docx": lambda: load_docx(data),
    }
    try:
        result = loaders[kind]()
    except RecursionError as exc:
        raise LoadError("too_deeply_nested", "the document nests too deeply to parse") from exc
    except MemoryError as exc:
        raise LoadError("too_complex", "parsing the document needed too much memory") from exc
    title, blocks, meta = result[:3]
    if len(result) > 3:
        warnings.extend(result[3])
    meta = {**meta, **read_sidecar(path)}
    blocks = _sanitize(blocks, warnings)
    if not blocks:
        raise LoadError("no_text", "no text could be extracted from the file")
    title = meta.get("title") or title or path.stem.replace("-", " ").replace("_", " ")
    return Document(
        doc_id=slug(meta.get("doc_id") or path.stem),
        title=title.strip(),
        source_path=str(path),
        sha256=hashlib.sha256(data + _sidecar_bytes(path)).hexdigest(),
        blocks=blocks,
        metadata={k: v for k, v in meta.items() if k not in {"title", "doc_id"}},
        warnings=warnings,
    )


def _sidecar_bytes(path: Path) -> bytes:
    # A metadata edit is a document change: it must re-index the chunks that carry it.
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    return side.read_bytes() if side.is_file() else b""
