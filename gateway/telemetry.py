"""What each finished request leaves behind in the metrics and, when sampled, in its trace.

Called once per request by the finish step, after the audit record and the log line. Everything
here is counts, decisions, ids and timings taken from the request context; nothing reads the
prompt, the answer or the caller's token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.trace import SpanKind

from gateway.metrics import GatewayMetrics
from gateway.request_context import RequestContext, Step
from gateway.tracing import Attributes, Tracing

_NS = 1e-9


@dataclass(slots=True)
class RequestTelemetry:
    metrics: GatewayMetrics | None
    tracing: Tracing | None = None

    def observe(self, ctx: RequestContext, status: int, code: str | None, decision: str) -> None:
        end_ns = time.time_ns()
        if self.metrics is not None:
            _count(self.metrics, ctx, status, decision, end_ns)
        if ctx.trace.sampled:
            _emit_trace(ctx, status, code, decision, end_ns)


def _count(metrics: GatewayMetrics, ctx: RequestContext, status: int, decision: str, end_ns: int) -> None:
    model = metrics.model_label(ctx.model if ctx.upstream is not None else None)
    metrics.requests.inc((ctx.endpoint, model, str(status), decision))
    metrics.request_duration.observe((ctx.endpoint,), time.perf_counter() - ctx.started)
    steps = metrics.step_duration
    for step in ctx.steps:
        seconds = (step.end_ns - step.start_ns) * _NS
        steps.observe((step.name,), seconds)
        if step.name == "audit":
            metrics.audit_write_duration.observe((), seconds)
    if ctx.upstream_started_ns:
        steps.observe(("upstream",), (end_ns - ctx.upstream_started_ns) * _NS)
    if ctx.usage is not None:
        metrics.tokens.inc((model, "input"), ctx.usage.prompt_tokens)
        metrics.tokens.inc((model, "output"), ctx.usage.completion_tokens)
    if ctx.guard_action is not None:
        for rule in ctx.guard_rules or ("classifier",):
            metrics.guard_detections.inc((rule, ctx.guard_action))
    for entity, count in ctx.pii_counts.items():
        in_prompt = ctx.pii_prompt_counts.get(entity, 0)
        if in_prompt:
            metrics.pii_entities.inc((entity, "prompt"), in_prompt)
        if count > in_prompt:
            metrics.pii_entities.inc((entity, "output"), count - in_prompt)


def _emit_trace(ctx: RequestContext, status: int, code: str | None, decision: str, end_ns: int) -> None:
    trace = ctx.trace
    for step in ctx.steps:
        trace.record(step.name, step.start_ns, step.end_ns, _step_attributes(ctx, step), error=step.failed)
    if ctx.upstream_started_ns:
        upstream: dict[str, str | int] = {"warden.upstream": ctx.upstream or ""}
        if ctx.worker is not None:
            upstream["server.address"] = ctx.worker
        trace.record(
            "upstream", ctx.upstream_started_ns, end_ns, upstream,
            span_id=ctx.upstream_span_id, kind=SpanKind.CLIENT, error=status >= 500,
        )  # fmt: skip
    root: dict[str, str | int] = {
        "http.request.method": "GET" if ctx.endpoint == "models" else "POST",
        "http.route": trace.name.split(" ", 1)[-1],
        "http.response.status_code": status,
        "warden.request_id": ctx.request_id,
        "warden.decision": decision,
        "warden.cache": ctx.cache_status,
    }
    if code is not None:
        root["error.type"] = code
    if ctx.model is not None and ctx.upstream is not None:
        root["gen_ai.request.model"] = ctx.model
    if ctx.decision is not None:
        root["warden.policy_version"] = ctx.decision.policy_version
        if ctx.decision.tenant:
            root["warden.tenant"] = ctx.decision.tenant
    if ctx.usage is not None:
        root["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
        root["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
    trace.end(root, error=status >= 500, end_ns=end_ns)


def _step_attributes(ctx: RequestContext, step: Step) -> Attributes | None:
    """Per step: the decision it took or the counts it found, never what it read."""
    name = step.name
    if name == "authorize" and ctx.decision is not None:
        return {"warden.decision": ctx.decision.code, "warden.rule": ctx.decision.rule}
    if name == "prompt_guard" and "injection" in ctx.guard_scores:
        attributes: dict[str, str | float | list[str]] = {
            "warden.guard.score": ctx.guard_scores["injection"],
            "warden.guard.rules": list(ctx.guard_rules),
        }
        if ctx.guard_action is not None:
            attributes["warden.guard.action"] = ctx.guard_action
        return attributes
    if name == "prompt_redaction":
        return {f"warden.pii.{entity.lower()}": n for entity, n in ctx.pii_prompt_counts.items()}
    if name == "output_redaction":
        return {
            f"warden.pii.{entity.lower()}": n - ctx.pii_prompt_counts.get(entity, 0)
            for entity, n in ctx.pii_counts.items()
            if n > ctx.pii_prompt_counts.get(entity, 0)
        }
    if name == "budget" and ctx.reservation is not None:
        return {"warden.budget.reserved_tokens": ctx.reservation.tokens}
    if name == "cache":
        return {"warden.cache": ctx.cache_status}
    return None
