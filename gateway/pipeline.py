"""The request flow of an OpenAI call through the gateway, top to bottom, one small function per step.

``handle_completion`` fixes the order: edge checks → authenticate → authorize → (prompt guard,
budget and cache slot in here) → route to a worker → relay the answer → finish. Each step either
returns what the next one needs or raises an ``ApiError`` that the error handlers render.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, Principal
from gateway.bodies import parse_model, read_json
from gateway.errors import ApiError, InvalidRequest, NotFound, PermissionDenied
from gateway.openai_api import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.policy.rbac import Decision, RequestFacts, decide, visible_models
from gateway.policy.store import PolicyStore
from gateway.relay import relay_reply, until_disconnected
from gateway.request_context import RequestContext, finish_request
from gateway.settings import GatewaySettings, LimitsSettings
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


async def handle_completion(services: Services, request: Request, endpoint: str) -> Response:
    ctx = RequestContext.begin(request, endpoint)
    try:
        call, raw = await read_openai_request(request, endpoint, services.settings.limits)  # 1
        ctx.model = call.model
        ctx.principal = await authenticate(services, request)  # 2
        ctx.decision = authorize(services, ctx.principal, endpoint, call)  # 3
        # 4 prompt guard · 5 token budget · 6 response cache: their steps slot in here.
        body = upstream_body(services, ctx, call, raw)
        path = _ENDPOINTS[endpoint][1]
        pool = services.router.pool_for(call.model)
        if pool is None:
            raise NotFound(f"The model '{call.model}' does not exist.", code="model_not_found")
        reply = await until_disconnected(request, pool.send(path, body, ctx.upstream_headers()))  # 7
        ctx.worker = reply.worker.url
        return await relay_reply(ctx, reply, services.settings.limits.max_response_bytes)  # 8, 9
    except ApiError as error:
        error.headers["x-request-id"] = ctx.request_id
        finish_request(ctx, error.status_code, error.code)
        raise


async def handle_models(services: Services, request: Request) -> Response:
    ctx = RequestContext.begin(request, "models")
    try:
        principal = await authenticate(services, request)
        ctx.principal = principal
        ctx.decision = authorize(services, principal, "models", None)
        policy = services.policies.current
        names = visible_models(policy, principal.claims, services.router.model_names())
    except ApiError as error:
        error.headers["x-request-id"] = ctx.request_id
        finish_request(ctx, error.status_code, error.code)
        raise
    finish_request(ctx, 200)
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
    services: Services, principal: Principal, endpoint: str, call: OpenAIRequest | None
) -> Decision:
    """The policy decision for this caller and request; a denial is a 403 naming what was refused."""
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
    decision = decide(services.policies.current, principal.claims, facts)
    if not decision.allowed:
        param = "max_tokens" if decision.code == "max_tokens_exceeded" else None
        raise PermissionDenied(_DENIALS.get(decision.code), code=decision.code, param=param)
    return decision


def upstream_body(services: Services, ctx: RequestContext, call: OpenAIRequest, raw: dict[str, Any]) -> bytes:
    """The JSON sent to the worker: the client's fields plus the enforced cap and the tenant's salt."""
    decision = ctx.decision
    if decision is not None and decision.max_tokens is not None and call.requested_max_tokens() is None:
        cap = decision.max_tokens
        raw["max_tokens"] = min(cap, COMPLETIONS_DEFAULT_MAX_TOKENS) if ctx.endpoint == "completions" else cap
    pool = services.router.pool_for(call.model)
    if pool is not None and pool.settings.send_cache_salt and ctx.principal is not None:
        raw["cache_salt"] = prefix_cache_salt(ctx.principal, decision.tenant if decision else None)
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
