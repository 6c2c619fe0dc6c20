"""The audit key files: the auditors' X25519 pair and the gateway's Ed25519 checkpoint-signing pair.

The auditors' private key is stored encrypted under a passphrase (PKCS#8 with the best encryption
``cryptography`` offers) and belongs with the auditors; the gateway is configured with the auditors'
public key and its own signing key only. Private key files are 0600.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gateway.pki import write_key_file

MIN_PASSPHRASE_CHARS = 12


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong kind, or its passphrase is wrong."""


@dataclass(frozen=True, slots=True)
class AuditKeyPaths:
    root: Path

    @property
    def auditor_private(self) -> Path:
        return self.root / "auditor-key.pem"

    @property
    def auditor_public(self) -> Path:
        return self.root / "auditor-public.pem"

    @property
    def signing_private(self) -> Path:
        return self.root / "signing-key.pem"

    @property
    def signing_public(self) -> Path:
        return self.root / "signing-public.pem"

    def all(self) -> tuple[Path, ...]:
        return (self.auditor_private, self.auditor_public, self.signing_private, self.signing_public)


def generate_keys(directory: Path, passphrase: bytes, *, force: bool = False) -> AuditKeyPaths:
    """Write both key pairs; existing files are kept (KeyFileError) unless ``force``."""
    if len(passphrase.decode("utf-8", errors="replace")) < MIN_PASSPHRASE_CHARS:
        raise KeyFileError(f"the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")
    paths = AuditKeyPaths(directory)
    present = [p.name for p in paths.all() if p.exists()]
    if present and not force:
        raise KeyFileError(f"{directory} already holds {', '.join(present)}; use --force to replace")
    auditor = X25519PrivateKey.generate()
    signing = Ed25519PrivateKey.generate()
    pkcs8, spki, pem = (
        serialization.PrivateFormat.PKCS8,
        serialization.PublicFormat.SubjectPublicKeyInfo,
        serialization.Encoding.PEM,
    )
    encryption = serialization.BestAvailableEncryption(passphrase)
    write_key_file(paths.auditor_private, auditor.private_bytes(pem, pkcs8, encryption), 0o600)
    write_key_file(paths.auditor_public, auditor.public_key().public_bytes(pem, spki), 0o644)
    no_encryption = serialization.NoEncryption()
    write_key_file(paths.signing_private, signing.private_bytes(pem, pkcs8, no_encryption), 0o600)
    write_key_file(paths.signing_public, signing.public_key().public_bytes(pem, spki), 0o644)
    return paths


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None


def load_auditor_public_key(path: Path) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path}: expected the auditors' X25519 public key")
    return key


def load_auditor_private_key(path: Path, passphrase: bytes | None) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=passphrase)
    except TypeError:
        raise KeyFileError(f"{path}: the key is encrypted; a passphrase is needed") from None
    except ValueError:
        raise KeyFileError(f"{path}: wrong passphrase, or not a PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: expected the auditors' X25519 private key")
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (TypeError, ValueError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected the gateway's Ed25519 signing key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected the gateway's Ed25519 signing public key")
    return key
