"""The response cache against a real redis-server: isolation, sealing, single flight, policy."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from gateway.cache import CacheStatus, ResponseCache
from gateway.cache_crypto import CacheKeyring, sealed_version
from gateway.cache_entry import CachedAnswer, StreamCapture, decode_answer, encode_answer
from gateway.cache_keys import CacheScope, canonical_request, is_deterministic, wants_fresh
from gateway.config import ConfigError, load_settings
from gateway.openai_api import ChatCompletionRequest
from gateway.policy.schema import Cache
from gateway.redis_settings import CacheSettings, RedisSettings
from gateway.redis_state import RedisState
from tests.support.redis_server import RedisServer

T = TypeVar("T")

PROMPT = "Summarise the merger plan for PROJECT-NIGHTJAR before Friday."
ANSWER_TEXT = "The merger of ZEBRA-CROSSING-7731 closes on Friday."
SECRET_A = "0123456789abcdefghijklmnopqrstuvwxyz"
SECRET_B = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210"
SECRET_C = "qwertyuiopasdfghjklzxcvbnm0192837465"
POLICY = Cache(enabled=True, ttl_s=60)
ENDPOINT = "chat.completions"


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "llama-8b",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
    }
    return {**body, **fields}


def scope(tenant: str | None = "acme", subject: str = "alice", version: str = "v1") -> CacheScope:
    return CacheScope("https://idp.test", tenant, subject, ("engineer",), version)


def answer(text: str = ANSWER_TEXT) -> CachedAnswer:
    body = {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": text}}]}
    return CachedAnswer("application/json", body=json.dumps(body).encode())


def settings(
    versions: dict[int, str] | None = None, current: int | None = None, **extra: Any
) -> CacheSettings:
    keys = {v: SecretStr(s) for v, s in (versions or {1: SECRET_B}).items()}
    return CacheSettings(
        key_secret=SecretStr(SECRET_A), encryption_keys=keys, current_key_version=current, **extra
    )


@asynccontextmanager
async def connected(url: str, prefix: str | None = None) -> AsyncIterator[RedisState]:
    name = prefix or f"t{uuid.uuid4().hex[:10]}:"
    state = RedisState(
        RedisSettings(url=SecretStr(url), key_prefix=name, command_timeout_s=5.0, connect_timeout_s=5.0)
    )
    await state.start()
    try:
        yield state
    finally:
        await state.close()


async def stored(state: RedisState, key: bytes | str) -> bytes:
    """The raw value under a key, as Redis holds it (empty when absent)."""
    value = await state.client.get(key)
    assert value is None or isinstance(value, bytes)
    return value or b""


def run(scenario: Callable[[RedisState], Awaitable[T]], url: str) -> T:
    async def main() -> T:
        async with connected(url) as state:
            return await scenario(state)

    return asyncio.run(main())


class Worker:
    """Stands in for the upstream call: counts calls, answers after a delay."""

    def __init__(self, text: str = ANSWER_TEXT, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.text, self.delay_s, self.fail = text, delay_s, fail

    async def __call__(self) -> CachedAnswer:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("worker failed")
        return answer(self.text)


def test_tenant_never_receives_another_tenants_answer(redis_server: RedisServer) -> None:
    async def scenario(state: RedisState) -> list[tuple[str, CacheStatus, int]]:
        cache = ResponseCache(state, settings())
        seen = []
        for who, tenant, subject in [
            ("A", "tenant-a", "alice"),
            ("B", "tenant-b", "alice"),  # same subject name, other tenant
            ("A2", "tenant-a", "bob"),  # same tenant, other caller: shares A's entry
            ("C", None, "carol"),  # no tenant: scoped to the caller alone
            ("D", None, "dave"),
        ]:
            worker = Worker(text=f"answer for {who}")
            got, status = await cache.get_or_compute(
                scope(tenant, subject), POLICY, ENDPOINT, request(), worker
            )
            seen.append((json.loads(got.body)["choices"][0]["message"]["content"], status, worker.calls))
        return seen

    assert run(scenario, redis_server.url) == [
        ("answer for A", "miss", 1),
        ("answer for B", "miss", 1),
        ("answer for A", "hit", 0),
        ("answer for C", "miss", 1),
        ("answer for D", "miss", 1),
    ]


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (scope(version="v1"), "hit"),
        (scope(version="v2"), "miss"),  # a policy change
        (CacheScope("https://idp.test", "acme", "alice", ("analyst",), "v1"), "miss"),  # other roles
        (CacheScope("https://other-idp.test", "acme", "alice", ("engineer",), "v1"), "miss"),
    ],
)
def test_policy_version_roles_and_issuer_change_the_entry(
    redis_server: RedisServer, second: CacheScope, expected: CacheStatus
) -> None:
    async def scenario(state: RedisState) -> CacheStatus:
        cache = ResponseCache(state, settings())
        await cache.get_or_compute(scope(version="v1"), POLICY, ENDPOINT, request(), Worker())
        _, status = await cache.get_or_compute(second, POLICY, ENDPOINT, request(), Worker())
        return status

    assert run(scenario, redis_server.url) == expected


def test_redis_holds_nothing_readable_as_prompt_or_answer(redis_server: RedisServer) -> None:
    async def scenario(state: RedisState) -> list[tuple[bytes, bytes]]:
        cache = ResponseCache(state, settings())
        await cache.get_or_compute(scope(), POLICY, ENDPOINT, request(), Worker())
        streamed = request(stream=True)
        lookup = await cache.lookup(scope(), POLICY, ENDPOINT, streamed)
        await cache.complete(lookup, CachedAnswer("text/event-stream", events=sse_events(ANSWER_TEXT)))
        assert cache.stats.stored == 2
        pairs = []
        async for key in state.client.scan_iter(count=1000):
            value = await stored(state, key) if await state.client.type(key) == b"string" else b""
            pairs.append((key, value))
        return pairs

    pairs = run(scenario, redis_server.url)
    assert len(pairs) >= 2
    needles = [PROMPT, ANSWER_TEXT, "PROJECT-NIGHTJAR", "ZEBRA-CROSSING-7731", "acme", "alice", "llama-8b"]
    forms = [form for n in needles for form in (n.encode(), n.lower().encode(), base64.b64encode(n.encode()))]
    leaks = [(key, form) for key, value in pairs for form in forms if form in key or form in value.lower()]
    assert leaks == []


def sse_events(text: str) -> tuple[bytes, ...]:
    chunks = [{"choices": [{"delta": {"content": word + " "}}]} for word in text.split()]
    return (*(f"data: {json.dumps(c)}\n\n".encode() for c in chunks), b"data: [DONE]\n\n")


@pytest.mark.slow
def test_fifty_identical_concurrent_misses_call_the_worker_once(redis_server: RedisServer) -> None:
    async def scenario(state: RedisState) -> tuple[int, list[CacheStatus], set[bytes]]:
        cache = ResponseCache(state, settings())
        worker = Worker(delay_s=0.05)
        results = await asyncio.gather(
            *(cache.get_or_compute(scope(), POLICY, ENDPOINT, request(), worker) for _ in range(50))
        )
        return worker.calls, sorted(status for _, status in results), {got.body for got, _ in results}

    calls, statuses, bodies = run(scenario, redis_server.url)
    assert calls == 1
    assert statuses == ["hit"] * 49 + ["miss"]
    assert bodies == {answer().body}


def test_identical_misses_on_two_replicas_call_the_worker_once(redis_server: RedisServer) -> None:
    async def main() -> tuple[int, list[CacheStatus]]:
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        async with connected(redis_server.url, prefix) as one, connected(redis_server.url, prefix) as two:
            replicas = [ResponseCache(one, settings()), ResponseCache(two, settings())]
            worker = Worker(delay_s=0.1)
            results = await asyncio.gather(
                *(
                    replicas[i % 2].get_or_compute(scope(), POLICY, ENDPOINT, request(), worker)
                    for i in range(20)
                )
            )
            return worker.calls, sorted(status for _, status in results)

    calls, statuses = asyncio.run(main())
    assert calls == 1
    assert statuses == ["hit"] * 19 + ["miss"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_waiting_for_a_slow_first_request_is_bounded(redis_server: RedisServer, replicas: int) -> None:
    async def main() -> tuple[int, float, CacheStatus]:
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        async with connected(redis_server.url, prefix) as one, connected(redis_server.url, prefix) as two:
            quick = settings(single_flight_wait_s=0.2)
            first = ResponseCache(one, quick)
            second = first if replicas == 1 else ResponseCache(two, quick)
            worker = Worker(delay_s=0.6)
            leader = asyncio.create_task(first.get_or_compute(scope(), POLICY, ENDPOINT, request(), worker))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            _, status = await second.get_or_compute(scope(), POLICY, ENDPOINT, request(), Worker())
            waited = time.monotonic() - started
            await leader
            return worker.calls, waited, status

    calls, waited, status = asyncio.run(main())
    assert calls == 1
    assert status == "miss"  # fell through and asked the worker itself
    assert 0.15 < waited < 0.5  # the leader takes 0.6 s


def test_a_failing_first_request_releases_the_waiters_at_once(redis_server: RedisServer) -> None:
    async def scenario(state: RedisState) -> tuple[int, float, CacheStatus]:
        cache = ResponseCache(state, settings(single_flight_wait_s=10))
        failing = Worker(delay_s=0.05, fail=True)
        leader = asyncio.create_task(cache.get_or_compute(scope(), POLICY, ENDPOINT, request(), failing))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        _, status = await cache.get_or_compute(scope(), POLICY, ENDPOINT, request(), Worker())
        with pytest.raises(RuntimeError, match="worker failed"):
            await leader
        return failing.calls, time.monotonic() - started, status

    calls, waited, status = run(scenario, redis_server.url)
    assert (calls, status) == (1, "miss")
    assert waited < 1.0


@pytest.mark.parametrize(
    ("fields", "policy", "expected"),
    [
        ({"temperature": 0}, POLICY, ["miss", "hit"]),
        ({"temperature": 0.0, "top_p": 0.5}, POLICY, ["miss", "hit"]),
        ({"temperature": 0.8, "seed": 7}, POLICY, ["miss", "hit"]),
        ({"temperature": 0.8}, POLICY, ["bypass", "bypass"]),
        ({"temperature": None}, POLICY, ["bypass", "bypass"]),  # the API default samples
        ({"temperature": 0.8}, Cache(enabled=True, allow_nondeterministic=True), ["miss", "hit"]),
        ({"temperature": 0}, Cache(enabled=False), ["bypass", "bypass"]),
    ],
)
def test_only_deterministic_requests_are_cached_unless_the_policy_allows(
    redis_server: RedisServer, fields: dict[str, Any], policy: Cache, expected: list[CacheStatus]
) -> None:
    body = {k: v for k, v in request(**fields).items() if v is not None}

    async def scenario(state: RedisState) -> list[CacheStatus]:
        cache = ResponseCache(state, settings())
        return [(await cache.get_or_compute(scope(), policy, ENDPOINT, body, Worker()))[1] for _ in range(2)]

    assert run(scenario, redis_server.url) == expected


@pytest.mark.parametrize(
    ("header", "policy", "expected"),
    [
        ("no-cache", POLICY, "bypass"),
        ("max-age=0, No-Store", POLICY, "bypass"),
        ("no-cache", Cache(enabled=True, client_no_cache=False), "hit"),
        ("max-age=60", POLICY, "hit"),
    ],
)
def test_client_may_skip_the_cache_where_the_policy_allows(
    redis_server: RedisServer, header: str, policy: Cache, expected: CacheStatus
) -> None:
    async def scenario(state: RedisState) -> CacheStatus:
        cache = ResponseCache(state, settings())
        await cache.get_or_compute(scope(), policy, ENDPOINT, request(), Worker())
        _, status = await cache.get_or_compute(
            scope(), policy, ENDPOINT, request(), Worker(), cache_control=header
        )
        return status

    assert run(scenario, redis_server.url) == expected


def test_a_streamed_request_is_replayed_as_its_events(redis_server: RedisServer) -> None:
    events = sse_events(ANSWER_TEXT)

    async def scenario(state: RedisState) -> tuple[CacheStatus, CacheStatus, CachedAnswer | None]:
        cache = ResponseCache(state, settings())
        first = await cache.lookup(scope(), POLICY, ENDPOINT, request(stream=True))
        capture = StreamCapture("text/event-stream", POLICY.max_entry_bytes)
        for event in events:
            capture.add(event)
        await cache.complete(first, capture.answer())
        plain = await cache.lookup(scope(), POLICY, ENDPOINT, request(stream=False))
        await cache.complete(plain, None)
        again = await cache.lookup(scope(), POLICY, ENDPOINT, request(stream=True))
        return first.status, plain.status, again.answer

    first, plain, replay = run(scenario, redis_server.url)
    assert (first, plain) == ("miss", "miss")  # the stream flag is part of the key
    assert replay is not None and replay.streamed
    assert replay.events == events
    assert replay.content_type == "text/event-stream"


@pytest.mark.parametrize(
    ("events", "stored"),
    [
        (sse_events("all good"), True),
        (sse_events("all good")[:-1], False),  # cut before [DONE]
        ((b'data: {"choices": []}\n\n', b'data: {"error": {"code": "x"}}\n\ndata: [DONE]\n\n'), False),
        ((b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"), False),  # over the size cap
    ],
)
def test_only_complete_streams_within_the_cap_become_entries(events: tuple[bytes, ...], stored: bool) -> None:
    capture = StreamCapture("text/event-stream", max_bytes=200)
    for event in events:
        capture.add(event)
    result = capture.answer()
    assert (result is not None) == stored
    if result is not None:
        assert decode_answer(encode_answer(result)) == result


def test_rotated_keys_still_open_old_entries_and_new_writes_use_the_current(
    redis_server: RedisServer,
) -> None:
    async def scenario(state: RedisState) -> tuple[list[CacheStatus], list[int | None], int]:
        statuses: list[CacheStatus] = []
        versions: list[int | None] = []
        old = ResponseCache(state, settings({1: SECRET_B}))
        rotated = ResponseCache(state, settings({1: SECRET_B, 2: SECRET_C}, current=2))
        retired = ResponseCache(state, settings({2: SECRET_C}))
        name = old.entry_key(scope(), ENDPOINT, request())
        for cache, req in [(old, request()), (rotated, request()), (rotated, request(seed=1))]:
            statuses.append((await cache.get_or_compute(scope(), POLICY, ENDPOINT, req, Worker()))[1])
            versions.append(sealed_version(await stored(state, cache.entry_key(scope(), ENDPOINT, req))))
        statuses.append((await retired.get_or_compute(scope(), POLICY, ENDPOINT, request(), Worker()))[1])
        versions.append(sealed_version(await stored(state, name)))
        return statuses, versions, retired.stats.unreadable

    statuses, versions, unreadable = run(scenario, redis_server.url)
    # v1 entry; read back after rotation; a new write under v2; v1 retired: miss, rewritten as v2.
    assert statuses == ["miss", "hit", "miss", "miss"]
    assert versions == [1, 1, 2, 2]
    assert unreadable == 1


def test_a_value_moved_under_another_tenants_key_does_not_open(redis_server: RedisServer) -> None:
    async def scenario(state: RedisState) -> tuple[CacheStatus, int, int]:
        cache = ResponseCache(state, settings())
        await cache.get_or_compute(scope("tenant-a"), POLICY, ENDPOINT, request(), Worker("secret of A"))
        stolen = await stored(state, cache.entry_key(scope("tenant-a"), ENDPOINT, request()))
        await state.client.set(cache.entry_key(scope("tenant-b"), ENDPOINT, request()), stolen)
        worker = Worker("answer for B")
        got, status = await cache.get_or_compute(scope("tenant-b"), POLICY, ENDPOINT, request(), worker)
        assert b"secret of A" not in got.body
        return status, worker.calls, cache.stats.unreadable

    assert run(scenario, redis_server.url) == ("miss", 1, 1)


def test_entries_expire_by_policy_and_large_or_failed_answers_are_not_stored(
    redis_server: RedisServer,
) -> None:
    async def scenario(state: RedisState) -> tuple[int, list[CacheStatus], int]:
        cache = ResponseCache(state, settings())
        short = Cache(enabled=True, ttl_s=5)
        await cache.get_or_compute(scope(), short, ENDPOINT, request(), Worker())
        ttl_ms = int(await state.client.pttl(cache.entry_key(scope(), ENDPOINT, request())))
        statuses = []
        tiny = Cache(enabled=True, max_entry_bytes=64)
        for _ in range(2):
            statuses.append(
                (await cache.get_or_compute(scope(), tiny, ENDPOINT, request(seed=1), Worker()))[1]
            )

        async def refused() -> CachedAnswer:
            return CachedAnswer("application/json", body=b'{"error": {}}', status=400)

        for _ in range(2):
            statuses.append(
                (await cache.get_or_compute(scope(), POLICY, ENDPOINT, request(seed=2), refused))[1]
            )
        return ttl_ms, statuses, cache.stats.too_large

    ttl_ms, statuses, too_large = run(scenario, redis_server.url)
    assert 4000 < ttl_ms <= 5000
    assert statuses == ["miss", "miss", "miss", "miss"]
    assert too_large == 2


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"model": "m", "temperature": 0, "n": 1}, {"n": 1, "temperature": 0.0, "model": "m"}, True),
        ({"model": "m", "user": "u1"}, {"model": "m", "user": "u2"}, True),
        ({"model": "m", "stream": False}, {"model": "m", "stream": True}, False),
        ({"model": "m", "max_tokens": 10}, {"model": "m", "max_tokens": 11}, False),
        ({"model": "m", "stream_options": {"include_usage": True}}, {"model": "m"}, False),
        ({"model": "m", "seed": 1}, {"model": "m", "seed": 2}, False),
    ],
)
def test_canonical_request_keeps_only_what_changes_the_answer(
    a: dict[str, Any], b: dict[str, Any], same: bool
) -> None:
    assert (canonical_request(a) == canonical_request(b)) is same


def test_the_validated_model_and_its_json_name_the_same_entry() -> None:
    call = ChatCompletionRequest.model_validate(request(temperature=0))
    assert canonical_request(call) == canonical_request(call.model_dump(mode="json", exclude_none=True))
    assert is_deterministic(call)
    assert not is_deterministic(ChatCompletionRequest.model_validate(request(temperature=1)))
    assert wants_fresh("private, no-cache") and not wants_fresh(None) and not wants_fresh("max-age=0")


def test_ephemeral_keyrings_share_nothing() -> None:
    one, two = CacheKeyring.ephemeral(), CacheKeyring.ephemeral()
    sealed = one.seal(b"name", b"plaintext")
    assert one.open(b"name", sealed) == b"plaintext"
    assert two.open(b"name", sealed) is None
    assert one.open(b"other-name", sealed) is None  # the key is associated data
    assert one.name_key != two.name_key


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KEY_SECRET": "short", "ENCRYPTION_KEYS__1": SECRET_B}, "at least 32 characters"),
        ({"KEY_SECRET": "a" * 40, "ENCRYPTION_KEYS__1": SECRET_B}, "distinct characters"),
        ({"KEY_SECRET": SECRET_A}, "together"),
        ({"ENCRYPTION_KEYS": f"{{1: {SECRET_B}}}"}, "together"),
        ({"KEY_SECRET": SECRET_A, "ENCRYPTION_KEYS__0": SECRET_B}, "1 to 65535"),
        ({"KEY_SECRET": SECRET_A, "ENCRYPTION_KEYS__1": SECRET_B, "CURRENT_KEY_VERSION": "2"}, "not in"),
    ],
)
def test_cache_settings_refuse_weak_or_incomplete_secrets(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(CacheSettings, None, env_prefix="C_", environ={f"C_{k}": v for k, v in environ.items()})
    assert SECRET_A not in str(caught.value) and SECRET_B not in str(caught.value)


def test_cache_secrets_from_the_environment_by_version() -> None:
    environ = {"C_KEY_SECRET": SECRET_A, "C_ENCRYPTION_KEYS__1": SECRET_B, "C_ENCRYPTION_KEYS__2": SECRET_C}
    loaded = load_settings(CacheSettings, None, env_prefix="C_", environ=environ)
    assert loaded.configured and loaded.write_version() == 2
    assert loaded.encryption_keys[1].get_secret_value() == SECRET_B


def test_cache_settings_default_to_per_process_keys() -> None:
    default = CacheSettings()
    assert not default.configured
    assert settings({1: SECRET_B, 3: SECRET_C}).write_version() == 3
    assert SECRET_A not in repr(settings())
