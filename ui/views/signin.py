"""The sign-in form. Every attempt is an audit event; no event, no session."""

from __future__ import annotations

import streamlit as st

from assistant.config import Settings
from ui.events import sink
from ui.render import md_escape
from ui.session import sign_in
from ui.users import authenticate


def render(settings: Settings) -> None:
    st.title("clinrag")
    st.caption("Clinical guideline assistant. Sign in with your hospital account.")
    reason = st.session_state.pop("signed_out_reason", None)
    if reason:
        st.info(reason)
    with st.form("signin"):
        username = st.text_input("User name", key="signin_username")
        password = st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    try:
        user = authenticate(settings, username, password, on_event=sink(settings))
    except Exception as exc:  # the audit log cannot record the sign-in
        st.error(md_escape(f"Sign-in is unavailable because it cannot be recorded: {exc}"))
        return
    if user is None:
        st.error("Wrong user name or password, or the account is disabled or locked.")
        return
    sign_in(user)
    st.rerun()
