"""One loader per format, chosen by extension; shared checks run before any parser sees a byte.

Every way a file can fail ends in ``LoadError(reason, detail)`` with a short stable reason code
(see ``REASONS``); the ingest summary counts them and the user sees the detail. Parsers are
fed untrusted bytes, so each loader maps its parser's exceptions to a reason, and
``load_document`` adds the cross-format ones: parse timeout, deep recursion, memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from core.errors import LoadError
from core.types import Block, Document
from ingest.loaders.metadata import SIDECAR_SUFFIX, load_sidecar, sidecar_path
from ingest.loaders.metadata import merge as merge_metadata

# What a format loader returns: title, blocks, metadata, and (HTML only) warnings.
Loaded = (
    tuple[str | None, list[Block], dict[str, str]]
    | tuple[str | None, list[Block], dict[str, str], list[str]]
)
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

# Every reason code a loader raises, for documentation and for tests that check no file ever
# ends with a generic one. ingest() itself adds only 'parse_error', for a loader bug.
REASONS = {
    "not_found": "the path does not exist (or vanished between listing and reading)",
    "unsupported_type": "the extension is not one clinrag reads",
    "bad_file_name": "the file name is not valid UTF-8",
    "not_a_regular_file": "a symlink (never followed), a folder, a pipe or a device",
    "unreadable": "the file cannot be opened (permissions, I/O error)",
    "too_large": "over max_file_mb, or a DOCX part that expands past its limit",
    "empty_file": "zero bytes",
    "wrong_extension": "the content is another supported format (a PDF named .txt)",
    "binary_content": "NUL bytes: an image or other binary file",
    "not_utf8": "text that is not valid UTF-8",
    "unsupported_encoding": "UTF-16/32 without a byte-order mark, or invalid UTF-16/32",
    "no_text": "nothing readable was extracted (blank, whitespace, invisible characters)",
    "bad_metadata": "front matter, HTML <meta> or .meta.json sidecar that is invalid, oversized, "
    "or has an unknown (e.g. misspelt) key",
    "corrupt_pdf": "pypdf cannot read the PDF or one of its pages",
    "encrypted_pdf": "the PDF needs a password",
    "empty_pdf": "the PDF has no pages",
    "too_many_pages": "over max_pages (declared or actual)",
    "corrupt_html": "the HTML parser rejected the input",
    "corrupt_docx": "not a readable DOCX (zip or XML broken)",
    "zip_bomb": "a DOCX that expands too much (ratio, total size or entry count)",
    "unsafe_xml": "a DOCX part declares a DTD or entities (billion laughs, XXE)",
    "too_complex": "a parser resource limit: memory, element count, pypdf limits",
    "too_deeply_nested": "nesting deep enough to exhaust the parser's recursion",
    "parse_timeout": "parsing took longer than parse_timeout_s",
}

# Zero-width, bidi-control, tag, variation-selector and filler characters: they hide text from
# a reader but not from the model (ASCII smuggling, Trojan Source), and "blank" files made of
# them must not count as text. C0/C1 controls (not tab/newline/CR/FF/VT) and NUL go too.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
# Runs of padding this long are never layout a reader needs; collapsing them keeps a file
# padded with megabytes of spaces from becoming megabytes of chunks.
_LONG_SPACE = re.compile(r"[^\S\n]{64,}")
# A block needs at least one letter or digit: lines of "----", "|---|" or "[[[[" carry nothing.
_WORD_CHAR = re.compile(r"[^\W_]")
MAX_TITLE_CHARS = 300
MAX_HEADING_CHARS = 2000  # real guidelines have 1,000-character headings
MAX_SECTION_DEPTH = 8

# Signatures of the formats clinrag reads, to name a misnamed file instead of failing to parse.
_HTML_START = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<(?:!doctype\s+html|html[\s>])", re.I)
_REFIRE_S = 1.0  # if a parser swallows the timeout exception, it is raised again this often


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


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    text = " ".join(text[: 4 * limit].split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _sanitize(blocks: list[Block], warnings: list[str]) -> list[Block]:
    out: list[Block] = []
    removed = 0
    clipped = False
    for block in blocks:
        text, n = _INVISIBLE.subn("", block.text)
        removed += n
        text = _LONG_SPACE.sub(" ", text).strip()
        if not text or not _WORD_CHAR.search(text):
            continue
        section = block.section
        # A heading is repeated in every chunk's embedded text: a megabyte "heading" from a
        # hostile file would be embedded thousands of times.
        if len(section) > MAX_SECTION_DEPTH or any(len(h) > MAX_HEADING_CHARS for h in section):
            clipped = True
            section = tuple(
                _clip(_INVISIBLE.sub("", h), MAX_HEADING_CHARS)
                for h in section[-MAX_SECTION_DEPTH:]
            )
        elif any(_INVISIBLE.search(h) for h in section):
            section = tuple(_INVISIBLE.sub("", h).strip() for h in section)
        out.append(Block(text, section, block.page))
    if removed:
        warnings.append(f"stripped {removed} invisible or control character(s)")
    if clipped:
        warnings.append(
            f"headings clipped to {MAX_HEADING_CHARS} characters and {MAX_SECTION_DEPTH} levels"
        )
    return out


class _ParseTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException so that the parsers' own broad
    ``except Exception`` recovery code (pypdf has plenty) cannot swallow it."""


def deadline_available() -> bool:
    """Whether ``parse_deadline`` can interrupt a parse here: in the main thread, on a
    platform with ``setitimer``. Elsewhere ``ingest`` parses in a child process instead."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def parse_deadline(seconds: float | None) -> Iterator[None]:
    """Raise ``_ParseTimeout`` in the body if it runs longer than ``seconds``.

    Uses ``setitimer(ITIMER_REAL)`` and SIGALRM, so a runaway parse is interrupted in the
    parsing thread itself: there is no helper thread that would keep burning CPU (Python
    threads cannot be killed). Limits, by design:

    * Only in the main thread of the main interpreter (signal handlers can only be installed
      there) and only where ``setitimer`` exists (not on Windows). Elsewhere, e.g. inside
      Streamlit's script threads, there is no timeout here: ``ingest`` then parses each file
      in a child process (``ingest.loaders.isolated``), on the child's main thread.
    * Python runs the handler between bytecodes: a single long C call (zlib, libxml2) finishes
      first. Those calls are bounded by the size limits; pure-Python parsing (pypdf,
      html.parser, regexes, which check for signals) is interrupted promptly.
    * A previous SIGALRM handler and timer are restored afterwards.
    """
    if not seconds or seconds <= 0 or not deadline_available():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _ParseTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_S)
    started = time.monotonic()
    try:
        yield
    finally:
        # An alarm may land while we disarm: retry until the timer is off, so the handler can
        # never be left installed (or the old one not restored).
        while True:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except _ParseTimeout:
                continue
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            left = max(outer_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything but a regular file and never reading past the limit.

    Opened with O_NOFOLLOW and O_NONBLOCK, then checked with fstat on the open descriptor:
    a file swapped for a symlink or a FIFO after the directory walk cannot redirect or block
    the read (a FIFO opened for reading without O_NONBLOCK waits forever for a writer).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a symlink
            raise LoadError("not_a_regular_file", "a symbolic link; not followed") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise LoadError("not_found", "the file disappeared before it was read") from exc
        raise LoadError("unreadable", f"cannot open the file ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoadError("not_a_regular_file", "not a regular file (a folder, pipe or device)")
        if info.st_size > max_bytes:
            raise LoadError(
                "too_large",
                f"{info.st_size / 1e6:.1f} MB exceeds max_file_mb ({max_bytes / 1e6:.1f} MB)",
            )
        if info.st_size == 0:
            raise LoadError("empty_file", "the file is empty")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            try:
                part = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            except OSError as exc:
                raise LoadError("unreadable", f"cannot read the file ({exc.strerror})") from exc
            if not part:
                break
            chunks.append(part)
            total += len(part)
        if total > max_bytes:  # it grew while we read it
            raise LoadError("too_large", "the file grew past max_file_mb while being read")
        if total == 0:
            raise LoadError("empty_file", "the file is empty")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _describe_link(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "a symbolic link"
    return f"a symbolic link (to {target})"


def _sniff(data: bytes) -> str | None:
    """The supported format the bytes are, whatever the extension says; None if unsure."""
    head = data[:1024]
    if head.lstrip()[:5].startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04") and b"[Content_Types].xml" in data[:65536]:
        return "docx"
    if _HTML_START.match(head):
        return "html"
    return None


# Which sniffed formats are an error for which declared kind. Text and Markdown may quote HTML,
# so HTML is only "wrong" inside a PDF or DOCX name.
_WRONG = {
    "pdf": {"docx", "html"},
    "docx": {"pdf", "html"},
    "html": {"pdf", "docx"},
    "markdown": {"pdf", "docx"},
    "text": {"pdf", "docx"},
}
_EXT_FOR = {"pdf": ".pdf", "docx": ".docx", "html": ".html"}


def load_document(
    path: Path, *, max_bytes: int, max_pages: int, timeout_s: float | None = None
) -> Document:
    """Load one file or raise LoadError with a specific reason.

    ``timeout_s`` bounds the parse (see ``parse_deadline`` for where it applies); None means
    no time limit. The size limit is checked before any byte is parsed.
    """
    from ingest.loaders.docx import load_docx
    from ingest.loaders.html import load_html
    from ingest.loaders.pdf import load_pdf
    from ingest.loaders.text import load_markdown, load_text

    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        # Undecodable bytes in a name survive as surrogates that SQLite, JSON and the console
        # refuse later, outside any per-file error handling.
        raise LoadError("bad_file_name", "the file name is not valid UTF-8; rename it") from exc
    if path.is_symlink():
        raise LoadError(
            "not_a_regular_file",
            f"{_describe_link(path)}; links are not followed so nothing outside the ingested "
            "folder is read. Copy the file in instead.",
        )
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise LoadError(
            "unsupported_type",
            f"'{path.suffix or path.name}' files are not supported "
            f"(supported: {', '.join(sorted(SUPPORTED))})",
        )
    data = _read_regular_file(path, max_bytes)
    actual = _sniff(data)
    if actual in _WRONG[kind]:
        raise LoadError(
            "wrong_extension",
            f"the content is {actual.upper()} but the name ends in {path.suffix}; "
            f"rename it to {path.stem}{_EXT_FOR[actual]}",
        )
    warnings: list[str] = []
    loaders: dict[str, Callable[[], Loaded]] = {
        "pdf": lambda: load_pdf(data, max_pages),
        "html": lambda: load_html(data),
        "markdown": lambda: load_markdown(data),
        "text": lambda: load_text(data),
        "docx": lambda: load_docx(data),
    }
    try:
        with parse_deadline(timeout_s):
            result = loaders[kind]()
            title, blocks, meta = result[:3]
            if len(result) > 3:
                warnings.extend(result[3])
            side_meta, side_bytes = load_sidecar(path)
            meta = merge_metadata(meta, side_meta, sidecar_path(path).name)
            blocks = _sanitize(blocks, warnings)
    except _ParseTimeout as exc:
        raise LoadError(
            "parse_timeout", f"parsing took longer than parse_timeout_s ({timeout_s:g} s)"
        ) from exc
    except RecursionError as exc:
        raise LoadError("too_deeply_nested", "the document nests too deeply to parse") from exc
    except MemoryError as exc:
        raise LoadError("too_complex", "parsing the document needed too much memory") from exc
    if not blocks:
        raise LoadError("no_text", "no text could be extracted from the file")
    title = meta.get("title") or title or path.stem.replace("-", " ").replace("_", " ")
    title = _clip(_INVISIBLE.sub("", title), MAX_TITLE_CHARS) or path.stem
    return Document(
        doc_id=slug(meta.get("doc_id") or path.stem),
        title=title.strip(),
        source_path=str(path),
        # A metadata edit is a document change: it must re-index the chunks that carry it.
        sha256=hashlib.sha256(data + side_bytes).hexdigest(),
        blocks=blocks,
        metadata={k: v for k, v in meta.items() if k not in {"title", "doc_id"}},
        warnings=warnings,
    )
