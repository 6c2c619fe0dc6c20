"""Per-segment encryption: the gateway can write records that only the auditors can read.

Each segment gets a fresh ephemeral X25519 key pair. ECDH with the auditors' public key and
HKDF-SHA256 (salt: the segment id; info binds both public keys) give a 256-bit AES-GCM data key.
The ephemeral private key is dropped as soon as the data key exists, and the data key lives only in
the ``SegmentSealer`` of the open segment, so once a segment is closed nothing in the gateway can
decrypt it. Auditors re-derive the key from the ephemeral public key in the segment header.

Nonces are the record's sequence number (unique within a segment, and every segment has its own key);
the associated data is (segment id, sequence number), so a ciphertext moved to another place in the
log no longer decrypts.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEGMENT_ID_BYTES = 16
CIPHER_SUITE = "X25519-HKDF-SHA256/AES-256-GCM"
_HKDF_INFO = b"warden audit segment key v1"
_NONCE_PREFIX = bytes(4)


class DecryptError(Exception):
    """A record could not be decrypted: wrong auditor key, or the ciphertext or its position changed."""


def fingerprint(raw_public_key: bytes) -> str:
    """Short identifier of a public key (raw 32 bytes) for headers, checkpoints and error messages."""
    return hashlib.sha256(raw_public_key).hexdigest()[:32]


def _derive(shared: bytes, segment_id: bytes, ephemeral_public: bytes, auditor_public: bytes) -> AESGCM:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=segment_id,
        info=_HKDF_INFO + ephemeral_public + auditor_public,
    )
    return AESGCM(hkdf.derive(shared))


def _position(segment_id: bytes, seq: int) -> tuple[bytes, bytes]:
    counter = seq.to_bytes(8, "big")
    return _NONCE_PREFIX + counter, segment_id + counter


class SegmentSealer:
    """Encrypts the records of one open segment. Holds the data key and nothing that could re-derive it."""

    __slots__ = ("_aead", "_last_seq", "ephemeral_public", "segment_id")

    def __init__(self, segment_id: bytes, auditor_public: X25519PublicKey) -> None:
        if len(segment_id) != SEGMENT_ID_BYTES:
            raise ValueError("segment id must be 16 bytes")
        ephemeral = X25519PrivateKey.generate()
        self.ephemeral_public = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(auditor_public)
        del ephemeral  # only the derived data key is kept
        self._aead = _derive(shared, segment_id, self.ephemeral_public, auditor_public.public_bytes_raw())
        self.segment_id = segment_id
        self._last_seq = 0

    def seal(self, seq: int, plaintext: bytes) -> bytes:
        # A nonce must never repeat under one key: sequence numbers only move forward.
        if seq <= self._last_seq:
            raise ValueError("sequence numbers must increase within a segment")
        self._last_seq = seq
        nonce, aad = _position(self.segment_id, seq)
        return self._aead.encrypt(nonce, plaintext, aad)


class SegmentOpener:
    """Decrypts one segment's records with the auditors' private key."""

    __slots__ = ("_aead", "segment_id")

    def __init__(self, segment_id: bytes, ephemeral_public: bytes, auditor_private: X25519PrivateKey) -> None:
        peer = X25519PublicKey.from_public_bytes(ephemeral_public)
        auditor_public = auditor_private.public_key().public_bytes_raw()
        self._aead = _derive(auditor_private.exchange(peer), segment_id, ephemeral_public, auditor_public)
        self.segment_id = segment_id

    def open(self, seq: int, ciphertext: bytes) -> bytes:
        nonce, aad = _position(self.segment_id, seq)
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptError("authentication failed") from None
