"""End to end with the real packaged model, embedder, Chroma and audit log on data_samples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from assistant.pipeline import Assistant
from core.backends.base import LLM
from core.config import Settings

pytestmark = pytest.mark.slow

ANSWERABLE = "What blood pressure defines stage 1 hypertension?"
UNANSWERABLE = "How should moderate acne vulgaris be treated in adolescents?"


@pytest.fixture
def assistant(warm_assistant: Assistant) -> Assistant:
    return warm_assistant


def test_answerable_question_cites_the_right_document(assistant: Assistant) -> None:
    answer = assistant.ask(ANSWERABLE)
    assert not answer.abstained, answer.abstain_reason
    assert answer.citations
    assert {c.doc_id for c in answer.citations} == {"hypertension-diagnosis-and-treatment"}
    assert all(s.supported and s.citations for s in answer.sentences)
    assert "130" in answer.answer
    assert answer.audit_id is not None
    record = assistant.audit.get(answer.audit_id)
    assert record.payload["answer"] == answer.answer
    assert record.payload["model"]["weights_hash"] == answer.generation.model.weights_hash
    assert record.payload["retrieved"][0]["content_hash"]


def test_unanswerable_question_abstains_and_lists_nearest(assistant: Assistant) -> None:
    answer = assistant.ask(UNANSWERABLE)
    assert answer.abstained
    assert answer.answer == "The library does not contain guidance on this question."
    assert answer.citations == []
    assert answer.nearest_documents


def test_same_question_twice_gives_the_same_answer(assistant: Assistant) -> None:
    q = "What HbA1c goal does the ADA suggest for many nonpregnant adults?"
    first = assistant.ask(q, record=False)
    second = assistant.ask(q, record=False)
    assert first.answer == second.answer
    assert first.generation and second.generation
    assert first.generation.text == second.generation.text
    assert first.generation.prompt_hash == second.generation.prompt_hash


def test_quoted_evidence_comes_from_the_passage_about_the_question_subject(
    assistant: Assistant,
) -> None:
    from assistant.cite import lexical_overlap, question_evidence, source_sentences
    from core.types import Chunk, Hit

    def hit(doc: str, title: str, text: str) -> Hit:
        chunk = Chunk(f"{doc}:1", doc, text, title, "", 1, 0, len(text), "sha", "x.md", "now")
        return Hit(chunk=chunk, score=0.03, dense_score=0.8)

    # Made-up passages: the neighbour's sentence matches the question's wording better, but
    # only the other passage is about the syndrome asked after.
    hits = [
        hit("primrose", "Primrose syndrome", "Signs and symptoms of this syndrome include "
            "seizures, short stature and calcified ear cartilage."),
        hit("oculoecto", "Oculoectodermal syndrome", "Symptoms include skin lesions on the "
            "scalp and growths on the surface of the eye."),
    ]  # fmt: skip
    question = "What are the symptoms of oculoectodermal syndrome?"
    sources = source_sentences(hits)
    vectors = assistant.embed([question] + [s.text for s in sources])
    wording_only = [
        float(vectors[i + 1] @ vectors[0]) + 0.2 * lexical_overlap(question, s.text)
        for i, s in enumerate(sources)
    ]
    assert wording_only[0] > wording_only[1]  # the sentences alone point at the neighbour
    evidence = question_evidence(question, hits, assistant.embed, sources)
    assert evidence[0].doc_id == "oculoecto"
    # the score shown is the sentence's own match to the question, not lifted by its title.
    # The int8 embedder (auto on a CPU without bf16) quantizes activations per batch, so the
    # same sentence embedded beside other texts moves by up to ~0.03; a title's lift is larger.
    tolerance = 0.03 if assistant.retriever.index.embedder.info.dtype == "int8" else 1e-3
    assert evidence[0].score == pytest.approx(float(vectors[2] @ vectors[0]), abs=tolerance)


def _cli_json(
    library: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    *options: str,
) -> Any:
    """``clinrag ask ANSWERABLE --json OPTIONS`` on the library, in this process: its JSON."""
    from ui.cli.main import main

    monkeypatch.setenv("CLINRAG_HOME", str(library.home))
    umask = os.umask(0o077)  # main() sets the process umask; later tests must not inherit it
    try:
        code = main(["ask", ANSWERABLE, "--json", *options])
    finally:
        os.umask(umask)
    out, err = capfd.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.usefixtures("packaged_llm")
def test_cli_ask_json_contract(
    library: Settings, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # In process, so the loaded models are reused; the eight-process test below runs the same
    # command in fresh interpreters and parses their output too.
    monkeypatch.setenv("CLINRAG_ATTRIBUTION", "off")
    data = _cli_json(library, monkeypatch, capfd, "--k", "4")
    for key in (
        "question",
        "answer",
        "abstained",
        "sentences",
        "citations",
        "evidence",
        "model",
        "prompt_hash",
        "timings",
        "audit_id",
    ):
        assert key in data
    assert set(data["sentences"][0]) >= {"text", "citations", "supported"}
    assert set(data["citations"][0]) >= {
        "n",
        "doc_id",
        "chunk_id",
        "title",
        "section",
        "page",
        "text",
        "score",
    }
    assert set(data["model"]) == {"backend", "model_id", "weights_hash"}
    assert set(data["timings"]) >= {"retrieval", "generation", "total"}
    assert len(data["model"]["weights_hash"]) == 64


def test_a_quoted_answer_names_its_model_without_loading_it(
    library: Settings, packaged_llm: LLM
) -> None:
    """The CLI starts without the model (``warm_up(model=False)``): a quoted answer records
    the same model identity as a loaded model gives, and a generated one loads it on demand,
    timed apart from the generation."""
    from core import backends

    unloaded: Any = backends.create("llm", "transformers", library)
    quoted = Assistant(library.model_copy(update={"attribution": "off"}), llm=unloaded)
    quoted.warm_up(model=False)
    answer = quoted.ask(ANSWERABLE, record=False)
    assert answer.mode == "quoted" and not answer.abstained
    assert not unloaded.loaded, "a quoted answer loaded the model"
    assert answer.generation.model == packaged_llm.info
    assert "model_load" not in answer.timings

    lazy: Any = backends.create("llm", "transformers", library)
    generated = Assistant(
        library.model_copy(update={"attribution": "off", "answer_style": "generated"}), llm=lazy
    )
    generated.warm_up(model=False)
    answer = generated.ask(ANSWERABLE, record=False)
    assert lazy.loaded
    assert answer.generation.text and answer.generation.model == packaged_llm.info
    assert answer.timings["model_load"] >= 0 and answer.timings["generation"] > 0


def test_cli_ask_answers_a_quoted_question_without_the_model(
    library: Settings, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`clinrag ask` in its own process loads the model only when the answer needs it."""
    from core.backends.transformers_llm import TransformersLLM

    def refuse(self: TransformersLLM) -> None:
        raise AssertionError("the model was loaded for a quoted answer")

    monkeypatch.setattr(TransformersLLM, "warm_up", refuse)
    data = _cli_json(library, monkeypatch, capfd, "--no-attribution", "--no-service")
    assert data["mode"] == "quoted" and "130" in data["answer"]
    assert data["model"]["model_id"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_sentence_that_leaves_its_subject_to_the_title_is_strong_evidence(
    library: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sentence "Metformin is the usual first drug when there is no contraindication"
    matches the question only 0.50 alone, under the 0.55 bar; read under its guideline's
    title it is 0.67. It was judged weak evidence, the model drafted, the draft failed
    verification and the answer was a decline that listed this very sentence first."""
    from core.backends.transformers_llm import TransformersLLM

    def refuse(self: TransformersLLM) -> None:
        raise AssertionError("the model was loaded: the evidence was judged weak")

    monkeypatch.setattr(TransformersLLM, "warm_up", refuse)
    assistant = Assistant(library.model_copy(update={"attribution": "off"}))
    assistant.warm_up(model=False)
    answer = assistant.ask("What is the first-line drug for type 2 diabetes?", record=False)
    assert answer.mode == "quoted" and not answer.abstained
    assert answer.sentences[0].text.startswith("Metformin is the usual first drug")
    assert {c.doc_id for c in answer.citations} == {
        "type-2-diabetes-screening-and-glycemic-targets"
    }


@pytest.mark.parametrize(
    ("question", "first"),
    [
        ("What is step 1 asthma therapy for adults?", "Step 1 (intermittent asthma)"),
        ("What is the daily dose of oral PrEP?", "- Emtricitabine/tenofovir alafenamide"),
        ("What HbA1c cut-off confirms a diagnosis of diabetes?", "- Hemoglobin A1c (HbA1c): 6.5%"),
        # under a heading made of the question's words ("Screening Test"), and the sentence
        # "It is quick..." quoted with the one it leans on
        (
            "What screening test is used for AAA?",
            "Abdominal duplex ultrasonography is the test of choice. It is quick",
        ),
        ("How do I convert oxycodone to morphine milligram equivalents?", "Oxycodone: factor 1.5"),
    ],
)
def test_the_quoted_answer_leads_with_the_aspect_asked(
    library: Settings, question: str, first: str
) -> None:
    """Each led with a neighbour before: SMART ("steps 3 and 4"), the kidney follow-up line
    ("90 mL/min" read as a dose), the HbA1c treatment targets, a grade D statement for women
    ("do not screen"), the MME threshold."""
    assistant = Assistant(library.model_copy(update={"attribution": "off"}))
    assistant.warm_up(model=False)
    answer = assistant.ask(question, record=False)
    assert answer.mode == "quoted" and answer.sentences[0].text.startswith(first), answer.answer


_ADMIN_SUMMARY = """# Screening for Zorbitis: Task Force Recommendation Statement

## Interventions Considered

Screening for zorbitis with ultrasonography

## Date Released

2019 (revised 2021 Aug 19)

## Adaptation

Not applicable: the summary is not adapted from another source.

## Companion Documents

Zorbitis screening with ultrasonography: an evidence review for the task force.

## Patient Resources

Screening for zorbitis: understanding the task force recommendation.

## Methods

The review team searched three databases for trials of imaging and scored their quality \
with a standard tool, and two reviewers extracted the outcomes independently.

## Summary of Recommendations

The task force recommends one-time screening for zorbitis with ultrasonography in men aged \
65 to 75 years who have ever smoked (grade B). It recommends against routine screening in \
women who have never smoked (grade D).
"""


def test_a_statement_passage_is_read_when_short_passages_fill_the_ranks(
    tmp_path: Path, settings: Settings, models_cache: Path
) -> None:
    """A federal summary's short administrative passages match a question through its title
    alone and filled the ranks: "Screening for ... with ultrasonography" (a list of the
    interventions considered) was quoted while the statement that answers ranked below."""
    from assistant.retrieve import Filters
    from ingest.index import ingest
    from tests.conftest import share_models

    share_models(settings.home, models_cache)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "zorbitis.md").write_text(_ADMIN_SUMMARY.replace("\\\n", ""), encoding="utf-8")
    settings = settings.model_copy(
        update={"attribution": "off", "top_k": 1, "leading_document_passages": 1}
    )
    ingest([lib], settings, progress=False)
    question = "Who should get a one-time ultrasound screen for zorbitis?"
    statement = "The task force recommends one-time screening for zorbitis"
    without = Assistant(settings.model_copy(update={"recommendation_passage": False}))
    without.warm_up(model=False)
    read = without._retrieve(question, 1, Filters())
    assert not any(statement in h.chunk.text for h in read)  # the ranks hold no statement
    assistant = Assistant(settings)
    assistant.warm_up(model=False)
    read = assistant._retrieve(question, 1, Filters())
    assert len(read) == 3 and statement in read[-1].chunk.text
    answer = assistant.ask(question, record=False)
    assert answer.mode == "quoted" and answer.sentences[0].text.startswith(statement)


def test_replay_unchanged_then_changed_after_document_edit(
    tmp_path: Path, settings: Settings, models_cache: Path
) -> None:
    from ingest.index import ingest
    from services.access import operator
    from services.audit import replay
    from tests.conftest import SAMPLES, share_models

    share_models(settings.home, models_cache)

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("hypertension-diagnosis-and-treatment.md", "statins-primary-prevention.md"):
        shutil.copy(SAMPLES / name, lib / name)
    settings = settings.model_copy(update={"attribution": "off", "max_new_tokens": 48})
    ingest([lib], settings, progress=False)
    assistant = Assistant(settings)
    answer = assistant.ask(ANSWERABLE)
    assert answer.audit_id is not None
    admin = operator(settings.user)
    assert replay(settings, admin, answer.audit_id).unchanged

    doc = lib / "hypertension-diagnosis-and-treatment.md"
    doc.write_text(doc.read_text().replace("130 to 139", "135 to 139"))
    ingest([lib], settings, progress=False)
    report = replay(settings, admin, answer.audit_id)
    assert not report.unchanged
    assert any("sources changed" in d for d in report.differences)
    assert assistant.audit.verify().ok


def test_audit_unwritable_fails_closed(library: Settings, tmp_path: Path) -> None:
    from core.errors import AuditError

    class BrokenLog:
        def check_writable(self) -> None:
            raise OSError("disk full")

    assistant = Assistant(library, audit_log=BrokenLog())
    shown: list[str] = []
    with pytest.raises(AuditError, match="No answer is given without an audit record"):
        assistant.ask(ANSWERABLE, on_token=shown.append)
    assert shown == []  # nothing reached the screen


def test_openai_backend_answers_through_a_compatible_server(
    assistant: Assistant, library: Settings
) -> None:
    """The `openai` backend against a loopback OpenAI-compatible server that runs the real
    packaged model: the same question, the same greedy answer as in process."""
    from openai_server import serve_chat

    local = assistant.llm

    def reply(messages: list[dict[str, str]], max_tokens: int) -> str:
        return "".join(local.stream(messages, max_new_tokens=max_tokens, temperature=0.0))

    # both draft, so the drafts can be compared: with the packaged model a quoted answer on
    # strong evidence is otherwise given without one (quoted_draft)
    drafting = library.model_copy(update={"quoted_draft": True, "answer_style": "quoted"})
    in_process = Assistant(drafting, retriever=assistant.retriever, llm=local).ask(
        ANSWERABLE, record=False
    )
    with serve_chat(reply) as server:
        remote = Assistant(
            drafting.model_copy(
                update={
                    "llm": "openai",
                    "llm_base_url": server.base_url,
                    "llm_model": "smollm2-135m",
                    "attribution": "off",
                }
            )
        )
        answer = remote.ask(ANSWERABLE)
    assert server.requests and server.requests[0]["body"]["stream"] is True
    assert server.requests[0]["body"]["max_tokens"] == library.max_new_tokens
    assert answer.generation is not None and in_process.generation is not None
    assert answer.generation.text == in_process.generation.text
    assert answer.generation.model.backend == "openai"
    assert answer.answer == in_process.answer and not answer.abstained
    record = remote.audit.get(answer.audit_id)
    assert record.payload["model"]["model_id"] == "smollm2-135m"
