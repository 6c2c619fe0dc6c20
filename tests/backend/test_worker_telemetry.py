"""The worker's spans, metrics and access log line, in process over the real default model."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import Message

from backend.engine.llm_engine import LLMEngine
from backend.metrics import describe_metrics
from backend.server import create_app, load_engine
from backend.settings import WorkerSettings
from gateway.logs import JsonFormatter
from gateway.tracing import Tracing
from tests.support.ports import free_port

pytestmark = pytest.mark.model

MODEL = "smollm2"
# In every prompt: it must never appear in a span, a metric or a log record.
MARKER = "quokka-7731-marker"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
REQUEST_ID = "5e1f0a2b3c4d5e6f7a8b9c0d"

GAUGES = {
    "warden_worker_kv_blocks_total",
    "warden_worker_kv_blocks_used",
    "warden_worker_kv_blocks_free",
    "warden_worker_requests_running",
    "warden_worker_requests_waiting",
    "warden_worker_prefix_cache_hit_ratio",
    "warden_worker_generation_tokens_per_second",
    "warden_worker_engine_info",
}
COUNTERS = {  # as the parser names them: without _total
    "warden_worker_preemptions",
    "warden_worker_engine_steps",
    "warden_worker_prefix_cache_queries_tokens",
    "warden_worker_prefix_cache_hits_tokens",
    "warden_worker_prompt_tokens",
    "warden_worker_generation_tokens",
    "warden_worker_requests",
}
HISTOGRAMS = {
    "warden_worker_time_to_first_token_seconds",
    "warden_worker_inter_token_latency_seconds",
    "warden_worker_request_queue_seconds",
    "warden_worker_request_duration_seconds",
}
ALLOWED_ATTRIBUTES = {
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "warden.request_id",
    "warden.cached_tokens",
    "warden.stream",
    "error.type",
}


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return load_engine(settings())


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(insecure_dev=True, served_model_name=MODEL, kv_cache_memory_mb=16, **overrides)


def app_for(engine: LLMEngine, exporter: InMemorySpanExporter | None = None, **overrides: Any) -> Starlette:
    tracing = Tracing.create("warden-worker", SimpleSpanProcessor(exporter)) if exporter else None
    return create_app(settings(**overrides), engine_factory=lambda _settings: engine, tracing=tracing)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def client(engine: LLMEngine, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    with TestClient(app_for(engine, exporter)) as test_client:
        yield test_client


def chat(stream: bool, max_tokens: int = 6) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Repeat {MARKER} twice."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def post_chat(client: TestClient, stream: bool) -> dict[str, Any]:
    """The request's usage, read from the response (the last chunk's when streamed)."""
    headers = {"traceparent": TRACEPARENT, "x-request-id": REQUEST_ID}
    response = client.post("/v1/chat/completions", json=chat(stream), headers=headers)
    assert response.status_code == 200
    if not stream:
        usage: dict[str, Any] = response.json()["usage"]
        return usage
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    return usage


def scrape(client: TestClient) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def samples(text: str) -> dict[str, float]:
    """Every sample by name and labels, e.g. ``warden_worker_requests_total{finish_reason=length}``."""
    result: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            if "le" not in sample.labels:
                result[key] = sample.value
    return result


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [s.name for s in spans]
    return by_name


def interval(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


def attributes_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def assert_no_content(span: ReadableSpan) -> None:
    attributes = dict(span.attributes or {})
    assert set(attributes) <= ALLOWED_ATTRIBUTES
    assert MARKER not in repr(attributes)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_leaves_a_span_tree_under_the_callers_span(
    client: TestClient, exporter: InMemorySpanExporter, stream: bool
) -> None:
    usage = post_chat(client, stream)
    spans = spans_by_name(exporter)
    assert set(spans) == {"POST /v1/chat/completions", "queue", "prefill", "decode"}
    root = spans["POST /v1/chat/completions"]
    assert root.kind is SpanKind.SERVER
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert f"{root.parent.span_id:016x}" == PARENT_SPAN_ID
    assert root.parent.is_remote
    queue, prefill, decode = spans["queue"], spans["prefill"], spans["decode"]
    for child in (queue, prefill, decode):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context is not None and child.context.trace_id == root.context.trace_id
        assert_no_content(child)
    assert_no_content(root)
    (root_start, root_end), (queue_start, queue_end) = interval(root), interval(queue)
    (prefill_start, prefill_end), (decode_start, decode_end) = interval(prefill), interval(decode)
    assert root_start <= queue_start <= queue_end <= prefill_end <= decode_end <= root_end
    assert (queue_end, prefill_end) == (prefill_start, decode_start)
    attributes = attributes_of(root)
    assert attributes["warden.request_id"] == REQUEST_ID
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 6
    assert attributes["warden.cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["length"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["warden.stream"] is stream
    assert "error.type" not in attributes


def test_a_request_id_that_is_not_an_id_is_left_out(
    client: TestClient, exporter: InMemorySpanExporter
) -> None:
    headers = {"x-request-id": f"{MARKER} with spaces"}
    assert client.post("/v1/chat/completions", json=chat(False, 1), headers=headers).status_code == 200
    root = spans_by_name(exporter)["POST /v1/chat/completions"]
    assert root.parent is None  # no traceparent: a new trace
    assert "warden.request_id" not in (root.attributes or {})
    assert_no_content(root)


def test_a_refused_request_ends_its_span_with_the_error(
    client: TestClient, exporter: InMemorySpanExporter
) -> None:
    body = {**chat(False), "model": "other"}
    response = client.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 404
    [root] = exporter.get_finished_spans()
    attributes = attributes_of(root)
    assert attributes["http.response.status_code"] == 404
    assert attributes["error.type"] == "model_not_found"
    assert "gen_ai.request.model" not in attributes  # the client's model name is not ours to record


def test_metrics_expose_every_name_and_move_with_a_request(client: TestClient, engine: LLMEngine) -> None:
    text = client.get("/metrics").text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {name: families.get(name) for name in GAUGES} == dict.fromkeys(GAUGES, "gauge")
    assert {name: families.get(name) for name in COUNTERS} == dict.fromkeys(COUNTERS, "counter")
    assert {name: families.get(name) for name in HISTOGRAMS} == dict.fromkeys(HISTOGRAMS, "histogram")
    assert "process_resident_memory_bytes" in families
    assert set(families) == describe_metrics()

    before = scrape(client)
    usage = post_chat(client, stream=False)
    after = scrape(client)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("warden_worker_time_to_first_token_seconds_count") == 1
    assert grew("warden_worker_request_queue_seconds_count") == 1
    assert grew("warden_worker_request_duration_seconds_count") == 1
    assert grew("warden_worker_inter_token_latency_seconds_count") == usage["completion_tokens"] - 1
    assert grew("warden_worker_prompt_tokens_total") == usage["prompt_tokens"]
    assert grew("warden_worker_generation_tokens_total") == usage["completion_tokens"]
    assert grew("warden_worker_requests_total{finish_reason=length}") == 1
    assert grew("warden_worker_requests_total{finish_reason=error}") == 0
    assert grew("warden_worker_engine_steps_total") >= usage["completion_tokens"]
    assert grew("warden_worker_prefix_cache_queries_tokens_total") > 0
    assert after["warden_worker_generation_tokens_per_second"] > 0
    assert after["warden_worker_kv_blocks_total"] > 0
    assert after["warden_worker_kv_blocks_free"] == after["warden_worker_kv_blocks_total"]
    assert after["warden_worker_requests_running"] == after["warden_worker_requests_waiting"] == 0
    assert 0 <= after["warden_worker_prefix_cache_hit_ratio"] <= 1
    # On this CPU, through the fused kernels the bootstrap built.
    dtype = str(engine.model.dtype).removeprefix("torch.")
    assert after[f"warden_worker_engine_info{{device=cpu,dtype={dtype},layer_ops=fused-cpu}}"] == 1
    assert MARKER not in client.get("/metrics").text


def test_one_access_line_per_request_and_no_text_in_any_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        usage = post_chat(client, stream=True)
    lines = [r for r in caplog.records if r.name == "backend.access"]
    assert len(lines) == 1
    line = json.loads(JsonFormatter().format(lines[0]))
    assert line["level"] == "info"
    assert {k: line[k] for k in ("request_id", "trace_id", "model", "status", "finish_reason")} == {
        "request_id": REQUEST_ID,
        "trace_id": TRACE_ID,
        "model": MODEL,
        "status": 200,
        "finish_reason": "length",
    }
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert line["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < line["ttft_ms"] <= line["latency_ms"]
    for record in caplog.records:
        assert MARKER not in JsonFormatter().format(record)
        assert MARKER not in repr(record.__dict__)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_still_ends_the_span_and_frees_the_request(
    engine: LLMEngine, exporter: InMemorySpanExporter, stream: bool
) -> None:
    app = app_for(engine, exporter)
    body = json.dumps(chat(stream, max_tokens=200)).encode()

    def generating() -> bool:
        return any(seq.num_output_tokens > 0 for seq in list(engine.scheduler.running))

    with TestClient(app) as client:
        assert client.portal is not None
        messages = client.portal.call(leave_mid_generation, app, body, generating)
        deadline = time.monotonic() + 5
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not engine.has_unfinished_requests()
        after = scrape(client)
    if stream:
        assert messages[0]["status"] == 200
    spans = spans_by_name(exporter)
    root = spans["POST /v1/chat/completions"]
    attributes = attributes_of(root)
    assert attributes["http.response.status_code"] == 499
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["abort"]
    assert 0 < attributes["gen_ai.usage.output_tokens"] < 200
    assert set(spans) == {"POST /v1/chat/completions", "queue", "prefill", "decode"}
    assert interval(spans["decode"])[1] <= interval(root)[1]
    assert after["warden_worker_requests_total{finish_reason=abort}"] == 1


async def leave_mid_generation(app: Starlette, body: bytes, generating: Callable[[], bool]) -> list[Message]:
    """Send one request over raw ASGI and disconnect once it has sent a chunk or generated a token."""
    sent: list[Message] = []
    leave = anyio.Event()
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            leave.set()

    async def watch() -> None:  # a whole (non-streamed) response sends nothing before its end
        while not leave.is_set():
            await anyio.sleep(0.02)
            if not json.loads(body)["stream"] and generating():
                leave.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn reports
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"traceparent", TRACEPARENT.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        await app(scope, receive, send)
        leave.set()
    return sent


def test_metrics_port_serves_the_registry_and_the_main_port_does_not(engine: LLMEngine) -> None:
    port = free_port()
    with TestClient(app_for(engine, metrics_port=port)) as client:
        assert client.get("/metrics").status_code == 404
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert "warden_worker_kv_blocks_total" in {
            f.name for f in text_string_to_metric_families(response.text)
        }
    with pytest.raises(httpx.ConnectError):  # shut down with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_batched_spans_are_exported_when_the_app_stops(engine: LLMEngine) -> None:
    # uvicorn re-raises SIGTERM after its shutdown, so the app's own shutdown is the last chance to export.
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    tracing = Tracing.create("warden-worker", processor)
    app = create_app(settings(), engine_factory=lambda _settings: engine, tracing=tracing)
    with TestClient(app) as client:
        assert client.post("/v1/completions", json={"model": "other", "prompt": "x"}).status_code == 404
        assert exporter.get_finished_spans() == ()
    assert [span.name for span in exporter.get_finished_spans()] == ["POST /v1/completions"]
    tracing.shutdown()
