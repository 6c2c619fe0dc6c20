"""One request through the real gateway and the real worker, traced into an in-memory exporter.

Both services run in this process (the worker under uvicorn over mTLS on a thread, the gateway
through Starlette's test client) so that one in-memory span exporter sees both halves of the
trace, and every log record of both, at debug level, passes through one capturing handler. The
request carries planted secrets: the bearer token, a subject that is an email address, an email
and a card number and a marker string in the prompt. None may appear in a log line or a span.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.testclient import TestClient

from backend.server import create_app as create_worker_app
from backend.settings import WorkerSettings, WorkerTlsSettings
from gateway.app import create_app as create_gateway_app
from gateway.logs import JsonFormatter, configure_logging
from gateway.pki import PkiPaths
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from tests.support.audit_keys import audit_settings
from tests.support.gateway import upstream
from tests.support.identity import TestIssuer
from tests.support.ports import free_port

pytestmark = pytest.mark.model

POLICY = """
version: 1
bindings:
  - {name: engineers, when: {claim: groups, contains: ml-engineers}, roles: [engineer]}
roles:
  engineer:
    models: [smollm2]
    max_tokens: 16
    guards:
      injection: {action: block, threshold: 0.5}
      pii: {redact_input: true, redact_output: true}
"""
MARKER = "quokka-marker-90210"
EMAIL = "planted.person@example.com"
CARD = "4111 1111 1111 1111"
SUBJECT = "planted.subject@example.org"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[Capture]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("debug")  # the services' own logging set-up, at its most verbose
    capture = Capture()
    root.addHandler(capture)
    yield capture
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


class ThreadedServer:
    """A uvicorn server on a thread (mTLS: the worker's certificate, client certificates required)."""

    def __init__(self, app: Any, pki: PkiPaths) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on",
            ssl_certfile=str(pki.worker_cert), ssl_keyfile=str(pki.worker_key),
            ssl_ca_certs=str(pki.ca_cert), ssl_cert_reqs=ssl.CERT_REQUIRED,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="worker-server", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
        return f"https://localhost:{self.port}"

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_one_trace_spans_gateway_and_worker_and_nothing_secret_leaks(
    pki: PkiPaths, tmp_path: Path, captured_logs: Capture
) -> None:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    worker_settings = WorkerSettings(
        served_model_name="smollm2", kv_cache_memory_mb=32, max_tokens_cap=16,
        tls=WorkerTlsSettings(cert=pki.worker_cert, key=pki.worker_key, ca=pki.ca_cert),
    )  # fmt: skip
    worker_app = create_worker_app(worker_settings, tracing=Tracing.create("warden-worker", processor))
    issuer = TestIssuer(tmp_path / "idp")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.yaml").write_text(POLICY)
    token = issuer.mint(sub=SUBJECT, groups=["ml-engineers"])
    with ThreadedServer(worker_app, pki) as worker_url:
        gateway_settings = GatewaySettings.model_validate(
            {
                "auth": {"issuers": [issuer.settings()]},
                "policy_dir": str(tmp_path / "policies"),
                "upstreams": [upstream(pki, "local", ["smollm2"], [worker_url])],
                "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},
                "audit": audit_settings(tmp_path),
            }
        )
        gateway_app = create_gateway_app(
            gateway_settings, tracing=Tracing.create("warden-gateway", processor)
        )
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Say hi to {EMAIL} ({MARKER}), card {CARD}."}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
        }
        headers = {"authorization": f"Bearer {token}", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
        with TestClient(gateway_app) as client:
            response = client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 200, response.text
            assert "data: [DONE]" in response.text
            request_id = response.headers["x-request-id"]
    spans = exporter.get_finished_spans()
    check_span_tree(spans)
    check_nothing_secret(spans, captured_logs.lines, token)
    access = [line for line in captured_logs.lines if '"logger": "gateway.access"' in line]
    assert len(access) == 1 and request_id in access[0] and CLIENT_TRACE in access[0]
    worker_access = [line for line in captured_logs.lines if '"logger": "backend.access"' in line]
    assert len(worker_access) == 1 and CLIENT_TRACE in worker_access[0]


def check_span_tree(spans: tuple[ReadableSpan, ...]) -> None:
    def service(span: ReadableSpan) -> str:
        return str(span.resource.attributes["service.name"])

    assert {span.context.trace_id for span in spans} == {int(CLIENT_TRACE, 16)}
    gateway = {s.name: s for s in spans if service(s) == "warden-gateway"}
    worker = {s.name: s for s in spans if service(s) == "warden-worker"}
    root = gateway["POST /v1/chat/completions"]
    assert root.kind == SpanKind.SERVER and root.parent is not None
    assert root.parent.span_id == int(CLIENT_SPAN, 16)
    steps = ["read_request", "authenticate", "authorize", "prompt_guard", "prompt_redaction", "budget",
             "cache", "upstream", "output_redaction", "audit"]  # fmt: skip
    assert set(steps) <= set(gateway), sorted(gateway)
    for name in steps:
        span = gateway[name]
        assert span.parent is not None and span.parent.span_id == root.context.span_id, name
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, name  # type: ignore[operator]
    ordered = sorted(steps, key=lambda name: gateway[name].start_time or 0)
    assert ordered[:4] == ["read_request", "authenticate", "authorize", "prompt_guard"]
    assert gateway["upstream"].kind == SpanKind.CLIENT
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == 8

    worker_root = worker["POST /v1/chat/completions"]
    assert (
        worker_root.parent is not None and worker_root.parent.span_id == gateway["upstream"].context.span_id
    )
    upstream = gateway["upstream"]
    assert upstream.start_time <= worker_root.start_time <= upstream.end_time  # type: ignore[operator]
    phases = [worker[name] for name in ("queue", "prefill", "decode")]
    for phase in phases:
        assert phase.parent is not None and phase.parent.span_id == worker_root.context.span_id
    assert phases[0].start_time <= phases[1].start_time <= phases[2].start_time  # type: ignore[operator]


def check_nothing_secret(spans: tuple[ReadableSpan, ...], lines: list[str], token: str) -> None:
    planted = [token, token.split(".")[1], SUBJECT, EMAIL, CARD, CARD.replace(" ", ""), MARKER]
    assert lines, "no log lines were captured"
    for line in lines:
        for secret in planted:
            assert secret not in line, f"planted secret in a log line: {line[:200]}"
    for span in spans:
        text = repr(dict(span.attributes or {})) + span.name + repr([e.attributes for e in span.events])
        for secret in planted:
            assert secret not in text, f"planted secret in span {span.name}"
