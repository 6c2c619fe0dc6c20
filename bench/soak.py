"""A long run at a fixed request rate through the whole stack: latency, errors and memory growth.

python -m bench.soak [--duration S] [--rate R] [--warmup S] [--quick] [--json PATH] [--workdir DIR]

Open loop: request ``n`` goes out at ``n / rate`` seconds whether or not earlier ones have finished
(a start more than 10 ms behind its schedule counts as late); those due after the warm-up are
measured. It reaches the real gateway
(audit, Redis cache and limits, guards, metrics, tracing) in front of the real worker, with a fixed-
seed mix of callers and outcomes (bench/_soak_mix.py): cache hits and misses, streamed and whole,
prompt injections the guard blocks, answers whose planted e-mail address is redacted, and a caller
over its rate limit. Latency runs from a request's scheduled time to the last byte of its answer.

Before the schedule: each cacheable prompt once (so every scheduled hit is one) and one burst of
as many misses as the worker batches at most, so that buffers sized by the largest batch are at
their peak before memory is measured. The warm-up then runs the schedule for ``--warmup`` seconds.

Every few seconds the resident memory of the gateway, its span exporter, the worker and
redis-server is sampled; growth = (mean over the last window - mean over the first window after
warm-up) / the latter. At the end the gateway is stopped and ``python -m gateway audit verify``
must vouch for one record per answered request. Exit status 1 on any unexpected answer, on memory
growth of 5 % or more, or on an audit log that does not verify or does not match.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench._common import format_table, pass_fail, percentile
from bench._rss import Growth, RssSampler, growth
from bench._soak_mix import (
    CATEGORIES,
    PLACEHOLDER,
    PLANTED,
    Answer,
    Category,
    Expect,
    Planned,
    choice_text,
    error_code,
    parse_sse,
    peak_burst,
    primers,
    schedule,
    unexpected,
)
from bench._soak_stack import SoakStack, scrape_counters, soak_stack, verified_records

# The CPU worker serves about 10 short chat completions a second on this 2-core machine while the
# gateway and the client share it; 4 req/s sends it under 2 (the rest are cache hits, blocks and
# refusals), leaving headroom for a noisy neighbour.
RATE = 4.0
DURATION_S = 600.0
WARMUP_S = 90.0
LATE_S = 0.010
REQUEST_TIMEOUT_S = 60.0
# The worker's largest batch (its default max_num_seqs): the warm-up sends that many misses at once.
# Its decode buffers and the allocator's arenas grow to the largest batch seen and stay there; without
# the burst, the first queue a noisy neighbour causes mid-run raised the worker's RSS by 6.7 % in
# 10 minutes, a high-water mark rather than a leak.
PEAK_BATCH = 64
MAX_GROWTH = 0.05


@dataclass(frozen=True, slots=True)
class SoakConfig:
    rate: float = RATE
    duration_s: float = DURATION_S  # measured, after the warm-up
    warmup_s: float = WARMUP_S
    sample_interval_s: float = 2.0
    seed: int = 7

    @property
    def window_s(self) -> float:
        """The length of the memory windows compared: a sixth of the run, at most a minute."""
        return min(60.0, self.duration_s / 6)


@dataclass(frozen=True, slots=True)
class Result:
    number: int  # -1: a cache primer
    category: str
    due_s: float  # scheduled time since the load began
    done_s: float  # when the answer was complete (or the request failed)
    lag_s: float  # how late it was sent
    status: int  # 0: no answer
    error: str | None  # the kind of unexpected outcome
    cache: str  # the x-cache header
    placeholders: int  # PLACEHOLDER occurrences in the answer
    planted: int  # occurrences of the planted addresses in the answer (must stay 0)

    @property
    def latency_s(self) -> float:
        return self.done_s - self.due_s


@dataclass
class SoakReport:
    config: SoakConfig
    results: list[Result]
    memory: list[Growth]
    samples: list[dict[str, float]]  # at_s and each process's RSS in MiB
    audit_records: int | None
    audit_output: str
    pii_redacted: dict[str, float] = field(default_factory=dict)  # entity type -> gateway's counter

    @property
    def measured(self) -> list[Result]:
        return [r for r in self.results if r.due_s >= self.config.warmup_s]

    @property
    def answered(self) -> int:
        return sum(1 for r in self.results if r.status)

    @property
    def errors(self) -> Counter[str]:
        return Counter(r.error for r in self.results if r.error is not None)

    @property
    def late_starts(self) -> int:
        return sum(1 for r in self.results if r.lag_s > LATE_S)

    @property
    def throughput(self) -> float:
        """Answers completed per second inside the measured window."""
        start = self.config.warmup_s
        end = start + self.config.duration_s
        return sum(1 for r in self.results if r.status and start <= r.done_s < end) / self.config.duration_s

    def latency_ms(self, q: float, category: str | None = None) -> float:
        values = [r.latency_s for r in self.measured if r.status and category in (None, r.category)]
        return percentile(values, q) * 1000 if values else math.nan

    def outcomes(self, category: str) -> Counter[str]:
        """Per category: status codes of the answers, 'unexpected' for those that were not as expected."""
        return Counter(
            "unexpected" if r.error else str(r.status) for r in self.results if r.category == category
        )

    def checks(self) -> list[tuple[str, bool]]:
        every_category = all(self.outcomes(c.name)[_ok(c)] for c in CATEGORIES)
        bounded = all(g.growth < MAX_GROWTH for g in self.memory)
        return [
            ("no unexpected answers", not self.errors),
            ("every category answered as expected", every_category),
            (f"memory growth < {MAX_GROWTH:.0%} per process", bounded),
            ("audit log verifies, one record per answer", self.audit_records == self.answered),
        ]


def _ok(category: Category) -> str:
    return "400" if category.expect is Expect.BLOCKED else "200"


# --- sending ------------------------------------------------------------------------------------


async def _exchange(client: httpx.AsyncClient, planned: Planned, token: str) -> Answer:
    headers = {"authorization": f"Bearer {token}"}
    async with client.stream("POST", planned.path, json=planned.body, headers=headers) as response:
        body = await response.aread()
    cache = response.headers.get("x-cache", "")
    if response.status_code != 200:
        return Answer(response.status_code, cache, error_code(body), "", False)
    if planned.category.stream:
        text, done = parse_sse(body)
        return Answer(200, cache, "", text, done)
    return Answer(200, cache, "", choice_text(json.loads(body)), False)


async def send(
    client: httpx.AsyncClient, stack: SoakStack, planned: Planned, begin: float, due_s: float
) -> Result:
    lag = time.perf_counter() - begin - due_s
    answer = Answer(0, "", "", "", False)
    try:
        answer = await _exchange(client, planned, stack.tokens[planned.category.caller])
        error = unexpected(planned.category, answer)
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.TransportError as exc:
        error = f"transport_{type(exc).__name__}"
    except ValueError:  # a 200 whose JSON or SSE does not parse
        error = "bad_payload"
    done = time.perf_counter() - begin
    placeholders, planted = answer.text.count(PLACEHOLDER), sum(answer.text.count(a) for a in PLANTED)
    return Result(
        planned.number, planned.category.name, due_s, done, lag, answer.status, error, answer.cache,
        placeholders, planted,
    )  # fmt: skip


async def _run_load(stack: SoakStack, config: SoakConfig, sampler: RssSampler) -> list[Result]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=REQUEST_TIMEOUT_S)
    total = round(config.rate * (config.warmup_s + config.duration_s))
    async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=timeout) as client:
        # Primers go one by one before the schedule starts, so that every scheduled hit is one.
        results = [await send(client, stack, p, time.perf_counter(), 0.0) for p in primers()]
        burst = [send(client, stack, p, time.perf_counter(), 0.0) for p in peak_burst(PEAK_BATCH)]
        results += await asyncio.gather(*burst)
        sampler.start()
        begin = sampler.started
        tasks: list[asyncio.Task[Result]] = []
        for planned in schedule(total, config.seed):
            due_s = planned.number / config.rate
            delay = begin + due_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, stack, planned, begin, due_s)))
        results += await asyncio.gather(*tasks)
        await sampler.stop()
    return [_as_primer(r) if r.number < 0 else r for r in results]


def _as_primer(result: Result) -> Result:
    """Primers and the burst come before the schedule; a primer is a first request, hence a miss."""
    error = result.error if result.error and not result.error.startswith("cache_miss") else None
    return Result(-1, "primer", -1.0, -1.0, 0.0, result.status, error, result.cache, 0, 0)


def run_soak(root: Path, config: SoakConfig) -> SoakReport:
    """Start the stack under ``root``, run the load, stop the gateway and verify its audit log."""
    with soak_stack(root) as stack:
        sampler = RssSampler(stack.pids(), config.sample_interval_s)
        results = asyncio.run(_run_load(stack, config, sampler))
        metrics = httpx.get(f"{stack.url}/metrics", timeout=30).text
        stack.gateway.stop()  # closes the audit log: the last checkpoint is signed
        records, output = verified_records(stack)
    end = config.warmup_s + config.duration_s
    first = (config.warmup_s, config.warmup_s + config.window_s)
    memory = growth(sampler.samples, first, (end - config.window_s, end))
    pii = {
        dict(labels)["entity_type"]: value
        for labels, value in scrape_counters(metrics, "warden_gateway_pii_entities").items()
        if dict(labels).get("direction") == "output"
    }
    timeline: list[dict[str, float]] = [{"at_s": round(s.at_s, 2), **s.rss_mb} for s in sampler.samples]
    return SoakReport(config, results, memory, timeline, records, output, pii)


# --- reporting ----------------------------------------------------------------------------------


def _cell(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def category_table(report: SoakReport) -> str:
    rows = []
    for name in [c.name for c in CATEGORIES] + ["all"]:
        chosen = None if name == "all" else name
        outcomes = Counter() if chosen is None else report.outcomes(name)
        sent = sum(1 for r in report.measured if chosen in (None, r.category))
        shown = " ".join(f"{k}:{v}" for k, v in sorted(outcomes.items()))
        p50, p99 = _cell(report.latency_ms(50, chosen)), _cell(report.latency_ms(99, chosen))
        rows.append([name, str(sent), p50, p99, shown])
    return format_table(["category", "measured", "p50 ms", "p99 ms", "outcomes (whole run)"], rows)


def memory_table(report: SoakReport) -> str:
    rows = [
        [g.process, f"{g.after_warmup_mb:.1f}", f"{g.last_mb:.1f}", f"{g.peak_mb:.1f}", f"{g.growth:+.2%}"]
        for g in report.memory
    ]
    return format_table(["process", "after warm-up MB", "last window MB", "peak MB", "growth"], rows)


def summary(report: SoakReport) -> str:
    config = report.config
    errors = ", ".join(f"{k}: {v}" for k, v in report.errors.most_common()) or "none"
    lags = [r.lag_s for r in report.results if r.number >= 0]
    redacted = sum(r.placeholders for r in report.results)
    return "\n".join([
        f"{config.rate:g} req/s for {config.duration_s:g} s after {config.warmup_s:g} s of warm-up; "
        f"achieved {report.throughput:.2f} answers/s; late starts (> {LATE_S * 1000:.0f} ms): "
        f"{report.late_starts} of {len(lags)} (max {max(lags, default=0) * 1000:.1f} ms)",
        f"unexpected errors: {errors}",
        f"redacted: {redacted} {PLACEHOLDER} in answers; gateway's output PII counter: "
        + (", ".join(f"{k} {v:g}" for k, v in report.pii_redacted.items()) or "none"),
        f"audit: {report.audit_output.splitlines()[-1] if report.audit_output else '-'}; "
        f"{report.answered} answered requests",
    ])  # fmt: skip


def print_report(report: SoakReport) -> None:
    print(summary(report))
    print()
    print(category_table(report))
    print()
    print(memory_table(report))
    print()
    for name, ok in report.checks():
        print(f"{pass_fail(ok)}  {name}")


def report_json(report: SoakReport) -> dict[str, object]:
    def finite(value: float) -> float | None:
        return None if math.isnan(value) else value

    categories = {
        c.name: {
            "outcomes": dict(report.outcomes(c.name)),
            "p50_ms": finite(report.latency_ms(50, c.name)),
            "p99_ms": finite(report.latency_ms(99, c.name)),
        }
        for c in CATEGORIES
    }
    return {
        "config": asdict(report.config),
        "throughput_rps": report.throughput,
        "late_starts": report.late_starts,
        "p50_ms": finite(report.latency_ms(50)),
        "p99_ms": finite(report.latency_ms(99)),
        "categories": categories,
        "errors": dict(report.errors),
        "memory": [{**asdict(g), "growth": g.growth} for g in report.memory],
        "audit_records": report.audit_records,
        "answered": report.answered,
        "pii_redacted": report.pii_redacted,
        "checks": dict(report.checks()),
        "rss_timeline": report.samples,
    }


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=DURATION_S, help="measured seconds after warm-up")
    parser.add_argument("--rate", type=float, default=RATE, help="requests per second")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="60 s after 30 s of warm-up")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the services' logs, audit log and keys here")
    args = parser.parse_args(None if argv is None else list(argv))
    duration, warmup = (60.0, 30.0) if args.quick else (args.duration, args.warmup)
    config = SoakConfig(rate=args.rate, duration_s=duration, warmup_s=warmup)
    if args.workdir:
        args.workdir.mkdir(parents=True)
        report = run_soak(args.workdir, config)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            report = run_soak(Path(tmp), config)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report_json(report), indent=2))
    return 0 if all(ok for _, ok in report.checks()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
