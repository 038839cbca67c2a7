"""The admin Accounts page (ui/views/accounts.py) and the account operations it calls.

Real account store, real audit log, the app through ``streamlit.testing.v1.AppTest``; the
answering model is the extractive fake (no page here asks a question).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_ui_fakes import PASSWORDS, ROLES, ExtractiveLLM

from audit.record import open_log as audit_log
from core.config import Settings, load_settings
from core.errors import AccessDeniedError
from core.types import Actor
from services import accounts
from services.accounts import UserError, authenticate, get_user

APP = str(Path(__file__).resolve().parent.parent / "ui" / "app.py")
ADMIN = Actor("admin", "admin")
CLINICIAN = Actor("carol", "clinician")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with the three test accounts and no library (these pages need none)."""
    import ui.session
    from assistant.pipeline import Assistant

    home = tmp_path / "home"
    monkeypatch.setenv("CLINRAG_HOME", str(home))
    monkeypatch.setenv("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    settings = load_settings(env={"CLINRAG_HOME": str(home)})
    assert accounts.ensure_admin(settings, PASSWORDS["admin"]) is None
    for name in ("carol", "audrey"):
        accounts.add_user(settings, name, PASSWORDS[name], ROLES[name])
    monkeypatch.setattr(
        ui.session, "assistant_factory", lambda s: Assistant(s, llm=ExtractiveLLM())
    )
    st.cache_resource.clear()
    yield home
    st.cache_resource.clear()


def _settings(home: Path) -> Settings:
    return load_settings(env={"CLINRAG_HOME": str(home)})


def _events(home: Path) -> list[tuple[str, str, dict[str, Any]]]:
    log = audit_log(_settings(home))
    try:
        return [(r.event, r.user, r.payload) for r in log.list() if r.event.startswith("user_")]
    finally:
        log.close()


def _signed_in(username: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.text_input(key="signin_username").input(username)
    at.text_input(key="signin_password").input(PASSWORDS[username])
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def _accounts_page(at: AppTest) -> AppTest:
    at.sidebar.radio(key="page").set_value("Accounts").run()
    assert not at.exception, at.exception
    assert [h.value for h in at.header] == ["Accounts"]
    return at


def _table(at: AppTest) -> Any:
    for frame in at.dataframe:
        if "last sign-in (UTC)" in frame.value.columns:
            return frame.value.set_index("user")
    raise AssertionError("no accounts table")


def _submit_add(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Add account").click().run()
    assert not at.exception, at.exception
    return at


def test_admin_adds_an_account_and_its_password_is_shown_once(home: Path) -> None:
    at = _accounts_page(_signed_in("admin"))
    table = _table(at)
    assert set(table.index) == {"admin", "carol", "audrey"}
    assert table.loc["carol", "role"] == "clinician" and table.loc["carol", "active"]
    assert table.loc["admin", "last sign-in (UTC)"]  # the sign-in just now

    at.text_input(key="add_username").input("Dana")
    at.selectbox(key="add_role").set_value("auditor")
    _submit_add(at)
    assert [s.value for s in at.success] == ["Added dana \\(auditor\\)\\."]
    [shown] = [c.value for c in at.code]
    dana = get_user(_settings(home), "dana")
    assert dana is not None and dana.role == "auditor" and dana.must_change_password
    assert authenticate(_settings(home), "dana", shown) is not None
    assert _table(at).loc["dana", "role"] == "auditor"
    assert _events(home)[-1] == (
        "user_add",
        "admin",
        {"username": "dana", "new_role": "auditor", "sso_only": False},
    )
    at.run()  # the next run never shows it again
    assert not at.code and not at.success


def test_admin_changes_role_disables_enables_resets_and_unlocks(home: Path) -> None:
    settings = _settings(home)
    at = _accounts_page(_signed_in("admin"))
    at.text_input(key="add_username").input("eve")
    at.radio(key="add_how").set_value("Type one")
    at.text_input(key="add_password").input("typed-password-1")
    _submit_add(at)
    assert not at.code  # a typed password is not shown back
    assert authenticate(settings, "eve", "typed-password-1") is not None

    at.selectbox(key="change_user").set_value("eve").run()
    at.selectbox(key="change_role").set_value("auditor").run()
    at.button(key="change_role_button").click().run()
    assert not at.exception, at.exception
    assert _table(at).loc["eve", "role"] == "auditor"

    at.button(key="disable_button").click().run()
    assert _table(at).loc["eve", "state"] == "disabled"
    assert authenticate(settings, "eve", "typed-password-1") is None
    at.button(key="enable_button").click().run()
    assert _table(at).loc["eve", "state"] == "active"

    for _ in range(accounts.MAX_FAILURES):
        authenticate(settings, "eve", "wrong-password")
    at.run()
    assert _table(at).loc["eve", "state"].startswith("locked until")
    at.button(key="unlock_button").click().run()
    assert _table(at).loc["eve", "state"] == "active"

    at.button(key="reset_button").click().run()  # generated, shown once
    [shown] = [c.value for c in at.code]
    eve = get_user(settings, "eve")
    assert eve is not None and eve.must_change_password
    assert authenticate(settings, "eve", shown) is not None
    assert authenticate(settings, "eve", "typed-password-1") is None

    events = [(e, u, p["username"]) for e, u, p in _events(home) if p["username"] == "eve"]
    assert events == [
        ("user_add", "admin", "eve"),
        ("user_role", "admin", "eve"),
        ("user_disable", "admin", "eve"),
        ("user_enable", "admin", "eve"),
        ("user_unlock", "admin", "eve"),
        ("user_password", "admin", "eve"),
    ]
    role_change = next(p for e, _, p in _events(home) if e == "user_role")
    assert role_change == {"username": "eve", "old_role": "clinician", "new_role": "auditor"}


def test_an_invalid_account_is_refused_on_the_page_and_not_recorded(home: Path) -> None:
    at = _accounts_page(_signed_in("admin"))
    before = _events(home)
    at.text_input(key="add_username").input("frank")
    at.radio(key="add_how").set_value("Type one")
    at.text_input(key="add_password").input("short")
    _submit_add(at)
    assert any("at least" in e.value for e in at.error)
    assert get_user(_settings(home), "frank") is None and _events(home) == before


def test_admin_cannot_disable_their_own_account_here(home: Path) -> None:
    at = _accounts_page(_signed_in("admin"))
    at.selectbox(key="change_user").set_value("admin").run()
    assert at.button(key="disable_button").disabled


def test_clinician_and_auditor_do_not_get_the_accounts_page(home: Path) -> None:
    for name in ("carol", "audrey"):
        at = _signed_in(name)
        assert "Accounts" not in list(at.sidebar.radio(key="page").options)
        with contextlib.suppress(ValueError):  # AppTest refuses a value outside the options
            at.session_state["page"] = "Accounts"
            at.run()
        assert "Accounts" not in [h.value for h in at.header]
        assert not any(b.label == "Add account" for b in at.button)


def _render_accounts_as(username: str) -> None:
    from services.accounts import get_user
    from ui.session import get_settings
    from ui.views import accounts as page

    settings = get_settings()
    page.render(settings, get_user(settings, username))


def test_accounts_page_refuses_a_clinician_server_side(home: Path) -> None:
    at = AppTest.from_function(
        _render_accounts_as, kwargs={"username": "carol"}, default_timeout=60
    )
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["You do not have access to this page."]
    assert not at.dataframe and not at.header


def test_account_operations_check_the_role_before_changing_anything(home: Path) -> None:
    settings = _settings(home)
    before = _events(home)
    for call in (
        lambda: accounts.change_role(settings, CLINICIAN, "audrey", "admin"),
        lambda: accounts.unlock(settings, CLINICIAN, "audrey"),
        lambda: accounts.reset_password(settings, CLINICIAN, "audrey"),
    ):
        with pytest.raises(AccessDeniedError):
            call()
    audrey = get_user(settings, "audrey")
    assert audrey is not None and audrey.role == "auditor" and not audrey.must_change_password
    assert _events(home) == before


def test_the_last_active_administrator_cannot_be_demoted_or_disabled(home: Path) -> None:
    settings = _settings(home)
    with pytest.raises(UserError, match="only active administrator"):
        accounts.change_role(settings, ADMIN, "admin", "clinician")
    with pytest.raises(UserError, match="only active administrator"):
        accounts.set_disabled(settings, ADMIN, "admin", disabled=True)
    accounts.change_role(settings, ADMIN, "carol", "admin")
    accounts.change_role(settings, ADMIN, "admin", "clinician")  # another admin exists now
    admin = get_user(settings, "admin")
    assert admin is not None and admin.role == "clinician"


def test_single_sign_on_accounts_have_no_password_to_reset(home: Path) -> None:
    settings = _settings(home)
    accounts.create(settings, ADMIN, "dana@hospital.org", "clinician", sso_only=True)
    with pytest.raises(UserError, match="single sign-on"):
        accounts.reset_password(settings, ADMIN, "dana@hospital.org")
    dana = get_user(settings, "dana@hospital.org")
    assert dana is not None and dana.sso_only and not dana.locked
