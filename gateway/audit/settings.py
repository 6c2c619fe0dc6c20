"""Settings for the audit log, mounted in the gateway's settings as ``audit:``.

The audit log is off until ``directory``, ``auditor_public_key``, ``signing_key`` and ``hmac_key`` are
all given; a partial section is an error, so a typo never silently turns auditing off. Keys come from
``python -m gateway audit keygen``: the gateway gets the auditors' *public* key only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from gateway.config import StrictModel

# Keyed hashes of prompts and outputs: a key shorter than the hash output weakens HMAC-SHA256.
MIN_HMAC_KEY_BYTES = 32


class AuditSettings(StrictModel):
    directory: Path | None = None
    """Where segment files are written (created 0700). Unset: no audit log."""
    auditor_public_key: Path | None = None
    """The auditors' X25519 public key (PEM). Records are encrypted to it; the gateway cannot decrypt."""
    signing_key: Path | None = None
    """The gateway's Ed25519 private key (PEM, unencrypted, 0600) that signs checkpoints."""
    hmac_key: SecretStr | None = None
    """Key for the keyed hashes of prompts and outputs (policy mode ``hmac``); share it with auditors."""
    segment_max_bytes: int = Field(default=32 * 1024 * 1024, ge=4096, le=1 << 30)
    """A segment is closed and a new one (with a fresh data key) started past this size."""
    segment_max_age_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    """...or once it holds records and is this old: bounds how long one data key lives in memory."""
    checkpoint_interval_s: float = Field(default=5.0, gt=0, le=300)
    """Signed checkpoints this often (when records were added) and whenever a segment closes."""
    retention_days: float | None = Field(default=None, gt=0)
    """Closed segments whose last record is older than this are deleted. Unset: keep everything."""
    fail_open: bool = False
    """When records cannot be written: false answers 503; true lets requests through unaudited."""

    @model_validator(mode="after")
    def _all_or_nothing(self) -> AuditSettings:
        given = {
            "directory": self.directory,
            "auditor_public_key": self.auditor_public_key,
            "signing_key": self.signing_key,
            "hmac_key": self.hmac_key,
        }
        missing = [name for name, value in given.items() if value is None]
        if missing and len(missing) < len(given):
            raise ValueError(f"the audit log also needs {', '.join(missing)} (or leave out all four)")
        secret = self.hmac_key.get_secret_value() if self.hmac_key is not None else None
        if secret is not None and len(secret.encode("utf-8")) < MIN_HMAC_KEY_BYTES:
            raise ValueError(f"hmac_key must be at least {MIN_HMAC_KEY_BYTES} bytes")
        return self

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def hmac_key_bytes(self) -> bytes:
        if self.hmac_key is None:
            raise ValueError("the audit log is not configured")
        return self.hmac_key.get_secret_value().encode("utf-8")
