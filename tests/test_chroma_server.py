"""The library against a real Chroma server (``chroma run``, started by the chroma_server fixture).

Ingest, query, remove, re-ingest, rebuild from the manifest and kill -9 recovery, with the real
embedder, through ``chroma_url``; nothing is written to an embedded store. Then how the server
is protected, as docs/design.md says: Chroma 1.x checks no token itself, so it listens on
loopback only and a proxy in front checks ``chroma_token``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLES, start_chroma_server

from assistant.retrieve import Retriever
from core.backends.chroma import ChromaStore, VectorStoreUnavailableError
from core.config import Settings, load_settings
from core.errors import StoreLockedError
from core.library.index import Index
from core.types import Actor, Chunk, EmbedderInfo
from services import library
from services.reindex import rebuild_index

ADMIN = Actor("admin", "admin")
DOCS = ("hypertension-diagnosis-and-treatment.md", "statins-primary-prevention.md",
        "colorectal-cancer-screening.md")  # fmt: skip
N_KILL_DOCS = 12
QUESTIONS = {
    "What blood pressure defines stage 1 hypertension?": "hypertension-diagnosis-and-treatment",
    "Who should take a statin for primary prevention?": "statins-primary-prevention",
}


def _server_settings(home: Path, url: str, collection: str, **extra: str) -> Settings:
    env = {"CLINRAG_HOME": str(home), "CLINRAG_CHROMA_URL": url, "CLINRAG_COLLECTION": collection}
    return load_settings(env={**env, **{f"CLINRAG_{k.upper()}": v for k, v in extra.items()}})


def _client(url: str) -> Any:
    import chromadb

    host, port = url.removeprefix("http://").split(":")
    return chromadb.HttpClient(host=host, port=int(port))


def _server_count(url: str, collection: str, client: Any = None) -> int:
    """What the server itself holds, asked without clinrag."""
    client = client or _client(url)
    try:
        return int(client.get_collection(collection).count())
    except Exception:  # not created yet
        return 0


def _top5(settings: Settings) -> dict[str, list[str]]:
    retriever = Retriever(settings)
    return {q: [h.chunk.chunk_id for h in retriever.retrieve(q, k=5)] for q in QUESTIONS}


def test_library_lifecycle_through_a_chroma_server(
    chroma_server: str, _home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    for name in DOCS:
        shutil.copy2(SAMPLES / name, folder / name)
    settings = _server_settings(_home, chroma_server, "lifecycle")

    first = library.add(settings, ADMIN, [folder], source="cli", progress=False)
    assert first.count("added") == 3 and not first.failed
    index = Index(settings)
    index.warm_up()
    ids = index.manifest.chunk_ids()
    assert index.store.ids() == ids
    assert _server_count(chroma_server, "lifecycle") == len(ids)
    # the server holds the vectors: no embedded store was opened in the home
    assert not settings.store_dir.exists()

    before = _top5(settings)
    for question, doc_id in QUESTIONS.items():
        assert before[question][0].startswith(doc_id + ":"), (question, before[question])

    library.remove(settings, ADMIN, "statins-primary-prevention", index=index)
    left = index.manifest.chunk_ids()
    assert index.store.ids() == left and not any(i.startswith("statins") for i in left)
    assert _server_count(chroma_server, "lifecycle") == len(left) < len(ids)

    again = library.add(settings, ADMIN, [folder], source="cli", progress=False, index=index)
    assert again.count("added") == 1 and again.count("unchanged") == 2
    assert index.store.ids() == index.manifest.chunk_ids() == ids  # stable chunk ids

    # every vector lost on the server: rebuilt from the manifest, same answers to queries
    index.store.delete_ids(sorted(index.store.ids()))
    assert _server_count(chroma_server, "lifecycle") == 0
    summary = rebuild_index(settings, ADMIN)
    assert summary["vectors"] == summary["chunks"] == len(ids)
    assert index.store.ids() == ids
    assert _top5(settings) == before
    index.close()


@pytest.mark.slow
def test_kill_9_mid_ingest_recovers_on_the_server(
    chroma_server: str, _home: Path, tmp_path: Path
) -> None:
    """The worst moment: the vectors are on the server, the manifest still says pending. A
    proxy holds the answer to the ingest's upsert, and the ingest is killed while it waits."""
    folder = tmp_path / "many"
    folder.mkdir()
    for d in range(N_KILL_DOCS):
        (folder / f"doc{d:02d}.md").write_text(
            f"# Document {d}\n\nAdults aged {40 + d % 30} should be offered test {d}. "
            f"Repeat it every {1 + d % 5} years if the first is normal.\n"
        )
    settings = _server_settings(_home, chroma_server, "killed")
    env = {**os.environ, "CLINRAG_HOME": str(_home), "CLINRAG_COLLECTION": "killed"}
    cmd = [sys.executable, "-m", "ui.cli.main", "ingest", str(folder)]
    upserted, killed = threading.Event(), threading.Event()

    def hold_upserts(path: str) -> None:
        if path.endswith("/upsert"):
            upserted.set()
            killed.wait(timeout=120)  # the ingest is killed meanwhile

    with proxy(chroma_server, after=hold_upserts) as slow:
        proc = subprocess.Popen(
            cmd,
            env={**env, "CLINRAG_CHROMA_URL": slow},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert upserted.wait(timeout=240), "the ingest never wrote its vectors"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            killed.set()
        index = Index(settings)
        index.warm_up()
        # orphans on the server, every document pending: what a crash there leaves
        assert index.store.count() == N_KILL_DOCS and not index.manifest.documents()
        assert len(index.manifest.documents(state=None)) == N_KILL_DOCS
        index.close()

    final = subprocess.run(
        cmd, env={**env, "CLINRAG_CHROMA_URL": chroma_server}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    index = Index(settings)
    index.warm_up()
    docs = index.manifest.documents(state=None)
    assert len(docs) == N_KILL_DOCS and all(d["state"] == "complete" for d in docs)
    chunk_ids = index.manifest.chunk_ids()
    assert index.store.ids() == chunk_ids  # no orphan, no missing vector, no duplicate
    assert _server_count(chroma_server, "killed") == len(chunk_ids) == N_KILL_DOCS
    index.close()


# --------------------------------------------------------------------------- protection


@contextmanager
def proxy(
    upstream: str, token: str | None = None, after: Callable[[str], None] | None = None
) -> Iterator[str]:
    """What the hospital's proxy does in front of the Chroma server (nginx or the like, with
    TLS there): refuse a request without the bearer ``token``, forward the rest. ``after(path)``
    runs once a request has been forwarded, before its answer goes back."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def forward(self) -> None:
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            request = urllib.request.Request(
                upstream + self.path, data=data, method=self.command, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            if after is not None:
                after(self.path)
            with contextlib.suppress(OSError):  # the client may be gone (killed)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = forward  # noqa: N815 (http.server's naming)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthenticationServerProvider"
EMBEDDER = EmbedderInfo(name="test", model="test", weights_hash="0" * 64, dim=4)


def test_chroma_token_reaches_the_proxy_and_a_wrong_one_is_refused_in_words(
    chroma_server: str, _home: Path
) -> None:
    with proxy(chroma_server, "right-token") as guarded:
        for token in (None, "wrong-token"):
            extra = {"chroma_token": token} if token else {}
            store = ChromaStore(_server_settings(_home, guarded, "guarded", **extra))
            with pytest.raises(VectorStoreUnavailableError, match="refused clinrag") as info:
                store.warm_up(EMBEDDER)
            message = str(info.value)
            assert "HTTP 401" in message and "Set chroma_token" in message
            assert "wrong-token" not in message  # a token is never echoed
        store = ChromaStore(_server_settings(_home, guarded, "guarded", chroma_token="right-token"))
        store.warm_up(EMBEDDER)
        chunk = Chunk("d:1", "d", "text", "T", "S", None, 0, 4, "sha", "d.md", "now")
        store.upsert([chunk], np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32))
        assert store.query(np.array([1.0, 0.0, 0.0, 0.0]), k=1)[0][0] == "d:1"
        store.close()
    assert _server_count(chroma_server, "guarded") == 1  # it went through to the server


def test_an_unreachable_server_is_named(_home: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens once closed
    store = ChromaStore(_server_settings(_home, f"http://127.0.0.1:{port}", "none"))
    with pytest.raises(VectorStoreUnavailableError, match="cannot be reached.*chroma run"):
        store.warm_up(EMBEDDER)


def test_the_server_checks_no_token_itself_and_listens_on_loopback_only(tmp_path: Path) -> None:
    """Why the proxy: with Chroma's documented token settings the 1.x server still answers a
    request without any token. And the documented bind: loopback, nothing else."""
    url, process = start_chroma_server(
        tmp_path / "data",
        env={
            "CHROMA_SERVER_AUTHN_PROVIDER": TOKEN_PROVIDER,
            "CHROMA_SERVER_AUTHN_CREDENTIALS": "server-token",
        },
    )
    try:
        listing = f"{url}/api/v2/tenants/default_tenant/databases/default_database/collections"
        with urllib.request.urlopen(listing, timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == []
        port = int(url.rsplit(":", 1)[1])
        # another address of this machine (the loopback net's 127.0.0.2 at least) is refused
        for address in {"127.0.0.2", _outward_address()} - {None}:
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=3):
                pass
    finally:
        process.terminate()
        process.wait(timeout=10)


def _outward_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


# --------------------------------------------------------------------------- one writer


# Holds the library's writer lock until its stdin closes (or it is killed).
HOLD_LOCK_CHILD = r"""
import os, sys
from core.config import load_settings
from core.library.index import writer_lock

env = {"CLINRAG_HOME": sys.argv[1], "CLINRAG_DATABASE_URL": sys.argv[2]}
with writer_lock(load_settings(env=env)):
    print("locked", os.getpid(), flush=True)
    sys.stdin.read()
"""


def test_one_writer_across_hosts_with_a_database(
    chroma_server: str, database_url: str, tmp_path: Path
) -> None:
    """Two app hosts share the database and the Chroma server but no disk (two homes): while
    one writes, the other is refused; when the writer is killed, the lock goes with it."""
    folder = tmp_path / "lib"
    folder.mkdir()
    shutil.copy2(SAMPLES / DOCS[1], folder / DOCS[1])
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    b = _server_settings(host_b, chroma_server, "shared", database_url=database_url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_CHILD, str(host_a), database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("locked")
        with pytest.raises(StoreLockedError, match="another clinrag process") as info:
            library.add(b, ADMIN, [folder], source="cli", progress=False)
        assert "host-a" not in str(info.value) and "password" not in str(info.value)
        assert not host_a.joinpath("store.lock").exists()  # not a file lock on either disk
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    summary = library.add(b, ADMIN, [folder], source="cli", progress=False)
    assert summary.count("added") == 1
    # host A sees what host B wrote: one manifest (the database), one store (the server)
    a = _server_settings(host_a, chroma_server, "shared", database_url=database_url)
    index = Index(a)
    index.warm_up()
    assert index.manifest.chunk_ids() == index.store.ids() and index.store.count() > 0
    index.close()
