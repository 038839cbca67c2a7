"""A local clinrag service: one warm assistant in a long-running process, for the CLI.

A `clinrag ask` process spends most of its life starting up (imports, then loading the
language model, the embedder and the index) for a question that takes seconds to answer.
`clinrag serve` does that once and keeps the assistant warm; `clinrag ask` hands its question
to it when it runs, and answers in its own process when it does not.

Safety, since the service answers as whoever asks and writes the audit log:

- It listens on the loopback interface only (127.0.0.1, an ephemeral port by default) and
  refuses any other peer address.
- Before sending anything, the client has the service prove it holds the token (an HMAC of
  a fresh nonce), so a process that took the port of a service that died without removing
  its file learns neither the question nor the token.
- Every request carries a token from the service file ``CLINRAG_HOME/serve.json``, created
  owner-only (0600) in the owner-only home, so only the account that owns the home (the one
  whose processes could write its audit log directly anyway) can use the service. Clients
  refuse a service file another account owns or others can read. Tokens are compared in
  constant time; a wrong one gets 401 and nothing runs.
- The client sends a fingerprint of its settings; a service running with other settings (a
  different config file, model or library) answers 409 and the client answers in-process,
  so an answer never depends on whether a service happened to be running.

One request runs at a time (one assistant, as in one CLI process); others wait, and are told
so. Handlers are supplied by the front end (``ui.cli.serve``): this module only transports a
request and streams back what the handler writes (stdout and stderr text) and its exit code.
Standard library only here, so a client stays cheap to start.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ClinragError

SERVICE_FILE = "serve.json"
HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
# Settings that say who asks, not how the answer is made: the client's own are sent with
# each request, so one service serves every asker.
_PER_REQUEST = frozenset({"user", "role"})

# A handler gets the request's fields and ``emit(stream, text)`` (stream "stdout" or
# "stderr") and returns the exit code the command would have had in-process.
Emit = Callable[[str, str], None]
Handler = Callable[[Mapping[str, Any], Emit], int]


class ServiceUnavailable(ClinragError):
    """No usable service (none running, a stale file, other settings, a refused token): the
    caller answers in-process. Nothing was run."""


class NoService(ServiceUnavailable):
    """No service file: none is running for this home (the usual case, nothing to say)."""


class ServiceLost(ClinragError):
    """The service stopped in the middle of a request: it may have answered and recorded
    it, so the caller must not simply run the request again."""


class ServiceRunningError(ClinragError):
    """A service already serves this home."""


@dataclass(frozen=True)
class ServiceInfo:
    host: str
    port: int
    pid: int
    token: str
    fingerprint: str


def settings_fingerprint(settings: Settings) -> str:
    """A hash of every setting except who asks: equal fingerprints give equal answers."""
    values = settings.model_dump(mode="json", exclude=set(_PER_REQUEST))
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def service_path(settings: Settings) -> Path:
    return Path(settings.home) / SERVICE_FILE


def read_service(settings: Settings) -> ServiceInfo:
    """The running service's address and token, from a service file this account owns and
    nobody else can read; :class:`ServiceUnavailable` when there is no such file."""
    path = service_path(settings)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise NoService("no clinrag service is running for this home") from exc
    except OSError as exc:
        raise ServiceUnavailable(f"the service file {path} cannot be read: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o077):
            raise ServiceUnavailable(
                f"ignoring {path}: it must belong to this account and be readable by it only"
            )
        try:
            data = json.loads(fh.read(MAX_REQUEST_BYTES))
            return ServiceInfo(
                host=str(data["host"]),
                port=int(data["port"]),
                pid=int(data["pid"]),
                token=str(data["token"]),
                fingerprint=str(data["fingerprint"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceUnavailable(f"the service file {path} is not valid: {exc}") from exc


# ------------------------------------------------------------------ the client


def call(
    settings: Settings,
    name: str,
    request: Mapping[str, Any],
    emit: Emit,
    *,
    info: ServiceInfo | None = None,
) -> int:
    """Run handler ``name`` in the service with ``request``; stream its output to ``emit``
    and return its exit code.

    Raises :class:`ServiceUnavailable` when nothing ran (answer in-process instead), and
    :class:`ServiceLost` when the service went away mid-request.
    """
    info = info or read_service(settings)
    if info.host != HOST:
        raise ServiceUnavailable(f"the service file names {info.host}, not the loopback")
    _check_proof(info)
    body = json.dumps(dict(request)).encode("utf-8")
    conn = http.client.HTTPConnection(info.host, info.port, timeout=CONNECT_TIMEOUT_S)
    try:
        try:
            conn.request(
                "POST",
                f"/{name}",
                body=body,
                headers={
                    "Authorization": f"Bearer {info.token}",
                    "X-Clinrag-Settings": settings_fingerprint(settings),
                    "Content-Type": "application/json",
                },
            )
            sock = conn.sock
            response = conn.getresponse()
        except OSError as exc:
            raise ServiceUnavailable(
                f"no clinrag service answers on {info.host}:{info.port} (a stale service file?)"
                f": {exc}"
            ) from exc
        if response.status != 200:
            why = response.read(2000).decode("utf-8", "replace").strip()
            raise ServiceUnavailable(f"the clinrag service refused: {response.status} {why}")
        if sock is not None:
            sock.settimeout(None)  # an answer, and its attribution, take as long as they take
        try:
            for line in response:
                event = json.loads(line)
                if "exit" in event:
                    return int(event["exit"])
                emit(str(event.get("stream", "stderr")), str(event.get("text", "")))
        except (OSError, ValueError) as exc:
            raise ServiceLost(f"the clinrag service connection failed mid-answer: {exc}") from exc
        raise ServiceLost(
            "the clinrag service stopped before finishing; the answer may be recorded: see "
            "clinrag audit list"
        )
    finally:
        conn.close()


def proof(token: str, nonce: str) -> str:
    """What the service answers to a client's nonce: shows it holds the token without
    sending it (an HMAC, never the token, so the answer cannot be replayed as a token)."""
    return hmac.new(token.encode(), f"clinrag-serve-proof:{nonce}".encode(), "sha256").hexdigest()


def _check_proof(info: ServiceInfo) -> None:
    """Make sure the process on the service file's port is the service before sending it a
    question or the token: after a service dies without removing its file, any local
    account could listen on that port and collect what clients send."""
    nonce = secrets.token_hex(16)
    conn = http.client.HTTPConnection(info.host, info.port, timeout=CONNECT_TIMEOUT_S)
    try:
        conn.request("GET", "/proof", headers={"X-Clinrag-Nonce": nonce})
        response = conn.getresponse()
        answer = response.read(200).decode("ascii", "replace").strip()
    except OSError as exc:
        raise ServiceUnavailable(
            f"no clinrag service answers on {info.host}:{info.port} (a stale service file?): {exc}"
        ) from exc
    finally:
        conn.close()
    if response.status != 200 or not hmac.compare_digest(answer, proof(info.token, nonce)):
        raise ServiceUnavailable(
            f"the process on {info.host}:{info.port} cannot prove it is this home's service "
            "(a stale service file?); nothing was sent to it"
        )


# ------------------------------------------------------------------ the service


class LocalService:
    """The HTTP service on the loopback: authenticates, serialises and streams requests to
    ``handlers``; owns the service file while it runs."""

    def __init__(self, settings: Settings, handlers: Mapping[str, Handler], port: int = 0) -> None:
        self.settings = settings
        self.handlers = dict(handlers)
        self.token = secrets.token_urlsafe(32)
        self.fingerprint = settings_fingerprint(settings)
        self.lock = threading.Lock()  # one assistant: one request at a time
        self._requested_port = port
        self._server: _Server | None = None
        self._running = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the service is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind the loopback port and publish the service file (refused while another
        service serves this home)."""
        self._refuse_if_running()
        self._server = _Server((HOST, self._requested_port), _RequestHandler)
        self._server.service = self
        host, port = self.address
        self._publish(
            {
                "host": host,
                "port": port,
                "pid": os.getpid(),
                "token": self.token,
                "fingerprint": self.fingerprint,
            }
        )

    def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("the service is not started")
        self._running.set()
        try:
            self._server.serve_forever(poll_interval=0.5)
        finally:
            self._running.clear()

    def close(self) -> None:
        """Stop serving and remove the service file if it is still this service's."""
        if self._server is not None:
            if self._running.is_set():  # shutdown() waits for serve_forever: only if it runs
                self._server.shutdown()
            self._server.server_close()
        path = service_path(self.settings)
        try:
            if read_service(self.settings).token == self.token:
                path.unlink()
        except (ServiceUnavailable, OSError):
            pass

    def _refuse_if_running(self) -> None:
        try:
            info = read_service(self.settings)
        except ServiceUnavailable:
            return
        conn = http.client.HTTPConnection(info.host, info.port, timeout=2.0)
        try:
            conn.request("GET", "/health", headers={"Authorization": f"Bearer {info.token}"})
            alive = conn.getresponse().status == 200
        except OSError:
            alive = False
        finally:
            conn.close()
        if alive:
            raise ServiceRunningError(
                f"a clinrag service already serves {self.settings.home} (pid {info.pid}, "
                f"{info.host}:{info.port}); stop it first"
            )

    def _publish(self, data: dict[str, Any]) -> None:
        """Write the service file owner-only, whole or not at all."""
        path = service_path(self.settings)
        tmp = path.with_name(f".{SERVICE_FILE}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: LocalService


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # the answer streams until the connection closes
    timeout = 30  # for reading a request: a client that sends nothing is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return None  # questions are not logged outside the audit log

    def _reply(self, status: int, why: str) -> None:
        body = why.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _checked(self) -> bool:
        service = self.server.service
        if self.client_address[0] != HOST:
            self._reply(403, "loopback clients only")
            return False
        if not service.authorized(self.headers.get("Authorization")):
            self._reply(401, "wrong or missing token")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - the base's name
        if self.path == "/proof":  # before the token is sent: see _check_proof
            nonce = self.headers.get("X-Clinrag-Nonce") or ""
            if self.client_address[0] != HOST or not 16 <= len(nonce) <= 128:
                self._reply(400, "a nonce of 16 to 128 characters, from the loopback")
                return
            self._reply(200, proof(self.server.service.token, nonce))
            return
        if not self._checked():
            return
        if self.path != "/health":
            self._reply(404, "unknown path")
            return
        body = json.dumps({"pid": os.getpid(), "fingerprint": self.server.service.fingerprint})
        self._reply(200, body)

    def do_POST(self) -> None:  # noqa: N802 - the base's name
        if not self._checked():
            return
        service = self.server.service
        handler = service.handlers.get(self.path.strip("/"))
        if handler is None:
            self._reply(404, "unknown request")
            return
        if self.headers.get("X-Clinrag-Settings") != service.fingerprint:
            self._reply(409, "the service runs with other settings")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST_BYTES:
            self._reply(413, f"a request is 1 to {MAX_REQUEST_BYTES} bytes")
            return
        try:
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._reply(400, f"not a JSON object: {exc}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        gone = threading.Event()

        def send(event: dict[str, Any]) -> None:
            if gone.is_set():
                return
            try:
                self.wfile.write((json.dumps(event) + "\n").encode("utf-8"))
                self.wfile.flush()
            except OSError:
                # the client went away (Ctrl-C): the request still finishes and is recorded,
                # as it would have been had the client waited
                gone.set()

        def emit(stream: str, text: str) -> None:
            if text:
                send({"stream": stream, "text": text})

        if not service.lock.acquire(blocking=False):
            emit("stderr", "Waiting: the clinrag service is answering another question...\n")
            service.lock.acquire()
        try:
            code = handler(request, emit)
        except Exception as exc:  # the service keeps serving; the client learns why
            emit("stderr", f"clinrag: {type(exc).__name__}: {exc}\n")
            code = 1
        finally:
            service.lock.release()
        send({"exit": code})
