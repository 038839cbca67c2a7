"""Versioned prompt templates (package data). A template's hash goes into every answer record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from core.errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    sha256: str


@cache
def load_template(name: str) -> PromptTemplate:
    try:
        raw = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Prompt template {name!r} not found in assistant/prompts; set prompt_template to "
            "an existing file name without .txt (e.g. answer_v1)."
        ) from None
    _, _, rest = raw.partition("=== system ===\n")
    system, _, user = rest.partition("=== user ===\n")
    if not system or not user:
        raise ConfigError(f"Prompt template {name!r} needs '=== system ===' and '=== user ==='.")
    return PromptTemplate(
        name, system.strip(), user.strip(), hashlib.sha256(raw.encode()).hexdigest()
    )
