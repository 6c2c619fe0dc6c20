"""The request flow of an OpenAI call through the gateway, top to bottom, one small function per step.

``handle_completion`` fixes the order: edge checks → authenticate → authorize → prompt guard
(injection, then PII in the prompt if the role says so) → budget → cache → route to a worker →
relay the answer (redacted) → finish (audit record, cache store, budget settlement, log line)
before the last byte. Each step either returns what the next one needs or raises an ``ApiError``;
the finish step runs on every path, so refused requests are recorded too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, Principal
from gateway.bodies import parse_model, read_json
from gateway.cache import Lookup, ResponseCache
from gateway.cache_keys import CacheScope
from gateway.errors import ApiError, InvalidRequest, NotFound, PermissionDenied
from gateway.finish import Finisher
from gateway.guards.injection import InjectionScanner
from gateway.guards.pii import PiiAnalyzer
from gateway.limits import Limiter, LimitScope, Reservation, estimate_prompt_tokens, tokens_to_reserve
from gateway.openai_api import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.output_guard import redact_prompt, redactor_for
from gateway.policy.rbac import Decision, RequestFacts, decide, visible_models
from gateway.policy.store import PolicyStore
from gateway.prompt_guard import screen_prompt
from gateway.relay import relay_reply, replay, until_disconnected
from gateway.request_context import RequestContext
from gateway.settings import GatewaySettings, LimitsSettings
from gateway.tracing import Tracing
from gateway.upstream.router import Router

logger = logging.getLogger(__name__)

# The completions API generates 16 tokens when max_tokens is absent; chat generates up to the cap.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_ENDPOINTS: dict[str, tuple[type[OpenAIRequest], str]] = {
    "chat.completions": (ChatCompletionRequest, "/v1/chat/completions"),
    "completions": (CompletionRequest, "/v1/completions"),
}

_DENIALS = {
    "no_role": "No role of yours grants access to this gateway.",
    "tenant_missing": "Your token does not name a tenant.",
    "model_not_allowed": "You are not allowed to use this model.",
    "endpoint_not_allowed": "You are not allowed to use this endpoint.",
    "max_tokens_exceeded": "max_tokens exceeds the limit of your role.",
    "sampling_not_allowed": "These sampling settings are not allowed for your role.",
}


@dataclass(slots=True)
class Services:
    """What the steps need, built once per process by ``create_app``."""

    settings: GatewaySettings
    authenticator: Authenticator
    policies: PolicyStore
    router: Router
    cache: ResponseCache
    limiter: Limiter
    finish: Finisher
    pii: PiiAnalyzer
    scanner: InjectionScanner
    tracing: Tracing | None = None


async def handle_completion(services: Services, request: Request, endpoint: str) -> Response:
    ctx = RequestContext.begin(request, endpoint, services.tracing)
    try:
        with ctx.step("read_request"):
            call, raw = await read_openai_request(request, endpoint, services.settings.limits)  # 1
        ctx.model, ctx.call = call.model, call
        with ctx.step("authenticate"):
            ctx.principal = await authenticate(services, request)  # 2
        with ctx.step("authorize"):
            authorize(services, ctx, ctx.principal, call)  # 3
        ctx.collect_output = services.finish.wants_output(ctx)
        pool = services.router.pool_for(call.model)
        if pool is None:
            raise NotFound(f"The model '{call.model}' does not exist.", code="model_not_found")
        ctx.upstream = pool.settings.name
        with ctx.step("prompt_guard"):
            await screen_prompt(services.scanner, ctx, call, raw)  # 4
        await redact_prompt(services.pii, ctx, raw)
        max_tokens = effective_max_tokens(ctx, call)
        with ctx.step("budget"):
            ctx.reservation = await reserve_budget(services, ctx, call, max_tokens)  # 5
        with ctx.step("cache"):
            ctx.lookup = await look_up_cache(services, ctx, call, request)  # 6
        if ctx.lookup.answer is not None:
            await services.finish(ctx, 200, None, None)
            return replay(ctx, ctx.lookup.answer)
        body = upstream_body(ctx, call, raw, max_tokens, salted=pool.settings.send_cache_salt)
        path = _ENDPOINTS[endpoint][1]
        ctx.upstream_started_ns = time.time_ns()
        reply = await until_disconnected(request, pool.send(path, body, ctx.upstream_headers()))  # 7
        ctx.worker = reply.worker.url
        return await relay_reply(  # 8, 9
            ctx,
            reply,
            max_response_bytes=services.settings.limits.max_response_bytes,
            finish=services.finish,
            cache_max_bytes=ctx.lookup.max_bytes or 0,
            redactor=redactor_for(services.pii, ctx, output=True),
        )
    except ApiError as error:
        error.headers.update(ctx.response_headers())
        await services.finish(ctx, error.status_code, error.code, None)
        raise


async def handle_models(services: Services, request: Request) -> Response:
    ctx = RequestContext.begin(request, "models", services.tracing)
    try:
        with ctx.step("authenticate"):
            principal = await authenticate(services, request)
        ctx.principal = principal
        with ctx.step("authorize"):
            authorize(services, ctx, principal, None)
        policy = services.policies.current
        names = visible_models(policy, principal.claims, services.router.model_names())
    except ApiError as error:
        error.headers["x-request-id"] = ctx.request_id
        await services.finish(ctx, error.status_code, error.code, None)
        raise
    await services.finish(ctx, 200, None, None)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "warden"} for name in names]
    return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": ctx.request_id})


async def read_openai_request(
    request: Request, endpoint: str, limits: LimitsSettings
) -> tuple[OpenAIRequest, dict[str, Any]]:
    """Edge checks: size cap, JSON, field types, message count and length. Nothing else has run yet."""
    raw = await read_json(request, limits.max_body_bytes)
    call = parse_model(_ENDPOINTS[endpoint][0], raw)
    if isinstance(call, ChatCompletionRequest):
        if len(call.messages) > limits.max_messages:
            raise InvalidRequest(
                f"at most {limits.max_messages} messages per request",
                code="too_many_messages",
                param="messages",
            )
        if any(m.text_length() > limits.max_message_chars for m in call.messages):
            raise InvalidRequest(
                f"a message exceeds {limits.max_message_chars} characters",
                code="message_too_long",
                param="messages",
            )
    elif call.prompt_length() > limits.max_message_chars:
        raise InvalidRequest(
            f"the prompt exceeds {limits.max_message_chars} characters",
            code="message_too_long",
            param="prompt",
        )
    return call, raw


async def authenticate(services: Services, request: Request) -> Principal:
    return await services.authenticator.authenticate(request.headers.get("authorization"))


def authorize(
    services: Services, ctx: RequestContext, principal: Principal, call: OpenAIRequest | None
) -> Decision:
    """The policy decision for this caller and request; a denial is a 403 naming what was refused.

    The decision is kept on the context either way, so that the audit record names its rule."""
    endpoint = ctx.endpoint
    facts = RequestFacts(endpoint=endpoint)
    if call is not None:
        facts = RequestFacts(
            endpoint=endpoint,
            model=call.model,
            max_tokens=call.requested_max_tokens(),
            temperature=call.temperature,
            top_p=call.top_p,
            n=call.n,
            stream=call.stream,
        )
    decision = ctx.decision = decide(services.policies.current, principal.claims, facts)
    if not decision.allowed:
        param = "max_tokens" if decision.code == "max_tokens_exceeded" else None
        raise PermissionDenied(_DENIALS.get(decision.code), code=decision.code, param=param)
    return decision


def effective_max_tokens(ctx: RequestContext, call: OpenAIRequest) -> int | None:
    """The client's max_tokens, or the role's cap when absent (16 for completions, its API default)."""
    requested = call.requested_max_tokens()
    cap = ctx.decision.max_tokens if ctx.decision is not None else None
    if requested is not None or cap is None:
        return requested
    return min(cap, COMPLETIONS_DEFAULT_MAX_TOKENS) if ctx.endpoint == "completions" else cap


async def reserve_budget(
    services: Services, ctx: RequestContext, call: OpenAIRequest, max_tokens: int | None
) -> Reservation | None:
    """Reserve the most this request can use against the caller's and the tenant's budgets (429 if not)."""
    decision, principal = ctx.decision, ctx.principal
    if decision is None or decision.settings is None or principal is None:
        return None
    tokens = tokens_to_reserve(estimate_prompt_tokens(call), max_tokens or 0, call.n)
    return await services.limiter.reserve(
        LimitScope.of(principal, decision), decision.settings.budget, tokens
    )


async def look_up_cache(
    services: Services, ctx: RequestContext, call: OpenAIRequest, request: Request
) -> Lookup:
    """A hit, a miss (this request computes and stores) or a bypass, scoped to the caller's identity."""
    decision, principal = ctx.decision, ctx.principal
    if decision is None or decision.settings is None or principal is None:
        return Lookup("bypass", reason="disabled")
    return await services.cache.lookup(
        CacheScope.of(principal, decision),
        decision.settings.cache,
        ctx.endpoint,
        call,
        cache_control=request.headers.get("cache-control"),
    )


def upstream_body(
    ctx: RequestContext, call: OpenAIRequest, raw: dict[str, Any], max_tokens: int | None, *, salted: bool
) -> bytes:
    """The JSON sent to the worker: the client's fields, the enforced cap, usage, the tenant's salt."""
    if max_tokens is not None and call.requested_max_tokens() is None:
        raw["max_tokens"] = max_tokens
    if call.stream:
        # Usage settles the budget; the usage chunk is passed on only if the client asked for it.
        ctx.client_wants_usage = bool(call.stream_options and call.stream_options.include_usage)
        raw["stream_options"] = {"include_usage": True}
    if salted and ctx.principal is not None:
        raw["cache_salt"] = prefix_cache_salt(ctx.principal, ctx.decision.tenant if ctx.decision else None)
    return json.dumps(raw, separators=(",", ":")).encode()


def prefix_cache_salt(principal: Principal, tenant: str | None) -> str:
    """Workers share prefix-cache blocks only within one salt: one per tenant, else one per subject."""
    scope = (
        f"tenant\0{principal.issuer}\0{tenant}"
        if tenant
        else f"subject\0{principal.issuer}\0{principal.subject}"
    )
    return hashlib.sha256(scope.encode()).hexdigest()[:32]


Handler = Callable[[Request], Awaitable[Response]]


def completion_route(services: Services, endpoint: str) -> Handler:
    async def route(request: Request) -> Response:
        return await handle_completion(services, request, endpoint)

    return route


def models_route(services: Services) -> Handler:
    async def route(request: Request) -> Response:
        return await handle_models(services, request)

    return route
