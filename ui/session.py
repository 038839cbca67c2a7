"""Settings, the cached Assistant, and who is signed in: the server-side checks every page runs."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import streamlit as st

from core.config import Settings, apply_offline_environment, ensure_home, load_settings
from core.types import Actor
from services import accounts
from services.access import Operation, allowed
from services.accounts import ADMIN_PASSWORD_ENV, User, ensure_admin, get_user
from services.ask import open_assistant
from services.attribution_queue import AttributionQueue
from services.generation_worker import GenerationWorker
from services.serve import LocalService, ServiceRunningError

if TYPE_CHECKING:
    from assistant.pipeline import Assistant

# Environment variables the app reads itself; they are not settings fields.
_UI_ENV = {ADMIN_PASSWORD_ENV}
# A session that does nothing for this long is signed out.
IDLE_TIMEOUT_MINUTES = 30

# page -> the operation it is for; the roles come from services.access. Checked on every run of
# every page, never only in the menu (and the services check again).
PAGES: dict[str, Operation] = {
    "Ask": Operation.ASK,
    "Library": Operation.CHANGE_LIBRARY,
    "Audit": Operation.READ_AUDIT,
    "Accounts": Operation.MANAGE_ACCOUNTS,
}

# Test seam: a callable (settings) -> Assistant. None builds the real one.
assistant_factory: Callable[[Settings], Any] | None = None
# Whether a process's attribution queue starts by queueing the answers a previous process
# left without attribution (tests that count records may turn it off).
recover_on_start = True


def _settings_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("CLINRAG_") and k not in _UI_ENV}


@st.cache_resource(show_spinner=False)
def _load_settings(env_items: tuple[tuple[str, str], ...]) -> Settings:
    apply_offline_environment()
    settings = load_settings(env=dict(env_items))
    ensure_home(settings)
    generated = ensure_admin(settings, os.environ.get(ADMIN_PASSWORD_ENV) or None)
    if generated:
        # printed once, on the server console, when the first account is created
        print(
            f"clinrag: created user 'admin' in {settings.home} with password: {generated}\n"
            "clinrag: the first sign-in with it asks for a new password "
            "(or set one now with `clinrag users passwd admin`).",
            file=sys.stderr,
            flush=True,
        )
    return settings


def get_settings() -> Settings:
    """The settings, loaded once per environment (so once per server)."""
    return _load_settings(tuple(sorted(_settings_env().items())))


# Streamlit hashes only the parameters not named with a leading underscore: ``key`` is what
# tells one cached object from another; the others are carried, not hashed.
@st.cache_resource(show_spinner=False)
def _assistant(key: str, _settings: Settings, _factory: Any) -> Assistant:
    assistant = _factory(_settings) if _factory is not None else open_assistant(_settings)
    if _settings.generation_batching and hasattr(assistant.llm, "generate_batch"):
        # one model thread for every session: concurrent drafts are batched, answers go
        # before attribution (services/generation_worker.py)
        assistant.llm = GenerationWorker(
            assistant.llm,
            wait_s=_settings.generation_batch_wait_ms / 1000,
            max_batch=_settings.generation_batch_max,
        )
    return assistant


def _shares_model(assistant: Assistant) -> bool:
    """Whether the model takes calls from several sessions at once: the generation worker,
    or a backend that says it may be called concurrently (a model server)."""
    llm = assistant.llm
    return isinstance(llm, GenerationWorker) or getattr(llm, "concurrent_calls", False) is True


def get_assistant(settings: Settings) -> Assistant:
    """One Assistant per settings, shared by every session (construction is cheap)."""
    key = settings.model_dump_json() + f"|{id(assistant_factory)}"
    return _assistant(key, settings, assistant_factory)


@st.cache_resource(show_spinner=False)
def _warmed() -> set[int]:
    """The cached assistants whose models are loaded (one set per server)."""
    return set()


@st.cache_resource(show_spinner=False)
def _lock(key: str) -> threading.Lock:
    return threading.Lock()


def _ready(assistant: Assistant, warmed: set[int]) -> Assistant:
    """``assistant`` with its models loaded (call with the model lock held)."""
    if id(assistant) not in warmed:
        assistant.warm_up()
        warmed.add(id(assistant))
    return assistant


@contextlib.contextmanager
def assistant_session(settings: Settings) -> Iterator[Assistant]:
    """The shared, warmed-up Assistant.

    With the generation worker (``generation_batching``) sessions ask at the same time and
    the worker orders their model calls (a waiting clinician sees a queue position). Without
    it, one question at a time: the others wait their turn, and so does a question asked
    while the attribution queue runs one attribution (never the queue).
    """
    lock = _lock(str(settings.home))
    assistant = get_assistant(settings)
    if not lock.acquire(blocking=False):
        with st.spinner("Waiting for another question or an attribution to finish..."):
            lock.acquire()
    try:
        warmed = _warmed()
        if id(assistant) not in warmed:
            with st.spinner("Loading the models (only after a restart)..."):
                _ready(assistant, warmed)
    finally:
        if _shares_model(assistant):
            lock.release()  # held only to load the models once
    try:
        yield assistant
    finally:
        if not _shares_model(assistant):
            lock.release()


@st.cache_resource(show_spinner=False)
def _attribution_queue(key: str, _settings: Settings, _assistant: Any) -> AttributionQueue:
    warmed = _warmed()
    lock = _lock(str(_settings.home))
    if _shares_model(_assistant):
        # the worker puts answers before attribution; the lock would hold every session for
        # a whole attribution, so it is taken only to load the models
        def ready() -> Assistant:
            with lock:
                return _ready(_assistant, warmed)

        queue = AttributionQueue(_settings, ready, contextlib.nullcontext())
    else:
        # without the worker the lock is what keeps the model to one caller
        queue = AttributionQueue(_settings, lambda: _ready(_assistant, warmed), lock)
    if recover_on_start:
        queue.recover()
    return queue


def _close_service(service: LocalService | None) -> None:
    if service is not None:
        atexit.unregister(service.close)
        service.close()


@st.cache_resource(show_spinner=False, on_release=_close_service)
def _cli_service(key: str, _settings: Settings, _assistant: Any) -> LocalService | None:
    """``clinrag serve``'s service, hosted by the app on its shared assistant; None when
    another process already serves this home (a ``clinrag serve``, another replica)."""
    from ui.cli.serve import ask_handler, routed_output

    warmed, lock = _warmed(), _lock(str(_settings.home))
    answer = ask_handler(_settings, _assistant)

    def handle(request: Any, emit: Any) -> int:
        # What cmd_ask prints goes to the asker: stdout and stderr are routed for this
        # request only (the service runs one at a time), so the server's own streams are
        # left as they were between questions.
        with routed_output():
            # the app's own rules for its model: with the worker, sessions and this request
            # ask at once (answers before attribution); without it, one caller at a time
            with lock:
                _ready(_assistant, warmed)
                if not _shares_model(_assistant):
                    return answer(request, emit)
            return answer(request, emit)

    service = LocalService(_settings, {"ask": handle})
    try:
        service.start()
    except (ServiceRunningError, OSError) as exc:
        # the app works without it: clinrag ask then answers in its own process
        logging.getLogger("clinrag.ui").info("not serving clinrag ask: %s", exc)
        return None

    threading.Thread(target=service.serve_forever, name="clinrag-cli-service", daemon=True).start()
    # a server stopped by a signal exits through the interpreter: the file goes with it
    atexit.register(service.close)
    return service


def serve_cli(settings: Settings) -> LocalService | None:
    """Start (once per server) the app's service for ``clinrag ask`` when
    ``app_serves_cli``; the models load on its first question if no session loaded them."""
    if not settings.app_serves_cli:
        return None
    assistant = get_assistant(settings)
    return _cli_service(_resource_key(settings, assistant), settings, assistant)


def attribution_queue(settings: Settings) -> AttributionQueue:
    """This process's attribution queue, on the shared assistant and its lock; made on first
    use, which queues the answers left pending by earlier processes (behind new answers)."""
    assistant = get_assistant(settings)
    return _attribution_queue(_resource_key(settings, assistant), settings, assistant)


def _resource_key(settings: Settings, assistant: Assistant) -> str:
    """What tells apart the per-assistant resources (queue, CLI service) in Streamlit's cache."""
    return settings.model_dump_json() + f"|{id(assistant)}"


# ------------------------------------------------------------------ who is signed in


def sign_in(user: User, method: str = "password") -> None:
    st.session_state["auth"] = {
        "username": user.username,
        "role": user.role,
        "method": method,
        "since": time.time(),
        "last_seen": time.time(),
    }


def sign_out() -> None:
    single_sign_on = (st.session_state.get("auth") or {}).get("method") == "sso"
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if single_sign_on:
        # the provider's session cookie would sign the user straight back in
        st.logout()


def sign_out_recorded(settings: Settings, user: User) -> None:
    """Record the sign-out, then end the session; signing out works even if the log fails
    (the server log says why the event is missing)."""
    try:
        accounts.sign_out(settings, actor(user))
    except Exception:
        logging.getLogger("clinrag.ui").exception("logout event not recorded")
    sign_out()


def current_user(settings: Settings) -> User | None:
    """The signed-in user, re-read from the account store on every run.

    A disabled account, a changed role or an idle session ends the session at once.
    """
    auth = st.session_state.get("auth")
    if not auth:
        return None
    user = get_user(settings, auth["username"])
    idle = time.time() - float(auth.get("last_seen", 0)) > IDLE_TIMEOUT_MINUTES * 60
    if user is None or user.disabled or user.role != auth["role"] or idle:
        sign_out()
        st.session_state["signed_out_reason"] = (
            "You were signed out after a period of inactivity."
            if idle and user is not None and not user.disabled
            else "Your session ended: the account was changed or disabled."
        )
        return None
    auth["last_seen"] = time.time()
    return user


def allowed_pages(user: User) -> list[str]:
    return [page for page, operation in PAGES.items() if allowed(user.role, operation)]


def actor(user: User) -> Actor:
    return Actor(user.username, user.role)


def require(user: User | None, page: str) -> User:
    """Stop the run unless ``user`` may open ``page``. Call first thing on every page.

    A user who must still choose a password may open none (the sign-in page asks for it).
    """
    if (
        user is None
        or user.must_change_password
        or page not in PAGES
        or not allowed(user.role, PAGES[page])
    ):
        st.error("You do not have access to this page.")
        st.stop()
    assert user is not None
    return user
