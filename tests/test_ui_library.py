"""UI helpers without Streamlit: escaping, highlighting, currency warnings, uploads."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import Settings
from core.types import Actor, AnswerSentence, Evidence, SourceSentence
from services.library import (
    MAX_GUIDELINE_AGE_YEARS,
    MAX_UPLOAD_NAME,
    currency_warnings,
    safe_upload_name,
    save_uploads,
    superseded_by,
)
from ui.render import (
    attribution_by_source,
    heatmap_rows,
    highlighted_html,
    html_text,
    md_escape,
    source_highlights,
)


def doc(doc_id: str, title: str, **meta: str) -> dict[str, Any]:
    return {"doc_id": doc_id, "title": title, "metadata": meta}


DOCS = [
    doc("crc-2016", "CRC 2016", publication_date="2016-06-15"),
    doc("crc-2021", "CRC 2021", publication_date="2021-05-18", supersedes="crc-2016"),
    doc("flu", "Flu", publication_date="2025-09"),
    doc("old-by-title", "Old Title", publication_date="2025"),
    doc("new-by-title", "New", supersedes="Old Title, something else"),
]


def test_superseded_by_doc_id_or_title() -> None:
    assert [d["doc_id"] for d in superseded_by("crc-2016", "CRC 2016", DOCS)] == ["crc-2021"]
    assert [d["doc_id"] for d in superseded_by("old-by-title", "Old Title", DOCS)] == [
        "new-by-title"
    ]
    assert superseded_by("crc-2021", "CRC 2021", DOCS) == []


def test_currency_warnings() -> None:
    today = date(2026, 11, 28)
    old = currency_warnings("crc-2016", DOCS, today=today)
    assert old[0] == "Superseded by CRC 2021 (2021-05-18): check it."
    assert f"more than {MAX_GUIDELINE_AGE_YEARS} years ago" in old[1]
    assert currency_warnings("crc-2021", DOCS, today=today) == [
        "Published 2021-05-18, more than 5 years ago: check for a newer version."
    ]
    assert currency_warnings("crc-2021", DOCS, today=date(2026, 5, 18)) == []
    assert currency_warnings("flu", DOCS, today=today) == []
    assert currency_warnings("flu", DOCS, today=today, max_age_years=1) == [
        "Published 2025-09, more than 1 year ago: check for a newer version."
    ]
    assert currency_warnings("unknown", DOCS, today=today) == []


def test_markdown_escaping_shows_text_literally() -> None:
    text = "See [here](http://x) ![img](http://y) <b>x</b> $a$ :red[x] # h\n- item *em*"
    escaped = md_escape(text)
    for raw in ("[here](", "![img]", "<b>", "$a$", ":red[", "*em*"):
        assert raw not in escaped
    assert "\\[here\\]\\(http\u2060\\:" in escaped


def test_markdown_escaping_breaks_bare_links_and_emails() -> None:
    text = "Call http://evil.example/x or www.evil.example or mail me@evil.example now"
    escaped = md_escape(text)
    for raw in ("http\\:", "www\\.", "me@"):
        assert raw not in escaped
    # what a reader sees is unchanged apart from the invisible joiners and the escapes
    assert escaped.replace("\u2060", "").replace("\\", "") == text


def test_highlighted_html_escapes_everything_and_marks_evidence() -> None:
    chunk = "Intro <img src=x onerror=alert(1)>.\n\nStage 1: 130 to 139 [1]. Other **text**."
    html = highlighted_html(chunk, ["Stage 1: 130 to 139 [1]."], ["Other **text**."])
    assert "<img" not in html and "**" not in html and "[1]" not in html
    assert "\n" not in html  # one HTML block: Markdown never parses inside it
    assert '<mark class="clinrag-evidence">Stage 1&#58; 130 to 139 &#91;1&#93;&#46;</mark>' in html
    assert 'class="clinrag-attributed"' in html
    assert html_text("a\nb") == "a<br>b"


def test_highlight_matches_sentences_with_other_whitespace() -> None:
    html = highlighted_html("Adults  aged\n50 to 75.", ["Adults aged 50 to 75."])
    assert html.count("<mark") == 1


def _answer(**kw: Any) -> Any:
    chunk = SimpleNamespace(title="Hypertension", doc_id="htn")
    base = {
        "sentences": [AnswerSentence("Stage 1 is 130.", [1], True, 0.9, evidence=[1])],
        "evidence": [Evidence(1, "Normal is below 120.", "htn", "Hypertension", "", None, 0.7)],
        "source_sentences": [
            SourceSentence(0, 1, "c1", "Normal is below 120."),
            SourceSentence(1, 1, "c1", "Stage 1 is 130."),
            SourceSentence(2, 2, "c2", "Other."),
        ],
        "hits": [SimpleNamespace(chunk=chunk), SimpleNamespace(chunk=chunk)],
        "attribution": None,
    }
    base.update(kw)
    return SimpleNamespace(**base)


def test_source_highlights_and_attribution_chart() -> None:
    attribution = {
        "method": "surrogate",
        "scores": [0.1, 0.8],
        "per_sentence": [[0.1, 0.8]],
        "sources": [
            {"index": 0, "n": 1, "chunk_id": "c1", "text": "Normal is below 120."},
            {"index": 1, "n": 1, "chunk_id": "c1", "text": "Stage 1 is 130."},
        ],
    }
    answer = _answer(attribution=attribution)
    evidence, attributed = source_highlights(answer, 1)
    assert evidence == ["Stage 1 is 130.", "Normal is below 120."]
    assert attributed == ["Stage 1 is 130.", "Normal is below 120."]
    assert source_highlights(answer, 2) == ([], [])
    assert [(r["source"], r["attribution"]) for r in attribution_by_source(answer)] == [
        ('[1] "Normal is below 120."', pytest.approx(0.1)),
        ('[1] "Stage 1 is 130."', pytest.approx(0.8)),
    ]
    assert attribution_by_source(_answer()) == []
    rows = heatmap_rows({"attribution": attribution, "sentences": [{"text": "Stage 1 is 130."}]})
    assert [r["score"] for r in rows] == [0.1, 0.8]
    assert rows[1]["source_sentence"] == '[1] "Stage 1 is 130."'


def test_upload_names_cannot_escape_the_uploads_folder(settings: Settings) -> None:
    assert safe_upload_name("../../etc/passwd") == "passwd"
    assert safe_upload_name("C:\\x\\guide line (v2).pdf") == "guide line _v2_.pdf"
    assert safe_upload_name(".hidden.md") == "hidden.md"
    with pytest.raises(ValueError):
        safe_upload_name("../..")
    admin = Actor("admin", "admin")
    paths = save_uploads(settings, admin, [("../a.md", b"# A"), ("b.md", b"# B")])
    assert [p.name for p in paths] == ["a.md", "b.md"]
    assert all(p.parent == settings.home / "uploads" for p in paths)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in paths)
    assert Path(paths[0]).read_bytes() == b"# A"


def test_long_upload_names_are_kept_whole_so_the_sidecar_stays_paired(
    settings: Settings,
) -> None:
    """Names used to be cut at 120 characters: "X.md.meta.json" became "X.md.meta.j"."""
    admin = Actor("admin", "admin")
    name = "opioid-tapering-guideline-" + "x" * 150 + ".md"  # 179 characters
    paths = save_uploads(
        settings,
        admin,
        [(name, b"# Opioid Tapering\n\nText.\n"), (name + ".meta.json", b"{}")],
    )
    assert [p.name for p in paths] == [name, name + ".meta.json"]
    assert safe_upload_name("y" * MAX_UPLOAD_NAME) == "y" * MAX_UPLOAD_NAME


def test_upload_names_that_do_not_fit_are_refused_with_what_to_do(settings: Settings) -> None:
    admin = Actor("admin", "admin")
    name = "z" * 195 + ".md"  # fits; its sidecar (208 characters) does not
    with pytest.raises(ValueError) as info:
        save_uploads(settings, admin, [(name, b"# Z\n\nText.\n"), (name + ".meta.json", b"{}")])
    message = str(info.value)
    assert name + ".meta.json" in message  # names the file
    assert str(MAX_UPLOAD_NAME) in message and "Rename" in message
    assert str(MAX_UPLOAD_NAME - len(".meta.json")) in message
    # nothing of the batch was stored: the document never lands without its metadata
    assert not (settings.home / "uploads").exists() or not any(
        (settings.home / "uploads").iterdir()
    )


def test_uploads_that_would_share_a_stored_name_are_refused(settings: Settings) -> None:
    admin = Actor("admin", "admin")
    with pytest.raises(ValueError, match="both be stored as 'guide_.md'"):
        save_uploads(settings, admin, [("guide?.md", b"# A"), ("guide*.md", b"# B")])


def test_a_long_named_restricted_upload_stays_restricted(settings: Settings) -> None:
    """The review's case end to end: upload a document and its sidecar under a long name,
    ingest them as the Library page does, and the restriction is in the library."""
    from core.library.manifest import Manifest
    from services.library import add

    admin = Actor("admin", "admin")
    name = "controlled-substances-dosing-" + "long-name-" * 10 + "v2.md"  # 134 characters
    paths = save_uploads(
        settings,
        admin,
        [
            (name, b"# Controlled Substances\n\nMorphine dosing for pharmacists only.\n"),
            (name + ".meta.json", b'{"restricted_roles": ["pharmacist"]}'),
        ],
    )
    summary = add(settings, admin, paths, source="upload", progress=False)
    assert summary.count("added") == 1 and not summary.failed
    manifest = Manifest(settings.manifest_path)
    try:
        (doc,) = manifest.documents()
    finally:
        manifest.close()
    assert doc["metadata"]["restricted_roles"] == "pharmacist"


def test_a_sidecar_uploaded_on_its_own_updates_its_document(settings: Settings) -> None:
    """New metadata for a document already uploaded re-ingests it; a sidecar with no document
    beside it is reported, not skipped."""
    from core.library.manifest import Manifest
    from services.library import add

    admin = Actor("admin", "admin")
    (doc_path,) = save_uploads(settings, admin, [("tapering.md", b"# Tapering\n\nText.\n")])
    assert add(settings, admin, [doc_path], source="upload", progress=False).count("added") == 1
    side = save_uploads(
        settings,
        admin,
        [
            ("tapering.md.meta.json", b'{"restricted_roles": "pharmacist"}'),
            ("missing.md.meta.json", b'{"restricted_roles": "pharmacist"}'),
        ],
    )
    summary = add(settings, admin, side, source="upload", progress=False)
    assert summary.count("updated") == 1
    assert [(Path(r.path).name, r.reason) for r in summary.failed] == [
        ("missing.md.meta.json", "bad_metadata")
    ]
    manifest = Manifest(settings.manifest_path)
    try:
        (doc,) = manifest.documents()
    finally:
        manifest.close()
    assert doc["metadata"]["restricted_roles"] == "pharmacist"
