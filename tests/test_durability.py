"""Durability: kill -9 during audit appends, backup and restore, rebuilding the vector index, a
full or unwritable audit store, and a second writer.

Real SQLite, the real embedded Chroma and the real packaged embedder. The LLM never runs: the
answers recorded here are synthetic audit payloads, and the fail-closed checks either stop
before generation or ask a question the library abstains on at retrieval (a stub LLM fails
the test if it is touched). The full 200-kill run is ``benchmarks/kill_audit.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from assistant.pipeline import Assistant
from assistant.policy import ABSTAIN_TEXT
from assistant.retrieve import Retriever
from audit.log import AuditLog, AuditWriteError
from audit.record import open_log as audit_log
from core.config import Settings, load_settings
from core.errors import AuditError, StoreLockedError
from core.library.index import Index, writer_lock
from core.types import Actor
from ingest.index import ingest
from services.backup import MaintenanceError
from services.backup import backup as _backup
from services.backup import restore as _restore
from services.reindex import rebuild_index as _rebuild_index
from ui.cli.maintenance import maintenance_command

ADMIN = Actor("admin", "admin")


def backup(settings: Settings, dest: Path, **kwargs: Any) -> dict[str, Any]:
    return _backup(settings, ADMIN, dest, **kwargs)


def restore(settings: Settings, src: Path, **kwargs: Any) -> dict[str, Any]:
    return _restore(settings, ADMIN, src, **kwargs)


def rebuild_index(settings: Settings, **kwargs: Any) -> dict[str, Any]:
    return _rebuild_index(settings, ADMIN, **kwargs)


REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
# A third of data_samples keeps the embedding (ingest, restore, rebuild) quick on 2 cores; the
# older colorectal guideline is superseded by the newer one, so the ranking has a twist.
SUBSET = (
    "colorectal-cancer-screening.md",
    "colorectal-cancer-screening-2016.md",
    "hypertension-diagnosis-and-treatment.md",
    "type-2-diabetes-screening-and-glycemic-targets.docx",
    "statins-primary-prevention.md",
    "aspirin-primary-prevention.docx",
)
QUESTIONS = [
    q["question"]
    for q in json.loads((SAMPLES / "example_questions.json").read_text(encoding="utf-8"))
    if q["expected_file"] in SUBSET
][::2]
OFF_TOPIC = "What is the boiling point of tungsten?"  # abstains at retrieval: no LLM
KILLS = 20  # benchmarks/kill_audit.py runs 200
KILL_CHECKPOINT_EVERY = 5  # a signed history line every 5 records, so kills land in those too

# Appends forever; prints each acknowledged record (after append returned) as "seq nonce".
APPEND_CHILD = r"""
import os, sys
from pathlib import Path
from audit.log import AuditLog

home = Path(sys.argv[1])
log = AuditLog(home / "audit.sqlite", home / "audit.checkpoint.json", home / "keys" / "audit.key",
               checkpoint_every=int(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    i += 1
    nonce = f"{os.getpid()}-{i}"
    record = log.append("answer", "killtest", "clinician", {"nonce": nonce, "pad": "x" * (i % 97)})
    print(record.seq, nonce, flush=True)
"""

# Holds the store's writer lock until its stdin closes.
HOLD_LOCK_CHILD = r"""
import os, sys
from core.config import load_settings
from core.library.index import writer_lock

with writer_lock(load_settings(env={"CLINRAG_HOME": sys.argv[1]})):
    print("locked", os.getpid(), flush=True)
    sys.stdin.read()
"""


class _NoLLM:
    """Fails the test if anything asks the model for text."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the LLM must not run in this test (LLM.{name} was used)")


def _log_at(home: Path, every: int = 100) -> AuditLog:
    return AuditLog(
        home / "audit.sqlite",
        home / "audit.checkpoint.json",
        home / "keys" / "audit.key",
        checkpoint_every=every,
    )


def _top5(settings: Settings) -> list[list[str]]:
    retriever = Retriever(settings)
    return [[h.chunk.chunk_id for h in retriever.retrieve(q, k=5)] for q in QUESTIONS]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Six data_samples documents ingested into a home of its own, plus synthetic answers."""
    root = tmp_path_factory.mktemp("durability")
    library = root / "library"
    library.mkdir()
    for name in SUBSET:
        for path in (SAMPLES / name, SAMPLES / f"{name}.meta.json"):
            if path.is_file():
                shutil.copy2(path, library / path.name)
    home = root / "home"
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    summary = ingest([library], settings, progress=False)
    assert not summary.failed and summary.count("added") == len(SUBSET), summary.to_dict()
    retriever = Retriever(settings)
    log = _log_at(home, every=10)
    for n in range(25):
        question = QUESTIONS[n % len(QUESTIONS)]
        hits = retriever.retrieve(question, k=5)
        log.append(
            "answer",
            f"user{n % 4}",
            "clinician",
            {
                "question": question,
                "answer": "synthetic answer",
                "mode": "quoted",
                "retrieved": [
                    {"chunk_id": h.chunk.chunk_id, "content_hash": h.chunk.content_hash}
                    for h in hits
                ],
            },
        )
    log.close()
    return settings


# --------------------------------------------------------------------------- kill -9


def test_kill_9_during_audit_appends_loses_no_acknowledged_record(tmp_path: Path) -> None:
    home = tmp_path / "audit"
    acknowledged: dict[int, str] = {}
    rng = random.Random(20261128)
    for kill in range(1, KILLS + 1):
        proc = subprocess.Popen(
            [sys.executable, "-c", APPEND_CHILD, str(home), str(KILL_CHECKPOINT_EVERY)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            output = proc.stdout.read()
            proc.wait()
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                acknowledged[int(parts[0])] = parts[1]
        with contextlib.closing(_log_at(home)) as log:
            result = log.verify()
            assert result.ok, f"after kill {kill}: {result.reason}"
            lost = [
                seq
                for seq, nonce in sorted(acknowledged.items())
                if (record := log.get(seq)) is None or record.payload.get("nonce") != nonce
            ]
            assert not lost, f"after kill {kill}: acknowledged records lost: {lost[:10]}"
    assert len(acknowledged) >= KILLS, "the children hardly appended; raise the kill delay"


# --------------------------------------------------------------------------- backup and restore


def test_backup_and_restore_into_a_fresh_home(
    source: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _top5(source)
    live = audit_log(source)
    records = live.count()
    head = live.head()
    assert head is not None

    dest = tmp_path / "backup"
    args = argparse.Namespace(command="backup", dest=dest, include_keys=False, json=True)
    assert maintenance_command(args, source) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audit"]["records"] == records and summary["audit"]["verify"]["ok"]
    assert summary["audit"]["head_hash"] == head.hash
    assert summary["manifest"]["documents"] == len(SUBSET)
    # the key stays out of the backup, and the backup says where it is
    assert not summary["keys"]["included"] and not (dest / "keys").exists()
    assert str(source.audit_key.resolve()) in summary["keys"]["note"]
    # one self-contained file per database (no -wal/-shm), no vector store
    assert sorted(p.name for p in dest.iterdir()) == [
        "audit.checkpoint.history.jsonl",
        "audit.checkpoint.json",
        "audit.sqlite",
        "backup.json",
        "manifest.sqlite",
    ]
    # the backup itself was recorded in the live log, after the copy
    assert live.count() == records + 1 and live.head().event == "backup"  # type: ignore[union-attr]
    with pytest.raises(MaintenanceError, match="never overwritten"):
        backup(source, dest)

    target = source.model_copy(update={"home": tmp_path / "restored"})
    with pytest.raises(MaintenanceError, match="--key"):
        restore(target, dest)
    assert not target.home.exists() or not any(target.home.iterdir())

    result = restore(target, dest, key=source.audit_key)
    assert result["audit"]["records"] == records
    assert result["index"]["chunks"] == result["index"]["vectors"] == summary["manifest"]["chunks"]
    restored = audit_log(target)
    check = restored.verify()
    # the restored records, then the restore itself, recorded on the restored chain
    assert check.ok and check.count == records + 1, check.reason
    assert restored.get(head.seq).hash == head.hash  # type: ignore[union-attr]
    after = restored.head()
    assert after is not None and after.event == "restore" and after.prev_hash == head.hash
    checkpoint = json.loads(target.audit_checkpoint.read_text(encoding="utf-8"))
    assert (checkpoint["seq"], checkpoint["hash"]) == (after.seq, after.hash)
    assert target.audit_key.read_bytes() == source.audit_key.read_bytes()
    # the rebuilt index answers the fixed queries exactly as the original
    assert _top5(target) == before
    # the restored log goes on with the same key
    restored.append("restore_check", "admin", "admin", {"ok": True})
    assert restored.verify().ok
    restored.close()

    with pytest.raises(MaintenanceError, match="not empty"):
        restore(target, dest, key=source.audit_key)


def test_a_backup_with_keys_carries_the_question_hash_key(source: Settings, tmp_path: Path) -> None:
    """Without the site key a restored home hashes questions with a new one, and equal
    questions asked before and after the restore no longer match."""
    from audit.log.redact import site_key

    key = site_key(source.question_key)
    dest = tmp_path / "backup"
    backup(source, dest, include_keys=True)
    target = source.model_copy(update={"home": tmp_path / "restored"})
    restore(target, dest)
    assert target.question_key.read_bytes() == key
    assert oct(target.question_key.stat().st_mode & 0o777) == "0o600"


def test_a_changed_backup_is_refused(source: Settings, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    backup(source, dest, include_keys=True)
    assert (dest / "keys" / "audit.key").read_bytes() == source.audit_key.read_bytes()
    with (dest / "manifest.sqlite").open("r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    target = source.model_copy(update={"home": tmp_path / "restored"})
    with pytest.raises(MaintenanceError, match="changed since the backup"):
        restore(target, dest)
    assert not target.home.exists() or not any(target.home.iterdir())


# --------------------------------------------------------------------------- index rebuild


def test_rebuilding_the_vector_index_from_the_manifest_reproduces_top5(
    source: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _top5(source)
    index = Index(source)
    index.warm_up()
    index.store.delete_ids(sorted(index.store.ids()))  # every vector lost
    assert index.store.count() == 0
    args = argparse.Namespace(command="reindex", fresh=False, json=True)
    assert maintenance_command(args, source) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chunks"] == summary["vectors"] == len(index.manifest.chunk_ids())
    assert index.store.ids() == index.manifest.chunk_ids()
    assert _top5(source) == before
    assert audit_log(source).head().event == "reindex"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- fail closed


def test_unwritable_audit_store_fails_closed_before_generating(
    source: Settings, tmp_path: Path
) -> None:
    blocked = tmp_path / "audit.sqlite"
    blocked.mkdir()  # the database path is taken by a folder: SQLite cannot open it
    log = AuditLog(blocked, tmp_path / "audit.checkpoint.json", tmp_path / "keys" / "audit.key")
    assistant = Assistant(source, llm=_NoLLM(), audit_log=log)
    streamed: list[str] = []
    with pytest.raises(AuditError) as err:
        assistant.ask(QUESTIONS[0], on_token=streamed.append)
    assert streamed == []
    message = str(err.value)
    assert "cannot be written" in message and "unable to open database file" in message
    assert "No answer is given without an audit record" in message


class _FullDiskLog(AuditLog):
    """SQLite's own out-of-space path: the database may not grow past its current size + 2
    pages (``PRAGMA max_page_count``), which SQLite reports exactly as a full disk."""

    def _open_read_write(self) -> Any:
        conn = super()._open_read_write()
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return conn


def test_audit_store_full_at_commit_withholds_the_answer(source: Settings, tmp_path: Path) -> None:
    log = _FullDiskLog(
        tmp_path / "audit.sqlite", tmp_path / "audit.checkpoint.json", tmp_path / "keys" / "k"
    )
    written = 0
    with pytest.raises(AuditWriteError, match="database or disk is full"):
        for _ in range(200):
            log.append("answer", "filler", "clinician", {"pad": "x" * 1500})
            written += 1
    assert log.count() == written and log.verify().ok

    assistant = Assistant(source, llm=_NoLLM(), audit_log=log)
    streamed: list[str] = []
    with pytest.raises(AuditError) as err:
        assistant.ask(OFF_TOPIC, on_token=streamed.append)
    message = str(err.value)
    assert "answer was withheld" in message and "database or disk is full" in message
    assert "free disk space" in message
    # Only the (unverified, abstaining) stream reached the caller; no answer object did.
    assert streamed in ([], [ABSTAIN_TEXT])
    assert log.count() == written
    result = log.verify()
    assert result.ok and result.count == written, result.reason
    log.close()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        timeout=30,
    )
    return out.returncode == 0


def test_real_full_disk_refuses_before_generating(source: Settings, tmp_path: Path) -> None:
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "2m"):
        pytest.skip("needs root and permission to mount a 2 MiB tmpfs")
    log = _log_at(small)
    try:
        for n in range(5):
            log.append("answer", "user", "clinician", {"n": n})
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, b"\0" * 65536)
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

        assistant = Assistant(source, llm=_NoLLM(), audit_log=log)
        streamed: list[str] = []
        with pytest.raises(AuditError) as err:
            assistant.ask(QUESTIONS[0], on_token=streamed.append)
        assert streamed == []  # refused before retrieval and generation
        message = str(err.value)
        assert "cannot be written" in message and "free disk space" in message
        with pytest.raises(AuditWriteError):
            log.append("answer", "user", "clinician", {"n": "refused"})
        assert log.count() == 5 and log.verify().ok

        filler.unlink()  # space is back: so are appends, and the chain is intact
        log.append("answer", "user", "clinician", {"n": 5})
        result = log.verify()
        assert result.ok and result.count == 6, result.reason
    finally:
        log.close()
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


# --------------------------------------------------------------------------- writer lock


def test_second_writer_is_refused_while_readers_keep_working(source: Settings) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_CHILD, str(source.home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().split() == ["locked", str(holder.pid)]
        # readers (another process: this one) keep working
        hits = Retriever(source).retrieve(QUESTIONS[0], k=5)
        assert hits and hits[0].chunk.doc_id == "colorectal-cancer-screening"
        # writers are refused at once, with who holds the store and what to do
        with pytest.raises(StoreLockedError) as err:
            ingest([SAMPLES / SUBSET[0]], source, progress=False)
        message = str(err.value)
        assert f"being written by pid {holder.pid}" in message
        assert "readers keep working" in message
        with pytest.raises(StoreLockedError):
            rebuild_index(source)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with writer_lock(source):
        pass  # released with its holder
