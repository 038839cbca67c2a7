"""`clinrag serve`, and `clinrag ask` through it (over ``services.serve``).

The service runs the very ``cmd_ask`` a CLI process runs, on its warm assistant, with the
asker's user and role: the same ``services.ask`` path, the same actor, the same audit
records, the same output. What ``cmd_ask`` prints in the service's request thread is routed
back to the asking process's stdout and stderr.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from core.config import Settings
from core.errors import ClinragError
from services import serve

if TYPE_CHECKING:
    from assistant.pipeline import Assistant


def add_serve_parser(sub: Any) -> None:
    srv = sub.add_parser(
        "serve",
        help="keep the assistant warm for clinrag ask (loopback only, token in CLINRAG_HOME)",
    )
    srv.add_argument("--port", type=int, default=0, help="loopback port (default: any free one)")


# ------------------------------------------------------------------ the asking side


def ask_via_service(args: argparse.Namespace, settings: Settings) -> int | None:
    """Answer ``args`` through the running service; None when there is none to use (the
    caller answers in-process). Says on stderr why a service that exists was not used."""
    try:
        return serve.call(settings, "ask", ask_request(args, settings), _write)
    except serve.NoService:
        return None  # the usual case: no service, nothing to say
    except serve.ServiceUnavailable as exc:
        print(f"clinrag: not using the service ({exc}); answering here.", file=sys.stderr)
        return None


def ask_request(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """What the service needs to run ``clinrag ask`` as this process would have."""
    return {
        "question": args.question,
        "json": bool(args.json),
        "k": args.k,
        "no_attribution": bool(args.no_attribution),
        "user": args.user,
        "role": args.role,
        # who asks, when not given on the command line: this process's settings
        "settings_user": settings.user,
        "settings_role": settings.role,
    }


def _write(stream: str, text: str) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.write(text)
    out.flush()


# ------------------------------------------------------------------ the service side


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    from services import ask

    started = time.perf_counter()
    print("clinrag serve: loading the assistant...", file=sys.stderr, flush=True)
    assistant = ask.open_assistant(settings)
    assistant.warm_up()
    service = serve.LocalService(settings, {"ask": ask_handler(settings, assistant)}, args.port)
    service.start()
    host, port = service.address
    print(
        f"clinrag serve: ready in {time.perf_counter() - started:.1f} s on {host}:{port}; "
        f"clinrag ask uses it (token in {serve.service_path(settings)}). Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with routed_output():
            service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    print("clinrag serve: stopped.", file=sys.stderr)
    return 0


def ask_handler(settings: Settings, assistant: Assistant) -> serve.Handler:
    """The service's ``ask``: ``cmd_ask`` on the warm assistant, as the asker."""

    def handle(request: Mapping[str, Any], emit: serve.Emit) -> int:
        from ui.cli.main import cmd_ask

        args = argparse.Namespace(
            question=str(request["question"]),
            json=bool(request.get("json")),
            k=request.get("k"),
            no_attribution=bool(request.get("no_attribution")),
            user=request.get("user"),
            role=request.get("role"),
            no_service=True,
        )
        asker = settings.model_copy(
            update={
                "user": str(request.get("settings_user") or settings.user),
                "role": str(request.get("settings_role") or settings.role),
            }
        )
        with _route(emit):
            try:
                return cmd_ask(args, asker, assistant=assistant)
            except ClinragError as exc:  # as main() reports it
                print(f"clinrag: {exc}", file=sys.stderr)
                return exc.exit_code

    return handle


class _Routed(io.TextIOBase):
    """A stand-in for sys.stdout or sys.stderr: a request thread's writes go to its client,
    everything else to the stream it replaced."""

    def __init__(self, stream: str, original: TextIO, routes: threading.local) -> None:
        self._stream = stream
        self._original = original
        self._routes = routes

    def write(self, text: str) -> int:
        emit = getattr(self._routes, "emit", None)
        if emit is None:
            return self._original.write(text)
        emit(self._stream, text)
        return len(text)

    def flush(self) -> None:
        if getattr(self._routes, "emit", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False if getattr(self._routes, "emit", None) else self._original.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_ROUTES = threading.local()


@contextmanager
def routed_output() -> Iterator[None]:
    """Install the routing stand-ins for the service's lifetime."""
    saved = sys.stdout, sys.stderr
    sys.stdout = _Routed("stdout", saved[0], _ROUTES)
    sys.stderr = _Routed("stderr", saved[1], _ROUTES)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextmanager
def _route(emit: serve.Emit) -> Iterator[None]:
    _ROUTES.emit = emit
    try:
        yield
    finally:
        _ROUTES.emit = None
