"""The gateway's Prometheus metrics: events counted as requests finish, state read at scrape time.

One ``CollectorRegistry`` per app (never the process-global one). Names follow the Prometheus and
OpenTelemetry conventions: a ``warden_gateway_`` prefix, base units (seconds), ``_total`` counters.
Label values are bounded: routes, steps, decisions, rule ids and entity types come from code and
policy; a model name is a label only once the router serves it, and at most ``MAX_MODEL_LABELS``
distinct names are kept (glob pools could otherwise turn client input into new series).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.loop_metrics import LoopCounter, LoopHistogram, LoopMetricsCollector
from gateway.upstream.breaker import CircuitState

if TYPE_CHECKING:
    from gateway.pipeline import Services

# The *_created series double the exposition for no dashboard use.
disable_created_metrics()  # type: ignore[no-untyped-call]

MAX_MODEL_LABELS = 64
# Gateway steps take from tens of microseconds (authorize) to minutes (a long stream upstream).
STEP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
)  # fmt: skip
_CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class GatewayMetrics:
    """Event metrics updated by ``gateway.telemetry`` on the event loop; ``watch(services)`` adds
    the state read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = LoopCounter(
            "warden_gateway_requests", "Requests by route, served model, status and policy decision.",
            ["route", "model", "status", "decision"],
        )  # fmt: skip
        self.request_duration = LoopHistogram(
            "warden_gateway_request_duration_seconds", "From the first byte read to the finish step.",
            ["route"], STEP_BUCKETS,
        )  # fmt: skip
        self.step_duration = LoopHistogram(
            "warden_gateway_step_duration_seconds",
            "Time spent in each pipeline step.",
            ["step"],
            STEP_BUCKETS,
        )
        self.tokens = LoopCounter(
            "warden_gateway_tokens", "Tokens reported by the workers, by model and type (input, output).",
            ["model", "type"],
        )  # fmt: skip
        self.guard_detections = LoopCounter(
            "warden_gateway_guard_detections", "Prompts over the injection threshold, by rule and action.",
            ["rule", "action"],
        )  # fmt: skip
        self.pii_entities = LoopCounter(
            "warden_gateway_pii_entities", "Personal data redacted, by entity type and direction.",
            ["entity_type", "direction"],
        )  # fmt: skip
        self.audit_write_duration = LoopHistogram(
            "warden_gateway_audit_write_duration_seconds", "Writing a request's audit record (durable).",
            [], STEP_BUCKETS,
        )  # fmt: skip
        events: list[LoopCounter | LoopHistogram] = [
            self.requests, self.request_duration, self.step_duration, self.tokens, self.guard_detections,
            self.pii_entities, self.audit_write_duration,
        ]  # fmt: skip
        self.registry.register(LoopMetricsCollector(events))
        self._models: set[str] = set()

    def watch(self, services: Services) -> None:
        """Read the policy, upstream, Redis, cache, budget and audit state at each scrape."""
        self.registry.register(_StateCollector(services))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def model_label(self, model: str | None) -> str:
        if model is None:
            return "unknown"
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model


class _StateCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        yield from _policy_metrics(self.services)
        yield from _upstream_metrics(self.services)
        yield from _redis_metrics(self.services)
        yield from _audit_metrics(self.services)


def _counter(
    name: str, doc: str, value: float, labels: Iterable[tuple[str, str]] = ()
) -> CounterMetricFamily:
    pairs = list(labels)
    family = CounterMetricFamily(name, doc, labels=[k for k, _ in pairs])
    family.add_metric([v for _, v in pairs], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _policy_metrics(services: Services) -> Iterator[Metric]:
    policies = services.policies
    reloads = CounterMetricFamily(
        "warden_gateway_policy_reloads",
        "Policy loads by result (failed keeps the last good).",
        labels=["result"],
    )
    reloads.add_metric(["ok"], policies.reloads_ok)
    reloads.add_metric(["failed"], policies.reloads_failed)
    yield reloads
    info = GaugeMetricFamily(
        "warden_gateway_policy_info", "The policy version in force (value 1).", labels=["version"]
    )
    info.add_metric([policies.current.version], 1)
    yield info
    yield _gauge(
        "warden_gateway_policy_last_reload_failed",
        "1 while the latest policy update is refused.",
        int(policies.last_error is not None),
    )


def _upstream_metrics(services: Services) -> Iterator[Metric]:
    labels = ["upstream", "worker"]
    healthy = GaugeMetricFamily(
        "warden_gateway_upstream_worker_healthy", "1 if the worker's last health check passed.", labels=labels
    )
    circuit = GaugeMetricFamily(
        "warden_gateway_upstream_circuit_state",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=labels,
    )
    outstanding = GaugeMetricFamily(
        "warden_gateway_upstream_outstanding_requests", "Requests in flight to the worker.", labels=labels
    )
    errors = CounterMetricFamily(
        "warden_gateway_upstream_errors",
        "Failed exchanges with workers, by kind.",
        labels=["upstream", "kind"],
    )
    for pool in services.router.pools:
        name = pool.settings.name
        for worker in pool.workers:
            healthy.add_metric([name, worker.url], int(worker.healthy))
            circuit.add_metric([name, worker.url], _CIRCUIT_VALUE[worker.breaker.state])
            outstanding.add_metric([name, worker.url], worker.outstanding)
        for kind, count in sorted(pool.errors.items()):
            errors.add_metric([name, kind], count)
    yield from (healthy, circuit, outstanding, errors)  # fmt: skip


def _redis_metrics(services: Services) -> Iterator[Metric]:
    cache, limiter, redis = services.cache.stats, services.limiter.stats, services.cache.redis
    yield _gauge(
        "warden_gateway_redis_up",
        "1 while Redis answers; 0 while the gateway runs degraded.",
        int(redis.available),
    )
    yield _counter("warden_gateway_redis_outages", "Transitions from up to down.", redis.outages)
    lookups = CounterMetricFamily(
        "warden_gateway_cache_requests", "Cache lookups by outcome.", labels=["result"]
    )
    for result, count in (("hit", cache.hits), ("miss", cache.misses), ("bypass", cache.bypasses)):
        lookups.add_metric([result], count)
    yield lookups
    yield _counter(
        "warden_gateway_cache_coalesced", "Hits served by waiting for an identical request.", cache.coalesced
    )
    budget = CounterMetricFamily(
        "warden_gateway_budget_decisions",
        "Admission decisions of the rate limits and budgets.",
        labels=["result"],
    )
    for result, count in (
        ("admitted", limiter.admitted),
        ("refused", limiter.refused),
        ("local", limiter.local),
    ):
        budget.add_metric([result], count)
    yield budget  # fmt: skip


def _audit_metrics(services: Services) -> Iterator[Metric]:
    writer = services.finish.audit
    if writer is None:
        return
    stats = writer.stats
    yield _counter("warden_gateway_audit_records", "Audit records written durably.", stats.records_written)
    yield _counter("warden_gateway_audit_commits", "Group commits (one fsync each).", stats.commits)
    yield _counter(
        "warden_gateway_audit_refused", "Requests whose record could not be written.", stats.refused_records
    )
    yield _gauge("warden_gateway_audit_up", "1 while audit records can be written.", int(stats.available))


# Read at scrape time by _StateCollector; listed here for describe_metrics (a test scrapes a real
# gateway and checks that this list and the exposition agree).
STATE_FAMILIES = frozenset(
    {
        "warden_gateway_policy_reloads", "warden_gateway_policy_info",
        "warden_gateway_policy_last_reload_failed",
        "warden_gateway_upstream_worker_healthy", "warden_gateway_upstream_circuit_state",
        "warden_gateway_upstream_outstanding_requests", "warden_gateway_upstream_errors",
        "warden_gateway_redis_up", "warden_gateway_redis_outages", "warden_gateway_cache_requests",
        "warden_gateway_cache_coalesced", "warden_gateway_budget_decisions", "warden_gateway_audit_records",
        "warden_gateway_audit_commits", "warden_gateway_audit_refused", "warden_gateway_audit_up",
    }
)  # fmt: skip


def describe_metrics() -> set[str]:
    """Every metric family the gateway exposes, as the Prometheus parser names them (for dashboards)."""
    events = GatewayMetrics().render().decode()
    return {family.name for family in text_string_to_metric_families(events)} | STATE_FAMILIES
