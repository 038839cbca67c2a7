"""Who may do what: the one table of roles and the operations each may perform.

Every service function checks its operation here before acting, so the Streamlit pages and
the command line cannot disagree (the pages also hide what a role may not use, but hiding is
not the check).
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import AccessDeniedError
from core.types import Actor

ROLES: tuple[str, ...] = ("clinician", "auditor", "admin")


class Operation(StrEnum):
    ASK = "ask"
    READ_LIBRARY = "read the library"
    CHANGE_LIBRARY = "change the library"
    MANAGE_ACCOUNTS = "manage accounts"
    READ_AUDIT = "read the audit log"
    MAINTAIN = "back up, restore or reindex"


ALLOWED: dict[Operation, frozenset[str]] = {
    Operation.ASK: frozenset({"clinician", "admin"}),
    Operation.READ_LIBRARY: frozenset(ROLES),
    Operation.CHANGE_LIBRARY: frozenset({"admin"}),
    Operation.MANAGE_ACCOUNTS: frozenset({"admin"}),
    Operation.READ_AUDIT: frozenset({"auditor", "admin"}),
    Operation.MAINTAIN: frozenset({"admin"}),
}


def allowed(role: str, operation: Operation) -> bool:
    return role in ALLOWED[operation]


def require(actor: Actor, operation: Operation) -> None:
    """Raise :class:`AccessDeniedError` unless ``actor``'s role may perform ``operation``."""
    if not allowed(actor.role, operation):
        roles = ", ".join(sorted(ALLOWED[operation]))
        raise AccessDeniedError(
            f"{actor.user} ({actor.role}) may not {operation}; that needs the role {roles}. "
            "Ask an administrator to change your role."
        )


def operator(user: str) -> Actor:
    """The actor of a command-line operation.

    Whoever can run the ``clinrag`` command on the server can read and write CLINRAG_HOME
    directly, so role checks there would only be theatre; the command line acts as an
    administrator, recorded under the configured user name.
    """
    return Actor(user, "admin")
