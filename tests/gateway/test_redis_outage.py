"""Redis going away and coming back, and reaching it over TLS with an ACL user."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from gateway.cache import CacheStatus, ResponseCache
from gateway.cache_entry import CachedAnswer
from gateway.cache_keys import CacheScope
from gateway.limits import Limiter, LimitScope
from gateway.pki import PkiPaths
from gateway.policy.schema import Budget, Cache
from gateway.redis_settings import CacheSettings, RedisSettings
from gateway.redis_state import RedisState
from gateway.tls import TlsFiles
from tests.support.redis_server import RedisServer

PASSWORD = "acl-password-9f2c7d1e5b"
CACHE = CacheSettings()  # per-process keys are enough inside one test
POLICY = Cache(enabled=True, ttl_s=60)
SCOPE = CacheScope("https://idp.test", "acme", "alice", ("engineer",), "v1")
CALLER = LimitScope("https://idp.test", "acme", "alice")
ENDPOINT = "chat.completions"


def request(seed: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hello"}], "seed": seed}


async def worker() -> CachedAnswer:
    await asyncio.sleep(0.001)
    return CachedAnswer("application/json", body=b'{"choices": []}')


def quick_recovery(url: str, **extra: Any) -> RedisSettings:
    return RedisSettings(url=SecretStr(url), recovery_initial_s=0.05, recovery_max_s=0.2, **extra)


async def until_available(state: RedisState, timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while not state.available:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("redis did not come back")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def state_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.redis_state"]


@dataclass
class Load:
    """Callers that reserve, ask the cache (or the worker), settle; every outcome recorded by phase."""

    state: RedisState
    phase: str = "before"
    records: list[tuple[str, str, str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self, number: int, cache: ResponseCache, limiter: Limiter) -> None:
        budget = Budget(requests_per_minute=1_000_000, tokens_per_minute=100_000_000)
        count = 0
        while not self.stop.is_set():
            started, phase = time.monotonic(), self.phase
            try:
                reservation = await limiter.reserve(CALLER, budget, 200)
                _, status = await cache.get_or_compute(SCOPE, POLICY, ENDPOINT, request(count % 4), worker)
                await limiter.settle(reservation, 120)
            except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                self.failures.append(type(exc).__name__)
            else:
                # A call that spans a change of phase belongs to neither: it saw both states.
                within = phase if phase == self.phase else "between"
                self.records.append((within, reservation.backend, status, time.monotonic() - started))
            count += 1
            await asyncio.sleep(0.002 + number * 0.0001)

    def seen(self, phase: str, index: int) -> set[str]:
        return {str(record[index]) for record in self.records if record[0] == phase}


@pytest.mark.slow
def test_redis_killed_under_load_fails_no_call_and_sharing_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.redis_state")
    server = RedisServer(tmp_path / "redis").start()

    async def main() -> tuple[Load, float, int]:
        state = RedisState(quick_recovery(server.url))
        await state.start()
        cache, limiter = ResponseCache(state, CACHE), Limiter(state)
        load = Load(state)
        callers = [asyncio.create_task(load.caller(n, cache, limiter)) for n in range(16)]
        await asyncio.sleep(0.3)
        load.phase = "outage"
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.5)
        load.phase = "restart"
        await asyncio.to_thread(server.start)
        recovered_in = await until_available(state)
        load.phase = "after"
        await asyncio.sleep(0.3)
        load.stop.set()
        await asyncio.gather(*callers)
        await limiter.reserve(CALLER, Budget(tokens_per_day=1_000), 10)  # a bucket that lasts
        shared = [key async for key in state.client.scan_iter(match=state.key("rl", "*"))]
        await state.close()
        return load, recovered_in, len(shared)

    try:
        load, recovered_in, shared_keys = asyncio.run(main())
    finally:
        server.stop()
    assert load.failures == []
    assert load.seen("before", 1) == {"redis"} and "hit" in load.seen("before", 2)
    # While Redis was dead: limits in process, the cache bypassed, and nobody waited on Redis.
    assert "local" in load.seen("outage", 1) and "bypass" in load.seen("outage", 2)
    assert max(r[3] for r in load.records if r[0] == "outage") < 0.5
    # Back by itself: shared limits and caching again (the restarted Redis came back empty).
    assert load.seen("after", 1) == {"redis"} and "hit" in load.seen("after", 2)
    assert shared_keys == 1 and recovered_in < 5.0
    assert state_changes(caplog) == [
        "redis connected",
        "redis unavailable: cache bypassed, limits enforced per replica",
        "redis available again",
    ]


@pytest.mark.slow
def test_a_hung_redis_costs_one_timeout_then_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()

    async def main() -> tuple[float, float, set[str], str]:
        state = RedisState(quick_recovery(server.url, command_timeout_s=0.2))
        await state.start()
        cache, limiter = ResponseCache(state, CACHE), Limiter(state)
        budget = Budget(requests_per_minute=1_000)

        async def call(seed: int) -> str:
            reservation = await limiter.reserve(CALLER, budget, 10)
            _, status = await cache.get_or_compute(SCOPE, POLICY, ENDPOINT, request(seed), worker)
            return f"{reservation.backend}/{status}"

        await call(0)
        server.pause()
        started = time.monotonic()
        await asyncio.gather(*(call(n) for n in range(20)))  # in flight when it hangs: one timeout each
        first = time.monotonic() - started
        started = time.monotonic()
        later = set(await asyncio.gather(*(call(n) for n in range(20))))  # Redis known down: no waiting
        second = time.monotonic() - started
        server.resume()
        await until_available(state)
        after = await call(0)
        await state.close()
        return first, second, later, after

    try:
        first, second, later, after = asyncio.run(main())
    finally:
        server.resume()
        server.stop()
    assert first < 0.6
    assert second < 0.1
    assert later == {"local/bypass"}
    assert after == "redis/hit"  # a hung server keeps its data: the entry from before the hang serves again


def test_the_fallback_limiter_is_never_wide_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")  # its port is chosen, nothing listens yet

    async def main() -> tuple[int, str, str, bool, str, int]:
        state = RedisState(quick_recovery(server.url))
        await state.start()
        limiter = Limiter(state)
        budget = Budget(requests_per_minute=5)
        admitted = 0
        refusal = None
        for _ in range(8):
            try:
                reservation = await limiter.reserve(CALLER, budget, 1)
            except Exception as exc:  # noqa: BLE001 - the refusal is what is checked below
                refusal = exc
            else:
                admitted += 1
                backend = reservation.backend
        await asyncio.to_thread(server.start)
        await until_available(state)
        after = await limiter.reserve(CALLER, budget, 1)
        await state.close()
        code = getattr(refusal, "code", "")
        return admitted, backend, code, state.available, after.backend, state.outages

    try:
        admitted, backend, code, available, after, outages = asyncio.run(main())
    finally:
        server.stop()
    assert (admitted, backend, code) == (5, "local", "requests_per_minute_exceeded")
    assert (available, after, outages) == (True, "redis", 1)
    assert len(state_changes(caplog)) == 2  # one line down (at start), one line up: not one per request


@dataclass(frozen=True)
class TlsCase:
    name: str
    scheme: str = "rediss"
    ca: str = "ours"  # ours | foreign | system
    username: str | None = "warden"
    password: str | None = PASSWORD
    works: bool = True


TLS_CASES = [
    TlsCase("verified-acl-user"),
    TlsCase("wrong-password", password="not-the-password-at-all", works=False),
    TlsCase("foreign-ca", ca="foreign", works=False),
    TlsCase("system-store-only", ca="system", works=False),
    TlsCase("plaintext-to-tls-port", scheme="redis", ca="none", works=False),
    TlsCase("no-credentials", username=None, password=None, works=False),
]


@pytest.mark.parametrize("case", TLS_CASES, ids=[c.name for c in TLS_CASES])
def test_rediss_with_our_ca_and_an_acl_user(
    tmp_path: Path, pki: PkiPaths, foreign_pki: PkiPaths, caplog: pytest.LogCaptureFixture, case: TlsCase
) -> None:
    caplog.set_level(logging.DEBUG)
    files = TlsFiles(ca=pki.ca_cert, cert=pki.worker_cert, key=pki.worker_key)
    server = RedisServer(tmp_path / "redis", tls=files, users={"warden": PASSWORD}).start()
    ca = {"ours": pki.ca_cert, "foreign": foreign_pki.ca_cert}.get(case.ca)
    settings = RedisSettings(
        url=SecretStr(f"{case.scheme}://localhost:{server.port}/0"),
        ca=ca,
        username=SecretStr(case.username) if case.username else None,
        password=SecretStr(case.password) if case.password else None,
        command_timeout_s=0.5,
    )

    async def main() -> tuple[bool, list[CacheStatus]]:
        state = RedisState(settings)
        await state.start()
        cache = ResponseCache(state, CACHE)
        statuses = [
            (await cache.get_or_compute(SCOPE, POLICY, ENDPOINT, request(1), worker))[1] for _ in range(2)
        ]
        available = state.available
        await state.close()
        return available, statuses

    try:
        available, statuses = asyncio.run(main())
    finally:
        server.stop()
    assert available is case.works
    assert statuses == (["miss", "hit"] if case.works else ["bypass", "bypass"])
    assert not [r for r in caplog.records if PASSWORD in r.getMessage() or PASSWORD in str(r.__dict__)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "http://127.0.0.1:6379"}, "redis://, rediss:// or unix://"),
        ({"url": "rediss://h:6379/0?ssl_cert_reqs=none"}, "query options are not supported"),
        ({"url": "redis://h:6379/0", "ca": "ca.pem"}, "only to a rediss:// URL"),
        ({"url": "rediss://h:6379/0", "cert": "c.pem"}, "together"),
        ({"username": "warden"}, "needs a password"),
        ({"recovery_initial_s": 2, "recovery_max_s": 1}, "at least recovery_initial_s"),
    ],
)
def test_redis_settings_refuse_what_would_be_ignored_or_unsafe(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisSettings.model_validate(fields)


def test_the_url_and_credentials_stay_out_of_reprs() -> None:
    settings = RedisSettings(
        url=SecretStr(f"redis://warden:{PASSWORD}@h:6379/0"), password=SecretStr(PASSWORD)
    )
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
