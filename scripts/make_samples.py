"""Generate the PDF and DOCX files of the sample library in data_samples/.

Source text lives in scripts/sample_sources/*.md: a front matter block (the metadata keys the
ingester reads, plus ``format: pdf`` or ``format: docx``) followed by a small Markdown subset:
``#``/``##``/``###`` headings, paragraphs, ``- `` bullet items and ``<!-- page-break -->`` lines.
Each source becomes ``data_samples/<name>.<format>`` plus a ``<name>.<format>.meta.json`` sidecar.

Output is deterministic (fixed dates, fixed zip timestamps), so re-running the script does not
change the files' hashes and does not force a re-index.

Run: .venv/bin/python scripts/make_samples.py [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = Path(__file__).resolve().parent / "sample_sources"
DEFAULT_OUT = ROOT / "data_samples"

META_KEYS = (
    "title",
    "issuing_body",
    "publication_date",
    "version",
    "supersedes",
    "recommendation_grade",
    "source_url",
)
FIXED_DATE = datetime(2025, 1, 1, tzinfo=UTC)
PAGE_BREAK = "<!-- page-break -->"
AUTHOR = "clinrag team"

# PDF layout (points are fpdf2's default unit "mm" here; font sizes are in pt)
BODY_PT = 10
H1_PT = 18
H2_PT = 14
H3_PT = 12
LINE_MM = 5.2


@dataclass
class Element:
    kind: str  # h1 | h2 | h3 | p | li | break
    text: str = ""


@dataclass
class Source:
    name: str
    fmt: str
    meta: dict[str, str]
    elements: list[Element]


def parse_source(path: Path) -> Source:
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise SystemExit(f"{path.name}: missing front matter")
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            meta[key.strip()] = value.strip()
    fmt = meta.pop("format", "")
    if fmt not in {"pdf", "docx"}:
        raise SystemExit(f"{path.name}: front matter needs 'format: pdf' or 'format: docx'")
    unknown = set(meta) - set(META_KEYS)
    if unknown:
        raise SystemExit(f"{path.name}: unknown metadata keys {sorted(unknown)}")

    elements: list[Element] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            elements.append(Element("p", " ".join(para)))
            para.clear()

    for raw in text[match.end() :].splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif line == PAGE_BREAK:
            flush()
            elements.append(Element("break"))
        elif heading := re.match(r"^(#{1,3})\s+(.+)$", line):
            flush()
            elements.append(Element(f"h{len(heading.group(1))}", heading.group(2).strip()))
        elif line.startswith("- "):
            flush()
            elements.append(Element("li", line[2:].strip()))
        else:
            para.append(line)
    flush()
    return Source(path.stem, fmt, meta, elements)


# ---------------------------------------------------------------- PDF


def write_pdf(src: Source, dest: Path) -> int:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    for el in src.elements:  # core fonts are latin-1 only
        try:
            el.text.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise SystemExit(f"{src.name}: non latin-1 text in PDF source: {el.text!r}") from exc

    pdf = FPDF(format="Letter")
    pdf.set_margins(22, 20, 22)
    pdf.set_auto_page_break(auto=True, margin=20)
    # No /Title entry: the loader would then keep the H1 as an outer section of every block.
    # The title reaches the index through the .meta.json sidecar instead.
    pdf.set_author(AUTHOR)
    pdf.set_subject(f"Summary of a {src.meta['issuing_body']} guideline")
    pdf.set_creator("scripts/make_samples.py")
    pdf.set_creation_date(FIXED_DATE)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(text: str, size: int, before: float, after: float) -> None:
        # keep a heading with at least a few lines of its text
        if pdf.get_y() + before + size * 0.5 + 3 * LINE_MM > pdf.page_break_trigger:
            pdf.add_page()
        elif pdf.get_y() > pdf.t_margin + 1:
            pdf.ln(before)
        pdf.set_font("Helvetica", "B", size)
        pdf.multi_cell(width, size * 0.5, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(after)

    for el in src.elements:
        if el.kind == "break":
            pdf.add_page()
        elif el.kind == "h1":
            heading(el.text, H1_PT, 0, 4)
        elif el.kind == "h2":
            heading(el.text, H2_PT, 4, 2)
        elif el.kind == "h3":
            heading(el.text, H3_PT, 2, 1)
        elif el.kind == "p":
            pdf.set_font("Helvetica", "", BODY_PT)
            pdf.multi_cell(width, LINE_MM, el.text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(2)
        elif el.kind == "li":
            # The bullet is drawn, not typed, so extracted text holds only the item itself.
            pdf.set_font("Helvetica", "", BODY_PT)
            if pdf.get_y() + LINE_MM > pdf.page_break_trigger:
                pdf.add_page()
            y = pdf.get_y()
            pdf.circle(x=pdf.l_margin + 2.2, y=y + LINE_MM / 2, radius=0.7, style="F")
            pdf.set_x(pdf.l_margin + 5)
            pdf.multi_cell(width - 5, LINE_MM, el.text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(1)
    pdf.output(str(dest))
    return pdf.page_no()


# ---------------------------------------------------------------- DOCX


def write_docx(src: Source, dest: Path) -> None:
    import docx
    from docx.shared import Pt

    document = docx.Document()
    document.styles["Normal"].font.name = "Calibri"
    document.styles["Normal"].font.size = Pt(11)
    props = document.core_properties
    props.title = src.meta["title"]
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.subject = f"Summary of a {src.meta['issuing_body']} guideline"
    props.comments = "Summary written by the clinrag team for demonstration."
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1

    # The document title uses the "Title" style; sections use "Heading 1"/"Heading 2".
    styles = {"h1": "Title", "h2": "Heading 1", "h3": "Heading 2"}
    for el in src.elements:
        if el.kind in styles:
            document.add_paragraph(el.text, style=styles[el.kind])
        elif el.kind == "p":
            document.add_paragraph(el.text)
        elif el.kind == "li":
            document.add_paragraph(el.text, style="List Bullet")
        elif el.kind == "break":
            document.add_page_break()

    buf = io.BytesIO()
    document.save(buf)
    dest.write_bytes(_normalize_zip(buf.getvalue()))


def _normalize_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed timestamps so identical content gives identical bytes."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for info in zin.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(2025, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            zout.writestr(fixed, zin.read(info.filename))
    return out.getvalue()


# ---------------------------------------------------------------- main


def write_sidecar(src: Source, dest: Path) -> Path:
    meta = {key: src.meta[key] for key in META_KEYS if src.meta.get(key)}
    side = dest.with_name(dest.name + ".meta.json")
    side.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    paths = sorted(SOURCES.glob("*.md"))
    if not paths:
        print(f"no sources in {SOURCES}", file=sys.stderr)
        return 1
    for path in paths:
        src = parse_source(path)
        dest = args.out / f"{src.name}.{src.fmt}"
        if src.fmt == "pdf":
            pages = write_pdf(src, dest)
            detail = f"{pages} pages"
        else:
            write_docx(src, dest)
            detail = "docx"
        write_sidecar(src, dest)
        print(f"wrote {dest.relative_to(args.out.parent)} ({detail}, {dest.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
