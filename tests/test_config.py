from pathlib import Path

import pytest

from core.config import load_settings
from core.errors import ConfigError


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "clinrag.toml"
    cfg.write_text('top_k = 7\nllm = "openai"\nchunk_chars = 900\n')
    s = load_settings(
        cfg,
        env={"CLINRAG_TOP_K": "9", "CLINRAG_HOME": str(tmp_path / "h")},
        overrides={"chunk_chars": 500},
    )
    assert s.top_k == 9  # env beats file
    assert s.llm == "openai"  # file beats default
    assert s.chunk_chars == 500  # flags beat everything
    assert s.home == tmp_path / "h"
    assert s.max_new_tokens == load_settings(env={}).max_new_tokens


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "clinrag.toml"
    cfg.write_text("topk = 3\n")
    with pytest.raises(ConfigError, match="topk"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="CLINRAG_TOPK"):
        load_settings(env={"CLINRAG_TOPK": "3"})


def test_invalid_values_are_explained() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        load_settings(env={"CLINRAG_TOP_K": "zero"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(Path("/nonexistent/clinrag.toml"), env={})


def test_chroma_url_from_environment() -> None:
    s = load_settings(env={"CLINRAG_CHROMA_URL": "http://chroma.internal:8000"})
    assert s.chroma_url == "http://chroma.internal:8000"
