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


def test_sessions_ask_a_model_server_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: with the openai backend the app held one lock per process for a whole answer
    or attribution, so a cluster replica's users waited for each other (p95 132 s), although
    the model server takes concurrent requests."""
    import threading

    from core.backends.openai_llm import OpenAILLM

    settings = Settings(home=tmp_path / "h", llm="openai", llm_base_url="http://127.0.0.1:9/v1")
    server_backed = SimpleNamespace(
        settings=settings, llm=OpenAILLM(settings), warm_up=lambda: None
    )
    monkeypatch.setattr(session, "assistant_factory", lambda s: server_backed)
    assert session._shares_model(server_backed)  # type: ignore[arg-type]

    second_in = threading.Event()

    def second_session() -> None:
        with session.assistant_session(settings):
            second_in.set()

    with session.assistant_session(settings):
        other = threading.Thread(target=second_session, daemon=True)
        other.start()
        # the first session still holds its answer: the second must not wait for it
        assert second_in.wait(timeout=20)
    other.join(timeout=20)
