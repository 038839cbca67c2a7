"""Local accounts (services.accounts) and the ``clinrag users`` command (ui.cli.users)."""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
from typing import Any

import pytest

from audit.record import Recorder
from audit.record import open_log as audit_log
from core.config import Settings
from core.errors import AuditError
from services import accounts as users
from services.accounts import (
    MAX_FAILURES,
    UserError,
    add_user,
    authenticate,
    disable_user,
    ensure_admin,
    get_user,
    list_users,
    users_path,
)
from tests.test_ui_fakes import MemoryRecorder
from ui.cli.users import add_parser, users_command

Events = MemoryRecorder


def test_users_file_is_owner_only_and_stores_argon2_hashes(settings: Settings) -> None:
    add_user(settings, "Carol", "a-long-password", "clinician")
    path = users_path(settings)
    assert path == settings.home / "users.sqlite"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    row = sqlite3.connect(path).execute("SELECT username, password_hash FROM users").fetchone()
    assert row[0] == "carol"  # names are case-insensitive, stored lower-case
    assert row[1].startswith("$argon2id$") and "a-long-password" not in row[1]


def test_authenticate_records_login_and_failures(settings: Settings) -> None:
    add_user(settings, "carol", "a-long-password", "clinician")
    events = Events()
    user = authenticate(settings, " CAROL ", "a-long-password", events)
    assert user is not None and user.role == "clinician" and user.last_login
    assert authenticate(settings, "carol", "wrong-password", events) is None
    assert authenticate(settings, "mallory", "whatever-pass", events) is None
    assert [(e[0], e[1], e[2], e[3].get("reason")) for e in events.seen] == [
        ("login", "carol", "clinician", None),
        ("login_failed", "carol", "clinician", "bad_password"),
        ("login_failed", "mallory", "unknown", "unknown_user"),
    ]


def test_a_failing_audit_sink_blocks_the_sign_in(settings: Settings) -> None:
    add_user(settings, "carol", "a-long-password", "clinician")

    class BrokenLog:
        def append(self, *_: Any) -> None:
            raise OSError("disk full")

    with pytest.raises(AuditError, match="disk full"):
        authenticate(settings, "carol", "a-long-password", Recorder(BrokenLog()))  # type: ignore[arg-type]
    assert get_user(settings, "carol").last_login is None  # type: ignore[union-attr]


def test_disabled_accounts_cannot_sign_in(settings: Settings) -> None:
    add_user(settings, "carol", "a-long-password", "clinician")
    assert disable_user(settings, "carol")
    events = Events()
    assert authenticate(settings, "carol", "a-long-password", events) is None
    assert events.seen[-1][3] == {"reason": "disabled", "method": "password"}
    assert disable_user(settings, "carol", disabled=False)
    assert authenticate(settings, "carol", "a-long-password") is not None
    assert not disable_user(settings, "nobody")


def test_repeated_failures_lock_the_account(settings: Settings) -> None:
    add_user(settings, "carol", "a-long-password", "clinician")
    events = Events()
    for _ in range(MAX_FAILURES):
        assert authenticate(settings, "carol", "wrong-password", events) is None
    # even the right password is refused while locked
    assert authenticate(settings, "carol", "a-long-password", events) is None
    assert events.seen[-1][3] == {"reason": "locked", "method": "password"}
    assert users.set_password(settings, "carol", "another-long-password")  # admin reset unlocks
    assert authenticate(settings, "carol", "another-long-password") is not None


@pytest.mark.parametrize(
    ("name", "password", "role"),
    [
        ("../etc", "a-long-password", "clinician"),
        ("", "a-long-password", "clinician"),
        ("carol", "short", "clinician"),
        ("carol", "a-long-password", "superuser"),
    ],
)
def test_invalid_accounts_are_refused(
    settings: Settings, name: str, password: str, role: str
) -> None:
    with pytest.raises(UserError):
        add_user(settings, name, password, role)


def test_duplicate_user_is_refused(settings: Settings) -> None:
    add_user(settings, "carol", "a-long-password", "clinician")
    with pytest.raises(UserError, match="already exists"):
        add_user(settings, "CAROL", "a-long-password", "admin")
    assert [(u.username, u.role) for u in list_users(settings)] == [("carol", "clinician")]


def test_ensure_admin_only_on_first_run(settings: Settings) -> None:
    generated = ensure_admin(settings)
    assert generated and len(generated) >= 16
    assert authenticate(settings, "admin", generated).role == "admin"  # type: ignore[union-attr]
    assert ensure_admin(settings) is None  # never again, never a second password
    assert ensure_admin(settings, "given-password") is None


def test_ensure_admin_uses_the_given_password(settings: Settings) -> None:
    assert ensure_admin(settings, "given-password") is None
    assert authenticate(settings, "admin", "given-password") is not None


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clinrag")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_users_command_add_list_disable_enable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    args = _cli(["users", "add", "audrey", "--role", "auditor", "--password-stdin"])
    assert users_command(args, settings) == 0
    assert authenticate(settings, "audrey", "a-long-password") is not None

    assert users_command(_cli(["users", "list", "--json"]), settings) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        ("audrey", "auditor", False)
    ]
    assert users_command(_cli(["users", "disable", "audrey"]), settings) == 0
    assert get_user(settings, "audrey").disabled  # type: ignore[union-attr]
    assert users_command(_cli(["users", "enable", "audrey"]), settings) == 0
    assert users_command(_cli(["users", "disable", "nobody"]), settings) == 1

    log = audit_log(settings)
    events = [(r.event, r.payload.get("username")) for r in log.list()]
    log.close()
    assert events == [
        ("user_add", "audrey"),
        ("user_disable", "audrey"),
        ("user_enable", "audrey"),
    ]


# ------------------------------------------------------------------ single sign-on


def test_sso_maps_verified_claims_to_local_accounts(settings: Settings) -> None:
    from services.accounts import add_sso_user, sso_sign_in

    add_sso_user(settings, "Dana@Hospital.org", "auditor")
    events = Events()
    claims = {
        "email": "dana@hospital.org",
        "email_verified": True,
        "iss": "https://idp.hospital.example",
    }
    user = sso_sign_in(settings, claims, events)
    assert user is not None and user.username == "dana@hospital.org" and user.role == "auditor"
    # an SSO-only account has no password that could ever match
    assert authenticate(settings, "dana@hospital.org", "", events) is None
    assert authenticate(settings, "dana@hospital.org", "!sso-only", events) is None
    # unknown identities, missing claims and disabled accounts are refused and audited
    assert (
        sso_sign_in(settings, {"email": "eve@elsewhere.org", "email_verified": True}, events)
        is None
    )
    assert sso_sign_in(settings, {"sub": "123"}, events) is None
    disable_user(settings, "dana@hospital.org")
    assert sso_sign_in(settings, claims, events) is None
    assert [(e[0], e[1], e[3].get("reason"), e[3].get("method")) for e in events.seen] == [
        ("login", "dana@hospital.org", None, "sso"),
        ("login_failed", "dana@hospital.org", "bad_password", "password"),
        ("login_failed", "dana@hospital.org", "bad_password", "password"),
        ("login_failed", "eve@elsewhere.org", "sso_unknown_user", "sso"),
        ("login_failed", "(no claim)", "sso_missing_claim", "sso"),
        ("login_failed", "dana@hospital.org", "disabled", "sso"),
    ]
    assert events.seen[0][3]["issuer"] == "https://idp.hospital.example"


def test_sso_claim_is_configurable(settings: Settings) -> None:
    from services.accounts import add_sso_user, sso_sign_in

    add_sso_user(settings, "jdoe", "clinician")
    custom = settings.model_copy(update={"sso_claim": "preferred_username"})
    assert sso_sign_in(custom, {"preferred_username": "JDoe", "email": "x@y.org"}) is not None
    assert sso_sign_in(settings, {"preferred_username": "jdoe"}) is None  # default claim: email


def test_users_add_sso_from_the_cli(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["users", "add", "nurse@hospital.org", "--role", "clinician", "--sso"])
    assert users_command(args, settings) == 0
    assert get_user(settings, "nurse@hospital.org").role == "clinician"
    log = audit_log(settings)
    try:
        added = log.list(event="user_add")[-1]
    finally:
        log.close()
    assert added.payload == {
        "username": "nurse@hospital.org",
        "new_role": "clinician",
        "sso_only": True,
    }


def test_an_admin_is_created_when_accounts_exist_but_none_is_an_admin(settings: Settings) -> None:
    """Defect (issue 19): adding a user with the CLI before the app's first start meant no
    administrator was ever created, so nobody could manage the app."""
    add_user(settings, "carol", "a-long-password", "clinician")
    generated = ensure_admin(settings)
    assert generated is not None
    admin = get_user(settings, "admin")
    assert admin is not None and admin.role == "admin"
    assert ensure_admin(settings) is None  # an active administrator exists now


def test_ensure_admin_from_the_cli_prints_the_generated_password_once(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (issue 19): the first admin's password was printed only when the first browser
    opened the app, on the server console; `make run` now creates it before the app starts."""
    monkeypatch.delenv("CLINRAG_ADMIN_PASSWORD", raising=False)
    assert users_command(_cli(["users", "ensure-admin"]), settings) == 0
    first = capsys.readouterr().out
    assert "Created user 'admin'" in first
    password = first.split("password: ", 1)[1].split()[0]
    user = authenticate(settings, "admin", password)
    assert user is not None and user.must_change_password
    assert users_command(_cli(["users", "ensure-admin"]), settings) == 0
    assert "nothing to do" in capsys.readouterr().out
