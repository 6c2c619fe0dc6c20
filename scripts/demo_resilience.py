"""The demo's resilience part: Redis killed and restarted, a broken policy update, certificates renewed.

Each fault happens while the gateway serves; the demo shows what a caller gets and what ``/readyz``
says, then undoes the fault and shows the recovery. Nothing is restarted but Redis itself.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from gateway.pki import DEFAULT_SERVER_NAMES, PkiPaths, Usage, issue_leaf, load_issued, write_issued
from gateway.tls import TlsFiles, client_context
from scripts.demo_gateway import Identity, row
from tests.support.redis_server import RedisServer

BROKEN_POLICY = "roles:\n  engineer: {max_tokens: lots}\n"


def run_resilience_demo(
    gateway_url: str, identity: Identity, redis: RedisServer, pki: PkiPaths, worker_url: str
) -> bool:
    """Returns True if every fault was ridden out and every recovery seen."""
    print("\n== Resilience: Redis outage, a broken policy update, certificates renewed without restarts")
    ask = _asker(gateway_url, identity)
    ok = _redis_outage(gateway_url, ask, redis)
    ok &= _broken_policy(gateway_url, ask, identity.policy_dir)
    ok &= _certificate_renewal(gateway_url, ask, pki, worker_url)
    return ok


def _asker(gateway_url: str, identity: Identity) -> Callable[[], httpx.Response]:
    headers = {"authorization": f"Bearer {identity.mint('alice', 'ml-engineers', 'acme')}"}
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name one colour."}],
        "temperature": 0,
        "max_tokens": 4,
    }

    def ask() -> httpx.Response:
        return httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=60)

    return ask


def _readyz(gateway_url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{gateway_url}/readyz", timeout=10).json()
    return body


def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _redis_outage(gateway_url: str, ask: Callable[[], httpx.Response], redis: RedisServer) -> bool:
    redis.kill()
    answer = ask()
    row("Redis killed", f"HTTP {answer.status_code}, x-cache: {answer.headers.get('x-cache')}")
    row("  /readyz says", f"redis {_readyz(gateway_url)['redis']}")
    redis.start()
    back = _until(lambda: _readyz(gateway_url)["redis"] == "up")
    row("Redis restarted", "redis up again, cache and shared limits back" if back else "STILL DOWN")
    return answer.status_code == 200 and back


def _broken_policy(gateway_url: str, ask: Callable[[], httpx.Response], policy_dir: Path) -> bool:
    broken = policy_dir / "zz-broken.yaml"
    version = _readyz(gateway_url)["policy"]["version"]
    broken.write_text(BROKEN_POLICY)
    refused = _until(lambda: _readyz(gateway_url)["policy"]["last_error"] is not None)
    policy = _readyz(gateway_url)["policy"]
    answer = ask()
    row("broken policy file added", f"HTTP {answer.status_code}, still on version {policy['version']}")
    row("  /readyz says", str(policy["last_error"]))
    broken.unlink()
    fixed = _until(lambda: _readyz(gateway_url)["policy"]["last_error"] is None)
    row("broken file removed", "reloaded, no error" if fixed else "STILL FAILING")
    return refused and answer.status_code == 200 and policy["version"] == version and fixed


def _certificate_renewal(
    gateway_url: str, ask: Callable[[], httpx.Response], pki: PkiPaths, worker_url: str
) -> bool:
    ca = load_issued(pki.ca_cert, pki.ca_key)
    probe = client_context(TlsFiles(ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key))
    before = _worker_serial(worker_url, probe)
    generation = _readyz(gateway_url)["upstreams"][0]["tls"]["generation"]
    worker = issue_leaf(ca, "warden-worker", Usage.SERVER, names=DEFAULT_SERVER_NAMES)
    write_issued(worker, pki.worker_cert, pki.worker_key)
    write_issued(issue_leaf(ca, "warden-gateway", Usage.CLIENT), pki.gateway_cert, pki.gateway_key)
    worker_renewed = _until(lambda: _worker_serial(worker_url, probe) != before)
    gateway_renewed = _until(lambda: _readyz(gateway_url)["upstreams"][0]["tls"]["generation"] > generation)
    answer = ask()
    row("worker certificate renewed", "served on new handshakes" if worker_renewed else "NOT PICKED UP")
    tls = _readyz(gateway_url)["upstreams"][0]["tls"]
    row("gateway certificate renewed", f"generation {tls['generation']}, valid until {tls['not_after']}")
    row("  a request after both", f"HTTP {answer.status_code}, neither service restarted")
    return worker_renewed and gateway_renewed and answer.status_code == 200


def _worker_serial(worker_url: str, context: ssl.SSLContext) -> int:
    """The serial number of the certificate the worker presents on a new handshake."""
    host, port = worker_url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise RuntimeError("the worker presented no certificate")
    return x509.load_der_x509_certificate(der).serial_number
