"""The last step of every request, whichever way it ends: record, store, settle, log.

It runs before the final bytes reach the client (the last SSE event, or the whole JSON answer), so
that an acknowledged request is always in the audit log. If its record cannot be written the
request fails with 503 (``audit_unavailable``) unless the audit settings say to fail open. It runs
at most once per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.audit import AuditSettings, AuditUnavailable, AuditWriter, build_record, canonical_text
from gateway.cache import ResponseCache
from gateway.cache_entry import CachedAnswer
from gateway.limits import Limiter
from gateway.openai_api import ChatCompletionRequest
from gateway.request_context import RequestContext, log_request
from gateway.telemetry import RequestTelemetry

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Finisher:
    cache: ResponseCache
    limiter: Limiter
    audit: AuditWriter | None
    audit_settings: AuditSettings
    telemetry: RequestTelemetry | None = None

    async def __call__(
        self, ctx: RequestContext, status: int, code: str | None = None, answer: CachedAnswer | None = None
    ) -> None:
        if ctx.finished:
            return
        ctx.finished = True
        recorded = False
        try:
            if self.audit is not None:
                with ctx.step("audit"):
                    await self._record(ctx, status, code)
            recorded = True
        except AuditUnavailable as error:
            status, code = error.status_code, error.code
            raise
        finally:
            if ctx.lookup is not None:
                keep = recorded and status == 200
                await self.cache.complete(ctx.lookup, answer if keep else None)
            if ctx.reservation is not None:
                await self.limiter.settle(ctx.reservation, self._used_tokens(ctx, status))
            log_request(ctx, status, code)
            if self.telemetry is not None:
                self.telemetry.observe(ctx, status, code, decision_label(ctx, code))

    def wants_output(self, ctx: RequestContext) -> bool:
        """Whether the audit record of this request needs the answer's text."""
        settings = ctx.decision.settings if ctx.decision is not None else None
        return self.audit is not None and settings is not None and settings.audit.outputs != "omit"

    async def _record(self, ctx: RequestContext, status: int, code: str | None) -> None:
        if self.audit is None:
            return
        usage = ctx.usage
        decision, rule = refusal_after_authorization(ctx, code)
        record = build_record(
            ctx,
            status=status,
            hmac_key=self.audit_settings.hmac_key_bytes(),
            error_code=code,
            decision=decision,
            rule=rule,
            guard_scores=ctx.guard_scores,
            guard_rules=ctx.guard_rules,
            pii_counts=ctx.pii_counts,
            cache_hit=ctx.cache_status == "hit",
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            prompt=prompt_text(ctx),
            output="".join(ctx.output_parts) if ctx.collect_output else None,
        )
        try:
            await self.audit.write(record)
        except AuditUnavailable:
            if not self.audit_settings.fail_open:
                raise
            logger.warning("request served without an audit record (audit fail_open)")

    @staticmethod
    def _used_tokens(ctx: RequestContext, status: int) -> int | None:
        """What to charge: the worker's usage; nothing if it never ran; all of it if unknown."""
        if ctx.usage is not None:
            return ctx.usage.total
        if ctx.worker is None or (status >= 400 and status != 499):
            return 0  # refused or failed before the worker produced anything
        return None


def refusal_after_authorization(ctx: RequestContext, code: str | None) -> tuple[str | None, str | None]:
    """When a later step (a guard, a budget) refused a request the policy allowed, the record's
    decision is that refusal and its rule names the step; otherwise the authorization's stand."""
    if code is None or ctx.decision is None or not ctx.decision.allowed:
        return None, None
    if code == "prompt_rejected":
        return code, "guards.injection" + (f" ({', '.join(ctx.guard_rules)})" if ctx.guard_rules else "")
    if code == "guard_unavailable":
        return code, "guards"
    if code.endswith("_exceeded") or code == "request_exceeds_token_budget":
        return code, "budget"
    return None, None


def decision_label(ctx: RequestContext, code: str | None) -> str:
    """The request's decision for the metrics: allow, the denial's code, a later refusal, or none."""
    decision = ctx.decision
    if decision is None:
        return "none"  # refused before authorization (edge checks, authentication)
    if not decision.allowed:
        return decision.code
    return refusal_after_authorization(ctx, code)[0] or "allow"


def prompt_text(ctx: RequestContext) -> str | None:
    """The prompt as the audit record hashes or keeps it (canonical JSON for chat messages)."""
    call = ctx.call
    if call is None:
        return None
    if isinstance(call, ChatCompletionRequest):
        return canonical_text([m.model_dump(exclude_none=True) for m in call.messages])
    return canonical_text(call.prompt if isinstance(call.prompt, str) else list(call.prompt))
