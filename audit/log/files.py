"""Durable, private file writes and the cross-process append lock.

The checkpoint files and the signing key are only worth something if a crash or a power cut
can never leave them half written, and if nobody else on the machine can read them; the helpers
here are the one place that gets fsync, atomic replacement and file modes right.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

# Tested on sys.platform rather than os.name so type checkers see which branch applies.
if sys.platform == "win32":  # pragma: no cover - Windows
    import msvcrt
else:
    import fcntl


def ensure_private_dir(path: Path) -> None:
    # Only folders we create get 0o700; tightening an existing folder the admin chose
    # (a shared home, a mounted volume) is not ours to do.
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    # mkdir(parents=True) would give the intermediate folders the default mode.
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk, or a power cut can bring the old checkpoint back
    # (which verify would rightly report as stale). Windows cannot open a directory.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """tmp file + fsync + os.replace: readers see the old file or the new one, never half."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, *, create: bool) -> Iterator[None]:
    """Exclusive across processes and AuditLog objects (flock is per open file).

    Readers pass ``create=False``: no lock file means no writer has ever run here (or the
    copy sits on read-only media), so there is nothing to wait for.
    """
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError:
        if create:
            raise
        yield
        return
    try:
        if sys.platform == "win32":  # pragma: no cover - Windows
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
