"""A one-minute soak of the whole stack at a fixed rate: bench/soak.py, sized for `make test`.

The real gateway (audit, Redis cache and limits, guards, metrics, tracing), the real worker and a
real redis-server, driven open loop with the fixed-seed mix of cache hits and misses, blocked
injections, redacted answers and a rate-limited caller. The ten-minute run is ``python -m bench
soak``; this one checks the same properties with bounds that hold on a shared two-core machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._soak_mix import CATEGORIES, RATE_LIMITED, Category, Expect
from bench.soak import SoakConfig, SoakReport, print_report, run_soak

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]

CONFIG = SoakConfig(rate=4.0, duration_s=60.0, warmup_s=30.0, sample_interval_s=1.0)
P99_BOUND_MS = 15_000.0  # overall p99 was 1.4-1.8 s here, 4 s under a busy neighbour: 15 s is stuck
# The ten-minute bench's 5 % holds at one minute too: over three runs of this configuration the
# largest growth was +0.27 % (worker), redis moved -0.23 % to +0.13 %, gateway and span exporter
# under +0.15 %. That needs the warm-up's burst (bench/soak.py, PEAK_BATCH): without it a queue
# mid-run grows the worker's batch-sized buffers to a new high-water mark (+6.7 % once in ten minutes).
MEMORY_GROWTH_BOUND = 0.05


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> SoakReport:
    report = run_soak(Path(tmp_path_factory.mktemp("soak")), CONFIG)
    print_report(report)  # shown with a failing test's captured output
    return report


def test_no_request_gets_an_unexpected_answer(report: SoakReport) -> None:
    assert dict(report.errors) == {}
    scheduled = round(CONFIG.rate * (CONFIG.warmup_s + CONFIG.duration_s))
    assert sum(1 for r in report.results if r.number >= 0) == scheduled
    assert all(r.status for r in report.results)  # every request was answered


def test_the_load_keeps_to_its_schedule(report: SoakReport) -> None:
    assert report.throughput >= 0.9 * CONFIG.rate
    assert report.late_starts <= 0.05 * len(report.results)


@pytest.mark.parametrize("category", CATEGORIES, ids=lambda c: c.name)
def test_every_category_is_seen_with_its_expected_outcome(report: SoakReport, category: Category) -> None:
    results = [r for r in report.results if r.category == category.name]
    expect = category.expect
    assert len(results) >= 5
    statuses = {r.status for r in results}
    if expect is Expect.HIT:
        assert {r.cache for r in results} == {"hit"} and statuses == {200}
    elif expect is Expect.MISS:
        assert {r.cache for r in results} == {"miss"} and statuses == {200}
    elif expect is Expect.BLOCKED:
        assert statuses == {400}
    elif expect is Expect.REDACTED:
        assert statuses == {200}
        assert all(r.placeholders >= 1 and r.planted == 0 for r in results)
    else:
        assert statuses == {200, RATE_LIMITED[0]}  # the bucket runs dry, and refills


def test_the_gateway_counts_every_redaction(report: SoakReport) -> None:
    in_answers = sum(r.placeholders for r in report.results)
    assert in_answers > 0
    assert report.pii_redacted.get("EMAIL_ADDRESS", 0) >= in_answers


def test_p99_latency_stays_bounded(report: SoakReport) -> None:
    assert report.latency_ms(99) < P99_BOUND_MS


def test_the_audit_log_verifies_with_one_record_per_answer(report: SoakReport) -> None:
    assert report.audit_records is not None, report.audit_output
    assert report.audit_records == report.answered == len(report.results)


def test_memory_stays_flat_after_warm_up(report: SoakReport) -> None:
    assert {g.process for g in report.memory} == {"gateway", "span_exporter", "worker", "redis"}
    grown = {g.process: round(g.growth, 4) for g in report.memory if g.growth >= MEMORY_GROWTH_BOUND}
    assert grown == {}
