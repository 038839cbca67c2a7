"""Owner-only file writes for copies that leave CLINRAG_HOME (backups) and come back (restores).

Nothing is overwritten: each file is created exclusively, written in full and fsynced.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def create_private(path: Path) -> None:
    """Create ``path`` empty and owner-only; refuse if it exists (nothing is overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def sqlite_copy(src: Path, dest: Path, *, journal_mode: str) -> str:
    """Copy one SQLite database with the online backup API; return its quick_check result.

    The source is opened read-only, so a live database (WAL, other writers) is copied as one
    consistent snapshot and a backup on write-protected media is never modified.
    """
    create_private(dest)
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


def write_private(path: Path, data: bytes) -> None:
    create_private(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_tree_private(src: Path, dest: Path) -> int:
    """Copy a folder of plain files owner-only; return the number of files."""
    n = 0
    for path in sorted(src.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        target = dest / path.relative_to(src)
        write_private(target, path.read_bytes())
        n += 1
    return n
