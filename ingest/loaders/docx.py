"""DOCX loader (python-docx): headings from paragraph styles; zip bombs refused before parsing.

Before python-docx (lxml) sees a byte, the archive is checked from its own directory and then
every part the parser will read as XML is streamed once through zipfile, which enforces the
declared sizes and CRCs: too many entries, a high expansion ratio, an oversized part, too much
markup or a DTD are refused. Which parts are XML is decided as python-docx decides it, by
content type (``[Content_Types].xml``), not by the part's name: a main document stored as
``word/document.bin`` is parsed all the same, and used to pass unchecked. python-docx parses
with ``resolve_entities=False`` and libxml2 2.11+ caps entity amplification anyway; the DTD
check makes the refusal explicit and independent of those versions.

Text is read from the XML elements directly where python-docx would do hostile-sized work:
``_Row.cells`` yields a cell once per spanned grid column (``gridSpan="1000000000"``) and
follows vertical merges recursively, and ``Paragraph.style`` runs an XPath over all styles for
every paragraph.
"""

from __future__ import annotations

import io
import posixpath
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import LoadError
from core.types import Block

_MAX_UNCOMPRESSED = 200 * 1024 * 1024
_MAX_RATIO = 200
_MAX_ENTRIES = 5000  # a real DOCX has tens of parts, a few hundred with many images
# What lxml and python-docx hold in memory grows with the markup, not the file: a 16 MB
# document.xml of short paragraphs took 460 MB and 30 s, and the former 64 MB per-part limit
# (applied only to parts named .xml) allowed four times that. Word writes ~30 bytes per tag,
# so for its output the byte limits bind; the tag limit binds on denser markup. At the tag
# limit (160,000 one-line paragraphs) a parse took 130 MB above the process's own and 4 s on
# one idle core; the parse timeout bounds the time on a loaded machine.
_MAX_XML_PART = 32 * 1024 * 1024  # document.xml of a 1,000-page report is ~20 MB
_MAX_XML_TOTAL = 48 * 1024 * 1024  # all the XML parts together: python-docx parses each
_MAX_XML_TAGS = 1_000_000  # "<" in all the XML parts: ~30 MB of Word's usual markup
_RATIO_MIN_SIZE = 1024 * 1024  # tiny parts compress absurdly well and harmlessly
_DTD_MARKERS = tuple(
    marker.encode(codec)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)
_EOCD = b"PK\x05\x06"
_CONTENT_TYPES = "[Content_Types].xml"


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
        names = {i.filename for i in infos}
        if "word/document.xml" not in names:
            raise LoadError("corrupt_docx", "the archive has no word/document.xml")
        if _CONTENT_TYPES not in names:
            raise LoadError("corrupt_docx", f"the archive has no {_CONTENT_TYPES}")
        budget = _XmlBudget()
        # the content types first: they say which of the other parts are XML
        types_info = next(i for i in reversed(infos) if i.filename == _CONTENT_TYPES)
        types_xml = _scan_xml_part(zf, types_info, budget, keep=True)
        is_xml = _xml_part_rule(types_xml)
        for info in infos:
            if info is not types_info and is_xml(info.filename):
                _scan_xml_part(zf, info, budget)


class _XmlBudget:
    """What the XML parts of one archive have used of the byte and tag limits."""

    def __init__(self) -> None:
        self.bytes = 0
        self.tags = 0


def _xml_part_rule(types_xml: bytes) -> Callable[[str], bool]:
    """A predicate: will python-docx parse this archive member as XML?

    python-docx reads ``[Content_Types].xml``, every ``.rels`` part and each part whose
    content type (an Override for its name, else the Default for its extension, both
    case-insensitive) maps to an XML part class. Conservatively, any member named .xml or
    .rels in any case, and any member whose content type is XML (``.../xml``, ``...+xml``)
    counts, images excepted: an SVG picture is never parsed, and often carries a DOCTYPE.
    """
    import docx  # noqa: F401  (importing it registers python-docx's part classes)
    from docx.opc.part import PartFactory, XmlPart
    from lxml import etree

    registered = {ct for ct, cls in PartFactory.part_type_for.items() if issubclass(cls, XmlPart)}
    # scanned already: no DTD, within the limits
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    with _docx_errors(f"{_CONTENT_TYPES} cannot be parsed"):
        root = etree.fromstring(types_xml, parser)
    defaults: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for el in root:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag.endswith("}Default") or tag == "Default":
            defaults[(el.get("Extension") or "").lower()] = el.get("ContentType") or ""
        elif tag.endswith("}Override") or tag == "Override":
            overrides[(el.get("PartName") or "").lower()] = el.get("ContentType") or ""

    def is_xml(name: str) -> bool:
        lower = name.lower()
        if lower.endswith((".xml", ".rels")):
            return True
        ext = posixpath.splitext(lower)[1].lstrip(".")
        ctype = (overrides.get("/" + lower) or defaults.get(ext) or "").strip().lower()
        return ctype in registered or (ctype.endswith("xml") and not ctype.startswith("image/"))

    return is_xml


def _scan_xml_part(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _XmlBudget, *, keep: bool = False
) -> bytes:
    """Stream one part: size and markup within limits, CRC valid (zipfile checks at EOF), no
    DTD. Returns the bytes when ``keep`` (the content types, which are parsed here)."""
    if info.file_size > _MAX_XML_PART:
        raise LoadError(
            "too_large",
            f"{info.filename} expands to {info.file_size / 1e6:.0f} MB; the limit is "
            f"{_MAX_XML_PART / 1e6:.0f} MB per XML part",
        )
    if budget.bytes + info.file_size > _MAX_XML_TOTAL:
        raise LoadError(
            "too_large",
            f"the XML parts expand to over {_MAX_XML_TOTAL / 1e6:.0f} MB together; that is "
            "the limit per DOCX",
        )
    tail = b""
    kept: list[bytes] = []
    with zf.open(info) as fh:
        while chunk := fh.read(1 << 20):
            window = tail + chunk
            if any(marker in window for marker in _DTD_MARKERS):
                raise LoadError(
                    "unsafe_xml",
                    f"{info.filename} declares a DTD or entities, which DOCX never needs "
                    "(entity expansion and external entities are refused)",
                )
            budget.bytes += len(chunk)
            budget.tags += chunk.count(b"<")
            if budget.tags > _MAX_XML_TAGS:
                raise LoadError(
                    "too_complex",
                    f"over {_MAX_XML_TAGS:,} XML tags (at {info.filename}); that is the "
                    "limit per DOCX",
                )
            if keep:
                kept.append(chunk)
            tail = window[-64:]  # the longest marker, in UTF-32, is 36 bytes
    return b"".join(kept)


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
