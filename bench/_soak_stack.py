"""The soak's services on loopback: redis-server, the real worker, the real gateway, an OTLP sink.

The gateway runs as in production: audit on, Redis cache and limits, guards, metrics, and tracing
exported by its span-exporter child to a local OTLP receiver (``bench._otlp_sink``). The services
are started by the test suite's helpers (tests/support), the same code the end-to-end tests use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench._soak_mix import MODEL
from bench.gateway_overhead import child_pids
from gateway.pki import init_pki
from tests.support.audit_keys import audit_settings, verify_audit
from tests.support.gateway import start_gateway, upstream
from tests.support.identity import TestIssuer
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.worker import start_worker

# Two tenants, four roles with different cache, redaction, audit and budget settings.
POLICY = """
version: 1
tenant: {claim: org, required: true}
bindings:
  - {name: analysts, when: {claim: groups, contains: analysts}, roles: [analyst]}
  - {name: engineers, when: {claim: groups, contains: engineers}, roles: [engineer]}
  - {name: support, when: {claim: groups, contains: support}, roles: [support]}
  - {name: guests, when: {claim: groups, contains: guests}, roles: [guest]}
roles:
  analyst:
    models: [smollm2]
    max_tokens: 32
    cache: {enabled: true, ttl_s: 86400}
    budget: {requests_per_minute: 100000, tokens_per_minute: 10000000}
    audit: {prompts: encrypt, outputs: encrypt}
  engineer:
    models: [smollm2]
    max_tokens: 32
    guards: {pii: {redact_output: false}}
    # Every miss stores a new entry: a short life keeps their number, and Redis's memory, steady.
    cache: {enabled: true, ttl_s: 15}
    budget: {requests_per_minute: 100000, tokens_per_minute: 10000000, tenant: {tokens_per_day: 100000000}}
  support:
    models: [smollm2]
    max_tokens: 32
    guards: {pii: {redact_input: false, redact_output: true, entities: [EMAIL_ADDRESS, CREDIT_CARD]}}
    budget: {requests_per_minute: 100000, tokens_per_minute: 10000000}
    audit: {prompts: hmac, outputs: encrypt}
  guest:
    models: [smollm2]
    max_tokens: 8
    budget: {requests_per_minute: 6}
"""
# caller -> (groups, tenant)
CALLERS = {
    "analyst": ("analysts", "acme"),
    "support": ("support", "acme"),
    "engineer": ("engineers", "globex"),
    "guest": ("guests", "globex"),
}
TOKEN_TTL_S = 24 * 3600


@dataclass
class SoakStack:
    url: str
    tokens: dict[str, str]  # caller -> bearer token
    audit_root: Path  # the layout of tests.support.audit_keys: keys/ and audit/
    gateway: ServiceProcess
    worker: ServiceProcess
    redis: RedisServer

    def pids(self) -> dict[str, int]:
        """The measured processes: gateway, its span exporter, worker, redis-server."""
        pids = {"gateway": _pid(self.gateway), "worker": _pid(self.worker), "redis": _pid(self.redis.service)}
        children = child_pids(pids["gateway"])
        if children:  # tracing on: the gateway's one child exports its spans
            pids["span_exporter"] = children[0]
        return pids


def _pid(service: ServiceProcess) -> int:
    if service.process is None:
        raise RuntimeError(f"{service.args[:3]} is not running")
    return service.process.pid


def _start_sink(root: Path, stack: ExitStack) -> str:
    port = free_port()
    sink = ServiceProcess.python_module("bench._otlp_sink", "--port", str(port), log_path=root / "sink.log")
    stack.enter_context(sink)
    url = f"http://127.0.0.1:{port}"
    sink.wait_http(f"{url}/health", timeout_s=30)
    return url


@contextmanager
def soak_stack(root: Path) -> Iterator[SoakStack]:
    """Start every service under ``root``; yield once the gateway answers; stop them all."""
    pki, _ = init_pki(root / "pki")
    issuer = TestIssuer(root / "idp")
    policies = root / "policies"
    policies.mkdir()
    (policies / "soak.yaml").write_text(POLICY)
    audit_root = root / "audit-root"
    audit = audit_settings(audit_root)
    with ExitStack() as stack:
        redis = RedisServer(root / "redis").start()
        stack.callback(redis.stop)
        worker, worker_url = start_worker(pki, root / "worker", "--dtype", "float32")
        stack.callback(worker.stop)
        sink_url = _start_sink(root, stack)
        tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_SERVICE_NAME": "warden-gateway-soak"}
        gateway, url = start_gateway(
            root / "gateway", issuers=[issuer.settings()], policy_dir=policies,
            upstreams=[upstream(pki, "local", [MODEL], [worker_url])],
            redis={"url": redis.url}, audit=audit, graceful_shutdown_s=10, env=tracing,
        )  # fmt: skip
        stack.callback(gateway.stop)
        # Ready: the worker is healthy in the gateway's eyes, Redis and the audit log are up.
        gateway.wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).is_success, 60)
        tokens = {
            caller: issuer.mint(sub=f"{caller}-user", ttl_s=TOKEN_TTL_S, groups=[group], org=tenant)
            for caller, (group, tenant) in CALLERS.items()
        }
        yield SoakStack(url, tokens, audit_root, gateway, worker, redis)


def scrape_counters(metrics_text: str, prefix: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The ``_total`` samples of the counters whose names start with ``prefix``, by label set."""
    found = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.startswith(prefix) and sample.name.endswith("_total"):
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


_VERIFIED = re.compile(r"ok: (\d+) segments, (\d+) records")


def verified_records(stack: SoakStack) -> tuple[int | None, str]:
    """``python -m gateway audit verify``: how many records it vouches for (None: failed), its output."""
    done = verify_audit(stack.audit_root)
    output = (done.stdout + done.stderr).strip()
    match = _VERIFIED.search(done.stdout)
    return (int(match.group(2)) if done.returncode == 0 and match else None), output
