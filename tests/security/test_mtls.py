"""The worker link: the real worker process, real certificates, real TLS handshakes."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.pki import PkiPaths, Usage, issue_leaf, load_issued, write_issued
from gateway.tls import TlsFiles, client_context, server_context
from tests.support.processes import ServiceProcess
from tests.support.worker import launch_worker


def gateway_context(pki: PkiPaths) -> ssl.SSLContext:
    return client_context(TlsFiles(ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key))


def start_worker(tmp_path: Path, cert: Path, key: Path, ca: Path, *extra: str) -> tuple[ServiceProcess, str]:
    return launch_worker(tmp_path, cert, key, ca, *extra)


@pytest.fixture(scope="module")
def worker(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_worker(
        tmp_path_factory.mktemp("worker"), pki.worker_cert, pki.worker_key, pki.ca_cert
    )
    process.wait_http(f"{url}/health", verify=gateway_context(pki))
    yield url
    process.stop()


def expired_client(pki: PkiPaths, directory: Path) -> TlsFiles:
    ca = load_issued(pki.ca_cert, pki.ca_key)
    now = dt.datetime.now(dt.UTC)
    leaf = issue_leaf(
        ca,
        "warden-gateway",
        Usage.CLIENT,
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    write_issued(leaf, directory / "expired.pem", directory / "expired-key.pem")
    return TlsFiles(ca=pki.ca_cert, cert=directory / "expired.pem", key=directory / "expired-key.pem")


def refused(url: str, context: ssl.SSLContext, **kwargs: object) -> bool:
    """True when the request fails at the TLS layer (in TLS 1.3 a rejected client cert surfaces on read)."""
    try:
        with httpx.Client(verify=context, timeout=5) as client:
            client.get(f"{url}/health", **kwargs)  # type: ignore[arg-type]
    except httpx.TransportError:
        return True
    return False


def test_handshake_succeeds_with_the_gateway_client_certificate(worker: str, pki: PkiPaths) -> None:
    with (
        httpx.Client(verify=gateway_context(pki), timeout=5) as client,
        client.stream("GET", f"{worker}/health") as response,
    ):
        tls_version = response.extensions["network_stream"].get_extra_info("ssl_object").version()
        response.read()
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert tls_version == "TLSv1.3"


def test_handshake_fails_without_a_client_certificate(worker: str, pki: PkiPaths) -> None:
    assert refused(worker, client_context(TlsFiles(ca=pki.ca_cert)))


def test_handshake_fails_with_a_certificate_from_another_ca(
    worker: str, pki: PkiPaths, foreign_pki: PkiPaths
) -> None:
    files = TlsFiles(ca=pki.ca_cert, cert=foreign_pki.gateway_cert, key=foreign_pki.gateway_key)
    assert refused(worker, client_context(files))


def test_handshake_fails_with_an_expired_client_certificate(
    worker: str, pki: PkiPaths, tmp_path: Path
) -> None:
    assert refused(worker, client_context(expired_client(pki, tmp_path)))


def test_handshake_fails_when_the_server_name_does_not_match(worker: str, pki: PkiPaths) -> None:
    # Same worker, same CA, but the client expects a name the worker's certificate does not carry.
    assert refused(worker, gateway_context(pki), extensions={"sni_hostname": "other-worker.internal"})


def test_gateway_refuses_a_worker_signed_by_another_ca(worker: str, foreign_pki: PkiPaths) -> None:
    files = TlsFiles(ca=foreign_pki.ca_cert, cert=foreign_pki.gateway_cert, key=foreign_pki.gateway_key)
    assert refused(worker, client_context(files))


def test_gateway_refuses_an_expired_worker_certificate(pki: PkiPaths, tmp_path: Path) -> None:
    ca = load_issued(pki.ca_cert, pki.ca_key)
    now = dt.datetime.now(dt.UTC)
    leaf = issue_leaf(
        ca,
        "warden-worker",
        Usage.SERVER,
        names=["localhost", "127.0.0.1"],
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(seconds=1),
    )
    write_issued(leaf, tmp_path / "w.pem", tmp_path / "w-key.pem")
    process, url = start_worker(tmp_path, tmp_path / "w.pem", tmp_path / "w-key.pem", pki.ca_cert)
    try:
        # Up and serving to a client that skips server verification, so only the expiry can refuse.
        unverified = client_context(
            TlsFiles(cert=pki.gateway_cert, key=pki.gateway_key), check_hostname=False
        )
        unverified.verify_mode = ssl.CERT_NONE
        process.wait_http(f"{url}/health", verify=unverified)
        assert refused(url, gateway_context(pki))
    finally:
        process.stop()


def test_client_certificate_must_present_client_usage(worker: str, pki: PkiPaths) -> None:
    # The worker's own certificate is signed by the right CA but is a server certificate (serverAuth only).
    files = TlsFiles(ca=pki.ca_cert, cert=pki.worker_cert, key=pki.worker_key)
    assert refused(worker, client_context(files))


def test_allowlist_refuses_other_client_identities(pki: PkiPaths, tmp_path: Path) -> None:
    ca = load_issued(pki.ca_cert, pki.ca_key)
    write_issued(
        issue_leaf(ca, "some-other-service", Usage.CLIENT), tmp_path / "o.pem", tmp_path / "o-key.pem"
    )
    process, url = start_worker(
        tmp_path, pki.worker_cert, pki.worker_key, pki.ca_cert, "--allow-client", "warden-gateway"
    )
    try:
        process.wait_http(f"{url}/health", verify=gateway_context(pki))
        other = client_context(TlsFiles(ca=pki.ca_cert, cert=tmp_path / "o.pem", key=tmp_path / "o-key.pem"))
        assert refused(url, other)
        assert not refused(url, gateway_context(pki))
    finally:
        process.stop()


def test_tls_1_2_client_is_served_with_a_forward_secret_aead_suite(worker: str, pki: PkiPaths) -> None:
    context = gateway_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        httpx.Client(verify=context, timeout=5) as client,
        client.stream("GET", f"{worker}/health") as response,
    ):
        ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
        version, cipher = ssl_object.version(), ssl_object.cipher()[0]
        response.read()
    assert response.status_code == 200
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


def test_contexts_never_allow_less_than_tls_1_2(pki: PkiPaths) -> None:
    server = server_context(
        TlsFiles(ca=pki.ca_cert, cert=pki.worker_cert, key=pki.worker_key), require_client_cert=True
    )
    client = gateway_context(pki)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
