"""Backup and restore of a clinrag home: ``clinrag backup DEST``, ``clinrag restore SRC``.

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

With ``database_url`` the three stores live in PostgreSQL; the backup holds the same SQLite
files, copied out of the database (so a backup is verified the same way, with the standard
library alone), and a restore loads them into an empty database.

What it does not hold: the vector store (``store/``), which :func:`restore` rebuilds from the
manifest, the converted model and BM25 caches (rebuilt on first use), and, unless asked for,
the audit signing key. The key is what makes the checkpoints unforgeable, so it belongs in a
separate safe place; a restore needs it (``--key`` or ``HOME/keys/audit.key``).
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.log import AuditLog, history_path_for
from audit.log.snapshot import head_of_copy
from audit.record import Recorder
from core.config import Settings, ensure_home
from core.database import SqliteDatabase
from core.errors import AuditError, ClinragError
from core.hashing import file_sha256 as sha256_file
from core.library.manifest import Manifest, read_stats
from core.types import Actor
from services.access import Operation, require
from services.accounts import copy_users, list_users, users_database, users_path
from services.library import uploads_dir
from services.private_files import copy_tree_private, create_private, sqlite_copy, write_private
from services.reindex import rebuild

# The backup folder's own layout (format 1). The live home's paths come from the settings and
# the modules that own each file; only the copy's names are fixed here.
BACKUP_FORMAT = 1
BACKUP_META = "backup.json"
AUDIT_DB = "audit.sqlite"
AUDIT_CHECKPOINT = "audit.checkpoint.json"
MANIFEST_DB = "manifest.sqlite"
USERS_DB = "users.sqlite"
UPLOADS_DIR = "uploads"
KEY_FILE = "keys/audit.key"
# The site key of the keyed question hashes: without it, hashes after a restore no longer
# match equal questions asked before it.
QUESTION_KEY_FILE = "keys/question.key"


class MaintenanceError(ClinragError):
    """A backup, restore or rebuild cannot be done as asked; the message says what to do."""


def _audit_log(
    settings: Settings,
    db: Path | None = None,
    checkpoint: Path | None = None,
    key: Path | None = None,
) -> AuditLog:
    """The live log (``db`` None: where the settings keep it), or the SQLite copy ``db``."""
    return AuditLog(
        db or settings.audit_db,
        checkpoint or settings.audit_checkpoint,
        key or settings.audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
        database_url=settings.database_url if db is None else None,
    )


# With ``database_url`` the three stores live in PostgreSQL: a backup copies each into the same
# SQLite file a home's backup holds (one format, verifiable with the standard library alone),
# and a restore loads those files into the (empty) database.


def _has_audit(settings: Settings) -> bool:
    if settings.database_url is None:
        return settings.audit_db.is_file()
    with _audit_errors("Reading the audit log"):
        return _audit_log(settings).count() > 0 or settings.audit_checkpoint.is_file()


def _has_manifest(settings: Settings) -> bool:
    if settings.database_url is None:
        return settings.manifest_path.is_file()
    return bool(_live_manifest(settings).documents(state=None))


def _has_users(settings: Settings) -> bool:
    if settings.database_url is None:
        return users_path(settings).is_file()
    return bool(list_users(settings))


def _live_manifest(settings: Settings) -> Manifest:
    return Manifest(settings.manifest_path, database_url=settings.database_url)


def _copy_manifest(source: Manifest, target: Manifest) -> None:
    try:
        source.copy_into(target)
    finally:
        source.close()
        target.close()


def _check_database_empty(settings: Settings) -> None:
    """With ``database_url``: refuse to restore into a database that holds any of the stores."""
    if settings.database_url is None:
        return
    held = [
        name
        for name, present in (
            ("audit records", _audit_log(settings).count() > 0),
            ("documents", _has_manifest(settings)),
            ("user accounts", _has_users(settings)),
        )
        if present
    ]
    if held:
        raise MaintenanceError(
            f"The database at database_url already holds {', '.join(held)}; restore only "
            "writes into an empty one so nothing live is overwritten. Restore into a new "
            "database, check it, then point database_url at it."
        )


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
    settings: Settings, actor: Actor, dest_dir: Path | str, *, include_keys: bool = False
) -> dict[str, Any]:
    """Back up the audit log, the manifest (and the app's users and uploads) to ``dest_dir``.

    ``dest_dir`` must not exist or be empty, and must lie outside CLINRAG_HOME. The copied
    audit log is verified with the live key before this returns; the summary's
    ``audit.verify`` says whether it passed (a log that fails verification is still backed
    up: it is evidence).
    """
    t0 = time.perf_counter()
    require(actor, Operation.MAINTAIN)
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
    has_audit = _has_audit(settings)
    has_manifest = _has_manifest(settings)
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
            head_seq, head_hash = head_of_copy(dest / AUDIT_DB)
            summary["audit"] = {
                "records": result.count,
                "head_seq": head_seq,
                "head_hash": head_hash,
                "verify": {"ok": result.ok, "reason": result.reason},
            }
        else:
            summary["audit"] = None
        if has_manifest and settings.database_url is not None:
            create_private(dest / MANIFEST_DB)
            _copy_manifest(_live_manifest(settings), Manifest(dest / MANIFEST_DB))
            summary["manifest"] = read_stats(dest / MANIFEST_DB)
        elif has_manifest:
            check = sqlite_copy(settings.manifest_path, dest / MANIFEST_DB, journal_mode="DELETE")
            if check != "ok":
                raise MaintenanceError(
                    f"The manifest copy fails SQLite's integrity check ({check}); the live "
                    f"manifest {settings.manifest_path} may be damaged. Run `clinrag reindex` "
                    "only after restoring it from an older backup."
                )
            summary["manifest"] = read_stats(dest / MANIFEST_DB)
        else:
            summary["manifest"] = None
        users = users_path(settings)
        summary["users"] = _has_users(settings)
        if summary["users"] and settings.database_url is not None:
            create_private(dest / USERS_DB)
            copy_users(users_database(settings), SqliteDatabase(dest / USERS_DB))
        elif users.is_file():
            sqlite_copy(users, dest / USERS_DB, journal_mode="DELETE")
        uploads = uploads_dir(settings)
        summary["uploads"] = (
            copy_tree_private(uploads, dest / UPLOADS_DIR) if uploads.is_dir() else 0
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
            write_private(dest / KEY_FILE, settings.audit_key.read_bytes())
        if include_keys and settings.question_key.is_file():
            write_private(dest / QUESTION_KEY_FILE, settings.question_key.read_bytes())
        summary["not_included"] = [
            "store/ (the vector index: restore rebuilds it from the manifest)",
            "models/ and cache/ (converted model and BM25 caches: rebuilt on first use)",
        ]
        summary["files"] = {
            str(p.relative_to(dest)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(dest.rglob("*"))
            if p.is_file() and p.name != BACKUP_META
        }
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        write_private(dest / BACKUP_META, json.dumps(summary, indent=2).encode("utf-8"))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    audit = summary.get("audit") or {}
    if audit:
        with Recorder.open(settings) as recorder:
            recorder.backup(
                actor,
                dest=summary["backup_dir"],
                records=int(audit.get("records", 0)),
                head_seq=int(audit.get("head_seq", 0)),
                verified=bool(audit["verify"]["ok"]),
                keys_included=bool(summary["keys"]["included"]),
            )
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
        if sha256_file(path) != info.get("sha256"):
            raise MaintenanceError(
                f"The backup file {path} changed since the backup was taken (sha256 differs "
                "from backup.json). Use another backup."
            )
    return meta


def _check_home_empty(settings: Settings) -> bool:
    """True when the home holds a key the admin placed there; raise unless otherwise empty."""
    home = settings.home
    if not home.exists():
        return False
    entries = {p.name for p in home.iterdir()}
    key = settings.audit_key
    key_only = (
        key.parent.parent == home
        and entries == {key.parent.name}
        and {p.name for p in key.parent.iterdir()} == {key.name}
    )
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
    check = sqlite_copy(src, dest, journal_mode="WAL")
    if check != "ok":
        raise MaintenanceError(
            f"The restored {dest.name} fails SQLite's integrity check ({check}). The backup "
            f"file {src} is damaged; use another backup."
        )


def restore(
    settings: Settings, actor: Actor, backup_dir: Path | str, *, key: Path | str | None = None
) -> dict[str, Any]:
    """Restore a backup into an empty CLINRAG_HOME, rebuild the vector index, verify the log.

    The key is taken from ``key``, else from the backup (if it was made with
    ``include_keys``), else from ``HOME/keys/audit.key`` if the admin put it there. The
    backup's audit log is verified with that key before anything is written, and the restored
    log again afterwards against the restored checkpoint. On any failure the files written
    so far are removed again, leaving the home as it was.
    """
    t0 = time.perf_counter()
    require(actor, Operation.MAINTAIN)
    src = Path(backup_dir).expanduser()
    home = settings.home
    key_in_home = _check_home_empty(settings)
    meta = read_backup(src)
    _check_database_empty(settings)
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
    kept = {settings.audit_key.parent.name} if key_in_home else set()
    try:
        if audit_meta:
            assert key_path is not None
            if not settings.audit_key.is_file():
                write_private(settings.audit_key, key_path.read_bytes())
                with contextlib.suppress(OSError):
                    settings.audit_key.parent.chmod(0o700)
            elif settings.audit_key.read_bytes() != key_path.read_bytes():
                raise MaintenanceError(
                    f"{settings.audit_key} differs from the key {key_path}; remove one of them."
                )
            if settings.database_url is None:
                _sqlite_restore(src / AUDIT_DB, settings.audit_db)
            else:
                with _audit_errors("Restoring the audit log"):
                    _audit_log(settings).database.load_from(src / AUDIT_DB)
            copies = (
                (src / AUDIT_CHECKPOINT, settings.audit_checkpoint),
                (
                    history_path_for(src / AUDIT_CHECKPOINT),
                    history_path_for(settings.audit_checkpoint),
                ),
            )
            for copy, live in copies:
                if copy.is_file():
                    write_private(live, copy.read_bytes())
        if (src / QUESTION_KEY_FILE).is_file() and not settings.question_key.exists():
            write_private(settings.question_key, (src / QUESTION_KEY_FILE).read_bytes())
        if meta.get("manifest") and settings.database_url is not None:
            _copy_manifest(Manifest(src / MANIFEST_DB, read_only=True), _live_manifest(settings))
        elif meta.get("manifest"):
            _sqlite_restore(src / MANIFEST_DB, settings.manifest_path)
        if (src / USERS_DB).is_file() and settings.database_url is not None:
            copy_users(SqliteDatabase(src / USERS_DB, read_only=True), users_database(settings))
        elif (src / USERS_DB).is_file():
            _sqlite_restore(src / USERS_DB, users_path(settings))
        if (src / UPLOADS_DIR).is_dir():
            summary["uploads"] = copy_tree_private(src / UPLOADS_DIR, uploads_dir(settings))

        if meta.get("manifest"):
            summary["index"] = rebuild(settings, fresh=False)
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
    if summary.get("audit"):
        index = summary.get("index") or {}
        with Recorder.open(settings) as recorder:
            recorder.restore(
                actor,
                backup_dir=summary["backup_dir"],
                backup_created=summary.get("backup_created"),
                records_restored=int(summary["audit"]["records"]),
                documents=int(index.get("documents", 0)),
                chunks=int(index.get("chunks", 0)),
            )
    return summary
