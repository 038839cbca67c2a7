"""Tamper-evident audit log: hash-chained SQLite records with HMAC-signed checkpoints.

Standard library only, so any machine with Python can verify a copied log::

    from audit.log import AuditLog
    print(AuditLog(db, checkpoint, key).verify())
"""

from audit.log.errors import (
    AuditKeyError,
    AuditLogError,
    AuditPayloadError,
    AuditReadError,
    AuditWriteError,
)
from audit.log.store import (
    GENESIS_HASH,
    AuditLog,
    Record,
    VerifyResult,
    canonical_json,
    default_checkpoint_path,
    history_path_for,
    record_hash,
)

__all__ = [
    "GENESIS_HASH",
    "AuditKeyError",
    "AuditLog",
    "AuditLogError",
    "AuditPayloadError",
    "AuditReadError",
    "AuditWriteError",
    "Record",
    "VerifyResult",
    "canonical_json",
    "default_checkpoint_path",
    "history_path_for",
    "record_hash",
]
