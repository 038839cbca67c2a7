"""First start under concurrency: what clinrag builds on first use (the converted LLM, the
keyword index) is built once, by one process, and never seen half-written.

The fast tests race :func:`core.publish.publish_dir` itself with threads and processes and
kill a builder; the slow ones start real ``clinrag ask`` processes on a fresh home that shares
nothing with the session's model cache, which is the point: they convert the packaged GGUF.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.publish import MARKER, exclusive, is_published, publish_dir, published_meta

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What blood pressure defines stage 1 hypertension?"

# ---------------------------------------------------------------- publish_dir, fast


def _slow_build(counter: list[int], delay: float = 0.2) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        counter.append(1)
        (tmp / "part-1.bin").write_bytes(b"x" * 1000)
        time.sleep(delay)  # long enough that every racer arrives while it runs
        (tmp / "sub").mkdir()
        (tmp / "sub" / "part-2.bin").write_bytes(b"y" * 10)

    return build


def test_threads_racing_build_once_and_all_find_it_complete(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "thing"
    builds: list[int] = []
    results: list[bool] = []
    errors: list[BaseException] = []
    build = _slow_build(builds)

    def racer() -> None:
        try:
            results.append(publish_dir(target, build, what="building the thing"))
            # whoever returns sees the whole build, never a part of it
            assert (target / "sub" / "part-2.bin").read_bytes() == b"y" * 10
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(builds) == 1
    assert sorted(results) == [False] * 7 + [True]
    assert is_published(target)
    # nothing but the target and its lock file is left beside it
    assert sorted(p.name for p in target.parent.iterdir()) == [".thing.lock", "thing"]


RACE_CHILD = """
import sys, time
from pathlib import Path
from core.publish import publish_dir

target, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))

def build(tmp):
    (tmp / "weights.bin").write_bytes(b"w" * 100_000)
    time.sleep(0.5)
    (tmp / "config.json").write_text("{}")

print(publish_dir(target, build, what="building the thing", meta={"by": sys.argv[3]}))
"""


def test_processes_racing_build_once(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    start = time.time() + 2.0  # all children are running (imports done) before it
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_CHILD, str(target), str(start), str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    built = [out.strip() for out, _ in outs]
    assert sorted(built) == ["False", "False", "False", "True"]
    # the three that waited said so, on stderr
    waited = [err for _, err in outs if "Waiting for another process" in err]
    assert len(waited) == 3, [err for _, err in outs]
    meta = published_meta(target)
    assert meta is not None and meta["by"] == str(built.index("True"))
    assert (target / "weights.bin").stat().st_size == 100_000


def test_a_waiting_process_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "thing"
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with exclusive(target, "building the thing"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(10)
    threading.Timer(0.3, release.set).start()
    with caplog.at_level(logging.WARNING, logger="clinrag.publish"):
        assert publish_dir(target, lambda tmp: (tmp / "f").write_text("1"), what="doing X")
    thread.join()
    assert "Waiting for another process to finish doing X" in caplog.text


KILLED_CHILD = """
import os, sys, time
from pathlib import Path
from core.publish import publish_dir

def build(tmp):
    (tmp / "weights.bin").write_bytes(b"w" * 1000)
    print("building", flush=True)
    time.sleep(600)

publish_dir(Path(sys.argv[1]), build, what="building the thing")
"""


def test_a_builder_killed_mid_build_leaves_nothing_taken_for_finished(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "building"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers and not target.exists() and not is_published(target)
    # the next process is not blocked by the dead one's lock, builds, and sweeps its remains
    builds: list[int] = []
    assert publish_dir(target, _slow_build(builds, 0.0), what="building the thing")
    assert builds == [1] and is_published(target)
    assert not any(p.exists() for p in leftovers)


def test_a_half_written_folder_under_the_final_name_is_rebuilt(tmp_path: Path) -> None:
    # what the old conversion left when two processes raced: the final name, a marker of its
    # own, a config and a tokenizer, and no weights
    target = tmp_path / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
    target.mkdir()
    (target / "clinrag-converted.json").write_text("{}")
    (target / "config.json").write_text("{}")
    assert not is_published(target)
    assert publish_dir(
        target, lambda tmp: (tmp / "model.safetensors").write_bytes(b"m" * 64), what="x"
    )
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "model.safetensors"]
    assert not any(".old-" in p.name for p in tmp_path.iterdir())


def test_a_file_truncated_after_publication_is_not_complete(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    publish_dir(target, _slow_build([], 0.0), what="x")
    assert is_published(target)
    (target / "part-1.bin").write_bytes(b"x" * 10)
    assert not is_published(target)
    (target / "part-1.bin").unlink()
    assert not is_published(target)


def test_a_failed_build_leaves_nothing_and_releases_the_lock(tmp_path: Path) -> None:
    target = tmp_path / "thing"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("h")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_dir(target, broken, what="x")
    assert [p.name for p in tmp_path.iterdir()] == [".thing.lock"]
    assert publish_dir(target, _slow_build([], 0.0), what="x")


def test_keyword_index_versions_race_and_prune(tmp_path: Path) -> None:
    from core.backends.bm25 import BM25Index

    settings = load_settings(env={"CLINRAG_HOME": str(tmp_path / "home")})
    items = [("a", "aspirin for primary prevention"), ("b", "influenza vaccination adults")]
    calls: list[int] = []

    def items_fn() -> list[tuple[str, str]]:
        calls.append(1)
        time.sleep(0.2)
        return items

    indexes = [BM25Index(settings) for _ in range(6)]
    errors: list[BaseException] = []

    def load(index: BM25Index) -> None:
        try:
            index.load_or_build("1:abc", items_fn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1
    assert all(i.search("aspirin", 1)[0][0] == "a" for i in indexes)
    root = settings.cache_dir / "bm25" / settings.collection
    # a new version keeps the previous one (a process may be loading it) and drops older ones
    for version in ("2:abc", "3:abc"):
        BM25Index(settings).load_or_build(version, lambda: items)
    kept = sorted(p.name for p in root.iterdir())
    assert kept == sorted([BM25Index(settings)._folder(v).name for v in ("2:abc", "3:abc")])


# ------------------------------------------------- real clinrag processes on a fresh home


def _fresh_home(library: Settings, home: Path) -> Path:
    """The library's documents and index, without anything built on first use: no model
    cache (not even a link to the session's), no keyword index, no audit log or keys."""
    ignore = shutil.ignore_patterns("audit*", "keys", "models", "cache", "*.lock", "*.owner")
    shutil.copytree(library.home, home, ignore=ignore)
    return home


def _ask_env(home: Path) -> dict[str, str]:
    # A drafted answer: `clinrag ask` loads (so first converts) the model only when an answer
    # needs it, and a quoted one does not.
    return {
        **os.environ,
        "CLINRAG_HOME": str(home),
        "CLINRAG_ATTRIBUTION": "off",
        "CLINRAG_ANSWER_STYLE": "generated",
        "CLINRAG_MAX_NEW_TOKENS": "8",
    }


def _ask(home: Path, user: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ui.cli.main", "ask", QUESTION, "--json", "--user", user],
        cwd=REPO,
        env=_ask_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tail(stderr: str) -> str:
    """The end of a process's stderr without its progress bars, which hide the traceback."""
    lines = [line for line in stderr.splitlines() if "it/s]" not in line and "s/it]" not in line]
    return "\n".join(lines[-30:])


def _converted(home: Path) -> list[Path]:
    """The model conversions under the final name. Not the embedder's ONNX export, which a CPU
    without native bf16 also builds on first use (``embedder_backend = auto``) under its own
    folder and publish lock."""
    models = home / "models"
    if not models.is_dir():
        return []
    return [p for p in models.iterdir() if not p.name.startswith(".") and p.name != "embedder-onnx"]


def _kill_during_conversion(home: Path) -> list[Path]:
    """Start one ``clinrag ask`` and kill -9 it once the conversion has started writing its
    private folder; returns what it left there."""
    models = home / "models"
    victim = _ask(home, "victim")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and victim.poll() is None:
            tmps = [p for p in models.glob(".*.tmp-*")] if models.is_dir() else []
            if any(any(t.iterdir()) for t in tmps):
                break
            time.sleep(0.05)
        assert victim.poll() is None, "the process ended before it was killed"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    assert not _converted(home), "a killed conversion left a folder under the final name"
    leftovers = list(models.glob(".*.tmp-*"))
    assert leftovers
    return leftovers


# Clinicians asking at once on a fresh home. Four race for the conversion as eight do (one
# converts, the rest wait) at half the test's time on two cores; the benchmark's eight:
# FIRST_START_PROCESSES=8 (docs/benchmarks.md).
PROCESSES = int(os.environ.get("FIRST_START_PROCESSES", "4"))


@pytest.mark.slow
def test_kill_during_conversion_then_concurrent_processes_all_answer(
    library: Settings, tmp_path: Path
) -> None:
    """A hospital's first morning after a crash: a conversion killed half-way, then several
    clinicians asking at once on the fresh home. One conversion in all (each conversion costs
    tens of seconds, so the killed start and the race share one test)."""
    from audit.record import open_log as audit_log

    home = _fresh_home(library, tmp_path / "fresh")
    leftovers = _kill_during_conversion(home)

    started = time.perf_counter()
    procs = [_ask(home, f"user{i}") for i in range(PROCESSES)]
    outs = [p.communicate(timeout=900) for p in procs]
    elapsed = time.perf_counter() - started
    failed = [
        (p.returncode, _tail(err)) for p, (_, err) in zip(procs, outs, strict=True) if p.returncode
    ]
    assert not failed, failed
    answers = [json.loads(out) for out, _ in outs]
    ids = [a["audit_id"] for a in answers]
    assert len(set(ids)) == PROCESSES
    # one conversion, published once, seen complete by all; the others said they waited;
    # the killed one's remains are swept
    assert [p.name for p in _converted(home)] == ["SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"]
    assert is_published(_converted(home)[0])
    assert not [p for p in (home / "models").iterdir() if ".tmp" in p.name or ".old-" in p.name]
    assert not any(p.exists() for p in leftovers)
    assert sum("Waiting for another process" in err for _, err in outs) >= 1
    # processes appending at once keep one valid chain, every answer recorded once
    log = audit_log(library.model_copy(update={"home": home}))
    result = log.verify()
    assert result.ok, result.reason
    recorded = log.list(event="answer")
    assert sorted(ids) == sorted(r.seq for r in recorded)
    assert {r.user for r in recorded} == {f"user{i}" for i in range(PROCESSES)}
    log.close()
    print(f"{PROCESSES} concurrent first starts after a killed conversion: {elapsed:.1f} s")
