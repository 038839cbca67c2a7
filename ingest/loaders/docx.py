"""DOCX loader (python-docx): headings from paragraph styles; zip bombs refused before parsing."""

from __future__ import annotations

import io
import zipfile

from assistant.errors import LoadError
from assistant.types import Block

_MAX_UNCOMPRESSED = 200 * 1024 * 1024
_MAX_RATIO = 200


def _check_zip(data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise LoadError("corrupt_docx", "not a valid DOCX (zip) file") from exc
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos) or 1
    if total > _MAX_UNCOMPRESSED or total / packed > _MAX_RATIO:
        raise LoadError(
            "zip_bomb", f"expands to {total} bytes ({total / packed:.0f}x); refused as a zip bomb"
        )
    if "word/document.xml" not in {i.filename for i in infos}:
        raise LoadError("corrupt_docx", "the archive has no word/document.xml")


def load_docx(data: bytes) -> tuple[str | None, list[Block], dict[str, str]]:
    _check_zip(data)
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx / lxml raise many types on broken XML
        raise LoadError(
            "corrupt_docx", f"the DOCX cannot be parsed ({exc.__class__.__name__})"
        ) from exc
    title = (document.core_properties.title or "").strip() or None
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        if style == "Title":
            title = title or text
            continue
        if style.startswith("Heading"):
            digits = "".join(ch for ch in style if ch.isdigit())
            level = int(digits) if digits else 1
            if level == 1 and (title is None or text == title):
                title = title or text
                path = []
                continue
            path = [(lv, h) for lv, h in path if lv < level] + [(level, text)]
            continue
        if "List" in style:
            text = "- " + text
        blocks.append(Block(text, tuple(h for _, h in path)))
    for table in document.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells if c.text.strip()]
            if cells:
                blocks.append(Block(" | ".join(cells), tuple(h for _, h in path)))
    return title, blocks, {}
