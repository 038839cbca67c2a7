"""``clinrag users add|list|disable|enable|passwd``: manage the app's local accounts.

Argument parsing and printing only; ``services.accounts`` checks, changes and records.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import asdict

from core.config import Settings
from core.errors import NotFoundError
from services import accounts
from services.access import ROLES, operator
from services.accounts import ADMIN_PASSWORD_ENV, UserError, check_password


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``users`` and its sub-commands on the CLI's top-level subparsers."""
    users = subparsers.add_parser("users", help="manage the app's sign-in accounts")
    usub = users.add_subparsers(dest="users_command", required=True)
    usub.add_parser(
        "ensure-admin",
        help="create 'admin' when no active administrator exists (password from "
        "CLINRAG_ADMIN_PASSWORD, or generated and printed once); make run does this first",
    )
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


def users_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run(args, settings)
    except NotFoundError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace, settings: Settings) -> int:
    actor = operator(settings.user)
    command = args.users_command
    if command == "ensure-admin":
        given = os.environ.get(ADMIN_PASSWORD_ENV) or None
        generated = accounts.ensure_admin(settings, given)
        if generated:
            print(
                f"Created user 'admin' in {settings.home} with password: {generated}\n"
                "Sign in at the app and choose a new password (it is asked for at once)."
            )
        elif given and accounts.get_user(settings, accounts.ADMIN_USERNAME) is not None:
            print("The 'admin' account exists (password from CLINRAG_ADMIN_PASSWORD or as set).")
        else:
            print("An administrator account exists; nothing to do.")
        return 0
    if command == "list":
        users = accounts.accounts(settings, actor)
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
        password = None if args.sso else _read_password(args.password_stdin)
        user = accounts.create(
            settings, actor, args.username, args.role, password=password, sso_only=args.sso
        )
        print(f"Added {user.username} ({user.role}).")
        return 0
    if command in {"disable", "enable"}:
        accounts.set_disabled(settings, actor, args.username, disabled=command == "disable")
        print(f"{command.capitalize()}d {args.username}.")
        return 0
    if command == "passwd":
        if accounts.get_user(settings, args.username) is None:
            raise NotFoundError(f"No user {args.username!r} (see: clinrag users list).")
        accounts.change_password(
            settings, actor, args.username, _read_password(args.password_stdin)
        )
        print(f"Password changed for {args.username}.")
        return 0
    raise UserError(f"Unknown users command {command!r}.")
