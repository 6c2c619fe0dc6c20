"""Tracing set-up from the standard OTEL_* variables, W3C traceparent handling and real OTLP export."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind

from gateway.span_export import ExporterProcess
from gateway.tracing import (
    RequestTrace,
    SpanRecord,
    Tracing,
    TracingConfigError,
    parse_traceparent,
    tracing_from_env,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_nothing_is_traced_unless_the_otel_variables_ask_for_it(environ: dict[str, str]) -> None:
    assert tracing_from_env("warden-gateway", environ) is None


def test_an_otlp_endpoint_starts_the_exporter_process() -> None:
    tracing = tracing_from_env("warden-gateway", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing is not None and isinstance(tracing.sink, ExporterProcess)
    process = tracing.sink._process
    assert process.poll() is None  # running, waiting for spans
    tracing.shutdown()
    assert process.wait(10) == 0  # closing our end lets it flush and leave


def test_a_dead_exporter_process_drops_traces_without_failing_requests() -> None:
    sink = ExporterProcess("warden-gateway", "console")
    sink._process.kill()
    sink._process.wait(10)
    record: SpanRecord = ("root", 1, 0, False, 1, 2, SpanKind.SERVER.value, False, {})
    for _ in range(3):
        sink.emit(5, [record])  # must not raise
    assert sink.dropped >= 1
    sink.shutdown()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "one exporter"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "sometimes"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "lots"}, "lots"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "[0, 1]"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        tracing_from_env("warden-gateway", environ)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN}-01",  # an all-zero trace id is invalid
        f"00-{TRACE}-{'0' * 16}-01",  # so is an all-zero span id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex is not the W3C form
        f"01-{TRACE}-{SPAN}-01",  # an unknown version
        f"00-{TRACE}-{SPAN}-01-extra",
    ],
)
def test_malformed_traceparents_start_a_fresh_trace(header: str | None) -> None:
    assert parse_traceparent(header) is None
    trace = RequestTrace.begin(None, "POST /v1/chat/completions", header)
    assert trace.trace_id_hex != TRACE and len(trace.trace_id_hex) == 32 and trace.trace_id != 0


def test_without_tracing_the_callers_trace_id_still_propagates_unsampled() -> None:
    trace = RequestTrace.begin(None, "POST /v1/completions", f"00-{TRACE}-{SPAN}-01")
    assert trace.trace_id_hex == TRACE and not trace.sampled
    child = trace.new_span_id()
    assert trace.traceparent(child) == f"00-{TRACE}-{child:016x}-00"
    trace.record("authorize", 1, 2)
    trace.end()  # nothing to emit, nothing raised


def test_the_callers_sampling_decision_is_respected() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create("warden-gateway", SimpleSpanProcessor(exporter))
    kept = tracing.begin("root", f"00-{TRACE}-{SPAN}-01")
    dropped = tracing.begin("root", f"00-{TRACE}-{SPAN}-00")
    assert kept.sampled and not dropped.sampled
    for trace in (kept, dropped):
        trace.record("step", 10, 20)
        trace.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["step", "root"]
    never = Tracing.create("warden-gateway", SimpleSpanProcessor(exporter), ParentBased(ALWAYS_OFF))
    assert not never.begin("root", None).sampled


def test_a_request_trace_is_one_tree_under_the_callers_span() -> None:
    exporter = InMemorySpanExporter()
    trace = Tracing.create("warden-gateway", SimpleSpanProcessor(exporter)).begin(
        "root", f"00-{TRACE}-{SPAN}-01"
    )
    upstream = trace.new_span_id()
    header = trace.traceparent(upstream)
    trace.record("authenticate", trace.start_ns, trace.start_ns + 1000, {"warden.decision": "allow"})
    trace.record(
        "upstream", trace.start_ns + 1000, trace.start_ns + 5000, span_id=upstream, kind=SpanKind.CLIENT
    )
    trace.end({"http.response.status_code": 200}, error=False)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["root"]
    assert header == f"00-{TRACE}-{upstream:016x}-01"
    assert root.parent is not None and root.parent.span_id == int(SPAN, 16) and root.parent.is_remote
    assert spans["upstream"].context.span_id == upstream and spans["upstream"].kind == SpanKind.CLIENT
    for name in ("authenticate", "upstream"):
        parent = spans[name].parent
        assert parent is not None and parent.span_id == root.context.span_id
        assert spans[name].context.trace_id == int(TRACE, 16)
    assert root.attributes == {"http.response.status_code": 200}


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        _Receiver.received.append(export)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.received = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_spans_reach_an_otlp_http_receiver(receiver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the exporter process, which reads its endpoint from the environment, as in production.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    tracing = tracing_from_env("warden-gateway")
    assert tracing is not None
    trace = tracing.begin("POST /v1/chat/completions", f"00-{TRACE}-{SPAN}-01")
    trace.record("authorize", trace.start_ns, trace.start_ns + 500, {"warden.decision": "allow"})
    trace.end({"http.response.status_code": 200})
    tracing.shutdown()  # the exporter process flushes its batch and exits
    assert isinstance(tracing.sink, ExporterProcess)
    tracing.sink._process.wait(10)
    spans = [
        span
        for export in _Receiver.received
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert sorted(span.name for span in spans) == ["POST /v1/chat/completions", "authorize"]
    assert {span.trace_id.hex() for span in spans} == {TRACE}
    service = {
        attribute.value.string_value
        for export in _Receiver.received
        for resource in export.resource_spans
        for attribute in resource.resource.attributes
        if attribute.key == "service.name"
    }
    assert service == {"gateway-under-test"}
