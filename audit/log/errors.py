"""Errors raised by the audit log.

Each message says what to do next, because it reaches a clinician or an administrator rather
than a developer. The classes deliberately derive from the standard library only: ``audit.log``
must import on a machine with nothing but Python installed, so it cannot subclass
``core.errors.ClinragError``; the assistant wraps these in its own ``AuditError``.
"""

from __future__ import annotations


class AuditLogError(Exception):
    """Base class for everything the audit log raises on purpose."""


class AuditWriteError(AuditLogError):
    """A record (or its checkpoint) could not be made durable.

    Callers must fail closed on this: no answer may be shown without its audit record.
    """


class AuditReadError(AuditLogError):
    """The database exists but cannot be read, or a stored row cannot be decoded."""


class AuditPayloadError(AuditLogError, ValueError):
    """The event, user, role or payload cannot be recorded as canonical JSON.

    Also a ``ValueError`` so generic input validation catches it: it is the caller's data,
    not the disk, that is wrong.
    """


class AuditKeyError(AuditLogError):
    """The checkpoint signing key is missing, unreadable or damaged."""
