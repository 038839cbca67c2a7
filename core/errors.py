"""The exception hierarchy. Every message tells the user what to do next."""

from __future__ import annotations


class ClinragError(Exception):
    """Base class: anything clinrag raises on purpose. Its message is shown to the user."""

    exit_code = 2


class ConfigError(ClinragError):
    """The settings are invalid (unknown key, wrong type, missing model)."""


class StoreLockedError(ClinragError):
    """Another process holds the writer lock on the store."""


class EmbedderMismatchError(ClinragError):
    """The index was built with a different embedding model than the one configured."""


class IndexEmptyError(ClinragError):
    """Nothing has been ingested yet."""


class ModelUnavailableError(ClinragError):
    """A configured model file, directory or server cannot be used."""


class ModelServerBusyError(ModelUnavailableError):
    """The model server timed out, dropped the connection or failed with HTTP 5xx: it may be
    overloaded or restarting, so the same request may succeed later (the attribution queue
    tries again; a clinician can ask again)."""


class LoadError(ClinragError):
    """One input file cannot be ingested. `reason` is a short stable code for summaries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AuditError(ClinragError):
    """The audit log cannot be written or read; answers are withheld until it can."""


class InputLimitError(ClinragError):
    """A request exceeds a configured limit (question length, rate, upload size)."""


class AccessDeniedError(ClinragError):
    """The signed-in role may not perform the operation; an administrator can change roles."""

    exit_code = 4


class NotFoundError(ClinragError):
    """The document, record or account named does not exist; the message says how to list them."""

    exit_code = 1
