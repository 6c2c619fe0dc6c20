"""What each completion request leaves behind: its spans, its metric updates and one access log line.

Timestamps are wall-clock ``time.time_ns()`` so that spans line up with the caller's. A request's
phases, as its spans and histograms name them:

- arrival: the handler starts (the root span's start; time to first token and duration count from here);
- submitted: the prompt is tokenized and handed to the engine (``queue`` starts);
- first scheduled: the engine's scheduler first admits it (``Sequence.first_scheduled_ns``, carried
  on every delta; ``queue`` ends, ``prefill`` starts); a request that ends before its first token has
  one ``queue`` span to its end, as the engine reports nothing earlier;
- first token: the first delta reaches the handler (``prefill`` ends, ``decode`` starts);
- finished: the last delta reaches the handler (``decode`` ends), or the request ends otherwise.

Only ids, counts, sizes and timings are recorded: never prompt or output text, token ids or headers
other than the caller's request id and traceparent.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Literal

from opentelemetry.trace import SpanKind

from backend.engine.output import RequestOutput
from backend.metrics import WorkerMetrics
from gateway.tracing import AttributeValue, RequestTrace, Tracing

access_logger = logging.getLogger("backend.access")

Operation = Literal["chat", "text_completion"]

# The gateway's ids are 24 hex digits; allow other callers' short ids, never free text.
_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_NS = 1e-9
_MS = 1e-6
STATUS_CLIENT_CLOSED = 499


def caller_request_id(headers: Mapping[str, str]) -> str | None:
    """The caller's ``x-request-id`` if it looks like an id (short, alphanumeric), else ``None``."""
    value = headers.get("x-request-id")
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None


class WorkerTelemetry:
    """The app's metrics and tracing; ``begin`` starts one request's record."""

    def __init__(self, metrics: WorkerMetrics, tracing: Tracing | None, model: str) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.model = model

    def begin(self, route: str, operation: Operation, headers: Mapping[str, str]) -> RequestTelemetry:
        trace = RequestTrace.begin(self.tracing, f"POST {route}", headers.get("traceparent"), SpanKind.SERVER)
        return RequestTelemetry(self, trace, route, operation, caller_request_id(headers))


class RequestTelemetry:
    """One completion request's timings and counts, filled in as it runs and reported once by ``end``."""

    __slots__ = (
        "_ended",
        "_finish_reasons",
        "_last_token_ns",
        "_output_tokens",
        "app",
        "cached_tokens",
        "first_scheduled_ns",
        "first_token_ns",
        "last_output_ns",
        "model",
        "n",
        "operation",
        "prompt_tokens",
        "request_id",
        "route",
        "stream",
        "stream_error",
        "submitted_ns",
        "trace",
    )

    def __init__(
        self,
        app: WorkerTelemetry,
        trace: RequestTrace,
        route: str,
        operation: Operation,
        request_id: str | None,
    ) -> None:
        self.app = app
        self.trace = trace
        self.route = route
        self.operation = operation
        self.request_id = request_id
        self.model: str | None = None
        self.stream = False
        self.n = 1
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.submitted_ns = 0
        self.first_scheduled_ns = 0
        self.first_token_ns = 0
        self.last_output_ns = 0
        self.stream_error: str | None = None
        self._last_token_ns: dict[int, int] = {}
        self._output_tokens: dict[int, int] = {}
        self._finish_reasons: dict[int, str] = {}
        self._ended = False

    # -- as the request runs -------------------------------------------------------------------

    def named(self, model: str, *, prompt_tokens: int, stream: bool) -> None:
        """The request is valid so far: it names the served model and its prompt is tokenized."""
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.stream = stream

    def submitted(self, *, n: int) -> None:
        """The request is about to be handed to the engine, for ``n`` choices."""
        self.n = n
        self.submitted_ns = time.time_ns()

    def observe(self, out: RequestOutput) -> None:
        """One delta from the engine, as the handler receives it."""
        now = time.time_ns()
        metrics = self.app.metrics
        tokens = len(out.new_token_ids)
        if not self.first_token_ns:
            self.first_token_ns = now
            self.first_scheduled_ns = out.first_scheduled_ns
            self.prompt_tokens = out.num_prompt_tokens
            self.cached_tokens = out.num_cached_tokens
            metrics.time_to_first_token.observe((now - self.trace.start_ns) * _NS)
            if out.first_scheduled_ns and self.submitted_ns:
                metrics.request_queue.observe(max(0, out.first_scheduled_ns - self.submitted_ns) * _NS)
            metrics.prompt_tokens.inc(out.num_prompt_tokens)
        previous = self._last_token_ns.get(out.index)
        if previous is not None and tokens:
            per_token = (now - previous) * _NS / tokens
            for _ in range(tokens):
                metrics.inter_token_latency.observe(per_token)
        if tokens:
            self._last_token_ns[out.index] = now
            metrics.add_generated(tokens)
        self._output_tokens[out.index] = out.num_output_tokens
        if out.finished and out.finish_reason is not None:
            self._finish_reasons[out.index] = out.finish_reason
        self.last_output_ns = now

    @property
    def completed(self) -> bool:
        """Every choice reached a finish reason."""
        return len(self._finish_reasons) >= self.n

    @property
    def output_tokens(self) -> int:
        return sum(self._output_tokens.values())

    # -- the end -------------------------------------------------------------------------------

    def end_stream(self) -> None:
        """A streamed response is over: complete, failed after its first byte, or left by its client."""
        if self.stream_error is not None:
            self.end(200, error_type=self.stream_error)
        elif self.completed:
            self.end(200)
        else:
            self.end(STATUS_CLIENT_CLOSED)

    def end(self, status: int, *, error_type: str | None = None) -> None:
        """Record the request's spans, metrics and log line (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        now = time.time_ns()
        outcome = self._outcome(status, error_type)
        # Server spans mark 5xx and failed streams as errors, not the client's 4xx (OpenTelemetry's rule).
        span_error = status >= 500 or self.stream_error is not None
        metrics = self.app.metrics
        metrics.requests.labels(outcome).inc()
        if self.first_token_ns:
            metrics.request_duration.observe((now - self.trace.start_ns) * _NS)
        self._record_spans(now, span_error)
        self.trace.end(self._attributes(status, error_type, outcome), error=span_error, end_ns=now)
        self._log(now, status, error_type, outcome)

    def _attributes(self, status: int, error_type: str | None, outcome: str) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "http.route": self.route,
            "http.response.status_code": status,
            "gen_ai.operation.name": self.operation,
        }
        if self.request_id is not None:
            attributes["warden.request_id"] = self.request_id
        if self.model is not None:
            attributes["gen_ai.request.model"] = self.model
            attributes["warden.stream"] = self.stream
        if self.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = self.prompt_tokens
        if self.first_token_ns:
            attributes["gen_ai.usage.output_tokens"] = self.output_tokens
            attributes["warden.cached_tokens"] = self.cached_tokens or 0
        if self.submitted_ns:
            reasons = [self._finish_reasons.get(i, outcome) for i in range(self.n)]
            attributes["gen_ai.response.finish_reasons"] = reasons
        if error_type is not None:
            attributes["error.type"] = error_type
        return attributes

    def _log(self, now: int, status: int, error_type: str | None, outcome: str) -> None:
        start, first_token = self.trace.start_ns, self.first_token_ns
        access_logger.info(
            "request",
            extra={
                "request_id": self.request_id,
                "trace_id": self.trace.trace_id_hex,
                "endpoint": self.route,
                "model": self.model,
                "stream": self.stream,
                "status": status,
                "error_type": error_type,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.output_tokens if first_token else None,
                "cached_tokens": self.cached_tokens,
                "finish_reason": outcome,
                "ttft_ms": round((first_token - start) * _MS, 2) if first_token else None,
                "latency_ms": round((now - start) * _MS, 2),
            },
        )

    def _outcome(self, status: int, error_type: str | None) -> str:
        """One finish reason for the request: its failure, else the most telling reason of its choices."""
        if status == STATUS_CLIENT_CLOSED:
            return "abort"
        if status >= 400 or error_type is not None:
            return "error"
        reasons = set(self._finish_reasons.values())
        for reason in ("abort", "length", "stop"):
            if reason in reasons:
                return reason
        return "abort"

    def _record_spans(self, now: int, error: bool) -> None:
        trace = self.trace
        if not trace.sampled or not self.submitted_ns:
            return
        scheduled, first_token = self.first_scheduled_ns, self.first_token_ns
        if not first_token:  # ended before its first token; the engine reports no earlier timestamp
            trace.record("queue", self.submitted_ns, now, error=error)
            return
        scheduled = scheduled or first_token
        trace.record("queue", self.submitted_ns, scheduled)
        trace.record("prefill", scheduled, first_token)
        decode_end = self.last_output_ns if self.completed else now
        decoded = {"gen_ai.usage.output_tokens": self.output_tokens}
        trace.record("decode", first_token, decode_end, decoded, error=error)
