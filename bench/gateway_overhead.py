"""What the gateway adds per request, against a fast mock worker and a bare pass-through, in one run.

python -m bench.gateway_overhead [--quick] [--json PATH] [--target URL --header 'Name: value' ...]

Targets, measured side by side at each concurrency (1, 16, 64) with keep-alive connections and
non-streaming chat completions:
  direct   the mock worker itself, over plain HTTP (the baseline every "added" figure subtracts);
  floor    a bare Starlette + httpx pass-through to the mock's mTLS port (no auth, no policy);
  gateway  ``python -m gateway serve``: JWT (ES256) + RBAC policy + mTLS routing to the mock,
           plain HTTP listener, output PII redaction off;
  gw+budget the same gateway for a role with a rate limit and token budgets that never run out
           (Redis: one atomic reserve before and one settle after each request);
  gw+cache the same gateway for a role with the response cache on and deterministic requests:
           after the first, every request is a hit served from Redis;
  gw-no-tel the gateway with its per-request metrics off and no tracing (the telemetry baseline);
  gw+traces the gateway with OTEL_* set: every trace recorded and exported over OTLP/HTTP to a
           local receiver (bench._otlp_sink), as a collector would take them;
  gw+traces10 the same with 10% of traces sampled (parentbased_traceidratio 0.1);
  target   any OpenAI-compatible gateway (``--target``), routed by its own configuration.
Every cell runs ``repeats`` times, alternating the targets' order, and keeps the run with the
most requests per second. CPU ms per request is the target process's user + system time over
the measured window (/proc); the load generator, the mock and the target share this machine's
cores, so every figure includes their contention.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import jwt
import uvloop
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from bench._common import format_table, pass_fail
from bench._loadgen import LoadResult, build_request, run_load
from gateway.pki import PkiPaths, init_pki
from tests.support.ports import free_port
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

CONCURRENCY = (1, 16, 64)
MODEL = "mock-model"
ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "warden-bench"
TARGET_ADDED_P50_MS = 1.0  # at concurrency 1
TARGET_RPS = 1000.0  # at concurrency 16
TARGET_TELEMETRY_LOSS = 0.10  # throughput lost to metrics and traces, at concurrency 16
TARGET_CACHE_HIT_P50_MS = 1.5  # at concurrency 1, gateway with the cache on, every request a hit
ROW_FIELDS = (
    "target", "concurrency", "rps", "p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms",
    "cpu_ms_per_req", "requests", "errors",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Mode:
    window_s: float
    warmup_s: float
    repeats: int
    telemetry_rounds: int = 0


FULL = Mode(window_s=8.0, warmup_s=1.0, repeats=2, telemetry_rounds=7)
QUICK = Mode(window_s=2.0, warmup_s=0.4, repeats=2, telemetry_rounds=3)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str  # base URL; requests go to {url}/v1/chat/completions
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the process whose CPU time is charged to this target
    ssl_context: ssl.SSLContext | None = None
    model: str = MODEL
    extra_body: dict[str, object] = field(default_factory=dict)
    sink_url: str | None = None  # the OTLP receiver this target's traces go to

    @property
    def body(self) -> bytes:
        messages = [{"role": "user", "content": "Say hello in five words."}]
        body = {"model": self.model, "messages": messages, "max_tokens": 16, **self.extra_body}
        return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class Cell:
    result: LoadResult
    cpu_s: float | None  # the target process's CPU seconds over the measured window


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    cpu_ms_per_req: float | None
    requests: int
    errors: int


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of every thread of ``pid`` and of its running children (a
    traced gateway's span exporter process is part of its cost), from Linux /proc."""
    total = 0.0
    for one in (pid, *child_pids(pid)):
        try:
            stat = Path(f"/proc/{one}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(child) for child in task.read_text().split()]
    return children


def chat_url(base: str) -> str:
    base = base.rstrip("/")
    return f"{base.removesuffix('/v1')}/v1/chat/completions"


async def measure_cell(target: Target, concurrency: int, mode: Mode) -> Cell:
    endpoint, request = build_request(chat_url(target.url), target.body, target.headers)
    marks: list[float] = []

    def on_window(_start: bool) -> None:
        if target.pid is not None:
            marks.append(process_cpu_s(target.pid))

    result = await run_load(
        endpoint, request, concurrency=concurrency, duration_s=mode.window_s, warmup_s=mode.warmup_s,
        ssl_context=target.ssl_context, on_window=on_window,
    )  # fmt: skip
    return Cell(result, marks[1] - marks[0] if len(marks) == 2 else None)


async def measure(
    targets: list[Target], concurrencies: tuple[int, ...], mode: Mode
) -> dict[tuple[str, int], Cell]:
    """Each (target, concurrency) cell ``mode.repeats`` times, alternating order; the best run wins."""
    best: dict[tuple[str, int], Cell] = {}
    for concurrency in concurrencies:
        for repeat in range(mode.repeats):
            for target in targets if repeat % 2 == 0 else reversed(targets):
                cell = await measure_cell(target, concurrency, mode)
                key = (target.name, concurrency)
                if key not in best or cell.result.rps > best[key].result.rps:
                    best[key] = cell
    return best


def build_rows(cells: dict[tuple[str, int], Cell], baseline: str = "direct") -> list[Row]:
    rows = []
    for (name, concurrency), cell in cells.items():
        result, base = cell.result, cells[(baseline, concurrency)].result
        p50, p99 = result.latency_ms(50), result.latency_ms(99)
        cpu = cell.cpu_s * 1000 / result.requests if cell.cpu_s is not None and result.requests else None
        added_p50, added_p99 = p50 - base.latency_ms(50), p99 - base.latency_ms(99)
        row = Row(
            name, concurrency, result.rps, p50, p99, added_p50, added_p99, cpu, result.requests, result.errors
        )
        rows.append(row)
    return sorted(rows, key=lambda r: r.concurrency)


def row_json(row: Row) -> dict[str, object]:
    """One JSON row; NaN (no responses) becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(row).items()}


def table(rows: list[Row]) -> str:
    headers = ["target", "conc", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "CPU ms/req", "errors"]

    def cells(r: Row) -> list[str]:
        cpu = "-" if r.cpu_ms_per_req is None else f"{r.cpu_ms_per_req:.3f}"
        latency = [f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.added_p50_ms:+.2f}", f"{r.added_p99_ms:+.2f}"]
        return [r.target, str(r.concurrency), f"{r.rps:.0f}", *latency, cpu, str(r.errors)]

    return format_table(headers, [cells(r) for r in rows])


def checks(rows: list[Row], name: str = "gateway") -> list[tuple[str, bool]]:
    """The issue's targets for one target's rows, as (line, passed)."""
    by_concurrency = {r.concurrency: r for r in rows if r.target == name}
    lines = []
    if (one := by_concurrency.get(1)) is not None:
        ok = one.errors == 0 and one.added_p50_ms <= TARGET_ADDED_P50_MS
        lines.append((f"{name} added p50 at c=1: {one.added_p50_ms:.2f} ms (<= {TARGET_ADDED_P50_MS:g})", ok))
    if (sixteen := by_concurrency.get(16)) is not None:
        ok = sixteen.errors == 0 and sixteen.rps >= TARGET_RPS
        lines.append((f"{name} req/s at c=16: {sixteen.rps:.0f} (>= {TARGET_RPS:.0f})", ok))
    return lines


# --- the services ------------------------------------------------------------------------------


def cache_checks(rows: list[Row]) -> list[tuple[str, bool]]:
    """Cache hits: added p50 at concurrency 1; and what the budget check costs per request."""
    by = {(r.target, r.concurrency): r for r in rows}
    lines = []
    hit = by.get(("gw+cache", 1))
    if hit is not None:
        ok = hit.errors == 0 and hit.added_p50_ms <= TARGET_CACHE_HIT_P50_MS
        line = f"gw+cache hit added p50 at c=1: {hit.added_p50_ms:.2f} ms (<= {TARGET_CACHE_HIT_P50_MS:g})"
        lines.append((line, ok))
    plain, budget = by.get(("gateway", 16)), by.get(("gw+budget", 16))
    if plain and budget and plain.cpu_ms_per_req is not None and budget.cpu_ms_per_req is not None:
        cost = (budget.cpu_ms_per_req - plain.cpu_ms_per_req) * 1000
        lines.append((f"budget check CPU per request at c=16: {cost:+.0f} us (reported)", True))
    return lines


TELEMETRY_VARIANTS = (
    ("gateway", "metrics"),
    ("gw+traces", "metrics + every trace exported"),
    ("gw+traces10", "metrics + 10% of traces exported"),
)


@dataclass(frozen=True, slots=True)
class TelemetryCost:
    target: str
    what: str
    median_rps: float
    losses: list[float]  # per round: 1 - rps / rps of gw-no-tel in the same round
    extra_cpu_us: list[float]  # per round: CPU µs per request (gateway + exporter) over gw-no-tel's
    base_cpu_us: float  # gw-no-tel's median CPU µs per request

    @property
    def median_loss(self) -> float:
        return statistics.median(self.losses)

    @property
    def median_extra_cpu_us(self) -> float:
        return statistics.median(self.extra_cpu_us)


async def measure_telemetry(targets: list[Target], rounds: int, mode: Mode) -> list[TelemetryCost]:
    """Paired rounds at c=16: each round measures the baseline and every variant back to back (order
    rotating), so that the machine's drift cancels in each round's ratio; the median is reported."""
    by_name = {t.name: t for t in targets}
    names = ["gw-no-tel", *(name for name, _ in TELEMETRY_VARIANTS if name in by_name)]
    if "gw-no-tel" not in by_name or len(names) < 2:
        return []
    rps: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}  # the process tree's µs per request
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            cell = await measure_cell(by_name[name], 16, mode)
            rps[name].append(cell.result.rps if cell.result.errors == 0 else math.nan)
            requests = cell.result.requests
            cpu[name].append(cell.cpu_s / requests * 1e6 if cell.cpu_s is not None and requests else math.nan)
    costs = []
    for name, what in TELEMETRY_VARIANTS:
        if name in rps:
            losses = [1.0 - v / b for v, b in zip(rps[name], rps["gw-no-tel"], strict=True) if b > 0]
            extra = [v - b for v, b in zip(cpu[name], cpu["gw-no-tel"], strict=True)]
            base = statistics.median(cpu["gw-no-tel"])
            costs.append(TelemetryCost(name, what, statistics.median(rps[name]), losses, extra, base))
    return costs


def telemetry_table(costs: list[TelemetryCost]) -> str:
    header = ["variant", "median req/s", "median loss", "min loss", "max loss", "+CPU µs/req", "+CPU"]
    header.append("rounds")
    body = []
    for c in costs:
        extra = c.median_extra_cpu_us
        body.append([
            c.target, f"{c.median_rps:.0f}", f"{c.median_loss:+.1%}", f"{min(c.losses):+.1%}",
            f"{max(c.losses):+.1%}", f"{extra:+.0f}", f"{extra / c.base_cpu_us:+.1%}", str(len(c.losses)),
        ])  # fmt: skip
    return format_table(header, body)


def telemetry_checks(costs: list[TelemetryCost]) -> list[tuple[str, bool]]:
    """Throughput lost to telemetry at c=16 (median of paired rounds) against the gateway with its
    per-request metrics off and no tracing."""
    lines = []
    for cost in costs:
        ok = not math.isnan(cost.median_loss) and cost.median_loss <= TARGET_TELEMETRY_LOSS
        loss, target = f"{cost.median_loss:+.1%}", f"{TARGET_TELEMETRY_LOSS:.0%}"
        line = f"telemetry cost ({cost.what}) at c=16: {loss} req/s (<= {target})"
        lines.append((line, ok))
    return lines


def mint_tokens(root: Path, roles: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A fresh ES256 key pair: the public PEM for the gateway, and one token per role."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = root / "jwt-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    tokens = {}
    for role in roles:
        claims = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": f"{role}-user", "groups": [role],
            "iat": now, "exp": now + 3600,
        }  # fmt: skip
        tokens[role] = jwt.encode(claims, key, algorithm="ES256")
    return public, tokens


def write_gateway_config(
    root: Path, port: int, upstream: str, pki: PkiPaths, public_key: Path, redis_url: str,
    *, name: str = "gateway", extra: dict[str, object] | None = None,
) -> Path:  # fmt: skip
    policies = root / f"{name}-policies"
    policies.mkdir()

    def binding(role: str) -> dict[str, object]:
        return {"name": role, "when": {"claim": "groups", "contains": role}, "roles": [role]}

    base = {"models": [MODEL], "max_tokens": 64, "guards": {"pii": {"redact_output": False}}}
    generous = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000}
    policy = {
        "version": 1,
        "bindings": [binding("bench"), binding("bench-budget"), binding("bench-cache")],
        "roles": {
            "bench": base,
            # The same, plus a request rate and a token budget that never run out: the check's cost.
            "bench-budget": {**base, "budget": generous},
            # The same, plus the response cache: deterministic requests are served from Redis.
            "bench-cache": {**base, "cache": {"enabled": True, "ttl_s": 3600}},
        },
    }
    (policies / "bench.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "graceful_shutdown_s": 1,
        "auth": {
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "keys": [{"pem": str(public_key), "algorithms": ["ES256"]}],
                }
            ]
        },
        "policy_dir": str(policies),
        "redis": {"url": redis_url},
        "upstreams": [
            {
                "name": "mock",
                "models": [MODEL],
                "workers": [upstream],
                "tls": {"ca": str(pki.ca_cert), "cert": str(pki.gateway_cert), "key": str(pki.gateway_key)},
            }
        ],
        **(extra or {}),
    }
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return config


def check_serves(service: ServiceProcess | None, target: Target) -> None:
    """One request through the target must succeed before it is measured."""
    headers = {"content-type": "application/json", **target.headers}
    verify = target.ssl_context or True
    response = httpx.post(
        chat_url(target.url), content=target.body, headers=headers, verify=verify, timeout=10
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"{target.name}: HTTP {response.status_code} {response.text[:300]}\n"
            + (service.logs()[-2000:] if service else "")
        )


def pid_of(service: ServiceProcess) -> int:
    if service.process is None:
        raise RuntimeError(f"{service.args[:4]} was not started")
    return service.process.pid


Starter = Callable[..., ServiceProcess]


Variant = tuple[str, dict[str, str] | None, dict[str, object], str | None]


def telemetry_variants(start: Starter) -> list[Variant]:
    """(name, environment, settings, receiver URL) of the telemetry gateways; each traced one gets an
    OTLP receiver of its own, so that what reached it can be counted."""

    def receiver(name: str) -> str:
        port = free_port()
        sink = start("bench._otlp_sink", "--port", str(port), log=f"otlp-sink-{name}.log")
        sink.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
        return f"http://127.0.0.1:{port}"

    variants: list[Variant] = [("gw-no-tel", None, {"metrics": {"requests": False}}, None)]
    for name, ratio in (("gw+traces", "1.0"), ("gw+traces10", "0.1")):
        url = receiver(name)
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio,
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }
        variants.append((name, env, {}, url))
    return variants


def traces_delivered(targets: list[Target]) -> list[str]:
    """For each traced gateway: traces its receiver got against the requests the gateway answered."""
    lines = []
    for target in targets:
        if target.sink_url is None:
            continue
        scraped = httpx.get(f"{target.url}/metrics", timeout=10).text
        answered = sum(
            sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
            if sample.name == "warden_gateway_requests_total"
        )
        received = httpx.get(f"{target.sink_url}/stats", timeout=10).json()
        share = received["traces"] / answered if answered else 0.0
        lines.append(
            f"{target.name}: {received['traces']} traces ({received['spans']} spans) reached the receiver "
            f"for {answered:.0f} requests answered ({share:.1%})"
        )
    return lines


@contextmanager
def local_targets(
    root: Path,
    *,
    with_gateway: bool,
    pki_dir: Path | None,
    mock_port: int,
    mock_tls_port: int,
    with_telemetry: bool = False,
) -> Iterator[list[Target]]:
    """Start the mock, the floor and (optionally) the gateway; yield them as targets; stop them all."""
    pki, _ = init_pki(pki_dir or root / "pki")
    upstream = f"https://localhost:{mock_tls_port}"
    floor_port, gateway_port = free_port(), free_port()
    with ExitStack() as stack:

        def start(module: str, *args: str, log: str, env: dict[str, str] | None = None) -> ServiceProcess:
            environ = {**os.environ, **env} if env else None
            service = ServiceProcess.python_module(module, *args, log_path=root / log, env=environ)
            return stack.enter_context(service)

        mock = start(
            "bench._mock_upstream", "mock", "--pki", str(pki.root), "--tls-port", str(mock_tls_port),
            "--plain-port", str(mock_port), "--model", MODEL, log="mock.log",
        )  # fmt: skip
        floor = start(
            "bench._mock_upstream", "floor", "--pki", str(pki.root), "--port", str(floor_port),
            "--upstream", upstream, log="floor.log",
        )  # fmt: skip
        started = [
            (mock, Target("direct", f"http://127.0.0.1:{mock_port}", pid=pid_of(mock)), "/health"),
            (floor, Target("floor", f"http://127.0.0.1:{floor_port}", pid=pid_of(floor)), "/health"),
        ]
        if with_gateway:
            redis = RedisServer(root / "redis").start()
            stack.callback(redis.stop)
            public_key, tokens = mint_tokens(root, ("bench", "bench-budget", "bench-cache"))
            config = write_gateway_config(root, gateway_port, upstream, pki, public_key, redis.url)
            gateway = start("gateway", "serve", "--config", str(config), log="gateway.log")
            url = f"http://127.0.0.1:{gateway_port}"
            pid = pid_of(gateway)

            def auth(role: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {tokens[role]}"}

            deterministic: dict[str, object] = {"temperature": 0}
            started += [
                (gateway, Target("gateway", url, auth("bench"), pid=pid), "/healthz"),
                (gateway, Target("gw+budget", url, auth("bench-budget"), pid=pid), "/healthz"),
                (
                    gateway,
                    Target("gw+cache", url, auth("bench-cache"), pid=pid, extra_body=deterministic),
                    "/healthz",
                ),
            ]
            if with_telemetry:
                for name, env, extra, sink_url in telemetry_variants(start):
                    port = free_port()
                    config = write_gateway_config(
                        root, port, upstream, pki, public_key, redis.url, name=name, extra=extra
                    )
                    variant = start("gateway", "serve", "--config", str(config), log=f"{name}.log", env=env)
                    target = Target(
                        name,
                        f"http://127.0.0.1:{port}",
                        auth("bench"),
                        pid=pid_of(variant),
                        sink_url=sink_url,
                    )
                    started.append((variant, target, "/healthz"))
        for service, target, health in started:
            service.wait_http(target.url + health, timeout_s=60)
            check_serves(service, target)
        yield [target for _, target, _ in started]


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--header expects 'Name: value', got {value!r}")
        headers[name.strip()] = content.strip()
    return headers


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_overhead", description=__doc__, formatter_class=formatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s windows (the whole run < 60 s)")
    parser.add_argument("--json", type=Path, help="write one row per (target, concurrency) here")
    parser.add_argument("--target", help="base URL of another OpenAI-compatible gateway to measure too")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' sent to --target")
    parser.add_argument("--cacert", type=Path, help="CA file that verifies an https --target")
    parser.add_argument("--model", default=MODEL, help="model name sent to --target (default: %(default)s)")
    parser.add_argument("--no-gateway", action="store_true", help="measure direct, floor and --target only")
    parser.add_argument(
        "--no-telemetry", action="store_true", help="skip the gateways with telemetry off / traces exported"
    )
    parser.add_argument("--telemetry-only", action="store_true", help="only the paired telemetry rounds")
    parser.add_argument("--pki", type=Path, help="keep the mock's certificates here (for --target's config)")
    parser.add_argument("--mock-port", type=int, default=0, help="the mock's plain-HTTP port (default: free)")
    parser.add_argument("--mock-tls-port", type=int, default=0, help="the mock's mTLS port (default: free)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    try:
        external = parse_headers(args.header)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    mock_port, mock_tls_port = args.mock_port or free_port(), args.mock_tls_port or free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_targets(
            Path(tmp), with_gateway=not args.no_gateway, pki_dir=args.pki, mock_port=mock_port,
            mock_tls_port=mock_tls_port, with_telemetry=not (args.no_gateway or args.no_telemetry),
        ) as targets,
    ):  # fmt: skip
        if args.target:
            external_target = Target("target", args.target, external, None, context, args.model)
            check_serves(None, external_target)
            targets.append(external_target)
        print(
            f"chat completions (non-streaming, keep-alive), {mode.window_s:g} s windows after "
            f"{mode.warmup_s:g} s warm-up, best of {mode.repeats}; added = target - direct"
            + (f"; target = {args.target}" if args.target else "")
            + "\n"
        )
        cells = {} if args.telemetry_only else uvloop.run(measure(targets, CONCURRENCY, mode))
        costs = uvloop.run(measure_telemetry(targets, mode.telemetry_rounds, mode))
        time.sleep(1.0)  # the exporters' batches go out every 0.5 s (OTEL_BSP_SCHEDULE_DELAY)
        delivered = traces_delivered(targets)

    rows = build_rows(cells)
    print(table(rows))
    if costs:
        print(
            "\ntelemetry, paired rounds at c=16 (loss = 1 - req/s / req/s of gw-no-tel in the same round)\n"
        )
        print(telemetry_table(costs))
        for line in delivered:
            print(line)
    results = [
        *checks(rows, "gateway"), *checks(rows, "target"), *cache_checks(rows), *telemetry_checks(costs),
    ]  # fmt: skip
    for line, ok in results:
        print(f"{line}: {pass_fail(ok)}")
    failed = [r for r in rows if r.errors]
    if failed:
        print(
            f"errors (non-200 or dropped) in {len(failed)} cell(s): not valid measurements", file=sys.stderr
        )
    if args.json:
        args.json.write_text(json.dumps([row_json(r) for r in rows], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
