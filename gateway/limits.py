"""Rate limits and token budgets: reserve before admission, settle after the answer.

``reserve`` charges ``tokens`` (the prompt plus every token the request may generate) and one
request against every bucket that applies (the caller's, within their tenant, and the tenant's)
in one atomic step, so concurrent requests can never together pass a budget. ``settle`` gives back
what the request did not use (or charges an overrun). A refusal is a 429 with ``Retry-After`` and
``x-ratelimit-*`` headers; an admitted request gets the same headers on ``Reservation.headers``.

While Redis is down the same buckets run in this process (degraded: per replica, scaled by
``redis.outage_limit_fraction``; never unlimited), and Redis is used again once it is back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.auth import Principal
from gateway.errors import RateLimited
from gateway.openai_api import ChatCompletionRequest, OpenAIRequest
from gateway.policy.rbac import Decision
from gateway.policy.schema import Budget, TenantBudget
from gateway.rate_buckets import Bucket, Kind, LocalBuckets, Outcome, RedisBuckets
from gateway.redis_state import REDIS_ERRORS, RedisState

MINUTE_MS, DAY_MS = 60_000, 86_400_000
# Chat templates add a few tokens around every message and before the answer.
_TEMPLATE_TOKENS_PER_MESSAGE, _TEMPLATE_TOKENS = 8, 16


@dataclass(frozen=True, slots=True)
class LimitScope:
    """Whose buckets a request draws on, from the authenticated principal and the decision."""

    issuer: str
    tenant: str | None
    subject: str

    @classmethod
    def of(cls, principal: Principal, decision: Decision) -> LimitScope:
        return cls(principal.issuer, decision.tenant, principal.subject)


@dataclass(slots=True)
class Reservation:
    tokens: int
    backend: Literal["redis", "local", "none"]
    token_buckets: tuple[Bucket, ...]
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, for the response
    settled: bool = False


@dataclass(slots=True)
class LimiterStats:
    admitted: int = 0
    refused: int = 0
    local: int = 0  # reservations made in process while Redis was down


class Limiter:
    def __init__(self, redis: RedisState) -> None:
        self.redis = redis
        self.shared = RedisBuckets(redis.client)
        self.local = LocalBuckets(redis.settings.outage_limit_fraction)
        self.stats = LimiterStats()

    async def reserve(self, scope: LimitScope, budget: Budget, tokens: int) -> Reservation:
        """Admit one request costing ``tokens`` or raise ``RateLimited``; nothing is charged on refusal."""
        buckets = self.buckets(scope, budget)
        if not buckets:
            return Reservation(tokens, "none", ())
        for bucket in buckets:
            if bucket.kind == "tokens" and tokens > bucket.limit:
                self.stats.refused += 1
                raise RateLimited(
                    f"This request may use {tokens} tokens, more than the {bucket.limit} {bucket.label}; "
                    "lower max_tokens or shorten the prompt.",
                    code="request_exceeds_token_budget",
                )
        costs = [tokens if b.kind == "tokens" else 1 for b in buckets]
        outcome, backend, used = await self._acquire(buckets, costs)
        headers = _headers(used, outcome)
        if not outcome.allowed:
            self.stats.refused += 1
            bucket = used[outcome.worst]
            seconds = max(1, math.ceil(outcome.retry_after_ms / 1000))
            headers["retry-after"] = str(seconds)
            headers["retry-after-ms"] = str(max(1, outcome.retry_after_ms))
            raise RateLimited(
                f"Rate limit reached: {bucket.label}. Retry after {seconds} s.",
                code=bucket.code,
                headers=headers,
            )
        self.stats.admitted += 1
        token_buckets = tuple(b for b in used if b.kind == "tokens")
        return Reservation(tokens, backend, token_buckets, headers)

    async def settle(self, reservation: Reservation, used: int | None) -> None:
        """Charge what the request really used: the rest of the reservation is refunded.

        ``used=None`` (usage unknown, e.g. the client left mid-stream) keeps the whole reservation.
        Only the first call acts.
        """
        if reservation.settled:
            return
        reservation.settled = True
        if used is None or used == reservation.tokens or not reservation.token_buckets:
            return
        deltas = [used - reservation.tokens] * len(reservation.token_buckets)
        if reservation.backend == "local":
            await self.local.adjust(reservation.token_buckets, deltas)
            return
        if not self.redis.available:
            return  # the shared buckets cannot be reached; a lost refund errs on the safe side
        try:
            await self.shared.adjust(reservation.token_buckets, deltas)
        except REDIS_ERRORS as exc:
            self.redis.failed(exc)

    def buckets(self, scope: LimitScope, budget: Budget) -> list[Bucket]:
        """The buckets that apply: the caller's (within the tenant), then the tenant's."""
        if not _limited(budget) and not (scope.tenant and _limited(budget.tenant)):
            return []  # the common unlimited role: no key names to hash on every request
        tenant_part = _digest("tenant", scope.issuer, scope.tenant) if scope.tenant else None
        subject_part = _digest("subject", scope.issuer, scope.tenant or "", scope.subject)
        # One hash tag per call so every key of it lands in one Redis Cluster slot.
        tag = "{" + (tenant_part or subject_part) + "}"
        result = _for(self.redis.key("rl", tag, "s", subject_part), budget, "for you")
        if tenant_part is not None:
            result += _for(self.redis.key("rl", tag, "t"), budget.tenant, "for your tenant")
        return result

    async def _acquire(
        self, buckets: list[Bucket], costs: list[int]
    ) -> tuple[Outcome, Literal["redis", "local"], Sequence[Bucket]]:
        if self.redis.available:
            try:
                return await self.shared.acquire(buckets, costs), "redis", buckets
            except REDIS_ERRORS as exc:
                self.redis.failed(exc)
        self.stats.local += 1
        scaled = [self.local.scaled(b) for b in buckets]
        return await self.local.acquire(scaled, costs), "local", scaled


def _for(prefix: str, limits: Budget | TenantBudget, whose: str) -> list[Bucket]:
    specs: tuple[tuple[str, int | None, int, Kind, str], ...] = (
        ("rpm", limits.requests_per_minute, MINUTE_MS, "requests", "requests per minute"),
        ("tpm", limits.tokens_per_minute, MINUTE_MS, "tokens", "tokens per minute"),
        ("tpd", limits.tokens_per_day, DAY_MS, "tokens", "tokens per day"),
    )
    return [
        Bucket(
            f"{prefix}:{suffix}", limit, period, kind, f"{name} {whose}", name.replace(" ", "_") + "_exceeded"
        )
        for suffix, limit, period, kind, name in specs
        if limit is not None
    ]


def _limited(limits: Budget | TenantBudget) -> bool:
    values = (limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day)
    return any(value is not None for value in values)


def _digest(*parts: str) -> str:
    # Key names carry no readable tenant or subject.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _headers(buckets: Sequence[Bucket], outcome: Outcome) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, for the tightest bucket of each kind."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        pairs = [(b, s) for b, s in zip(buckets, outcome.states, strict=True) if b.kind == kind]
        if not pairs:
            continue
        bucket, state = min(pairs, key=lambda pair: (pair[1].remaining, -pair[1].reset_ms))
        headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration(state.reset_ms)
    return headers


def duration(ms: int) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: 20ms, 1.5s, 6m0s, 2h3m4s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def estimate_prompt_tokens(request: OpenAIRequest) -> int:
    """An upper bound on the prompt's tokens without a tokenizer: one per UTF-8 byte, plus the template.

    Byte-level and byte-fallback tokenizers never spend more than one token per byte of text, so
    reservations built on this cannot be passed by a prompt; ``settle`` refunds the difference.
    """
    if isinstance(request, ChatCompletionRequest):
        text = 0
        for message in request.messages:
            content = message.content
            parts = [content] if isinstance(content, str) else [p.text for p in content or []]
            text += sum(len(p.encode()) for p in parts) + _TEMPLATE_TOKENS_PER_MESSAGE
        return text + _TEMPLATE_TOKENS
    prompt = request.prompt
    if isinstance(prompt, str):
        return len(prompt.encode()) + _TEMPLATE_TOKENS
    if prompt and isinstance(prompt[0], int):
        return len(prompt)
    return sum(len(p.encode()) for p in prompt if isinstance(p, str)) + _TEMPLATE_TOKENS


def tokens_to_reserve(prompt_tokens: int, max_tokens: int, n: int = 1) -> int:
    """What a request may consume at most: its prompt once, and up to ``max_tokens`` per choice."""
    return prompt_tokens + max_tokens * n
