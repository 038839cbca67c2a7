"""Fuzz every loader: whatever the bytes, the outcome is a Document or a LoadError.

Each format gets raw random bytes and structure-aware mutations of a small valid file (bit
flips, truncation, insertion of the format's own syntax tokens, deletion, duplication); the
DOCX fuzzer also mutates the XML inside a well-formed zip, where python-docx and lxml do
their work. Any other exception, a parse slower than the deadline, or a Document that breaks
the loaders' invariants fails the test. Examples are bounded so the file runs in ~30-60 s on
two cores; a failure prints the reproducing example.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import LoadError
from core.types import Document
from ingest.loaders import MAX_TITLE_CHARS, REASONS, load_document

LIMITS = {"max_bytes": 2_000_000, "max_pages": 20, "timeout_s": 10.0}
FUZZ = settings(
    deadline=timedelta(seconds=5),  # a parse this slow on a small input is a bug in itself
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

TOKENS = {
    "pdf": [
        b"obj",
        b"endobj",
        b"stream\n",
        b"\nendstream",
        b"<<",
        b">>",
        b"[",
        b"]",
        b"/Length 99999999",
        b" 0 R",
        b"xref",
        b"trailer",
        b"%%EOF",
        b"(",
        b")",
        b"\\",
        b"/Filter /FlateDecode",
        b"/Type /Pages",
        b"/Count 999999999",
        b"/Kids [3 0 R 3 0 R]",
        b"BT",
        b"Tj",
        b"TJ",
        b"-1",
        b"1e308",
    ],
    "html": [
        b"<",
        b"</",
        b"<!--",
        b"-->",
        b"<![CDATA[",
        b"<?",
        b"<!DOCTYPE html>",
        b"<p>",
        b"<li>",
        b"<h2>",
        b"<td>",
        b"<script>",
        b"<style>",
        b"&#",
        b"&#x110000;",
        b"&amp",
        b'<meta name="title" content="',
        b" hidden ",
        b' style="display:none"',
        b"\x00",
        b"\xff",
        b"\xef\xbb\xbf",
    ],
    "md": [
        b"---\n",
        b"---\r\n",
        b"# ",
        b"###### ",
        b" #",
        b"[",
        b"](",
        b"![",
        b")",
        b"```",
        b"**",
        b"restricted_roles:\n  - a\n",
        b"title: ",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"\xff\xfe",
        b"\x00",
        b"\xe2\x80\x8b",
        b"\xf3\xa0\x80\x81",
    ],
    "docx": [
        b"<w:p>",
        b"</w:p>",
        b"<w:r><w:t>",
        b"</w:t></w:r>",
        b"<w:tbl><w:tr><w:tc>",
        b"</w:tc></w:tr></w:tbl>",
        b'<w:gridSpan w:val="99999999"/>',
        b"<w:vMerge/>",
        b'<w:pStyle w:val="Heading1"/>',
        b"<!DOCTYPE x>",
        b"&",
        b"&lt;",
        b"<",
        b">",
        b"\x00",
        b"PK\x03\x04",
        b"PK\x05\x06",
    ],
}
TOKENS["txt"] = TOKENS["md"]


# ----------------------------------------------------------------------------- seeds


@cache
def seed(kind: str) -> bytes:
    """A small valid file of each kind: the starting point of the structure-aware mutations."""
    if kind == "pdf":
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_compression(False)  # mutations then hit operators and text, not deflate noise
        pdf.set_title("Fuzz")
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 10, "Dose", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, "Adults take 50 mg daily. Children take 10 mg.")
        return bytes(pdf.output())
    if kind == "docx":
        import docx

        document = docx.Document()
        document.add_heading("Fuzz", level=1)
        document.add_heading("Dose", level=2)
        document.add_paragraph("Adults take 50 mg daily.", style="List Bullet")
        table = document.add_table(rows=2, cols=2)
        table.cell(0, 0).merge(table.cell(1, 0)).text = "Merged"
        table.cell(0, 1).text = "Cell"
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()
    if kind == "html":
        return (
            b"<!DOCTYPE html><html><head><title>Fuzz</title>"
            b'<meta name="issuing-body" content="X"></head><body><h1>Fuzz</h1><h2>Dose</h2>'
            b"<p>Adults take <b>50 mg</b> daily.</p><!-- note --><ul><li>One</li><li>Two</li>"
            b"</ul><table><tr><td>a</td><td>b</td></tr></table><p hidden>no</p>"
            b"<script>x()</script></body></html>"
        )
    if kind == "md":
        return (
            b"---\ntitle: Fuzz\nrestricted_roles:\n  - nurse\n---\n# Fuzz\n\n## Dose\n\n"
            b'Adults take **50 mg** daily, see [the table](http://x.test "t").\n\n'
            b"```\ncode\n```\n\n- item\n"
        )
    return b"Fuzz Guideline\n\n1. Dose\n\nAdults take 50 mg daily.\n\nCHILDREN\n\nTen mg.\n"


EXT = {"pdf": ".pdf", "docx": ".docx", "html": ".html", "md": ".md", "txt": ".txt"}


# ----------------------------------------------------------------------------- mutations


def _mutation(kind: str) -> st.SearchStrategy[tuple]:
    pos = st.integers(min_value=0, max_value=1 << 30)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=32)),
        st.tuples(st.just("token"), pos, st.sampled_from(TOKENS[kind]), st.integers(1, 200)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("duplicate"), pos, st.integers(1, 256), st.integers(1, 50)),
    )


def apply(data: bytes, mutations: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, at, *args in mutations:
        i = at % (len(buf) + 1)
        if op == "flip" and buf:
            buf[i % len(buf)] ^= 1 << args[0]
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = args[0]
        elif op == "token":
            buf[i:i] = args[0] * args[1]
        elif op == "delete":
            del buf[i : i + args[0]]
        elif op == "duplicate":
            buf[i:i] = bytes(buf[i : i + args[0]]) * args[1]
    return bytes(buf)


def mutated(kind: str) -> st.SearchStrategy[bytes]:
    return st.lists(_mutation(kind), min_size=1, max_size=6).map(lambda ms: apply(seed(kind), ms))


def docx_xml_mutated() -> st.SearchStrategy[bytes]:
    """A well-formed zip whose document.xml (or styles.xml) is mutated: lxml and python-docx
    see the damage instead of zipfile rejecting the archive first."""

    def rebuild(args: tuple[str, list[tuple]]) -> bytes:
        member, mutations = args
        out = io.BytesIO()
        with (
            zipfile.ZipFile(io.BytesIO(seed("docx"))) as src,
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
        ):
            for info in src.infolist():
                data = src.read(info.filename)
                dst.writestr(
                    info.filename, apply(data, mutations) if info.filename == member else data
                )
        return out.getvalue()

    members = st.sampled_from(["word/document.xml", "word/document.xml", "word/styles.xml"])
    return st.tuples(members, st.lists(_mutation("docx"), min_size=1, max_size=6)).map(rebuild)


# ----------------------------------------------------------------------------- the check


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check(folder: Path, kind: str, data: bytes, sidecar: bytes | None = None) -> None:
    """Load ``data`` as a ``kind`` file: a Document that keeps the invariants, or a LoadError
    with a known reason. Anything else propagates and fails the example."""
    path = folder / f"fuzz{EXT[kind]}"
    path.write_bytes(data)
    side = folder / f"fuzz{EXT[kind]}.meta.json"
    if sidecar is None:
        side.unlink(missing_ok=True)
    else:
        side.write_bytes(sidecar)
    try:
        doc = load_document(path, **LIMITS)
    except LoadError as exc:
        assert exc.reason in REASONS, exc.reason
        return
    assert isinstance(doc, Document)
    assert doc.blocks and all(b.text.strip() and "\x00" not in b.text for b in doc.blocks)
    assert doc.title.strip() and len(doc.title) <= MAX_TITLE_CHARS
    assert all(isinstance(v, str) for v in doc.metadata.values())


@pytest.mark.parametrize("kind", ["pdf", "html", "md", "txt", "docx"])
def test_seed_files_load(fuzz_dir: Path, kind: str) -> None:
    """The mutations start from files that do load, so they explore near-valid input."""
    check(fuzz_dir, kind, seed(kind))
    assert load_document(fuzz_dir / f"fuzz{EXT[kind]}", **LIMITS).blocks


@pytest.mark.parametrize("kind", ["pdf", "html", "md", "txt", "docx"])
@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=4096))
def test_random_bytes(fuzz_dir: Path, kind: str, data: bytes) -> None:
    check(fuzz_dir, kind, data)


@settings(FUZZ, max_examples=800)
@given(data=mutated("pdf"))
def test_mutated_pdf(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "pdf", data)


@settings(FUZZ, max_examples=600)
@given(data=mutated("html"))
def test_mutated_html(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "html", data)


@settings(FUZZ, max_examples=600)
@given(data=mutated("md"))
def test_mutated_markdown(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "md", data)


@settings(FUZZ, max_examples=300)
@given(data=mutated("txt"))
def test_mutated_text(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "txt", data)


@settings(FUZZ, max_examples=300)
@given(data=mutated("docx"))
def test_mutated_docx_archive(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "docx", data)


@settings(FUZZ, max_examples=500)
@given(data=docx_xml_mutated())
def test_mutated_docx_xml(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, "docx", data)


_MD_ALPHABET = st.characters(
    codec="utf-8", categories=["L", "N", "P", "S", "Zs", "Cc", "Cf", "Zl", "Zp"]
)


@settings(FUZZ, max_examples=400)
@given(
    front=st.text(_MD_ALPHABET, max_size=200),
    body=st.text(_MD_ALPHABET, max_size=400),
    closing=st.sampled_from(["---\n", "---\r\n", "--- \n", "", "...\n"]),
)
def test_front_matter_text(fuzz_dir: Path, front: str, body: str, closing: str) -> None:
    """Front matter and Markdown from arbitrary Unicode, control and format characters."""
    check(fuzz_dir, "md", f"---\n{front}\n{closing}{body}".encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=300)
@given(
    sidecar=st.one_of(
        st.binary(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["title", "restricted_roles", "x"]), inner)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_sidecar(fuzz_dir: Path, sidecar: bytes) -> None:
    check(fuzz_dir, "md", seed("md"), sidecar=sidecar)


_LINE = st.text(_MD_ALPHABET, max_size=40).map(lambda s: s.replace("\n", " ").replace("\r", " "))


@settings(FUZZ, max_examples=300)
@given(
    kind=st.sampled_from(["md", "txt"]),
    lead=st.sampled_from(["", "\n", "\n\n", " \n", "\r\n"]),
    before=st.lists(_LINE, max_size=4),
    after=st.lists(_LINE, max_size=4),
    roles=st.sampled_from(["nurse", "[nurse]", "'nurse'", "\n  - nurse"]),
    newline=st.sampled_from(["\n", "\r\n", "\r", "\r\r\n"]),
    body=st.text(_MD_ALPHABET, max_size=200),
)
def test_a_declared_restriction_is_never_dropped(
    fuzz_dir: Path,
    kind: str,
    lead: str,
    before: list[str],
    after: list[str],
    roles: str,
    newline: str,
    body: str,
) -> None:
    """Whatever surrounds ``restricted_roles`` in front matter (other lines, valid or not, a
    blank line above, any line ends, a .txt file), the file is refused or restricted: never
    public."""
    lines = [*before, f"restricted_roles: {roles}", *after]
    text = lead + "\n".join(["---", *lines, "---", "Guideline body text.", body])
    path = fuzz_dir / f"restricted{EXT[kind]}"
    path.write_bytes(text.replace("\n", newline).encode("utf-8", "surrogatepass"))
    try:
        doc = load_document(path, **LIMITS)
    except LoadError as exc:
        assert exc.reason in REASONS, exc.reason
        return
    assert "nurse" in doc.metadata.get("restricted_roles", "").split(","), (text, doc.metadata)
