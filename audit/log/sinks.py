"""Where copies of the log's heads and records go outside the database: files and syslog.

Two settings name sinks: ``audit_anchor`` (the witness of every signed head, see ``anchor``)
and ``audit_stream`` (one JSON line per record for the hospital's SIEM, see ``stream``). A sink
is written as text:

- ``"syslog"`` or ``"syslog:FACILITY"`` (``auth``, ``authpriv``, ``daemon``, ``user``,
  ``local0`` ... ``local7``; default ``authpriv``): one message per line through the local
  syslog daemon, which hospitals forward to their SIEM. Write-only: nothing here reads it back.
- ``"file:/absolute/path"``: one line appended per entry with a single ``write()`` on an
  ``O_APPEND`` descriptor. Put it on another mount, owned by another user or made append-only
  (``chattr +a``), so the service that writes the log cannot rewrite it.

Relative paths are refused: the process's working folder differs between the CLI, the app and
a service manager, and a witness that moves with it witnesses nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from audit.log.files import ensure_private_dir, write_all

SYSLOG_FACILITIES = (
    "auth",
    "authpriv",
    "daemon",
    "user",
    *(f"local{n}" for n in range(8)),
)
DEFAULT_FACILITY = "authpriv"
SYSLOG_IDENT = "clinrag-audit"
_SPEC_RE = re.compile(r"^(?:syslog(?::(?P<facility>[a-z0-9]+))?|file:(?P<path>.+))$")


class SinkSpecError(ValueError):
    """A sink is not written as ``syslog[:FACILITY]`` or ``file:/absolute/path``."""


@dataclass(frozen=True)
class Sink:
    """One destination: a file (``path``) or syslog (``facility``)."""

    kind: str  # "file" | "syslog"
    path: Path | None = None
    facility: str = DEFAULT_FACILITY

    def __str__(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else f"syslog:{self.facility}"


def parse_sink(spec: str) -> Sink:
    """One sink from its text form; :class:`SinkSpecError` says what is wrong."""
    match = _SPEC_RE.match(spec.strip())
    if match is None:
        raise SinkSpecError(
            f"audit sink {spec!r} is neither 'syslog', 'syslog:FACILITY' nor 'file:/absolute/path'"
        )
    if match["path"] is not None:
        path = Path(match["path"]).expanduser()
        if not path.is_absolute():
            raise SinkSpecError(f"audit sink {spec!r}: the file path must be absolute")
        return Sink("file", path=path)
    facility = match["facility"] or DEFAULT_FACILITY
    if facility not in SYSLOG_FACILITIES:
        raise SinkSpecError(
            f"audit sink {spec!r}: unknown syslog facility (use one of "
            f"{', '.join(SYSLOG_FACILITIES)})"
        )
    return Sink("syslog", facility=facility)


def parse_sinks(specs: str | Iterable[str | Sink] | None) -> tuple[Sink, ...]:
    """Sinks from a comma-separated string, a list of specs (or sinks), or nothing."""
    if specs is None:
        return ()
    if isinstance(specs, str):
        specs = [part for part in specs.split(",") if part.strip()]
    return tuple(spec if isinstance(spec, Sink) else parse_sink(spec) for spec in specs)


def file_sinks(sinks: Iterable[Sink]) -> list[Path]:
    return [sink.path for sink in sinks if sink.kind == "file" and sink.path is not None]


def append_line(path: Path, line: str, *, durable: bool) -> None:
    """Append ``line`` and a newline to ``path`` in one ``write()``; raise ``OSError``.

    O_NOFOLLOW: a link planted at the path must not redirect the write (e.g. onto the log).
    A torn last line from a crash gets a newline first, so it cannot swallow this one.
    """
    ensure_private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        size = os.fstat(fd).st_size
        prefix = b"\n" if size and not _ends_with_newline(path, size) else b""
        write_all(fd, prefix + line.encode("utf-8") + b"\n")
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path, size: int) -> bool:
    # A witness may be write-only for the service (another owner, mode 0620): then it cannot
    # look, and the reader's line parsing copes with a glued line (see anchor.read_anchor).
    try:
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            return fh.read(1) == b"\n"
    except OSError:
        return True


def check_appendable(path: Path) -> None:
    """Raise ``OSError`` unless ``path`` can be opened for appending (creating nothing new
    beyond the file itself)."""
    ensure_private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, 0o600))


def send_syslog(facility: str, message: str) -> None:
    """One message to the local syslog daemon.

    The C library reports no delivery failure (a stopped daemon loses the message silently),
    which is why the anchor also takes a file sink and verify reads files only.
    """
    import syslog  # POSIX only: imported here so the log still works on Windows without it

    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, getattr(syslog, f"LOG_{facility.upper()}"))
    syslog.syslog(syslog.LOG_NOTICE, message)
