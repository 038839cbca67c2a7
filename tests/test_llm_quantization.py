"""llm_quantization: the setting, and the packaged model loaded with an int8 output layer."""

from __future__ import annotations

from typing import Any

import pytest

from core.config import (
    ANSWER_SETTINGS,
    Settings,
    answer_settings,
    load_settings,
    with_answer_settings,
)
from core.errors import ConfigError


def test_the_setting_is_validated_and_defaults_to_float32() -> None:
    assert load_settings(env={}).llm_quantization == "none"
    chosen = load_settings(env={"CLINRAG_LLM_QUANTIZATION": "int8-dynamic"})
    assert chosen.llm_quantization == "int8-dynamic"
    for wrong in ("int8", "int4-dynamic", "yes"):
        with pytest.raises(ConfigError, match="llm_quantization"):
            load_settings(env={"CLINRAG_LLM_QUANTIZATION": wrong})


def test_it_decides_answers_and_old_records_were_float32() -> None:
    # the evaluation cache keys answers by these settings and replay restores them
    assert "llm_quantization" in ANSWER_SETTINGS
    quantized = load_settings(env={}, overrides={"llm_quantization": "int8-dynamic"})
    assert answer_settings(quantized)["llm_quantization"] == "int8-dynamic"
    plain = answer_settings(load_settings(env={}))
    recorded = {k: v for k, v in plain.items() if k != "llm_quantization"}
    assert with_answer_settings(quantized, recorded).llm_quantization == "none"


SHORT_PROMPT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the first-line treatment for hypertension?"},
]


@pytest.mark.slow
def test_a_quantized_load_generates_and_has_its_own_identity(
    library: Settings, packaged_llm: Any
) -> None:
    import torch

    from core import backends

    int8: Any = backends.create(
        "llm", "transformers", library.model_copy(update={"llm_quantization": "int8-dynamic"})
    )
    # the identity a quoted answer records before (or without) the load is the loaded one's
    before = int8.info
    int8.warm_up()
    assert int8.info == before
    # its own copy: the float32 model the other tests share keeps its float32 output layer
    assert int8._model is not packaged_llm._model
    assert type(packaged_llm._model.lm_head) is torch.nn.Linear
    head = int8._model.lm_head
    assert isinstance(head, torch.ao.nn.quantized.dynamic.Linear)
    assert head.weight().qscheme() == torch.per_channel_affine

    # the audit ties each answer to the model that gave it: int8 is not float32
    assert int8.info != packaged_llm.info
    assert int8.info.model_id == packaged_llm.info.model_id + "+int8-dynamic"
    assert int8.info.weights_hash == packaged_llm.info.weights_hash  # same file
    assert int8.load_report["quantization"] == "int8-dynamic"

    text = "".join(int8.stream(SHORT_PROMPT, max_new_tokens=16, temperature=0.0)).strip()
    assert len(text.split()) >= 3, text
    # attribution's teacher-forced scores run through the quantized layer too, close to float32
    targets = ["Thiazide diuretics.", "Antibiotics."]
    got = int8.logprobs([SHORT_PROMPT], targets)
    want = packaged_llm.logprobs([SHORT_PROMPT], targets)
    assert got.shape == want.shape == (1, 2)
    assert abs(got - want).max() < 1.0, (got, want)
    assert (got != want).any()  # the int8 layer really ran
