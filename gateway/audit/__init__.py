"""The encrypted, tamper-evident audit log: one record per request, readable by auditors only.

The gateway side::

    writer = AuditWriter(settings.audit)       # AuditSettings, mounted as ``audit:``
    await writer.start()                        # at start-up; raises AuditError (bad keys or directory)
    await writer.write(build_record(ctx, status=200, hmac_key=settings.audit.hmac_key_bytes(), ...))
    await writer.close()                        # at shutdown

``write`` returns once the record is durable and raises ``AuditUnavailable`` (a 503 ``ApiError``) when
it cannot be written: re-raise it (fail closed) unless ``settings.audit.fail_open``. ``writer.stats``
holds the counters for /metrics. The auditors' side is ``verify_log``, ``read_records`` and
``log_stats``, and the ``python -m gateway audit`` commands on top of them. ``format`` describes the
files.
"""

from __future__ import annotations

from gateway.audit.reader import LogStats, ReadError, RecordFilter, log_stats, read_records
from gateway.audit.record import AuditContent, AuditRecord, audit_content, build_record, canonical_text
from gateway.audit.settings import AuditSettings
from gateway.audit.verify import Problem, VerifyReport, verify_log
from gateway.audit.writer import AuditError, AuditStats, AuditUnavailable, AuditWriter

__all__ = [
    "AuditContent",
    "AuditError",
    "AuditRecord",
    "AuditSettings",
    "AuditStats",
    "AuditUnavailable",
    "AuditWriter",
    "LogStats",
    "Problem",
    "ReadError",
    "RecordFilter",
    "VerifyReport",
    "audit_content",
    "build_record",
    "canonical_text",
    "log_stats",
    "read_records",
    "verify_log",
]
