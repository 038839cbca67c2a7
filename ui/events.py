"""The UI's door to the audit log: sign-ins, feedback, exports and library changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.config import Settings

# (event, user, role, payload) -> anything; raises when the event cannot be recorded.
EventSink = Callable[[str, str, str, dict[str, Any]], Any]


def audit_log(settings: Settings) -> Any:
    """A new ``AuditLog`` on the settings' files (cheap: nothing is opened until used)."""
    from audit.log import AuditLog

    return AuditLog(
        settings.audit_db,
        settings.audit_checkpoint,
        settings.audit_key,
        checkpoint_every=settings.audit_checkpoint_every,
    )


def record_event(
    settings: Settings, event: str, user: str, role: str, payload: dict[str, Any]
) -> int:
    """Append one event and return its sequence number. Raises if it cannot be written."""
    log = audit_log(settings)
    try:
        return int(log.append(event, user or "unknown", role or "unknown", payload).seq)
    finally:
        log.close()


def sink(settings: Settings) -> EventSink:
    """An :data:`EventSink` writing to the settings' audit log."""

    def write(event: str, user: str, role: str, payload: dict[str, Any]) -> int:
        return record_event(settings, event, user, role, payload)

    return write
