"""clinrag's web app: ``streamlit run ui/app.py``.

Sign-in first (and a new password, for an account whose password was generated); then the
pages the user's role allows (checked again inside every page): Ask (clinicians, admins),
Library (admins), Audit (auditors, admins), Accounts (admins).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import ui  # noqa: F401  (installed with the project)
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from core.errors import ClinragError
from ui.render import md_escape
from ui.session import (
    allowed_pages,
    current_user,
    get_settings,
    serve_cli,
    sign_out_recorded,
)
from ui.views import accounts, ask, audit, library, signin

if TYPE_CHECKING:
    from PIL import Image

VIEWS = {
    "Ask": ask.render,
    "Library": library.render,
    "Audit": audit.render,
    "Accounts": accounts.render,
}


@functools.cache
def _icon() -> Image.Image:
    """A 32x32 white cross on teal, as pixels (served by the app itself)."""
    import numpy as np
    from PIL import Image

    icon = np.zeros((32, 32, 3), dtype=np.uint8)
    icon[:] = (0, 110, 120)
    icon[12:20, 5:27] = 255
    icon[5:27, 12:20] = 255
    return Image.fromarray(icon)


def main() -> None:
    os.umask(0o077)  # uploads, user store, audit log: owner-only, as with the CLI
    # A drawn icon: a Material or emoji page_icon makes the browser fetch the favicon from a
    # font CDN, a request leaving the hospital network on every page load.
    st.set_page_config(page_title="clinrag", page_icon=_icon(), layout="wide")
    try:
        settings = get_settings()
    except ClinragError as exc:
        st.error(md_escape(f"clinrag cannot start: {exc}"))
        st.stop()
    serve_cli(settings)
    user = current_user(settings)
    if user is None:
        signin.render(settings)
        return
    if user.must_change_password:  # re-read every run: no page until it is changed
        signin.change_password(settings, user)
        return
    pages = allowed_pages(user)
    with st.sidebar:
        st.markdown(f"Signed in as **{md_escape(user.username)}** ({user.role})")
        page = st.radio("Page", pages, key="page")
        if st.button("Sign out", key="signout"):
            sign_out_recorded(settings, user)
            st.rerun()
        st.caption(
            "Answers come only from the hospital's guideline library and are checked against "
            "it. They support, not replace, clinical judgement."
        )
    if page not in pages:  # a stale or forged value: fall back, the view checks again anyway
        page = pages[0]
    VIEWS[page](settings, user)


main()
