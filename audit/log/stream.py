"""The stream: one JSON line per committed record to the hospital's SIEM (``audit_stream``).

Each line is the record's FHIR R4 ``AuditEvent`` (the mapping ``export`` uses for a Bundle), so
the SIEM sees who did what and when, with the record's seq, hash and previous hash to tie the
copy back to the chain and to notice gaps.

Failure semantics: the record is committed (and its checkpoints written) before anything is
streamed, and a stream failure is reported through :mod:`logging` (stderr when the process
configured none) but never fails the append: the log is the record of truth, the stream a copy.
A record the stream lost is still in the log, and the SIEM can see the gap in ``seq``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from audit.log.chain import Record, canonical_json
from audit.log.export import audit_event
from audit.log.sinks import Sink, append_line, send_syslog

logger = logging.getLogger("clinrag.audit.stream")

# rsyslog's default maxMessageSize is 8 KiB and relays truncate past it, which would leave the
# SIEM an unparseable line. Over this, syslog gets the event without its answer and chunk
# entities (the record entity keeps seq and hashes, so the full record can be looked up).
SYSLOG_MAX_BYTES = 7_000


def stream_line(record: Record) -> str:
    return canonical_json(audit_event(record))


def _compact_line(record: Record) -> str:
    event = audit_event(record)
    event["entity"] = event.get("entity", [])[:1]
    return canonical_json(event)


def stream_record(sinks: Sequence[Sink], record: Record) -> None:
    """Send ``record`` to every sink; report failures, never raise."""
    if not sinks:
        return
    try:
        line = stream_line(record)
    except (TypeError, ValueError) as exc:
        logger.error("audit stream: record %s could not be rendered (%s)", record.seq, exc)
        return
    for sink in sinks:
        try:
            if sink.kind == "file":
                assert sink.path is not None
                append_line(sink.path, line, durable=False)
            else:
                text = line
                if len(text.encode("utf-8")) > SYSLOG_MAX_BYTES:
                    text = _compact_line(record)
                send_syslog(sink.facility, text)
        except Exception as exc:  # noqa: BLE001 - any failure: report, keep the record
            logger.error(
                "audit stream: record %s was committed but not sent to %s (%s); the log "
                "still holds it",
                record.seq,
                sink,
                exc,
            )
