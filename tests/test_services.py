"""The operations the CLI and the app share (``services``): roles, records and their links.

Real library (three sample guidelines, the packaged embedder, embedded Chroma), real audit
log; the LLM is the extractive stand-in from ``test_ui_fakes`` so no model is loaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from audit.record import ExportPayload, open_log
from core.config import Settings, load_settings
from core.errors import AccessDeniedError
from core.types import Actor, Mode
from services import accounts, audit, backup, library
from services import ask as asking
from tests.test_ui_fakes import SAMPLES, attributing_assistant
from ui.cli.main import main

HTN_QUESTION = "What blood pressure defines stage 1 hypertension?"
OFF_TOPIC = "How do I replace the chain on a mountain bike?"
ADMIN = Actor("admin", "admin")
CLINICIAN = Actor("carol", "clinician")
AUDITOR = Actor("audrey", "auditor")


@pytest.fixture
def home(accounts_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the built library, with the fake LLM behind ``services.ask``."""
    copy = tmp_path / "home"
    shutil.copytree(accounts_library, copy)
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    monkeypatch.setattr(asking, "open_assistant", _attributing)
    return copy


def _attributing(settings: Settings) -> Any:
    faithfulness = {"k": 1, "top_k_drop": 1.2, "random_drop": 0.1, "flag_memory": False}
    return attributing_assistant(settings, faithfulness)


def _settings(home: Path) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(home)})


def _records(home: Path, event: str) -> list[Any]:
    with open_log(_settings(home)) as log:
        return log.list(event=event)


def test_cli_attribution_is_linked_to_its_answer_as_the_app_links_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: the CLI linked attributions with ``answer_seq`` while the Audit page looked up
    ``answer_id``, so attributions of CLI answers never showed there."""
    assert main(["ask", HTN_QUESTION]) == 0
    assert "ATTRIBUTION" in capsys.readouterr().out
    answer = _records(home, "answer")[-1]
    attribution = _records(home, "attribution")[-1]
    assert attribution.payload["answer_id"] == answer.seq
    assert "answer_seq" not in attribution.payload
    # what the Audit page reads
    found = audit.attribution_of(_settings(home), AUDITOR, answer.seq)
    assert found is not None and found.seq == attribution.seq


def test_an_abstention_before_generation_is_recorded_as_abstained(home: Path) -> None:
    """Defect: abstentions decided before generation carried ``mode: generated``."""
    settings = _settings(home)
    assistant = asking.open_assistant(settings)
    answer = asking.ask(assistant, CLINICIAN, OFF_TOPIC)
    assert answer.abstained and answer.mode is Mode.ABSTAINED and answer.generation is None
    assert answer.abstain_reason and answer.abstain_reason.startswith("weak_retrieval")
    record = _records(home, "answer")[-1]
    assert record.seq == answer.audit_id and record.payload["mode"] == "abstained"
    # the CLI's JSON says the same
    assert main(["ask", OFF_TOPIC, "--json"]) == 0
    assert _records(home, "answer")[-1].payload["mode"] == "abstained"


def test_exports_are_recorded_alike_from_the_cli_and_the_app(home: Path, tmp_path: Path) -> None:
    """Defect: the CLI's export event said ``records``, the app's ``count``."""
    out = tmp_path / "audit.csv"
    assert main(["audit", "export", "--format", "csv", "--output", str(out)]) == 0
    cli = _records(home, "export")[-1]
    exported = audit.export(_settings(home), AUDITOR, "csv", audit.Query(), destination="download")
    app = _records(home, "export")[-1]
    assert set(cli.payload) == set(app.payload) == set(ExportPayload.__annotations__)
    assert cli.payload["destination"] == str(out) and app.payload["destination"] == "download"
    assert cli.payload["count"] == len(out.read_text().splitlines()) - 1  # header line
    assert app.seq == exported.record_seq and app.payload["sha256"] == exported.sha256


def test_an_export_that_cannot_be_recorded_is_not_handed_out(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the CLI wrote the export first and recorded it afterwards."""
    from audit.log import AuditLog

    real_append = AuditLog.append

    def refuse_exports(self: AuditLog, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "export":
            raise OSError("No space left on device")
        return real_append(self, event, *args, **kwargs)

    monkeypatch.setattr(AuditLog, "append", refuse_exports)
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--output", str(out)]) != 0
    assert not out.exists()


def test_operations_check_the_role_whoever_calls_them(home: Path, tmp_path: Path) -> None:
    settings = _settings(home)
    denied = [
        lambda: audit.export(settings, CLINICIAN, "jsonl", audit.Query(), destination="x"),
        lambda: audit.verify(settings, CLINICIAN),
        lambda: audit.find(settings, CLINICIAN, audit.Query()),
        lambda: library.add(settings, AUDITOR, [SAMPLES], source="cli"),
        lambda: library.remove(settings, CLINICIAN, "colorectal-cancer-screening"),
        lambda: library.save_uploads(settings, CLINICIAN, [("a.md", b"# A")]),
        lambda: accounts.create(settings, AUDITOR, "eve", "admin", password="long-password-1"),
        lambda: accounts.set_disabled(settings, CLINICIAN, "admin", disabled=True),
        lambda: backup.backup(settings, AUDITOR, tmp_path / "b"),
        lambda: asking.ask(asking.open_assistant(settings), AUDITOR, HTN_QUESTION),
    ]
    before = len(_records(home, "export")) + len(_records(home, "verify"))
    for call in denied:
        with pytest.raises(AccessDeniedError, match="may not"):
            call()
    assert len(_records(home, "export")) + len(_records(home, "verify")) == before
    assert accounts.get_user(settings, "eve") is None
    assert not (tmp_path / "b").exists()
    # the roles that may, can
    assert audit.verify(settings, AUDITOR).ok
    assert library.documents(settings, CLINICIAN)


def test_the_cli_and_the_app_share_the_library_operations(home: Path) -> None:
    settings = _settings(home)
    assert main(["remove", "colorectal-cancer-screening-2016"]) == 0
    assert main(["remove", "colorectal-cancer-screening-2016"]) == 1  # already gone
    removed = _records(home, "remove")[-1]
    assert removed.payload == {
        "doc_id": "colorectal-cancer-screening-2016",
        "deleted_upload": False,
    }
    paths = library.save_uploads(
        settings, ADMIN, [("statins.md", (SAMPLES / "statins-primary-prevention.md").read_bytes())]
    )
    summary = library.add(settings, ADMIN, paths, source="upload", progress=False)
    assert summary.count("added") == 1
    cli_ingest = _records(home, "ingest")
    assert cli_ingest[-1].payload["source"] == "upload"
    library.remove(settings, ADMIN, summary.results[0].doc_id or "")
    assert not paths[0].exists()  # an uploaded original goes with its document
    assert _records(home, "remove")[-1].payload["deleted_upload"] is True


def test_supersedes_is_read_one_way_by_retrieval_and_the_app(tmp_path: Path) -> None:
    """Defect: retrieval matched ``supersedes`` against doc ids only, case-sensitively; the
    app also matched titles, in any case. A guideline superseded by title was warned about
    in the app but not demoted in retrieval."""
    from assistant.retrieve import Retriever
    from ingest.index import ingest

    sources = tmp_path / "sources"
    sources.mkdir()
    old, new = "colorectal-cancer-screening-2016.md", "colorectal-cancer-screening.md"
    shutil.copy(SAMPLES / old, sources / old)
    text = (SAMPLES / new).read_text(encoding="utf-8")
    (sources / new).write_text(
        text.replace("supersedes: colorectal-cancer-screening-2016\n", ""), encoding="utf-8"
    )
    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path / "home")})
    question = "At what age should colorectal cancer screening start?"

    def old_scores() -> dict[str, float]:
        ingest([sources], settings, progress=False)
        hits = Retriever(settings).retrieve(question, k=10)
        return {h.chunk.chunk_id: h.score for h in hits if h.chunk.doc_id.endswith("2016")}

    before = old_scores()
    (sources / new).write_text(
        text.replace(
            "supersedes: colorectal-cancer-screening-2016",
            "supersedes: COLORECTAL CANCER SCREENING (USPSTF 2016)",
        ),
        encoding="utf-8",
    )
    after = old_scores()
    assert before and set(after) <= set(before)
    from assistant.retrieve import SUPERSEDED_WEIGHT

    for chunk_id, score in after.items():
        assert score == pytest.approx(before[chunk_id] * SUPERSEDED_WEIGHT)
    docs = library.documents(settings, CLINICIAN)
    warnings = library.currency_warnings("colorectal-cancer-screening-2016", docs)
    assert any(w.startswith("Superseded by") for w in warnings)


def test_the_cli_prints_only_the_checked_answer_on_stdout(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect (issue 19): the unchecked draft streamed to stdout, unlabelled, before the
    checked answer; a script reading stdout took the draft for the answer."""
    assert main(["ask", HTN_QUESTION]) == 0
    out, err = capsys.readouterr()
    assert out.lstrip().startswith("ANSWER (checked against the sources"), out[:200]
    assert "Generating (unverified" in err and "Stage 1 hypertension" in err
    # attribution in the reader's terms: citation labels and faithfulness in words
    assert "log p(answer)" not in out and "less likely" in out, out


def test_sources_never_cut_a_title_mid_word_and_audit_help_names_every_command(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defects (issue 19): `clinrag sources` cut titles mid-word; `clinrag audit --help`
    described only verify and replay."""
    assert main(["sources"]) == 0
    titles = {d["doc_id"]: d["title"] for d in library.documents(_settings(home), ADMIN)}
    for line in capsys.readouterr().out.splitlines():
        doc_id, shown = line.split()[0], line.split("chunks", 1)[1].strip()
        shown = shown.split("  (", 1)[0]  # the issuing body and date follow the title
        words = shown.removesuffix("[...]").split()
        assert words == titles[doc_id].split()[: len(words)], line
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    usage = capsys.readouterr().out
    for command in ("verify", "list", "show", "export", "replay"):
        assert f"    {command}" in usage
        line = next(x for x in usage.splitlines() if x.strip().startswith(command + " "))
        assert len(line.split(None, 1)) == 2, line  # a description beside the name
