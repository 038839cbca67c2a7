"""Hostile-file ingestion: 300 corrupted or malicious files through the real CLI.

    .venv/bin/python -m benchmarks.hostile_files

The files are the ones ``tests/test_hostile_files.py`` generates (truncated and broken PDFs,
zip bombs, billion-laughs DOCX, 100,000-deep HTML, 5 MB single lines, bad encodings, NUL
bytes, symlinks out of the folder and in loops, FIFOs, invalid sidecars...), written into a
temporary folder and ingested by ``clinrag ingest FOLDER --json`` in a child process with
a fresh CLINRAG_HOME and the test's limits (max_file_mb=8, max_pages=50,
parse_timeout_s=20). Printed: files by outcome and reason, wall time of the CLI run
(interpreter and model start included), and the child's peak RSS from
``getrusage(RUSAGE_CHILDREN).ru_maxrss``. Outcomes that differ from what the test expects are
listed too. Options: --keep (leave the folder), --json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from core.config import offline_environment

REPO = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    """The test module, loaded by path: the generator lives with the expectations it checks."""
    spec = importlib.util.spec_from_file_location(
        "clinrag_hostile_files", REPO / "tests" / "test_hostile_files.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run(keep: bool) -> dict[str, Any]:
    gen = _generator()
    work = Path(tempfile.mkdtemp(prefix="clinrag-hostile-"))
    try:
        started = time.perf_counter()
        cases = gen.build_hostile_files(work / "lib", work / "outside")
        built_s = time.perf_counter() - started
        size = sum(
            c.path.lstat().st_size for c in cases if c.path.is_file() and not c.path.is_symlink()
        )
        env = {
            **os.environ,
            **offline_environment(),
            "CLINRAG_HOME": str(work / "home"),
            **{f"CLINRAG_{k.upper()}": str(v) for k, v in gen.HOSTILE_SETTINGS.items()},
        }
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "ui.cli.main", "ingest", str(work / "lib"), "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,  # no clinrag.toml from the repository is picked up
            timeout=1800,
        )
        wall_s = time.perf_counter() - started
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if out.returncode not in (0, 1):  # 1 = some files failed, the expected outcome
            raise SystemExit(f"clinrag ingest crashed (rc {out.returncode}):\n{out.stderr[-4000:]}")
        summary = json.loads(out.stdout)
        files = summary["files"]
        reasons = Counter(f["reason"] or "ingested" for f in files)
        return {
            "files": len(cases),
            "bytes_on_disk": size,
            "generate_s": round(built_s, 1),
            "cli_wall_s": round(wall_s, 1),
            "peak_rss_mb": round(peak_rss / 2**20),
            "ingested": summary["added"] + summary["updated"] + summary["unchanged"],
            "failed": summary["failed"],
            "chunks": summary["chunks"],
            "by_reason": dict(reasons.most_common()),
            "unexpected": gen.check_outcomes(cases, files),
            "results_missing": len(cases) - len({f["path"] for f in files}),
            "folder": str(work) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['files']} hostile files ({result['bytes_on_disk'] / 1e6:.0f} MB on disk, "
        f"generated in {result['generate_s']} s)"
    )
    print(
        f"clinrag ingest: {result['cli_wall_s']} s wall, peak RSS {result['peak_rss_mb']} MB, "
        f"{result['ingested']} ingested ({result['chunks']} chunks), {result['failed']} failed"
    )
    width = max(len(r) for r in result["by_reason"])
    for reason, n in result["by_reason"].items():
        print(f"  {reason:<{width}}  {n:>4}")
    if result["results_missing"]:
        print(f"{result['results_missing']} file(s) have no result")
    for line in result["unexpected"]:
        print(f"  UNEXPECTED {line}")
    if result["folder"]:
        print(f"kept: {result['folder']}")


if __name__ == "__main__":
    main()
