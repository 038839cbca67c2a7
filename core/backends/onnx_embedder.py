"""ONNX Runtime adapter for the embedder: the sentence-transformers model exported to ONNX from
its own local weights on first use, quantized to int8, and cached under CLINRAG_HOME.

The only module that imports onnxruntime (and onnx, through its quantizer). On a CPU without
native bfloat16 the int8 graph embeds about 3x faster than torch float32 (docs/benchmarks.md).

The export (:func:`ensure_export`) runs once per home and weights, under the publish lock
(core/publish.py), so concurrent first starts build it once and a killed build is never
mistaken for a finished one. It measures, on :data:`AGREEMENT_SAMPLE`, how close each graph's
vectors are to torch float32 and stores that beside the files and their sha256:

- a graph whose vectors agree within :data:`SAME_VECTORS_MIN_COSINE` (float32 ONNX does, to
  1e-7) keeps the weights' identity, so an index moves freely between it and torch;
- one that differs more (int8: mean cosine ~0.994) gets an identity of its own, so an index
  built one way is refused, not silently queried, the other way (EmbedderMismatchError);
- ``embedder_backend = auto`` uses int8 only when it also meets the quality bar
  (:data:`INT8_MIN_MEAN_COSINE`, :data:`INT8_MIN_COSINE`), checked against MedQuAD retrieval by
  ``benchmarks/retrieval.py --embedder-backends``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.errors import ConfigError, ModelUnavailableError
from core.publish import publish_dir
from core.types import EmbedderInfo

if TYPE_CHECKING:
    from core.config import Settings

Precision = Literal["int8", "float32"]

# Bump when the export or the quantization changes what vectors come out: the cache folder
# and the int8 identity both carry it, so an index built by an older recipe is not reused.
# 2: eager attention traced (no per-layer mask Where/IsNaN of the SDPA decomposition), fused
# by ONNX Runtime's transformer optimizer (Attention, SkipLayerNorm, BiasGelu), Attention
# quantized too; batches capped by tokens. int8 vectors differ from recipe 1 within int8 noise.
RECIPE = 2
EXPORT_FILE = "export.json"
FILES: dict[Precision, str] = {"float32": "model.fp32.onnx", "int8": "model.int8.onnx"}
# Rows per ONNX run are capped so a batch holds at most this many tokens (rows x padded
# width), keeping activations in the CPU caches: on the AVX2 box, one thread, 64 rows of ~130
# tokens took ~1.3x the CPU time of 16-row batches; with two threads the gain was within the
# noise of a loaded machine (docs/benchmarks.md), so the cap is kept moderate.
BATCH_TOKENS = 2048
# Vectors this close to torch float32 (minimum cosine over the sample) are the same vectors:
# bf16 torch reaches 0.99992, float32 ONNX 0.9999999. Below it the identity changes.
SAME_VECTORS_MIN_COSINE = 0.9995
# int8 is good enough for retrieval at these agreements (measured: mean 0.994, min 0.983 on
# PubMedQA chunks; MedQuAD recall@5 in docs/benchmarks.md). Per-channel weights matter:
# per-tensor int8 gave mean 0.951, min 0.878.
INT8_MIN_MEAN_COSINE = 0.99
INT8_MIN_COSINE = 0.97

# A fixed sample for the agreement check: clinical sentences of the lengths the library holds,
# from a few words to past the 256-token window (truncation must match too).
AGREEMENT_SAMPLE: tuple[str, ...] = (
    "Hypertension",
    "What blood pressure defines stage 1 hypertension?",
    "Metformin is the preferred initial pharmacologic agent for type 2 diabetes.",
    "Do not use NSAIDs in patients with an eGFR below 30 mL/min/1.73 m2.",
    "Offer a statin to adults aged 40 to 75 with an LDL cholesterol of 190 mg/dL or higher.",
    "Children with acute otitis media and severe symptoms should receive amoxicillin.",
    "Screen for depression in all adults, with systems in place for accurate diagnosis.",
    "Anticoagulation with a DOAC is recommended over warfarin in eligible patients with AF.",
    "Is tailored telephone counseling more effective than print materials for mammography?",
    "Sepsis bundles: measure lactate, obtain blood cultures, give broad-spectrum antibiotics.",
    "The HbA1c target for most non-pregnant adults is below 7% (53 mmol/mol).",
    "Low-dose aspirin is not recommended for primary prevention in adults over 70 years.",
    "Asthma: add an inhaled corticosteroid when a SABA is needed more than twice a week.",
    "Heart failure with reduced ejection fraction: ACE inhibitor or ARNI, beta-blocker, MRA, "
    "and an SGLT2 inhibitor, titrated to target doses as tolerated.",
    "Colorectal cancer screening should begin at age 45 for adults at average risk.",
    "Tuberculosis infection: 3 months of weekly isoniazid plus rifapentine (3HP).",
    "Guidelines > Chronic kidney disease > Blood pressure: aim for a systolic pressure "
    "below 120 mm Hg when tolerated, measured with standardized office technique.",
    "Patients who received a mechanical heart valve require lifelong warfarin; DOACs are "
    "contraindicated.",
    "Vitamin D supplementation does not prevent fractures in community-dwelling adults.",
    "Acute low back pain: advise staying active; imaging is not indicated without red flags.",
    "Retrospective cohort of 1,204 patients; median follow-up 5.2 years (IQR 3.1-7.4); "
    "hazard ratio 0.82 (95% CI 0.70-0.96; p = 0.01).",
    "Does preoperative anemia predict 30-day mortality after noncardiac surgery?",
    "Pregnant women should be offered influenza vaccination in any trimester.",
    "Lithium levels should be checked 12 hours after the last dose.",
    "¿Cuál es la dosis de paracetamol en niños? Fièvre, douleur: 15 mg/kg toutes les 6 h.",
    "Community-acquired pneumonia in outpatients without comorbidities: amoxicillin 1 g "
    "three times daily, or doxycycline, or a macrolide where pneumococcal resistance is low.",
    "Stroke: intravenous thrombolysis within 4.5 hours of onset in eligible patients.",
    "Osteoporosis screening with DXA is recommended for women aged 65 years and older.",
    # past the model's window: both sides must cut at the same token
    " ".join(
        [
            "Background: chronic obstructive pulmonary disease causes persistent respiratory "
            "symptoms and airflow limitation due to airway and alveolar abnormalities."
        ]
        * 12
    ),
    "Methods: we randomised 312 adults with moderate persistent asthma to budesonide-"
    "formoterol as needed or maintenance budesonide plus terbutaline as needed, and compared "
    "severe exacerbation rates over 52 weeks. Results: the annualised rate was 0.119 versus "
    "0.172 (rate ratio 0.69; 95% CI 0.48-1.00). Conclusions: as-needed budesonide-formoterol "
    "was non-inferior, with lower steroid exposure.",
)

log = logging.getLogger("clinrag.onnx")
_session_lock = threading.Lock()


def export_dir(models_dir: Path, model_dir: Path, base_hash: str) -> Path:
    """Where the export of these weights lives: its name carries their hash and the recipe."""
    return models_dir / "embedder-onnx" / f"{model_dir.name}-{base_hash[:16]}-r{RECIPE}"


def check_exportable(model_dir: Path) -> None:
    """Raise ConfigError unless the folder is a model this adapter reproduces exactly: a
    Transformer, mean pooling, Normalize (what all-MiniLM-L6-v2 is), with a fast tokenizer."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_path = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((model_dir / pooling_path / "config.json").read_text("utf-8"))
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise ConfigError(f"{model_dir} is not a sentence-transformers model folder.") from exc
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if kinds != ["Transformer", "Pooling", "Normalize"] or modes != {"pooling_mode_mean_tokens"}:
        raise ConfigError(
            f"The ONNX embedder reproduces Transformer + mean pooling + Normalize models only; "
            f"{model_dir} is {kinds} with {sorted(modes)}. Use embedder_backend = torch."
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise ConfigError(f"{model_dir} has no tokenizer.json; use embedder_backend = torch.")


def ensure_export(model_dir: Path, base_hash: str, models_dir: Path) -> dict[str, Any]:
    """The export record of these weights (files, their sha256, agreement with torch float32),
    exporting and quantizing them first if this home has none yet."""
    check_exportable(model_dir)
    target = export_dir(models_dir, model_dir, base_hash)
    publish_dir(
        target,
        lambda tmp: _build(model_dir, base_hash, tmp),
        what="exporting the embedding model to ONNX",
        meta={"base_hash": base_hash, "recipe": RECIPE},
    )
    record: dict[str, Any] = json.loads((target / EXPORT_FILE).read_text(encoding="utf-8"))
    record["folder"] = str(target)
    return record


def int8_meets_quality(record: dict[str, Any]) -> bool:
    agreement = record["agreement"]["int8"]
    return bool(agreement["mean"] >= INT8_MIN_MEAN_COSINE and agreement["min"] >= INT8_MIN_COSINE)


def same_vectors(record: dict[str, Any], precision: Precision) -> bool:
    return bool(record["agreement"][precision]["min"] >= SAME_VECTORS_MIN_COSINE)


def identity_hash(base_hash: str, precision: Precision, record: dict[str, Any]) -> str:
    """The weights' own hash when the graph gives their vectors, a derived one otherwise.

    Derived from the weights, the precision and the recipe, not from the ONNX bytes: two
    machines exporting the same weights with the same recipe build interchangeable indexes
    even if their torch versions serialise the graph differently."""
    if same_vectors(record, precision):
        return base_hash
    return hashlib.sha256(f"{base_hash}:onnx-{precision}:recipe-{RECIPE}".encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build(model_dir: Path, base_hash: str, tmp: Path) -> None:
    """Export float32, quantize to int8, measure both against torch float32, into ``tmp``."""
    import torch
    from sentence_transformers import SentenceTransformer

    # eager attention traces to matmul + additive mask + softmax, which ONNX Runtime fuses
    # into one Attention op; SDPA's decomposition adds mask Where/IsNaN passes per layer
    # (13% of int8 time on the AVX2 box). Same vectors (the agreement check measures it).
    model = SentenceTransformer(
        str(model_dir),
        device="cpu",
        local_files_only=True,
        model_kwargs={"dtype": torch.float32, "attn_implementation": "eager"},
    )
    reference = np.asarray(
        model.encode(list(AGREEMENT_SAMPLE), convert_to_numpy=True, show_progress_bar=False),
        dtype=np.float32,
    )
    reference /= np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    traced = tmp / "traced.onnx"
    _export(model, traced)
    fused = _fuse(traced, tmp / FILES["float32"], model[0].auto_model.config)
    traced.unlink()
    _quantize(tmp / FILES["float32"], tmp / FILES["int8"])
    tokenizer = _tokenizer(str(model_dir))
    agreement: dict[str, dict[str, float]] = {}
    for precision, name in FILES.items():
        session = _session(str(tmp / name))
        vectors = _embed(session, tokenizer, AGREEMENT_SAMPLE, batch_size=8)
        cosines = np.sum(vectors * reference, axis=1)
        agreement[precision] = {"min": float(cosines.min()), "mean": float(cosines.mean())}
    import onnxruntime

    record = {
        "recipe": RECIPE,
        "base_hash": base_hash,
        "files": {p: {"file": n, "sha256": _file_sha256(tmp / n)} for p, n in FILES.items()},
        "agreement": agreement,
        "sample_size": len(AGREEMENT_SAMPLE),
        "fused": fused,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    log.info("Exported the embedder to ONNX: agreement with float32 %s", agreement)


def _export(model: Any, path: Path) -> None:
    """Trace the transformer plus mean pooling (sentence-transformers' Pooling, exactly:
    masked sum over tokens divided by the token count clamped at 1e-9); normalisation stays
    in numpy, in float32, as the torch path does it."""
    import torch

    transformer = model[0].auto_model.eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: Any, attention_mask: Any, token_type_ids: Any
        ) -> Any:  # pragma: no cover - traced, not called
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)

    # two texts of different lengths: the trace sees padding, so nothing is specialised to
    # an unpadded batch
    example = model.tokenizer(
        ["clinical guideline", "a longer example sentence for the trace"],
        padding=True,
        return_tensors="pt",
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}
    # the tracer warns about Python branches on shapes; the example batch takes the general
    # branch (padded, non-causal), and the agreement check below verifies the result
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            MeanPooled(),
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _fuse(source: Path, dest: Path, config: Any) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer, offline fusions only (opt_level 0: the file stays
    hardware-independent): embedding + LayerNorm, Attention, SkipLayerNorm, BiasGelu. Returns
    the count of each fused op; a graph it does not recognise is saved unfused, and the
    agreement check judges the result either way."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=0,
    )
    model.save_model_to_file(str(dest))
    stats = model.get_fused_operator_statistics()
    return {op: int(n) for op, n in stats.items() if n}


def _quantize(source: Path, dest: Path) -> None:
    """int8 weights per output channel, activations quantized per batch at run time; only the
    linear layers (MatMul with a constant weight, and the fused Attention's Q/K/V projection),
    never the attention products."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # the quantizer logs a pre-processing suggestion on the root logger on every call
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(source),
            str(dest),
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            # the fused contrib ops defeat ONNX shape inference; their outputs are float32
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
        )
    finally:
        root.setLevel(level)


@cache
def _tokenizer(model_dir: str) -> Any:
    """The model's own fast tokenizer, set as sentence-transformers sets it: truncation at the
    model's max_seq_length (256 for MiniLM), no padding here (batches are padded by length)."""
    from tokenizers import Tokenizer

    folder = Path(model_dir)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    max_len = 512
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((folder / "sentence_bert_config.json").read_text("utf-8"))
        max_len = int(config.get("max_seq_length") or max_len)
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    return tokenizer


@cache
def _session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # one pool of the CPUs this process may use, as torch sizes its own
    options.intra_op_num_threads = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    )
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Row indices, longest texts first, in batches of at most ``batch_size`` rows and
    ``max_tokens`` padded tokens (at least one row each)."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)  # the longest of the batch: sorted
        rows = max(1, min(batch_size, max_tokens // width))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def _embed(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_tokens: int = BATCH_TOKENS,
) -> np.ndarray:
    """Unit vectors, in the order given. Texts are stripped (as sentence-transformers does),
    grouped by token count so a batch pads little, and run in batches of at most
    ``batch_size`` rows and ``max_tokens`` tokens."""
    encodings = tokenizer.encode_batch([t.strip() for t in texts])
    lengths = np.array([len(e.ids) for e in encodings])
    out: np.ndarray | None = None
    for rows in _batches(lengths, batch_size, max_tokens):
        width = int(lengths[rows].max())
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            e = encodings[r]
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        (pooled,) = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        )
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled
    assert out is not None
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class OnnxEmbedder:
    """The embedder through ONNX Runtime; ``precision`` int8 (default) or float32.

    Registered as ``onnx``; ``embedder_backend = onnx-int8 | onnx-fp32`` (or auto) reaches it
    through the sentence_transformers embedder, which resolves the backend."""

    def __init__(self, settings: Settings, precision: Precision = "int8") -> None:
        self._model_setting: str = settings.embedder_model
        self._models_dir: Path = settings.models_dir
        self._batch_size: int = settings.embed_batch_size
        self._precision: Precision = precision
        self._session: Any = None
        self._tokenizer: Any = None
        self._info: EmbedderInfo | None = None
        self.record: dict[str, Any] | None = None

    def _model_dir(self) -> Path:
        from core.backends.sentence_transformers import packaged_embedder_dir

        if not self._model_setting:
            return packaged_embedder_dir()
        path = Path(self._model_setting).expanduser()
        if not path.is_dir():
            raise ConfigError(f"embedder_model {path} is not a folder.")
        return path

    def prepare(self) -> dict[str, Any]:
        """Export if needed and return the export record, without loading a session."""
        if self.record is None:
            from core.backends.sentence_transformers import cached_weights_hash

            model_dir = self._model_dir()
            self.record = ensure_export(model_dir, cached_weights_hash(model_dir), self._models_dir)
        return self.record

    def warm_up(self) -> None:
        if self._session is not None:
            return
        from core.backends.sentence_transformers import PACKAGED_EMBEDDER_NAME

        record = self.prepare()
        path = Path(record["folder"]) / record["files"][self._precision]["file"]
        expected = record["files"][self._precision]["sha256"]
        if _checked_sha256(str(path)) != expected:
            raise ModelUnavailableError(
                f"The exported embedder {path} does not match the sha256 recorded when it was "
                f"built ({expected[:12]}). Delete the folder {path.parent}; it is rebuilt from "
                "the packaged weights on next use."
            )
        with _session_lock:
            session = _session(str(path))
        model_dir = self._model_dir()
        self._tokenizer = _tokenizer(str(model_dir))
        base = record["base_hash"]
        weights = identity_hash(base, self._precision, record)
        name = PACKAGED_EMBEDDER_NAME if not self._model_setting else model_dir.name
        if weights != base:
            name = f"{name} (onnx-{self._precision})"
        self._info = EmbedderInfo(
            name="onnx",
            model=name,
            weights_hash=weights,
            dim=self._dim(session),
            dtype=self._precision,
        )
        self._session = session

    def _dim(self, session: Any) -> int:
        declared = session.get_outputs()[0].shape[1]
        if isinstance(declared, int):
            return declared
        return int(_embed(session, self._tokenizer, ["dimension"], 1).shape[1])

    @property
    def info(self) -> EmbedderInfo:
        self.warm_up()
        assert self._info is not None
        return self._info

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        self.warm_up()
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        return _embed(self._session, self._tokenizer, texts, self._batch_size)


@cache
def _checked_sha256(path: str) -> str:
    return _file_sha256(Path(path))
