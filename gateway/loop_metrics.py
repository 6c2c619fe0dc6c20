"""Counters and histograms for metrics updated from one thread (the event loop), exposed through
prometheus_client at scrape time.

prometheus_client's own ``Counter`` and ``Histogram`` take a lock per update and a label lookup
per call: about 35 µs a request for the gateway's dozen updates on this project's CPU. These keep
plain numbers in dicts and lists (one writer, so no locks) and build the metric families only when
Prometheus scrapes. A scrape from another thread may see an update half done: a histogram's count
is derived from its buckets, so each exposition stays self-consistent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

Labels = tuple[str, ...]


class LoopCounter:
    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        self.name, self.documentation, self.label_names = name, documentation, list(label_names)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class LoopHistogram:
    def __init__(
        self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.documentation, self.label_names = name, documentation, list(label_names)
        self.bounds = list(buckets)
        self.series: dict[Labels, list[float]] = {}  # bucket counts (the last one is +Inf), then the sum

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        edges = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for labels, series in list(self.series.items()):
            counts, total = series[:-1], series[-1]
            cumulative, running = [], 0.0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric(list(labels), cumulative, total)
        return family


class LoopMetricsCollector(Collector):
    def __init__(self, metrics: Sequence[LoopCounter | LoopHistogram]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()
