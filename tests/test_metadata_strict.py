"""Metadata mistakes fail closed: a file whose metadata cannot be read exactly is refused
(``bad_metadata``, named in the ingest summary), never ingested with the mistaken part
dropped, since the part dropped may be ``restricted_roles`` (the document would go public).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import LoadError
from core.types import Document
from ingest.loaders import is_candidate, load_document
from ingest.loaders.metadata import KNOWN_KEYS, split_front_matter

REPO = Path(__file__).resolve().parents[1]
SHARED_GUIDELINES = REPO.parent / "shared" / "eval" / "guidelines"
LIMITS = {"max_bytes": 5_000_000, "max_pages": 20}
BODY = "# Opioid Tapering\n\n## Dose\n\nReduce the dose by 10% each month.\n"


def restricted_roles(metadata: dict[str, str]) -> set[str]:
    """The roles a document is restricted to, read as retrieval reads the field."""
    return {r.strip() for r in metadata.get("restricted_roles", "").split(",") if r.strip()}


def load(path: Path) -> Document:
    return load_document(path, **LIMITS)


def refused(path: Path) -> LoadError:
    with pytest.raises(LoadError) as info:
        load(path)
    assert info.value.reason == "bad_metadata", info.value
    return info.value


def with_sidecar(tmp_path: Path, sidecar: str | bytes, name: str = "guide.md") -> Path:
    path = tmp_path / name
    path.write_text(BODY)
    side = tmp_path / f"{name}.meta.json"
    side.write_bytes(sidecar.encode() if isinstance(sidecar, str) else sidecar)
    return path


# --------------------------------------------------------------------------- sidecars


def test_a_misspelt_sidecar_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    path = with_sidecar(tmp_path, '{"title": "Tapering", "restricted-roles": "pharmacist"}')
    detail = refused(path).detail
    assert "guide.md.meta.json" in detail
    assert "'restricted-roles'" in detail and "did you mean 'restricted_roles'" in detail


@pytest.mark.parametrize(
    "sidecar",
    [
        '{"evil": "x"}',
        '{"restricted_role": "pharmacist"}',
        '{"restricted_roles": "pharmacist", "restricted_roles": ""}',  # json.loads: last wins
        '{"restricted_roles": true}',
        '{"restricted_roles": {"any": "nurse"}}',
        '{"restricted_roles": ["nurse", null]}',
        '{"restricted_roles": [["nurse"]]}',
        '{"title": {}}',
    ],
)
def test_sidecar_mistakes_are_errors(tmp_path: Path, sidecar: str) -> None:
    refused(with_sidecar(tmp_path, sidecar))


def test_sidecar_keys_in_any_case_and_list_values_are_read(tmp_path: Path) -> None:
    path = with_sidecar(
        tmp_path, json.dumps({"Restricted_Roles": ["pharmacist", "nurse"], "version": 3})
    )
    doc = load(path)
    assert restricted_roles(doc.metadata) == {"pharmacist", "nurse"}
    assert doc.metadata["version"] == "3"


def test_a_restriction_given_twice_differently_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("---\nrestricted_roles: pharmacist\n---\n" + BODY)
    (tmp_path / "guide.md.meta.json").write_text('{"restricted_roles": "nurse"}')
    assert "restricted_roles differs" in refused(path).detail
    # the same roles in both places, or a sidecar that only adds a title, are fine
    (tmp_path / "guide.md.meta.json").write_text('{"restricted_roles": ["pharmacist"]}')
    assert restricted_roles(load(path).metadata) == {"pharmacist"}
    (tmp_path / "guide.md.meta.json").write_text('{"title": "Tapering (2024)"}')
    doc = load(path)
    assert doc.title == "Tapering (2024)" and restricted_roles(doc.metadata) == {"pharmacist"}


# --------------------------------------------------------------------------- front matter


@pytest.mark.parametrize(
    "front",
    [
        "restricted-roles: pharmacist",  # the review's typo
        "Restricted Roles: pharmacist",
        "roles: pharmacist",
        "restricted_roles pharmacist",  # no colon
        "title:\n  en: Nested",
        "restricted_roles: |\n  pharmacist",
        "restricted_roles: [pharmacist, nurse",
        "restricted_roles: pharmacist\nrestricted_roles:",
    ],
)
@pytest.mark.parametrize("ext", [".md", ".txt"])
def test_front_matter_mistakes_are_errors(tmp_path: Path, front: str, ext: str) -> None:
    path = tmp_path / f"guide{ext}"
    path.write_text(f"---\n{front}\n---\n{BODY}")
    detail = refused(path).detail
    assert "front matter" in detail


@pytest.mark.parametrize("ext", [".md", ".txt"])
def test_an_unclosed_block_that_starts_like_metadata_is_an_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"guide{ext}"
    path.write_text(f"---\nrestricted-roles: pharmacist\n{BODY}")
    assert "no closing '---'" in refused(path).detail
    # a rule followed by prose is still body text
    path.write_text(f"---\nJust a rule, then prose.\n\n{BODY}")
    assert "Just a rule" in " ".join(b.text for b in load(path).blocks)


def test_front_matter_in_a_text_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tapering.txt"
    path.write_text(
        "---\ntitle: Opioid Tapering\nrestricted_roles: [pharmacist, nurse]\n---\n"
        "Opioid Tapering\n\nReduce the dose by 10% each month.\n"
    )
    doc = load(path)
    assert restricted_roles(doc.metadata) == {"pharmacist", "nurse"}
    assert doc.title == "Opioid Tapering"
    text = " ".join(b.text for b in doc.blocks)
    assert "restricted_roles" not in text and "---" not in text
    assert "Reduce the dose" in text


@pytest.mark.parametrize("lead", ["\n", "\n\n", "  \n", "\r\n", "\ufeff\n"])
@pytest.mark.parametrize("ext", [".md", ".txt"])
def test_blank_lines_before_front_matter(tmp_path: Path, lead: str, ext: str) -> None:
    path = tmp_path / f"guide{ext}"
    path.write_text(f"{lead}---\nrestricted_roles: pharmacist\n---\n{BODY}", newline="")
    doc = load(path)
    assert restricted_roles(doc.metadata) == {"pharmacist"}
    assert "restricted_roles" not in " ".join(b.text for b in doc.blocks)


@pytest.mark.parametrize("eol", ["\r", "\r\n", "\r\r\n", "\u2028"])
def test_front_matter_lines_end_where_body_lines_do(tmp_path: Path, eol: str) -> None:
    """The body is split with str.splitlines (CR alone ends a line): front matter too."""
    path = tmp_path / "guide.md"
    path.write_bytes(f"---\nrestricted_roles: pharmacist\n---\n{BODY}".replace("\n", eol).encode())
    assert restricted_roles(load(path).metadata) == {"pharmacist"}


def test_front_matter_forms_still_read() -> None:
    meta, body, offset = split_front_matter(
        "---\r\n# a comment\r\ntitle: 'Quoted: with colon'\r\nsource_url: https://x.test/a\r\n"
        "restricted_roles:\r\n  - pharmacist\r\n  - nurse\r\n\r\nversion: 2\r\n...\r\nBody\r\n"
    )
    assert meta == {
        "title": "Quoted: with colon",
        "source_url": "https://x.test/a",
        "restricted_roles": "pharmacist,nurse",
        "version": "2",
    }
    assert body == "Body\r\n" and offset > 0
    assert split_front_matter("No front matter.\n---\nrule") == (
        {},
        "No front matter.\n---\nrule",
        0,
    )


def test_a_site_generators_keys_are_ignored_and_ours_still_checked() -> None:
    """A Jekyll or Hugo page's own keys (and what is nested under them) are not metadata;
    a misspelt key of ours after them is still refused."""
    meta, body, _ = split_front_matter(
        "---\ntitle: Opioid Tapering\nid: 9568\npermalink: /:collection/9568\nlayout: page\n"
        "tags:\n  - pain\n  - opioids\nmenu:\n  main:\n    weight: 3\n"
        "restricted_roles: pharmacist\n---\nBody\n"
    )
    assert meta == {"title": "Opioid Tapering", "restricted_roles": "pharmacist"}
    assert body == "Body\n"
    for front in ("id: 1\nrestricted-roles: pharmacist", "permalink: /a\nroles: pharmacist"):
        with pytest.raises(LoadError) as info:
            split_front_matter(f"---\n{front}\n---\nBody\n")
        assert info.value.reason == "bad_metadata"
    with pytest.raises(LoadError):  # nested lines under one of ours are still refused
        split_front_matter("---\nid: 1\ntitle:\n  en: Nested\n---\nBody\n")


def test_the_shared_federal_guidelines_load() -> None:
    """Real Markdown from a site generator (front matter with id and permalink): every file
    of ../shared/eval/guidelines was refused as bad_metadata."""
    folder = SHARED_GUIDELINES / "markdown"
    if not folder.is_dir():
        pytest.skip("../shared/eval/guidelines is not beside the repository")
    files = sorted(folder.glob("*.md"))
    assert len(files) >= 90
    for path in files:
        doc = load(path)
        assert doc.blocks and "restricted_roles" not in doc.metadata, path.name


# --------------------------------------------------------------------------- HTML


def test_html_meta_is_read_before_hidden_content_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        '<html><head><meta name="restricted_roles" content="pharmacist" hidden>'
        '<noscript><meta name="issuing-body" content="NICE"></noscript></head>'
        "<body><h1>Tapering</h1><p>Reduce the dose.</p><p hidden>Hidden dose.</p></body></html>"
    )
    doc = load(path)
    assert restricted_roles(doc.metadata) == {"pharmacist"}
    assert doc.metadata["issuing_body"] == "NICE"
    assert "Hidden dose" not in " ".join(b.text for b in doc.blocks)


@pytest.mark.parametrize("name", ["restricted-role", "restrictedroles", "docid", "roles"])
def test_html_meta_names_meant_as_ours_are_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / "page.html"
    path.write_text(f'<meta name="{name}" content="pharmacist"><p>Reduce the dose.</p>')
    assert name in refused(path).detail


def test_html_meta_names_of_the_web_are_ignored(tmp_path: Path) -> None:
    names = ["viewport", "description", "keywords", "author", "DC.title", "citation_title"]
    tags = "".join(f'<meta name="{n}" content="x">' for n in names)
    path = tmp_path / "page.html"
    path.write_text(f'{tags}<meta name="issuing-body" content="CDC"><p>Reduce the dose.</p>')
    assert load(path).metadata == {"issuing_body": "CDC"}


def test_html_meta_given_twice_differently_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        '<meta name="restricted_roles" content="pharmacist">'
        '<meta name="restricted_roles" content=""><p>Reduce the dose.</p>'
    )
    refused(path)


# --------------------------------------------------------------------------- ingest


def test_the_samples_declare_only_known_keys() -> None:
    for path in sorted((REPO / "data_samples").iterdir()):
        if is_candidate(path):
            doc = load_document(path, max_bytes=50_000_000, max_pages=100)
            assert set(doc.metadata) <= set(KNOWN_KEYS), path
            assert doc.metadata.get("publication_date"), path


def test_ingest_names_the_file_and_its_reason(tmp_path: Path, settings: Settings) -> None:
    from ingest.index import ingest

    folder = tmp_path / "lib"
    folder.mkdir()
    with_sidecar(folder, '{"restricted-roles": "pharmacist"}', name="typo.md")
    (folder / "typo.txt").write_text("---\nrestricted-roles: pharmacist\n---\nTapering\n\nText.\n")
    (folder / "fine.md").write_text("\n---\nrestricted_roles: pharmacist\n---\n" + BODY)
    summary = ingest([folder], settings, progress=False)
    failed = {Path(r.path).name: (r.reason, r.detail or "") for r in summary.failed}
    assert set(failed) == {"typo.md", "typo.txt"}
    assert all(reason == "bad_metadata" for reason, _ in failed.values())
    assert "restricted-roles" in failed["typo.md"][1]
    assert summary.count("added") == 1
    from core.library.manifest import Manifest

    manifest = Manifest(settings.manifest_path)
    try:
        (doc,) = manifest.documents()
    finally:
        manifest.close()
    assert restricted_roles(doc["metadata"]) == {"pharmacist"}


def test_a_value_that_looks_like_yaml_syntax_can_be_quoted(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("---\ntitle: [DRAFT] Tapering\n---\n" + BODY)
    assert "in quotes" in refused(path).detail
    path.write_text('---\ntitle: "[DRAFT] Tapering"\n---\n' + BODY)
    assert load(path).title == "[DRAFT] Tapering"
