"""Per-document access, zero egress and owner-only files, with the real parts."""

from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from assistant.retrieve import Filters, Retriever
from core.config import Settings
from core.types import ModelInfo
from ingest.index import ingest
from tests.conftest import SAMPLES

CANARIES = {
    "admin": "CANARY-ADMIN-7Q2",
    "auditor": "CANARY-AUDITOR-4K9",
}
TOPICS = [
    "colorectal cancer screening",
    "hypertension treatment",
    "statin therapy",
    "hepatitis C testing",
    "HIV PrEP dosing",
    "lung cancer screening",
]


def write_canary_library(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (
        "colorectal-cancer-screening.md",
        "statins-primary-prevention.md",
        "hypertension-diagnosis-and-treatment.md",
    ):
        (folder / name).write_text((SAMPLES / name).read_text())
    for role, token in CANARIES.items():
        for i, topic in enumerate(TOPICS):
            (folder / f"restricted-{role}-{i}.md").write_text(
                f"---\ntitle: Internal {topic} memo {i}\nrestricted_roles: {role}\n---\n"
                f"# Internal memo\n\n## {topic.title()}\n\n{token} Internal {topic} protocol: "
                f"the committee reviews {topic} cases weekly. {token}\n"
            )


class SpyLLM:
    """Records every prompt; answers with a fixed sentence. Retrieval and citing stay real."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def warm_up(self) -> None:
        pass

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("spy", "spy", "0" * 64)

    def stream(
        self, messages: Sequence[dict], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.prompts.append("\n".join(m["content"] for m in messages))
        yield "Screening is discussed in the sources [1]."


def test_restricted_documents_never_leak_across_roles(tmp_path: Path, settings: Settings) -> None:
    write_canary_library(tmp_path / "lib")
    ingest([tmp_path / "lib"], settings, progress=False)
    retriever = Retriever(settings)
    rng = random.Random(0)
    leaks = 0
    seen_own = 0
    for _ in range(1000):
        role = rng.choice(["clinician", "auditor", "admin"])
        topic = rng.choice(TOPICS)
        query = rng.choice(
            [f"internal {topic} memo", f"{topic} protocol committee", f"CANARY {topic}", topic]
        )
        hits = retriever.retrieve(query, k=5, filters=Filters(roles=(role,)))
        for h in hits:
            allowed = h.chunk.metadata.get("restricted_roles")
            if allowed and role not in allowed.split(","):
                leaks += 1
            seen_own += bool(allowed)
    assert leaks == 0
    assert seen_own > 0  # the canaries are retrievable by their own role: the filter is not vacuous


def test_restricted_chunks_never_reach_the_prompt_or_answer(
    tmp_path: Path, settings: Settings
) -> None:
    from assistant.pipeline import Assistant

    write_canary_library(tmp_path / "lib")
    ingest([tmp_path / "lib"], settings, progress=False)
    spy = SpyLLM()
    assistant = Assistant(
        settings.model_copy(update={"attribution": "off", "questions_per_minute": 1000}), llm=spy
    )
    rng = random.Random(1)
    for i in range(40):
        topic = rng.choice(TOPICS)
        answer = assistant.ask(
            f"internal {topic} protocol memo",
            role="clinician",
            user=f"u{i % 3}",
            filters=Filters(doc_ids=()),
        )
        shown = (
            answer.answer
            + " ".join(e.text for e in answer.evidence)
            + " ".join(c.text for c in answer.citations)
        )
        assert not any(t in shown for t in CANARIES.values())
    assert spy.prompts and not any(t in p for p in spy.prompts for t in CANARIES.values())
    admin = assistant.ask(
        "internal colorectal cancer screening protocol memo", role="admin", user="boss"
    )
    assert any(CANARIES["admin"] in h.chunk.text for h in admin.hits)


@pytest.mark.slow
def test_zero_egress_for_ingest_ask_and_attribution(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def loopback(address: object) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        return isinstance(host, str) and (
            host in {"localhost", "::1"} or host.startswith("127.") or host.startswith("/")
        )

    def guarded_connect(self: socket.socket, address: object) -> None:
        if self.family != socket.AF_UNIX and not loopback(address):
            attempts.append(address)
            raise ConnectionRefusedError("egress blocked by test")
        real_connect(self, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host is not None and not loopback((host,)):
            attempts.append(host)
            raise socket.gaierror("egress blocked by test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    from assistant.pipeline import Assistant

    # A fresh home, not linked to the session's model cache: a first run also converts the
    # packaged model, and that must not reach the network either.
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "htn.md").write_text((SAMPLES / "hypertension-diagnosis-and-treatment.md").read_text())
    assert not ingest([lib], settings, progress=False).failed
    s = settings.model_copy(
        update={"attribution": "surrogate", "attribution_ablations": 8, "max_new_tokens": 32}
    )
    answer = Assistant(s).ask("What blood pressure defines stage 1 hypertension?")
    assert answer.audit_id is not None and answer.attribution is not None
    assert attempts == []


def test_files_written_are_owner_only(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "hcv.md").write_text("# HCV\n\n## Who\n\nScreen all adults once.\n")
    home = tmp_path / "home"
    env = {**os.environ, "CLINRAG_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "ui.cli.main", "ingest", str(lib)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    checked = 0
    for path in home.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        checked += 1
    names = {p.name for p in home.rglob("*")}
    assert {"manifest.sqlite", "audit.sqlite", "audit.key"} <= names and checked > 5
