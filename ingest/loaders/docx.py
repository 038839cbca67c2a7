"""DOCX loader (python-docx): headings from paragraph styles; zip bombs refused before parsing.

Before python-docx (lxml) sees a byte, the archive is checked from its own directory and then
every XML part is streamed once through zipfile, which enforces the declared sizes and CRCs:
too many entries, a high expansion ratio, an oversized part or a DTD are refused. python-docx
parses with ``resolve_entities=False`` and libxml2 2.11+ caps entity amplification anyway;
the DTD check makes the refusal explicit and independent of those versions.

Text is read from the XML elements directly where python-docx would do hostile-sized work:
``_Row.cells`` yields a cell once per spanned grid column (``gridSpan="1000000000"``) and
follows vertical merges recursively, and ``Paragraph.style`` runs an XPath over all styles for
every paragraph.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import LoadError
from core.types import Block

_MAX_UNCOMPRESSED = 200 * 1024 * 1024
_MAX_RATIO = 200
_MAX_ENTRIES = 5000  # a real DOCX has tens of parts, a few hundred with many images
_MAX_XML_PART = 64 * 1024 * 1024  # document.xml of a 1,000-page report is ~20 MB
_RATIO_MIN_SIZE = 1024 * 1024  # tiny parts compress absurdly well and harmlessly
_DTD_MARKERS = tuple(
    marker.encode(codec)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for codec in ("utf-8", "utf-16-le", "utf-16-be")
)
_EOCD = b"PK\x05\x06"


def _declared_entries(data: bytes) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile builds a
    ZipInfo (~0.5 KB) for each of possibly millions of entries."""
    pos = data.rfind(_EOCD, max(0, len(data) - 65_557))
    if pos < 0 or pos + 22 > len(data):
        return None
    total = struct.unpack_from("<H", data, pos + 10)[0]
    return None if total == 0xFFFF else total  # 0xFFFF: ZIP64, counted by zipfile below


def _check_zip(data: bytes) -> None:
    declared = _declared_entries(data)
    if declared is not None and declared > _MAX_ENTRIES:
        raise LoadError("zip_bomb", f"{declared} archive entries; refused as a zip bomb")
    with _docx_errors("not a valid DOCX (zip) file"), zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > _MAX_ENTRIES:
            raise LoadError("zip_bomb", f"{len(infos)} archive entries; refused as a zip bomb")
        total = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos) or 1
        if total > _MAX_UNCOMPRESSED or total / packed > _MAX_RATIO:
            ratio = total / packed
            raise LoadError(
                "zip_bomb", f"expands to {total} bytes ({ratio:.0f}x); refused as a zip bomb"
            )
        for info in infos:
            # One small bomb part hidden among big stored (uncompressed) images passes the
            # whole-archive ratio; check each sizeable part too.
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_MIN_SIZE and ratio > _MAX_RATIO:
                raise LoadError(
                    "zip_bomb", f"{info.filename} expands {ratio:.0f}x; refused as a zip bomb"
                )
        if "word/document.xml" not in {i.filename for i in infos}:
            raise LoadError("corrupt_docx", "the archive has no word/document.xml")
        for info in infos:
            if info.filename.endswith((".xml", ".rels")):
                _scan_xml_part(zf, info)


def _scan_xml_part(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Stream one part: size within limits, CRC valid (zipfile checks at EOF), and no DTD."""
    if info.file_size > _MAX_XML_PART:
        raise LoadError(
            "too_large",
            f"{info.filename} expands to {info.file_size / 1e6:.0f} MB; the limit is "
            f"{_MAX_XML_PART / 1e6:.0f} MB per XML part",
        )
    tail = b""
    with zf.open(info) as fh:
        while chunk := fh.read(1 << 20):
            window = tail + chunk
            if any(marker in window for marker in _DTD_MARKERS):
                raise LoadError(
                    "unsafe_xml",
                    f"{info.filename} declares a DTD or entities, which DOCX never needs "
                    "(entity expansion and external entities are refused)",
                )
            tail = window[-32:]


@contextmanager
def _docx_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (LoadError, RecursionError, MemoryError):
        raise  # specific already, or named by load_document
    except Exception as exc:  # python-docx / lxml raise many types on broken XML
        detail = f"{what} ({exc.__class__.__name__}: {exc})"
        raise LoadError("corrupt_docx", detail[:300]) from exc


def _style_names(document: Any) -> dict[str, str]:
    """styleId -> UI name ("heading 1" -> "Heading 1"), read once from styles.xml."""
    from docx.oxml.ns import qn
    from docx.styles import BabelFish

    try:
        styles = document.styles.element
    except Exception:  # a broken styles part: body text is still worth reading
        return {}
    names: dict[str, str] = {}
    for style in styles.iterchildren(qn("w:style")):
        style_id = style.get(qn("w:styleId"))
        name_el = style.find(qn("w:name"))
        if style_id and name_el is not None:
            names[style_id] = BabelFish.internal2ui(name_el.get(qn("w:val")) or "")
    return names


def load_docx(data: bytes) -> tuple[str | None, list[Block], dict[str, str]]:
    _check_zip(data)
    import docx
    from docx.table import _Cell

    with _docx_errors("the DOCX cannot be parsed"):
        document = docx.Document(io.BytesIO(data))
    with _docx_errors("the DOCX properties cannot be read"):
        title = (document.core_properties.title or "").strip() or None
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    with _docx_errors("the DOCX body cannot be read"):
        names = _style_names(document)
        for para in document.paragraphs:
            text = para.text.strip()
            if not text:
                continue
            # the style id straight from <w:pStyle> (python-docx's private but long-stable
            # ``_p``): Paragraph.style would run an XPath over every style per paragraph
            style = names.get(para._p.style or "", "")
            if style == "Title":
                title = title or text
                continue
            if style.startswith("Heading"):
                digits = "".join(ch for ch in style if ch.isdigit())
                level = int(digits[:2]) if digits else 1
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
            for tr in table._tbl.tr_lst:
                cells = []
                for tc in tr.tc_lst:
                    # a vertical-merge continuation repeats the cell above: its text is there
                    if tc.vMerge == "continue":
                        continue
                    cell_text = _Cell(tc, table).text.strip()
                    if cell_text:
                        cells.append(cell_text)
                if cells:
                    blocks.append(Block(" | ".join(cells), tuple(h for _, h in path)))
    return title, blocks, {}
