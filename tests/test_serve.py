"""`clinrag serve` and `clinrag ask` through it (issue 17, item 5).

The service runs on the loopback with a token from an owner-only file; `clinrag ask` uses
it when it runs and answers in-process otherwise. An answer through the service is recorded
exactly as one answered in-process (same path, same actor), and prints the same.

Real library, embedder and audit log, a real loopback HTTP service (in a thread of this
process); the LLM is the extractive stand-in from ``test_ui_fakes``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from audit.record import open_log
from core.config import Settings, load_settings
from services import ask as asking
from services import serve
from tests.test_ui_fakes import attributing_assistant
from ui.cli.main import main
from ui.cli.serve import ask_handler, routed_output

QUESTION = "What blood pressure defines stage 1 hypertension?"
FAITH = {"k": 1, "top_k_drop": 1.2, "random_drop": 0.1, "flag_memory": False}


@pytest.fixture
def home(accounts_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(accounts_library, copy)
    monkeypatch.setenv("CLINRAG_HOME", str(copy))
    monkeypatch.setattr(asking, "open_assistant", lambda s: attributing_assistant(s, FAITH))
    return copy


def _settings() -> Settings:
    return load_settings(None, overrides={"home": None})  # as `clinrag` loads them


def _records(event: str) -> list[Any]:
    with open_log(_settings()) as log:
        return log.list(event=event)


@contextmanager
def running_service(calls: list[str]) -> Iterator[serve.LocalService]:
    settings = _settings()
    assistant = attributing_assistant(settings, FAITH)
    assistant.warm_up()
    handler = ask_handler(settings, assistant)

    def counted(request: Any, emit: serve.Emit) -> int:
        calls.append(str(request["question"]))
        return handler(request, emit)

    service = serve.LocalService(settings, {"ask": counted})
    service.start()
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        with routed_output():
            yield service
    finally:
        service.close()
        thread.join(10)


def _without_record_line(text: str) -> str:
    return "\n".join(x for x in text.splitlines() if not x.startswith("audit record:"))


def test_ask_through_the_service_prints_and_records_what_in_process_does(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    with running_service(calls) as service:
        assert service.address[0] == "127.0.0.1"
        path = serve.service_path(_settings())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        capsys.readouterr()
        assert main(["ask", QUESTION, "--user", "bob"]) == 0
        served = capsys.readouterr()
        assert calls == [QUESTION]  # it went through the service
        assert main(["ask", QUESTION, "--user", "bob", "--no-service"]) == 0
        local = capsys.readouterr()
        assert calls == [QUESTION]
    assert not path.exists()  # the service removes its file when it stops
    assert "not using the service" not in served.err
    assert "ANSWER (" in served.out and "ATTRIBUTION" in served.out
    assert _without_record_line(served.out) == _without_record_line(local.out)

    via, here = _records("answer")[-2:]
    assert (via.user, via.role) == (here.user, here.role) == ("bob", "clinician")
    volatile = {"timings"}
    assert {k: v for k, v in via.payload.items() if k not in volatile} == {
        k: v for k, v in here.payload.items() if k not in volatile
    }
    assert via.payload["os_uid"] == os.getuid()
    attributions = {r.payload["answer_id"]: r for r in _records("attribution")}
    a, b = attributions[via.seq], attributions[here.seq]
    assert (a.user, a.role) == (b.user, b.role)
    assert a.payload["attribution"] == b.payload["attribution"]


def test_ask_answers_in_process_without_a_usable_service(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", QUESTION, "--no-attribution"]) == 0
    out, err = capsys.readouterr()
    assert "ANSWER (" in out and "service" not in err  # none running: nothing to say
    # a stale file (nothing listens on its port) is passed over, with a note
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = serve.service_path(_settings())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            {"host": "127.0.0.1", "port": port, "pid": 1, "token": "t", "fingerprint": "f"}, fh
        )
    assert main(["ask", QUESTION, "--no-attribution"]) == 0
    out, err = capsys.readouterr()
    assert "ANSWER (" in out and "not using the service" in err
    assert len(_records("answer")) == 2
    # another account's process on that port (the service died, its file stayed) is sent
    # neither the question nor the token: it cannot prove it holds the token
    seen: list[tuple[str, str, str]] = []

    class Impostor(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            seen.append((self.command, str(self.headers.get("Authorization")), body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"0" * 64)

        do_GET = do_POST = _any

    impostor = HTTPServer(("127.0.0.1", port), Impostor)
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    try:
        assert main(["ask", QUESTION, "--no-attribution"]) == 0
    finally:
        impostor.shutdown()
        impostor.server_close()
    out, err = capsys.readouterr()
    assert "ANSWER (" in out and "cannot prove" in err
    assert seen and all(m == "GET" and a == "None" and not b for m, a, b in seen)
    assert len(_records("answer")) == 3


def test_the_service_refuses_a_wrong_token_other_settings_and_a_readable_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    with running_service(calls) as service:
        host, port = service.address
        before = len(_records("answer"))
        body = json.dumps({"question": QUESTION}).encode()
        for token in ("wrong", service.token[:-1], ""):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request(
                "POST",
                "/ask",
                body=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Clinrag-Settings": service.fingerprint,
                },
            )
            assert conn.getresponse().status == 401
            conn.close()
        assert calls == [] and len(_records("answer")) == before
        # other settings: the client answers in-process instead
        other = _settings().model_copy(update={"top_k": 3})
        with pytest.raises(serve.ServiceUnavailable, match="409"):
            serve.call(other, "ask", {"question": QUESTION}, lambda s, t: None)
        # a service file others may read is not trusted
        path = serve.service_path(_settings())
        path.chmod(0o644)
        capsys.readouterr()
        assert main(["ask", QUESTION, "--no-attribution"]) == 0
        assert "not using the service" in capsys.readouterr().err
        assert calls == []
        path.chmod(0o600)


def test_the_cli_starts_without_heavy_imports() -> None:
    """What `clinrag ask` loads before it knows whether a service will answer: no model
    library (they load with the assistant, in-process or in the service)."""
    import subprocess
    import sys

    code = (
        "import sys; from ui.cli.main import _parser; from ui.cli import serve; _parser(); "
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'chromadb', 'numpy', "
        "'streamlit', 'onnxruntime', 'bm25s'}; print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize(("command", "quick"), [("ask", True), ("sources", False)])
def test_the_console_entry_leaves_quickly_after_ask_with_output_and_clean_up(
    command: str, quick: bool, tmp_path: Path
) -> None:
    """After `ask` the process skips the interpreter's teardown (seconds once torch is
    loaded), but what it printed is flushed, Python's exit handlers run, and the exit code is
    the command's; other commands end the usual way (their teardown is not skipped)."""
    import subprocess
    import sys

    handler = f"cmd_{command}"
    argv = ["clinrag", command, *(["a question"] if command == "ask" else [])]
    code = (
        "import atexit, sys; import ui.cli.main as cli\n"
        "def fake(args, settings):\n"
        "    print('answer printed', end=''); return 3\n"
        f"cli.{handler} = fake\n"
        "atexit.register(lambda: print(' / exit handler ran', end=''))\n"
        "class Finalized:\n"
        "    def __del__(self): print(' / teardown ran', end='')\n"
        "keep = Finalized()\n"
        f"sys.argv = {argv!r}\n"
        "cli.run()\n"
    )
    env = {**os.environ, "CLINRAG_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 3, done.stderr
    teardown = "" if quick else " / teardown ran"
    assert done.stdout == f"answer printed / exit handler ran{teardown}", done.stdout
