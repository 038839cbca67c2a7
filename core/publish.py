"""Build a folder once, safely, however many processes start at the same moment.

Everything clinrag derives on first use and keeps under CLINRAG_HOME (the converted LLM, the
lexical index) goes through :func:`publish_dir`:

- one builder at a time, under an inter-process lock beside the target (``.NAME.lock``); the
  operating system drops the lock when its holder dies, even by ``kill -9``;
- the build goes into a private temporary folder (``.NAME.tmp-XXXX``), never into a name
  another process could also be writing, or reading;
- a marker listing every file and its size is written last, then the folder is renamed into
  place: a folder under the final name is complete, and one without its marker (left by an
  older clinrag, or truncated since) is rebuilt rather than loaded;
- temporary folders left by a killed builder are removed by the next process holding the lock;
- a process that finds the lock held says so, once, then waits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("clinrag.publish")

MARKER = ".clinrag-complete.json"
_FORMAT = 1


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def read_marker(target: Path) -> dict[str, Any] | None:
    """The marker of a complete build at ``target``, or None when there is none.

    Complete means: the marker is there, parses, and every file it lists has its recorded
    size (a folder truncated after publication, or copied in half, does not pass).
    """
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        for rel, size in files.items():
            if (target / rel).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == _FORMAT else None


def is_published(target: Path) -> bool:
    return read_marker(target) is not None


def published_meta(target: Path) -> dict[str, Any] | None:
    """What the builder passed as ``meta`` to :func:`publish_dir`, if ``target`` is complete."""
    marker = read_marker(target)
    return None if marker is None else dict(marker.get("meta") or {})


@contextmanager
def exclusive(target: Path, what: str, lock: Path | None = None) -> Iterator[None]:
    """Hold ``target``'s build lock (or ``lock``, which several targets may share); say so
    once when another process holds it first."""
    from filelock import FileLock, Timeout

    path = lock or lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    held = FileLock(str(path))
    try:
        held.acquire(timeout=0)
    except Timeout:
        # A logging record, not print: the app's log has it, and the CLI (no logging
        # configured) shows it on stderr through logging's last-resort handler.
        log.warning("Waiting for another process to finish %s…", what)
        held.acquire()
    try:
        yield
    finally:
        held.release()


def publish_dir(
    target: Path,
    build: Callable[[Path], object],
    *,
    what: str,
    meta: Mapping[str, Any] | None = None,
    lock: Path | None = None,
) -> bool:
    """Make sure a complete build is at ``target``: build it with ``build(tmp)`` unless one
    is there already. Returns True when this call built it, False when it found one.

    ``what`` names the work for the waiting message ("converting the model").
    ``build`` fills the empty folder it is given, under the lock; it must not touch
    ``target``. ``lock`` replaces the target's own lock file, for builds that must also
    exclude each other (versions of one index that prune their predecessors).
    """
    if is_published(target):
        return False
    with exclusive(target, what, lock):
        # someone may have finished while this process waited for the lock
        if is_published(target):
            return False
        sweep(target)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
        try:
            build(tmp)
            _write_marker(tmp, meta or {})
            _install(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def sweep(target: Path) -> None:
    """Remove what killed builders of ``target`` left behind. Call with the lock held: only a
    builder holding it writes these folders, so every one found now is abandoned."""
    parent = target.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        # the ".tmp" sibling is the fixed name older clinrag versions built into
        if entry.name.startswith((_tmp_prefix(target), _old_prefix(target))) or (
            entry.name == f"{target.name}.tmp"
        ):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _write_marker(folder: Path, meta: Mapping[str, Any]) -> None:
    files: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    # the files' data reaches the disk before the marker that vouches for them, so a power
    # cut cannot leave a marker over empty files (their sizes would catch it anyway)
    body = json.dumps({"format": _FORMAT, "meta": dict(meta), "files": files}, indent=1)
    marker = folder / MARKER
    with marker.open("w", encoding="utf-8") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(folder)


def _install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an incomplete ``target`` is moved aside first (a folder
    cannot be renamed over a non-empty one), then removed."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=_old_prefix(target), dir=target.parent))
        old.rmdir()
        target.rename(old)
    tmp.rename(target)
    _fsync(target.parent)
    if old is not None:
        _remove(old)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (its renames), to the disk."""
    # Windows cannot open a folder; its renames are durable once they return
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
