from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.cli import main
from gateway.pki import LEAF_DAYS, PkiPaths, init_pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_init_writes_a_complete_set_with_private_keys_0600(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    assert main(["certs", "init", str(directory), "--name", "worker.internal", "--name", "10.1.2.3"]) == 0
    paths = PkiPaths(directory)
    for path in paths.all():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith("-key.pem"):
            assert mode == 0o600, path
        else:
            assert mode & 0o077 in (0o044, 0o004, 0o040), path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_ca_is_a_constrained_p256_ca(pki: PkiPaths) -> None:
    ca = load(pki.ca_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature


def test_worker_cert_is_server_only_with_local_sans(tmp_path: Path) -> None:
    paths, _ = init_pki(tmp_path, server_names=["worker.internal", "10.1.2.3"])
    cert = load(paths.worker_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "worker.internal"} <= set(sans.get_values_for_type(x509.DNSName))
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")} <= ips
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_gateway_cert_is_client_only(pki: PkiPaths) -> None:
    cert = load(pki.gateway_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign


def test_leaves_are_short_lived_and_signed_by_the_ca(pki: PkiPaths) -> None:
    ca = load(pki.ca_cert)
    for path in (pki.worker_cert, pki.gateway_cert):
        cert = load(path)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime <= dt.timedelta(days=LEAF_DAYS, minutes=10)
        cert.verify_directly_issued_by(ca)


def test_rerun_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    paths, written = init_pki(tmp_path)
    assert written
    before = paths.worker_cert.read_bytes()
    assert main(["certs", "init", str(tmp_path)]) == 0
    assert paths.worker_cert.read_bytes() == before
    assert main(["certs", "init", str(tmp_path), "--force"]) == 0
    assert paths.worker_cert.read_bytes() != before


def test_partial_set_is_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths, _ = init_pki(tmp_path)
    paths.gateway_key.unlink()
    ca_before = paths.ca_cert.read_bytes()
    assert main(["certs", "init", str(tmp_path)]) == 1
    assert "partial set" in capsys.readouterr().err
    assert paths.ca_cert.read_bytes() == ca_before


def test_invalid_validity_is_refused(tmp_path: Path) -> None:
    assert main(["certs", "init", str(tmp_path), "--days", "0"]) == 2
    assert not PkiPaths(tmp_path).ca_cert.exists()
