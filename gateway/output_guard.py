"""PII redaction of what leaves the gateway: the answer (streamed or whole) and, if asked, the prompt.

The redactor is per request, built from the caller's merged PII policy. A guard that cannot run
fails the request closed (503 ``guard_unavailable``), unless every role of the caller says
``guards.fail_open``. Redaction counts go to the audit record.
"""

from __future__ import annotations

from typing import Any

from gateway.guards.pii import GuardUnavailable, PiiAnalyzer
from gateway.guards.redaction import Redactor
from gateway.request_context import RequestContext, Step


def redactor_for(analyzer: PiiAnalyzer, ctx: RequestContext, *, output: bool) -> Redactor | None:
    """The request's redactor if its policy redacts the answer (``output``) or the prompt."""
    settings = ctx.decision.settings if ctx.decision is not None else None
    if settings is None:
        return None
    policy = settings.guards.pii
    if not (policy.redact_output if output else policy.redact_input):
        return None
    try:
        return Redactor(analyzer, policy)
    except GuardUnavailable:
        if settings.guards.fail_open:
            return None
        raise


def guards_fail_open(ctx: RequestContext) -> bool:
    settings = ctx.decision.settings if ctx.decision is not None else None
    return settings is not None and settings.guards.fail_open


async def redact_prompt(analyzer: PiiAnalyzer, ctx: RequestContext, raw: dict[str, Any]) -> None:
    """Redact every message (or the completions prompt) in the body sent upstream, in place."""
    redactor = redactor_for(analyzer, ctx, output=False)
    if redactor is None:
        return
    with ctx.step("prompt_redaction"):
        try:
            if isinstance(raw.get("messages"), list):
                for message in raw["messages"]:
                    await _redact_content(redactor, message)
            elif isinstance(raw.get("prompt"), str):
                raw["prompt"] = (await redactor.redact_async(raw["prompt"])).text
            elif isinstance(raw.get("prompt"), list):
                raw["prompt"] = [
                    (await redactor.redact_async(p)).text if isinstance(p, str) else p for p in raw["prompt"]
                ]
        except GuardUnavailable:
            if not guards_fail_open(ctx):
                raise
        finally:
            count_redactions(ctx, redactor, prompt=True)


async def _redact_content(redactor: Redactor, message: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = (await redactor.redact_async(content)).text
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = (await redactor.redact_async(part["text"])).text


def count_redactions(ctx: RequestContext, redactor: Redactor | None, *, prompt: bool = False) -> None:
    """Move the redactor's counts to the request (the audit record and metrics); the answer's
    redaction time becomes its ``output_redaction`` step (its work is spread over the stream)."""
    if redactor is None:
        return
    for entity, count in redactor.counts.items():
        ctx.pii_counts[entity] = ctx.pii_counts.get(entity, 0) + count
        if prompt:
            ctx.pii_prompt_counts[entity] = ctx.pii_prompt_counts.get(entity, 0) + count
    redactor.counts.clear()
    if not prompt and redactor.first_ns:
        ctx.steps.append(Step("output_redaction", redactor.first_ns, redactor.first_ns + redactor.busy_ns))
    redactor.first_ns = redactor.busy_ns = 0
