"""Worker pools against real fake workers over mTLS: balancing, failover, circuit breaking, health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.cli import WORKER_KEEP_ALIVE_S
from gateway.errors import ServiceUnavailable, UpstreamError
from gateway.pki import PkiPaths
from gateway.settings import UpstreamSettings
from gateway.tls import TlsFiles, client_context
from gateway.upstream.breaker import CircuitState
from gateway.upstream.pool import WorkerPool
from tests.support.fake_worker import start_fake_worker
from tests.support.processes import ServiceProcess
from tests.support.worker import gateway_ssl

BODY = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = {"content-type": "application/json"}


def body(**extra: object) -> bytes:
    return json.dumps({"model": "fake-model", "messages": [], **extra}).encode()


def wait_ready(pki: PkiPaths, process: ServiceProcess, url: str) -> None:
    context = gateway_ssl(pki)
    process.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=1).status_code == 200, 20)


@pytest.fixture
def two_workers(pki: PkiPaths, logs_dir: Path) -> Iterator[list[tuple[ServiceProcess, str]]]:
    workers = [
        start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name=name) for name in "ab"
    ]
    for process, url in workers:
        wait_ready(pki, process, url)
    yield workers
    for process, _ in workers:
        process.stop()


def make_pool(pki: PkiPaths, urls: list[str], **overrides: object) -> WorkerPool:
    settings = UpstreamSettings.model_validate(
        {
            "name": "fake",
            "models": ["fake-model"],
            "workers": urls,
            "tls": {"ca": str(pki.ca_cert), "cert": str(pki.gateway_cert), "key": str(pki.gateway_key)},
            **overrides,
        }
    )
    return WorkerPool(settings)


async def served_by(pool: WorkerPool, payload: bytes = BODY) -> str:
    reply = await pool.send("/v1/chat/completions", payload, HEADERS)
    try:
        answer = json.loads(await reply.read(1 << 20))
    finally:
        await reply.aclose()
    assert reply.status_code == 200
    return str(answer["echo"]["worker"])


def test_requests_spread_over_workers_and_accounting_returns_to_zero(
    pki: PkiPaths, two_workers: list[tuple[ServiceProcess, str]]
) -> None:
    async def main() -> tuple[list[str], list[int]]:
        pool = make_pool(pki, [url for _, url in two_workers])
        try:
            served = await asyncio.gather(*(served_by(pool) for _ in range(20)))
            return served, [w.outstanding for w in pool.workers]
        finally:
            await pool.aclose()

    served, outstanding = asyncio.run(main())
    assert set(served) == {"a", "b"}
    assert outstanding == [0, 0]


def test_least_outstanding_and_cancelled_requests_release_their_worker(
    pki: PkiPaths, two_workers: list[tuple[ServiceProcess, str]]
) -> None:
    async def main() -> tuple[list[int], list[int]]:
        pool = make_pool(pki, [url for _, url in two_workers])
        try:
            slow = [asyncio.create_task(pool.send("/v1/chat/completions", body(user="slow"), HEADERS))]
            await asyncio.sleep(0.3)
            slow.append(asyncio.create_task(pool.send("/v1/chat/completions", body(user="slow"), HEADERS)))
            await asyncio.sleep(0.3)
            during = [w.outstanding for w in pool.workers]
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            return during, [w.outstanding for w in pool.workers]
        finally:
            await pool.aclose()

    during, after = asyncio.run(main())
    assert during == [1, 1]  # the second slow request went to the idle worker
    assert after == [0, 0]


def test_killed_worker_under_load_fails_over_with_no_error(
    pki: PkiPaths, two_workers: list[tuple[ServiceProcess, str]]
) -> None:
    (victim, _), _ = two_workers

    async def main() -> tuple[list[str], list[str], CircuitState]:
        pool = make_pool(pki, [url for _, url in two_workers], failure_threshold=1)
        loop = asyncio.get_running_loop()
        killed_at = loop.time() + 0.4
        deadline = killed_at + 0.6
        try:

            async def client() -> tuple[list[str], list[str]]:
                before: list[str] = []
                after: list[str] = []
                while loop.time() < deadline:
                    started = loop.time()
                    name = await served_by(pool)  # raises on any error
                    (before if started < killed_at else after).append(name)
                return before, after

            load = [asyncio.create_task(client()) for _ in range(8)]
            await asyncio.sleep(killed_at - loop.time())
            await asyncio.to_thread(victim.kill)
            results = await asyncio.gather(*load)
            before = [n for b, _ in results for n in b]
            after = [n for _, a in results for n in a]
            return before, after, pool.workers[0].breaker.state
        finally:
            await pool.aclose()

    before, after, state = asyncio.run(main())
    assert set(before) == {"a", "b"}
    assert len(after) > 8 and set(after[-8:]) == {"b"}  # every request answered; the survivor took over
    assert state is CircuitState.OPEN


def test_circuit_opens_then_recovers_through_a_half_open_trial(pki: PkiPaths, logs_dir: Path) -> None:
    a, url_a = start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name="a")
    b, url_b = start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name="b")
    port_a = int(url_a.rsplit(":", 1)[1])
    try:
        wait_ready(pki, a, url_a)
        wait_ready(pki, b, url_b)
        a.kill()

        async def outage(pool: WorkerPool) -> tuple[list[str], CircuitState]:
            served = [await served_by(pool) for _ in range(4)]
            return served, pool.workers[0].breaker.state

        async def main() -> tuple[list[str], CircuitState, list[str], CircuitState]:
            pool = make_pool(pki, [url_a, url_b], failure_threshold=1, open_cooldown_s=0.5)
            try:
                served, opened = await outage(pool)
                restarted, _ = start_fake_worker(
                    pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name="a2", port=port_a
                )
                try:
                    await asyncio.to_thread(wait_ready, pki, restarted, url_a)
                    await asyncio.sleep(0.6)  # past the cooldown: the next request is the trial
                    after = [await served_by(pool) for _ in range(6)]
                    return served, opened, after, pool.workers[0].breaker.state
                finally:
                    restarted.stop()
            finally:
                await pool.aclose()

        served, opened, after, closed = asyncio.run(main())
    finally:
        a.stop()
        b.stop()
    assert served == ["b"] * 4 and opened is CircuitState.OPEN
    assert "a2" in after and closed is CircuitState.CLOSED


def test_busy_and_failing_workers_map_to_clear_errors(
    pki: PkiPaths, two_workers: list[tuple[ServiceProcess, str]]
) -> None:
    async def main() -> tuple[ServiceUnavailable, UpstreamError, list[CircuitState]]:
        pool = make_pool(pki, [url for _, url in two_workers], failure_threshold=2)
        try:
            with pytest.raises(ServiceUnavailable) as busy:
                await pool.send("/v1/chat/completions", body(user="busy"), HEADERS)
            with pytest.raises(UpstreamError) as failed:
                await pool.send("/v1/chat/completions", body(user="fail-500"), HEADERS)
            return busy.value, failed.value, [w.breaker.state for w in pool.workers]
        finally:
            await pool.aclose()

    busy, failed, states = asyncio.run(main())
    assert busy.code == "upstream_overloaded" and busy.headers["Retry-After"] == "1"
    assert failed.code == "upstream_error"
    assert states == [CircuitState.CLOSED, CircuitState.CLOSED]  # one failure each, threshold 2


def test_health_checks_mark_dead_workers_and_readiness(pki: PkiPaths, logs_dir: Path) -> None:
    process, url = start_fake_worker(pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name="solo")
    wait_ready(pki, process, url)

    async def check(pool: WorkerPool) -> tuple[bool, str, tuple[str, ...]]:
        health = await pool.check_health()
        return health[0].healthy, health[0].detail, pool.workers[0].models

    async def main() -> tuple[tuple[bool, str, tuple[str, ...]], tuple[bool, str, tuple[str, ...]], bool]:
        pool = make_pool(pki, [url], models=["fake-*"])
        try:
            alive = await check(pool)
            process.kill()
            dead = await check(pool)
            return alive, dead, pool.is_ready()
        finally:
            await pool.aclose()

    try:
        alive, dead, ready = asyncio.run(main())
    finally:
        process.stop()
    assert alive == (True, "HTTP 200", ("fake-model",))
    assert dead[0] is False and dead[1] == "ClientConnectorError"
    assert ready is False


def test_a_worker_with_a_foreign_certificate_is_never_used(
    pki: PkiPaths, foreign_pki: PkiPaths, logs_dir: Path
) -> None:
    process, url = start_fake_worker(
        foreign_pki.worker_cert, foreign_pki.worker_key, foreign_pki.ca_cert, logs_dir, name="rogue"
    )
    context = gateway_ssl(foreign_pki)
    process.wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=1).status_code == 200, 20)

    async def main() -> None:
        pool = make_pool(pki, [url])
        try:
            await pool.send("/v1/chat/completions", BODY, HEADERS)
        finally:
            await pool.aclose()

    try:
        with pytest.raises(UpstreamError):
            asyncio.run(main())
    finally:
        process.stop()


def test_a_worker_that_is_not_ours_is_reached_with_tls_and_an_api_key(pki: PkiPaths, logs_dir: Path) -> None:
    process, url = start_fake_worker(
        pki.worker_cert, pki.worker_key, pki.ca_cert, logs_dir, name="vendor", api_key="sk-upstream-key"
    )
    server_only = client_context(TlsFiles(ca=pki.ca_cert))
    process.wait_until(
        lambda: httpx.get(f"{url}/health", verify=server_only, timeout=1).status_code == 200, 20
    )

    async def main(key: str) -> int:
        settings = UpstreamSettings.model_validate(
            {"name": "vendor", "models": ["fake-model"], "workers": [url], "tls": {"ca": str(pki.ca_cert)},
             "api_key": key}
        )  # fmt: skip
        pool = WorkerPool(settings)
        try:
            reply = await pool.send("/v1/chat/completions", BODY, HEADERS)
            await reply.read(1 << 20)
            await reply.aclose()
            return reply.status_code
        finally:
            await pool.aclose()

    try:
        assert asyncio.run(main("sk-upstream-key")) == 200
        assert asyncio.run(main("sk-wrong-key")) == 401  # the vendor's refusal is passed through
    finally:
        process.stop()


def test_the_defaults_close_idle_connections_before_any_uvicorn_worker_does() -> None:
    # A request sent on a pooled connection just as the worker times it out fails with nowhere to go
    # when one worker serves: the client side must be the one that closes idle connections first.
    settings = UpstreamSettings(name="any", models=["m"], workers=["https://w:8000"])
    assert settings.idle_connection_timeout_s < 5 < WORKER_KEEP_ALIVE_S  # 5 s: uvicorn's default
