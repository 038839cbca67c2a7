"""Servers the tests and ``benchmarks/cluster.py`` both start: a real Chroma server on loopback.

(PostgreSQL's is in ``tests/pg.py``; the model server in ``tests/openai_server.py``.) Kept out
of conftest.py so that a benchmark can import it without pytest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def start_chroma_server(path: Path, env: dict[str, str] | None = None) -> tuple[str, Any]:
    """A real Chroma server (the ``chroma`` command chromadb installs) on a free loopback port,
    persisting under ``path``. Returns (url, process); the caller terminates the process."""
    chroma = Path(sys.executable).with_name("chroma")
    assert chroma.is_file(), f"{chroma} is missing: chromadb installs it (pip install chromadb)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(path.with_suffix(".log"), "wb")  # noqa: SIM115 (the server's, closed with it)
    process = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2):
                return url, process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = path.with_suffix(".log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chroma run did not start:\n{tail}") from None
            time.sleep(0.1)


def stop(process: Any) -> None:
    """Terminate a server process, killing it when it does not stop within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
