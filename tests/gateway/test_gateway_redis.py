"""Cache and limits through the running gateway, against a real redis-server and fake workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.pki import PkiPaths
from tests.support.fake_worker import start_fake_worker
from tests.support.gateway import start_gateway, upstream
from tests.support.identity import TestIssuer
from tests.support.redis_server import RedisServer
from tests.support.worker import gateway_ssl

POLICY = """
version: 1
tenant: {claim: org, required: true}
bindings:
  - {name: engineers, when: {claim: groups, contains: ml-engineers}, roles: [engineer]}
  - {name: trial, when: {claim: groups, contains: trial}, roles: [trial]}
roles:
  engineer:
    models: ["fake-*"]
    max_tokens: 64
    cache: {enabled: true, ttl_s: 60}
  trial:
    models: ["fake-*"]
    max_tokens: 64
    budget: {requests_per_minute: 3}
"""


@dataclass
class Stack:
    url: str
    issuer: TestIssuer
    redis: RedisServer
    worker_url: str
    context: Any

    def headers(self, groups: list[str], org: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {self.issuer.mint(groups=groups, org=org)}"}

    def upstream_calls(self) -> int:
        stats = httpx.get(f"{self.worker_url}/stats", verify=self.context, timeout=5).json()
        return int(stats["requests"])


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }


@pytest.fixture(scope="module")
def stack(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("gateway-redis")
    redis = RedisServer(root / "redis").start()
    issuer = TestIssuer(root / "idp")
    (root / "policies").mkdir()
    (root / "policies" / "main.yaml").write_text(POLICY)
    worker, worker_url = start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, root, name="w")
    context = gateway_ssl(pki)
    worker.wait_until(lambda: httpx.get(f"{worker_url}/health", verify=context, timeout=1).status_code == 200)
    gateway, url = start_gateway(
        root,
        issuers=[issuer.settings()],
        policy_dir=root / "policies",
        upstreams=[upstream(pki, "fake", ["fake-model"], [worker_url])],
        redis={"url": redis.url, "recovery_max_s": 0.5, "command_timeout_s": 2.0},
    )
    yield Stack(url, issuer, redis, worker_url, context)
    gateway.stop()
    worker.stop()
    redis.stop()
    assert "Traceback" not in gateway.logs()


def post(stack: Stack, body: dict[str, Any], groups: list[str], org: str = "acme") -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/chat/completions", json=body, headers=stack.headers(groups, org), timeout=10
    )


def test_a_repeated_deterministic_request_is_served_from_the_cache(stack: Stack) -> None:
    body = chat("cache me")
    first = post(stack, body, ["ml-engineers"])
    calls = stack.upstream_calls()
    second = post(stack, body, ["ml-engineers"])
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json() == first.json() and stack.upstream_calls() == calls
    sampled = post(stack, chat("cache me", temperature=0.7), ["ml-engineers"])
    assert sampled.headers["x-cache"] == "bypass"


def test_tenants_never_share_cached_answers(stack: Stack) -> None:
    body = chat("same prompt, two tenants")
    acme = post(stack, body, ["ml-engineers"], org="acme")
    globex = post(stack, body, ["ml-engineers"], org="globex")
    assert acme.headers["x-cache"] == "miss" and globex.headers["x-cache"] == "miss"
    assert acme.json()["echo"]["body"]["cache_salt"] != globex.json()["echo"]["body"]["cache_salt"]


def test_a_cached_stream_is_replayed_as_a_stream(stack: Stack) -> None:
    body = chat("stream me", stream=True)

    def events() -> tuple[str, list[str]]:
        with httpx.stream(
            "POST", f"{stack.url}/v1/chat/completions", json=body, headers=stack.headers(["ml-engineers"]),
            timeout=10,
        ) as response:  # fmt: skip
            return response.headers["x-cache"], [line for line in response.iter_lines() if line]

    first_status, first = events()
    second_status, second = events()
    assert (first_status, second_status) == ("miss", "hit")
    assert second == first and second[-1] == "data: [DONE]"


def test_client_no_cache_bypasses(stack: Stack) -> None:
    body = chat("fresh please")
    post(stack, body, ["ml-engineers"])
    fresh = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=body,
        headers={**stack.headers(["ml-engineers"]), "cache-control": "no-cache"},
        timeout=10,
    )
    assert fresh.headers["x-cache"] == "bypass"


def test_identical_concurrent_misses_make_one_upstream_call(stack: Stack) -> None:
    body = chat("fifty at once")
    headers = stack.headers(["ml-engineers"])
    before = stack.upstream_calls()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=20) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
                    for _ in range(50)
                )
            )

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {200}
    assert stack.upstream_calls() - before == 1
    assert sorted(r.headers["x-cache"] for r in responses).count("miss") == 1


def test_the_rate_limit_answers_429_with_headers(stack: Stack) -> None:
    statuses = [post(stack, chat(f"limited {i}"), ["trial"], org="tiny").status_code for i in range(3)]
    refused = post(stack, chat("one too many"), ["trial"], org="tiny")
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.slow
def test_redis_killed_under_load_fails_no_request_and_recovers(stack: Stack) -> None:
    headers = stack.headers(["ml-engineers"])

    async def load(seconds: float) -> tuple[list[int], set[str]]:
        statuses: list[int] = []
        cache_states: set[str] = set()
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=10) as client:

            async def one(worker: int) -> None:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    response = await client.post(
                        f"{stack.url}/v1/chat/completions",
                        json=chat(f"outage {worker} {n % 3}"),
                        headers=headers,
                    )
                    statuses.append(response.status_code)
                    cache_states.add(response.headers.get("x-cache", "?"))

            await asyncio.gather(*(one(i) for i in range(6)))
        return statuses, cache_states

    async def scenario() -> tuple[list[int], set[str], list[int], set[str]]:
        traffic = asyncio.create_task(load(2.0))
        await asyncio.sleep(0.5)
        stack.redis.kill()
        during, during_states = await traffic
        await asyncio.to_thread(stack.redis.start)
        await asyncio.sleep(1.0)  # the gateway probes again within recovery_max_s
        after, after_states = await load(1.0)
        return during, during_states, after, after_states

    during, during_states, after, after_states = asyncio.run(scenario())
    assert during and set(during) == {200} and "bypass" in during_states
    assert set(after) == {200} and "hit" in after_states


def test_metrics_count_cache_outcomes_and_refusals(stack: Stack) -> None:
    def scrape() -> dict[str, float]:
        text = httpx.get(f"{stack.url}/metrics", timeout=5).text
        pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        return {name: float(value) for name, value in pairs}

    before = scrape()
    post(stack, chat("metrics probe"), ["ml-engineers"])
    post(stack, chat("metrics probe"), ["ml-engineers"])
    for i in range(4):
        post(stack, chat(f"metrics refusal {i}"), ["trial"], org="metrics-tenant")
    after = scrape()
    hits = 'warden_gateway_cache_requests_total{result="hit"}'
    misses = 'warden_gateway_cache_requests_total{result="miss"}'
    assert after[hits] - before[hits] == 1 and after[misses] - before[misses] == 1
    assert after["warden_gateway_redis_up"] == 1
    refused = 'warden_gateway_budget_decisions_total{result="refused"}'
    assert after[refused] - before[refused] == 1


def test_readyz_reports_redis(stack: Stack) -> None:
    body = httpx.get(f"{stack.url}/readyz", timeout=5).json()
    assert body["redis"] == "up" and body["audit"] == "disabled"
