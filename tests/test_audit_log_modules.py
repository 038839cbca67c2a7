"""audit.log stays standard-library only, module by module, in the code paths that run.

An auditor verifies a copied log on a machine with nothing but Python, and the log must keep
working when the rest of clinrag cannot import (a broken model install must not silence the
audit trail). So every module of ``audit.log`` is imported, and a log is created, appended to,
verified, backed up and exported, in a fresh interpreter whose import system refuses anything
outside the standard library, except ``audit`` itself and the stdlib-only ``core.migrations``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run as ``python -I -c HARNESS <root>``: -I keeps PYTHON* variables, the user's site folder and
# the working directory out, so only <root> (put first on sys.path below) supplies project code.
HARNESS = r"""
import importlib
import importlib.abc
import io
import json
import pkgutil
import sys
import tempfile
from pathlib import Path

root = Path(sys.argv[1])
sys.path.insert(0, str(root))

ALLOWED_CORE = {"core", "core.migrations"}


def foreign(name):
    top = name.partition(".")[0]
    if top == "core":
        return name not in ALLOWED_CORE
    return top not in sys.stdlib_module_names and top not in ("audit", "__main__")


class RefuseForeign(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if foreign(name):
            raise ImportError(f"audit.log may not import {name!r}: not in the standard library")
        return None


# Modules site loaded from .pth files would otherwise satisfy an import without asking.
for name in [n for n in sys.modules if foreign(n)]:
    del sys.modules[name]
sys.meta_path.insert(0, RefuseForeign())

import audit.log

modules = sorted(m.name for m in pkgutil.iter_modules(audit.log.__path__, "audit.log."))
on_disk = sorted(
    "audit.log." + p.stem for p in (root / "audit" / "log").glob("*.py") if p.stem != "__init__"
)
assert modules == on_disk, (modules, on_disk)
for name in modules:
    importlib.import_module(name)

from audit.log import AuditLog
from audit.log.export import read_jsonl, to_csv, to_fhir, to_jsonl
from audit.log.redact import question_fields

with tempfile.TemporaryDirectory() as tmp:
    home = Path(tmp)
    log = AuditLog(
        home / "audit.sqlite", home / "audit.checkpoint.json", home / "keys" / "audit.key", 2
    )
    for i in range(3):
        payload = {"answer": f"Start metformin {i}.", "abstained": False}
        payload.update(question_fields(f"Dose for MRN 1234567 case {i}?", "redacted"))
        log.append("answer", "dr1", "clinician", payload)
    result = log.verify()
    assert result.ok and result.count == 3, result.reason
    log.backup(home / "backup" / "audit.sqlite")
    jsonl = io.StringIO()
    assert to_jsonl(log.iter_records(), jsonl) == 3
    assert len(list(read_jsonl(io.StringIO(jsonl.getvalue())))) == 3
    assert to_csv(log.list(), io.StringIO()) == 3
    json.dumps(to_fhir(log.iter_records()))
    log.close()

assert "core.migrations" in sys.modules, "appending should have run core.migrations"
leaked = sorted(n for n in sys.modules if foreign(n))
assert not leaked, leaked
print("audit.log modules:", " ".join(modules))
"""


def run_harness(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", HARNESS, str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_log_runs_with_the_standard_library_only() -> None:
    result = run_harness(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit.log.store" in result.stdout and "audit.log.verify" in result.stdout


def copy_audit_log(dest: Path) -> None:
    """What the harness may see: the audit package and the one core module it may use."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "audit" / "log", dest / "audit" / "log", ignore=ignore)
    shutil.copy(REPO / "audit" / "__init__.py", dest / "audit" / "__init__.py")
    (dest / "core").mkdir()
    shutil.copy(REPO / "core" / "__init__.py", dest / "core" / "__init__.py")
    shutil.copy(REPO / "core" / "migrations.py", dest / "core" / "migrations.py")


def test_the_copy_alone_passes(tmp_path: Path) -> None:
    copy_audit_log(tmp_path)
    result = run_harness(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "refused"),
    [
        ("store.py", "import numpy", "numpy"),
        ("chain.py", "from core.config import Settings", "core.config"),
        ("export.py", "import pytest", "pytest"),
    ],
)
def test_a_foreign_import_in_audit_log_fails(
    tmp_path: Path, module: str, line: str, refused: str
) -> None:
    copy_audit_log(tmp_path)
    path = tmp_path / "audit" / "log" / module
    future = "from __future__ import annotations\n"
    source = path.read_text(encoding="utf-8")
    assert future in source
    path.write_text(source.replace(future, future + line + "\n", 1), encoding="utf-8")
    result = run_harness(tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"may not import {refused!r}" in result.stderr, result.stderr
