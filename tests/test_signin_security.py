"""Sign-in and deployment defects found outside the security review, one test (or more) each.

Lock-out under parallel attempts, single sign-on into the wrong accounts ("nOAuth"), the
generated first admin password, and deployment hygiene: the address Streamlit binds to, its
secrets file, and the packaged models' pinned weights.
"""

from __future__ import annotations

import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from audit.record import open_log as audit_log
from core.config import Settings
from core.errors import ModelUnavailableError
from core.types import Actor
from services import accounts
from services.access import operator
from services.accounts import (
    MAX_FAILURES,
    add_sso_user,
    add_user,
    authenticate,
    ensure_admin,
    get_user,
    sso_sign_in,
    users_path,
)
from tests.test_ui_fakes import MemoryRecorder

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "ui" / "app.py")
ISSUER = "https://login.hospital.example/tenant-1/v2.0"


Events = MemoryRecorder


# ------------------------------------------------------------------ 1. lock-out under load


def test_parallel_wrong_passwords_still_lock_the_account(settings: Settings) -> None:
    """23 wrong passwords and the right one at once (Streamlit runs sessions in threads).

    Before the fix every attempt read failed_count = 0 and wrote 1, so the account never
    locked and the right password got in."""
    add_user(settings, "carol", "a-long-password", "clinician")
    events = Events()
    guesses = [f"wrong-password-{i}" for i in range(23)] + ["a-long-password"]
    start = threading.Barrier(len(guesses))
    results: list[bool] = []

    def attempt(password: str) -> None:
        start.wait()
        results.append(authenticate(settings, "carol", password, events) is not None)

    threads = [threading.Thread(target=attempt, args=(g,)) for g in guesses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == len(guesses)
    # the right password can win only by being counted among the first MAX_FAILURES attempts
    reasons = events.reasons()
    assert reasons.count("bad_password_locked") >= 1, reasons
    counted = [r for r in reasons if r in {"bad_password", "bad_password_locked"}]
    assert len(counted) <= 2 * MAX_FAILURES, reasons  # at most one reset by a success
    assert reasons.count("locked") >= len(guesses) - 2 * MAX_FAILURES
    # and the account is locked now: even the right password is refused
    assert authenticate(settings, "carol", "a-long-password", events) is None
    assert events.reasons()[-1] == "locked"


# ------------------------------------------------------------------ 2. single sign-on


def _claims(email: str, **extra: Any) -> dict[str, Any]:
    return {"email": email, "email_verified": True, "iss": ISSUER, **extra}


def test_sso_never_enters_a_password_account(settings: Settings) -> None:
    """A claim equal to a local password account's name (admin, or a clinician whose name
    is an e-mail) must not sign into it: only accounts created for single sign-on."""
    ensure_admin(settings, "given-password")
    add_user(settings, "carol@hospital.org", "a-long-password", "clinician")
    events = Events()
    assert sso_sign_in(settings, _claims("carol@hospital.org"), events) is None
    custom = settings.model_copy(update={"sso_claim": "preferred_username"})
    assert sso_sign_in(custom, {"preferred_username": "admin", "iss": ISSUER}, events) is None
    assert events.reasons() == ["sso_not_sso_account", "sso_not_sso_account"]
    assert all(event == "login_failed" for event, *_ in events.seen)
    assert get_user(settings, "admin").last_login is None  # type: ignore[union-attr]


@pytest.mark.parametrize("verified", [None, False, "false", "yes", 1])
def test_sso_refuses_an_email_the_provider_has_not_verified(
    settings: Settings, verified: Any
) -> None:
    add_sso_user(settings, "dana@hospital.org", "auditor")
    events = Events()
    claims = _claims("dana@hospital.org")
    if verified is None:
        del claims["email_verified"]
    else:
        claims["email_verified"] = verified
    assert sso_sign_in(settings, claims, events) is None
    assert events.reasons() == ["sso_email_unverified"]
    assert sso_sign_in(settings, _claims("dana@hospital.org"), events) is not None
    # some providers send the flag as a string
    assert sso_sign_in(settings, _claims("dana@hospital.org", email_verified="true")) is not None


def test_sso_refuses_and_audits_an_issuer_other_than_the_pinned_one(settings: Settings) -> None:
    add_sso_user(settings, "dana@hospital.org", "auditor")
    pinned = settings.model_copy(update={"sso_issuer": ISSUER})
    events = Events()
    other = "https://login.hospital.example/tenant-2/v2.0"
    assert sso_sign_in(pinned, _claims("dana@hospital.org", iss=other), events) is None
    assert sso_sign_in(pinned, _claims("dana@hospital.org", iss=""), events) is None
    assert [(e[0], e[3]["reason"], e[3].get("issuer")) for e in events.seen] == [
        ("login_failed", "sso_wrong_issuer", other),
        ("login_failed", "sso_wrong_issuer", None),
    ]
    user = sso_sign_in(pinned, _claims("dana@hospital.org"), events)
    assert user is not None and events.seen[-1][3] == {"method": "sso", "issuer": ISSUER}


def test_sso_issuer_is_a_setting() -> None:
    from core.config import load_settings

    loaded = load_settings(env={"CLINRAG_SSO_ISSUER": ISSUER, "CLINRAG_HOME": "/tmp/x"})
    assert loaded.sso_issuer == ISSUER
    assert Settings().sso_issuer is None  # unset: the provider's own validation applies


# ------------------------------------------------------------------ 3. first admin password


def test_a_generated_admin_password_must_be_changed_and_a_given_one_may_be_kept(
    settings: Settings, tmp_path: Path
) -> None:
    generated = ensure_admin(settings)
    assert generated
    admin = authenticate(settings, "admin", generated)
    assert admin is not None and admin.must_change_password
    me = Actor(admin.username, admin.role)
    # the admin's own change clears it (recorded as their own password change)
    with pytest.raises(accounts.UserError, match="different"):
        accounts.change_own_password(settings, me, generated)
    changed = accounts.change_own_password(settings, me, "a-new-long-password")
    assert not changed.must_change_password
    assert authenticate(settings, "admin", generated) is None
    assert authenticate(settings, "admin", "a-new-long-password") is not None
    log = audit_log(settings)
    try:
        record = log.list(event="user_password")[-1]
    finally:
        log.close()
    assert (record.user, record.role, record.payload) == ("admin", "admin", {"username": "admin"})

    # a password supplied by the operator (CLINRAG_ADMIN_PASSWORD) is theirs: kept
    given = settings.model_copy(update={"home": tmp_path / "given"})
    assert ensure_admin(given, "given-password") is None
    assert not get_user(given, "admin").must_change_password  # type: ignore[union-attr]


def test_clinrag_users_passwd_clears_the_flag(settings: Settings) -> None:
    assert ensure_admin(settings)
    assert get_user(settings, "admin").must_change_password  # type: ignore[union-attr]
    accounts.change_password(settings, operator("ops"), "admin", "set-by-operator")
    assert not get_user(settings, "admin").must_change_password  # type: ignore[union-attr]


def test_the_flag_comes_with_a_named_migration_of_an_existing_store(settings: Settings) -> None:
    import sqlite3

    add_user(settings, "carol", "a-long-password", "clinician")
    conn = sqlite3.connect(users_path(settings))
    try:
        names = [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
    finally:
        conn.close()
    assert names == ["001_users", "002_must_change_password"]
    assert "must_change_password" in columns
    assert not get_user(settings, "carol").must_change_password  # type: ignore[union-attr]


def test_the_app_asks_for_a_new_password_before_any_page(settings: Settings) -> None:
    """Signed in with the generated password, the admin sees only the change form; no page,
    not even one forced through the session state, until the new password is set."""
    generated = ensure_admin(settings)
    assert generated
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.text_input(key="signin_username").input("admin")
        at.text_input(key="signin_password").input(generated)
        at.button[0].click().run()
        assert not at.exception, at.exception
        assert not at.sidebar.radio
        assert [t.key for t in at.text_input] == ["new_password", "new_password_again"]
        at.session_state["page"] = "Audit"  # a forged page choice changes nothing
        at.run()
        assert not at.sidebar.radio and not at.header and not at.dataframe

        at.text_input(key="new_password").input("a-new-long-password")
        at.text_input(key="new_password_again").input("not-the-same-password")
        at.button(key="set_password").click().run()
        assert "do not match" in at.error[0].value and not at.sidebar.radio

        at.text_input(key="new_password").input("a-new-long-password")
        at.text_input(key="new_password_again").input("a-new-long-password")
        at.button(key="set_password").click().run()
        assert not at.exception, at.exception
        assert list(at.sidebar.radio(key="page").options) == [
            "Ask",
            "Library",
            "Audit",
            "Accounts",
        ]
        assert not get_user(settings, "admin").must_change_password  # type: ignore[union-attr]
    finally:
        st.cache_resource.clear()


# ------------------------------------------------------------------ 6. deployment hygiene


def test_streamlit_binds_to_loopback_unless_configured() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert "TLS" in (REPO / "ui" / "README.md").read_text(encoding="utf-8")


def test_streamlit_secrets_are_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", ".streamlit/secrets.toml"],
        cwd=REPO,
        check=False,
    )
    assert ignored.returncode == 0, ".streamlit/secrets.toml is not in .gitignore"


def test_packaged_models_match_their_pinned_hashes() -> None:
    from core.backends import sentence_transformers as st_backend
    from core.backends import transformers_llm
    from core.hashing import file_sha256

    embedder = st_backend.packaged_embedder_dir()
    assert st_backend.weights_hash(embedder) == st_backend.PACKAGED_EMBEDDER_SHA256
    assert file_sha256(transformers_llm.packaged_gguf()) == transformers_llm.PACKAGED_GGUF_SHA256


def test_a_packaged_embedder_with_other_weights_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.backends import sentence_transformers as st_backend

    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"not the weights that were pinned")
    monkeypatch.setattr(st_backend, "_find_packaged_embedder", lambda: fake)
    with pytest.raises(ModelUnavailableError, match="pinned"):
        st_backend.packaged_embedder_dir()
    with pytest.raises(ModelUnavailableError, match="pinned"):
        st_backend.SentenceTransformerEmbedder(Settings(home=tmp_path)).warm_up()


def test_a_packaged_gguf_with_other_weights_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.backends import transformers_llm

    fake = tmp_path / transformers_llm.PACKAGED_GGUF
    fake.write_bytes(b"GGUF not the file that was pinned")
    monkeypatch.setattr(transformers_llm, "_find_packaged_gguf", lambda: fake)
    with pytest.raises(ModelUnavailableError, match="pinned"):
        transformers_llm.packaged_gguf()
    with pytest.raises(ModelUnavailableError, match="pinned"):
        transformers_llm.TransformersLLM(Settings(home=tmp_path)).warm_up()


def test_an_explicitly_configured_model_is_not_pinned(tmp_path: Path) -> None:
    from core.backends import sentence_transformers as st_backend
    from core.backends import transformers_llm

    folder = tmp_path / "site-embedder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"the site's own model")
    embedder = st_backend.SentenceTransformerEmbedder(
        Settings(home=tmp_path, embedder_model=str(folder))
    )
    assert embedder._model_dir() == folder
    gguf = tmp_path / "site.gguf"
    gguf.write_bytes(b"GGUF the site's own model")
    llm = transformers_llm.TransformersLLM(Settings(home=tmp_path, llm_model=str(gguf)))
    assert llm._source() == (tmp_path, "site.gguf")
