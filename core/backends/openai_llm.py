"""OpenAI-compatible server adapter (vLLM, TGI, llama.cpp server, Ollama) by base URL.

The only module that imports openai or an HTTP client for the model. Meant for a model server
inside the hospital network.

Attribution needs teacher-forced log-probabilities: log p(answer tokens | an ablated prompt),
which the chat endpoint does not give. What the server offers is probed once per server (at
warm-up when attribution is on, remembered for the process) and the first that works is used:

- ``vllm_prompt_logprobs``: vLLM's ``/tokenize`` renders the chat prompt with the model's own
  template into token ids, and ``/v1/completions`` with ``prompt_logprobs`` scores the prompt
  ids followed by the answer's ids. Exactly the tokens the in-process backend scores.
- ``vllm_echo``: the same ids through ``/v1/completions`` with ``echo`` and ``logprobs`` (for
  servers with the legacy OpenAI scoring contract but not ``prompt_logprobs``).
- ``tgi``: TGI's ``/chat_tokenize`` renders the prompt as text, and ``/generate`` with
  ``decoder_input_details`` returns each prompt token's log-probability; tokens are assigned
  to answer sentences by their character offsets.

A server with none of these (OpenAI's own API, Ollama) answers, but cannot be attributed:
:meth:`OpenAILLM.logprobs` raises :class:`LogProbsUnsupportedError` saying so, and the
attribution failure is recorded with that reason.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.backends.base import Message
from core.errors import ConfigError, ModelServerBusyError, ModelUnavailableError
from core.types import ModelInfo

if TYPE_CHECKING:
    from core.config import Settings

# Prompts per scoring request: a batch vLLM schedules together (its prefix cache shares the
# unablated start of the prompts) without one request growing past server body limits.
SCORE_BATCH = 16
PROBE_TIMEOUT_S = 10.0
SCORE_TIMEOUT_S = 300.0
MODES = ("vllm_prompt_logprobs", "vllm_echo", "tgi")


class LogProbsUnsupportedError(ModelUnavailableError):
    """The model server answers but cannot score a given text, so answers are not attributed."""


# (base_url, model) -> the mode that works, or the reason none does; probed once per process
_PROBED: dict[tuple[str, str], str] = {}
_probe_lock = threading.Lock()


class OpenAILLM:
    # A model server queues and batches its own requests: the app lets sessions (and the
    # attribution queue) call it at once instead of one at a time (ui/session.py).
    concurrent_calls = True

    def __init__(self, settings: Settings) -> None:
        self._base_url: str | None = settings.llm_base_url
        self._model: str = settings.llm_model
        self._api_key: str = settings.llm_api_key or "not-needed"
        # with attribution off nothing will be scored: the server is not asked what it offers
        self._probe_at_start = settings.attribution != "off"
        self._client: Any = None
        self._http: Any = None

    def warm_up(self) -> None:
        if self._client is not None:
            return
        self._connect()
        if self._probe_at_start:
            # a server down now, or one without scoring, is reported by the call that needs it
            with contextlib.suppress(ModelUnavailableError):
                self.logprob_mode()

    def _connect(self) -> None:
        if self._client is not None:
            return
        if not self._base_url or not self._model:
            raise ConfigError(
                "llm = 'openai' needs llm_base_url (e.g. http://gpu-box:8000/v1) and llm_model."
            )
        import httpx
        from openai import OpenAI

        self._client = OpenAI(base_url=self._base_url, api_key=self._api_key, max_retries=1)
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {self._api_key}"}, timeout=SCORE_TIMEOUT_S
        )

    @property
    def info(self) -> ModelInfo:
        # A remote server's weights cannot be hashed from here; the id and URL are recorded.
        return ModelInfo(
            backend="openai", model_id=self._model, weights_hash=f"remote:{self._base_url}"
        )

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.warm_up()
        from openai import APIConnectionError, InternalServerError, OpenAIError

        try:
            response = self._client.chat.completions.create(
                model=self._model,
                messages=list(messages),
                max_tokens=max_new_tokens,
                temperature=temperature,
                seed=0,
                stream=True,
            )
            for event in response:
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
        except (APIConnectionError, InternalServerError) as exc:
            # APIConnectionError covers timeouts: overloaded or restarting, worth another try
            raise ModelServerBusyError(
                f"The model server at {self._base_url} did not answer ({exc}). It may be busy "
                "or restarting; try again, or check that it is running."
            ) from exc
        except OpenAIError as exc:
            raise ModelUnavailableError(
                f"The model server at {self._base_url} failed ({exc}). Check that it is running "
                "and that llm_model names a model it serves."
            ) from exc

    # ------------------------------------------------------------------ log-probabilities

    @property
    def _root(self) -> str:
        # vLLM's /tokenize and TGI's /generate live beside /v1, not under it
        base = (self._base_url or "").rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    def _post(self, url: str, body: dict[str, Any], timeout: float = SCORE_TIMEOUT_S) -> Any:
        """POST JSON; returns the decoded body, or raises _Refused (4xx) / ModelUnavailable."""
        import httpx

        try:
            response = self._http.post(url, json=body, timeout=timeout)
        except httpx.TransportError as exc:
            # a timeout or a dropped connection: overloaded or restarting, worth another try
            raise ModelServerBusyError(
                f"The model server at {self._base_url} cannot be reached or did not answer "
                f"in time ({type(exc).__name__}: {exc}). It may be busy or restarting; check "
                "that it is running."
            ) from exc
        except httpx.HTTPError as exc:
            raise ModelUnavailableError(
                f"The model server at {self._base_url} cannot be reached ({exc}). Check that "
                "it is running."
            ) from exc
        if 400 <= response.status_code < 500:
            raise _Refused(response.status_code, response.text[:300])
        if response.status_code >= 500:
            raise ModelServerBusyError(
                f"The model server at {self._base_url} failed on {url} "
                f"(HTTP {response.status_code}: {response.text[:300]})."
            )
        try:
            return response.json()
        except ValueError as exc:
            raise _Refused(response.status_code, "not JSON") from exc

    def logprob_mode(self) -> str:
        """Which scoring contract the server offers (probed once per server and model).

        Raises :class:`LogProbsUnsupportedError` when it offers none, and
        :class:`ModelUnavailableError` when it cannot be reached (not remembered).
        """
        self._connect()
        key = (self._base_url or "", self._model)
        with _probe_lock:
            found = _PROBED.get(key)
            if found is None:
                found = _PROBED[key] = self._probe()
        if found not in MODES:
            raise LogProbsUnsupportedError(
                f"The model server at {self._base_url} cannot score a given text, so answers "
                f"are not attributed ({found}). Serve the model with vLLM (its /tokenize and "
                "/v1/completions with prompt_logprobs, or echo with logprobs) or TGI "
                "(/chat_tokenize and /generate with decoder_input_details), or set "
                "attribution = 'off'."
            )
        return found

    def _probe(self) -> str:
        tried: list[str] = []
        try:
            ids = self._tokenize_text("Screening saves lives.", timeout=PROBE_TIMEOUT_S)
        except (_Refused, _Malformed) as exc:
            tried.append(f"/tokenize: {exc}")
            ids = None
        if ids:
            for mode in ("vllm_prompt_logprobs", "vllm_echo"):
                try:
                    got = self._score_ids([ids], mode, timeout=PROBE_TIMEOUT_S)[0]
                except _Refused as exc:
                    tried.append(f"{mode}: HTTP {exc.status}")
                    continue
                except _Malformed as exc:
                    tried.append(f"{mode}: {exc}")
                    continue
                if len(got) == len(ids):
                    return mode
                tried.append(f"{mode}: {len(got)} log-probabilities for {len(ids)} tokens")
        try:
            self._tgi_logprobs("Screening saves lives.", timeout=PROBE_TIMEOUT_S)
            self._post(
                f"{self._root}/chat_tokenize",
                {"model": self._model, "messages": [{"role": "user", "content": "Hi"}]},
                timeout=PROBE_TIMEOUT_S,
            )
            return "tgi"
        except (_Refused, _Malformed) as exc:
            tried.append(f"tgi: {exc}")
        return "tried " + "; ".join(tried)

    def _tokenize_text(self, text: str, timeout: float = SCORE_TIMEOUT_S) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": False}
        return _int_list(self._post(f"{self._root}/tokenize", body, timeout).get("tokens"))

    def _tokenize_chat(self, messages: Sequence[Message]) -> list[int]:
        body = {"model": self._model, "messages": list(messages), "add_generation_prompt": True}
        return _int_list(self._post(f"{self._root}/tokenize", body).get("tokens"))

    def _score_ids(
        self, prompts: Sequence[list[int]], mode: str, timeout: float = SCORE_TIMEOUT_S
    ) -> list[list[float | None]]:
        """Per-token log p(token_i | tokens before it) of each prompt (None for the first)."""
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": [list(p) for p in prompts],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        if mode == "vllm_prompt_logprobs":
            body["prompt_logprobs"] = 0
        else:
            body.update(echo=True, logprobs=0)
        data = self._post(f"{self._base_url}/completions", body, timeout)
        choices = sorted(data.get("choices") or [], key=lambda c: int(c.get("index", 0)))
        if len(choices) != len(prompts):
            raise _Malformed(f"{len(choices)} choices for {len(prompts)} prompts")
        out: list[list[float | None]] = []
        for prompt, choice in zip(prompts, choices, strict=True):
            if mode == "vllm_prompt_logprobs":
                entries = choice.get("prompt_logprobs")
                if not isinstance(entries, list):
                    raise _Malformed("no prompt_logprobs in the reply")
                row: list[float | None] = []
                for token, entry in zip(prompt, entries, strict=False):
                    if entry is None:
                        row.append(None)
                        continue
                    found = entry.get(str(token))
                    if found is None:
                        raise _Malformed(f"prompt_logprobs lacks the prompt token {token}")
                    row.append(float(found["logprob"]))
                out.append(row)
            else:
                logprobs = choice.get("logprobs") or {}
                values = logprobs.get("token_logprobs")
                if not isinstance(values, list):
                    raise _Malformed("no echoed token_logprobs in the reply")
                # the echoed prompt, then the generated token
                out.append([None if v is None else float(v) for v in values[: len(prompt)]])
        return out

    def _tgi_logprobs(
        self, text: str, timeout: float = SCORE_TIMEOUT_S
    ) -> list[tuple[str, float | None]]:
        body = {
            "inputs": text,
            "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True},
        }
        data = self._post(f"{self._root}/generate", body, timeout)
        if isinstance(data, list):  # TGI answers a list when given one, some versions always
            data = data[0] if data else {}
        prefill = (data.get("details") or {}).get("prefill")
        if not isinstance(prefill, list) or not prefill:
            raise _Malformed("no details.prefill in the reply")
        return [
            (str(t.get("text", "")), None if t.get("logprob") is None else float(t["logprob"]))
            for t in prefill
        ]

    def logprobs(self, prompts: Sequence[Sequence[Message]], targets: Sequence[str]) -> np.ndarray:
        """log p(target_t | prompt_m) by teacher forcing, shape (len(prompts), len(targets))."""
        mode = self.logprob_mode()
        try:
            if mode == "tgi":
                return self._logprobs_tgi(prompts, targets)
            return self._logprobs_ids(prompts, targets, mode)
        except _Refused as exc:
            raise ModelUnavailableError(
                f"The model server at {self._base_url} refused to score the answer "
                f"(HTTP {exc.status}: {exc.detail}). A prompt longer than the server's context "
                "is refused: lower attribution_max_sentences or top_k."
            ) from exc
        except _Malformed as exc:
            raise ModelUnavailableError(
                f"The model server at {self._base_url} sent log-probabilities clinrag cannot "
                f"read ({exc})."
            ) from exc

    def _logprobs_ids(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str], mode: str
    ) -> np.ndarray:
        # Each target tokenized alone and concatenated: what the in-process backend scores.
        target_ids = [self._tokenize_text(t) for t in targets]
        flat = [i for ids in target_ids for i in ids]
        bounds = np.cumsum([0] + [len(ids) for ids in target_ids])
        rows = [self._tokenize_chat(p) + flat for p in prompts]
        out = np.zeros((len(prompts), len(targets)), dtype=np.float64)
        for start in range(0, len(rows), SCORE_BATCH):
            batch = rows[start : start + SCORE_BATCH]
            for j, scored in enumerate(self._score_ids(batch, mode)):
                row = batch[j]
                if len(scored) != len(row):
                    raise _Malformed(f"{len(scored)} log-probabilities for {len(row)} tokens")
                tail = scored[len(row) - len(flat) :]
                if any(v is None for v in tail):
                    raise _Malformed("an answer token has no log-probability")
                values = np.array(tail, dtype=np.float64)
                for t in range(len(targets)):
                    out[start + j, t] = float(values[bounds[t] : bounds[t + 1]].sum())
        return out

    def _logprobs_tgi(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str]
    ) -> np.ndarray:
        ends = np.cumsum([len(t) for t in targets])
        out = np.zeros((len(prompts), len(targets)), dtype=np.float64)
        for m, messages in enumerate(prompts):
            data = self._post(
                f"{self._root}/chat_tokenize",
                {"model": self._model, "messages": list(messages), "add_generation_prompt": True},
            )
            templated = data.get("templated_text")
            if not isinstance(templated, str):
                raise _Malformed("no templated_text from /chat_tokenize")
            text = templated + "".join(targets)
            tokens = self._tgi_logprobs(text)
            joined = "".join(tok for tok, _ in tokens)
            # a BOS token TGI adds is not in the text sent: its offset comes out negative
            if not joined.endswith(text):
                raise _Malformed("the scored tokens do not spell the text sent")
            pos = len(text) - len(joined)
            for tok, value in tokens:
                offset = pos - len(templated)
                pos += len(tok)
                if offset < 0:
                    if pos > len(templated):
                        # one token spans the prompt's end and the answer's start: its
                        # probability is not the answer's alone, and dropping it would bias
                        raise _Malformed("a token spans the end of the prompt")
                    continue
                if value is None:
                    raise _Malformed("an answer token has no log-probability")
                t = int(np.searchsorted(ends, offset, side="right"))
                out[m, min(t, len(targets) - 1)] += value
        return out


class _Refused(Exception):
    """The server answered 4xx: the endpoint or a parameter is not offered (or too long)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class _Malformed(Exception):
    """The server answered, but not in the shape the contract says."""


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise _Malformed("/tokenize did not return token ids")
    return list(value)
