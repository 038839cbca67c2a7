"""The library as users change and read it: list, ingest, upload, remove, currency warnings.

The command line and the Library page call the same functions; each checks the actor's role
and records its audit event (``audit.record``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from audit.record import IngestDocument, Recorder
from core.config import Settings, ensure_home
from core.errors import ClinragError, LoadError, NotFoundError
from core.library import supersedes
from core.library.index import Index, writer_lock
from core.library.manifest import Manifest, manifest_exists
from core.library.restrictions import may_see
from core.types import Actor
from ingest.index import FileResult as FileResult
from ingest.index import IngestSummary, ingest
from ingest.loaders.metadata import SIDECAR_SUFFIX, load_sidecar
from services.access import Operation, allowed, require

# A cited guideline older than this is flagged: guidelines are usually revised within 5 years.
MAX_GUIDELINE_AGE_YEARS = 5
UPLOADS_DIR = "uploads"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def uploads_dir(settings: Settings) -> Path:
    return settings.home / UPLOADS_DIR


def documents(settings: Settings, actor: Actor) -> list[dict[str, Any]]:
    """The complete documents in the manifest (doc_id, title, metadata, n_chunks, ...) that
    ``actor`` may know of: all of them for the roles that change the library (they manage the
    restricted ones too), those their role may see for everyone else.

    What an asker's answers, supersession and currency warnings rest on is narrower: see
    :func:`visible_documents`.
    """
    require(actor, Operation.READ_LIBRARY)
    docs = manifest_documents(settings)
    if allowed(actor.role, Operation.CHANGE_LIBRARY):
        return docs
    return [d for d in docs if may_see(d["metadata"], (actor.role,))]


def visible_documents(settings: Settings, actor: Actor) -> list[dict[str, Any]]:
    """The complete documents ``actor``'s role may see, as retrieval decides it for their
    questions (an administrator is no exception). The Ask page computes its warnings from
    these, so a restricted document never names itself to someone who may not read it."""
    require(actor, Operation.READ_LIBRARY)
    return [d for d in manifest_documents(settings) if may_see(d["metadata"], (actor.role,))]


def manifest_documents(settings: Settings) -> list[dict[str, Any]]:
    """Every complete document, unchecked: for services that filter by role themselves."""
    if not manifest_exists(settings.manifest_path, settings.database_url):
        return []
    manifest = Manifest(settings.manifest_path, database_url=settings.database_url)
    try:
        return manifest.documents()
    finally:
        manifest.close()


def _parse_date(text: str) -> date | None:
    """ISO dates, or year-month, or year alone (taken as the first day)."""
    text = (text or "").strip()
    for pattern, fill in (
        (r"^\d{4}-\d{2}-\d{2}", ""),
        (r"^\d{4}-\d{2}$", "-01"),
        (r"^\d{4}$", "-01-01"),
    ):
        match = re.match(pattern, text)
        if match:
            with contextlib.suppress(ValueError):
                return date.fromisoformat(match.group(0) + fill)
    return None


def _visible(
    docs: Sequence[Mapping[str, Any]], roles: Sequence[str] | None
) -> Sequence[Mapping[str, Any]]:
    if roles is None:
        return docs
    return [d for d in docs if may_see(d.get("metadata") or {}, roles)]


def superseded_by(
    doc_id: str,
    title: str,
    docs: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
) -> list[Mapping[str, Any]]:
    """Documents in the library that declare they supersede this one (by doc_id or title).

    With ``roles``, only documents those roles may see count: retrieval demotes by the same
    rule, and a restricted document must not name itself to people who may not read it.
    """
    return supersedes.superseded_by(doc_id, title, _visible(docs, roles))


def currency_warnings(
    doc_id: str,
    docs: Sequence[Mapping[str, Any]],
    *,
    today: date | None = None,
    max_age_years: int = MAX_GUIDELINE_AGE_YEARS,
    title: str = "",
    metadata: dict[str, str] | None = None,
    roles: Sequence[str] | None = None,
) -> list[str]:
    """Plain-text warnings for a cited document: superseded, or older than ``max_age_years``.

    ``docs`` are the documents the reader may see (:func:`visible_documents`); ``roles``, when
    given, drops any other as well, so a caller passing the whole library still cannot name
    a restricted successor to someone who may not read it.
    """
    today = today or date.today()
    docs = _visible(docs, roles)
    doc = next((d for d in docs if d["doc_id"] == doc_id), None)
    meta = metadata if metadata is not None else (doc or {}).get("metadata", {})
    title = title or (doc or {}).get("title", "")
    out: list[str] = []
    for newer in superseded_by(doc_id, title, docs):
        when = newer["metadata"].get("publication_date")
        out.append(
            f"Superseded by {newer['title']}" + (f" ({when})" if when else "") + ": check it."
        )
    published = _parse_date(meta.get("publication_date", ""))
    if published is not None:
        try:
            limit = published.replace(year=published.year + max_age_years)
        except ValueError:  # 29 February
            limit = published.replace(year=published.year + max_age_years, day=28)
        if limit < today:
            out.append(
                f"Published {meta['publication_date']}, more than {max_age_years} "
                f"year{'s' if max_age_years != 1 else ''} ago: "
                "check for a newer version."
            )
    return out


class OriginalUnavailableError(ClinragError):
    """The original file of a document cannot be handed out; the message says why."""


def original_name(settings: Settings, actor: Actor, doc_id: str) -> str:
    """The file name to offer for a document's original, once :func:`original_bytes` would
    serve it (the same checks; the hash is remembered while the file is untouched).

    Raises :class:`NotFoundError` or :class:`OriginalUnavailableError` with the reason.
    """
    doc, path = _original(settings, actor, doc_id)
    before = _original_key(doc, path)
    if before is None or before not in _VERIFIED:
        _verified_bytes(settings, doc, path)
        # remembered only if nothing touched the file while it was read
        if before is not None and _original_key(doc, path) == before:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            _VERIFIED.add(before)
    return path.name


def original_bytes(settings: Settings, actor: Actor, doc_id: str) -> bytes:
    """The bytes of a document's original file, exactly as ingested, for ``actor`` to download.

    The path in the manifest is only where the bytes were: by the time someone clicks, the
    file may have been edited or replaced by a link to anything the service can read. So the
    file is opened without following links, must be a regular file, and its hash (with its
    metadata sidecar, as ingest hashed it) must equal the manifest's; anything else is
    refused. Only documents ``actor``'s role may see are served, and a document they may not
    see is reported missing rather than restricted.
    """
    doc, path = _original(settings, actor, doc_id)
    return _verified_bytes(settings, doc, path)


# (path, device, inode, size, mtime, ctime of the file and its sidecar, expected sha256) of
# originals that hashed right: the Ask page checks each cited original on every rerun, and
# any change to the file (a write, a rename over it, a new link) changes its ctime.
_VERIFIED: set[tuple[Any, ...]] = set()
_VERIFIED_MAX = 1024


def _original(settings: Settings, actor: Actor, doc_id: str) -> tuple[dict[str, Any], Path]:
    require(actor, Operation.READ_LIBRARY)
    doc = None
    if manifest_exists(settings.manifest_path, settings.database_url):
        manifest = Manifest(settings.manifest_path, database_url=settings.database_url)
        try:
            doc = manifest.document(doc_id)
        finally:
            manifest.close()
    if doc is None or doc.get("state") != "complete" or not may_see(doc["metadata"], (actor.role,)):
        raise NotFoundError(f"No document {doc_id!r} in the library.")
    path = Path(doc["source_path"])
    if not path.is_absolute():
        path = Path.cwd() / path
    return doc, path


def _original_key(doc: Mapping[str, Any], path: Path) -> tuple[Any, ...] | None:
    parts: list[Any] = [str(path), doc["sha256"]]
    for p in (path, path.with_name(path.name + SIDECAR_SUFFIX)):
        try:
            info = os.lstat(p)
        except FileNotFoundError:
            if p is path:
                return None
            parts.append(None)
            continue
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        parts.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(parts)


def _verified_bytes(settings: Settings, doc: Mapping[str, Any], path: Path) -> bytes:
    title = doc.get("title") or doc["doc_id"]
    data = _read_no_follow(path, int(settings.max_file_mb * 1_000_000), title)
    try:
        _, sidecar = load_sidecar(path)
    except LoadError as exc:
        raise OriginalUnavailableError(
            f"The original file of {title!r} is not offered: its metadata file cannot be "
            f"read safely ({exc})."
        ) from exc
    if hashlib.sha256(data + sidecar).hexdigest() != doc["sha256"]:
        raise OriginalUnavailableError(
            f"The original file of {title!r} has changed since it was ingested, so it is not "
            "offered: it may no longer be what the answer cites. An administrator can ingest "
            "it again."
        )
    return data


def _read_no_follow(path: Path, max_bytes: int, title: str) -> bytes:
    """The file's bytes, refusing a link, a pipe, a device or a folder, and anything too big.

    O_NOFOLLOW refuses a link in the last component; the hash check refuses anything else
    that is not the ingested file, wherever a path leads. O_NONBLOCK keeps a FIFO from
    blocking the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    unavailable = f"The original file of {title!r} is not offered"
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise OriginalUnavailableError(f"{unavailable}: it is no longer there.") from exc
    except OSError as exc:
        if os.path.islink(path):
            raise OriginalUnavailableError(
                f"{unavailable}: it has been replaced by a link, which is not followed."
            ) from exc
        raise OriginalUnavailableError(f"{unavailable}: {exc.strerror}.") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OriginalUnavailableError(f"{unavailable}: it is not a regular file.")
        if info.st_size > max_bytes:
            raise OriginalUnavailableError(f"{unavailable}: it is larger than max_file_mb.")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise OriginalUnavailableError(f"{unavailable}: it is larger than max_file_mb.")
        return data
    finally:
        os.close(fd)


# Uploads keep their (cleaned) names, which is how a document and its NAME.meta.json sidecar
# find each other. A name too long is refused, never cut: cutting at 120 characters turned
# "X.md.meta.json" into "X.md.meta.j", unpaired it, and a restricted document went in public.
# 200 leaves room for the ".NAME.PID.part" temporary file within 255 bytes (cleaned names are
# ASCII, a byte a character).
MAX_UPLOAD_NAME = 200


def safe_upload_name(name: str) -> str:
    """A file name that cannot leave the uploads folder or hide itself.

    Raises ValueError, naming the file, for a name that is empty once cleaned or longer than
    ``MAX_UPLOAD_NAME`` characters.
    """
    base = Path(name.replace("\\", "/")).name
    base = _SAFE_NAME.sub("_", base).strip(" .")
    if not base:
        raise ValueError(f"Cannot store an upload named {name!r}.")
    if len(base) > MAX_UPLOAD_NAME:
        short = MAX_UPLOAD_NAME - len(SIDECAR_SUFFIX)
        raise ValueError(
            f"The file name {name!r} is {len(base)} characters long; uploaded names may have "
            f"at most {MAX_UPLOAD_NAME}. Nothing was uploaded. Rename the file and upload it "
            f"again; a document with a {SIDECAR_SUFFIX} file needs a name of at most {short} "
            f"characters, so that the metadata file (the same name plus {SIDECAR_SUFFIX}) fits."
        )
    return base


def save_uploads(
    settings: Settings, actor: Actor, files: Sequence[tuple[str, bytes]]
) -> list[Path]:
    """Write uploaded files (name, bytes) into ``home/uploads``, owner-only. Returns the paths.

    A file with a name already there replaces it, so uploading a new edition updates it.
    Every name is checked before anything is written: if one is refused (ValueError), none
    is stored, so a document never lands without the metadata file uploaded with it.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    names = [safe_upload_name(name) for name, _ in files]
    first: dict[str, str] = {}
    for (original, _), stored in zip(files, names, strict=True):
        other = first.setdefault(stored, original)
        if other != original:
            # one would silently replace the other (and perhaps the other's metadata file)
            raise ValueError(
                f"The files {other!r} and {original!r} would both be stored as {stored!r}. "
                "Nothing was uploaded. Rename one of them and upload again."
            )
    ensure_home(settings)
    folder = uploads_dir(settings)
    folder.mkdir(mode=0o700, exist_ok=True)
    paths: list[Path] = []
    for (_, data), stored in zip(files, names, strict=True):
        path = folder / stored
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def add(
    settings: Settings,
    actor: Actor,
    paths: Sequence[Path],
    *,
    source: str,
    prune: bool = False,
    progress: bool | None = None,
    index: Index | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders into the library, then record the ``ingest`` event.

    ``source`` says where the files came from (``cli``, ``upload``). A metadata sidecar is
    not ingested itself: the document beside it, which reads it, is. A sidecar given without
    its document (new metadata for a document already in the library) therefore re-ingests
    that document, and one with no document beside it is reported as failed: skipping it
    silently would leave the document's old metadata, perhaps no restriction, in force.

    The parse limits and timeout are the command line's wherever this runs: called from a
    thread (the app's), ``ingest`` parses each file in a child process, where the timeout
    can interrupt it.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    candidates = [Path(p) for p in paths if not Path(p).name.endswith(SIDECAR_SUFFIX)]
    orphans: list[FileResult] = []
    named = {p.resolve() for p in candidates}
    for side in (Path(p) for p in paths if Path(p).name.endswith(SIDECAR_SUFFIX)):
        document = side.with_name(side.name[: -len(SIDECAR_SUFFIX)])
        if document.resolve() in named:
            continue
        if document.is_symlink() or document.is_file():  # ingest refuses a link, by name
            candidates.append(document)
            named.add(document.resolve())
        else:
            orphans.append(
                FileResult(
                    path=str(side),
                    status="failed",
                    reason="bad_metadata",
                    detail=(
                        f"describes {document.name}, which is not beside it; upload the "
                        "document with it (same name without .meta.json)"
                    ),
                )
            )
    summary = ingest(
        candidates, settings, prune=prune, index=index, on_file=on_file, progress=progress
    )
    summary.results.extend(orphans)
    data = summary.to_dict()
    documents: list[IngestDocument] = [
        {"doc_id": r.doc_id, "status": r.status, "reason": r.reason}
        for r in summary.results
        if r.status != "unchanged"
    ]
    with Recorder.open(settings) as recorder:
        recorder.ingest(
            actor,
            source=source,
            paths=[str(p) for p in candidates],
            counts={k: v for k, v in data.items() if isinstance(v, int)},
            index_version=summary.index_version,
            documents=documents,
        )
    return summary


def is_empty(settings: Settings) -> bool:
    """Whether the library holds no document (the first start ingests the samples then)."""
    return not manifest_documents(settings)


def remove(settings: Settings, actor: Actor, doc_id: str, *, index: Index | None = None) -> bool:
    """Remove a document from the index (under the writer lock) and record a ``remove`` event.

    An uploaded original in ``home/uploads`` is deleted too, so it cannot come back unseen.
    Raises :class:`NotFoundError` when the library has no such document.
    """
    require(actor, Operation.CHANGE_LIBRARY)
    index = index or Index(settings)
    doc = index.manifest.document(doc_id)
    with writer_lock(settings):
        index.warm_up()
        removed = bool(index.remove(doc_id))
    if not removed:
        raise NotFoundError(f"No document {doc_id!r} in the library (see: clinrag sources).")
    deleted_file = False
    if doc is not None:
        path = Path(doc["source_path"]).resolve()
        if path.parent == uploads_dir(settings).resolve() and path.is_file():
            path.unlink()
            deleted_file = True
    with Recorder.open(settings) as recorder:
        recorder.remove(actor, doc_id, deleted_upload=deleted_file)
    return True
