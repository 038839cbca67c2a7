"""The ONNX Runtime embedder: exported from the real packaged MiniLM into a temporary home,
cached and reused, kill-safe, close to torch float32, and an index identity of its own for
int8 so an index built one way is refused the other way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import backends
from core.backends import onnx_embedder
from core.backends import sentence_transformers as st
from core.config import Settings
from core.errors import EmbedderMismatchError, ModelUnavailableError
from core.publish import MARKER, is_published

# these tests are about the export itself, into the homes they name
pytestmark = pytest.mark.own_embedder_export

REPO = Path(__file__).resolve().parents[1]
# not the export's own agreement sample: the check must hold on text it was not measured on
SENTENCES = [
    "Adults with stage 1 hypertension and a 10-year ASCVD risk of 10% or more start drugs.",
    "Screen men aged 65 to 75 who have ever smoked for abdominal aortic aneurysm once.",
    "Influenza vaccine",
    "Inhaled corticosteroids are the cornerstone of persistent asthma control in children "
    "and adults; step up when symptoms occur on more than two days a week.",
    "Is aspirin recommended for the primary prevention of cardiovascular disease at 72?",
    "Breast cancer screening: biennial mammography for women aged 40 to 74 years.",
]


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One home whose export every test reads (exported once for the module)."""
    home = tmp_path_factory.mktemp("onnx-home")
    embedder = st.SentenceTransformerEmbedder(Settings(home=home, embedder_backend="onnx-int8"))
    embedder.warm_up()
    yield home


def _embedder(home: Path, backend: str, **extra: Any) -> st.SentenceTransformerEmbedder:
    return st.SentenceTransformerEmbedder(
        Settings(home=home, embedder_backend=backend, **extra)  # type: ignore[arg-type]
    )


def _export_folder(home: Path) -> Path:
    (folder,) = [
        p for p in (home / "models" / "embedder-onnx").iterdir() if not p.name.startswith(".")
    ]
    return folder


def test_export_is_published_with_hashes_and_reused(
    onnx_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _export_folder(onnx_home)
    assert is_published(folder)
    record = json.loads((folder / onnx_embedder.EXPORT_FILE).read_text())
    base = st.cached_weights_hash(st.packaged_embedder_dir())
    assert record["base_hash"] == base and base[:16] in folder.name
    for entry in record["files"].values():
        assert onnx_embedder._file_sha256(folder / entry["file"]) == entry["sha256"]
    assert record["agreement"]["int8"]["mean"] >= onnx_embedder.INT8_MIN_MEAN_COSINE

    # a second embedder on the same home loads the cache: a rebuild would fail here
    def no_build(*args: object) -> None:
        raise AssertionError("the cached export was rebuilt")

    monkeypatch.setattr(onnx_embedder, "_build", no_build)
    vectors = _embedder(onnx_home, "onnx-int8").embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)


def test_vectors_agree_with_torch_float32_and_identity_follows(onnx_home: Path) -> None:
    torch32 = _embedder(onnx_home, "torch", embedder_dtype="float32")
    int8 = _embedder(onnx_home, "onnx-int8")
    fp32 = _embedder(onnx_home, "onnx-fp32")
    reference = torch32.embed(SENTENCES)
    for embedder, tolerance in ((int8, onnx_embedder.INT8_MIN_COSINE), (fp32, 0.9999)):
        vectors = embedder.embed(SENTENCES)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosines = (vectors * reference).sum(axis=1)
        assert cosines.min() >= tolerance, (embedder.backend, cosines)
    # order is kept although batches are sorted by length
    assert np.allclose(int8.embed(SENTENCES[::-1])[::-1], int8.embed(SENTENCES), atol=1e-5)
    assert int8.embed([]).shape == (0, 384)

    # float32 ONNX gives the same vectors: the same index identity as torch
    assert fp32.info.weights_hash == torch32.info.weights_hash
    # int8 differs beyond the tolerance: an identity of its own, named in the model
    assert int8.info.weights_hash != torch32.info.weights_hash
    assert int8.info.dtype == "int8" and "onnx-int8" in int8.info.model
    assert int8.backend == "onnx-int8" and torch32.backend == "torch"


def _write_library(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bp.md").write_text(
        "# Blood pressure\n\nStage 1 hypertension is a systolic pressure of 130 to 139 mm Hg "
        "or a diastolic pressure of 80 to 89 mm Hg.\n",
        encoding="utf-8",
    )
    return folder


def test_index_built_with_torch_float32_is_refused_with_int8(
    onnx_home: Path, tmp_path: Path
) -> None:
    from assistant.retrieve import Retriever
    from ingest.index import ingest

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(onnx_home / "models", target_is_directory=True)
    torch32 = Settings(home=home, embedder_backend="torch", embedder_dtype="float32")
    summary = ingest([_write_library(tmp_path / "lib")], torch32, progress=False)
    assert summary.chunks > 0
    hits = Retriever(torch32).retrieve("stage 1 hypertension", k=1)
    assert hits and hits[0].chunk.doc_id == "bp"

    # float32 ONNX: same vectors, same identity, the index is used as it is
    fp32 = torch32.model_copy(update={"embedder_backend": "onnx-fp32"})
    assert Retriever(fp32).retrieve("stage 1 hypertension", k=1)[0].chunk.doc_id == "bp"

    int8 = torch32.model_copy(update={"embedder_backend": "onnx-int8"})
    with pytest.raises(EmbedderMismatchError, match="onnx-int8"):
        Retriever(int8).retrieve("stage 1 hypertension")


def test_auto_follows_an_index_built_by_torch_float32(
    onnx_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade on a CPU without bf16: the index was built by torch float32 before the ONNX
    paths existed; auto now prefers int8, whose identity differs, and must follow the index
    (float32 ONNX, same vectors) instead of refusing it."""
    from assistant.retrieve import Retriever
    from ingest.index import ingest

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(onnx_home / "models", target_is_directory=True)
    torch32 = Settings(home=home, embedder_backend="torch", embedder_dtype="float32")
    ingest([_write_library(tmp_path / "lib")], torch32, progress=False)

    monkeypatch.setattr(st, "_cuda_possible", lambda setting: False)
    auto = Settings(home=home)
    assert _embedder(home, "auto").describe_path() == "onnx-int8"
    retriever = Retriever(auto)
    assert retriever.retrieve("stage 1 hypertension", k=1)[0].chunk.doc_id == "bp"
    assert retriever.index.embedder.backend == "onnx-fp32"  # type: ignore[attr-defined]


def test_auto_picks_int8_on_every_cpu(onnx_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU, bf16 or not, auto takes int8: it ingested 2.4x faster than torch bfloat16 on a
    CPU with AVX512-BF16 (docs/benchmarks.md). A GPU or a pinned precision keeps torch."""
    monkeypatch.setattr(st, "_cuda_possible", lambda setting: False)
    monkeypatch.setattr(st, "native_bf16_cpu", lambda: True)
    # a pinned precision keeps torch, whatever the CPU
    assert _embedder(onnx_home, "auto", embedder_dtype="float32").describe_path() == (
        "torch float32"
    )
    # torch's own bf16 check says yes, as on this CPU
    real_resolve = st.resolve_dtype
    monkeypatch.setattr(
        st,
        "resolve_dtype",
        lambda dtype, device="auto": real_resolve(dtype, device) if dtype != "auto" else "bfloat16",
    )
    assert _embedder(onnx_home, "auto").describe_path() == "onnx-int8"
    # bf16 is one setting away
    assert _embedder(onnx_home, "torch").describe_path() == "torch bfloat16"
    # an int8 export below the quality bar: float32 ONNX (same vectors), never int8
    monkeypatch.setattr(onnx_embedder, "int8_meets_quality", lambda record: False)
    assert _embedder(onnx_home, "auto").describe_path() == "onnx-fp32"
    # a GPU: torch, in bf16
    monkeypatch.setattr(st, "_cuda_possible", lambda setting: True)
    assert _embedder(onnx_home, "auto").describe_path() == "torch bfloat16"


def test_registry_names_the_onnx_embedder(onnx_home: Path) -> None:
    embedder = backends.create("embedder", "onnx", Settings(home=onnx_home))
    assert isinstance(embedder, onnx_embedder.OnnxEmbedder)
    assert embedder.info.dtype == "int8"


@pytest.mark.slow  # a real export in a subprocess: torch import and model load, 10-40 s
def test_killed_export_is_never_loaded_and_is_rebuilt(
    onnx_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 in the middle of the real export (after the float32 graph, before int8): no
    folder under the final name; the next start sweeps the leftovers and builds it."""
    models = tmp_path / "models"
    model_dir = st.packaged_embedder_dir()
    base = st.cached_weights_hash(model_dir)
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from core.backends import onnx_embedder as o\n"
        "def die(source, dest):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "o._quantize = die\n"
        f"o.ensure_export(Path({str(model_dir)!r}), {base!r}, Path({str(models)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    target = onnx_embedder.export_dir(models, model_dir, base)
    assert not target.exists()
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.tmp-")]
    assert leftovers and any((p / onnx_embedder.FILES["float32"]).exists() for p in leftovers)

    # the next start builds it (here by copying the module's real export: same files)
    built: list[Path] = []

    def copy_build(model: Path, weights: str, tmp: Path) -> None:
        built.append(tmp)
        for item in _export_folder(onnx_home).iterdir():
            if item.name != MARKER:
                shutil.copy2(item, tmp / item.name)

    monkeypatch.setattr(onnx_embedder, "_build", copy_build)
    record = onnx_embedder.ensure_export(model_dir, base, models)
    assert built and is_published(target) and record["folder"] == str(target)
    assert not any(p.name.startswith(f".{target.name}.tmp-") for p in target.parent.iterdir())

    # truncated after publication: the marker's sizes no longer match, so it is rebuilt
    int8_file = target / onnx_embedder.FILES["int8"]
    with int8_file.open("r+b") as fh:
        fh.truncate(1000)
    onnx_embedder.ensure_export(model_dir, base, models)
    assert len(built) == 2 and int8_file.stat().st_size > 1000


def test_tampered_export_is_refused(onnx_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(onnx_home, home)
    path = _export_folder(home) / onnx_embedder.FILES["int8"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailableError, match="sha256"):
        _embedder(home, "onnx-int8").warm_up()


def test_no_torch_import_when_the_export_is_cached(onnx_home: Path) -> None:
    """The point of the ONNX path for a whole process: embedding loads no torch."""
    script = (
        "import sys\n"
        "from core.backends.sentence_transformers import SentenceTransformerEmbedder\n"
        "from core.config import Settings\n"
        f"e = SentenceTransformerEmbedder(Settings(home={str(onnx_home)!r}, "
        "embedder_backend='onnx-int8'))\n"
        "e.embed(['hello'])\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_export_is_fused_without_per_layer_mask_passes(onnx_home: Path) -> None:
    """The int8 graph runs one quantized Attention per layer: no SDPA mask Where/IsNaN passes
    (13% of int8 time on an AVX2 CPU) and no separate Q/K/V products."""
    import onnx

    folder = _export_folder(onnx_home)
    record = json.loads((folder / onnx_embedder.EXPORT_FILE).read_text())
    assert record["fused"]["Attention"] == 6
    graph = onnx.load(str(folder / onnx_embedder.FILES["int8"]), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QAttention") == 6
    assert "IsNaN" not in ops and ops.count("Where") <= 2


def test_batches_are_capped_by_rows_and_tokens() -> None:
    lengths = np.array([10, 200, 50, 200, 30, 5, 120])
    batches = onnx_embedder._batches(lengths, batch_size=3, max_tokens=400)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    for rows in batches:
        assert 1 <= len(rows) <= 3
        assert len(rows) == 1 or len(rows) * int(lengths[rows].max()) <= 400
    # longest first, so each batch pads to its own first row
    assert [int(lengths[b[0]]) for b in batches] == sorted(
        (int(lengths[b[0]]) for b in batches), reverse=True
    )
    # one text longer than the cap still runs, alone
    assert [len(b) for b in onnx_embedder._batches(np.array([500, 4]), 8, 100)] == [1, 1]
