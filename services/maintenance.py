"""Backup, restore and index rebuild: ``clinrag backup DEST``, ``restore SRC``, ``reindex``.

What a backup holds (a new folder, never overwritten):

- ``audit.sqlite`` with its signed checkpoint and checkpoint history, taken with
  :meth:`audit.log.AuditLog.backup` (SQLite's online backup API under the audit write lock, so
  the checkpoint matches the copied records);
- ``manifest.sqlite`` (documents, chunks and their text: the source of truth for the index)
  and, when present, the app's ``users.sqlite``, both with SQLite's backup API: a live
  database is never copied as a file;
- the app's ``uploads/`` folder when present (plain files the manifest points to);
- ``backup.json``: what was copied, each file's sha256, record and chunk counts, and where the
  audit signing key lives.

What it does not hold: the vector store (``store/``), which :func:`restore` rebuilds from the
manifest, the converted model and BM25 caches (rebuilt on first use), and, unless asked for,
the audit signing key. The key is what makes the checkpoints unforgeable, so it belongs in a
separate safe place; a restore needs it (``--key`` or ``HOME/keys/audit.key``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.config import Settings, ensure_home
from core.errors import AuditError, ClinragError

BACKUP_FORMAT = 1
BACKUP_META = "backup.json"
AUDIT_DB = "audit.sqlite"
AUDIT_CHECKPOINT = "audit.checkpoint.json"
MANIFEST_DB = "manifest.sqlite"
USERS_DB = "users.sqlite"
UPLOADS_DIR = "uploads"
KEY_FILE = "keys/audit.key"


class MaintenanceError(ClinragError):
    """A backup, restore or rebuild cannot be done as asked; the message says what to do."""


# --------------------------------------------------------------------------- helpers


def _audit_log(
    settings: Settings,
    db: Path | None = None,
    checkpoint: Path | None = None,
    key: Path | None = None,
) -> Any:
    from audit.log import AuditLog

    return AuditLog(
        db or settings.audit_db,
        checkpoint or settings.audit_checkpoint,
        key or settings.audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _private_file(path: Path) -> None:
    """Create ``path`` empty and owner-only; refuse if it exists (nothing is overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_copy(src: Path, dest: Path, *, journal_mode: str) -> str:
    """Copy one SQLite database with the online backup API; return its quick_check result.

    The source is opened read-only, so a live database (WAL, other writers) is copied as one
    consistent snapshot and a backup on write-protected media is never modified.
    """
    _private_file(dest)
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(str(dest), isolation_level=None)
        try:
            source.backup(target)
            target.execute(f"PRAGMA journal_mode = {journal_mode}")
            check = str(target.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            target.close()
    finally:
        source.close()
    return check


def _write_private(path: Path, data: bytes) -> None:
    _private_file(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tree_private(src: Path, dest: Path) -> int:
    """Copy a folder of plain files owner-only; return the number of files."""
    n = 0
    for path in sorted(src.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        target = dest / path.relative_to(src)
        _write_private(target, path.read_bytes())
        n += 1
    return n


def _manifest_stats(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:

        def one(sql: str) -> Any:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

        return {
            "documents": int(one("SELECT COUNT(*) FROM documents WHERE state = 'complete'") or 0),
            "pending_documents": int(
                one("SELECT COUNT(*) FROM documents WHERE state = 'pending'") or 0
            ),
            "chunks": int(
                one(
                    "SELECT COUNT(*) FROM chunks JOIN documents USING (doc_id) "
                    "WHERE state = 'complete'"
                )
                or 0
            ),
            "index_version": int(one("SELECT value FROM meta WHERE key = 'index_version'") or 0),
            "embedder_model": one("SELECT value FROM meta WHERE key = 'embedder_model'"),
            "embedder_hash": one("SELECT value FROM meta WHERE key = 'embedder_hash'"),
        }
    except sqlite3.Error as exc:
        raise MaintenanceError(
            f"The manifest {path} cannot be read ({exc}). It is not a clinrag manifest or it is "
            "damaged; restore it from an older backup."
        ) from exc
    finally:
        conn.close()


def _audit_head(path: Path) -> tuple[int, str | None]:
    """(seq, hash) of the newest record, read-only: AuditLog's readers would switch a backup
    file to WAL mode (and so change it after its sha256 was taken)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else (0, None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@contextlib.contextmanager
def _audit_errors(action: str) -> Iterator[None]:
    from audit.log import AuditLogError

    try:
        yield
    except AuditLogError as exc:
        raise AuditError(f"{action} failed: {exc}") from exc


# --------------------------------------------------------------------------- backup


def backup(
    settings: Settings, dest_dir: Path | str, *, include_keys: bool = False
) -> dict[str, Any]:
    """Back up the audit log, the manifest (and the app's users and uploads) to ``dest_dir``.

    ``dest_dir`` must not exist or be empty, and must lie outside CLINRAG_HOME. The copied
    audit log is verified with the live key before this returns; the summary's
    ``audit.verify`` says whether it passed (a log that fails verification is still backed
    up: it is evidence).
    """
    t0 = time.perf_counter()
    home = settings.home
    dest = Path(dest_dir).expanduser()
    if _is_within(dest, home):
        raise MaintenanceError(
            f"The backup folder {dest} is inside CLINRAG_HOME ({home}); a backup there is lost "
            "with the home. Choose a folder on another disk or machine."
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MaintenanceError(
            f"{dest} already exists and is not an empty folder; backups are never overwritten. "
            "Choose a new folder, e.g. one named after today's date."
        )
    has_audit = settings.audit_db.is_file()
    has_manifest = settings.manifest_path.is_file()
    if not has_audit and not has_manifest:
        raise MaintenanceError(
            f"Nothing to back up in {home}: no audit log and no manifest. Check CLINRAG_HOME "
            "(or --home) points at the clinrag data folder."
        )
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        dest.chmod(0o700)

    summary: dict[str, Any] = {
        "format": BACKUP_FORMAT,
        "created": _now(),
        "source_home": str(home.resolve()),
        "host": platform.node(),
        "backup_dir": str(dest.resolve()),
    }
    try:
        if has_audit:
            with _audit_errors("The audit log backup"):
                _audit_log(settings).backup(dest / AUDIT_DB, dest / AUDIT_CHECKPOINT)
            result = _audit_log(settings, dest / AUDIT_DB, dest / AUDIT_CHECKPOINT).verify()
            head_seq, head_hash = _audit_head(dest / AUDIT_DB)
            summary["audit"] = {
                "records": result.count,
                "head_seq": head_seq,
                "head_hash": head_hash,
                "verify": {"ok": result.ok, "reason": result.reason},
            }
        else:
            summary["audit"] = None
        if has_manifest:
            check = _sqlite_copy(settings.manifest_path, dest / MANIFEST_DB, journal_mode="DELETE")
            if check != "ok":
                raise MaintenanceError(
                    f"The manifest copy fails SQLite's integrity check ({check}); the live "
                    f"manifest {settings.manifest_path} may be damaged. Run `clinrag reindex` "
                    "only after restoring it from an older backup."
                )
            summary["manifest"] = _manifest_stats(dest / MANIFEST_DB)
        else:
            summary["manifest"] = None
        users = home / USERS_DB
        summary["users"] = users.is_file()
        if users.is_file():
            _sqlite_copy(users, dest / USERS_DB, journal_mode="DELETE")
        uploads = home / UPLOADS_DIR
        summary["uploads"] = (
            _copy_tree_private(uploads, dest / UPLOADS_DIR) if uploads.is_dir() else 0
        )
        summary["keys"] = {
            "included": bool(include_keys and settings.audit_key.is_file()),
            "audit_key": str(settings.audit_key.resolve()),
            "note": (
                "The audit signing key IS in this backup (keys/audit.key): protect the backup "
                "like the key itself."
                if include_keys
                else "The audit signing key is NOT in this backup. Keep a copy of "
                f"{settings.audit_key.resolve()} somewhere safe and separate; restore needs it "
                "(clinrag restore SRC --key KEYFILE)."
            ),
        }
        if include_keys and settings.audit_key.is_file():
            _write_private(dest / KEY_FILE, settings.audit_key.read_bytes())
        summary["not_included"] = [
            "store/ (the vector index: restore rebuilds it from the manifest)",
            "models/ and cache/ (converted model and BM25 caches: rebuilt on first use)",
        ]
        summary["files"] = {
            str(p.relative_to(dest)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(dest.rglob("*"))
            if p.is_file() and p.name != BACKUP_META
        }
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        _write_private(dest / BACKUP_META, json.dumps(summary, indent=2).encode("utf-8"))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return summary


# --------------------------------------------------------------------------- restore


def read_backup(backup_dir: Path | str) -> dict[str, Any]:
    """The backup's ``backup.json``, after checking every listed file's sha256."""
    src = Path(backup_dir).expanduser()
    meta_path = src / BACKUP_META
    if not meta_path.is_file():
        raise MaintenanceError(
            f"{src} is not a clinrag backup (no {BACKUP_META}). Point restore at the folder "
            "that `clinrag backup DEST` created."
        )
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MaintenanceError(f"{meta_path} is damaged ({exc}); use another backup.") from exc
    if meta.get("format") != BACKUP_FORMAT:
        raise MaintenanceError(
            f"{src} was written in backup format {meta.get('format')!r}; this clinrag reads "
            f"format {BACKUP_FORMAT}. Restore it with the clinrag version that made it."
        )
    for name, info in (meta.get("files") or {}).items():
        path = src / name
        if not path.is_file():
            raise MaintenanceError(
                f"The backup is incomplete: {path} is missing. Use another backup."
            )
        if _sha256(path) != info.get("sha256"):
            raise MaintenanceError(
                f"The backup file {path} changed since the backup was taken (sha256 differs "
                "from backup.json). Use another backup."
            )
    return meta


def _check_home_empty(home: Path) -> bool:
    """True when the home holds a key the admin placed there; raise unless otherwise empty."""
    if not home.exists():
        return False
    entries = {p.name for p in home.iterdir()}
    key_only = entries == {"keys"} and {p.name for p in (home / "keys").iterdir()} == {"audit.key"}
    if entries and not key_only:
        raise MaintenanceError(
            f"CLINRAG_HOME {home} is not empty; restore only writes into an empty folder so "
            "nothing live is overwritten. Restore into a new folder (clinrag --home NEW "
            "restore SRC), check it, then point CLINRAG_HOME at it."
        )
    return key_only


def _resolve_key(settings: Settings, src: Path, meta: dict[str, Any], key: Path | None) -> Path:
    if key is not None:
        key = Path(key).expanduser()
        if not key.is_file():
            raise MaintenanceError(f"The key file {key} does not exist; pass the audit.key file.")
        return key
    if (src / KEY_FILE).is_file():
        return src / KEY_FILE
    if settings.audit_key.is_file():
        return settings.audit_key
    where = (meta.get("keys") or {}).get("audit_key", "HOME/keys/audit.key")
    raise MaintenanceError(
        "The backup does not contain the audit signing key (by design); without it the "
        f"restored log cannot be verified or extended. The key was at {where} on "
        f"{meta.get('host', 'the original machine')}. Pass it with `clinrag restore SRC --key "
        f"KEYFILE`, or copy it to {settings.audit_key} first."
    )


def _sqlite_restore(src: Path, dest: Path) -> None:
    check = _sqlite_copy(src, dest, journal_mode="WAL")
    if check != "ok":
        raise MaintenanceError(
            f"The restored {dest.name} fails SQLite's integrity check ({check}). The backup "
            f"file {src} is damaged; use another backup."
        )


def restore(
    settings: Settings, backup_dir: Path | str, *, key: Path | str | None = None
) -> dict[str, Any]:
    """Restore a backup into an empty CLINRAG_HOME, rebuild the vector index, verify the log.

    The key is taken from ``key``, else from the backup (if it was made with
    ``include_keys``), else from ``HOME/keys/audit.key`` if the admin put it there. The
    backup's audit log is verified with that key before anything is written, and the restored
    log again afterwards against the restored checkpoint. On any failure the files written
    so far are removed again, leaving the home as it was.
    """
    t0 = time.perf_counter()
    src = Path(backup_dir).expanduser()
    home = settings.home
    key_in_home = _check_home_empty(home)
    meta = read_backup(src)
    audit_meta = meta.get("audit")
    key_path = _resolve_key(settings, src, meta, Path(key) if key else None) if audit_meta else None

    summary: dict[str, Any] = {
        "backup_dir": str(src.resolve()),
        "backup_created": meta.get("created"),
        "source_home": meta.get("source_home"),
        "home": str(home.resolve()),
    }
    if audit_meta:
        assert key_path is not None
        backed_up = _audit_log(settings, src / AUDIT_DB, src / AUDIT_CHECKPOINT, key_path).verify()
        if not backed_up.ok:
            raise AuditError(
                f"The backup's audit log does not verify with the key {key_path}: "
                f"{backed_up.reason}. Check that this is the right key (the original "
                f"{(meta.get('keys') or {}).get('audit_key')}); otherwise use another backup."
            )

    ensure_home(settings)
    kept = {"keys"} if key_in_home else set()
    try:
        if audit_meta:
            assert key_path is not None
            if not settings.audit_key.is_file():
                _write_private(settings.audit_key, key_path.read_bytes())
                with contextlib.suppress(OSError):
                    settings.audit_key.parent.chmod(0o700)
            elif settings.audit_key.read_bytes() != key_path.read_bytes():
                raise MaintenanceError(
                    f"{settings.audit_key} differs from the key {key_path}; remove one of them."
                )
            _sqlite_restore(src / AUDIT_DB, settings.audit_db)
            for name in (AUDIT_CHECKPOINT, "audit.checkpoint.history.jsonl"):
                if (src / name).is_file():
                    _write_private(home / name, (src / name).read_bytes())
        if meta.get("manifest"):
            _sqlite_restore(src / MANIFEST_DB, settings.manifest_path)
        if (src / USERS_DB).is_file():
            _sqlite_restore(src / USERS_DB, home / USERS_DB)
        if (src / UPLOADS_DIR).is_dir():
            summary["uploads"] = _copy_tree_private(src / UPLOADS_DIR, home / UPLOADS_DIR)

        if meta.get("manifest"):
            summary["index"] = _rebuild(settings, fresh=False)
        if audit_meta:
            result = _audit_log(settings).verify()
            if not result.ok:
                raise AuditError(
                    f"The restored audit log does not verify: {result.reason}. The home was "
                    "left as it was; use another backup."
                )
            head = _audit_log(settings).head()
            if result.count != audit_meta["records"] or (head and head.hash) != audit_meta.get(
                "head_hash"
            ):
                raise AuditError(
                    f"The restored audit log has {result.count} records ending in "
                    f"{head.hash[:12] if head else '-'}, but the backup recorded "
                    f"{audit_meta['records']}; use another backup."
                )
            summary["audit"] = {
                "records": result.count,
                "head_seq": head.seq if head else 0,
                "verify": {"ok": result.ok, "reason": result.reason},
                "key_from": str(key_path),
            }
        else:
            summary["audit"] = None
    except BaseException:
        for entry in home.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        raise
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


# --------------------------------------------------------------------------- reindex


def _close_index(index: Any) -> None:
    """Release the index's store client and manifest, so their files may be moved or removed.

    Uses ``store.close()`` when the adapter has one, else the Chroma client's own ``close()``.
    """
    with contextlib.suppress(Exception):
        close = getattr(index.store, "close", None)
        if close is None:
            client = getattr(index.store, "_client", None)
            close = getattr(client, "close", None)
        if close is not None:
            close()
    with contextlib.suppress(Exception):
        index.manifest.close()


def _rebuild(settings: Settings, *, fresh: bool) -> dict[str, Any]:
    from core.library.index import Index, writer_lock

    t0 = time.perf_counter()
    with writer_lock(settings):
        moved: Path | None = None
        if fresh and settings.store_dir.exists():
            # Another process (or an earlier Index in this one) holding the old store open
            # would keep writing to the moved folder: the CLI runs this in a fresh process.
            moved = settings.store_dir.with_name(
                f"store.old-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
            )
            settings.store_dir.rename(moved)
        index = Index(settings)
        try:
            try:
                index.warm_up()
            except ClinragError:
                raise
            except Exception as exc:
                raise MaintenanceError(
                    f"The vector store in {settings.store_dir} cannot be opened ({exc}). Stop "
                    "every clinrag process using this home, then run `clinrag reindex --fresh` "
                    "to rebuild it from the manifest."
                ) from exc
            chunks = index.rebuild_vectors()
            # After the rebuild, so pending documents (an ingest killed mid-write) are rolled
            # back cheaply: their chunks are not in the rebuilt store; the next ingest redoes
            # them from their files.
            rolled_back = len(index.manifest.documents(state="pending"))
            index.recover()
            stored = index.store.count()
            documents = len(index.manifest.documents())
            manifest_chunks = len(index.manifest.chunk_ids())
            version = index.version
        finally:
            _close_index(index)
    if stored != manifest_chunks:
        raise MaintenanceError(
            f"After the rebuild the store holds {stored} vectors but the manifest {manifest_chunks}"
            " chunks. Run `clinrag reindex --fresh` with no other clinrag process running."
        )
    return {
        "documents": documents,
        "chunks": chunks,
        "vectors": stored,
        "pending_rolled_back": rolled_back,
        "index_version": version,
        "old_store_moved_to": str(moved) if moved else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def rebuild_index(settings: Settings, *, fresh: bool = False) -> dict[str, Any]:
    """Re-embed every chunk of the manifest into the vector store, under the writer lock.

    ``fresh`` first moves ``store/`` aside (to ``store.old-<time>``, to delete once the new
    index answers well): for a store that cannot be opened at all. Readers in other processes
    keep their old handle, so stop the app before ``fresh``; without it, answers given during
    the rebuild may miss passages that are not re-added yet.
    """
    if not settings.manifest_path.is_file():
        raise MaintenanceError(
            f"There is no manifest in {settings.home}, so there is nothing to rebuild from. "
            "Ingest documents (clinrag ingest PATH) or restore a backup (clinrag restore SRC)."
        )
    return _rebuild(settings, fresh=fresh)


# --------------------------------------------------------------------------- CLI


def _record(settings: Settings, event: str, payload: dict[str, Any]) -> None:
    with _audit_errors(f"Recording the {event} in the audit log"):
        _audit_log(settings).append(event, settings.user, settings.role, payload)


def maintenance_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``clinrag backup|restore|reindex``; print a summary (or JSON); return the exit code."""
    as_json = bool(getattr(args, "json", False))
    if args.command == "backup":
        summary = backup(
            settings, args.dest, include_keys=bool(getattr(args, "include_keys", False))
        )
        audit = summary.get("audit") or {}
        ok = not audit or audit["verify"]["ok"]
        if settings.audit_db.is_file():
            _record(
                settings,
                "backup",
                {
                    "dest": summary["backup_dir"],
                    "records": audit.get("records", 0),
                    "head_seq": audit.get("head_seq", 0),
                    "verified": ok,
                    "keys_included": summary["keys"]["included"],
                },
            )
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            man = summary.get("manifest") or {}
            print(f"Backup written to {summary['backup_dir']}")
            if audit:
                state = "verified" if ok else f"DOES NOT VERIFY: {audit['verify']['reason']}"
                print(f"  audit log: {audit['records']} records, {state}")
            if man:
                print(f"  manifest: {man['documents']} documents, {man['chunks']} chunks")
            print(
                f"  users: {'yes' if summary['users'] else 'none'}; uploads: {summary['uploads']}"
            )
            print(f"  {summary['keys']['note']}")
            print("  The vector store is not copied: restore rebuilds it from the manifest.")
        if not ok:
            print(
                "clinrag: the live audit log fails verification; the backup was kept as "
                "evidence. Run `clinrag audit verify` and investigate.",
                file=sys.stderr,
            )
        return 0 if ok else 1
    if args.command == "restore":
        summary = restore(settings, args.src, key=getattr(args, "key", None))
        if summary.get("audit"):
            _record(
                settings,
                "restore",
                {
                    "from": summary["backup_dir"],
                    "backup_created": summary["backup_created"],
                    "records_restored": summary["audit"]["records"],
                    "documents": (summary.get("index") or {}).get("documents", 0),
                    "chunks": (summary.get("index") or {}).get("chunks", 0),
                },
            )
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"Restored {summary['backup_dir']} into {summary['home']}")
            if summary.get("audit"):
                print(f"  audit log: {summary['audit']['records']} records, verified")
            if summary.get("index"):
                idx = summary["index"]
                print(
                    f"  index rebuilt from the manifest: {idx['documents']} documents, "
                    f"{idx['chunks']} chunks ({idx['seconds']:.0f} s)"
                )
        return 0
    if args.command == "reindex":
        summary = rebuild_index(settings, fresh=bool(getattr(args, "fresh", False)))
        if settings.audit_db.is_file():
            _record(settings, "reindex", {k: v for k, v in summary.items() if k != "seconds"})
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"Rebuilt the vector index from the manifest: {summary['documents']} documents, "
                f"{summary['chunks']} chunks ({summary['seconds']:.0f} s)."
            )
            if summary["pending_rolled_back"]:
                print(
                    f"  {summary['pending_rolled_back']} half-written documents were rolled back;"
                    " ingest their folder again."
                )
            if summary["old_store_moved_to"]:
                print(
                    f"  The old store is in {summary['old_store_moved_to']}; delete it when done."
                )
        return 0
    raise MaintenanceError(f"Unknown maintenance command {args.command!r}.")
