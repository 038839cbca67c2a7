"""Shared helpers for the UI tests: a small extractive stand-in for the LLM, and a library.

The fake answers by copying the source sentence that shares most words with the question and
citing it, so fast tests get a supported, cited answer without loading the real model. Tests
that need the real model say so (``@pytest.mark.slow``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.record import Recorder
from core.types import ModelInfo

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_samples"
# A few files: one superseded guideline (2016) and its successor (2021), plus hypertension.
SAMPLE_FILES = (
    "hypertension-diagnosis-and-treatment.md",
    "colorectal-cancer-screening.md",
    "colorectal-cancer-screening-2016.md",
)
PASSWORDS = {
    "admin": "admin-password-1",
    "carol": "clinician-password-1",
    "audrey": "auditor-password-1",
}
ROLES = {"admin": "admin", "carol": "clinician", "audrey": "auditor"}
_HEADER = re.compile(r"^\[(\d+)\] .*$", re.M)
_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"what", "which", "when", "who", "the", "does", "for", "and", "with", "should", "how"}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOP}


def extractive_answer(messages: Sequence[dict[str, str]]) -> str:
    """Copy the best-matching source sentence, cited, or decline when nothing matches."""
    user = messages[-1]["content"]
    sources, _, question = user.rpartition("Question:")
    wanted = _words(question)
    headers = list(_HEADER.finditer(sources))
    best: tuple[int, int, str] = (0, 0, "")
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(sources)
        body = sources[header.end() : end]
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", body):
            sentence = sentence.strip().lstrip("-* ").strip()
            score = len(wanted & _words(sentence))
            if sentence and score > best[0]:
                best = (score, int(header.group(1)), sentence)
    if not best[0]:
        return "The sources do not answer this question."
    text = best[2].rstrip(".")
    return f"{text} [{best[1]}]."


class ExtractiveLLM:
    """Implements the LLM protocol (warm_up, info, stream) without a model."""

    def warm_up(self) -> None:
        return None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(backend="fake", model_id="extractive-test-llm", weights_hash="0" * 64)

    def stream(
        self, messages: Sequence[dict[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        words = extractive_answer(messages).split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word


def build_library(home: Path, files: Sequence[str] = SAMPLE_FILES) -> Path:
    """Copy sample files under ``home/sources``, ingest them, create the test accounts."""
    from core.config import load_settings
    from ingest.index import ingest
    from services.accounts import add_user, ensure_admin

    sources = home / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(SAMPLES / name, sources / name)
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    summary = ingest([sources], settings, progress=False)
    assert not summary.failed, summary.to_dict()
    assert ensure_admin(settings, PASSWORDS["admin"]) is None
    add_user(settings, "carol", PASSWORDS["carol"], "clinician")
    add_user(settings, "audrey", PASSWORDS["audrey"], "auditor")
    return home


def test_extractive_answer_cites_the_matching_sentence() -> None:
    messages = [
        {"role": "system", "content": "..."},
        {
            "role": "user",
            "content": "[1] Other | section: A\nNothing here.\n\n"
            "[2] BP | section: Categories\n- Stage 1 hypertension: systolic 130 to 139.\n"
            "\nQuestion: What blood pressure defines stage 1 hypertension?",
        },
    ]
    assert extractive_answer(messages) == "Stage 1 hypertension: systolic 130 to 139 [2]."
    assert "do not answer" in extractive_answer(messages[:1] + [{"content": "Question: zzz"}])


def attributing_assistant(settings: Any, faithfulness: dict[str, Any] | None = None) -> Any:
    """The real Assistant with the fake LLM, and an attribution stand-in (no log-probs) that
    credits the first source sentences, so attribution paths run without the model."""
    from assistant.pipeline import Assistant

    class Attributing(Assistant):
        def attribute(self, answer: Any, method: str | None = None) -> Any:
            sources = answer.source_sentences[:3]
            scores = [0.9, 0.1, -0.2][: len(sources)]
            answer.attribution = {
                "method": "surrogate",
                "scores": scores,
                "per_sentence": [scores],
                "sources": [
                    {"index": s.index, "n": s.n, "chunk_id": s.chunk_id, "text": s.text}
                    for s in sources
                ],
                "faithfulness": faithfulness,
            }
            return answer

    return Attributing(settings, llm=ExtractiveLLM())


class _Appended:
    seq = 1


class MemoryRecorder(Recorder):
    """A recorder whose log keeps the appended events in memory (thread-safe: list.append)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, dict[str, Any]]] = []
        super().__init__(self)  # type: ignore[arg-type]

    def append(self, event: str, user: str, role: str, payload: dict[str, Any]) -> _Appended:
        self.seen.append((event, user, role, payload))
        return _Appended()

    def reasons(self) -> list[str | None]:
        return [payload.get("reason") for _, _, _, payload in self.seen]
