"""Rate limits and token budgets against a real redis-server, and the in-process fallback alike."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from gateway.errors import RateLimited
from gateway.limits import Limiter, LimitScope, duration, estimate_prompt_tokens, tokens_to_reserve
from gateway.openai_api import ChatCompletionRequest, CompletionRequest
from gateway.policy.schema import Budget, TenantBudget
from gateway.redis_settings import RedisSettings
from gateway.redis_state import RedisState
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

T = TypeVar("T")
BACKENDS = ["redis", "local"]
ALICE = LimitScope("https://idp.test", "acme", "alice")
BOB = LimitScope("https://idp.test", "acme", "bob")
CAROL = LimitScope("https://idp.test", "globex", "carol")


@asynccontextmanager
async def limiters(
    url: str, backend: str, replicas: int = 1, fraction: float = 1.0
) -> AsyncIterator[list[Limiter]]:
    """``replicas`` limiters sharing one Redis; for "local", pointed at a port where no Redis listens."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    if backend == "local":
        url = f"redis://127.0.0.1:{free_port()}/0"
    async with AsyncExitStack() as stack:
        result = []
        for _ in range(replicas):
            # Generous command and connect timeouts: these tests are about shared atomic buckets, and
            # a slow command, or one of the many connections a burst opens at once, on a loaded
            # machine must not turn them into per-replica fallback tests.
            state = RedisState(
                RedisSettings(
                    url=SecretStr(url),
                    key_prefix=prefix,
                    outage_limit_fraction=fraction,
                    command_timeout_s=5.0,
                    connect_timeout_s=5.0,
                )
            )
            await state.start()
            assert state.available is (backend == "redis")
            stack.push_async_callback(state.close)
            result.append(Limiter(state))
        yield result


def run(url: str, backend: str, scenario: Callable[[Limiter], Awaitable[T]]) -> T:
    async def main() -> T:
        async with limiters(url, backend) as (limiter,):
            return await scenario(limiter)

    return asyncio.run(main())


async def admitted(limiter: Limiter, scope: LimitScope, budget: Budget, tokens: int) -> bool:
    try:
        await limiter.reserve(scope, budget, tokens)
    except RateLimited:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_reservations_never_pass_the_budget(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(tokens_per_day=10_000)
    costs = [random.Random(i).randint(100, 400) for i in range(100)]

    async def main() -> tuple[list[int], int]:
        replicas = 4 if backend == "redis" else 1
        async with limiters(redis_server.url, backend, replicas) as group:
            results = await asyncio.gather(
                *(admitted(group[i % replicas], ALICE, budget, cost) for i, cost in enumerate(costs)),
            )
            taken = [cost for cost, ok in zip(costs, results, strict=True) if ok]
            refused = sum(group_member.stats.refused for group_member in group)
            return taken, refused

    taken, refused = asyncio.run(main())
    assert sum(taken) <= 10_000
    assert sum(taken) > 10_000 - max(costs)  # the budget was used, not refused wholesale
    assert refused == len(costs) - len(taken) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_settling_refunds_the_unused_part(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(tokens_per_day=10_000)

    async def scenario(limiter: Limiter) -> list[bool]:
        steps = []
        reservation = await limiter.reserve(ALICE, budget, 8_000)
        steps.append(await admitted(limiter, ALICE, budget, 3_000))  # 8,000 + 3,000 > 10,000
        await limiter.settle(reservation, 1_000)
        await limiter.settle(reservation, 0)  # only the first settle counts
        steps.append(await admitted(limiter, ALICE, budget, 9_000))  # 1,000 used: 9,000 free
        steps.append(await admitted(limiter, ALICE, budget, 1))
        return steps

    assert run(redis_server.url, backend, scenario) == [False, True, False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_usage_over_the_reservation_is_charged(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(tokens_per_day=1_000)

    async def scenario(limiter: Limiter) -> list[bool]:
        reservation = await limiter.reserve(ALICE, budget, 100)
        await limiter.settle(reservation, 700)
        return [await admitted(limiter, ALICE, budget, 301), await admitted(limiter, ALICE, budget, 290)]

    assert run(redis_server.url, backend, scenario) == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_gcra_spaces_requests_after_the_burst(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(requests_per_minute=120)  # one request every 500 ms, bursts of 120

    async def scenario(limiter: Limiter) -> tuple[int, int, bool, bool, float]:
        burst = 0
        while await admitted(limiter, ALICE, budget, 1):
            burst += 1
        with pytest.raises(RateLimited) as refused:
            await limiter.reserve(ALICE, budget, 1)
        wait_ms = int(refused.value.headers["retry-after-ms"])
        started = time.monotonic()
        early = await admitted(limiter, ALICE, budget, 1) if wait_ms > 100 else False
        await asyncio.sleep(wait_ms / 1000 + 0.02)
        on_time = await admitted(limiter, ALICE, budget, 1)
        spaced = not await admitted(limiter, ALICE, budget, 1)
        return burst, wait_ms, early, on_time and spaced, time.monotonic() - started

    burst, wait_ms, early, spaced, elapsed = run(redis_server.url, backend, scenario)
    assert burst == 120
    assert 0 < wait_ms <= 500
    assert early is False
    assert spaced is True
    assert elapsed < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_tenant_budget_is_shared_and_charged_all_or_nothing(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(tokens_per_minute=800, tenant=TenantBudget(tokens_per_minute=1_000))

    async def scenario(limiter: Limiter) -> tuple[list[bool], str, str]:
        steps = [await admitted(limiter, ALICE, budget, 700)]
        with pytest.raises(RateLimited) as refused:
            await limiter.reserve(BOB, budget, 400)  # bob's own 800 would allow it, the tenant's not
        steps.append(await admitted(limiter, BOB, budget, 300))  # the refusal charged bob nothing
        steps.append(await admitted(limiter, BOB, budget, 1))  # the tenant is now full
        steps.append(await admitted(limiter, CAROL, budget, 800))  # another tenant is untouched
        return steps, refused.value.code, refused.value.message

    steps, code, message = run(redis_server.url, backend, scenario)
    assert steps == [True, True, False, True]
    assert code == "tokens_per_minute_exceeded"
    assert "tokens per minute for your tenant" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_headers_report_the_tightest_buckets(redis_server: RedisServer, backend: str) -> None:
    budget = Budget(
        requests_per_minute=10, tokens_per_minute=1_000, tenant=TenantBudget(tokens_per_day=50_000)
    )

    async def scenario(limiter: Limiter) -> tuple[dict[str, str], dict[str, str]]:
        reservation = await limiter.reserve(ALICE, budget, 100)
        for _ in range(9):
            await limiter.reserve(ALICE, budget, 1)
        with pytest.raises(RateLimited) as refused:
            await limiter.reserve(ALICE, budget, 1)
        return reservation.headers, refused.value.headers

    admitted_headers, refused_headers = run(redis_server.url, backend, scenario)
    assert admitted_headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",  # 900 left of 1,000 per minute is tighter than 49,900 per day
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    assert refused_headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused_headers["retry-after"]) <= 6
    assert 0 < int(refused_headers["retry-after-ms"]) <= 6_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_larger_than_a_budget_is_refused_without_charge(
    redis_server: RedisServer, backend: str
) -> None:
    budget = Budget(requests_per_minute=1, tokens_per_minute=1_000)

    async def scenario(limiter: Limiter) -> tuple[str, bool]:
        with pytest.raises(RateLimited) as refused:
            await limiter.reserve(ALICE, budget, 1_001)
        return refused.value.code, await admitted(limiter, ALICE, budget, 1_000)

    assert run(redis_server.url, backend, scenario) == ("request_exceeds_token_budget", True)


def test_no_limits_means_no_redis_call(redis_server: RedisServer) -> None:
    async def scenario(limiter: Limiter) -> tuple[str, dict[str, str]]:
        reservation = await limiter.reserve(ALICE, Budget(), 10**9)
        await limiter.settle(reservation, 5)
        return reservation.backend, reservation.headers

    assert run(redis_server.url, "local", scenario) == ("none", {})


def test_bucket_keys_carry_no_readable_tenant_or_subject(redis_server: RedisServer) -> None:
    async def scenario(limiter: Limiter) -> list[bytes]:
        budget = Budget(requests_per_minute=5, tenant=TenantBudget(tokens_per_day=100))
        await limiter.reserve(LimitScope("https://idp.test", "acme-corp", "alice@example.com"), budget, 10)
        return [key async for key in limiter.redis.client.scan_iter(match=limiter.redis.prefix + "*")]

    keys = run(redis_server.url, "redis", scenario)
    assert len(keys) == 2  # the caller's requests per minute, the tenant's tokens per day
    assert not [key for key in keys if b"acme" in key or b"alice" in key or b"example" in key]
    assert len({key.split(b"}")[0] for key in keys}) == 1  # one hash slot for both


@pytest.mark.parametrize(("backend", "fraction", "expected"), [("local", 0.25, 2), ("redis", 0.25, 10)])
def test_outage_fraction_scales_only_the_fallback_limits(
    redis_server: RedisServer, backend: str, fraction: float, expected: int
) -> None:
    budget = Budget(requests_per_minute=10)

    async def main() -> tuple[int, str]:
        async with limiters(redis_server.url, backend, fraction=fraction) as (limiter,):
            count = 0
            while await admitted(limiter, ALICE, budget, 1):
                count += 1
            with pytest.raises(RateLimited) as refused:
                await limiter.reserve(ALICE, budget, 1)
            return count, refused.value.headers["x-ratelimit-limit-requests"]

    assert asyncio.run(main()) == (expected, str(expected))


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (1_500, "1.5s"), (6_000, "6s"), (59_999, "60s"), (360_000, "6m0s"),
     (7_384_000, "2h3m4s")],
)  # fmt: skip
def test_reset_durations_read_like_openais(ms: int, text: str) -> None:
    assert duration(ms) == text


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (CompletionRequest(model="m", prompt="héllo"), 6 + 16),  # bytes, not characters
        (CompletionRequest(model="m", prompt=[1, 2, 3]), 3),  # token ids are exact
        (
            ChatCompletionRequest.model_validate(
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            ),
            26,
        ),
    ],
)
def test_prompt_token_estimate_is_an_upper_bound_in_bytes(call: Any, expected: int) -> None:
    assert estimate_prompt_tokens(call) == expected
    assert tokens_to_reserve(expected, 100, n=2) == expected + 200
