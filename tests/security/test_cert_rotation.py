"""Certificate renewal, expiry and CA-bundle rotation without restarts.

Real certificates, real handshakes, the real worker serving the default model and the real gateway
in front of it. Both read their TLS files from directories updated the way the kubelet updates a
Secret volume (a new ``..data`` directory, swapped in by one rename) and poll them every 0.2 s.
The rotation cases run under concurrent load through the gateway and count every failed request.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from gateway.pki import DEFAULT_SERVER_NAMES, Issued, PkiPaths, Usage, create_ca, issue_leaf, load_issued
from gateway.tls import TlsFiles, client_context, server_context
from gateway.tls_reload import ReloadingContext, TlsReloadStatus, serve_current
from tests.support.identity import TestIssuer
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.tls_handshake import handshake_in_memory
from tests.support.worker import MODEL_NAME, launch_worker

pytestmark = [pytest.mark.model, pytest.mark.slow]

RELOAD_S = 0.2
POLICY = """
version: 1
bindings:
  - {name: engineers, when: {claim: groups, contains: ml-engineers}, roles: [engineer]}
roles:
  engineer: {models: ["smollm*"], max_tokens: 8, endpoints: [chat.completions]}
"""
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
# What a client sees when no worker can be reached: the gateway's stable codes for it.
UNREACHABLE = {(502, "upstream_error"), (503, "no_healthy_worker")}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


# -- files as Kubernetes mounts them ---------------------------------------------------------------


class Mount:
    """A Secret volume: ``ca.pem``, ``tls.crt``, ``tls.key`` are symlinks into ``..data``, and an
    update writes a new version directory and swaps ``..data`` to it in one rename."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root, self.versions = root, 0
        self.ca, self.cert, self.key = root / "ca.pem", root / "tls.crt", root / "tls.key"

    def publish(self, ca: bytes, cert: bytes, key: bytes) -> None:
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        for link, data in ((self.ca, ca), (self.cert, cert), (self.key, key)):
            (version / link.name).write_bytes(data)
        (version / self.key.name).chmod(0o600)
        staging = self.root / "..data_tmp"
        staging.symlink_to(version.name)
        staging.replace(self.root / "..data")
        for link in (self.ca, self.cert, self.key):
            if not link.is_symlink():
                link.symlink_to(f"..data/{link.name}")

    def issue(self, bundle: list[Issued], leaf: Issued) -> None:
        self.publish(b"".join(ca.cert_pem() for ca in bundle), leaf.cert_pem(), leaf.key_pem())


@dataclass
class Pki:
    old: Issued  # the session's CA (what `certs init` made)
    new: Issued  # its successor, with the same name, as a second `certs init` makes it
    directory: Path

    def worker(
        self, ca: Issued, *, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None
    ) -> Issued:
        return issue_leaf(
            ca,
            "warden-worker",
            Usage.SERVER,
            names=DEFAULT_SERVER_NAMES,
            not_before=not_before,
            not_after=not_after,
        )

    def gateway(self, ca: Issued) -> Issued:
        return issue_leaf(ca, "warden-gateway", Usage.CLIENT)

    def client_files(self, trust: list[Issued], client: Issued, name: str) -> TlsFiles:
        """Files for a direct client of the worker (not the gateway)."""
        paths = [self.directory / f"{name}-{part}.pem" for part in ("ca", "cert", "key")]
        for path, data in zip(
            paths, (b"".join(ca.cert_pem() for ca in trust), client.cert_pem(), client.key_pem()), strict=True
        ):
            path.write_bytes(data)
        return TlsFiles(ca=paths[0], cert=paths[1], key=paths[2])


# -- the services ----------------------------------------------------------------------------------


@dataclass
class Stack:
    pki: Pki
    worker: ServiceProcess
    worker_port: int
    worker_mount: Mount
    gateway: ServiceProcess
    gateway_url: str
    gateway_mount: Mount
    token: str
    baseline_worker: Issued
    baseline_gateway: Issued

    def ask(self, timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
        response = httpx.post(
            f"{self.gateway_url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout_s,
        )
        return response.status_code, response.json()

    def answers(self) -> bool:
        return self.ask()[0] == 200

    def serial_seen(self, files: TlsFiles) -> int:
        """A new handshake with the worker: its certificate's serial, or an error if refused."""
        with (
            socket.create_connection(("127.0.0.1", self.worker_port), timeout=5) as sock,
            client_context(files).wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            # In TLS 1.3 the worker refuses a client certificate after the client's handshake ends.
            if not tls.recv(16).startswith(b"HTTP/1.1 "):
                raise ConnectionError("no answer")
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def worker_serves(self, leaf: Issued, files: TlsFiles) -> bool:
        try:
            return self.serial_seen(files) == leaf.cert.serial_number
        except (OSError, ssl.SSLError):
            return False

    def worker_refuses(self, files: TlsFiles) -> bool:
        try:
            self.serial_seen(files)
        except (OSError, ssl.SSLError):
            return True
        return False

    def log_count(self, process: ServiceProcess, text: str) -> int:
        return process.logs().count(text)


def start_gateway(
    root: Path, issuer: TestIssuer, mount: Mount, worker_url: str
) -> tuple[ServiceProcess, str]:
    """The gateway with one pool whose TLS files are ``mount``'s; the guards' start-up gets time."""
    port = free_port()
    tls = {"ca": str(mount.ca), "cert": str(mount.cert), "key": str(mount.key), "reload_interval_s": RELOAD_S}
    config = {
        "port": port,
        "auth": {"issuers": [issuer.settings()]},
        "policy_dir": str(root / "policies"),
        "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},  # none: degraded, in-process limits
        "upstreams": [
            {
                "name": "local",
                "models": ["smollm*"],
                "workers": [worker_url],
                "tls": tls,
                "health_interval_s": 0.5,
                "open_cooldown_s": 0.5,
            }
        ],
    }
    (root / "gateway.json").write_text(json.dumps(config))
    gateway = ServiceProcess.python_module(
        "gateway", "serve", "--config", str(root / "gateway.json"), log_path=root / "gateway.log"
    ).start()
    return gateway, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("rotation")
    rotation = Pki(load_issued(pki.ca_cert, pki.ca_key), create_ca(), root)
    baseline_worker, baseline_gateway = rotation.worker(rotation.old), rotation.gateway(rotation.old)
    worker_mount, gateway_mount = Mount(root / "worker-tls"), Mount(root / "gateway-tls")
    worker_mount.issue([rotation.old], baseline_worker)
    gateway_mount.issue([rotation.old], baseline_gateway)
    issuer = TestIssuer(root / "idp")
    (root / "policies").mkdir()
    (root / "policies" / "main.yaml").write_text(POLICY)
    worker, worker_url = launch_worker(
        root, worker_mount.cert, worker_mount.key, worker_mount.ca,
        "--tls-reload-interval", str(RELOAD_S), kv_cache_mb=64,
    )  # fmt: skip
    gateway, gateway_url = start_gateway(root, issuer, gateway_mount, worker_url)
    stack = Stack(
        rotation, worker, int(worker_url.rsplit(":", 1)[1]), worker_mount, gateway, gateway_url,
        gateway_mount, issuer.mint(groups=["ml-engineers"], ttl_s=3600), baseline_worker, baseline_gateway,
    )  # fmt: skip
    try:
        # Both start together: the model loads while the gateway imports its guards.
        gateway.wait_http(f"{gateway_url}/healthz", timeout_s=120)
        worker.wait_until(stack.answers, 120)
        yield stack
    finally:
        gateway.stop()
        worker.stop()
    for process in (worker, gateway):
        logs = process.logs()
        assert "Traceback" not in logs
        assert "PRIVATE KEY" not in logs  # key material never reaches a log


@pytest.fixture
def baseline(stack: Stack) -> Stack:
    """Both sides back on the session CA and their first certificates, and the gateway answering."""
    pki = stack.pki
    stack.worker_mount.issue([pki.old], stack.baseline_worker)
    stack.gateway_mount.issue([pki.old], stack.baseline_gateway)
    probe = pki.client_files([pki.old], stack.baseline_gateway, "baseline")
    wait_for(lambda: stack.worker_serves(stack.baseline_worker, probe), "the worker's baseline")
    wait_for(stack.answers, "the gateway to answer")
    return stack


@dataclass
class Load:
    """Clients chatting through the gateway until stopped; every answer's status and error code."""

    stack: Stack
    clients: int = 3
    results: list[tuple[int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = self.stack.ask()
                self.results.append((status, None if status == 200 else body["error"]["code"]))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.results.append((0, type(exc).__name__))

    def more(self, count: int = 3) -> None:
        """Wait until ``count`` more requests have been answered (the phase saw traffic)."""
        target = len(self.results) + count
        wait_for(lambda: len(self.results) >= target, f"{count} more answers under load", 60)

    @property
    def failures(self) -> list[tuple[int, str | None]]:
        return [result for result in self.results if result[0] != 200]


def assert_clean_refusal(stack: Stack) -> None:
    started = time.monotonic()
    status, body = stack.ask(timeout_s=20)
    assert time.monotonic() - started < 15  # refused, never left hanging
    assert (status, body["error"]["code"]) in UNREACHABLE, body
    assert body["error"]["type"] == "server_error"
    assert "certificate" not in body["error"]["message"].lower()  # TLS details stay in the gateway


def refused_through_gateway(stack: Stack) -> bool:
    status, body = stack.ask(timeout_s=20)
    return status != 200 and (status, body["error"]["code"]) in UNREACHABLE


def no_restart(stack: Stack, pids: tuple[int, int]) -> None:
    assert stack.worker.process is not None and stack.gateway.process is not None
    assert (stack.worker.process.pid, stack.gateway.process.pid) == pids
    assert stack.worker.process.poll() is None and stack.gateway.process.poll() is None


def pids(stack: Stack) -> tuple[int, int]:
    assert stack.worker.process is not None and stack.gateway.process is not None
    return stack.worker.process.pid, stack.gateway.process.pid


# -- renewal and expiry ----------------------------------------------------------------------------


def test_renewed_worker_certificate_is_served_without_a_restart_and_no_request_fails(baseline: Stack) -> None:
    stack, pki = baseline, baseline.pki
    before = pids(stack)
    probe = pki.client_files([pki.old], stack.baseline_gateway, "renewal")
    renewed = pki.worker(pki.old)
    with Load(stack) as load:
        load.more()
        stack.worker_mount.issue([pki.old], renewed)
        wait_for(lambda: stack.worker_serves(renewed, probe), "the renewed certificate on new handshakes")
        load.more()
    assert load.failures == [] and len(load.results) >= 6
    assert '"msg": "tls material reloaded", "tls": "worker"' in stack.worker.logs()
    no_restart(stack, before)


def test_expired_worker_certificate_is_refused_cleanly_until_renewed(baseline: Stack) -> None:
    stack, pki = baseline, baseline.pki
    before = pids(stack)
    now = dt.datetime.now(dt.UTC)
    expiring = pki.worker(
        pki.old, not_before=now - dt.timedelta(minutes=1), not_after=now + dt.timedelta(seconds=8)
    )
    probe = pki.client_files([pki.old], stack.baseline_gateway, "expiry")
    stack.worker_mount.issue([pki.old], expiring)
    wait_for(lambda: stack.worker_serves(expiring, probe), "the short-lived certificate", 4)
    # Connections made before the swap were verified with the previous certificate; renewing the
    # gateway's own certificate too makes it reconnect, so all it holds was verified with this one.
    stack.gateway_mount.issue([pki.old], pki.gateway(pki.old))
    wait_for(stack.answers, "an answer through the short-lived certificate", 4)

    wait_for(lambda: dt.datetime.now(dt.UTC) > expiring.cert.not_valid_after_utc, "the expiry", 10)
    wait_for(lambda: refused_through_gateway(stack), "the gateway to refuse the expired worker", 10)
    for _ in range(3):  # and it stays refused, with the same clean error every time
        assert_clean_refusal(stack)
    assert '"msg": "tls certificate in use has expired; replace its files"' in stack.worker.logs()

    renewed = pki.worker(pki.old)
    stack.worker_mount.issue([pki.old], renewed)
    wait_for(stack.answers, "answers again after the renewal", 20)
    assert stack.worker_serves(renewed, probe)
    no_restart(stack, before)


# -- CA rotation ---------------------------------------------------------------------------------


def test_ca_rotation_through_a_two_ca_bundle_fails_no_request(baseline: Stack) -> None:
    stack, pki = baseline, baseline.pki
    before = pids(stack)
    both = [pki.old, pki.new]
    worker_new, gateway_new = pki.worker(pki.new), pki.gateway(pki.new)
    new_client = pki.client_files(both, pki.gateway(pki.new), "new-client")
    old_client = pki.client_files(both, stack.baseline_gateway, "old-client")
    gateway_reloads = stack.log_count(stack.gateway, '"msg": "tls material reloaded"')
    with Load(stack) as load:
        load.more()
        # 1. Both sides trust both CAs.
        stack.worker_mount.issue(both, stack.baseline_worker)
        wait_for(lambda: stack.worker_serves(stack.baseline_worker, new_client), "the worker to trust both")
        stack.gateway_mount.issue(both, stack.baseline_gateway)
        load.more()
        # 2. Both re-issued under the new CA.
        stack.worker_mount.issue(both, worker_new)
        wait_for(lambda: stack.worker_serves(worker_new, new_client), "the worker's new-CA certificate")
        stack.gateway_mount.issue(both, gateway_new)
        load.more()
        # 3. The old CA removed everywhere.
        stack.worker_mount.issue([pki.new], worker_new)
        wait_for(lambda: stack.worker_refuses(old_client), "the worker to drop the old CA")
        stack.gateway_mount.issue([pki.new], gateway_new)
        wait_for(
            lambda: stack.log_count(stack.gateway, '"msg": "tls material reloaded"') >= gateway_reloads + 3,
            "the gateway to load its three updates",
        )
        load.more()
    assert load.failures == [], load.failures
    assert stack.worker_serves(worker_new, new_client)
    no_restart(stack, before)


def test_gateway_stops_trusting_a_removed_ca_even_on_a_pooled_connection(baseline: Stack) -> None:
    stack, pki = baseline, baseline.pki
    before = pids(stack)
    gateway_new = pki.gateway(pki.new)
    # The worker still presents its old-CA certificate and accepts clients of either CA.
    stack.worker_mount.issue([pki.old, pki.new], stack.baseline_worker)
    probe = pki.client_files([pki.old], gateway_new, "pooled")
    wait_for(lambda: stack.worker_serves(stack.baseline_worker, probe), "the worker to trust both")
    stack.gateway_mount.issue([pki.old, pki.new], gateway_new)
    wait_for(stack.answers, "answers with the gateway's new-CA client certificate")
    assert stack.answers()  # a kept-alive connection, verified against the old CA, is now pooled

    stack.gateway_mount.issue([pki.new], gateway_new)
    wait_for(lambda: refused_through_gateway(stack), "the gateway to refuse the old-CA worker", 5)
    for _ in range(3):
        assert_clean_refusal(stack)
    assert '"msg": "worker failed before the first byte; trying another"' in stack.gateway.logs()
    no_restart(stack, before)


def test_worker_refuses_a_client_certificate_from_a_removed_ca(baseline: Stack) -> None:
    stack, pki = baseline, baseline.pki
    before = pids(stack)
    worker_new = pki.worker(pki.new)
    old_client = pki.client_files([pki.new], stack.baseline_gateway, "old-ca-client")
    new_client = pki.client_files([pki.new], pki.gateway(pki.new), "new-ca-client")
    stack.worker_mount.issue([pki.old, pki.new], worker_new)
    wait_for(lambda: stack.worker_serves(worker_new, old_client), "the worker to trust both CAs")

    stack.worker_mount.issue([pki.new], worker_new)
    wait_for(lambda: stack.worker_refuses(old_client), "the worker to refuse the old-CA client", 5)
    # Refused for its certificate alone: the same client with a new-CA certificate is served.
    assert all(stack.worker_refuses(old_client) for _ in range(3))
    assert stack.worker_serves(worker_new, new_client)
    no_restart(stack, before)


# -- broken replacements ---------------------------------------------------------------------------


def _key_mismatch(pki: Pki, ca: Issued, leaf: Issued) -> tuple[bytes, bytes, bytes]:
    return ca.cert_pem(), leaf.cert_pem(), pki.gateway(ca).key_pem()


def _garbage(pki: Pki, ca: Issued, leaf: Issued) -> tuple[bytes, bytes, bytes]:
    return ca.cert_pem(), b"not a certificate\n", leaf.key_pem()


def _half_written(pki: Pki, ca: Issued, leaf: Issued) -> tuple[bytes, bytes, bytes]:
    bundle = ca.cert_pem() + pki.new.cert_pem()
    return bundle[: len(ca.cert_pem()) + 200], leaf.cert_pem(), leaf.key_pem()


def _expired(pki: Pki, ca: Issued, leaf: Issued) -> tuple[bytes, bytes, bytes]:
    now = dt.datetime.now(dt.UTC)
    old = issue_leaf(ca, "warden-worker", Usage.SERVER, not_before=now - dt.timedelta(days=2), not_after=now)
    return ca.cert_pem(), old.cert_pem(), old.key_pem()


def _other_ca(pki: Pki, ca: Issued, leaf: Issued) -> tuple[bytes, bytes, bytes]:
    stranger = pki.worker(pki.new)
    return ca.cert_pem(), stranger.cert_pem(), stranger.key_pem()


BROKEN: dict[str, tuple[Callable[[Pki, Issued, Issued], tuple[bytes, bytes, bytes]], str]] = {
    "key-not-matching": (_key_mismatch, "are not a matching PEM certificate and key"),
    "garbage": (_garbage, "not a PEM certificate file"),
    "half-written-bundle": (_half_written, "ends in an incomplete certificate"),
    "expired": (_expired, "expired at"),
    "not-from-the-bundle": (_other_ca, "not issued by a CA in tls.ca"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_replacement_keeps_the_last_good_context_and_fails_no_request(
    baseline: Stack, kind: str
) -> None:
    stack, pki = baseline, baseline.pki
    make, reason = BROKEN[kind]
    probe = pki.client_files([pki.old], stack.baseline_gateway, f"broken-{kind}")
    refused = '"msg": "tls material refused; the last good one stays in use"'
    worker_refusals = stack.log_count(stack.worker, refused)
    gateway_refusals = stack.log_count(stack.gateway, refused)
    with Load(stack) as load:
        load.more()
        stack.worker_mount.publish(*make(pki, pki.old, stack.baseline_worker))
        stack.gateway_mount.publish(*make(pki, pki.old, stack.baseline_gateway))
        wait_for(lambda: stack.log_count(stack.worker, refused) > worker_refusals, "the worker's refusal")
        wait_for(lambda: stack.log_count(stack.gateway, refused) > gateway_refusals, "the gateway's refusal")
        load.more()
    assert load.failures == [], load.failures
    assert stack.worker_serves(stack.baseline_worker, probe)  # the last good certificate, still
    for process in (stack.worker, stack.gateway):
        assert reason in process.logs()
    (upstream,) = httpx.get(f"{stack.gateway_url}/readyz", timeout=10).json()["upstreams"]
    assert upstream["tls"]["reloads_failed"] >= 1 and reason in upstream["tls"]["last_error"]


# -- the reloader alone: handshakes in memory ------------------------------------------------------


def memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> int:
    """The serial of the certificate the server presented, or the refusing side's ``ssl.SSLError``."""
    _, client_end = handshake_in_memory(server, client)
    der = client_end.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_context_swaps_certificate_and_client_ca_on_new_handshakes(
    tmp_path: Path, pki: PkiPaths
) -> None:
    rotation = Pki(load_issued(pki.ca_cert, pki.ca_key), create_ca(), tmp_path)
    first, second = rotation.worker(rotation.old), rotation.worker(rotation.new)
    mount = Mount(tmp_path / "tls")
    mount.issue([rotation.old], first)
    files = TlsFiles(ca=mount.ca, cert=mount.cert, key=mount.key)
    source = ReloadingContext(
        files, lambda: server_context(files, require_client_cert=True), interval_s=60, label="test"
    )
    listening = source.context
    serve_current(listening, source)
    both = [rotation.old, rotation.new]
    old_client = client_context(rotation.client_files(both, rotation.gateway(rotation.old), "old"))
    new_client = client_context(rotation.client_files(both, rotation.gateway(rotation.new), "new"))
    assert memory_handshake(listening, old_client) == first.cert.serial_number
    with pytest.raises(ssl.SSLError):
        memory_handshake(listening, new_client)  # the worker does not trust the new CA yet

    mount.issue([rotation.new], second)
    assert source.poll() and source.generation == 1
    assert memory_handshake(listening, new_client) == second.cert.serial_number
    with pytest.raises(ssl.SSLError):
        memory_handshake(listening, old_client)  # the old CA left the bundle: its client is refused
    assert not source.poll()  # nothing changed since


def test_refused_replacement_is_reported_once_and_retried_until_fixed(
    tmp_path: Path, pki: PkiPaths, caplog: pytest.LogCaptureFixture
) -> None:
    rotation = Pki(load_issued(pki.ca_cert, pki.ca_key), create_ca(), tmp_path)
    mount = Mount(tmp_path / "tls")
    good = rotation.gateway(rotation.old)
    mount.issue([rotation.old], good)
    files = TlsFiles(ca=mount.ca, cert=mount.cert, key=mount.key)
    source = ReloadingContext(files, lambda: client_context(files), interval_s=60, label="test")
    in_use = source.context

    mount.publish(rotation.old.cert_pem(), good.cert_pem(), rotation.gateway(rotation.old).key_pem())
    with caplog.at_level("ERROR", logger="gateway.tls_reload"):
        assert not source.poll()
        assert not source.poll()  # the same refusal again: retried, not logged again
    assert [r.getMessage() for r in caplog.records] == [
        "tls material refused; the last good one stays in use"
    ]
    assert source.context is in_use
    assert source.status().reloads_failed == 1
    assert source.last_error is not None and str(mount.cert) in source.last_error
    assert "PRIVATE KEY" not in caplog.text and good.key_pem().decode().splitlines()[1] not in caplog.text

    mount.issue([rotation.old], good)
    assert source.poll() and source.context is not in_use
    assert source.status() == TlsReloadStatus(1, 1, None, source.status().not_after)
