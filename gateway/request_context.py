"""Per-request state that the pipeline steps fill in, and the one log line each request leaves.

Identifiers come from the gateway, never from the client: the request id is fresh, and a client's
``traceparent`` is kept only if well-formed (its trace id joins our spans to the caller's trace).
Each step's start and end are kept (``with ctx.step(name)``) for the step histograms and spans.
The log line carries ids, decisions, sizes and timings, never tokens, prompts, outputs or subjects.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType

from starlette.requests import Request

from gateway.auth import Principal
from gateway.cache import Lookup
from gateway.limits import Reservation
from gateway.openai_api import OpenAIRequest
from gateway.policy.rbac import Decision
from gateway.tracing import RequestTrace, Tracing

logger = logging.getLogger("gateway.access")

_SPAN_NAMES = {
    "chat.completions": "POST /v1/chat/completions",
    "completions": "POST /v1/completions",
    "models": "GET /v1/models",
}


@dataclass(slots=True)
class Step:
    """One pipeline step's wall-clock interval (epoch ns) and whether it ended by raising."""

    name: str
    start_ns: int
    end_ns: int = 0
    failed: bool = False


class _Timed:
    """``with ctx.step(name):`` appends the step when its block ends, however it ends."""

    __slots__ = ("_step", "_steps")

    def __init__(self, steps: list[Step], name: str) -> None:
        self._steps = steps
        self._step = Step(name, 0)

    def __enter__(self) -> Step:
        self._step.start_ns = time.time_ns()
        return self._step

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._step.end_ns = time.time_ns()
        self._step.failed = kind is not None
        self._steps.append(self._step)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestContext:
    request_id: str
    trace: RequestTrace
    endpoint: str
    started: float
    model: str | None = None
    upstream: str | None = None  # the pool serving the model, once it is known to be served
    upstream_span_id: int = 0  # the span whose id the worker sees as its parent
    upstream_started_ns: int = 0
    principal: Principal | None = None
    decision: Decision | None = None
    worker: str | None = None
    reservation: Reservation | None = None
    lookup: Lookup | None = None
    usage: Usage | None = None
    client_wants_usage: bool = False  # the client asked for the usage chunk of a stream
    call: OpenAIRequest | None = None  # the validated request, for the audit record's prompt
    collect_output: bool = False  # the audit record needs the answer's text
    output_parts: list[str] = field(default_factory=list)
    guard_scores: dict[str, float] = field(default_factory=dict)
    guard_rules: tuple[str, ...] = ()
    guard_action: str | None = None  # block, sanitize or flag, when the injection score crossed the bar
    pii_counts: dict[str, int] = field(default_factory=dict)
    pii_prompt_counts: dict[str, int] = field(default_factory=dict)  # the prompt's share of pii_counts
    steps: list[Step] = field(default_factory=list)
    finished: bool = field(default=False)

    @classmethod
    def begin(cls, request: Request, endpoint: str, tracing: Tracing | None = None) -> RequestContext:
        return cls(
            request_id=secrets.token_hex(12),
            trace=RequestTrace.begin(
                tracing, _SPAN_NAMES.get(endpoint, endpoint), request.headers.get("traceparent")
            ),
            endpoint=endpoint,
            started=time.perf_counter(),
        )

    def step(self, name: str) -> _Timed:
        return _Timed(self.steps, name)

    @property
    def cache_status(self) -> str:
        return self.lookup.status if self.lookup is not None else "bypass"

    def upstream_headers(self) -> dict[str, str]:
        """Headers of the call to the worker, whose parent span is the ``upstream`` span."""
        self.upstream_span_id = self.trace.new_span_id()
        return {
            "content-type": "application/json",
            "traceparent": self.trace.traceparent(self.upstream_span_id),
            "x-request-id": self.request_id,
        }

    def response_headers(self) -> dict[str, str]:
        """What every answer carries: the request id, the cache outcome and the rate-limit state."""
        headers = {"x-request-id": self.request_id, "x-cache": self.cache_status}
        if self.reservation is not None:
            headers.update(self.reservation.headers)
        return headers

    def trace_id(self) -> str:
        return self.trace.trace_id_hex


def log_request(ctx: RequestContext, status: int, code: str | None = None) -> None:
    """The request's one log line."""
    decision = ctx.decision
    logger.info(
        "request",
        extra={
            "request_id": ctx.request_id,
            "trace_id": ctx.trace_id(),
            "endpoint": ctx.endpoint,
            "model": ctx.model,
            "status": status,
            "code": code,
            "decision": decision.code if decision else None,
            "rule": decision.rule if decision else None,
            "roles": list(decision.roles) if decision else None,
            "tenant": decision.tenant if decision else None,
            "policy_version": decision.policy_version if decision else None,
            "worker": ctx.worker,
            "cache": ctx.cache_status,
            "tokens_in": ctx.usage.prompt_tokens if ctx.usage else None,
            "tokens_out": ctx.usage.completion_tokens if ctx.usage else None,
            "latency_ms": round((time.perf_counter() - ctx.started) * 1000.0, 2),
        },
    )
