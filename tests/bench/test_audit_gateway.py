"""The audit benchmark's open-loop load: on schedule against the real mock, whatever the server does."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest
import uvloop

from bench._audit_gateway import Gateway, OpenLoopResult, build_rows, run_open_loop
from bench._loadgen import build_request
from bench.gateway_overhead import Target
from gateway.pki import PkiPaths
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

BODY = b'{"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'


@pytest.fixture(scope="module")
def mock_url(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    args = ("mock", "--pki", str(pki.root), "--tls-port", str(free_port()), "--plain-port", str(port))
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    with ServiceProcess.python_module("bench._mock_upstream", *args, log_path=log) as mock:
        url = f"http://127.0.0.1:{port}"
        mock.wait_http(f"{url}/health", timeout_s=30)
        yield url


def test_every_scheduled_request_is_sent_on_time_and_answered(mock_url: str) -> None:
    endpoint, request = build_request(f"{mock_url}/v1/chat/completions", BODY)
    started = time.perf_counter()
    result = uvloop.run(
        run_open_loop(endpoint, request, rate=400, duration_s=0.5, warmup_s=0.1, connections=4)
    )
    elapsed = time.perf_counter() - started
    assert (result.scheduled, len(result.latencies_ns), len(result.lag_ns), result.errors) == (
        200,
        200,
        200,
        0,
    )
    assert elapsed >= 239 / 400  # the schedule, not the server, sets the pace
    assert 0 < result.latency_ms(50) <= result.latency_ms(99) < 1000


def test_requests_due_together_wait_for_the_only_connection(mock_url: str) -> None:
    endpoint, request = build_request(f"{mock_url}/v1/chat/completions", BODY)
    # 0.5 ms apart with ~1 ms timers: the scheduler hands out two at once, the second has to wait.
    result = uvloop.run(
        run_open_loop(endpoint, request, rate=2000, duration_s=0.2, warmup_s=0, connections=1)
    )
    assert (len(result.latencies_ns), result.errors) == (400, 0)
    assert result.max_in_flight >= 2


def test_non_200_answers_count_as_errors(mock_url: str) -> None:
    endpoint, request = build_request(f"{mock_url}/v1/no-such-route", b"{}")
    result = uvloop.run(run_open_loop(endpoint, request, rate=200, duration_s=0.1, warmup_s=0, connections=2))
    assert result.errors == result.scheduled == 20


def test_unanswered_requests_count_as_errors_after_the_drain() -> None:
    async def main() -> OpenLoopResult:
        # Reads requests, never answers; closes its side when the client closes (Protocol's default).
        silent = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        endpoint, request = build_request(f"http://127.0.0.1:{port}/", b"{}")
        async with silent:
            result = await run_open_loop(
                endpoint, request, rate=100, duration_s=0.1, warmup_s=0, connections=2, drain_s=0.2
            )
            await asyncio.sleep(0.05)  # the server sees the client's close
        return result

    result = uvloop.run(main())
    assert (result.errors, result.latencies_ns) == (10, [])
    assert math.isnan(result.latency_ms(50))


def test_rows_subtract_the_audit_off_run() -> None:
    def run(latency_ms: float) -> OpenLoopResult:
        return OpenLoopResult(500, 4, [round(latency_ms * 1e6)] * 4, 0, 1, [0] * 4)

    gateways = [Gateway(name, "-", Target(name, "http://127.0.0.1:9"), None) for name in ("off", "on")]
    off, on = build_rows(gateways, {0: (run(1.0), None), 1: (run(1.25), 0.003)})
    assert (off.added_p50_ms, off.added_p99_ms) == (0.0, 0.0)
    assert on.added_p50_ms == pytest.approx(0.25) and on.added_p99_ms == pytest.approx(0.25)
    assert (off.fsync_p50_ms, on.fsync_p50_ms, on.records_in_log) == (None, 0.003, None)
