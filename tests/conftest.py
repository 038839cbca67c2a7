"""Every test runs against a temporary CLINRAG_HOME, offline, with telemetry off.

Session fixtures hold what is slow to build and that no test changes: the sample library, the
packaged model's converted weights and the loaded model, a warmed assistant. A test that needs
a home of its own (it edits documents, or checks a first run) still gets one; it can link the
session's model cache into it with :func:`share_models` instead of converting the model again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cluster_parts import start_chroma_server, stop
from pg import PostgresServer, pg_bin_dir
from pg import postgres_server as start_postgres

from core.config import Settings, load_settings, offline_environment

if TYPE_CHECKING:
    from assistant.pipeline import Assistant
    from core.backends.base import LLM

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
SHARED_EVAL = REPO.parent / "shared" / "eval"

for _key, _value in offline_environment().items():
    os.environ[_key] = _value


def share_models(home: Path, cache: Path) -> Path:
    """Point ``home``'s model cache at the session's: the GGUF is dequantized once per session
    (15-40 s on 2 cores) instead of once per home. Returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def _shared_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("shared-models")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_embedder_export(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _shared_models: Path
) -> None:
    """Every home of this process reads one ONNX export of the embedder, as every home reads
    one converted LLM through :func:`share_models`.

    On a CPU without native bf16 the embedder is exported per home (15-30 s, and ~0.9 GB that
    the process never hands back): a suite of fresh homes ran out of memory in CI. Tests of the
    export itself are marked ``own_embedder_export``; child processes export into their own home.
    """
    if request.node.get_closest_marker("own_embedder_export"):
        return
    from core.backends import onnx_embedder

    per_home = onnx_embedder.export_dir

    def shared(models_dir: Path, model_dir: Path, base_hash: str) -> Path:
        return per_home(_shared_models, model_dir, base_hash)

    monkeypatch.setattr(onnx_embedder, "export_dir", shared)


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
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (tests/pg.py); skipped only where none is installed
    (CI installs Debian's ``postgresql``, see .ci/run)."""
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl); .ci/run installs it")
    with start_postgres() as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """The session server's URL, its clinrag schemas dropped so each test starts empty."""
    postgres_server.reset()
    return postgres_server.url


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's model cache, empty until something loads the packaged model through it.

    Link a home to it with :func:`share_models`; request ``packaged_llm`` as well when other
    processes will read it, so that they find the conversion done rather than race to do it.
    Removed at the end: pytest keeps the last runs' temporary folders, at 0.5 GB each.
    """
    cache = tmp_path_factory.mktemp("models")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory, models_cache: Path) -> Iterator[Settings]:
    """data_samples ingested once per session into its own home (its models/ is the cache)."""
    from ingest.index import ingest

    home = share_models(tmp_path_factory.mktemp("library") / "home", models_cache)
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    summary = ingest([SAMPLES], settings, progress=False)
    assert not summary.failed, summary.failed
    yield settings
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def accounts_library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The app's test home (three sample guidelines and the test accounts), ingested once per
    session. A template: copy it (``shutil.copytree``) before writing to it."""
    from test_ui_fakes import build_library

    home = build_library(tmp_path_factory.mktemp("accounts_library") / "home")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def packaged_llm(library: Settings) -> LLM:
    """The packaged model, converted into ``models_cache`` and loaded, once per session.

    Built over the library's settings: the adapter keeps one loaded copy per process for each
    models folder, so an ``Assistant(library...)`` built inside a test shares this one.
    Tests may monkeypatch it (monkeypatch undoes it) but must not replace its weights.
    """
    from core import backends

    llm: LLM = backends.create("llm", "transformers", library)
    llm.warm_up()
    return llm


@pytest.fixture(scope="session")
def warm_assistant(library: Settings, packaged_llm: LLM) -> Assistant:
    """An assistant over the sample library with attribution off, models loaded. It records
    answers in the library's audit log: a test may ask it, but must not change its settings."""
    from assistant.pipeline import Assistant

    assistant = Assistant(library.model_copy(update={"attribution": "off"}), llm=packaged_llm)
    assistant.warm_up()
    return assistant


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real Chroma server for the session; each test uses its own collection."""
    url, process = start_chroma_server(tmp_path_factory.mktemp("chroma") / "data")
    yield url
    stop(process)
