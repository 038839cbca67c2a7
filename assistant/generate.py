"""Prompt building and generation. Sources are numbered and fenced as data, never instructions."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence

from assistant.prompts import PromptTemplate, load_template
from core.backends.base import LLM, Message
from core.config import Settings
from core.types import Generation, Hit

_SOURCE_MARK = re.compile(r"^\s*\[(\d+)\]", re.M)
_ROLE_MARK = re.compile(r"<\|?(im_start|im_end|system|user|assistant)\|?>", re.I)


def _defang(text: str) -> str:
    # A document must not pose as another numbered source or as a chat turn.
    text = _ROLE_MARK.sub("", text)
    return _SOURCE_MARK.sub(r"(\1)", text)


def source_header(hit: Hit, n: int) -> str:
    parts = [hit.chunk.title]
    if hit.chunk.section:
        parts.append(f"section: {hit.chunk.section}")
    if hit.chunk.page:
        parts.append(f"page {hit.chunk.page}")
    return f"[{n}] " + " | ".join(_defang(p) for p in parts)


def render_sources(texts: Sequence[str], hits: Sequence[Hit]) -> str:
    """``texts[i]`` is what is shown of hit i (all of it, or only the kept sentences)."""
    blocks = []
    for n, (hit, text) in enumerate(zip(hits, texts, strict=True), start=1):
        blocks.append(f"{source_header(hit, n)}\n{_defang(text)}")
    return "\n\n".join(blocks)


def build_messages(
    template: PromptTemplate, question: str, hits: Sequence[Hit], texts: Sequence[str] | None = None
) -> list[Message]:
    texts = [h.chunk.text for h in hits] if texts is None else texts
    user = template.user.format(sources=render_sources(texts, hits), question=question.strip())
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]


def prompt_hash(messages: Sequence[Message]) -> str:
    return hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()


def generate(
    llm: LLM,
    settings: Settings,
    question: str,
    hits: Sequence[Hit],
    on_token: Callable[[str], None] | None = None,
) -> Generation:
    template = load_template(settings.prompt_template)
    messages = build_messages(template, question, hits)
    decoding = {
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "greedy": settings.temperature == 0,
    }
    pieces: list[str] = []
    start = time.perf_counter()
    first: float | None = None
    for piece in llm.stream(
        messages, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature
    ):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
        if on_token:
            on_token(piece)
    return Generation(
        text="".join(pieces).strip(),
        model=llm.info,
        prompt_hash=prompt_hash(messages),
        template=f"{template.name}:{template.sha256}",
        decoding=decoding,
        seconds=time.perf_counter() - start,
        first_token_seconds=first,
        tokens=len(pieces),
    )
