"""Tamper-evident audit log: hash-chained SQLite records with HMAC-signed checkpoints.

Standard library only, so any machine with Python can verify a copied log::

    from audit.log import AuditLog
    print(AuditLog(db, checkpoint, key).verify())

Modules, one concept each: ``chain`` (record format and hashing), ``checkpoint`` (the signing
key and the signed head and history files), ``files`` (durable private writes and the append
lock), ``database`` (opening the SQLite file), ``migrations`` (its schema), ``store`` (the
:class:`AuditLog`: append, read, back up), ``verify`` (the verifier), ``anchor`` (every signed
head witnessed outside the box), ``stream`` (every record copied to a SIEM), ``sinks`` (the
syslog and file destinations both write to), ``export`` and ``redact``.
Opening a database for writing also uses ``core.migrations``, itself standard library only.
"""

from audit.log.chain import GENESIS_HASH, Record, canonical_json, record_hash
from audit.log.checkpoint import default_checkpoint_path, history_path_for
from audit.log.errors import (
    AuditKeyError,
    AuditLogError,
    AuditPayloadError,
    AuditReadError,
    AuditWriteError,
)
from audit.log.store import AuditLog
from audit.log.verify import VerifyResult

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
