"""Reading a copied audit database without changing it (backups are checked by sha256)."""

from __future__ import annotations

from pathlib import Path

from audit.log.database import open_read_only


def head_of_copy(db_path: Path) -> tuple[int, str | None]:
    """(seq, hash) of the newest record of a copied log, opened read-only.

    :class:`~audit.log.AuditLog` would switch the file to WAL mode on first read, changing a
    backup after its sha256 was taken.
    """
    conn = open_read_only(Path(db_path))
    try:
        row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return (int(row[0]), str(row[1])) if row else (0, None)
