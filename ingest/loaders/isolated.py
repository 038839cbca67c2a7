"""Parse files in a child process, so that the parse timeout holds off the main thread too.

``parse_deadline`` interrupts a parse with SIGALRM, which only the main thread can receive.
The app ingests uploads from a Streamlit script thread, where a parse used to run unbounded
while holding the library's writer lock. There, ``ingest`` hands each file to an
:class:`IsolatedLoader`: one child process per ingest run that calls ``load_document`` on its
own main thread with the same limits and timeout as the command line, so it times out the
same way, with the same reason. The parent waits for the timeout plus a grace period and then
kills the child, which also covers what SIGALRM cannot stop (one long C call) and a child
that dies (its memory, not the app's, is what a hostile file exhausts). The next file gets
a fresh child. The command line parses in-process as before: no start-up cost, same speed.

A plain subprocess rather than ``multiprocessing``: spawn and forkserver re-import the
parent's ``__main__``, which inside Streamlit is the app script, and fork copies a process
whose other threads (torch's, Streamlit's) may hold locks the child would wait on forever.
The pipes carry pickles between this module and itself only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from core.errors import ClinragError, LoadError
from core.types import Document

TARGET = "ingest.loaders:load_document"
# The parsers' libraries, imported before the child reports ready so that the first file of
# each format does not spend its parse time importing them.
_PRELOAD = ("ingest.loaders", "bs4", "lxml.etree", "pypdf", "docx")
GRACE_S = 5.0  # beyond parse_timeout_s, before the child is killed rather than waited for
START_TIMEOUT_S = 120.0  # imports on a loaded 2-core machine


class IsolatedLoader:
    """Loads files like ``load_document``, each in a child process (one child, reused).

    Use it as a context manager; the child is started on the first file (or by
    :meth:`start`) and ended on exit. Not thread-safe: one ingest run, one thread.
    """

    def __init__(
        self,
        *,
        grace_s: float = GRACE_S,
        start_timeout_s: float = START_TIMEOUT_S,
        target: str = TARGET,
    ) -> None:
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        self.target = target  # "module:function", called as load_document is (tests swap it)
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None

    def __enter__(self) -> IsolatedLoader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the child if none is running. Raises ClinragError if it cannot start: then
        no file can be parsed, which is not one file's problem."""
        if self._proc is not None:
            return
        req_read, req_write = os.pipe()
        rep_read, rep_write = os.pipe()
        env = dict(os.environ)
        # the child imports the same code as this process (an uninstalled checkout, tests)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(req_read), str(rep_write), self.target],
                pass_fds=(req_read, rep_write),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            for fd in (req_read, req_write, rep_read, rep_write):
                os.close(fd)
            raise ClinragError(f"The parser process could not be started ({exc}).") from exc
        finally:
            if self._proc is not None:
                os.close(req_read)
                os.close(rep_write)
        self._requests = Connection(req_write, readable=False)
        self._replies = Connection(rep_read, writable=False)
        try:
            ready = self._replies.poll(self.start_timeout_s) and self._replies.recv()
        except (EOFError, OSError):
            ready = None
        if ready != ("ready",):
            code = self._stop()
            raise ClinragError(
                f"The parser process did not start (exit code {code}); its error is in the "
                "server's log."
            )

    def load(
        self, path: Path, *, max_bytes: int, max_pages: int, timeout_s: float | None = None
    ) -> Document:
        """``load_document(path, ...)`` in the child; the same LoadErrors, and
        ``parse_timeout`` also when the child had to be killed."""
        if self._proc is not None and self._proc.poll() is not None:
            self._stop()  # it died since the last file (killed from outside): start another
        self.start()
        assert self._requests is not None and self._replies is not None
        limits = {"max_bytes": max_bytes, "max_pages": max_pages, "timeout_s": timeout_s}
        try:
            self._requests.send((str(path), limits))
            wait = None if timeout_s is None else timeout_s + self.grace_s
            answered = self._replies.poll(wait)
            reply: Any = self._replies.recv() if answered else None
        except (EOFError, OSError):  # the child died: crashed, or killed for its memory
            code = self._stop()
            if code == -signal.SIGKILL:
                raise LoadError(
                    "too_complex", "the parser was killed, most likely for using too much memory"
                ) from None
            raise LoadError(
                "parse_error", f"the parser process crashed (exit code {code})"
            ) from None
        if not answered:
            self._stop()
            raise LoadError(
                "parse_timeout",
                f"parsing took longer than parse_timeout_s ({timeout_s:g} s); the parser "
                "process was stopped",
            )
        kind = reply[0]
        if kind == "ok":
            document: Document = reply[1]
            return document
        if kind == "load_error":
            raise LoadError(reply[1], reply[2])
        raise LoadError("parse_error", str(reply[1]))

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within a second."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            assert self._requests is not None
            self._requests.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(1.0)
        self._stop()

    def _stop(self) -> int | None:
        """Kill the child (if still running) and close the pipes; returns its exit code."""
        proc, self._proc = self._proc, None
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._requests = self._replies = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()


def _serve(requests: Connection, replies: Connection, target: str) -> None:
    """The child: load each path sent until told to stop (None) or the parent is gone."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    module, _, function = target.partition(":")
    load = getattr(importlib.import_module(module), function)
    replies.send(("ready",))
    while True:
        try:
            job = requests.recv()
        except EOFError:
            return
        if job is None:
            return
        path, limits = job
        try:
            reply: tuple[Any, ...] = ("ok", load(Path(path), **limits))
        except LoadError as exc:
            # as fields: LoadError(reason, detail) does not survive pickling
            reply = ("load_error", exc.reason, exc.detail)
        except Exception as exc:  # a loader bug: reported for this file, as ingest does
            reply = ("bug", f"{exc.__class__.__name__}: {exc}"[:300])
        replies.send(reply)


if __name__ == "__main__":
    _serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
        sys.argv[3],
    )
