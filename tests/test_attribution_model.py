"""Attribution with the real packaged model (teacher forcing through the LLM protocol)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from assistant.attribute import AnswerScorer, answer_targets
from assistant.cite import source_sentences
from assistant.prompts import load_template
from audit.attribution import CachedScorer, faithfulness, make_attributor
from core.backends.base import LLM
from core.config import Settings
from core.types import Chunk, Hit

pytestmark = pytest.mark.slow


def _hit(n: int, text: str) -> Hit:
    chunk = Chunk(
        f"doc{n}:c",
        f"doc{n}",
        text,
        f"Clinic handbook {n}",
        "General",
        None,
        0,
        len(text),
        "sha",
        f"doc{n}.md",
        "now",
    )
    return Hit(chunk=chunk, score=0.03, dense_score=0.7)


def test_the_sentence_holding_the_answer_ranks_first(library: Settings, packaged_llm: LLM) -> None:
    llm = packaged_llm
    hits = [
        _hit(1, "The clinic opens at 8 in the morning. Parking is free on weekends."),
        _hit(2, "The starting dose of zorbamycin is 40 mg once daily. The cafeteria serves soup."),
        _hit(3, "Visitors must sign in at the front desk. The pharmacy closes at 6 pm."),
    ]
    sources = source_sentences(hits)
    question = "What is the starting dose of zorbamycin?"
    answer = "The starting dose of zorbamycin is 40 mg once daily."
    scorer = CachedScorer(
        AnswerScorer(
            llm,
            load_template(library.prompt_template),
            question,
            hits,
            sources,
            answer_targets(answer),
        )
    )
    dose = next(s.index for s in sources if "zorbamycin" in s.text)
    for method in ("surrogate", "loo"):
        result = make_attributor(method).attribute(scorer, len(sources), 1)
        assert result.top(1) == [dose], (method, result.scores)
    # the fallback as the app runs it for a model that can mask: its rows estimated by masking
    from assistant.attribute import fallback_rows

    rows = fallback_rows(library, llm, scorer.scorer)
    assert rows is not None
    result = make_attributor("hierarchical").attribute(rows, len(sources), 1)
    assert result.top(1) == [dose], ("hierarchical by masking", result.scores)
    check = faithfulness(
        scorer, make_attributor("surrogate").attribute(scorer, len(sources), 1), k=1
    )
    assert check.top_k_drop > check.random_drop
    assert not check.flag_memory


def test_surrogate_beats_random_removal_on_data_samples(library: Settings) -> None:
    from assistant.pipeline import Assistant

    settings = library.model_copy(
        update={"attribution": "surrogate", "attribution_ablations": 24, "max_new_tokens": 48}
    )
    answer = Assistant(settings).ask("What blood pressure defines stage 1 hypertension?")
    attribution = answer.attribution
    assert attribution is not None and attribution["method"] == "surrogate"
    faith = attribution["faithfulness"]
    assert faith["top_k_drop"] > faith["random_drop"]
    assert len(attribution["scores"]) == len(attribution["sources"])
    assert np.isfinite(attribution["scores"]).all()
    from audit.record import open_log as audit_log

    record = audit_log(settings).get(answer.audit_id)
    assert record.payload["attribution"]["faithfulness"]["top_k_drop"] == faith["top_k_drop"]


def _dose_scorer(library: Settings, llm: LLM) -> AnswerScorer:
    """Two passages, four sentences; the answer rests on the dose sentence (column 2)."""
    hits = [
        _hit(1, "The clinic opens at 8 in the morning. Parking is free on weekends."),
        _hit(2, "The starting dose of zorbamycin is 40 mg once daily. The cafeteria serves soup."),
    ]
    return AnswerScorer(
        llm,
        load_template(library.prompt_template),
        "What is the starting dose of zorbamycin?",
        hits,
        source_sentences(hits),
        answer_targets("The starting dose is 40 mg. It is taken once daily."),
    )


def test_shared_prefix_cache_gives_the_same_logprobs(
    library: Settings, packaged_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.backends import transformers_llm

    llm = packaged_llm
    scorer = _dose_scorer(library, llm)
    masks = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 0], [1, 0, 0, 1]], dtype=bool)
    prompts = [scorer.texts(m) for m in masks]
    assert len({p[0] for p in prompts}) > 1  # the rows really differ after the shared prefix
    # a reference prefix left by an earlier test would be reused and no new one computed
    monkeypatch.setattr(llm, "_scoring", threading.local())
    monkeypatch.setattr(llm, "_generated", None, raising=False)  # nor an earlier generation's
    calls: list[int] = []
    real = llm._prefix_cache
    monkeypatch.setattr(llm, "_prefix_cache", lambda ids: calls.append(len(ids)) or real(ids))
    with_cache = scorer(masks)
    assert calls and calls[0] >= transformers_llm.MIN_PREFIX  # the reuse path really ran
    monkeypatch.setattr(transformers_llm, "MIN_PREFIX", 10**9)
    without = scorer(masks)
    np.testing.assert_allclose(with_cache, without, atol=2e-3)
    assert with_cache[0, 0] > with_cache[2, 0]  # removing the dose sentence lowers log p


def test_masking_estimates_removal_from_one_short_pass_per_row(
    library: Settings, packaged_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masking nothing is the full prompt's log p exactly; hiding the dose sentence lowers
    the dose sentence's log p as removing it does; only the question and answer run per row."""
    from assistant.attribute import MaskedEstimate

    llm = packaged_llm
    scorer = _dose_scorer(library, llm)
    masks = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=bool)
    removed = scorer(masks)
    monkeypatch.setattr(llm, "_generated", None, raising=False)
    runs: list[int] = []
    real = llm._model.forward

    def forward(*args: object, **kwargs: object) -> object:
        runs.append(int(kwargs["input_ids"].shape[1]))  # type: ignore[union-attr]
        return real(*args, **kwargs)

    monkeypatch.setattr(llm._model, "forward", forward)
    masked = MaskedEstimate(llm, scorer)(masks)
    assert masked.shape == removed.shape
    np.testing.assert_allclose(masked[0], removed[0], atol=2e-3)
    assert masked[1, 0] < masked[0, 0] - 1.0  # hiding the dose sentence, as removing it
    assert removed[1, 0] < removed[0, 0] - 1.0
    assert abs(masked[2, 0] - masked[0, 0]) < abs(masked[1, 0] - masked[0, 0])
    # one prefix pass, then per row only what follows the last source sentence
    assert len(runs) == 1 + len(masks) and max(runs[1:]) < runs[0] / 2


def test_a_quoted_answers_attention_pass_serves_the_check_and_masking(
    library: Settings, packaged_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No generation wrote a quoted answer: the attention pass runs its whole prompt, and the
    faithfulness check's rows and the masked sets start from that pass's cache instead of
    running the prompt again."""
    from assistant.attribute import MaskedEstimate, attention_features

    llm = packaged_llm
    scorer = _dose_scorer(library, llm)
    monkeypatch.setattr(llm, "_scoring", threading.local())
    monkeypatch.setattr(llm, "_generated", None, raising=False)
    prefix_passes: list[int] = []
    real = llm._prefix_cache
    monkeypatch.setattr(
        llm, "_prefix_cache", lambda ids: prefix_passes.append(len(ids)) or real(ids)
    )
    attention_features(llm, scorer)
    masks = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]], dtype=bool)
    removed = scorer(masks)
    masked = MaskedEstimate(llm, scorer)(masks)
    assert prefix_passes == []
    assert removed[1, 0] < removed[0, 0] - 1.0 and masked[1, 0] < masked[0, 0] - 1.0
