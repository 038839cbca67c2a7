"""``clinrag users add|list|disable|enable|passwd``: manage the app's local accounts.

Wiring in ``assistant/cli.py``::

    from ui.cli.users import add_parser, users_command
    add_parser(sub)                       # sub = the top-level subparsers
    handler = {..., "users": users_command}[args.command]

Every change is recorded in the audit log as ``user_add``, ``user_disable``, ``user_enable``
or ``user_password`` (by ``settings.user`` / ``settings.role``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import asdict
from typing import Any

from core.config import Settings
from services.accounts import (
    ROLES,
    UserError,
    add_sso_user,
    add_user,
    check_password,
    disable_user,
    get_user,
    list_users,
    set_password,
)
from ui.events import record_event


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``users`` and its sub-commands on the CLI's top-level subparsers."""
    users = subparsers.add_parser("users", help="manage the app's sign-in accounts")
    usub = users.add_subparsers(dest="users_command", required=True)
    add = usub.add_parser("add", help="create an account")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of prompting",
    )
    add.add_argument(
        "--sso",
        action="store_true",
        help="no password: the account signs in only through single sign-on (sso_provider); "
        "USERNAME is the identity provider's e-mail (or the sso_claim configured)",
    )
    lst = usub.add_parser("list", help="list accounts")
    lst.add_argument("--json", action="store_true")
    dis = usub.add_parser("disable", help="stop an account from signing in")
    dis.add_argument("username")
    ena = usub.add_parser("enable", help="let a disabled account sign in again")
    ena.add_argument("username")
    pw = usub.add_parser("passwd", help="set a new password")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    return users


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    check_password(first)
    if getpass.getpass("Repeat password: ") != first:
        raise UserError("The passwords do not match; nothing was changed.")
    return first


def _record(settings: Settings, event: str, payload: dict[str, Any]) -> None:
    record_event(settings, event, settings.user, settings.role, payload)


def users_command(args: argparse.Namespace, settings: Settings) -> int:
    command = args.users_command
    if command == "list":
        users = list_users(settings)
        if getattr(args, "json", False):
            print(json.dumps([asdict(u) for u in users], indent=2))
            return 0
        if not users:
            print("No accounts yet. Create one with: clinrag users add NAME --role ROLE")
        for u in users:
            state = "disabled" if u.disabled else "active"
            print(f"{u.username:32} {u.role:10} {state:9} last sign-in: {u.last_login or '-'}")
        return 0
    if command == "add":
        if args.sso:
            user = add_sso_user(settings, args.username, args.role)
        else:
            user = add_user(settings, args.username, _read_password(args.password_stdin), args.role)
        _record(
            settings,
            "user_add",
            {"username": user.username, "new_role": user.role, "sso_only": bool(args.sso)},
        )
        print(f"Added {user.username} ({user.role}).")
        return 0
    if command in {"disable", "enable"}:
        if not disable_user(settings, args.username, disabled=command == "disable"):
            print(f"No user {args.username!r} (see: clinrag users list).", file=sys.stderr)
            return 1
        _record(settings, f"user_{command}", {"username": args.username.strip().lower()})
        print(f"{command.capitalize()}d {args.username}.")
        return 0
    if command == "passwd":
        if get_user(settings, args.username) is None:
            print(f"No user {args.username!r} (see: clinrag users list).", file=sys.stderr)
            return 1
        set_password(settings, args.username, _read_password(args.password_stdin))
        _record(settings, "user_password", {"username": args.username.strip().lower()})
        print(f"Password changed for {args.username}.")
        return 0
    raise UserError(f"Unknown users command {command!r}.")
