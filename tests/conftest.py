"""Every test runs against a temporary CLINRAG_HOME, offline, with telemetry off."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings, load_settings, offline_environment

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
SHARED_EVAL = REPO.parent / "shared" / "eval"

for _key, _value in offline_environment().items():
    os.environ[_key] = _value


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CLINRAG_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("CLINRAG_") and key != "CLINRAG_HOME":
            monkeypatch.delenv(key)
    return home


@pytest.fixture
def settings(_home: Path) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(_home)})


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """data_samples ingested once per session into its own home (the LLM cache lives there)."""
    from ingest.index import ingest

    home = tmp_path_factory.mktemp("library") / "home"
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    summary = ingest([SAMPLES], settings, progress=False)
    assert not summary.failed, summary.failed
    yield settings
    shutil.rmtree(home, ignore_errors=True)
