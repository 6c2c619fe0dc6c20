"""Per-request state that the pipeline steps fill in, and the one log line each request leaves.

Identifiers come from the gateway, never from the client: the request id is fresh, and a client's
``traceparent`` is kept only if well-formed (its trace id joins our spans to the caller's trace).
The log line carries ids, decisions, sizes and timings, never tokens, prompts, outputs or subjects.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.auth import Principal
from gateway.cache import Lookup
from gateway.limits import Reservation
from gateway.openai_api import OpenAIRequest
from gateway.policy.rbac import Decision

logger = logging.getLogger("gateway.access")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_ZERO_TRACE = "0" * 32


def new_traceparent(incoming: str | None) -> str:
    """A W3C traceparent for the upstream call: the caller's trace id if valid, our own span id."""
    match = _TRACEPARENT.match(incoming or "")
    trace_id = match.group(1) if match and match.group(1) != _ZERO_TRACE else secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


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
    traceparent: str
    endpoint: str
    started: float
    model: str | None = None
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
    pii_counts: dict[str, int] = field(default_factory=dict)
    finished: bool = field(default=False)

    @classmethod
    def begin(cls, request: Request, endpoint: str) -> RequestContext:
        return cls(
            request_id=secrets.token_hex(12),
            traceparent=new_traceparent(request.headers.get("traceparent")),
            endpoint=endpoint,
            started=time.perf_counter(),
        )

    @property
    def cache_status(self) -> str:
        return self.lookup.status if self.lookup is not None else "bypass"

    def upstream_headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "traceparent": self.traceparent,
            "x-request-id": self.request_id,
        }

    def response_headers(self) -> dict[str, str]:
        """What every answer carries: the request id, the cache outcome and the rate-limit state."""
        headers = {"x-request-id": self.request_id, "x-cache": self.cache_status}
        if self.reservation is not None:
            headers.update(self.reservation.headers)
        return headers

    def trace_id(self) -> str:
        return self.traceparent[3:35]


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
