"""Sealing cache entries: AES-256-GCM with versioned keys, the entry's Redis key as associated data.

A sealed value is ``format (1 byte) | key version (2 bytes) | nonce (12 bytes) | ciphertext+tag``.
The associated data binds the value to its key, so a value copied under another entry's name
(another tenant's, say) fails to open. A value whose key version is no longer configured, or that
fails authentication, opens to ``None``: the caller treats it as a miss.
"""

from __future__ import annotations

import logging
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.redis_settings import CacheSettings

logger = logging.getLogger(__name__)

SEALED_FORMAT = 1
_HEADER = struct.Struct(">BH")
_NONCE_BYTES = 12
_SALT = b"warden-gateway-cache"


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(secret)


class CacheKeyring:
    """The HMAC key that names entries and the AES keys that seal them, by version."""

    def __init__(self, name_secret: bytes, sealing: dict[int, bytes], write_version: int) -> None:
        if write_version not in sealing:
            raise ValueError(f"no sealing key for version {write_version}")
        self.name_key = _derive(name_secret, b"entry names")
        self._aead = {version: AESGCM(_derive(key, b"entry values")) for version, key in sealing.items()}
        self.write_version = write_version

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> CacheKeyring:
        if settings.key_secret is None:
            logger.warning(
                "cache secrets not configured: this process uses random keys; "
                "replicas share no entries and entries end with the process"
            )
            return cls.ephemeral()
        sealing = {v: s.get_secret_value().encode() for v, s in settings.encryption_keys.items()}
        return cls(settings.key_secret.get_secret_value().encode(), sealing, settings.write_version())

    @classmethod
    def ephemeral(cls) -> CacheKeyring:
        return cls(os.urandom(32), {1: os.urandom(32)}, 1)

    def seal(self, name: bytes, plaintext: bytes) -> bytes:
        header = _HEADER.pack(SEALED_FORMAT, self.write_version)
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._aead[self.write_version].encrypt(nonce, plaintext, header + name)

    def open(self, name: bytes, sealed: bytes) -> bytes | None:
        if len(sealed) < _HEADER.size + _NONCE_BYTES + 16:
            return None
        header = sealed[: _HEADER.size]
        fmt, version = _HEADER.unpack(header)
        aead = self._aead.get(version)
        if fmt != SEALED_FORMAT or aead is None:
            return None
        nonce = sealed[_HEADER.size : _HEADER.size + _NONCE_BYTES]
        try:
            return aead.decrypt(nonce, sealed[_HEADER.size + _NONCE_BYTES :], header + name)
        except InvalidTag:
            return None


def sealed_version(sealed: bytes) -> int | None:
    """The key version a sealed value names (for tests and rotation tooling); None if malformed."""
    if len(sealed) < _HEADER.size:
        return None
    fmt, version = _HEADER.unpack(sealed[: _HEADER.size])
    return int(version) if fmt == SEALED_FORMAT else None
