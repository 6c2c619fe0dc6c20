"""Faults under concurrent load, through the real gateway and real workers serving the default model.

Each test drives mixed streaming and whole chat completions from several clients while one thing
breaks: a worker, Redis, the audit disk, the policy file, the gateway itself. Every client call is
bounded, so a hang is an outcome the test sees, and the audit log is checked request by request.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.pki import PkiPaths
from tests.support.audit_keys import audit_settings, read_audit, verify_audit
from tests.support.gateway import start_gateway, upstream
from tests.support.identity import TestIssuer
from tests.support.load import Body, Load, Outcome, eventually, exchange, scrape
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.worker import MODEL_NAME, gateway_ssl, launch_worker

pytestmark = [pytest.mark.model, pytest.mark.slow]

POLICY = """
version: 1
tenant: {claim: org, required: true}
bindings:
  - {name: engineers, when: {claim: groups, contains: ml-engineers}, roles: [engineer]}
  - {name: trial, when: {claim: groups, contains: trial}, roles: [trial]}
roles:
  engineer:
    models: ["smollm*"]
    max_tokens: 64
    cache: {enabled: true, ttl_s: 60}
  trial:
    models: ["smollm*"]
    max_tokens: 8
    budget: {requests_per_minute: 3}
"""
CLIENTS = 8
STREAM_TOKENS = 32
INTERRUPTED = "upstream_stream_interrupted"
# What a client saw, as (streamed, status, error code): answered, or refused because nothing could record it.
ANSWERED = {(False, 200, None), (True, 200, None)}
AUDIT_REFUSALS = {(False, 503, "audit_unavailable"), (True, 200, "audit_unavailable")}


@dataclass(frozen=True)
class Workers:
    """Two real workers behind the gateway; only the victim is ever killed (once, by the first fault)."""

    survivor: str
    victim: ServiceProcess
    victim_url: str


@pytest.fixture(scope="module")
def workers(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    root = tmp_path_factory.mktemp("fault-workers")
    # Launched together so that their model loads overlap.
    started = [
        launch_worker(root, pki.worker_cert, pki.worker_key, pki.ca_cert, kv_cache_mb=64) for _ in "ab"
    ]
    try:
        for process, url in started:
            process.wait_until(answers_health(f"{url}/health", gateway_ssl(pki)), 90)
        (_, survivor_url), (victim, victim_url) = started
        yield Workers(survivor_url, victim, victim_url)
    finally:
        for process, _ in started:
            process.stop()


def answers_health(url: str, context: ssl.SSLContext) -> Callable[[], bool]:
    return lambda: httpx.get(url, verify=context, timeout=2).is_success


@dataclass
class Stack:
    """What the gateway runs with (issuer, policy file, audit log) and every gateway started from it."""

    root: Path
    pki: PkiPaths
    issuer: TestIssuer
    policy_file: Path
    audit: dict[str, Any] | None = None
    gateways: list[ServiceProcess] = field(default_factory=list)

    def with_audit(self) -> Stack:
        self.audit = {**audit_settings(self.root), "checkpoint_interval_s": 0.2}
        return self

    def start(self, workers: list[str], **extra: Any) -> tuple[ServiceProcess, str]:
        if self.audit is not None:
            extra["audit"] = self.audit
        gateway, url = start_gateway(
            self.root, issuers=[self.issuer.settings()], policy_dir=self.policy_file.parent,
            upstreams=[upstream(self.pki, "local", ["smollm*"], workers)], **extra,
        )  # fmt: skip
        self.gateways.append(gateway)
        return gateway, url

    def token(self, group: str = "ml-engineers", org: str = "acme") -> str:
        return self.issuer.mint(groups=[group], org=org)

    def verify(self) -> subprocess.CompletedProcess[str]:
        return verify_audit(self.root)

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """The decrypted records by request id (a list each, so duplicates show)."""
        by_id: dict[str, list[dict[str, Any]]] = {}
        for record in read_audit(self.root):
            by_id.setdefault(record["request_id"], []).append(record)
        return by_id

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        assert [g.log_path for g in self.gateways if "Traceback" in g.logs()] == []


def new_stack(root: Path, pki: PkiPaths) -> Stack:
    policy_file = root / "policies" / "main.yaml"
    policy_file.parent.mkdir(parents=True)
    policy_file.write_text(POLICY)
    return Stack(root, pki, TestIssuer(root / "idp"), policy_file)


@dataclass
class Shared:
    """One gateway for the whole module, in front of both workers, with Redis and an audit log.

    It outlives every fault but its own death: after a SIGKILL, ``restart`` brings it back on the same
    audit directory, so the tests need not run in any order."""

    stack: Stack
    workers: Workers
    redis: RedisServer
    gateway: ServiceProcess = field(init=False)
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.gateway, self.url = self.stack.start(
            [self.workers.survivor, self.workers.victim_url],
            redis={"url": self.redis.url, "recovery_max_s": 0.5},
        )

    def records_of(self, outcomes: list[Outcome]) -> list[list[dict[str, Any]]]:
        """Each outcome's audit records (one each, unless something is wrong)."""
        records = self.stack.records()
        return [records.get(str(o.request_id), []) for o in outcomes]


@pytest.fixture(scope="module")
def shared(pki: PkiPaths, workers: Workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("fault-gateway")
    redis = RedisServer(root / "redis").start()
    stack = new_stack(root, pki).with_audit()
    try:
        yield Shared(stack, workers, redis)
    finally:
        redis.stop()
        stack.stop()


def mixed(*, tokens: int = 24, repeat: int | None = None, whole_every: int = 2) -> Body:
    """Streaming requests with a whole one every ``whole_every``; streams run longer, so some are
    mid-way at any time.

    With ``repeat``, each client cycles through that many prompts (so the cache can hit)."""

    def body(client: int, n: int) -> dict[str, Any]:
        stream = (client + n) % whole_every != 1
        tag = f"{n % repeat}" if repeat else f"{client}.{n}"
        return {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": f"Count from one to ten. ({tag})"}],
            "max_tokens": tokens if stream else 6,
            "temperature": 0,
            "ignore_eos": True,
            "stream": stream,
        }

    return body


def kinds(outcomes: list[Outcome]) -> Counter[tuple[bool, int | None, str | None]]:
    """(streamed, status, error code) of every outcome, counted."""
    return Counter((o.stream, o.status, o.error_code) for o in outcomes)


async def readyz(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{url}/readyz")


async def oks_since(load: Load, started: float, count: int, timeout_s: float = 40.0) -> None:
    """Wait until ``count`` requests sent after ``started`` have succeeded."""

    async def enough() -> bool:
        return sum(o.ok for o in load.since(started)) >= count

    await eventually(enough, timeout_s)


def gauge(samples: dict[str, float], name: str, **labels: str) -> float:
    inside = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return samples[f"{name}{{{inside}}}" if labels else name]


def expected_record(outcome: Outcome) -> tuple[int | None, str | None]:
    """The (status, error code) the audit record of what this client saw must hold."""
    if outcome.stream and outcome.error_code == INTERRUPTED:
        return 502, INTERRUPTED  # the client had its 200 headers; the record keeps what went wrong
    return outcome.status, outcome.error_code


# -- 1. a worker SIGKILLed ------------------------------------------------------------------------


def test_a_killed_worker_fails_over_and_ends_its_streams_cleanly(shared: Shared) -> None:
    victim = shared.workers.victim_url
    load = Load(shared.url, shared.stack.token(), mixed(tokens=STREAM_TOKENS, whole_every=4), clients=CLIENTS)
    killed, ready = asyncio.run(kill_the_victim(load, shared))
    outcomes = load.outcomes
    assert [o for o in outcomes if o.failure or not o.complete] == []  # no hang, no cut connection
    seen = kinds(outcomes)
    assert seen[(True, 200, INTERRUPTED)] >= 1, seen  # streams on the victim: error event, [DONE]
    assert set(seen) <= {*ANSWERED, (True, 200, INTERRUPTED), (False, 502, "upstream_error")}
    after = load.since(killed)
    assert len(after) >= CLIENTS and all(o.ok for o in after)  # new requests go to the survivor
    health = {w["url"]: w["healthy"] for w in ready.json()["upstreams"][0]["workers"]}
    assert ready.status_code == 200 and health == {shared.workers.survivor: True, victim: False}
    verified = shared.stack.verify()  # the live log, quiet now that the load has stopped
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = shared.records_of(outcomes)
    assert [len(r) for r in records] == [1] * len(outcomes)  # one record per answered request
    assert [(r[0]["status"], r[0]["error_code"]) for r in records] == [expected_record(o) for o in outcomes]
    assert {r[0]["worker"] for r in shared.records_of(after)} == {shared.workers.survivor}


async def kill_the_victim(load: Load, shared: Shared) -> tuple[float, httpx.Response]:
    """SIGKILL the victim while it is sending a stream; when, and /readyz once the survivor has
    answered a round of new requests."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(load.run(stop))
    async with httpx.AsyncClient(timeout=10) as client:

        async def victim_streaming() -> bool:
            return sum(o.ok for o in load.outcomes) >= 4 and await streams_on(client, shared, load)

        await eventually(victim_streaming, 60)
        killed = time.monotonic()
        shared.workers.victim.kill()
    await oks_since(load, killed, CLIENTS)
    ready = await readyz(shared.url)
    stop.set()
    await traffic
    return killed, ready


async def streams_on(client: httpx.AsyncClient, shared: Shared, load: Load) -> bool:
    """Whether the victim is certainly sending a stream that is far from its end.

    Streams whose first event has arrived are held by some worker until they end. If the victim holds
    more requests than there are in flight besides those streams, one of them is on the victim."""
    young = STREAM_TOKENS // 2
    before, sent_before = relaying(load, young), load.sent
    in_flight_before = len(load.in_flight)
    victim_holds = gauge(
        await scrape(client, shared.url), "warden_gateway_upstream_outstanding_requests",
        upstream="local", worker=shared.workers.victim_url,
    )  # fmt: skip
    streaming = before & relaying(load, young)  # relaying throughout the scrape
    others = in_flight_before + (load.sent - sent_before) - len(streaming)
    return bool(streaming) and victim_holds > others


def relaying(load: Load, at_most: int) -> set[int]:
    return {key for key, progress in load.in_flight.items() if progress.relaying(at_most)}


# -- 2. Redis killed and restarted ----------------------------------------------------------------


def test_redis_killed_and_restarted_under_load_fails_no_request(shared: Shared) -> None:
    load = Load(shared.url, shared.stack.token(), mixed(repeat=3), clients=6)
    trial = shared.stack.token("trial", org="tiny")
    down, trial_statuses, up, outage = asyncio.run(redis_outage(load, trial, shared.redis, shared.url))
    assert len(load.outcomes) > 20 and [o for o in load.outcomes if not o.ok] == []
    assert gauge(down, "warden_gateway_redis_up") == 0 and gauge(up, "warden_gateway_redis_up") == 1
    assert gauge(up, "warden_gateway_redis_outages_total") >= 1
    # Degraded, never wide open: the trial role's 3 requests a minute still hold, in process.
    assert trial_statuses == [200, 200, 200, 429]
    assert gauge(down, "warden_gateway_budget_decisions_total", result="local") >= 4
    during = [o for o in load.outcomes if outage[0] < o.started < outage[1]]
    assert during and {o.cache for o in during} == {"bypass"}


async def redis_outage(
    load: Load, trial_token: str, redis: RedisServer, url: str
) -> tuple[dict[str, float], list[int | None], dict[str, float], tuple[float, float]]:
    """Kill Redis under load, probe the degraded limits, restart it. Returns the metrics while down
    and after, the trial caller's statuses, and when readyz saw Redis down and when it was restarted."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(load.run(stop))
    async with httpx.AsyncClient(timeout=10) as client:

        async def redis_says(state: str) -> bool:
            return str((await readyz(url)).json()["redis"]).startswith(state)

        await eventually(lambda: cache_hit(load.outcomes), 60)  # the cache works before the fault
        redis.kill()
        await eventually(lambda: redis_says("down"))
        went_down = time.monotonic()
        statuses = await trial_statuses(url, trial_token, load.body(0, 1), 4)
        await oks_since(load, went_down, 6)
        down = await scrape(client, url)
        restarting = time.monotonic()
        await asyncio.to_thread(redis.start)
        await eventually(lambda: redis_says("up"))
        # Entries stored after the restart are found again: the cache is Redis's once more.
        await eventually(lambda: cache_hit(load.since(restarting)), 60)
        up = await scrape(client, url)
    stop.set()
    await traffic
    return down, statuses, up, (went_down, restarting)


async def trial_statuses(url: str, token: str, body: dict[str, Any], count: int) -> list[int | None]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as caller:
        return [(await exchange(caller, body)).status for _ in range(count)]


async def cache_hit(outcomes: list[Outcome]) -> bool:
    return any(o.cache == "hit" for o in outcomes)


# -- 3. the audit disk full -----------------------------------------------------------------------


def test_a_full_audit_disk_refuses_with_503_damages_nothing_and_resumes(shared: Shared) -> None:
    assert shared.gateway.process is not None
    load = Load(shared.url, shared.stack.token(), mixed(), clients=6)
    pid = shared.gateway.process.pid
    full, refused_ready, resumed, samples = asyncio.run(fill_the_disk(load, shared.url, pid))
    outcomes = load.outcomes
    assert [o for o in outcomes if o.failure or not o.complete] == []
    seen = kinds(outcomes)
    refusals = sum(seen[kind] for kind in AUDIT_REFUSALS)
    assert refusals >= 1 and set(seen) <= ANSWERED | AUDIT_REFUSALS, seen
    assert refused_ready.status_code == 503 and refused_ready.json()["audit"] == "failing"
    assert resumed.status_code == 200 and resumed.json()["audit"] == "up"
    assert all(o.ok for o in load.since(full[1])) and len(load.since(full[1])) >= 6
    assert gauge(samples, "warden_gateway_audit_refused_total") >= refusals
    verified = shared.stack.verify()  # the live log, quiet now that the load has stopped
    assert verified.returncode == 0, verified.stdout + verified.stderr
    answered = [o for o in outcomes if o.ok]
    assert [len(r) for r in shared.records_of(answered)] == [1] * len(answered)


async def fill_the_disk(
    load: Load, url: str, pid: int
) -> tuple[tuple[float, float], httpx.Response, httpx.Response, dict[str, float]]:
    """Let the gateway write no file past a few bytes (RLIMIT_FSIZE, as a full disk looks to it) under
    load, then give the space back. Returns when the disk was full, /readyz during and after, metrics."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(load.run(stop))
    await eventually(lambda: succeeded(load.outcomes, 6), 60)
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    filled = time.monotonic()
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (64, unlimited[1]))  # every audit file is past 64 bytes
    try:
        await eventually(lambda: refused(load.since(filled)))
        during = await readyz(url)
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
    freed = time.monotonic()
    await oks_since(load, freed, 6)
    after = await readyz(url)
    async with httpx.AsyncClient(timeout=10) as client:
        samples = await scrape(client, url)
    stop.set()
    await traffic
    return (filled, freed), during, after, samples


async def succeeded(outcomes: list[Outcome], count: int) -> bool:
    return sum(o.ok for o in outcomes) >= count


async def refused(outcomes: list[Outcome]) -> bool:
    return any(o.error_code == "audit_unavailable" for o in outcomes)


# -- 4. a broken policy file ----------------------------------------------------------------------


def test_a_broken_policy_under_load_keeps_the_last_good_one_serving(shared: Shared) -> None:
    load = Load(shared.url, shared.stack.token(), mixed(), clients=6)
    broken, fixed_at, fixed = asyncio.run(swap_policies(load, shared.url, shared.stack.policy_file))
    assert len(load.outcomes) > 20 and [o for o in load.outcomes if not o.ok] == []
    first = broken["version"]
    assert "main.yaml line" in str(broken["last_error"]) and "max_tokens" in str(broken["last_error"])
    assert fixed["last_error"] is None and fixed["version"] != first
    served = [r[0]["policy_version"] for r in shared.records_of(load.outcomes)]
    assert set(served) == {first, fixed["version"]}  # the broken file never served
    assert {r[0]["policy_version"] for r in shared.records_of(load.since(fixed_at))} == {fixed["version"]}


async def swap_policies(
    load: Load, url: str, policy_file: Path
) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """Under load: a broken file replaces the good one, then a fixed one. Returns readyz's policy while
    broken, when the fix was seen, and readyz's policy after it."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(load.run(stop))

    async def policy() -> dict[str, Any]:
        ready = await readyz(url)
        assert ready.status_code == 200  # a refused update is reported, never made unready
        return dict(ready.json()["policy"])

    await eventually(lambda: succeeded(load.outcomes, 6), 60)
    replace_file(policy_file, POLICY.replace("max_tokens: 64", "max_tokens: lots", 1))
    await eventually(lambda: has_error(policy()))
    broken = await policy()
    await oks_since(load, time.monotonic(), 6)  # still served by the last good policy
    replace_file(policy_file, POLICY.replace("max_tokens: 64", "max_tokens: 48", 1))
    await eventually(lambda: has_error(policy(), False))
    fixed_at = time.monotonic()
    await oks_since(load, fixed_at, 6)
    stop.set()
    await traffic
    return broken, fixed_at, await policy()


async def has_error(policy: Awaitable[dict[str, Any]], expected: bool = True) -> bool:
    return ((await policy)["last_error"] is not None) is expected


def replace_file(path: Path, text: str) -> None:
    """Swap the file in one rename, as a ConfigMap update or an editor's save does."""
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(path)


# -- 5. the gateway SIGKILLed ---------------------------------------------------------------------


def test_a_gateway_killed_under_load_loses_no_acknowledged_request(shared: Shared) -> None:
    load = Load(shared.url, shared.stack.token(), mixed(), clients=6)

    async def scenario() -> None:
        stop = asyncio.Event()
        traffic = asyncio.create_task(load.run(stop))
        await eventually(lambda: succeeded(load.outcomes, 12), 60)
        shared.gateway.kill()
        await traffic  # each client ends at its first broken exchange

    asyncio.run(scenario())
    shared.restart()  # on the same audit directory: repairs a torn tail, continues the chain
    after = asyncio.run(one_request(shared.url, shared.stack.token()))
    assert after.ok
    broken = [o for o in load.outcomes if o.failure is not None]
    assert 1 <= len(broken) <= 6 and all(o.failure != "hang" for o in broken)
    verified = shared.stack.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    acknowledged = [o for o in load.outcomes if o.complete] + [after]
    assert len(acknowledged) > 12
    assert [len(r) for r in shared.records_of(acknowledged)] == [1] * len(acknowledged)


async def one_request(url: str, token: str) -> Outcome:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        return await exchange(client, mixed()(0, 0))
