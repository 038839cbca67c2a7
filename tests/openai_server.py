"""A loopback OpenAI-compatible chat server for tests (the protocol vLLM, TGI and Ollama speak).

``serve_chat(reply)`` answers ``POST /v1/chat/completions`` (streamed as server-sent events, or
not) with ``reply(messages, max_tokens)``, and records every request. Tests point clinrag's
``openai`` backend at it: with a real model behind ``reply`` it exercises the adapter end to
end; with fixed text it puts chosen content (hostile payloads) into an answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[list[dict[str, str]], int], str]


@dataclass
class ChatServer:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunks(text: str, size: int = 12) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


@contextmanager
def serve_chat(reply: Reply, model: str = "test-model") -> Iterator[ChatServer]:
    state = ChatServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            state.requests.append({"path": self.path, "body": body})
            if not self.path.endswith("/chat/completions"):
                self.send_error(404)
                return
            text = reply(body["messages"], int(body.get("max_tokens") or 256))
            base = {"id": "chatcmpl-test", "created": 0, "model": body.get("model", model)}
            if not body.get("stream"):
                payload = {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, piece in enumerate([*_chunks(text), None]):
                delta = {"content": piece} if piece is not None else {}
                if i == 0:
                    delta["role"] = "assistant"
                event = {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "finish_reason": None if piece is not None else "stop",
                        }
                    ],
                }
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
