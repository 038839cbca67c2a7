"""Accounts (admins): who may sign in, with which role; add, change, disable, reset, unlock.

The same operations as ``clinrag users``, through the same ``services.accounts`` functions,
which check the role and record each change in the audit log. A password the administrator
sees (generated or typed here) must be changed by its user at the next sign-in.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.config import Settings
from core.errors import ClinragError
from services import accounts
from services.access import ROLES
from services.accounts import LOCKOUT_MINUTES, MAX_FAILURES, User
from ui.render import md_escape
from ui.session import actor, require

PASSWORD_CHOICES = ("Generate one (shown once)", "Type one")


def render(settings: Settings, user: User | None) -> None:
    user = require(user, "Accounts")
    st.header("Accounts")
    flash = st.session_state.pop("accounts_flash", None)
    if flash:
        st.success(md_escape(flash))
    _shown_once()
    users = accounts.accounts(settings, actor(user))
    _table(users)
    st.divider()
    _add(settings, user)
    if users:
        st.divider()
        _change(settings, user, users)


def _state(u: User) -> str:
    if u.disabled:
        return "disabled"
    if u.locked:
        return f"locked until {u.locked_until}"
    return "active"


def _table(users: list[User]) -> None:
    st.caption(
        f"{len(users)} accounts. Accounts are disabled, never deleted, so the audit log's "
        f"names keep their meaning. {MAX_FAILURES} wrong passwords in a row lock an account "
        f"for {LOCKOUT_MINUTES} minutes."
    )
    rows = [
        {
            "user": u.username,
            "role": u.role,
            "state": _state(u),
            "active": u.active,
            "last sign-in (UTC)": u.last_login or "",
            "sign-in": "single sign-on" if u.sso_only else "password",
            "must change password": u.must_change_password,
            "created (UTC)": u.created_at,
        }
        for u in users
    ]
    st.dataframe(rows, hide_index=True, width="stretch", key="accounts_table")


def _shown_once() -> None:
    """A password the administrator must hand over: shown on this run only, never again."""
    shown = st.session_state.pop("accounts_password", None)
    if shown:
        st.warning(
            md_escape(
                f"Password for {shown['user']}: give it to them in person or by a secure "
                "channel; it is shown only now, and they choose their own at the first "
                "sign-in."
            ),
            icon=":material/key:",
        )
        st.code(shown["password"], language=None)


def _done(message: str, user: str | None = None, password: str | None = None) -> None:
    st.session_state["accounts_flash"] = message
    if password is not None and user is not None:
        st.session_state["accounts_password"] = {"user": user, "password": password}
    st.rerun()


def _add(settings: Settings, admin: User) -> None:
    st.subheader("Add an account")
    with st.form("add_account", clear_on_submit=True):
        cols = st.columns([2, 1])
        name = cols[0].text_input("User name", key="add_username")
        role = cols[1].selectbox("Role", ROLES, key="add_role")
        how = st.radio("Initial password", PASSWORD_CHOICES, horizontal=True, key="add_how")
        typed = st.text_input(
            "Password (when typing one)",
            type="password",
            key="add_password",
            help=f"At least {accounts.MIN_PASSWORD_CHARS} characters.",
        )
        sso = st.checkbox(
            "Single sign-on only (no password; the user name is the identity provider's "
            "e-mail or configured claim)",
            key="add_sso",
        )
        submitted = st.form_submit_button("Add account", type="primary")
    if not submitted:
        return
    generated = not sso and how == PASSWORD_CHOICES[0]
    password = None if sso else (accounts.generate_password() if generated else typed)
    try:
        created = accounts.create(
            settings,
            actor(admin),
            name,
            str(role),
            password=password,
            sso_only=sso,
            must_change=not sso,
        )
    except ClinragError as exc:
        st.error(md_escape(str(exc)))
        return
    _done(
        f"Added {created.username} ({created.role}).",
        created.username,
        password if generated else None,
    )


def _change(settings: Settings, admin: User, users: list[User]) -> None:
    st.subheader("Change an account")
    names = [u.username for u in users]
    name = st.selectbox("Account", names, key="change_user")
    target = next((u for u in users if u.username == name), None)
    if target is None:
        return
    st.caption(md_escape(f"{target.username}: {target.role}, {_state(target)}."))
    who = actor(admin)
    cols = st.columns(2)
    with cols[0]:
        role = st.selectbox("Role", ROLES, index=ROLES.index(target.role), key="change_role")
        if st.button("Change role", key="change_role_button", disabled=role == target.role):
            _act(
                lambda: accounts.change_role(settings, who, target.username, str(role)),
                f"{target.username} is now {role}; their open sessions end at once.",
            )
        if target.disabled:
            if st.button("Enable", key="enable_button", icon=":material/person_check:"):
                _act(
                    lambda: accounts.set_disabled(settings, who, target.username, disabled=False),
                    f"Enabled {target.username}.",
                )
        elif st.button(
            "Disable",
            key="disable_button",
            icon=":material/person_off:",
            disabled=target.username == admin.username,
            help="Your own account cannot be disabled here.",
        ):
            _act(
                lambda: accounts.set_disabled(settings, who, target.username, disabled=True),
                f"Disabled {target.username}; their open sessions end at once.",
            )
        if target.locked and st.button("Unlock", key="unlock_button", icon=":material/lock_open:"):
            _act(
                lambda: accounts.unlock(settings, who, target.username),
                f"Unlocked {target.username}.",
            )
    with cols[1]:
        if target.sso_only:
            st.caption("Signs in through single sign-on: no password to reset.")
            return
        how = st.radio("New password", PASSWORD_CHOICES, horizontal=True, key="reset_how")
        typed = st.text_input("Password (when typing one)", type="password", key="reset_password")
        if st.button("Reset password", key="reset_button", icon=":material/key:"):
            generated = how == PASSWORD_CHOICES[0]
            try:
                password = accounts.reset_password(
                    settings, who, target.username, None if generated else typed
                )
            except ClinragError as exc:
                st.error(md_escape(str(exc)))
                return
            _done(
                f"Password reset for {target.username} (also unlocked); they choose a new "
                "one at their next sign-in.",
                target.username,
                password if generated else None,
            )


def _act(change: Callable[[], object], message: str) -> None:
    try:
        change()
    except ClinragError as exc:
        st.error(md_escape(str(exc)))
        return
    _done(message)
