"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, pg_ctl on a free port.

Debian's ``postgresql`` package (``.ci/run`` installs it) puts ``initdb`` and ``pg_ctl`` in
``/usr/lib/postgresql/<version>/bin``. initdb refuses to run as root, so when the tests run as
root the cluster belongs to the ``postgres`` user and its commands run through ``runuser``.
The server listens on 127.0.0.1 only, with trust authentication: nothing off the box can
reach it, and it is deleted at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "clinrag"


def pg_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One running cluster; ``url`` is a psycopg connection URL for its ``clinrag`` database."""

    def __init__(self, bin_dir: Path, root: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/clinrag"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # Loopback only, no Unix socket in a shared folder. fsync off for the tests: a test
        # cluster holds nothing worth a crash-safe write; benchmarks ask for durable commits,
        # to compare with SQLite's synchronous=FULL.
        unsafe = "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                + ("" if self.durable else unsafe)
                + "max_connections = 100\n"
            )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )
        self._run(
            "createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "clinrag",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)

    def reset(self) -> None:
        """Drop every schema clinrag created, so the next test starts from an empty database."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'clinrag%%'"
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A started server, stopped and deleted on exit; ``durable``: fsync on every commit."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (no initdb / pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="clinrag-pg-"))
    server = PostgresServer(bin_dir, root, durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        # The server's files may take a moment to be released after an immediate stop.
        for _ in range(10):
            try:
                shutil.rmtree(root)
                break
            except OSError:
                time.sleep(0.2)
