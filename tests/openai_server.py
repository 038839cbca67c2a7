"""A loopback OpenAI-compatible chat server for tests (the protocol vLLM, TGI and Ollama speak).

``serve_chat(reply)`` answers ``POST /v1/chat/completions`` (streamed as server-sent events, or
not) with ``reply(messages, max_tokens)``, and records every request. Tests point clinrag's
``openai`` backend at it: with a real model behind ``reply`` it exercises the adapter end to
end; with fixed text it puts chosen content (hostile payloads) into an answer.

Given a :class:`ModelEngine` (the real packaged model), it also speaks the scoring contracts
attribution uses, as vLLM and TGI define them: vLLM's ``POST /tokenize`` (a text, or chat
messages rendered with the model's template) and ``POST /v1/completions`` with a token-id
prompt (or a list of them) and ``prompt_logprobs`` or ``echo`` + ``logprobs``; TGI's
``POST /chat_tokenize`` and ``POST /generate`` with ``decoder_input_details``. ``features``
switches contracts off, as a server that lacks them answers: 400 for an unknown parameter,
404 for an unknown path.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[list[dict[str, str]], int], str]
ALL_FEATURES = frozenset({"tokenize", "prompt_logprobs", "echo", "tgi"})


# Prefix-cache entries the cluster benchmark and test give the server (each holds the KV of one
# scored prompt: about 46 kB a token for the packaged model, so ~50 MB for a 1,100-token prompt)
PREFIX_CACHE_ENTRIES = 8
MIN_SHARED = 16  # a shorter common prefix is not worth copying a cache for


@dataclass
class _Scored:
    """A scored prompt kept for reuse: its ids, its KV cache and its per-position results."""

    ids: list[int]
    top: int
    cache: Any
    values: list[float | None]
    tops: list[dict[int, float]]


class ModelEngine:
    """Teacher-forced log-probabilities from a loaded TransformersLLM, one prompt at a time.

    With ``prefix_cache=0`` (the default) each prompt is computed on its own, in one forward
    pass with no shared cache and no padding: independently of the in-process path, which is
    what tests/test_openai_logprobs.py's agreement check needs.

    With ``prefix_cache=N`` the last N scored prompts are kept (LRU, an entry used as a prefix
    counts as used) and a prompt reuses the KV cache of the one it shares the longest token
    prefix with: only the tokens after that prefix are run. An attribution's ablated prompts
    equal the full one up to their first removed sentence, so most of each is shared. This is a
    *speed-up of the CPU stand-in*, not vLLM's behaviour: vLLM's automatic prefix caching is not
    read for a request that asks for prompt_logprobs (or echo + logprobs); it recomputes the
    whole prompt (its docs, "Prompt Logprobs with Prefix Caching"). Results equal the
    uncached ones to float32 rounding (tests/test_openai_logprobs.py checks within 1e-4).
    """

    def __init__(self, llm: Any, prefix_cache: int = 0) -> None:
        llm.warm_up()
        self.llm = llm
        self.tokenizer = llm._tokenizer
        self.lock = threading.Lock()  # one forward pass at a time on 2 cores
        self.prefix_cache = prefix_cache
        self._scored: list[_Scored] = []  # least recently used first
        # prompts scored, their tokens, and the tokens taken from the prefix cache
        self.stats: Counter[str] = Counter()
        self.scoring_s = 0.0  # time spent scoring (lock held): with the tokens run, the cost

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.llm._prompt_ids(messages))

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def piece(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def score(self, ids: list[int], top: int) -> tuple[list[float | None], list[dict[int, float]]]:
        """log p(ids[i] | ids[:i]) for each i (None for the first), and each position's top
        ``top`` alternatives; plus the greedy next token at the end under key -1."""
        import torch

        with self.lock, torch.inference_mode(), self._timed():
            self.stats["prompts"] += 1
            self.stats["tokens"] += len(ids)
            if not self.prefix_cache:
                logits = self._forward(ids, 0, None).logits[0]
                values, tops = _read(logits, ids, top)
                return [None, *values], [{}, *tops]
            found, shared = self._longest_prefix(ids, top)
            cache = None
            if found is not None:
                cache = copy.deepcopy(found.cache)
                surplus = cache.get_seq_length() - shared
                if surplus > 0:
                    cache.crop(-surplus)  # this transformers takes the tokens to drop, negated
                self.stats["cached_tokens"] += shared
                self.stats["hits"] += 1
            out = self._forward(ids[shared:], shared, cache)
            values, tops = _read(out.logits[0], ids[shared:], top)
            merged: list[float | None] = [None, *values]
            tops = [{}, *tops]
            if found is not None:
                # positions 1..shared predict tokens both prompts have, from the same prefix
                merged = [None, *found.values[1 : shared + 1], *values]
                tops = [{}, *found.tops[1 : shared + 1], *tops[1:]]
            entry = _Scored(list(ids), top, out.cache, merged, tops)
            self._remember(entry)
            return entry.values, entry.tops

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.scoring_s += time.perf_counter() - start

    def _forward(self, ids: list[int], start: int, cache: Any) -> Any:
        import torch

        model = self.llm._model
        tensor = torch.tensor([ids], device=model.device)
        if cache is None and not self.prefix_cache:
            return model(input_ids=tensor)
        positions = torch.arange(start, start + len(ids), device=model.device)[None, :]
        return model(input_ids=tensor, position_ids=positions, cache=cache, use_cache=True)

    def _longest_prefix(self, ids: list[int], top: int) -> tuple[_Scored | None, int]:
        """The kept prompt sharing the longest prefix with ``ids``, and how many of its tokens
        to reuse: one less than the common prefix, so that the position predicting the first
        differing token is run (its distribution is shared, the token read from it is not),
        and never all of ``ids`` (the last position's logits are always computed)."""
        best, best_len = None, 0
        for entry in self._scored:
            if entry.top != top:
                continue
            n = 0
            for a, b in zip(entry.ids, ids, strict=False):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = entry, n
        shared = min(best_len - 1, len(ids) - 1)
        if best is None or shared < MIN_SHARED:
            return None, 0
        self._scored.remove(best)  # used: now the most recent
        self._scored.append(best)
        return best, shared

    def _remember(self, entry: _Scored) -> None:
        self._scored = [e for e in self._scored if e.ids != entry.ids]
        self._scored.append(entry)
        del self._scored[: -self.prefix_cache]


def _read(logits: Any, ids: list[int], top: int) -> tuple[list[float], list[dict[int, float]]]:
    """From logits over ``ids`` (row i predicts ids[i+1]): each next token's log-probability,
    each position's ``top`` alternatives, then the greedy next token at the end (key -1)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    target = torch.tensor(ids[1:], dtype=torch.long)
    chosen = logp[:-1].gather(1, target.unsqueeze(1)).squeeze(1).tolist()
    tops: list[dict[int, float]] = []
    if top > 0:
        values, indices = logp[:-1].topk(top, dim=-1)
        for v_row, i_row in zip(values.tolist(), indices.tolist(), strict=True):
            tops.append(dict(zip(i_row, v_row, strict=True)))
    else:
        tops.extend({} for _ in chosen)
    tops.append({-1: float(logp[-1].max()), int(logp[-1].argmax()): float(logp[-1].max())})
    return chosen, tops


@dataclass
class ChatServer:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunks(text: str, size: int = 12) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


@contextmanager
def serve_chat(
    reply: Reply,
    model: str = "test-model",
    *,
    engine: ModelEngine | None = None,
    features: frozenset[str] = ALL_FEATURES,
) -> Iterator[ChatServer]:
    state = ChatServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def send_json(self, payload: Any, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            state.requests.append({"path": self.path, "body": body})
            scoring = {
                "/tokenize": ("tokenize", self.tokenize),
                "/v1/completions": ("", self.completions),
                "/chat_tokenize": ("tgi", self.chat_tokenize),
                "/generate": ("tgi", self.generate),
            }.get(self.path)
            if scoring is not None and engine is not None:
                feature, handle = scoring
                if feature and feature not in features:
                    self.send_error(404)
                    return
                handle(engine, body)
                return
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

        def client_gone(self) -> bool:
            # the client sends nothing more while it waits for this reply: a readable socket
            # means it has closed the connection
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def tokenize(self, engine: ModelEngine, body: dict[str, Any]) -> None:
            if "messages" in body:
                ids = engine.chat_ids(body["messages"])
            else:
                ids = engine.encode(body["prompt"], bool(body.get("add_special_tokens", True)))
            self.send_json({"tokens": ids, "count": len(ids), "max_model_len": 8192})

        def completions(self, engine: ModelEngine, body: dict[str, Any]) -> None:
            prompt = body["prompt"]
            prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
            wants_prompt = body.get("prompt_logprobs") is not None
            wants_echo = bool(body.get("echo"))
            for name, wanted in (("prompt_logprobs", wants_prompt), ("echo", wants_echo)):
                if wanted and name not in features:
                    self.send_json({"error": {"message": f"Unrecognized argument: {name}"}}, 400)
                    return
            if int(body.get("max_tokens", 16)) > 1 or any(isinstance(p, str) for p in prompts):
                self.send_json({"error": {"message": "test server: token ids, max_tokens 1"}}, 400)
                return
            top = int(body.get("prompt_logprobs") or body.get("logprobs") or 0)
            choices = []
            for index, ids in enumerate(prompts):
                if index and self.client_gone():
                    # as vLLM aborts a request whose client disconnected (a timed-out scorer):
                    # the rest of it would only hold up the requests still waiting
                    engine.stats["aborted_prompts"] += len(prompts) - index
                    return
                values, tops = engine.score(list(ids), top)
                nxt = next(t for t in tops[-1] if t != -1)
                choice: dict[str, Any] = {
                    "index": index,
                    "text": engine.piece(nxt),
                    "finish_reason": "length",
                    "logprobs": None,
                }
                if wants_prompt:
                    entries: list[Any] = [None]
                    for i in range(1, len(ids)):
                        entry = {
                            str(t): {"logprob": v, "rank": r + 1, "decoded_token": engine.piece(t)}
                            for r, (t, v) in enumerate(tops[i].items())
                        }
                        # vLLM always includes the prompt token itself, with its rank
                        entry.setdefault(
                            str(ids[i]),
                            {
                                "logprob": values[i],
                                "rank": 0,
                                "decoded_token": engine.piece(ids[i]),
                            },
                        )
                        entries.append(entry)
                    choice["prompt_logprobs"] = entries
                if wants_echo:
                    pieces = [engine.piece(t) for t in [*ids, nxt]]
                    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
                    choice["logprobs"] = {
                        "tokens": pieces,
                        "token_logprobs": [*values, tops[-1][-1]],
                        "top_logprobs": [None] + [{} for _ in range(len(ids))],
                        "text_offset": offsets,
                    }
                choices.append(choice)
            usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": 1}
            self.send_json(
                {
                    "id": "cmpl-test",
                    "object": "text_completion",
                    "created": 0,
                    "model": body.get("model", model),
                    "choices": choices,
                    "usage": usage,
                }
            )

        def chat_tokenize(self, engine: ModelEngine, body: dict[str, Any]) -> None:
            ids = engine.chat_ids(body["messages"])
            tokens = [{"id": t, "text": engine.piece(t)} for t in ids]
            # TGI renders the template as text; the model's tokenizer reads it back to the ids
            text = engine.tokenizer.apply_chat_template(
                body["messages"], add_generation_prompt=True, tokenize=False
            )
            self.send_json({"tokenize_response": tokens, "templated_text": text})

        def generate(self, engine: ModelEngine, body: dict[str, Any]) -> None:
            params = body.get("parameters") or {}
            ids = engine.encode(body["inputs"], True)
            values, tops = engine.score(ids, 0)
            nxt = next(t for t in tops[-1] if t != -1)
            details: dict[str, Any] = {"finish_reason": "length", "generated_tokens": 1}
            if params.get("decoder_input_details"):
                details["prefill"] = [
                    {"id": t, "text": engine.piece(t), "logprob": v}
                    for t, v in zip(ids, values, strict=True)
                ]
            self.send_json({"generated_text": engine.piece(nxt), "details": details})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
