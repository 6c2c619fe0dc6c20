"""Certificates for the mTLS link between gateway and workers, on ``cryptography``.

``init_pki`` writes an ECDSA P-256 CA, a worker server certificate and a gateway client
certificate. Leaves are short-lived and carry exact key usages (serverAuth xor clientAuth), so a
client certificate can never serve as a worker and the other way round. Private keys are
written 0600 and never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 365
LEAF_DAYS = 30
_CLOCK_SKEW = dt.timedelta(minutes=5)
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


class Usage(Enum):
    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """Where ``init_pki`` writes each file inside its directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def worker_cert(self) -> Path:
        return self.root / "worker.pem"

    @property
    def worker_key(self) -> Path:
        return self.root / "worker-key.pem"

    @property
    def gateway_cert(self) -> Path:
        return self.root / "gateway-client.pem"

    @property
    def gateway_key(self) -> Path:
        return self.root / "gateway-client-key.pem"

    def all(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.worker_cert,
            self.worker_key,
            self.gateway_cert,
            self.gateway_key,
        )


class PkiExistsError(Exception):
    """Some of the files exist already; nothing was written."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "Warden mTLS CA", *, days: int = CA_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_leaf(
    ca: Issued,
    common_name: str,
    usage: Usage,
    *,
    names: Iterable[str] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """Issue a server or client certificate. ``names`` become DNS or IP SANs.

    ``not_before``/``not_after`` override the validity window (tests use them for expired certs).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - _CLOCK_SKEW)
    end = not_after or (_now() + dt.timedelta(days=days))
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage is Usage.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    sans = _subject_alt_names([common_name, *names])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def write_issued(issued: Issued, cert_path: Path, key_path: Path) -> None:
    """Write a certificate (0644) and its key (0600, created with that mode, never world-readable)."""
    write_key_file(key_path, issued.key_pem(), 0o600)
    write_key_file(cert_path, issued.cert_pem(), 0o644)


def write_key_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, created with its final mode so a private key is never readable by others,
    even briefly; a symlink in the staging name's place is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.chmod(mode)  # the umask may have narrowed it; make it exact
    tmp.replace(path)


def init_pki(
    directory: Path,
    *,
    server_names: Sequence[str] = (),
    force: bool = False,
    leaf_days: int = LEAF_DAYS,
    ca_days: int = CA_DAYS,
) -> tuple[PkiPaths, bool]:
    """Create the CA, worker and gateway certificates in ``directory``.

    Returns the paths and whether anything was written. A complete existing set is kept as it is;
    a partial one is an error unless ``force`` is given, which replaces everything.
    """
    paths = PkiPaths(directory)
    present = [p for p in paths.all() if p.exists()]
    if present and not force:
        if len(present) == len(paths.all()):
            return paths, False
        names = ", ".join(p.name for p in present)
        raise PkiExistsError(f"{directory} holds a partial set ({names}); rerun with --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = create_ca(days=ca_days)
    worker = issue_leaf(
        ca,
        "warden-worker",
        Usage.SERVER,
        names=[*DEFAULT_SERVER_NAMES, *server_names],
        days=leaf_days,
    )
    gateway = issue_leaf(ca, "warden-gateway", Usage.CLIENT, days=leaf_days)
    write_issued(ca, paths.ca_cert, paths.ca_key)
    write_issued(worker, paths.worker_cert, paths.worker_key)
    write_issued(gateway, paths.gateway_cert, paths.gateway_key)
    return paths, True


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read back a certificate and key written by ``write_issued`` (to issue more leaves from a CA)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    return Issued(cert, key)
