"""Attribution through a model server: the `openai` backend's teacher-forced log-probabilities.

The loopback server (tests/openai_server.py) runs the real packaged model and speaks vLLM's
scoring contracts (/tokenize, /v1/completions with prompt_logprobs or echo + logprobs) and
TGI's (/chat_tokenize, /generate with decoder_input_details). It computes each prompt on its
own, in one forward pass, with no shared prefix cache or padding; the in-process backend
batches, pads and reuses a prefix cache. Same weights, same float32 CPU arithmetic in a
different order, so the two agree to rounding: a summed sentence log-probability here is a
sum of ~10-40 token terms of magnitude 0.1-10, and float32 reassociation moves each by about
1e-6 relative. TOLERANCE (1e-3 nats) leaves two orders of magnitude for that and is still
far below any difference attribution reads (scores of a few tenths to several nats).
Measured (2026-12-02, 2 loaded cores): max difference 1.9e-5 nats on every contract, 1.9e-5
on the leave-one-out scores. A real
vLLM on a GPU in bfloat16 differs from a float32 CPU run by more (not measured: no GPU here):
compare a GPU server with a GPU in-process run, not with this.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from openai_server import ModelEngine, serve_chat

from assistant.attribute import AnswerScorer, answer_targets
from assistant.cite import source_sentences
from assistant.prompts import load_template
from audit.attribution import CachedScorer, make_attributor
from core.backends.base import LLM, LogProbScorer
from core.backends.openai_llm import _PROBED, LogProbsUnsupportedError, OpenAILLM
from core.config import Settings
from core.errors import ModelServerBusyError, ModelUnavailableError
from core.types import Chunk, Hit

TOLERANCE = 1e-3  # nats, on each sentence's summed log-probability (see the module docstring)
QUESTION = "What is the starting dose of zorbamycin?"
ANSWER = "The starting dose of zorbamycin is 40 mg once daily [2]. Take it with food [2]."


def _hit(n: int, text: str) -> Hit:
    chunk = Chunk(
        f"doc{n}:c", f"doc{n}", text, f"Handbook {n}", "General", None, 0, len(text), "sha",
        f"doc{n}.md", "now",
    )  # fmt: skip
    return Hit(chunk=chunk, score=0.03, dense_score=0.7)


HITS = [
    _hit(1, "The clinic opens at 8 in the morning. Parking is free on weekends."),
    _hit(2, "The starting dose of zorbamycin is 40 mg once daily. Take it with food."),
    _hit(3, "Visitors must sign in at the front desk. The pharmacy closes at 6 pm."),
]


def _remote(settings: Settings, base_url: str) -> OpenAILLM:
    _PROBED.clear()  # each test's server is new; the process cache is per URL and model
    return OpenAILLM(
        settings.model_copy(
            update={"llm": "openai", "llm_base_url": base_url, "llm_model": "smollm2-135m"}
        )
    )


def _no_chat(messages: list[dict[str, str]], max_tokens: int) -> str:
    raise AssertionError("scoring must not generate")


@pytest.fixture
def clear_probes() -> Iterator[None]:
    _PROBED.clear()
    yield
    _PROBED.clear()


def test_a_server_without_a_scoring_contract_is_named_as_such(
    settings: Settings, clear_probes: None
) -> None:
    """OpenAI's own API and Ollama answer chats but cannot score a given text."""
    with serve_chat(lambda m, n: "Fine.") as server:
        llm = _remote(settings, server.base_url)
        llm.warm_up()  # probes, and does not fail: the server can still answer
        assert "".join(llm.stream([{"role": "user", "content": "Hi"}], max_new_tokens=8,
                                  temperature=0.0)) == "Fine."  # fmt: skip
        assert isinstance(llm, LogProbScorer)
        with pytest.raises(LogProbsUnsupportedError, match="cannot score a given text") as info:
            llm.logprobs([[{"role": "user", "content": "Hi"}]], ["Fine."])
        message = str(info.value)
        assert "prompt_logprobs" in message and "decoder_input_details" in message
        assert "/tokenize: HTTP 404" in message and "tgi: HTTP 404" in message
        probes = [r["path"] for r in server.requests]
    # probed once, at warm-up: the failing call did not ask again
    assert probes.count("/tokenize") == 1
    # with attribution off nothing is probed: the server sees only the chat
    _PROBED.clear()
    with serve_chat(lambda m, n: "Fine.") as server:
        llm = _remote(settings.model_copy(update={"attribution": "off"}), server.base_url)
        llm.warm_up()
        "".join(llm.stream([{"role": "user", "content": "Hi"}], max_new_tokens=8, temperature=0))
        assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]


def test_a_server_that_is_down_is_not_remembered_as_unable(
    settings: Settings, clear_probes: None
) -> None:
    with serve_chat(lambda m, n: "Fine.") as server:
        url = server.base_url
    llm = _remote(settings, url)
    llm.warm_up()  # nothing listens: warm-up still succeeds (the chat call reports it)
    with pytest.raises(ModelUnavailableError, match="cannot be reached") as info:
        llm.logprobs([[{"role": "user", "content": "Hi"}]], ["Fine."])
    assert not isinstance(info.value, LogProbsUnsupportedError)
    # a server that is down or restarting may answer later: the attribution queue retries
    assert isinstance(info.value, ModelServerBusyError)
    assert not _PROBED


@pytest.mark.slow
def test_server_logprobs_and_attribution_match_in_process(
    library: Settings, packaged_llm: LLM, clear_probes: None
) -> None:
    """Each contract gives the in-process log-probabilities, and leave-one-out attribution
    through the server gives the in-process scores and ranking."""
    assert isinstance(packaged_llm, LogProbScorer)
    sources = source_sentences(HITS)
    targets = answer_targets(ANSWER)
    template = load_template(library.prompt_template)
    local = CachedScorer(AnswerScorer(packaged_llm, template, QUESTION, HITS, sources, targets))
    # the full context, and without each source sentence: leave-one-out's rows
    masks = np.ones((len(sources) + 1, len(sources)), dtype=bool)
    masks[np.arange(1, len(sources) + 1), np.arange(len(sources))] = False
    expected = local(masks)
    dose = next(s.index for s in sources if "zorbamycin" in s.text)
    # not trivially equal: removing the dose sentence lowers the answer's probability
    assert expected[0, 0] - expected[dose + 1, 0] > 1.0
    engine = ModelEngine(packaged_llm)
    for features, mode, rows in (
        (frozenset({"tokenize", "prompt_logprobs", "echo", "tgi"}), "vllm_prompt_logprobs", None),
        (frozenset({"tokenize", "echo"}), "vllm_echo", [0, dose + 1]),
        (frozenset({"tgi"}), "tgi", [0, dose + 1]),
    ):
        with serve_chat(_no_chat, engine=engine, features=features) as server:
            remote_llm = _remote(library, server.base_url)
            assert remote_llm.logprob_mode() == mode
            remote = CachedScorer(
                AnswerScorer(remote_llm, template, QUESTION, HITS, sources, targets)
            )
            picked = masks if rows is None else masks[rows]
            got = remote(picked)
            want = expected if rows is None else expected[rows]
            assert got.shape == want.shape == (len(picked), len(targets))
            assert np.abs(got - want).max() < TOLERANCE, (mode, np.abs(got - want).max())
            if rows is None:
                a = make_attributor("loo").attribute(local, len(sources), len(targets))
                b = make_attributor("loo").attribute(remote, len(sources), len(targets))
                # a loo score sums, over the two sentences, a difference of two rows
                assert np.abs(a.scores - b.scores).max() < 4 * TOLERANCE, (a.scores, b.scores)
                assert b.top(1) == a.top(1) == [dose]
            paths = {r["path"] for r in server.requests}
        assert ("/generate" if mode == "tgi" else "/v1/completions") in paths
        assert "/v1/chat/completions" not in paths


@pytest.mark.slow
def test_a_server_that_cannot_score_leaves_an_attribution_failed_record(
    library: Settings, clear_probes: None
) -> None:
    """The app's path (services.ask, then services.ask.attribute) with the model on a server
    that only chats: the answer is given and recorded, and its attribution_failed record says
    why. (The scoring itself is compared with in-process above, through the same AnswerScorer
    that attribute_answer uses.)"""
    from assistant.pipeline import Assistant
    from audit.record import open_log
    from core.types import Actor
    from services import ask as ask_service

    actor = Actor("carol", "clinician")
    question = "At what age should average-risk adults start colorectal cancer screening?"
    text = "Average-risk adults should start colorectal cancer screening at age 45 [1]."
    with serve_chat(lambda m, n: text) as server:
        settings = library.model_copy(
            update={
                "llm": "openai",
                "llm_model": "smollm2-135m",
                "llm_base_url": server.base_url,
                "attribution": "loo",
            }
        )
        plain = Assistant(settings)
        answer = ask_service.ask(plain, actor, question)
        assert not answer.abstained and answer.audit_id is not None
        with pytest.raises(LogProbsUnsupportedError):
            ask_service.attribute(plain, actor, answer)
    assert answer.attribution is None
    head = open_log(library).head()
    assert head is not None and head.event == "attribution_failed"
    assert head.payload["answer_id"] == answer.audit_id
    assert "cannot score a given text" in head.payload["reason"]


CACHE_TOLERANCE = 1e-4  # nats: a cached prefix changes only the order of float32 sums


@pytest.mark.slow
def test_the_servers_prefix_cache_gives_the_uncached_scores(
    library: Settings, packaged_llm: LLM, clear_probes: None
) -> None:
    """The model server's optional prefix cache (what benchmarks/cluster.py runs with) scores an
    attribution exactly as the independent path does, and is used: the adapter sends the full
    prompt first, so every later row of the attribution starts from a kept prefix."""
    from audit.attribution import faithfulness

    sources = source_sentences(HITS)
    targets = answer_targets(ANSWER)
    template = load_template(library.prompt_template)
    results = {}
    engines = {"plain": ModelEngine(packaged_llm), "cached": ModelEngine(packaged_llm, 4)}
    for name, engine in engines.items():
        with serve_chat(_no_chat, engine=engine) as server:
            remote = CachedScorer(
                AnswerScorer(_remote(library, server.base_url), template, QUESTION, HITS,
                             sources, targets)
            )  # fmt: skip
            # the app's path: hierarchical attribution, then its faithfulness check
            result = make_attributor("hierarchical").attribute(remote, len(sources), len(targets))
            check = faithfulness(remote, result, k=min(3, len(sources)))
            results[name] = (result, check, remote.misses)
    (plain, plain_check, rows), (cached, cached_check, cached_rows) = results.values()
    assert rows == cached_rows and rows >= 8
    assert np.abs(plain.scores - cached.scores).max() < CACHE_TOLERANCE
    assert np.abs(plain.per_target - cached.per_target).max() < CACHE_TOLERANCE
    for field in ("top_k_drop", "random_drop", "context_reliance"):
        a, b = getattr(plain_check, field), getattr(cached_check, field)
        assert abs(a - b) < CACHE_TOLERANCE * len(targets), (field, a, b)
    stats = engines["cached"].stats
    # each scored prompt once (the probe's too); only the first attribution row starts cold
    assert stats["prompts"] == engines["plain"].stats["prompts"] == rows + 1
    assert stats["hits"] == rows - 1, stats
    assert engines["plain"].stats["cached_tokens"] == 0
    assert stats["cached_tokens"] > 0.5 * stats["tokens"], stats


@pytest.mark.slow
def test_a_prefix_cache_hit_reads_each_token_after_the_prefix_afresh(packaged_llm: LLM) -> None:
    """Per token: a prompt that shares a prefix with a kept one gets the uncached
    log-probabilities everywhere, the first differing token included (its position's
    distribution is shared, the token read from it is not); the LRU keeps the N most recently
    used, a prefix it lent counting as used."""
    plain, cached = ModelEngine(packaged_llm), ModelEngine(packaged_llm, 2)
    base = plain.encode(" ".join(h.chunk.text for h in HITS), False)
    other = [*base[:30], *plain.encode(" The pharmacy closes at noon.", False)]
    common = next(i for i, (a, b) in enumerate(zip(base, other, strict=False)) if a != b)
    assert common >= 30
    for ids in (base, other, other, base[:20]):
        want, want_tops = plain.score(ids, 2)
        got, got_tops = cached.score(ids, 2)
        assert got[0] is None and want[0] is None and len(got) == len(want) == len(ids)
        diff = max(abs(float(a) - float(b)) for a, b in zip(got[1:], want[1:], strict=True))  # type: ignore[arg-type]
        assert diff < 1e-4
        assert [set(t) for t in got_tops] == [set(t) for t in want_tops]
    assert cached.stats["hits"] == 3 and plain.stats["hits"] == 0
    # other from base's prefix, other again (all but its last token), base[:20] from base
    assert cached.stats["cached_tokens"] == (common - 1) + (len(other) - 1) + 19
    assert [e.ids for e in cached._scored] == [base, base[:20]]


def test_the_model_server_stops_scoring_for_a_client_that_has_gone() -> None:
    """A scorer that timed out does not leave the server computing its other prompts (vLLM
    aborts a request whose client disconnects): in the 20-user cluster run the abandoned
    requests held up everyone else's."""
    import time
    from types import SimpleNamespace

    import httpx
    import torch

    class SlowModel:
        device = "cpu"

        def __call__(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
            time.sleep(0.3)
            return SimpleNamespace(logits=torch.zeros(1, input_ids.shape[1], 8), cache=None)

    fake = SimpleNamespace(warm_up=lambda: None, _tokenizer=None, _model=SlowModel())
    engine = ModelEngine(fake)
    engine.piece = lambda token: "x"  # type: ignore[method-assign]
    body = {"model": "m", "prompt": [[1, 2, 3]] * 10, "max_tokens": 1, "prompt_logprobs": 0}
    with serve_chat(_no_chat, engine=engine) as server:
        # a client that waits gets its reply
        reply = httpx.post(f"{server.base_url}/completions", json={**body, "prompt": [[1, 2]]})
        assert reply.status_code == 200 and len(reply.json()["choices"]) == 1
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/completions", json=body, timeout=0.45)
        time.sleep(1.5)  # what the server does after the client has gone
    assert engine.stats["aborted_prompts"] >= 7, engine.stats
    assert engine.stats["prompts"] <= 1 + 3, engine.stats
