"""OpenAI-compatible server adapter (vLLM, TGI, llama.cpp server, Ollama) by base URL.

The only module that imports openai. Meant for a model server inside the hospital network.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from core.backends.base import Message
from core.errors import ConfigError, ModelUnavailableError
from core.types import ModelInfo

if TYPE_CHECKING:
    from core.config import Settings


class OpenAILLM:
    def __init__(self, settings: Settings) -> None:
        self._base_url: str | None = settings.llm_base_url
        self._model: str = settings.llm_model
        self._api_key: str = settings.llm_api_key or "not-needed"
        self._client: Any = None

    def warm_up(self) -> None:
        if self._client is not None:
            return
        if not self._base_url or not self._model:
            raise ConfigError(
                "llm = 'openai' needs llm_base_url (e.g. http://gpu-box:8000/v1) and llm_model."
            )
        from openai import OpenAI

        self._client = OpenAI(base_url=self._base_url, api_key=self._api_key, max_retries=1)

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
        from openai import OpenAIError

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
        except OpenAIError as exc:
            raise ModelUnavailableError(
                f"The model server at {self._base_url} failed ({exc}). Check that it is running "
                "and that llm_model names a model it serves."
            ) from exc
