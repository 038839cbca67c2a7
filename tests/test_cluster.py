"""Two app replicas as one deployment (benchmarks/cluster.py, small): PostgreSQL, a Chroma
server, the model server with the real packaged model, users on both replicas.

Pass criteria as the benchmark's: 0 errors, every audit record expected found exactly once,
one valid chain, every answer attributed (through the server's log-probabilities) or failed
with a reason, and a lock-out on one replica refused on the other. deploy/compose.yaml names
the same settings as the replicas get here (checked below, without starting anything).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.cluster import deployment, drive, replica_environment
from core.backends.base import LLM
from core.config import load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "compose.yaml"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def _replica_env(tmp_path: Path) -> dict[str, str]:
    return replica_environment(
        tmp_path / "a",
        tmp_path / "shared",
        database_url="postgresql://clinrag@db:5432/clinrag",
        chroma_url="http://chroma:8000",
        llm_base_url="http://vllm:8000/v1",
        attribution="hierarchical",
    )


def test_compose_names_the_settings_and_services_the_cluster_test_runs(tmp_path: Path) -> None:
    services = _compose()["services"]
    apps = [name for name, s in services.items() if "app" in name]
    assert len(apps) >= 2, "two app replicas, as the test runs"
    wanted = set(_replica_env(tmp_path))
    for name in apps:
        env = services[name]["environment"]
        # CLINRAG_ADMIN_PASSWORD is read by the app, not a setting (the test creates accounts)
        names = {k for k in env if k.startswith("CLINRAG_") and k != "CLINRAG_ADMIN_PASSWORD"}
        assert names == wanted, (name, names ^ wanted)
        # real settings, as the app reads them (unknown CLINRAG_ names are refused)
        settings = load_settings(env={k: str(v) for k, v in env.items() if k in wanted})
        assert settings.database_url and settings.database_url.startswith("postgresql://")
        assert settings.llm == "openai" and settings.chroma_url
        assert settings.audit_checkpoint_file is not None
    # the shared checkpoint and key: one volume mounted into every replica
    mounts = [set(services[name].get("volumes", [])) for name in apps]
    assert set.intersection(*mounts), "the replicas share a volume for the audit checkpoint"
    for part in ("postgres", "chroma", "chroma-proxy", "vllm", "tls"):
        assert part in services, part
    # only the TLS proxy is published; the internal network has no route out
    assert [n for n, s in services.items() if "ports" in s] == ["tls"]
    assert _compose()["networks"]["internal"]["internal"] is True
    assert "ports" not in services["chroma"] and "ports" not in services["postgres"]
    # nothing pulled from a public registry at run time: every image is the hospital's
    for name, service in services.items():
        image = str(service.get("image", ""))
        assert image.startswith("${REGISTRY"), (name, image)
        assert service.get("pull_policy") == "never", name


@pytest.mark.slow
def test_two_replicas_one_deployment(
    database_url: str, chroma_server: str, packaged_llm: LLM, tmp_path: Path
) -> None:
    with deployment(
        tmp_path,
        packaged_llm,
        attribution="hierarchical",
        database_url=database_url,
        chroma_url=chroma_server,
        collection="cluster",
    ) as cluster:
        # one user per replica, one question each (every user asks at least once, and the
        # bound stops a second): an answer and its attribution through the server cost about
        # a minute on 2 loaded cores; a short think time exercises the user model
        report = drive(cluster, users=2, seconds=1, seed=0, think=0.2, per_user=1, drain=900)
    assert report["checks"] == {k: True for k in report["checks"]}, report
    assert report["passed"]
    assert report["answers"] > 0 and min(report["answers_per_replica"].values()) > 0
    # attribution ran through the model server's log-probabilities, not only failed
    assert report["attribution"]["attributed"] > 0, report["attribution"]
    assert report["audit_found"]["login_failed"] == 6
    assert report["answers"] == 2, "one question per user: the bound holds"
    # the model server reused prefixes: cold are at most each replica's probe and each
    # attribution's first (full) prompt
    server = report["model_server"]
    assert server["prefix_cache_entries"] > 0
    assert server["prompts"] - server["hits"] <= 2 + report["attribution"]["attributed"], server
    assert server["cached_tokens"] > 0
    assert report["lockout"] == {
        "wrong_on_a_refused": True,
        "right_password_refused_on_b": True,
    }
