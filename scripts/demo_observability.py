"""`make demo`, observability: where to scrape each service, a few live figures, and one trace.

Both services export their spans over OTLP/HTTP to a small receiver in this process (a stand-in
for an OpenTelemetry collector), so the demo can print one request's trace across the gateway and
the worker.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from scripts.demo_gateway import Identity


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int


class _Collector(BaseHTTPRequestHandler):
    spans: ClassVar[list[ReceivedSpan]] = []

    def do_POST(self) -> None:
        export = ExportTraceServiceRequest()
        export.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        for resource in export.resource_spans:
            names = [a.value.string_value for a in resource.resource.attributes if a.key == "service.name"]
            for scope in resource.scope_spans:
                for span in scope.spans:
                    _Collector.spans.append(received(names[0] if names else "?", span))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def received(service: str, span: Span) -> ReceivedSpan:
    return ReceivedSpan(
        service, span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
        span.start_time_unix_nano, span.end_time_unix_nano,
    )  # fmt: skip


@contextmanager
def span_collector() -> Iterator[dict[str, str]]:
    """An OTLP/HTTP receiver on a free port; yields the environment that points a service at it."""
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second, for the demo
        }
    finally:
        server.shutdown()
        server.server_close()


def row(label: str, value: str) -> None:
    print(f"  {label:<28} {value}")


def run_observability_demo(
    gateway_url: str, gateway_metrics: str, worker_metrics: str, identity: Identity
) -> bool:
    print("\n== Observability: Prometheus metrics, JSON logs, one trace across gateway and worker")
    row("gateway metrics", f"{gateway_metrics}  (scrape this; docs/observability.md)")
    row("worker metrics", f"{worker_metrics}")
    row("Grafana dashboard", "deploy/grafana/warden-dashboard.json")
    gateway = scrape(gateway_metrics)
    worker = scrape(worker_metrics)
    for decision in ("allow", "no_role", "prompt_rejected", "model_not_allowed"):
        total = sum(v for (n, labels), v in gateway.items() if n == "warden_gateway_requests_total"
                    and ("decision", decision) in labels)  # fmt: skip
        row(f"requests decision={decision}", f"{total:.0f}")
    for name, label in (
        ("warden_gateway_cache_requests_total", "cache lookups"),
        ("warden_gateway_guard_detections_total", "guard detections"),
        ("warden_gateway_pii_entities_total", "PII entities redacted"),
        ("warden_gateway_audit_records_total", "audit records written"),
        ("warden_worker_generation_tokens_total", "worker tokens generated"),
        ("warden_worker_time_to_first_token_seconds_count", "worker requests timed (TTFT)"),
    ):
        source = worker if name.startswith("warden_worker") else gateway
        row(label, f"{sum(v for (n, _), v in source.items() if n == name):.0f}")

    trace_id = secrets.token_hex(16)
    headers = {
        "authorization": f"Bearer {identity.mint('alice', 'ml-engineers', 'acme')}",
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    answer = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    spans = wait_for_trace(trace_id, expect_services=2)
    print(f"  one request's trace ({trace_id}), as the OTLP receiver got it:")
    print_tree(spans)
    return answer.status_code == 200 and {s.service for s in spans} == {"warden-gateway", "warden-worker"}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for_trace(trace_id: str, expect_services: int, timeout_s: float = 10.0) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [s for s in _Collector.spans if s.trace_id == trace_id]
        roots = {s.service for s in spans if s.name.startswith(("POST ", "GET "))}
        if len(roots) >= expect_services or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def print_tree(spans: list[ReceivedSpan]) -> None:
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    start = min((s.start_ns for s in spans), default=0)

    def show(span: ReceivedSpan, depth: int) -> None:
        offset = (span.start_ns - start) / 1e6
        duration = (span.end_ns - span.start_ns) / 1e6
        label = f"{'  ' * depth}{span.name}"
        print(f"    {span.service:<15} {label:<40} +{offset:8.2f} ms  {duration:8.2f} ms")
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            show(child, depth + 1)

    for root in sorted(children.get("", []), key=lambda s: s.start_ns):
        show(root, 0)
