"""``database_url``: the audit log, the manifest and the accounts in a real PostgreSQL server.

The server is Debian's ``postgresql`` started by the session fixture (tests/pg.py) on a
loopback port. The SQLite behaviour of the same stores is covered by their own test modules;
here the same behaviours run against the server, plus what only a shared server adds: several
processes appending to one chain at once.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit.log import AuditLog, AuditWriteError
from audit.log.anchor import read_anchors
from audit.log.export import to_jsonl
from audit.log.postgres import SCHEMA as AUDIT_SCHEMA

REPO = Path(__file__).resolve().parents[1]


def _log(url: str, folder: Path, **kwargs: Any) -> AuditLog:
    return AuditLog(
        folder / "audit.sqlite",
        folder / "audit.checkpoint.json",
        folder / "keys" / "audit.key",
        checkpoint_every=kwargs.pop("checkpoint_every", 10),
        database_url=url,
        **kwargs,
    )


def _fill(log: AuditLog, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        log.append("answer", f"user{i % 3}", "clinician", {"question": f"q{i}", "n": i})


def _sql(url: str, *statements: str) -> None:
    """Run statements as the superuser with the append-only triggers off: what an attacker
    with database access can do."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {AUDIT_SCHEMA}")
        conn.execute("ALTER TABLE records DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("ALTER TABLE records ENABLE TRIGGER USER")


# --------------------------------------------------------------------------- audit log


def test_audit_log_appends_and_verifies_on_postgres(database_url: str, tmp_path: Path) -> None:
    with _log(database_url, tmp_path) as log:
        _fill(log, 25)
        assert log.count() == 25
        assert log.head() is not None and log.head().seq == 25  # type: ignore[union-attr]
        assert [r.seq for r in log.list(user="user1")] == list(range(2, 26, 3))
        assert [r.seq for r in log.iter_records(batch=7)] == list(range(1, 26))
        result = log.verify()
        assert result.ok and result.count == 25, result.reason
        assert "postgresql://" in repr(log)
    # Nothing was written beside the checkpoint files: the records are in the server.
    assert not (tmp_path / "audit.sqlite").exists()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {AUDIT_SCHEMA}.records").fetchone()
        names = conn.execute(f"SELECT name FROM {AUDIT_SCHEMA}.migrations ORDER BY position")
        assert rows == (25,)
        assert [n for (n,) in names] == [
            "m001_records",
            "m002_records_indexes",
            "m003_records_append_only",
            "m004_records_insert_in_order",
        ]


def test_any_text_round_trips_and_verifies(database_url: str, tmp_path: Path) -> None:
    # The verifier hashes a canonical payload's stored text without re-serialising it: every
    # escape JSON has (quotes, controls, line separators, non-ASCII) must hash as appended.
    tricky = ['é "quoted" \\ back', "\u2028\u2029\x00\x1f\t\n", "日本語 🙂", "\ud7ff"]
    with _log(database_url, tmp_path) as log:
        for i, text in enumerate(tricky):
            # (PostgreSQL text cannot hold a NUL: in the payload JSON escapes it, a name not.)
            user = f"dr {text}".replace("\x00", "")
            log.append("answer", user, "clinician", {text: [text, i, 1.5, None]})
        result = log.verify()
        assert result.ok and result.count == len(tricky), result.reason
        assert [r.payload for r in log.iter_records()] == [
            {text: [text, i, 1.5, None]} for i, text in enumerate(tricky)
        ]


def test_postgres_refuses_update_delete_and_an_out_of_order_insert(
    database_url: str, tmp_path: Path
) -> None:
    with _log(database_url, tmp_path) as log:
        _fill(log, 3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {AUDIT_SCHEMA}")
        for statement in (
            "UPDATE records SET event = 'x' WHERE seq = 2",
            "DELETE FROM records WHERE seq = 3",
            "TRUNCATE records",
            "INSERT INTO records VALUES (5, 't', 'e', 'u', 'r', '{}', 'p', 'h')",
        ):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(statement)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statements", "first_bad", "reason"),
    [
        (["UPDATE records SET payload = '{\"n\":99}' WHERE seq = 4"], 4, "hash mismatch"),
        (["DELETE FROM records WHERE seq = 7"], 7, "missing"),
        (["DELETE FROM records WHERE seq >= 11"], 11, "tail truncated"),
    ],
)
def test_postgres_tampering_is_detected(
    database_url: str, tmp_path: Path, statements: list[str], first_bad: int, reason: str
) -> None:
    with _log(database_url, tmp_path) as log:
        _fill(log, 12)
        assert log.verify().ok
    _sql(database_url, *statements)
    with _log(database_url, tmp_path) as log:
        result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == first_bad and reason in result.reason, result


def test_postgres_log_backup_verifies_with_the_standard_library_alone(
    database_url: str, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    with _log(database_url, live) as log:
        _fill(log, 23)
        copy = log.backup(tmp_path / "copy" / "audit.sqlite")
        with (tmp_path / "export.jsonl").open("w", encoding="utf-8") as fh:
            to_jsonl(log.iter_records(), fh)
    # A fresh interpreter, isolated (-I), that refuses psycopg: the exported log, its
    # checkpoint and the key are all an auditor needs.
    script = f"""
import sys
import time
sys.path.insert(0, {str(REPO)!r})
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_binary"):
            raise ImportError("no database driver here")
sys.meta_path.insert(0, Refuse())
from pathlib import Path
from audit.log import AuditLog
copy = Path({str(copy)!r})
key = Path({str(live / "keys" / "audit.key")!r})
log = AuditLog(copy, copy.with_name("audit.checkpoint.json"), key)
result = log.verify()
print(result.ok, result.count, result.reason)
# The JSONL export alone: every record re-hashed, every link followed.
from audit.log.chain import GENESIS_HASH
from audit.log.export import read_jsonl
with open({str(tmp_path / "export.jsonl")!r}, encoding="utf-8") as fh:
    records = list(read_jsonl(fh))
prev = GENESIS_HASH
for n, record in enumerate(records, start=1):
    assert record.seq == n and record.prev_hash == prev and record.computed_hash() == record.hash
    prev = record.hash
print("export", len(records))
assert not any(n.startswith("psycopg") for n in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True 23 ") and "export 23" in out.stdout, out.stdout


def test_postgres_log_restores_from_its_backup(database_url: str, tmp_path: Path) -> None:
    from audit.log.postgres import PostgresLog

    live = tmp_path / "live"
    with _log(database_url, live) as log:
        _fill(log, 15)
        log.backup(tmp_path / "copy" / "audit.sqlite")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {AUDIT_SCHEMA} CASCADE")
    assert PostgresLog(database_url).load_from(tmp_path / "copy" / "audit.sqlite") == 15
    with pytest.raises(ValueError, match="already holds records"):
        PostgresLog(database_url).load_from(tmp_path / "copy" / "audit.sqlite")
    with _log(database_url, live) as log:
        assert log.verify().ok
        _fill(log, 2, start=15)
        assert log.verify().count == 17


def test_postgres_log_refuses_to_restart_over_a_deleted_log(
    database_url: str, tmp_path: Path
) -> None:
    with _log(database_url, tmp_path) as log:
        _fill(log, 4)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {AUDIT_SCHEMA} CASCADE")
    with _log(database_url, tmp_path) as log:
        with pytest.raises(AuditWriteError, match="the log was deleted"):
            log.append("answer", "u", "clinician", {})
        assert not log.verify().ok


def _append_many(url: str, folder: str, worker: int, count: int) -> None:
    with _log(url, Path(folder), anchor=f"file:{Path(folder) / 'anchor.log'}") as log:
        for i in range(count):
            log.append("answer", f"worker{worker}", "clinician", {"worker": worker, "i": i})


def test_four_processes_appending_at_once_make_one_chain(database_url: str, tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.log"
    with _log(database_url, tmp_path, anchor=f"file:{anchor}") as log:
        log.append("startup", "system", "system", {})
    # spawn: each process opens its own connections, as separate app servers would.
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_many, args=(database_url, str(tmp_path), w, 50))
        for w in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    with _log(database_url, tmp_path, anchor=f"file:{anchor}") as log:
        result = log.verify()
        records = list(log.iter_records())
    assert result.ok and result.count == 201, result.reason
    assert [r.seq for r in records] == list(range(1, 202))
    assert all(r.prev_hash == p.hash for p, r in zip(records, records[1:], strict=False))
    per_worker = {
        w: [r.payload["i"] for r in records if r.payload.get("worker") == w] for w in range(4)
    }
    assert all(per_worker[w] == list(range(50)) for w in range(4)), per_worker
    head = json.loads((tmp_path / "audit.checkpoint.json").read_text())
    assert head["seq"] == 201 and "pending" not in head and head["history"] == 20
    # Each whole append (commit, signed head, history line, anchor) ran alone: the anchor
    # witnessed every head once, in commit order, each with the history count of its time.
    witnessed = read_anchors([anchor])
    assert [entry.seq for entry in witnessed] == list(range(1, 202))
    assert [entry.history for entry in witnessed] == [seq // 10 for seq in range(1, 202)]


# --------------------------------------------------------------------------- manifest


def _doc(doc_id: str, sha: str = "a" * 64) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        doc_id=doc_id,
        source_path=f"/docs/{doc_id}.md",
        sha256=sha,
        title=f"Title {doc_id}",
        metadata={"specialty": "cardiology", "year": 2024},
        warnings=["short"],
    )


def _chunks(doc_id: str, count: int) -> list[Any]:
    from core.types import Chunk

    return [
        Chunk(
            chunk_id=f"{doc_id}:{i}",
            doc_id=doc_id,
            text=f"text {i} 100% sure? yes",
            title=f"Title {doc_id}",
            section="Dosing",
            page=i + 1,
            char_start=i * 10,
            char_end=i * 10 + 9,
            doc_sha256="a" * 64,
            source_path=f"/docs/{doc_id}.md",
            ingested_at="2026-12-02T08:00:00Z",
            metadata={"specialty": "cardiology", "year": 2024, "drug": f"d{i}"},
        )
        for i in range(count)
    ]


def test_manifest_on_postgres_matches_sqlite(database_url: str, tmp_path: Path) -> None:
    from core.library.manifest import Manifest, read_stats

    stores = {
        "sqlite": Manifest(tmp_path / "manifest.sqlite"),
        "postgresql": Manifest(tmp_path / "unused.sqlite", database_url=database_url),
    }
    seen: dict[str, Any] = {}
    for engine, manifest in stores.items():
        manifest.mark_pending_many([_doc("a"), _doc("b")], "2026-12-02T08:00:00Z")
        manifest.complete(_doc("a"), _chunks("a", 3), "2026-12-02T08:01:00Z")
        manifest.complete(_doc("b"), _chunks("b", 2), "2026-12-02T08:02:00Z")
        with manifest.transaction() as conn:
            manifest.set_meta(conn, "embedder_model", "minilm")
            manifest.set_meta(conn, "embedder_model", "minilm-v2")
        manifest.forget("b")
        seen[engine] = (
            manifest.documents(),
            manifest.documents(state=None),
            manifest.chunks(),
            manifest.chunks_by_id(["a:1", "a:2"]),
            manifest.chunk_ids(),
            manifest.index_version(),
            manifest.get_meta("embedder_model"),
        )
        assert seen[engine][5] == 3
    assert seen["postgresql"] == seen["sqlite"]
    assert not (tmp_path / "unused.sqlite").exists()

    # Backup: the server's manifest copied into a SQLite file reads like any other.
    copy = Manifest(tmp_path / "copy.sqlite")
    assert stores["postgresql"].copy_into(copy) == {"documents": 1, "chunks": 3, "meta": 2}
    copy.close()
    stats = read_stats(tmp_path / "copy.sqlite")
    assert stats["documents"] == 1 and stats["chunks"] == 3 and stats["index_version"] == 3
    # Restore: and back into a fresh schema.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA clinrag_manifest CASCADE")
    restored = Manifest(tmp_path / "unused.sqlite", database_url=database_url)
    Manifest(tmp_path / "copy.sqlite").copy_into(restored)
    assert restored.chunks() == seen["sqlite"][2] and restored.index_version() == 3


# --------------------------------------------------------------------------- accounts


def test_accounts_and_lockout_on_postgres(database_url: str, tmp_path: Path) -> None:
    from core.config import load_settings
    from services import accounts

    settings = load_settings(
        env={"CLINRAG_HOME": str(tmp_path / "home"), "CLINRAG_DATABASE_URL": database_url}
    )
    accounts.add_user(settings, "dr.a", "correct horse", "clinician")
    with pytest.raises(accounts.UserError, match="already exists"):
        accounts.add_user(settings, "dr.a", "another one", "clinician")
    assert accounts.sign_in(settings, "dr.a", "correct horse") is not None
    for _ in range(accounts.MAX_FAILURES):
        assert accounts.sign_in(settings, "dr.a", "wrong password") is None
    user = accounts.get_user(settings, "dr.a")
    assert user is not None and user.locked
    # Locked: even the right password is refused until an administrator unlocks.
    assert accounts.sign_in(settings, "dr.a", "correct horse") is None
    assert accounts.set_password(settings, "dr.a", "a new password")
    assert accounts.sign_in(settings, "dr.a", "a new password") is not None
    assert accounts.disable_user(settings, "dr.a") and not accounts.disable_user(settings, "nobody")
    assert [u.username for u in accounts.list_users(settings)] == ["dr.a"]
    # Nothing in the home: the accounts are on the server, and another "replica" (a second
    # home on the same database) sees the same ones.
    assert not accounts.users_path(settings).exists()
    other = load_settings(
        env={"CLINRAG_HOME": str(tmp_path / "other"), "CLINRAG_DATABASE_URL": database_url}
    )
    found = accounts.get_user(other, "dr.a")
    assert found is not None and found.disabled
    # The sign-ins were audited in the server's log too.
    with psycopg.connect(database_url) as conn:
        events = conn.execute(f"SELECT event FROM {AUDIT_SCHEMA}.records").fetchall()
    assert len(events) >= accounts.MAX_FAILURES + 3


# --------------------------------------------------------------------------- backup, restore


def test_backup_and_restore_of_a_postgres_home(database_url: str, tmp_path: Path) -> None:
    from audit.record import open_log
    from core.config import load_settings
    from core.library.manifest import Manifest
    from core.types import Actor
    from services import accounts
    from services.backup import MaintenanceError, backup, restore

    admin = Actor("admin", "admin")
    source = load_settings(
        env={"CLINRAG_HOME": str(tmp_path / "home"), "CLINRAG_DATABASE_URL": database_url}
    )
    accounts.add_user(source, "dr.b", "correct horse", "clinician")
    assert accounts.sign_in(source, "dr.b", "correct horse") is not None
    manifest = Manifest(source.manifest_path, database_url=database_url)
    manifest.mark_pending(_doc("a"), "2026-12-02T08:00:00Z")
    manifest.complete(_doc("a"), _chunks("a", 2), "2026-12-02T08:01:00Z")
    manifest.close()
    with open_log(source) as log:
        _fill(log, 5)
        records, head = log.count(), log.head()
    assert head is not None

    summary = backup(source, admin, tmp_path / "backup")
    assert summary["audit"]["records"] == records and summary["audit"]["verify"]["ok"]
    assert summary["audit"]["head_hash"] == head.hash
    assert summary["manifest"]["documents"] == 1 and summary["manifest"]["chunks"] == 2
    assert summary["users"]
    # The same self-contained SQLite files a home's backup holds, nothing of the server.
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "audit.checkpoint.json",
        "audit.sqlite",
        "backup.json",
        "manifest.sqlite",
        "users.sqlite",
    ]

    # Restoring over the live database is refused: it holds the stores.
    again = source.model_copy(update={"home": tmp_path / "again"})
    with pytest.raises(MaintenanceError, match="already holds audit records"):
        restore(again, admin, tmp_path / "backup", key=source.audit_key)

    # Into an empty database (another one on the same server) and a new home.
    empty_url = database_url.rsplit("/", 1)[0] + "/restored"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS restored")
        conn.execute("CREATE DATABASE restored")
    target = source.model_copy(update={"home": tmp_path / "restored", "database_url": empty_url})
    result = restore(target, admin, tmp_path / "backup", key=source.audit_key)
    # The backup's own record was written to the live log after the copy.
    assert result["audit"]["records"] == records
    assert result["index"]["chunks"] == 2
    with open_log(target) as log:
        check = log.verify()
        restored_head = log.head()
    assert check.ok and check.count == records + 1, check.reason  # + the restore record
    assert restored_head is not None and restored_head.event == "restore"
    assert accounts.sign_in(target, "dr.b", "correct horse") is not None
    assert [
        d["doc_id"] for d in Manifest(target.manifest_path, database_url=empty_url).documents()
    ] == ["a"]
    assert not target.audit_db.exists() and not target.manifest_path.exists()


def test_two_app_homes_share_one_log_through_the_database(
    database_url: str, tmp_path: Path
) -> None:
    from audit.record import open_log
    from core.config import load_settings

    shared = tmp_path / "shared"  # the private mount both app servers see
    replicas = [
        load_settings(
            env={
                "CLINRAG_HOME": str(tmp_path / name),
                "CLINRAG_DATABASE_URL": database_url,
                "CLINRAG_AUDIT_KEY_FILE": str(shared / "audit.key"),
                "CLINRAG_AUDIT_CHECKPOINT_FILE": str(shared / "audit.checkpoint.json"),
            }
        )
        for name in ("app1", "app2")
    ]
    logs = [open_log(settings) for settings in replicas]
    try:
        for i in range(6):
            logs[i % 2].append("answer", f"user{i}", "clinician", {"i": i})
        for log in logs:
            result = log.verify()
            assert result.ok and result.count == 6, result.reason
        assert [r.payload["i"] for r in logs[1].iter_records()] == list(range(6))
    finally:
        for log in logs:
            log.close()
    # Without the shared checkpoint a replica's own head would lag the chain: say so, loudly.
    alone = replicas[0].model_copy(update={"audit_checkpoint_file": None})
    with open_log(alone) as log:
        assert not log.verify().ok


# --------------------------------------------------------------------------- writer lock


def _hold_lock(url: str, held: Any, release: Any) -> None:
    from core.database import database_lock

    with database_lock(url, "writer"):
        held.set()
        release.wait(30)


def test_database_lock_has_one_holder_across_processes(database_url: str) -> None:
    from core.database import DatabaseLockBusy, database_lock

    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(database_url, held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(DatabaseLockBusy), database_lock(database_url, "writer", wait=False):
            pass
        with database_lock(database_url, "another name", wait=False):
            pass  # names are independent
    finally:
        release.set()
        holder.join(30)
    with database_lock(database_url, "writer", wait=False):
        pass
    # A holder killed mid-work does not leave the lock behind: the server drops it with the
    # connection.
    held.clear()
    release.clear()
    holder = context.Process(target=_hold_lock, args=(database_url, held, release))
    holder.start()
    assert held.wait(30)
    holder.kill()
    holder.join(30)
    for _ in range(50):
        try:
            with database_lock(database_url, "writer", wait=False):
                break
        except DatabaseLockBusy:
            time.sleep(0.1)
    else:
        pytest.fail("the killed holder's lock was never released")


def _open_manifest(url: str, folder: str) -> None:
    from core.library.manifest import Manifest

    manifest = Manifest(Path(folder) / "unused.sqlite", database_url=url)
    assert manifest.index_version() == 0
    manifest.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(
    database_url: str, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_open_manifest, args=(database_url, str(tmp_path))) for _ in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    with psycopg.connect(database_url) as conn:
        names = conn.execute("SELECT name FROM clinrag_manifest.migrations ORDER BY position")
        assert [n for (n,) in names] == ["001_documents_and_chunks", "002_chunk_metadata"]
