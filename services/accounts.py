"""Local user accounts for the app: SQLite in ``CLINRAG_HOME/users.sqlite`` (or, with
``database_url``, the ``clinrag_accounts`` schema of that PostgreSQL database, shared by every
app server), argon2 hashes.

Roles (``services.access``): ``clinician`` (asks questions), ``auditor`` (reads and exports
the audit log) and ``admin`` (everything, plus the document library). Accounts are disabled,
never deleted, so the audit log's user names keep meaning something. Sign-ins and failed
sign-ins are recorded through a :class:`~audit.record.Recorder`; if it cannot record them,
nobody is signed in. The account operations an administrator performs (create, disable,
enable, set or reset a password, change a role, unlock) check the role and record their
event; the command line and the app's Accounts page call the same functions.

Wrong passwords are counted in one write transaction per attempt, so parallel attempts
(Streamlit runs each session in a thread, replicas share the database) lock the account like
sequential ones. Single
sign-on enters only accounts created for it. The generated first ``admin`` password must be
changed at the first sign-in (``must_change_password``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from audit.record import Recorder
from core.config import Settings, ensure_home
from core.database import Database, SqliteDatabase, copy_tables, open_database
from core.errors import ClinragError, NotFoundError
from core.migrations import Migration, apply_migrations, for_engine
from core.types import Actor
from services.access import ROLES, Operation, require

ADMIN_USERNAME = "admin"
# The first administrator's password, when the operator supplies it (not a settings field).
ADMIN_PASSWORD_ENV = "CLINRAG_ADMIN_PASSWORD"
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
# After this many wrong passwords in a row an account is locked for LOCKOUT_MINUTES.
MAX_FAILURES = 5
LOCKOUT_MINUTES = 15

# Append only (see core.migrations). Stores made before migrations were recorded hold exactly
# the baseline's table, so the runner adopts them instead of re-creating it.
_MIGRATIONS: tuple[Migration, ...] = (
    (
        "001_users",
        """
        CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('clinician', 'auditor', 'admin')),
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            last_login TEXT,
            failed_count INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT
        );
        """,
    ),
    # Set for a password nobody chose (the generated first admin password, printed on the
    # server console): the sign-in page asks for a new one before any page.
    (
        "002_must_change_password",
        "ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;",
    ),
)


class UserError(ClinragError):
    """A user account cannot be created or changed as asked."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    disabled: bool
    created_at: str
    last_login: str | None = None
    must_change_password: bool = False
    # sign-in lockout after MAX_FAILURES wrong passwords (an ISO time in UTC), for the admin
    # page: shown so an administrator can see why someone cannot sign in, and unlock them
    locked_until: str | None = None
    sso_only: bool = False

    @property
    def active(self) -> bool:
        return not self.disabled

    @property
    def locked(self) -> bool:
        return bool(self.locked_until) and str(self.locked_until) > _iso(_now())


def users_path(settings: Settings) -> Path:
    return settings.home / "users.sqlite"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@cache
def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    # Verified against for unknown names so a wrong name takes as long as a wrong password.
    return str(_hasher().hash(secrets.token_urlsafe(16)))


# Per engine; the users table's SQL is portable, so both run the same named migrations.
_MIGRATIONS_BY_ENGINE: dict[str, tuple[Migration, ...]] = {
    "sqlite": _MIGRATIONS,
    "postgresql": _MIGRATIONS,
}
SCHEMA = "clinrag_accounts"
TABLES: tuple[str, ...] = ("users",)


class _UsersFile(SqliteDatabase):
    """The embedded users store: an owner-only file in the home."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(users_path(settings))
        self.settings = settings

    def connect(self) -> sqlite3.Connection:
        ensure_home(self.settings)
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)
        conn = super().connect()
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn


def users_database(settings: Settings) -> Database:
    """Where the accounts are: ``users.sqlite`` in the home, or ``database_url``'s schema."""
    if settings.database_url is None:
        return _UsersFile(settings)
    return open_database(settings.database_url, SCHEMA)


def _db(settings: Settings, database: Database | None = None) -> AbstractContextManager[Any]:
    return _db_of(users_database(settings) if database is None else database)


def copy_users(source: Database, target: Database) -> dict[str, int]:
    """Make ``target`` hold exactly ``source``'s accounts (backup and restore across engines)."""
    with _db_of(source) as src, _db_of(target) as dst:
        return copy_tables(src, dst, target, TABLES)


@contextlib.contextmanager
def _db_of(database: Database) -> Iterator[Any]:
    conn = database.connect()
    try:
        apply_migrations(
            conn,
            for_engine(_MIGRATIONS_BY_ENGINE, database),
            baseline="001_users",
            database=database,
        )
        yield conn
    finally:
        conn.close()


def _row_user(row: Any) -> User:
    return User(
        username=row["username"],
        role=row["role"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        last_login=row["last_login"],
        must_change_password=bool(row["must_change_password"]),
        locked_until=row["locked_until"],
        sso_only=row["password_hash"] == SSO_ONLY,
    )


def check_username(username: str) -> str:
    name = (username or "").strip().lower()
    if not USERNAME_RE.match(name):
        raise UserError(
            f"User name {username!r} is not allowed: use 1 to 64 lower-case letters, digits, "
            "dots, dashes, underscores or @, starting with a letter or digit."
        )
    return name


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"The password must have at least {MIN_PASSWORD_CHARS} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"The password must have at most {MAX_PASSWORD_CHARS} characters.")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"Unknown role {role!r}; choose one of: {', '.join(ROLES)}.")
    return role


def add_user(
    settings: Settings, username: str, password: str, role: str, *, must_change: bool = False
) -> User:
    """Create an account. Raises :class:`UserError` if the name is taken or input is invalid.

    ``must_change``: the user must choose a new password at their first sign-in.
    """
    name = check_username(username)
    check_password(password)
    return _insert_user(
        settings, name, _hasher().hash(password), check_role(role), must_change=must_change
    )


def _insert_user(
    settings: Settings, name: str, password_hash: str, role: str, *, must_change: bool = False
) -> User:
    database = users_database(settings)
    with _db(settings, database) as conn:
        try:
            conn.execute(
                "INSERT INTO users (username, password_hash, role, created_at, "
                "must_change_password) VALUES (?, ?, ?, ?, ?)",
                (name, password_hash, role, _iso(_now()), int(must_change)),
            )
        except database.integrity_errors:
            raise UserError(
                f"A user named {name!r} already exists (see: clinrag users list)."
            ) from None
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
    return _row_user(row)


# Stored instead of a password hash for single-sign-on accounts: no password can match it.
SSO_ONLY = "!sso-only"


def add_sso_user(settings: Settings, username: str, role: str) -> User:
    """An account that signs in only through the identity provider (no password)."""
    return _insert_user(settings, check_username(username), SSO_ONLY, check_role(role))


def _verified(value: Any) -> bool:
    # JSON true; some providers send the string "true". Nothing else counts (1, "yes").
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def sso_sign_in(
    settings: Settings, claims: dict[str, Any], recorder: Recorder | None = None
) -> User | None:
    """Map an identity provider's verified claims to a local account, or None.

    The provider proves who someone is; clinrag's own account store still decides whether
    they may use it and with which role, so an administrator controls access in one place.

    Refused, and audited with the reason: a token from another issuer than ``sso_issuer``
    (when set: a multi-tenant provider signs tokens for every tenant, and a tenant's issuer
    names it); an ``email`` claim the provider has not verified (``email_verified`` is not
    true: many providers let a user type any address); and any account not created for single
    sign-on. Without that last check a claim equal to a password account's name (``admin``,
    or a clinician's e-mail) would enter that account without its password ("nOAuth").
    """
    issuer = str(claims.get("iss", ""))
    raw = str(claims.get(settings.sso_claim) or "")
    name = raw.strip().lower()

    def failed(reason: str, role: str = "unknown") -> None:
        if recorder is not None:
            recorder.login_failed(
                Actor(_safe_name(raw or "(no claim)"), role),
                reason=reason,
                method="sso",
                issuer=issuer,
            )

    if not name:
        failed("sso_missing_claim")
        return None
    if settings.sso_issuer is not None and issuer != settings.sso_issuer:
        failed("sso_wrong_issuer")
        return None
    if settings.sso_claim == "email" and not _verified(claims.get("email_verified")):
        failed("sso_email_unverified")
        return None
    with _db(settings) as conn:
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
        if row is None:
            failed("sso_unknown_user")
            return None
        if row["password_hash"] != SSO_ONLY:
            failed("sso_not_sso_account", row["role"])
            return None
        if row["disabled"]:
            failed("disabled", row["role"])
            return None
        if recorder is not None:
            recorder.login(Actor(name, row["role"]), method="sso", issuer=issuer)
        conn.execute("UPDATE users SET last_login = ? WHERE username = ?", (_iso(_now()), name))
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
    return _row_user(row)


def get_user(settings: Settings, username: str) -> User | None:
    with _db(settings) as conn:
        row = conn.execute(
            "SELECT * FROM users WHERE username = ?", ((username or "").strip().lower(),)
        ).fetchone()
    return _row_user(row) if row else None


def list_users(settings: Settings) -> list[User]:
    with _db(settings) as conn:
        rows = conn.execute("SELECT * FROM users ORDER BY username").fetchall()
    return [_row_user(r) for r in rows]


def disable_user(settings: Settings, username: str, disabled: bool = True) -> bool:
    """Disable (or re-enable) an account. Returns False if there is no such user."""
    with _db(settings) as conn:
        cur = conn.execute(
            "UPDATE users SET disabled = ?, failed_count = 0, locked_until = NULL "
            "WHERE username = ?",
            (int(disabled), (username or "").strip().lower()),
        )
    return int(cur.rowcount) > 0


def set_password(settings: Settings, username: str, password: str) -> bool:
    """Set a password chosen by a person (the user, or an administrator with ``clinrag users
    passwd``): it unlocks the account and clears ``must_change_password``."""
    check_password(password)
    digest = _hasher().hash(password)
    with _db(settings) as conn:
        cur = conn.execute(
            "UPDATE users SET password_hash = ?, failed_count = 0, locked_until = NULL, "
            "must_change_password = 0 WHERE username = ?",
            (digest, (username or "").strip().lower()),
        )
    return int(cur.rowcount) > 0


def _safe_name(username: str) -> str:
    name = "".join(ch for ch in (username or "").strip() if ch.isprintable())[:64]
    return name or "(empty)"


@contextlib.contextmanager
def _write_transaction(conn: Any) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken before the first read, so what is
    read cannot change before the write (ROLLBACK on any exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def authenticate(
    settings: Settings,
    username: str,
    password: str,
    recorder: Recorder | None = None,
) -> User | None:
    """Check a sign-in. Returns the user, or None for any failure (never says which).

    Every attempt is recorded as ``login`` or ``login_failed`` (with a reason for the
    auditor). If recording a successful sign-in raises, the exception propagates and the
    caller must not sign the user in.

    The password is checked (argon2, slow) outside any lock; what it leads to is decided in
    one write transaction that re-reads the account. A wrong password is counted there by
    ``failed_count + 1`` in SQL, and an attempt that finds the account locked by then is
    refused even with the right password. So parallel attempts count like sequential ones:
    of a burst, only those decided before the MAX_FAILURES-th wrong one can get in.
    """
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    hasher = _hasher()
    name = (username or "").strip().lower()

    def failed(reason: str, role: str = "unknown") -> None:
        if recorder is not None:
            recorder.login_failed(Actor(_safe_name(username), role), reason=reason)

    def matches(password_hash: str) -> bool:
        try:
            return bool(hasher.verify(password_hash, password or ""))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    with _db(settings) as conn:
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
        if row is None or _locked(row):
            # verified against anyway, so a wrong name or a locked account takes as long
            matches(_dummy_hash())
            failed("unknown_user" if row is None else "locked", row["role"] if row else "unknown")
            return None
        checked_hash = row["password_hash"]
        right = matches(checked_hash)
        new_hash = (
            hasher.hash(password) if right and hasher.check_needs_rehash(checked_hash) else None
        )
        outcome = _decide(conn, name, checked_hash, right, new_hash, recorder, matches)
        if isinstance(outcome, str):
            failed(outcome, row["role"])
            return None
        return outcome


def _locked(row: Any) -> bool:
    return bool(row["locked_until"]) and str(row["locked_until"]) > _iso(_now())


def _decide(
    conn: Any,
    name: str,
    checked_hash: str,
    right: bool,
    new_hash: str | None,
    recorder: Recorder | None,
    matches: Callable[[str], bool],
) -> User | str:
    """The outcome of one checked attempt, decided under the write lock: the user signed in,
    or the reason it failed (recorded by the caller, after the count is committed)."""
    with _write_transaction(conn):
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
        if row is None:
            return "unknown_user"
        if _locked(row):
            return "locked"
        if row["password_hash"] != checked_hash:  # changed meanwhile: check against the new one
            right, new_hash = matches(row["password_hash"]), None
        if not right:
            # fetchall: a RETURNING statement must run to its end before the COMMIT
            [(count,)] = conn.execute(
                "UPDATE users SET failed_count = failed_count + 1 WHERE username = ? "
                "RETURNING failed_count",
                (name,),
            ).fetchall()
            if count < MAX_FAILURES:
                return "bad_password"
            locked = _iso(_now() + timedelta(minutes=LOCKOUT_MINUTES))
            conn.execute(
                "UPDATE users SET failed_count = 0, locked_until = ? WHERE username = ?",
                (locked, name),
            )
            return "bad_password_locked"
        if row["disabled"]:
            return "disabled"
        if new_hash is not None:
            conn.execute("UPDATE users SET password_hash = ? WHERE username = ?", (new_hash, name))
        # recorded inside the transaction: if the record cannot be written, nothing changes
        if recorder is not None:
            recorder.login(Actor(name, row["role"]))
        conn.execute(
            "UPDATE users SET last_login = ?, failed_count = 0, locked_until = NULL "
            "WHERE username = ?",
            (_iso(_now()), name),
        )
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
    return _row_user(row)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def ensure_admin(settings: Settings, password: str | None = None) -> str | None:
    """Create ``admin`` whenever no active administrator exists (first run, or accounts added
    with the CLI before the app first started: otherwise nobody could ever manage the app).

    Uses ``password`` when given (the app passes ``$CLINRAG_ADMIN_PASSWORD``), otherwise a
    generated one, which is returned so the caller can print it once. Returns None when
    nothing was generated (accounts existed, or the password was supplied).

    A generated password has been printed on the server console, where others may read it,
    so the account must choose a new one at its first sign-in (``must_change_password``). A
    supplied password was chosen by the operator and may be kept: deployments and scripts set
    it from their secret store and sign in with it (rotate it there, or with ``clinrag users
    passwd admin``).
    """
    with _db(settings) as conn:
        if conn.execute(
            "SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0 LIMIT 1"
        ).fetchone():
            return None
        if conn.execute("SELECT 1 FROM users WHERE username = ?", (ADMIN_USERNAME,)).fetchone():
            return None  # a disabled or demoted ``admin``: an administrator's decision, kept
    generated = None if password else generate_password()
    try:
        add_user(
            settings,
            ADMIN_USERNAME,
            password or str(generated),
            "admin",
            must_change=generated is not None,
        )
    except UserError:
        if get_user(settings, ADMIN_USERNAME) is not None:
            return None  # another process created it first
        raise
    return generated


# ------------------------------------------------------------------ administrators' operations


def create(
    settings: Settings,
    actor: Actor,
    username: str,
    role: str,
    *,
    password: str | None = None,
    sso_only: bool = False,
    must_change: bool = False,
) -> User:
    """Create an account (with a password, or for single sign-on only) and record it.

    ``must_change``: the user chooses a new password at their first sign-in (the admin page
    sets it: the administrator saw the initial password).
    """
    require(actor, Operation.MANAGE_ACCOUNTS)
    if sso_only:
        user = add_sso_user(settings, username, role)
    else:
        if password is None:
            raise UserError("A password is needed (or create the account for single sign-on).")
        user = add_user(settings, username, password, role, must_change=must_change)
    with Recorder.open(settings) as recorder:
        recorder.user_add(actor, user.username, new_role=user.role, sso_only=sso_only)
    return user


def set_disabled(settings: Settings, actor: Actor, username: str, *, disabled: bool) -> None:
    """Disable an account (its sessions end at their next page run) or enable it again."""
    require(actor, Operation.MANAGE_ACCOUNTS)
    name = (username or "").strip().lower()
    if disabled:
        user = get_user(settings, name)
        if user is not None and user.role == "admin" and not user.disabled:
            with _db(settings) as conn:
                others = _other_admins(conn, name)
            if others == 0:
                raise UserError(
                    f"{name} is the only active administrator; disabling it would leave "
                    "nobody able to manage accounts. Make another account an administrator "
                    "first."
                )
    if not disable_user(settings, username, disabled=disabled):
        raise _no_such_user(username)
    with Recorder.open(settings) as recorder:
        if disabled:
            recorder.user_disable(actor, name)
        else:
            recorder.user_enable(actor, name)


def change_password(settings: Settings, actor: Actor, username: str, password: str) -> None:
    """Set a new password (which also unlocks the account) and record that it changed."""
    require(actor, Operation.MANAGE_ACCOUNTS)
    if get_user(settings, username) is None:
        raise _no_such_user(username)
    set_password(settings, username, password)
    with Recorder.open(settings) as recorder:
        recorder.user_password(actor, username.strip().lower())


def change_own_password(settings: Settings, actor: Actor, password: str) -> User:
    """The signed-in user sets their own password (the app's forced first change); recorded
    as their own ``user_password`` event. Any signed-in role may; it must differ from the
    current password."""
    user = get_user(settings, actor.user)
    if user is None or user.disabled:
        raise _no_such_user(actor.user)
    check_password(password)
    with _db(settings) as conn:
        row = conn.execute(
            "SELECT password_hash FROM users WHERE username = ?", (user.username,)
        ).fetchone()
    if row is None or row["password_hash"] == SSO_ONLY:
        raise UserError("This account signs in through single sign-on and has no password.")
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        same = bool(_hasher().verify(row["password_hash"], password))
    except (VerificationError, InvalidHashError):
        same = False
    if same:
        raise UserError("Choose a different password from the current one.")
    set_password(settings, user.username, password)
    with Recorder.open(settings) as recorder:
        recorder.user_password(Actor(user.username, user.role), user.username)
    changed = get_user(settings, user.username)
    assert changed is not None
    return changed


def reset_password(
    settings: Settings, actor: Actor, username: str, password: str | None = None
) -> str:
    """An administrator's reset: a new password (``password``, or a generated one) that the
    user must change at their next sign-in, since the administrator knows it. Unlocks the
    account; recorded as ``user_password``. Returns the password, to hand over once."""
    require(actor, Operation.MANAGE_ACCOUNTS)
    user = get_user(settings, username)
    if user is None:
        raise _no_such_user(username)
    if user.sso_only:
        raise UserError(
            f"{user.username} signs in through single sign-on and has no password to reset."
        )
    new = password if password is not None else generate_password()
    set_password(settings, user.username, new)
    with _db(settings) as conn:
        conn.execute(
            "UPDATE users SET must_change_password = 1 WHERE username = ?", (user.username,)
        )
    with Recorder.open(settings) as recorder:
        recorder.user_password(actor, user.username)
    return new


def change_role(settings: Settings, actor: Actor, username: str, role: str) -> User:
    """Give an account another role (its sessions end at their next page run) and record it.

    Refused for the last active administrator, who would leave nobody able to manage
    accounts (``ensure_admin`` would then create a new ``admin`` at the next start).
    """
    require(actor, Operation.MANAGE_ACCOUNTS)
    check_role(role)
    name = (username or "").strip().lower()
    with _db(settings) as conn, _write_transaction(conn):
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
        if row is None:
            raise _no_such_user(username)
        old = str(row["role"])
        if old == role:
            return _row_user(row)
        if old == "admin" and not row["disabled"] and _other_admins(conn, name) == 0:
            raise UserError(
                f"{name} is the only active administrator; make another account an "
                "administrator first."
            )
        conn.execute("UPDATE users SET role = ? WHERE username = ?", (role, name))
        row = conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()
    with Recorder.open(settings) as recorder:
        recorder.user_role(actor, name, old_role=old, new_role=role)
    return _row_user(row)


def _other_admins(conn: Any, name: str) -> int:
    [(count,)] = conn.execute(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND username != ?",
        (name,),
    ).fetchall()
    return int(count)


def unlock(settings: Settings, actor: Actor, username: str) -> None:
    """End a sign-in lockout (after MAX_FAILURES wrong passwords) early, and record it."""
    require(actor, Operation.MANAGE_ACCOUNTS)
    name = (username or "").strip().lower()
    with _db(settings) as conn:
        cur = conn.execute(
            "UPDATE users SET failed_count = 0, locked_until = NULL WHERE username = ?", (name,)
        )
    if cur.rowcount == 0:
        raise _no_such_user(username)
    with Recorder.open(settings) as recorder:
        recorder.user_unlock(actor, name)


def accounts(settings: Settings, actor: Actor) -> list[User]:
    require(actor, Operation.MANAGE_ACCOUNTS)
    return list_users(settings)


def sign_in(settings: Settings, username: str, password: str) -> User | None:
    """A password sign-in, recorded (success or failure) in the audit log before it counts."""
    with Recorder.open(settings) as recorder:
        return authenticate(settings, username, password, recorder)


def sign_in_sso(settings: Settings, claims: dict[str, Any]) -> User | None:
    """A single sign-on, recorded in the audit log before it counts."""
    with Recorder.open(settings) as recorder:
        return sso_sign_in(settings, claims, recorder)


def sign_out(settings: Settings, actor: Actor) -> None:
    """Record that a user signed out (the caller ends the session)."""
    with Recorder.open(settings) as recorder:
        recorder.logout(actor)


def _no_such_user(username: str) -> NotFoundError:
    return NotFoundError(f"No user {username!r} (see: clinrag users list).")
