"""The worker's Prometheus metrics, in one registry per app (never prometheus_client's global one).

Engine state (KV blocks, queue lengths, prefix cache, steps) is read from the engine at scrape time
by ``EngineCollector``; per-request timings and token counts are recorded as requests run (see
``backend.telemetry``). The metric names are a contract: the Grafana dashboard is built on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from backend.async_engine import AsyncEngine

__all__ = ["CONTENT_TYPE_LATEST", "EngineCollector", "TokenRate", "WorkerMetrics", "describe_metrics"]

# The *_created series double the exposition for no dashboard use (process-wide, as in the gateway).
disable_created_metrics()  # type: ignore[no-untyped-call]

# How requests end, as the requests_total label: the engine's finish reasons plus the two failures.
FINISH_REASONS = ("stop", "length", "abort", "error")

TOKEN_RATE_WINDOW_S = 10

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class TokenRate:
    """Tokens over a sliding window of whole seconds, for a tokens-per-second gauge.

    ``add`` costs a lock and an integer add; the window is a ring of per-second buckets.
    """

    def __init__(
        self, window_s: int = TOKEN_RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = [0] * window_s
        self._seconds = [-1] * window_s  # which whole second each bucket currently holds

    def add(self, tokens: int) -> None:
        second = int(self._clock())
        slot = second % self.window_s
        with self._lock:
            if self._seconds[slot] != second:
                self._seconds[slot] = second
                self._counts[slot] = 0
            self._counts[slot] += tokens

    def per_second(self) -> float:
        """Tokens in the last ``window_s`` seconds (the current one partly elapsed) over that span."""
        now = self._clock()
        second = int(now)
        oldest = second - self.window_s + 1
        with self._lock:
            total = sum(c for c, s in zip(self._counts, self._seconds, strict=True) if s >= oldest)
        span = self.window_s - 1 + (now - second)
        return total / span if span > 0 else 0.0


class EngineCollector:
    """Gauges and counters read from the engine when Prometheus scrapes; no samples before it loads."""

    def __init__(self, engine: Callable[[], AsyncEngine | None], token_rate: TokenRate) -> None:
        self._engine = engine
        self._token_rate = token_rate

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        families["warden_worker_generation_tokens_per_second"].add_metric([], self._token_rate.per_second())
        engine = self._engine()
        if engine is None:
            return families.values()
        stats = engine.engine.stats()
        model = engine.engine.model
        families["warden_worker_engine_info"].add_metric(
            [str(model.dtype).removeprefix("torch."), model.device.type, model.ops.name], 1
        )
        values: dict[str, float] = {
            "warden_worker_kv_blocks_total": stats.num_blocks_total,
            "warden_worker_kv_blocks_used": stats.num_blocks_used,
            "warden_worker_kv_blocks_free": stats.num_blocks_total - stats.num_blocks_used,
            "warden_worker_requests_running": stats.num_running,
            "warden_worker_requests_waiting": engine.num_waiting,
            "warden_worker_prefix_cache_hit_ratio": stats.prefix_cache_hit_rate,
            "warden_worker_preemptions": stats.num_preemptions,
            "warden_worker_engine_steps": engine.num_steps,
            "warden_worker_prefix_cache_queries_tokens": stats.prefix_cache_queries,
            "warden_worker_prefix_cache_hits_tokens": stats.prefix_cache_hits,
        }
        for name, value in values.items():
            families[name].add_metric([], value)
        return families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        gauges = [
            ("warden_worker_kv_blocks_total", "KV cache blocks in the pool"),
            ("warden_worker_kv_blocks_used", "KV cache blocks held by requests"),
            ("warden_worker_kv_blocks_free", "KV cache blocks not held by any request"),
            ("warden_worker_requests_running", "Sequences being computed"),
            ("warden_worker_requests_waiting", "Requests waiting for admission"),
            ("warden_worker_prefix_cache_hit_ratio",
             "Prompt tokens served from the prefix cache over those looked up, since the process started"),
            ("warden_worker_generation_tokens_per_second",
             f"Tokens generated per second over the last {TOKEN_RATE_WINDOW_S} seconds"),
        ]  # fmt: skip
        counters = [
            ("warden_worker_preemptions", "Sequences preempted by recompute"),
            ("warden_worker_engine_steps", "Engine steps run"),
            ("warden_worker_prefix_cache_queries_tokens", "Prompt tokens looked up in the prefix cache"),
            ("warden_worker_prefix_cache_hits_tokens", "Prompt tokens served from the prefix cache"),
        ]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "warden_worker_engine_info": GaugeMetricFamily(
                "warden_worker_engine_info",
                "1, labelled with how the engine computes: dtype, device and layer ops (fused-cpu or torch)",
                labels=["dtype", "device", "layer_ops"],
            )
        }
        for name, help_text in gauges:
            families[name] = GaugeMetricFamily(name, help_text)
        for name, help_text in counters:
            families[name] = CounterMetricFamily(name, help_text)
        return families


class WorkerMetrics:
    """The registry of one worker app and the metrics its requests update."""

    def __init__(self, engine: Callable[[], AsyncEngine | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.time_to_first_token = Histogram(
            "warden_worker_time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "warden_worker_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a choice",
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.request_queue = Histogram(
            "warden_worker_request_queue_seconds",
            "From submission to the engine until the scheduler first runs the request",
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "warden_worker_request_duration_seconds",
            "From the request's arrival to its end, for requests that generated at least one token",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "warden_worker_prompt_tokens", "Prompt tokens of requests whose prefill ran", registry=registry
        )
        self.generation_tokens = Counter(
            "warden_worker_generation_tokens", "Tokens generated", registry=registry
        )
        self.requests = Counter(
            "warden_worker_requests",
            "Completion requests by how they ended (stop, length, abort: the client left, error)",
            ["finish_reason"],
            registry=registry,
        )
        for reason in FINISH_REASONS:
            self.requests.labels(reason)
        self.token_rate = TokenRate()
        registry.register(EngineCollector(engine, self.token_rate))
        ProcessCollector(registry=registry)

    def add_generated(self, tokens: int) -> None:
        self.generation_tokens.inc(tokens)
        self.token_rate.add(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def describe_metrics() -> set[str]:
    """The worker's metric family names as a scrape parses them (counters without ``_total``)."""
    text = WorkerMetrics().render().decode()
    return {family.name for family in text_string_to_metric_families(text)}
