"""What the budget check and a cache hit cost per request, against a real redis-server on this machine.

python -m bench._redis_costs [--quick] [--url redis://...] [--json PATH]

Rows (each through the gateway's own code, uvloop, one client as the gateway builds it):
  ping        a bare PING: the floor of one round trip through redis-py on this machine;
  reserve     ``Limiter.reserve`` against a caller's and a tenant's buckets (one Lua call), which
              is what a request waits for before admission;
  budget      ``reserve`` + ``settle`` (two Lua calls; settle runs after the answer is sent);
  cache hit   ``ResponseCache.lookup`` of a stored ~2 KB JSON answer (key HMAC, one Lua call,
              AES-GCM open, decode);
  stream hit  the same for a streamed answer of 100 SSE events;
  key+seal    the pure CPU part: entry name and sealing of the 2 KB answer (no Redis).
At concurrency 1 the p50 is the latency a request pays; at 16 the per-request figure is wall time
over requests (what one process sustains). ``integrate()`` returns the same rows for
bench/gateway_overhead.py to print next to its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from pydantic import SecretStr

from bench._common import format_table, percentile
from gateway.cache import ResponseCache
from gateway.cache_entry import CachedAnswer, encode_answer
from gateway.cache_keys import CacheScope
from gateway.limits import Limiter, LimitScope
from gateway.policy.schema import Budget, Cache, TenantBudget
from gateway.redis_settings import CacheSettings, RedisSettings
from gateway.redis_state import RedisState
from tests.support.redis_server import RedisServer

TARGET_HIT_P50_MS = 1.5
SCOPE = CacheScope("https://idp.bench", "tenant", "subject", ("role",), "policy-v1")
CALLER = LimitScope("https://idp.bench", "tenant", "subject")
BUDGET = Budget(
    requests_per_minute=10**9, tokens_per_minute=10**12, tenant=TenantBudget(tokens_per_day=10**12)
)
POLICY = Cache(enabled=True, ttl_s=600, max_entry_bytes=1 << 20)
REQUEST = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Explain the budget check in one paragraph. " * 8}],
    "temperature": 0,
}


def _answer() -> CachedAnswer:
    text = "word " * 350
    body = {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": text}}]}
    return CachedAnswer("application/json", body=json.dumps(body).encode())


def _stream() -> CachedAnswer:
    events = [
        f"data: {json.dumps({'choices': [{'delta': {'content': f'token{i} '}}]})}\n\n".encode()
        for i in range(100)
    ]
    return CachedAnswer("text/event-stream", events=(*events, b"data: [DONE]\n\n"))


async def _timed(op: Callable[[], Awaitable[Any]], requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    per_worker = max(1, requests // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await op()
            latencies.append(time.perf_counter() - started)

    for _ in range(min(200, per_worker)):  # warm up: connections, script cache
        await op()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "us_per_req": wall / len(latencies) * 1e6,
        "req_per_s": len(latencies) / wall,
    }


async def measure(url: str, requests: int) -> list[dict[str, Any]]:
    state = RedisState(RedisSettings(url=SecretStr(url), key_prefix="bench:"))
    await state.start()
    if not state.available:
        raise RuntimeError(f"no Redis at {url}")
    cache = ResponseCache(state, CacheSettings())
    limiter = Limiter(state)
    for request, answer in ((REQUEST, _answer()), ({**REQUEST, "stream": True}, _stream())):
        lookup = await cache.lookup(SCOPE, POLICY, "chat.completions", request)
        await cache.complete(lookup, answer)

    async def budget() -> None:
        reservation = await limiter.reserve(CALLER, BUDGET, 1_200)
        await limiter.settle(reservation, 700)

    async def hit(request: dict[str, Any]) -> None:
        lookup = await cache.lookup(SCOPE, POLICY, "chat.completions", request)
        if lookup.status != "hit":
            raise RuntimeError("expected a cache hit")

    plaintext = encode_answer(_answer())

    async def key_and_seal() -> None:
        name = cache.entry_key(SCOPE, "chat.completions", REQUEST)
        cache.keyring.seal(name.encode(), plaintext)

    async def reserve() -> None:
        await limiter.reserve(CALLER, BUDGET, 1_200)

    ops: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("ping", state.client.ping),
        ("reserve", reserve),
        ("budget", budget),
        ("cache hit", lambda: hit(REQUEST)),
        ("stream hit", lambda: hit({**REQUEST, "stream": True})),
        ("key+seal", key_and_seal),
    ]
    rows = []
    for name, op in ops:
        for concurrency in (1, 16):
            rows.append({"op": name, "concurrency": concurrency, **await _timed(op, requests, concurrency)})
    await state.close()
    return rows


def integrate(requests: int = 5_000, url: str | None = None) -> list[dict[str, Any]]:
    """Rows for another benchmark: against ``url``, or a private redis-server started here."""
    if url is not None:
        return uvloop.run(measure(url, requests))
    with tempfile.TemporaryDirectory(prefix="warden-redis-bench-") as directory:
        server = RedisServer(Path(directory)).start()
        try:
            return uvloop.run(measure(server.url, requests))
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._redis_costs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--url", help="an existing Redis (default: a private redis-server)")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    rows = integrate(1_000 if args.quick else 10_000, args.url)
    table = [
        [
            r["op"],
            str(r["concurrency"]),
            f"{r['p50_us']:.0f}",
            f"{r['p99_us']:.0f}",
            f"{r['us_per_req']:.1f}",
            f"{r['req_per_s']:.0f}",
        ]
        for r in rows
    ]
    print(format_table(["op", "conc", "p50 µs", "p99 µs", "µs/req", "req/s"], table))
    hit_p50_ms = next(r["p50_us"] for r in rows if r["op"] == "cache hit" and r["concurrency"] == 1) / 1000
    ok = hit_p50_ms <= TARGET_HIT_P50_MS
    print(f"cache hit p50 {hit_p50_ms:.3f} ms (target ≤ {TARGET_HIT_P50_MS} ms): {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "hit_p50_ms": hit_p50_ms, "pass": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
