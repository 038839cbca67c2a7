"""The app's per-process caches: one assistant (and lock, and queue) per settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import Settings
from ui import session


def test_each_settings_gets_its_own_assistant_and_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamlit does not hash underscore-named parameters: a cache keyed on ``_key`` handed
    every settings the first assistant made (another home's library and model)."""
    made: list[Settings] = []

    def factory(settings: Settings) -> Any:
        made.append(settings)
        return SimpleNamespace(settings=settings, llm=None)

    monkeypatch.setattr(session, "assistant_factory", factory)
    first = Settings(home=tmp_path / "a")
    second = Settings(home=tmp_path / "b")
    a, b = session.get_assistant(first), session.get_assistant(second)
    assert a is not b
    assert a.settings.home == first.home and b.settings.home == second.home
    assert session.get_assistant(first) is a  # still one per settings
    assert session._lock(str(first.home)) is not session._lock(str(second.home))
