"""The tamper-evident audit log (audit.log): chain, checkpoints, tampering, exports, redaction."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.log import (
    GENESIS_HASH,
    AuditLog,
    AuditLogError,
    AuditPayloadError,
    AuditWriteError,
    Record,
    canonical_json,
    record_hash,
)
from audit.log.export import CSV_COLUMNS, read_jsonl, to_csv, to_fhir, to_jsonl
from audit.log.migrations import MIGRATIONS
from audit.log.redact import question_fields, redact
from core.migrations import split_statements

REPO = Path(__file__).resolve().parents[1]
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --------------------------------------------------------------------------- helpers


def make_log(root: Path, every: int = 100) -> AuditLog:
    return AuditLog(
        root / "audit.sqlite",
        root / "audit.checkpoint.json",
        root / "keys" / "audit.key",
        checkpoint_every=every,
    )


def answer_payload(i: int) -> dict[str, Any]:
    return {
        "question": f"What is the first-line treatment for condition {i}?",
        "question_hash": hashlib.sha256(f"q{i}".encode()).hexdigest(),
        "answer": f"Start metformin {500 + i} mg daily [1].",
        "abstained": False,
        "citations": [
            {
                "n": 1,
                "doc_id": f"doc-{i}",
                "chunk_id": f"doc-{i}:0",
                "title": f"Guideline {i}",
                "section": "Treatment",
                "page": 3,
                "content_hash": "c" * 64,
                "score": 0.91,
            },
            {
                "n": 2,
                "doc_id": "doc-shared",
                "chunk_id": "doc-shared:4",
                "title": "Shared guideline",
                "section": "Dosing",
                "page": None,
                "content_hash": "d" * 64,
                "score": 0.55,
            },
        ],
        "retrieved": [
            {
                "chunk_id": f"doc-{i}:0",
                "doc_id": f"doc-{i}",
                "content_hash": "c" * 64,
                "score": 0.9,
            },
            {
                "chunk_id": "doc-shared:4",
                "doc_id": "doc-shared",
                "content_hash": "d" * 64,
                "score": 0.5,
            },
            {
                "chunk_id": "doc-other:1",
                "doc_id": "doc-other",
                "content_hash": "e" * 64,
                "score": 0.2,
            },
        ],
        "model": {"backend": "transformers", "model_id": "tiny-llm", "weights_hash": "f" * 64},
        "embedder": {"name": "st", "model": "minilm", "weights_hash": "a" * 64, "dim": 384},
        "index_version": "v3",
        "prompt": {"template": "answer_v1", "hash": "b" * 64},
        "decoding": {"temperature": 0.0, "max_new_tokens": 256},
        "attribution": None,
        "faithfulness": 0.8,
        "timings": {"total": 1.25},
    }


def filled(root: Path, n: int = 10, every: int = 100) -> AuditLog:
    log = make_log(root, every)
    for i in range(1, n + 1):
        if i % 4 == 0:
            log.append("ingest", "admin", "admin", {"doc_id": f"doc-{i}", "status": "added"})
        else:
            log.append("answer", f"dr{i % 3}", "clinician", answer_payload(i))
    return log


@contextlib.contextmanager
def attacker(log: AuditLog) -> Iterator[sqlite3.Connection]:
    """A connection as someone with write access to the file would use it: guards dropped."""
    log.close()
    conn = sqlite3.connect(log.db_path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    try:
        yield conn
    finally:
        conn.close()


def rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        'SELECT seq, ts, event, "user", role, payload, prev_hash, hash FROM records ORDER BY seq'
    ).fetchall()


def rewrite_from(conn: sqlite3.Connection, start: int, change: Callable[[dict], None]) -> None:
    """Change record `start` and recompute every hash after it, as a careful attacker would."""
    prev = None
    for seq, ts, event, user, role, payload_text, prev_hash, _ in rows(conn):
        payload = json.loads(payload_text)
        if seq == start:
            change(payload)
        if seq < start:
            prev = _
            continue
        prev_hash = prev if prev is not None else GENESIS_HASH
        digest = record_hash(seq, ts, event, user, role, payload, prev_hash)
        conn.execute(
            "UPDATE records SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (canonical_json(payload), prev_hash, digest, seq),
        )
        prev = digest


def forge_checkpoint(log: AuditLog, seq: int, digest: str, key: bytes) -> None:
    fields = {"seq": seq, "hash": digest, "ts": "2026-01-01T00:00:00.000Z", "history": 0}
    message = canonical_json({"kind": "head", **fields})
    fields["mac"] = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    log.checkpoint_path.write_text(canonical_json(fields))


def last_hash(conn: sqlite3.Connection) -> tuple[int, str]:
    seq, digest = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    return int(seq), str(digest)


# --------------------------------------------------------------------------- basics


def test_clean_log_verifies_with_count(tmp_path: Path) -> None:
    log = filled(tmp_path, 12, every=5)
    result = log.verify()
    assert result.ok, result.reason
    assert result.count == 12
    assert result.first_bad_seq is None
    assert log.count() == 12
    # A fresh instance (another process, later) agrees.
    assert make_log(tmp_path, every=5).verify().ok


def test_empty_log_verifies_and_verify_creates_nothing(tmp_path: Path) -> None:
    log = make_log(tmp_path / "home")
    result = log.verify()
    assert result.ok and result.count == 0
    assert not (tmp_path / "home").exists()


def test_record_fields_hash_and_chain(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    first = log.append("answer", "dr1", "clinician", answer_payload(1))
    second = log.append("login", "dr1", "clinician", {"method": "password"})
    assert first.seq == 1 and second.seq == 2
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert TS_RE.match(first.ts)
    assert first.hash == first.computed_hash()
    assert log.get(1) == first
    assert log.head() == second
    assert log.get(99) is None
    stored = sqlite3.connect(log.db_path).execute("SELECT payload FROM records WHERE seq = 1")
    assert stored.fetchone()[0] == canonical_json(answer_payload(1))
    assert first.to_dict()["payload"] == answer_payload(1)


def test_list_filters(tmp_path: Path) -> None:
    log = filled(tmp_path, 9)
    assert [r.seq for r in log.list()] == list(range(1, 10))
    assert all(r.event == "ingest" for r in log.list(event="ingest"))
    assert len(log.list(event="ingest")) == 2
    assert {r.user for r in log.list(user="dr1")} == {"dr1"}
    assert [r.seq for r in log.list(limit=3)] == [1, 2, 3]
    assert [r.seq for r in log.list(limit=2, newest_first=True)] == [9, 8]
    ts5 = log.get(5).ts  # type: ignore[union-attr]
    assert all(r.ts >= ts5 for r in log.list(since=ts5))
    assert all(r.ts < ts5 for r in log.list(until=ts5))
    assert log.list(since="2999-01-01") == []
    assert len(log.list(since="2000-01-01", until="2999-01-01")) == 9


def test_files_are_owner_only(tmp_path: Path) -> None:
    log = filled(tmp_path / "home", 3)
    for path in (log.db_path, log.checkpoint_path, log.key_path):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    assert log.key_path.parent.stat().st_mode & 0o777 == 0o700
    assert len(log.key_path.read_bytes()) == 32


def test_history_written_every_n(tmp_path: Path) -> None:
    log = filled(tmp_path, 7, every=3)
    lines = [json.loads(line) for line in log.history_path.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [3, 6]
    assert all(set(e) == {"seq", "hash", "count", "ts", "mac"} for e in lines)
    assert lines[1]["hash"] == log.get(6).hash  # type: ignore[union-attr]
    head = json.loads(log.checkpoint_path.read_text())
    assert (head["seq"], head["hash"]) == (7, log.head().hash)  # type: ignore[union-attr]


def test_migrations_applied_once_and_named(tmp_path: Path) -> None:
    log = filled(tmp_path, 2)
    log.close()
    make_log(tmp_path).count()  # reopening must not re-apply
    conn = sqlite3.connect(log.db_path)
    names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert names == [name for name, _ in MIGRATIONS]
    assert all(r[0] for r in conn.execute("SELECT applied_at FROM migrations"))
    assert len(split_statements(dict(MIGRATIONS)["m003_records_append_only"])) == 2


def test_update_and_delete_refused_by_trigger(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    log.close()
    conn = sqlite3.connect(log.db_path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE records SET payload = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM records WHERE seq = 3")
    with pytest.raises(sqlite3.DatabaseError, match="extend the chain"):
        conn.execute(
            "INSERT INTO records VALUES (9, 't', 'answer', 'u', 'r', '{}', ?, ?)",
            (GENESIS_HASH, "0" * 64),
        )
    conn.close()
    assert log.verify().ok


def test_bad_input_rejected(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    with pytest.raises(AuditPayloadError):
        log.append("Answer Event", "u", "r", {})
    with pytest.raises(AuditPayloadError):
        log.append("answer", "", "r", {})
    with pytest.raises(AuditPayloadError, match="canonical JSON"):
        log.append("answer", "u", "r", {"score": float("nan")})
    with pytest.raises(AuditPayloadError):
        log.append("answer", "u", "r", {"when": object()})
    assert log.count() == 0
    # Any short lowercase name is accepted.
    assert log.append("replay", "u", "auditor", {"of": 1}).seq == 1


# --------------------------------------------------------------------------- tampering

# Each case tampers with a 10-record log and names the expected (first_bad_seq, reason).
# "every" is the signed-history interval the log was written with.


def _byte_change(log: AuditLog) -> None:
    with attacker(log) as conn:
        text = conn.execute("SELECT payload FROM records WHERE seq = 5").fetchone()[0]
        conn.execute(
            "UPDATE records SET payload = ? WHERE seq = 5",
            (text.replace("metformin", "metformIn"),),
        )


def _delete_one(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("DELETE FROM records WHERE seq = 6")


def _delete_range(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("DELETE FROM records WHERE seq IN (3, 4)")


def _swap_payloads(log: AuditLog) -> None:
    with attacker(log) as conn:
        a = conn.execute("SELECT payload FROM records WHERE seq = 2").fetchone()[0]
        b = conn.execute("SELECT payload FROM records WHERE seq = 7").fetchone()[0]
        conn.execute("UPDATE records SET payload = ? WHERE seq = 2", (b,))
        conn.execute("UPDATE records SET payload = ? WHERE seq = 7", (a,))


def _truncate_tail(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("DELETE FROM records WHERE seq > 7")


def _truncate_all(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("DELETE FROM records")


def _change_ts(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("UPDATE records SET ts = '2020-01-01T00:00:00.000Z' WHERE seq = 3")


def _change_user(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("UPDATE records SET \"user\" = 'someone-else' WHERE seq = 9")


def _rehash_one(log: AuditLog) -> None:
    # Edit record 4 and give it a correct hash, but leave record 5 pointing at the old one.
    with attacker(log) as conn:
        seq, ts, event, user, role, text, prev, _ = rows(conn)[3]
        payload = json.loads(text)
        payload["answer"] = "Start insulin."
        digest = record_hash(seq, ts, event, user, role, payload, prev)
        conn.execute(
            "UPDATE records SET payload = ?, hash = ? WHERE seq = 4",
            (canonical_json(payload), digest),
        )


def _rewrite_all(log: AuditLog) -> None:
    with attacker(log) as conn:
        rewrite_from(conn, 4, lambda p: p.update(answer="Start insulin."))


def _rewrite_and_forge_checkpoint(log: AuditLog) -> None:
    with attacker(log) as conn:
        rewrite_from(conn, 4, lambda p: p.update(answer="Start insulin."))
        seq, digest = last_hash(conn)
    forge_checkpoint(log, seq, digest, os.urandom(32))


def _truncate_and_forge_checkpoint(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute("DELETE FROM records WHERE seq > 6")
        seq, digest = last_hash(conn)
    forge_checkpoint(log, seq, digest, b"guessed-key-guessed-key-guessed!")


def _checkpoint_count_edited(log: AuditLog) -> None:
    # "Wrong count": the checkpoint claims 12 records; its signature no longer matches.
    head = json.loads(log.checkpoint_path.read_text())
    head["seq"] = 12
    log.checkpoint_path.write_text(json.dumps(head))


def _forged_append(log: AuditLog) -> None:
    # A correctly chained record added by SQL: anyone can compute the hash, not the signature.
    with attacker(log) as conn:
        seq, prev = last_hash(conn)
        payload = {"answer": "fabricated"}
        ts = "2026-12-01T00:00:00.000Z"
        digest = record_hash(seq + 1, ts, "answer", "dr1", "clinician", payload, prev)
        conn.execute(
            "INSERT INTO records VALUES (?, ?, 'answer', 'dr1', 'clinician', ?, ?, ?)",
            (seq + 1, ts, canonical_json(payload), prev, digest),
        )


def _checkpoint_deleted(log: AuditLog) -> None:
    log.checkpoint_path.unlink()


def _history_line_removed(log: AuditLog) -> None:
    lines = log.history_path.read_text().splitlines(keepends=True)
    log.history_path.write_text("".join(lines[:-1]))


def _history_line_edited(log: AuditLog) -> None:
    lines = log.history_path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["hash"] = "a" * 64
    lines[1] = json.dumps(entry)
    log.history_path.write_text("\n".join(lines) + "\n")


def _payload_reformatted(log: AuditLog) -> None:
    # Same JSON value, different bytes: hashes still match, but the stored text was touched.
    with attacker(log) as conn:
        text = conn.execute("SELECT payload FROM records WHERE seq = 8").fetchone()[0]
        conn.execute(
            "UPDATE records SET payload = ? WHERE seq = 8",
            (json.dumps(json.loads(text), indent=1),),
        )


def _invalid_utf8(log: AuditLog) -> None:
    with attacker(log) as conn:
        conn.execute(
            "UPDATE records SET payload = CAST(X'7B2261223A22FF227D' AS TEXT) WHERE seq = 2"
        )


def _key_replaced(log: AuditLog) -> None:
    log.key_path.write_bytes(os.urandom(32))


def _database_deleted(log: AuditLog) -> None:
    log.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.db_path) + suffix).unlink(missing_ok=True)


TAMPER_CASES: list[tuple[str, Callable[[AuditLog], None], int, int | None, str]] = [
    ("byte_change", _byte_change, 100, 5, "record 5: hash mismatch (content changed)"),
    ("delete_one", _delete_one, 100, 6, "record 6 missing (deleted)"),
    ("delete_range", _delete_range, 100, 3, "records 3-4 missing (deleted)"),
    ("swap_payloads", _swap_payloads, 100, 2, "record 2: hash mismatch (content changed)"),
    ("truncate_tail", _truncate_tail, 100, 8, "records end at 7 but checkpoint says 10 (tail trun"),
    ("truncate_all", _truncate_all, 100, 1, "records end at 0 but checkpoint says 10"),
    ("change_ts", _change_ts, 100, 3, "record 3: hash mismatch"),
    ("change_user", _change_user, 100, 9, "record 9: hash mismatch"),
    ("rehash_one", _rehash_one, 100, 4, "record 4: changed and rehashed"),
    ("rewrite_all_head_only", _rewrite_all, 100, 1, "hash differs from the signed checkpoint"),
    ("rewrite_all_history_1", _rewrite_all, 1, 4, "record 4: hash differs from the signed check"),
    ("rewrite_all_history_3", _rewrite_all, 3, 4, "records 4-6: hash differs from the signed"),
    ("rewrite_forged_ckpt", _rewrite_and_forge_checkpoint, 100, None, "checkpoint signature inv"),
    ("truncate_forged_ckpt", _truncate_and_forge_checkpoint, 100, None, "checkpoint signature inv"),
    ("checkpoint_count", _checkpoint_count_edited, 100, None, "checkpoint signature invalid"),
    (
        "forged_append",
        _forged_append,
        100,
        11,
        "records go to 11 but the signed checkpoint says 10",
    ),
    ("checkpoint_deleted", _checkpoint_deleted, 100, None, "checkpoint file"),
    ("history_truncated", _history_line_removed, 2, None, "has 4 entries but the head checkpoint"),
    ("history_edited", _history_line_edited, 2, 4, "history line 2 (record 4): signature invalid"),
    ("payload_reformatted", _payload_reformatted, 100, 8, "record 8: payload text altered"),
    ("invalid_utf8", _invalid_utf8, 100, 2, "record 2: not valid UTF-8"),
    ("key_replaced", _key_replaced, 100, None, "checkpoint signature invalid"),
    ("database_deleted", _database_deleted, 100, 1, "is missing but its checkpoint exists"),
]


@pytest.mark.parametrize(
    ("tamper", "every", "bad_seq", "reason"),
    [case[1:] for case in TAMPER_CASES],
    ids=[case[0] for case in TAMPER_CASES],
)
def test_tampering_detected_and_named(
    tmp_path: Path,
    tamper: Callable[[AuditLog], None],
    every: int,
    bad_seq: int | None,
    reason: str,
) -> None:
    log = filled(tmp_path, 10, every=every)
    assert log.verify().ok
    tamper(log)
    result = make_log(tmp_path, every).verify()
    assert not result.ok
    assert reason in result.reason, result.reason
    assert result.first_bad_seq == bad_seq, result


def test_stale_checkpoint_restored(tmp_path: Path) -> None:
    log = filled(tmp_path, 6)
    old = log.checkpoint_path.read_bytes()
    for i in range(4):
        log.append("answer", "dr1", "clinician", answer_payload(100 + i))
    log.checkpoint_path.write_bytes(old)
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 7
    assert "records go to 10 but the signed checkpoint says 6 (stale checkpoint" in result.reason


def test_tail_truncated_and_stale_checkpoint_restored_together_is_caught_by_history(
    tmp_path: Path,
) -> None:
    # Dropping records 9-10 and restoring the checkpoint from when there were 8 defeats the
    # head check; the signed history (every 3: 3, 6, 9) still remembers record 9.
    log = filled(tmp_path, 8, every=3)
    old = log.checkpoint_path.read_bytes()
    log.append("answer", "dr1", "clinician", answer_payload(9))
    log.append("answer", "dr1", "clinician", answer_payload(10))
    with attacker(log) as conn:
        conn.execute("DELETE FROM records WHERE seq > 8")
    log.checkpoint_path.write_bytes(old)
    result = make_log(tmp_path, 3).verify()
    assert not result.ok
    assert result.first_bad_seq == 9
    assert "signed history says 9 (tail truncated)" in result.reason


# --------------------------------------------------------------------------- concurrency


def _append_worker(root: str, worker: int, n: int) -> None:
    log = make_log(Path(root), every=7)
    for i in range(n):
        log.append("answer", f"worker{worker}", "clinician", {"i": i, "worker": worker})
    log.close()


def test_concurrent_processes_append_a_valid_chain(tmp_path: Path) -> None:
    workers, n = 8, 25
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = make_log(tmp_path, every=7)
    result = log.verify()
    assert result.ok, result.reason
    assert result.count == workers * n
    per_worker = {w: len(log.list(user=f"worker{w}")) for w in range(workers)}
    assert per_worker == dict.fromkeys(range(workers), n)
    history = log.history_path.read_text().splitlines()
    assert len(history) == (workers * n) // 7


def test_threads_share_one_log(tmp_path: Path) -> None:
    log = make_log(tmp_path, every=5)

    def work(t: int) -> None:
        for i in range(10):
            log.append("feedback", f"t{t}", "clinician", {"i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = log.verify()
    assert result.ok and result.count == 40, result.reason


# --------------------------------------------------------------------------- failures


def _writes_blocked_by_permissions(path: Path) -> bool:
    try:
        with open(path, "ab"):
            return False
    except PermissionError:
        return True


def test_unwritable_database_raises_write_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = filled(home, 3)
    log.close()
    files = [p for p in home.iterdir() if p.is_file()]
    for path in files:
        path.chmod(0o400)
    home.chmod(0o500)
    try:
        if not _writes_blocked_by_permissions(log.db_path):
            pytest.skip("running with privileges that ignore file permissions (root)")
        fresh = make_log(home)
        with pytest.raises(AuditWriteError, match="cannot be written.*Answers are withheld"):
            fresh.append("answer", "dr1", "clinician", answer_payload(4))
        with pytest.raises(AuditWriteError):
            fresh.check_writable()
    finally:
        home.chmod(0o700)
        for path in files:
            path.chmod(0o600)
    assert make_log(home).count() == 3


def test_read_only_database_simulated_raises_write_error(tmp_path: Path) -> None:
    # Runs even as root, where chmod cannot make a file unwritable: query_only makes SQLite
    # refuse writes with the same SQLITE_READONLY error a read-only file gives.
    log = filled(tmp_path, 3)
    log._connection(write=True).execute("PRAGMA query_only = ON")
    with pytest.raises(AuditWriteError, match="cannot be written"):
        log.append("answer", "dr1", "clinician", answer_payload(4))
    with pytest.raises(AuditWriteError):
        log.check_writable()
    assert log.count() == 3
    assert log.verify().ok


def test_disk_full_raises_write_error_and_keeps_log_valid(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    conn = log._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLite reports SQLITE_FULL exactly as for a full disk once this page limit is reached.
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {"answer": "x" * 200_000}
    with pytest.raises(AuditWriteError, match="free disk space or fix permissions"):
        log.append("answer", "dr1", "clinician", big)
    assert log.count() == 3
    assert log.verify().ok
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert log.append("answer", "dr1", "clinician", big).seq == 4
    assert log.verify().ok


def test_checkpoint_unwritable_rolls_back_the_record(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    broken = AuditLog(log.db_path, blocker / "audit.checkpoint.json", log.key_path)
    with pytest.raises(AuditWriteError):
        broken.append("answer", "dr1", "clinician", answer_payload(4))
    with pytest.raises(AuditWriteError):
        broken.check_writable()
    assert log.count() == 3
    assert log.verify().ok
    log.check_writable()


# --------------------------------------------------------------------------- backup


def test_backup_verifies_against_its_checkpoint(tmp_path: Path) -> None:
    log = filled(tmp_path / "live", 9, every=4)
    dest = log.backup(tmp_path / "backups" / "audit-2026-11-28.sqlite")
    checkpoint = tmp_path / "backups" / "audit-2026-11-28.checkpoint.json"
    assert checkpoint.exists()
    assert dest.stat().st_mode & 0o777 == 0o600
    copy = AuditLog(dest, checkpoint, log.key_path)
    result = copy.verify()
    assert result.ok and result.count == 9, result.reason
    mode = sqlite3.connect(dest).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"
    # The live log keeps going; the backup stays a valid snapshot.
    log.append("answer", "dr1", "clinician", answer_payload(10))
    assert log.verify().ok and copy.verify().ok
    with pytest.raises(AuditLogError, match="already exists"):
        log.backup(dest)
    # Tampering with the backup is caught like tampering with the live log.
    with attacker(copy) as conn:
        conn.execute("DELETE FROM records WHERE seq = 9")
    assert copy.verify().first_bad_seq == 9


# --------------------------------------------------------------------------- export


def test_jsonl_round_trip(tmp_path: Path) -> None:
    log = filled(tmp_path, 6)
    buffer = io.StringIO()
    assert to_jsonl(log.list(), buffer) == 6
    buffer.seek(0)
    back = list(read_jsonl(buffer))
    assert back == log.list()
    assert all(r.computed_hash() == r.hash for r in back)
    assert Record.from_dict(back[0].to_dict()) == back[0]


def test_csv_header_and_rows(tmp_path: Path) -> None:
    log = filled(tmp_path, 4)
    log.append("answer", "dr1", "clinician", {"question": "=HYPERLINK(1)", "answer": "ok"})
    buffer = io.StringIO()
    assert to_csv(log.list(), buffer) == 5
    buffer.seek(0)
    table = list(csv.DictReader(buffer))
    assert tuple(table[0].keys()) == CSV_COLUMNS
    assert table[0]["model_id"] == "tiny-llm"
    assert table[0]["abstained"] == "false"
    assert table[0]["cited_doc_ids"] == "doc-1;doc-shared"
    assert table[3]["event"] == "ingest" and "doc-4" in table[3]["details"]
    assert table[4]["question"].startswith("'=")


def test_fhir_bundle(tmp_path: Path) -> None:
    log = filled(tmp_path, 5)
    records = log.list()
    bundle = to_fhir(records)
    json.dumps(bundle)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    events = [r for r in resources if r["resourceType"] == "AuditEvent"]
    provenances = [r for r in resources if r["resourceType"] == "Provenance"]
    answers = [r for r in records if r.event == "answer"]
    assert len(events) == len(records)
    assert len(provenances) == len(answers) == 4
    url_of = {e["resource"]["id"]: e["fullUrl"] for e in bundle["entry"]}
    event_urls = {url_of[e["id"]] for e in events}
    first = events[0]
    assert first["type"]["code"] == "110112"
    assert first["recorded"] == records[0].ts
    assert first["agent"][0]["who"]["identifier"]["value"] == records[0].user
    assert first["agent"][0]["role"][0]["text"] == "clinician"
    chunk_ids = {
        ent["what"]["identifier"]["value"]
        for ent in first["entity"]
        if ent.get("name") == "retrieved chunk"
    }
    assert chunk_ids == {"doc-1:0", "doc-shared:4", "doc-other:1"}
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    for provenance, record in zip(provenances, answers, strict=True):
        # the AI Provenance's target is the answer; its audit record is linked beside it
        assert by_url[provenance["target"][0]["reference"]]["resourceType"] == "DocumentReference"
        links = [
            e["valueReference"]["reference"]
            for e in provenance["extension"]
            if "valueReference" in e
        ]
        assert links and links[0] in event_urls
        cited = {c["doc_id"] for c in record.payload["citations"]}
        referenced = {
            ent["what"]["identifier"]["value"]
            for ent in provenance["entity"]
            if ent["what"].get("type") == "DocumentReference"
        }
        assert cited <= referenced
        assert all(ent["role"] == "source" for ent in provenance["entity"])
    # Deterministic ids: the same records export to the same resources.
    assert to_fhir(records, timestamp="t") == to_fhir(records, timestamp="t")
    # Missing payload keys are tolerated: the event, the answer and its Provenance.
    sparse = log.append("answer", "dr1", "clinician", {"question_hash": "0" * 64})
    assert len(to_fhir([sparse])["entry"]) == 3


# --------------------------------------------------------------------------- redaction

PHI_CASES: list[tuple[str, str]] = [
    ("Email results to jane.doe@example.org please", "jane.doe@example.org"),
    ("patient contact: j_smith+ward3@hospital.nhs.uk", "j_smith+ward3@hospital.nhs.uk"),
    ("Call (555) 123-4567 about dosing", "(555) 123-4567"),
    ("phone 555-987-6543 after 5pm", "555-987-6543"),
    ("reach her at 555.246.8101", "555.246.8101"),
    ("daughter's number +1 415 555 2671", "415 555 2671"),
    ("pager 1-800-555-0199 ext 12", "800-555-0199"),
    ("DOB 03/14/1962, on metformin", "03/14/1962"),
    ("admitted 2024-03-04 with chest pain", "2024-03-04"),
    ("seen on 3-4-24 in clinic", "3-4-24"),
    ("born March 3, 1950 and has CKD", "March 3, 1950"),
    ("surgery on 12 Jan 2023", "12 Jan 2023"),
    ("last visit Sept. 9th", "Sept. 9th"),
    ("discharged on May 21, 2024", "May 21, 2024"),
    ("SSN 123-45-6789 on file", "123-45-6789"),
    ("social security number 078051120", "078051120"),
    ("ssn: 219 09 9999", "219 09 9999"),
    ("MRN 1234567 needs a statin?", "1234567"),
    ("MRN: A12345 with eGFR 40", "A12345"),
    ("medical record number 00981234", "00981234"),
    ("record # 55512 from the ED", "55512"),
    ("Med Rec #: HX-99231", "HX-99231"),
    ("patient ID 7781234, 67F", "7781234"),
    ("a 94 year old with AF", "94"),
]

# Names, where the wording marks them (a title or a cue word); see audit/log/redact.py.
NAME_CASES: list[tuple[str, str]] = [
    ("Mrs. Alvarez has stage 3 CKD, which statin?", "Alvarez"),
    ("my patient John Smith takes warfarin and asks about ibuprofen", "John Smith"),
    ("a woman named Maria Lopez, 45, with hypertension", "Maria Lopez"),
    ("Dr Ann-Marie Chen asked about PrEP dosing", "Ann-Marie Chen"),
    ("Patient Jane Q. Doe on metformin 1 g twice daily", "Jane Q. Doe"),
    ("Mr O'Neil is 67 with AF; anticoagulate?", "O'Neil"),
    ("Ms. Smith-Jones has asthma and a cough", "Smith-Jones"),
    ("pt Robert Miller, HbA1c 9%", "Robert Miller"),
    ("her son Peter Van Dyke has type 1 diabetes", "Peter Van Dyke"),
    ("Mr McDonald wants to stop his statin", "McDonald"),
    ("name is Fatima Rahman, due for a colonoscopy?", "Fatima Rahman"),
    ("Miss Okafor, 16, asks about the HPV vaccine", "Okafor"),
]
# Capitalised clinical words after a cue or in a title-cased question must stay.
NAME_LOOKALIKES = [
    "Does Addison disease need steroid cover for surgery?",
    "For patient education on Crohn disease, what is first line?",
    "Is the patient with Type 2 Diabetes a candidate?",
    "Patient Health Questionnaire scores for depression screening",
    "USPSTF Grade B for adults 50 to 75",
]

CLINICAL_TEXT = [
    "BP 130/80 mmHg in a patient aged 45",
    "age 45 with HbA1c 7.5% on 2 agents",
    "metformin 500 mg twice daily, max 2000 mg",
    "eGFR 30-44 ml/min/1.73m2: reduce to 1000-1500 mg",
    "CHA2DS2-VASc score of 3 per the 2023 ESC guideline",
    "enoxaparin 1 mg/kg every 12 hours for 5 days",
    "ICD-10 E11.9, NICE NG28 section 1.6.3",
    "target LDL below 1.8 mmol/L; temp 38.5 C",
    "the dose may 2 x daily be increased",
    "heart rate 110/min, SpO2 92% on 2 L",
]


def test_redaction_recall_on_synthetic_phi() -> None:
    caught = 0
    missed = []
    for text, phi in PHI_CASES:
        out = redact(text)
        if phi not in out and "[" in out:
            caught += 1
        else:
            missed.append((text, out))
    recall = caught / len(PHI_CASES)
    assert len(PHI_CASES) >= 20
    assert recall >= 0.95, missed


def test_name_redaction_recall_on_synthetic_questions() -> None:
    missed = [(t, redact(t)) for t, name in NAME_CASES if name in redact(t)]
    recall = 1 - len(missed) / len(NAME_CASES)
    assert recall >= 0.9, missed
    assert all("[NAME]" in redact(t) for t, name in NAME_CASES if (t, redact(t)) not in missed)


def test_name_redaction_leaves_clinical_terms() -> None:
    for text in NAME_LOOKALIKES:
        assert redact(text) == text


def test_redaction_keeps_clinical_numbers() -> None:
    for text in CLINICAL_TEXT:
        assert redact(text) == text


def test_redaction_tags() -> None:
    out = redact("MRN 1234567, DOB 1/2/1960, call 555-123-4567, a@b.org, SSN 123-45-6789")
    for tag in ("[MRN]", "[DATE]", "[PHONE]", "[EMAIL]", "[SSN]"):
        assert tag in out, out


def test_question_fields_modes() -> None:
    question = "Dose for MRN 1234567 born 3/4/1950?"
    h = hashlib.sha256(question.encode()).hexdigest()
    assert question_fields(question, "verbatim") == {"question": question, "question_hash": h}
    redacted = question_fields(question, "redacted")
    assert redacted["question_hash"] == h
    assert "1234567" not in redacted["question"] and "1950" not in redacted["question"]
    assert question_fields(question, "hashed") == {"question_hash": h}
    with pytest.raises(ValueError, match="audit_questions"):
        question_fields(question, "plain")


# --------------------------------------------------------------------------- stdlib only

_STDLIB_CHECK = """
import sys
import audit.log, audit.log.store, audit.log.export, audit.log.redact
import audit.log.migrations, audit.log.errors
allowed = set(sys.stdlib_module_names) | {"audit", "__main__"}
foreign = sorted({n.partition(".")[0] for n in sys.modules} - allowed)
print("foreign:", foreign)
sys.exit(1 if foreign else 0)
"""


def test_audit_log_imports_with_standard_library_only() -> None:
    # -S keeps site-packages off sys.path: the import would fail outright if any third-party
    # package were needed, and the module scan catches anything else that slipped in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run(
        [sys.executable, "-S", "-c", _STDLIB_CHECK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "foreign: []" in result.stdout


def test_verify_script_runs_on_a_copied_log_without_the_project(tmp_path: Path) -> None:
    # An auditor copies the files and the audit/ package to another machine and verifies.
    log = filled(tmp_path / "live", 5)
    log.close()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "audit" / "log", elsewhere / "audit" / "log")
    (elsewhere / "audit" / "__init__.py").write_text("")
    script = (
        "import sys; from pathlib import Path; from audit.log import AuditLog; "
        "r = AuditLog(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])).verify(); "
        "print(r.reason); sys.exit(0 if r.ok else 1)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            script,
            str(log.db_path),
            str(log.checkpoint_path),
            str(log.key_path),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 records verified" in result.stdout
