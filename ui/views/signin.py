"""The sign-in page: local accounts, and single sign-on when ``sso_provider`` is set.

Every attempt is an audit event; no event, no session. With single sign-on the identity
provider proves who someone is (Streamlit's ``st.login``), and the local account store still
decides whether they may use clinrag and with which role.

An account whose password was generated (the first ``admin``) is shown only
:func:`change_password` after signing in, until it has chosen its own.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.config import Settings
from core.types import Actor
from services import accounts
from services.accounts import User, UserError
from ui.render import md_escape
from ui.session import sign_in, sign_out_recorded


def sso_claims() -> dict[str, Any] | None:
    """The identity provider's claims for this browser session, or None (a test seam)."""
    try:
        if not st.user.is_logged_in:
            return None
        return dict(st.user.to_dict())
    except Exception:  # no [auth] section configured: single sign-on is unavailable
        return None


def render(settings: Settings) -> None:
    st.title("clinrag")
    st.caption("Clinical guideline assistant. Sign in with your hospital account.")
    reason = st.session_state.pop("signed_out_reason", None)
    if reason:
        st.info(reason)
    if settings.sso_provider and _single_sign_on(settings):
        return
    with st.form("signin"):
        username = st.text_input("User name", key="signin_username")
        password = st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    try:
        user = accounts.sign_in(settings, username, password)
    except Exception as exc:  # the audit log cannot record the sign-in
        st.error(md_escape(f"Sign-in is unavailable because it cannot be recorded: {exc}"))
        return
    if user is None:
        st.error("Wrong user name or password, or the account is disabled or locked.")
        return
    sign_in(user)
    st.rerun()


def _single_sign_on(settings: Settings) -> bool:
    """Offer or complete single sign-on. True when the page is done (signed in or refused)."""
    claims = sso_claims()
    if claims is None:
        if st.button("Sign in with single sign-on", type="primary", key="sso"):
            provider = settings.sso_provider
            st.login() if provider == "default" else st.login(provider)
        st.caption("Or with a local account:")
        return False
    if st.session_state.get("sso_refused") == claims.get(settings.sso_claim):
        _refused(settings, claims)
        return True
    try:
        user = accounts.sign_in_sso(settings, claims)
    except Exception as exc:  # the audit log cannot record the sign-in
        st.error(md_escape(f"Sign-in is unavailable because it cannot be recorded: {exc}"))
        return True
    if user is None:
        # remembered so a rerun does not log a second failed attempt for the same identity
        st.session_state["sso_refused"] = claims.get(settings.sso_claim)
        _refused(settings, claims)
        return True
    sign_in(user, method="sso")
    st.rerun()
    return True


def _refused(settings: Settings, claims: dict[str, Any]) -> None:
    who = str(claims.get(settings.sso_claim) or "your account")
    # the reason is in the audit log; the page does not tell a stranger which check failed
    st.error(
        md_escape(
            f"{who} is not allowed to use clinrag (no active single sign-on account for it, "
            "or the identity provider's token was not accepted). Ask an administrator to "
            "add it: clinrag users add NAME --role ROLE --sso"
        )
    )
    if st.button("Sign out of single sign-on", key="sso_out"):
        st.session_state.pop("sso_refused", None)
        st.logout()


def change_password(settings: Settings, user: User) -> None:
    """The only page for a signed-in user who must choose a password (``app.main`` shows it
    in place of every page, and ``ui.session.require`` refuses them every page anyway)."""
    st.title("Choose a new password")
    st.info(
        "The password you signed in with was generated and shown on the server console. "
        "Choose your own before you continue."
    )
    with st.form("new_password_form"):
        first = st.text_input("New password", type="password", key="new_password")
        again = st.text_input("New password again", type="password", key="new_password_again")
        submitted = st.form_submit_button("Set password", type="primary", key="set_password")
    if st.button("Sign out", key="must_change_signout"):
        sign_out_recorded(settings, user)
        st.rerun()
    if not submitted:
        return
    if first != again:
        st.error("The two passwords do not match.")
        return
    try:
        accounts.change_own_password(settings, Actor(user.username, user.role), first)
    except UserError as exc:
        st.error(md_escape(str(exc)))
        return
    except Exception as exc:  # the audit log cannot record the change: nothing was kept
        st.error(md_escape(f"The password could not be changed: {exc}"))
        return
    st.rerun()
