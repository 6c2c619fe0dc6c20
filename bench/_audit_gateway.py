"""What the audit log adds to a request through the gateway, at 500 req/s with an open-loop load.

One mock worker and three ``python -m gateway serve`` processes against it, with the same policy,
JWT and upstream mTLS: audit off; audit on with the log on tmpfs (/dev/shm, where fsync costs
nothing, so the difference is the software's own cost); audit on with the log on the disk under
test (each record also waits for its fdatasync). No Redis: the role has no budget and no cache,
so the gateway never calls it.

Open loop: request ``n`` is due at ``n / rate`` seconds, whatever the earlier ones are doing. It goes
out on an idle keep-alive connection of a fixed pool (oldest idle first, so none sits idle long
enough for the server to close it), or waits for one if all are busy. Its latency runs from when the
scheduler hands it out to the last byte of its response: waiting for a free connection behind a slow
server counts; the scheduler's own lateness (the event loop's timers have ~1 ms resolution) is
recorded apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import uvloop
import yaml

from bench._common import percentile
from bench._loadgen import Endpoint, ProtocolError, ResponseParser, build_request
from bench.gateway_overhead import AUDIENCE, ISSUER, MODEL, Target, chat_url, check_serves, mint_tokens
from gateway.audit.keys import generate_keys
from gateway.audit.reader import log_stats
from gateway.pki import PkiPaths, init_pki
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess

RATE = 500.0
CONNECTIONS = 32
TMPFS = Path("/dev/shm")  # noqa: S108 - only private mkdtemp directories are made in it
_PASSPHRASE = b"benchmark passphrase only"


@dataclass(frozen=True, slots=True)
class Mode:
    window_s: float
    warmup_s: float
    repeats: int


FULL = Mode(window_s=10.0, warmup_s=2.0, repeats=2)
QUICK = Mode(window_s=3.0, warmup_s=1.0, repeats=2)


# --- the open-loop load ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    rate: float
    scheduled: int  # requests due in the measured window
    latencies_ns: list[int]  # the measured window's answered requests
    errors: int  # non-200, dropped or unanswered, warm-up included
    max_in_flight: int
    lag_ns: list[int]  # how late the scheduler woke for each measured request

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e6 if self.latencies_ns else math.nan


class _Pool:
    """The connections of one run and the requests waiting for one of them."""

    def __init__(self, endpoint: Endpoint, request: bytes, record_from: int, total: int) -> None:
        self.endpoint, self.request = endpoint, request
        self.record_from, self.total = record_from, total
        self.idle: deque[_Connection] = deque()
        self.backlog: deque[tuple[int, int]] = deque()  # (number, due at ns)
        self.latencies: list[int] = []
        self.errors = self.settled = self.in_flight = self.max_in_flight = 0
        self.all_settled = asyncio.Event()
        self.stopping = False
        self.connections: list[_Connection] = []
        self.reconnects: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(self), self.endpoint.host, self.endpoint.port
        )
        self.connections.append(connection)
        self.ready(connection)

    async def reopen(self) -> None:
        with contextlib.suppress(OSError):  # the server is gone: its requests fail on their own
            await self.open()

    def dispatch(self, number: int, due_ns: int) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        while self.idle:
            connection = self.idle.popleft()
            if connection.open:
                connection.send(number, due_ns)
                return
        self.backlog.append((number, due_ns))

    def ready(self, connection: _Connection) -> None:
        if self.backlog:
            connection.send(*self.backlog.popleft())
        else:
            self.idle.append(connection)

    def answered(self, number: int, due_ns: int, status: int) -> None:
        if number >= self.record_from:
            self.latencies.append(time.perf_counter_ns() - due_ns)
        self._settle(ok=status == 200)

    def _settle(self, *, ok: bool) -> None:
        self.in_flight -= 1
        self.errors += not ok
        self.settled += 1
        if self.settled == self.total:
            self.all_settled.set()

    def lost(self, request: tuple[int, int] | None) -> None:
        if request is not None:
            self._settle(ok=False)
        if not self.stopping:  # keep the pool's size: the server may close an idle connection
            task = asyncio.get_running_loop().create_task(self.reopen())
            self.reconnects.add(task)
            task.add_done_callback(self.reconnects.discard)

    async def close(self) -> None:
        self.stopping = True
        for task in self.reconnects:
            task.cancel()
        for connection in self.connections:
            connection.transport.close()
        await asyncio.gather(*self.reconnects, *(c.closed for c in self.connections), return_exceptions=True)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = ResponseParser()
        self.transport: asyncio.Transport
        self.current: tuple[int, int] | None = None
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def send(self, number: int, due_ns: int) -> None:
        self.current = (number, due_ns)
        self.transport.write(self.pool.request)

    def data_received(self, data: bytes) -> None:
        try:
            statuses = self.parser.feed(data)
        except (ProtocolError, ValueError):
            self.transport.abort()
            return
        for status in statuses:  # one request at a time per connection: at most one answer
            if self.current is None:
                continue
            (number, due_ns), self.current = self.current, None
            self.pool.answered(number, due_ns, status)
            self.pool.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        request, self.current = self.current, None
        self.pool.lost(request)
        if not self.closed.done():
            self.closed.set_result(None)


async def run_open_loop(
    endpoint: Endpoint,
    request: bytes,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    connections: int = CONNECTIONS,
    drain_s: float = 10.0,
) -> OpenLoopResult:
    """Send ``request`` every ``1 / rate`` s for ``warmup_s`` then ``duration_s``; measure the latter.

    Requests still unanswered ``drain_s`` after the last one was due count as errors.
    """
    if endpoint.tls:
        raise ValueError("the open-loop load speaks plain HTTP only (loopback)")
    warm = round(rate * warmup_s)
    total = warm + round(rate * duration_s)
    pool = _Pool(endpoint, request, warm, total)
    lags: list[int] = []
    try:
        await asyncio.wait_for(asyncio.gather(*(pool.open() for _ in range(connections))), timeout=10)
        interval_ns = 1e9 / rate
        begin = time.perf_counter_ns()
        for number in range(total):
            due = begin + round(number * interval_ns)
            now = time.perf_counter_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                now = time.perf_counter_ns()
            if number >= warm:
                lags.append(now - due)
            pool.dispatch(number, now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.all_settled.wait(), timeout=drain_s)
    finally:
        await pool.close()  # requests still in flight fail here
    errors = pool.errors + total - pool.settled  # and those still waiting for a connection
    return OpenLoopResult(rate, total - warm, pool.latencies, errors, pool.max_in_flight, lags)


# --- the gateways ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str  # "audit off", "audit on"
    log: str  # where its audit log is: "-", "tmpfs /dev/shm", "disk /tmp"
    target: Target
    audit_dir: Path | None


TABLE_HEADERS = (
    "gateway", "audit log", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "fsync p50 ms", "requests", "errors",
    "records",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayRow:
    name: str
    log: str
    p50_ms: float
    p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    fsync_p50_ms: float | None  # the log's file system, probed right after the kept run; None: audit off
    requests: int
    errors: int
    max_in_flight: int
    scheduler_lag_p99_ms: float
    records_in_log: int | None  # None: audit off

    def cells(self) -> list[str]:
        records = "-" if self.records_in_log is None else str(self.records_in_log)
        fsync = "-" if self.fsync_p50_ms is None else f"{self.fsync_p50_ms:.3f}"
        return [
            self.name, self.log, f"{self.p50_ms:.3f}", f"{self.p99_ms:.3f}", f"{self.added_p50_ms:+.3f}",
            f"{self.added_p99_ms:+.3f}", fsync, str(self.requests), str(self.errors), records,
        ]  # fmt: skip


def _write_policy(root: Path) -> Path:
    policies = root / "policies"
    policies.mkdir()
    policy = {
        "version": 1,
        "bindings": [{"name": "bench", "when": {"claim": "groups", "contains": "bench"}, "roles": ["bench"]}],
        # Prompts and outputs are recorded as keyed hashes (the policy's default audit mode).
        "roles": {
            "bench": {"models": [MODEL], "max_tokens": 64, "guards": {"pii": {"redact_output": False}}}
        },
    }
    (policies / "bench.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    return policies


def _write_settings(
    path: Path, port: int, upstream: str, pki: PkiPaths, public_key: Path, policies: Path, audit: object
) -> None:
    tls = {"ca": str(pki.ca_cert), "cert": str(pki.gateway_cert), "key": str(pki.gateway_key)}
    key = {"pem": str(public_key), "algorithms": ["ES256"]}
    issuer = {"issuer": ISSUER, "audiences": [AUDIENCE], "keys": [key]}
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "graceful_shutdown_s": 1,
        "auth": {"issuers": [issuer]},
        "policy_dir": str(policies),
        "redis": {"url": f"unix://{path.parent}/no-redis.sock"},  # never called: no budget, no cache
        "upstreams": [{"name": "mock", "models": [MODEL], "workers": [upstream], "tls": tls}],
    }
    if audit is not None:
        settings["audit"] = audit
    path.write_text(yaml.safe_dump(settings, sort_keys=False))


@contextmanager
def audit_gateways(root: Path, disk_dir: Path | None) -> Iterator[list[Gateway]]:
    """Start the mock and the three gateways; yield them once each serves; stop them all."""
    pki, _ = init_pki(root / "pki")
    keys = generate_keys(root / "audit-keys", _PASSPHRASE)
    public_key, tokens = mint_tokens(root, ("bench",))
    policies = _write_policy(root)
    mock_tls_port, mock_port = free_port(), free_port()
    upstream = f"https://localhost:{mock_tls_port}"
    with ExitStack() as stack:
        tmpfs = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=TMPFS, prefix="audit-bench-")))
        disk = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=disk_dir, prefix="audit-bench-")))

        def start(name: str, module: str, *args: str) -> ServiceProcess:
            service = ServiceProcess.python_module(module, *args, log_path=root / f"{name}.log")
            return stack.enter_context(service)

        mock = start(
            "mock", "bench._mock_upstream", "mock", "--pki", str(pki.root), "--tls-port", str(mock_tls_port),
            "--plain-port", str(mock_port), "--model", MODEL,
        )  # fmt: skip
        mock.wait_http(f"http://127.0.0.1:{mock_port}/health", timeout_s=60)  # before the gateways probe it
        gateways: list[tuple[ServiceProcess, Gateway]] = []
        for name, log, audit_dir in [
            ("audit off", "-", None),
            ("audit on", f"tmpfs {TMPFS}", tmpfs / "log"),
            ("audit on", f"disk {disk.parent}", disk / "log"),
        ]:
            audit = None
            if audit_dir is not None:
                audit = {
                    "directory": str(audit_dir),
                    "auditor_public_key": str(keys.auditor_public),
                    "signing_key": str(keys.signing_private),
                    "hmac_key": "b" * 32,  # >= 32 bytes
                }
            port, config = free_port(), root / f"gateway-{len(gateways)}.yaml"
            _write_settings(config, port, upstream, pki, public_key, policies, audit)
            service = start(f"gateway-{len(gateways)}", "gateway", "serve", "--config", str(config))
            url = f"http://127.0.0.1:{port}"
            target = Target(name, url, {"Authorization": f"Bearer {tokens['bench']}"})
            gateways.append((service, Gateway(name, log, target, audit_dir)))
        for service, gateway in gateways:
            service.wait_http(gateway.target.url + "/healthz", timeout_s=60)
            check_serves(service, gateway.target)
        yield [gateway for _, gateway in gateways]


def fdatasync_ms(directory: Path, count: int) -> dict[str, float]:
    """The file system's own cost for one durable 1 KB append: the floor under every group commit."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sync = getattr(os, "fdatasync", os.fsync)
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 1023 + b"\n")
            sync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


Run = tuple[OpenLoopResult, float | None]  # and the log's fdatasync p50 right after it (ms)


async def _measure(gateways: list[Gateway], mode: Mode) -> dict[int, Run]:
    """Each gateway ``mode.repeats`` times, alternating the order; the run with the lower p50 is kept.

    A disk's fsync latency drifts (e.g. while it writes back earlier data), so the log's file system
    is probed right after each run rather than once for the whole benchmark.
    """
    best: dict[int, Run] = {}
    order = list(range(len(gateways)))
    for repeat in range(mode.repeats):
        for index in order if repeat % 2 == 0 else reversed(order):
            gateway = gateways[index]
            target = gateway.target
            endpoint, request = build_request(chat_url(target.url), target.body, target.headers)
            result = await run_open_loop(
                endpoint, request, rate=RATE, duration_s=mode.window_s, warmup_s=mode.warmup_s
            )
            log = gateway.audit_dir
            fsync = None if log is None else fdatasync_ms(log.parent, 100)["p50_ms"]
            if index not in best or result.latency_ms(50) < best[index][0].latency_ms(50):
                best[index] = (result, fsync)
    return best


def build_rows(gateways: list[Gateway], runs: dict[int, Run]) -> list[GatewayRow]:
    """One row per gateway; added = this gateway's percentile minus the first (audit off) one's."""
    base = runs[0][0]
    rows = []
    for index, gateway in enumerate(gateways):
        result, fsync = runs[index]
        p50, p99 = result.latency_ms(50), result.latency_ms(99)
        records = log_stats(gateway.audit_dir).records if gateway.audit_dir is not None else None
        lag = percentile(result.lag_ns, 99) / 1e6 if result.lag_ns else math.nan
        rows.append(
            GatewayRow(
                gateway.name, gateway.log, p50, p99, p50 - base.latency_ms(50), p99 - base.latency_ms(99),
                fsync, len(result.latencies_ns), result.errors, result.max_in_flight, lag, records,
            )
        )  # fmt: skip
    return rows


def measure_gateways(quick: bool, disk_dir: Path | None) -> list[GatewayRow]:
    """Rows for audit off, on with the log on tmpfs, and on with it on ``disk_dir``'s file system."""
    with (
        tempfile.TemporaryDirectory(prefix="audit-gateway-") as tmp,
        audit_gateways(Path(tmp), disk_dir) as gws,
    ):
        results = uvloop.run(_measure(gws, QUICK if quick else FULL))
        return build_rows(gws, results)


def row_json(row: GatewayRow) -> dict[str, object]:
    """One JSON row; NaN (no responses) becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}
