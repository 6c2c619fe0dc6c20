"""Helpers shared by the audit tests (real keys, real files, the real writer); no tests of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.audit import AuditRecord, AuditSettings, AuditWriter
from gateway.audit.keys import AuditKeyPaths, generate_keys, load_auditor_private_key, load_verify_key
from gateway.audit.record import AuditContent
from gateway.audit.verify import VerifyReport, verify_log

PASSPHRASE = b"correct horse battery staple"
HMAC_KEY = "k" * 32


def make_keys(directory: Path) -> AuditKeyPaths:
    return generate_keys(directory, PASSPHRASE)


def auditor_key(keys: AuditKeyPaths) -> X25519PrivateKey:
    return load_auditor_private_key(keys.auditor_private, PASSPHRASE)


def settings_for(log_dir: Path, keys: AuditKeyPaths, **overrides: Any) -> AuditSettings:
    values: dict[str, Any] = {
        "directory": log_dir,
        "auditor_public_key": keys.auditor_public,
        "signing_key": keys.signing_private,
        "hmac_key": HMAC_KEY,
        "checkpoint_interval_s": 300.0,
    }
    return AuditSettings.model_validate(values | overrides)


def sample_record(number: int, **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "time": time.time(),
        "request_id": f"req-{number:06d}",
        "trace_id": f"{number:032x}",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 12.5,
        "subject": f"user-{number % 3}",
        "tenant": "acme",
        "roles": ("engineer",),
        "model": "tiny-model",
        "worker": "https://127.0.0.1:9001",
        "policy_version": "v1",
        "decision": "allowed",
        "rule": "roles.engineer.models[0]",
        "guard_scores": {"injection": 0.125},
        "guard_rules": ("inj-001",),
        "pii_counts": {"EMAIL_ADDRESS": 1},
        "tokens_in": 40,
        "tokens_out": 16,
        "prompt": AuditContent("hmac", "ab" * 32),
    }
    return AuditRecord(**(values | fields))


async def write_all(
    settings: AuditSettings, records: list[AuditRecord], *, concurrent: bool = False
) -> AuditWriter:
    """Start a writer, write ``records`` (one at a time unless ``concurrent``), close it."""
    writer = AuditWriter(settings)
    await writer.start()
    try:
        if concurrent:
            await asyncio.gather(*(writer.write(record) for record in records))
        else:
            for record in records:
                await writer.write(record)
    finally:
        await writer.close()
    return writer


def write_log(settings: AuditSettings, count: int, *, start: int = 0, **fields: Any) -> AuditWriter:
    records = [sample_record(number, **fields) for number in range(start, start + count)]
    return asyncio.run(write_all(settings, records))


def verify(log_dir: Path, keys: AuditKeyPaths) -> VerifyReport:
    return verify_log(log_dir, load_verify_key(keys.signing_public))
