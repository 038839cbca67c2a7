"""The audit events: one writer per event kind, one payload schema each, one answer link.

Fast: a recorder over an in-memory stand-in for the log, and a scan of the source tree.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from audit.log import Record, VerifyResult
from audit.record import (
    ANSWER_LINK,
    PAYLOADS,
    Event,
    IngestDocument,
    Recorder,
    answer_link,
)
from core.errors import AuditError
from core.types import Actor, Answer, Mode

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("core", "assistant", "ingest", "audit", "services", "evaluation", "ui")
ACTOR = Actor("dana", "auditor")


class MemoryLog:
    """Keeps appended events; answers the readers the recorder uses."""

    def __init__(self) -> None:
        self.appended: list[tuple[str, str, str, dict[str, Any]]] = []

    def append(self, event: str, user: str, role: str, payload: dict[str, Any]) -> Record:
        self.appended.append((event, user, role, payload))
        seq = len(self.appended)
        return Record(seq, "2026-12-02T00:00:00Z", event, user, role, payload, "", "")

    def list(self, event: str | None = None, **_: Any) -> list[Record]:
        return [
            Record(i, "2026-12-02T00:00:00Z", e, u, r, p, "", "")
            for i, (e, u, r, p) in enumerate(self.appended, start=1)
            if event is None or e == event
        ]

    def check_writable(self) -> None:
        return None

    def close(self) -> None:
        return None


def _answer() -> Answer:
    return Answer(
        question="What is stage 1 hypertension?",
        answer="Systolic 130 to 139 [1].",
        abstained=False,
        sentences=[],
        citations=[],
        evidence=[],
        hits=[],
        source_sentences=[],
        generation=None,
        timings={"total": 0.1},
        mode=Mode.GENERATED,
        attribution={"method": "surrogate", "scores": [0.5], "faithfulness": {"k": 1}},
    )


def _call_every_writer(recorder: Recorder, settings: Any) -> dict[str, list[str]]:
    """Call each public writer once with valid arguments; which events did each write?"""
    from core.types import EmbedderInfo

    log: MemoryLog = recorder.log  # type: ignore[assignment]
    doc: IngestDocument = {"doc_id": "d", "status": "added", "reason": None}
    calls = {
        "answer": lambda: recorder.answer(
            ACTOR,
            _answer(),
            settings=settings,
            index_version="1:abc",
            embedder=EmbedderInfo("st", "minilm", "0" * 64, 384),
        ),
        "attribution": lambda: recorder.attribution(ACTOR, 1, _answer()),
        "attribution_failed": lambda: recorder.attribution_failed(ACTOR, 1, reason="no logprobs"),
        "feedback": lambda: recorder.feedback(ACTOR, 1, helpful=True, comment="ok"),
        "replay": lambda: recorder.replay(
            ACTOR, 1, unchanged=True, differences=[], original_answer="a", replayed_answer="a"
        ),
        "login": lambda: recorder.login(ACTOR),
        "login_failed": lambda: recorder.login_failed(ACTOR, reason="bad_password"),
        "logout": lambda: recorder.logout(ACTOR),
        "verify": lambda: recorder.verify(ACTOR, VerifyResult(True, 3, None, "ok")),
        "export": lambda: recorder.export(
            ACTOR, fmt="csv", seqs=[1, 2], filters={}, destination="stdout", sha256="0" * 64
        ),
        "ingest": lambda: recorder.ingest(
            ACTOR,
            source="cli",
            paths=["x.md"],
            counts={"added": 1},
            index_version=2,
            documents=[doc],
        ),
        "remove": lambda: recorder.remove(ACTOR, "d", deleted_upload=False),
        "backup": lambda: recorder.backup(
            ACTOR, dest="/b", records=3, head_seq=3, verified=True, keys_included=False
        ),
        "restore": lambda: recorder.restore(
            ACTOR, backup_dir="/b", backup_created=None, records_restored=3, documents=1, chunks=2
        ),
        "reindex": lambda: recorder.reindex(
            ACTOR,
            documents=1,
            chunks=2,
            vectors=2,
            pending_rolled_back=0,
            index_version="2:abc",
            old_store_moved_to=None,
        ),
        "user_add": lambda: recorder.user_add(ACTOR, "eve", new_role="clinician", sso_only=False),
        "user_disable": lambda: recorder.user_disable(ACTOR, "eve"),
        "user_enable": lambda: recorder.user_enable(ACTOR, "eve"),
        "user_password": lambda: recorder.user_password(ACTOR, "eve"),
        "user_role": lambda: recorder.user_role(
            ACTOR, "eve", old_role="clinician", new_role="auditor"
        ),
        "user_unlock": lambda: recorder.user_unlock(ACTOR, "eve"),
    }
    public = {
        name
        for name, member in inspect.getmembers(Recorder, inspect.isfunction)
        if not name.startswith("_")
    }
    readers = {"open", "close", "check_writable", "attribution_of", "recent_answers"}
    assert public - readers == set(calls), "a new Recorder method needs a line in this test"
    written: dict[str, list[str]] = {}
    for name, call in calls.items():
        before = len(log.appended)
        call()
        written[name] = [e for e, *_ in log.appended[before:]]
    return written


def test_every_event_kind_is_written_by_exactly_one_function(settings: Any) -> None:
    recorder = Recorder(MemoryLog())  # type: ignore[arg-type]
    written = _call_every_writer(recorder, settings)
    assert all(len(events) == 1 for events in written.values()), written
    kinds = [events[0] for events in written.values()]
    assert sorted(kinds) == sorted(str(e) for e in Event), "an event kind without its writer"
    assert len(set(kinds)) == len(kinds), "two writers for one event kind"


def test_each_payload_matches_its_schema(settings: Any) -> None:
    log = MemoryLog()
    _call_every_writer(Recorder(log), settings)  # type: ignore[arg-type]
    assert set(PAYLOADS) == set(Event)
    for event, _user, _role, payload in log.appended:
        schema = PAYLOADS[Event(event)]
        fields = set(get_type_hints(schema))
        required = set(schema.__required_keys__)
        assert required <= set(payload) <= fields, (event, set(payload) ^ fields)


def test_the_answer_link_is_answer_id_and_old_records_are_still_found() -> None:
    log = MemoryLog()
    recorder = Recorder(log)  # type: ignore[arg-type]
    recorder.attribution(ACTOR, 7, _answer())
    assert log.appended[-1][3][ANSWER_LINK] == 7 and "answer_seq" not in log.appended[-1][3]
    # records written before the link was unified (the CLI used answer_seq) stay readable
    log.append("attribution", "cli", "admin", {"answer_seq": 9, "attribution": {}})
    assert answer_link({"answer_seq": 9}) == 9
    found = recorder.attribution_of(9)
    assert found is not None and found.payload["answer_seq"] == 9
    assert recorder.attribution_of(8) is None


def test_a_failed_append_is_an_audit_error_that_says_what_failed() -> None:
    class FullDisk(MemoryLog):
        def append(self, *_: Any) -> Record:
            raise OSError("No space left on device")

    with pytest.raises(AuditError, match="The export could not be recorded.*No space left"):
        Recorder(FullDisk()).export(  # type: ignore[arg-type]
            ACTOR, fmt="csv", seqs=[], filters={}, destination="stdout", sha256=""
        )


def _appends_outside_record() -> list[str]:
    """Calls shaped like ``AuditLog.append(event, user, role, payload)`` outside the recorder."""
    found = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "audit/record.py" or rel.startswith("audit/log/"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "append"
                    and len(node.args) + len(node.keywords) >= 3
                ):
                    found.append(f"{rel}:{node.lineno}")
    return found


def test_nothing_but_the_recorder_appends_to_the_audit_log() -> None:
    assert _appends_outside_record() == []


def test_the_import_contracts_hold() -> None:
    """ui -> services -> evaluation -> assistant | ingest -> audit -> core, in one direction;
    the front ends never open the library or the log's storage themselves (pyproject.toml)."""
    # In a child process: import-linter configures logging, which would disable the loggers
    # of modules already imported in this one (and other tests read their records).
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
